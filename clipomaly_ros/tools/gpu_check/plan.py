"""The check's plan: its rows as data (name, time budget, what runs), in the order they run."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PLAN_BUDGET_S = 480.0
"""The whole plan's time budget on a GPU: 8 minutes, so that one call fits a 10-minute machine with room to start
and to copy the results back."""
CPU_TIME_SCALE = 10.0
"""On a CPU (``--device cpu``, the rehearsal) every row's budget is this many times its GPU budget."""
CAMERA_COUNTS = (1, 8)
"""Cameras batched through one model in every runtime row: warmed up, served and timed; 8 is required."""


@dataclass(frozen=True)
class Row:
    """One row of the plan. ``kind``: ``versions``, ``cuda-tests`` or ``runtime`` (one runtime, precision and
    window layout). ``budget_s``: its time limit on a GPU, in seconds. ``cuda_only``: on a CPU it is recorded
    "not run: no CUDA". ``tensorrt``: the row is TensorRT's (runtime onnx): it fails where TensorRT did not
    load or cannot build a strongly typed network."""

    name: str
    budget_s: float
    kind: str
    runtime: str = ""
    precision: str = ""
    layout: str = ""
    cuda_only: bool = False
    tensorrt: bool = False

    @property
    def is_reference(self) -> bool:
        """Eager PyTorch in fp32: the row whose dense features the others are compared with."""
        return (self.runtime, self.precision) == ("torch", "fp32")

    def as_dict(self) -> dict:
        return asdict(self)


def _runtime_row(layout: str, runtime: str, precision: str, budget_s: float) -> Row:
    shown = "onnx/TensorRT" if runtime == "onnx" and precision == "fp16" else runtime
    return Row(f"{layout} {shown} {precision}", budget_s, "runtime", runtime, precision, layout,
               cuda_only=precision == "fp16", tensorrt=shown == "onnx/TensorRT")


PLAN = (
    Row("versions", 15, "versions"),
    Row("CUDA tests", 60, "cuda-tests", cuda_only=True),
    _runtime_row("official", "torch", "fp32", 35),
    _runtime_row("official", "torch", "fp16", 25),
    _runtime_row("official", "compile", "fp32", 55),
    _runtime_row("official", "compile", "fp16", 55),
    _runtime_row("official", "onnx", "fp32", 70),
    _runtime_row("official", "onnx", "fp16", 70),
    _runtime_row("light", "torch", "fp16", 20),
    _runtime_row("light", "compile", "fp16", 45),
    _runtime_row("light", "onnx", "fp16", 25),  # the official row's export and engine, read from the shared cache
)
"""Every row, in the order they run: the quick ones first, fp32 before fp16, and TensorRT's light row after its
official one, whose ONNX export and engine it reuses (same window size, one cache for the whole check)."""


def plan_rows(only: str = "") -> tuple[Row, ...]:
    """The plan, or the rows named in ``only`` (comma-separated) to rerun a few; an unknown name is refused."""
    if not only:
        return PLAN
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {row.name: row for row in PLAN}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--only names no row {', '.join(map(repr, unknown))}: the rows are "
                         f"{', '.join(known)}")
    return tuple(row for row in PLAN if row.name in names)


def row_by_name(name: str) -> Row:
    return plan_rows(name)[0]


__all__ = ["Row", "PLAN", "PLAN_BUDGET_S", "CPU_TIME_SCALE", "CAMERA_COUNTS", "plan_rows", "row_by_name"]
