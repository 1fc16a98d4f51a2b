"""What each kind of row does, in the row's own process: :func:`versions_row`, :func:`cuda_tests_row` and
:func:`runtime_row` (one runtime, precision and window layout). Each returns the row's record: ``status`` "ok" or
"FAIL", with ``reason`` when it failed, and its figures."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

from .environment import tensorrt_load_error, tensorrt_major, tensorrt_version, versions
from .plan import CAMERA_COUNTS, Row
from .serving import CompileWatch, ServingThread

MIN_COSINE = 0.999
"""Below this mean per-patch cosine to eager fp32 a runtime and precision fails (fp16 LayerNorm overflow shows as
far less, or NaN)."""
CUDA_TESTS = ("test/test_cuda.py", "test/test_gpu_paths.py")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every row of one check shares: ``size`` (width, height) of the frames, ``frames`` timed per row,
    ``cache_dir`` (exports and TensorRT engines, shared by the rows), ``repo`` (for the test cases)."""

    device: str
    model: str
    size: tuple[int, int]
    frames: int
    window_size: int
    cache_dir: str
    repo: str

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def can_import(*modules: str) -> bool:
    """Whether every one of these top-level modules is installed here."""
    return all(importlib.util.find_spec(module) is not None for module in modules)


def failed(reason: str, **fields) -> dict:
    return {"status": "FAIL", "reason": reason, **fields}


def versions_row(row: Row, settings: Settings, deadline: float, report=None) -> dict:
    return {"status": "ok", "versions": versions(settings.device)}


def cuda_tests_row(row: Row, settings: Settings, deadline: float, report=None) -> dict:
    """The suite's CUDA cases under pytest; a skipped case fails the row (on a GPU every one must run)."""
    missing = [module for module in ("pytest", "cv2", "scipy") if not can_import(module)]
    if missing:
        return failed(f"not run: {', '.join(missing)} missing here (the CUDA test cases import them)")
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *CUDA_TESTS],
                               cwd=settings.repo, capture_output=True, text=True, env=os.environ.copy(),
                               timeout=max(5.0, deadline - time.monotonic() - 3.0))
    lines = completed.stdout.strip().splitlines() or ["no output"]
    summary = lines[-1].strip("= ")
    if completed.returncode != 0:
        return failed(f"{summary} (exit {completed.returncode})", tail=lines[-15:])
    if "skipped" in summary:
        return failed(f"{summary}: a CUDA case skipped is a case not proven", tail=lines[-15:])
    return {"status": "ok", "detail": summary}


def test_frame(size: tuple[int, int], with_scene: bool) -> np.ndarray:
    """A ``size`` = (width, height) RGB frame: the synthetic street when opencv is there, else textured noise."""
    if with_scene:
        import cv2

        from ..scenes import render_street_scene

        image, _ = render_street_scene(360, 640, planted="mattress")
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(16, axis=0).repeat(16, axis=1)[:size[1], :size[0]])


class Subject:
    """One runtime and precision as the node holds it: the backend and, where its host packages are here, the
    whole pipeline. Made, warmed up and served on the serving thread."""

    def __init__(self, config, precision: str, full: bool):
        from ...core.model.open_clip_backend import OpenClipBackend

        self.backend = OpenClipBackend(config, precision)
        self.pipeline = None
        if full:  # the pipeline needs opencv and scipy, which a bare GPU machine may lack
            from ...core.method.pipeline import Clipomaly

            self.pipeline = Clipomaly(config, backend=self.backend)
        self.backend.clock.synchronize = True  # the device's time for the backbone, not the launch's

    def warm_up(self, image_size: tuple[int, int]) -> None:
        """Every batch size the check serves: each camera count, and their naming crops."""
        for cameras in CAMERA_COUNTS:
            (self.pipeline or self.backend).warm_up(image_size, cameras)

    def batch(self, images) -> tuple[float, float]:
        """Milliseconds for ``images`` (one per camera, one backbone pass), and of those inside the transformer."""
        import torch

        cuda = self.backend.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.backend.device)
        self.backend.clock.take()
        started = time.perf_counter()
        results = self.pipeline.segment_batch(images) if self.pipeline else self.backend.dense_features_batch(images)
        if cuda:
            torch.cuda.synchronize(self.backend.device)
        total = (time.perf_counter() - started) * 1000.0
        backbone = results[0].timings_ms["backbone"] if self.pipeline else self.backend.clock.take()
        return total, backbone

    def grids(self, images: list[np.ndarray]) -> list:
        """The dense grids ``(h, w, D)`` float32 of ``images`` served as one batch of cameras."""
        return [features.grid.float() for features in self.backend.dense_features_batch(images)]


def row_config(row: Row, settings: Settings):
    from ...core.config import ClipomalyConfig

    return ClipomalyConfig(model=settings.model, random_weights=True, device=settings.device, runtime=row.runtime,
                           window_layout=row.layout, cache_dir=settings.cache_dir, window_size=settings.window_size)


def percentile(values, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def serve(serving: ServingThread, subject: Subject, frames: list[np.ndarray], timed_frames: int, until: float) -> dict:
    """Warm ``subject`` up and serve 1 and 8 cameras, restart the serving thread (the node's watchdog), warm up
    again and serve and time frames of 1 and 8 cameras (8 different frames), each serving under a
    :class:`CompileWatch` opened right after its warm-up: a compile or a CUDA graph recorded there fails."""
    image, eight = frames[0], frames[:max(CAMERA_COUNTS)]
    started = time.perf_counter()
    serving.call(subject.warm_up, image.shape[:2])
    with CompileWatch() as before_restart:
        serving.call(subject.batch, [image])
        serving.call(subject.batch, eight)
    serving.restart()
    serving.call(subject.warm_up, image.shape[:2])
    warm_up_s = time.perf_counter() - started
    with CompileWatch() as watch:
        first_ms, _ = serving.call(subject.batch, [image])
        first_eight_ms, _ = serving.call(subject.batch, eight)
        timed = []
        while len(timed) < timed_frames and (len(timed) < 2 or time.monotonic() < until):
            timed.append(serving.call(subject.batch, [image]))
        eights = [serving.call(subject.batch, eight)[0] for _ in range(2)]
    totals = [total for total, _ in timed]
    middle = median(totals)
    events = [f"on the first thread: {event}" for event in before_restart.events] + watch.events
    record = {"warm_up_s": round(warm_up_s, 1), "frames": len(totals), "ms_per_frame": round(middle, 2),
              "p99_ms": round(percentile(totals, 0.99), 2), "backbone_ms": round(median(b for _, b in timed), 2),
              "host_ms": round(median(t - b for t, b in timed), 2), "fps": round(1000.0 / middle, 1),
              "first_frame_ms": round(first_ms, 1), "first_8_cameras_ms": round(first_eight_ms, 1),
              "cameras": {"1": round(middle, 1), "8": round(median(eights), 1)},
              "serving": f"warmed up on {serving.name} after a restart; {serving.restarts} restart",
              "compiled_while_serving": events, "problems": []}
    if events:
        record["problems"].append("compiled or recorded CUDA graphs on served frames after warm-up: "
                                  + ", ".join(events))
    if subject.backend.device.type == "cuda" and first_ms > 10 * middle and first_ms - middle > 1000:
        record["problems"].append(f"first served frame {first_ms:.0f} ms against a median of {middle:.0f} ms")
    return record


def cameras_agree(serving: ServingThread, subject: Subject, frames: list[np.ndarray]) -> tuple[dict, list[str]]:
    """Each camera's grid in the batch of 8 different frames against the same frame served alone: the lowest of
    the cameras' mean per-patch cosines (a mix-up of cameras or windows in the batch shows far below 1)."""
    import torch

    eight = frames[:max(CAMERA_COUNTS)]
    batched = serving.call(subject.grids, eight)
    alone = [serving.call(subject.grids, [frame])[0] for frame in eight]
    cosines = [float(torch.nn.functional.cosine_similarity(b, a, dim=-1).mean()) for b, a in zip(batched, alone)]
    lowest = min(cosines)
    problems = [] if lowest >= MIN_COSINE else [  # NaN fails too
        f"camera {cosines.index(lowest) if lowest == lowest else '?'} of 8 differs from its frame served alone: "
        f"cosine {lowest:.6f} < {MIN_COSINE}"]
    return {"cameras_cosine_min": round(lowest, 6)}, problems


def ran_on(backend, row: Row, cuda: bool) -> dict:
    """What actually ran: the ONNX Runtime providers each session uses (never the available list), or the torch
    runtime, with the problems of a TensorRT row where TensorRT did not load or cannot type fp16 strictly."""
    runtime = backend.runtime
    if row.runtime != "onnx":
        return {"ran_on": f"{runtime.description}, {backend.dtype} on {backend.device}", "problems": []}
    used = {"windows": list(runtime.windows.providers), "crops": list(runtime.crops.providers)}
    found = {"ran_on": "; ".join(f"{graph}: {', '.join(providers)}" for graph, providers in used.items()),
             "providers_used": used, "problems": []}
    if not cuda:
        return found
    trt = all(providers[0] == "TensorrtExecutionProvider" for providers in used.values())
    if not trt:
        why = tensorrt_load_error() or "its provider loaded but the session does not use it"
        if row.tensorrt:
            found["problems"].append(f"TensorRT did not load ({why}): the session runs {used['windows'][0]}")
        else:
            found["note"] = f"TensorRT did not load ({why})"
        return found
    graphs = {"windows": runtime.windows, "crops": runtime.crops}
    unbuilt = [name for name, graph in graphs.items() if not any(Path(graph.tensorrt_cache or ".").glob("*.engine"))]
    if unbuilt:  # get_providers() shows TensorRT registered; an engine on disk shows it built and ran
        found["problems"].append(f"TensorRT is the session's provider but built no engine for the "
                                 f"{' and '.join(unbuilt)} graph after warm-up (no *.engine in "
                                 f"{graphs[unbuilt[0]].tensorrt_cache})")
    version = tensorrt_version()
    if row.precision == "fp16" and tensorrt_major(version) < 10:
        found["problems"].append(f"TensorRT {version or '(version unknown)'} builds no strongly typed network "
                                 "through ONNX Runtime (TensorRT 10 or newer does): fp16 not checked, run fp32")
    elif row.precision == "fp16":
        found["typing"] = f"fp16 export, strongly typed (TensorRT {version}): LayerNorm and softmax in fp32"
    return found


def dense_cosine(config, image: np.ndarray, grid) -> tuple[dict, list[str]]:
    """The mean and lowest per-patch cosine of ``grid`` to eager PyTorch in fp32 on the same device."""
    import torch

    from ...core.model.open_clip_backend import OpenClipBackend

    reference_backend = OpenClipBackend(dataclasses.replace(config, runtime="torch"), precision="fp32")
    reference = reference_backend.dense_features(image).grid.float()
    cosine = torch.nn.functional.cosine_similarity(grid, reference, dim=-1)
    found = {"cosine_vs_fp32": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6)}
    problems = [] if found["cosine_vs_fp32"] >= MIN_COSINE else [  # NaN fails too
        f"per-patch cosine to eager fp32 {found['cosine_vs_fp32']} < {MIN_COSINE}"]
    return found, problems


def on_device(row: Row, settings: Settings, config, frames: list[np.ndarray], until: float, report) -> tuple:
    """Load, warm up, serve and time ``row``'s runtime on a serving thread, then take what the comparisons need:
    the record so far (``report`` gets it after the timing, so that a row killed in its comparisons still says
    where its time went), the dense grid of ``frames[0]``, the naming crops' embeddings and the ring's waits."""
    from .naming_path import device_crop_embeddings

    serving = ServingThread()
    try:
        started = time.perf_counter()
        subject = serving.call(Subject, config, row.precision, can_import("cv2", "scipy"))
        load_s = time.perf_counter() - started
        record = serve(serving, subject, frames, settings.frames, until)
        record.update(load_s=round(load_s, 1), measured="pipeline" if subject.pipeline else "dense pass")
        report({**record, "stage": "timed; comparing with eager fp32 next"})
        found, problems = cameras_agree(serving, subject, frames)
        record.update(found)
        record["problems"] += problems
        grid = serving.call(subject.grids, frames[:1])[0]
        crops, waits = serving.call(device_crop_embeddings, subject.backend, config, frames)
        found = ran_on(subject.backend, row, settings.cuda)
        record["problems"] += found.pop("problems")
        record.update(found)
        health = subject.backend.runtime.health()
        if health:
            record["problems"].append("runtime fell back: " + "; ".join(f"{k} {v}" for k, v in health.items()))
        serving.call(subject.backend.runtime.close)
    finally:
        serving.close()
    return record, grid, crops, waits


def tolerance(row: Row, record: dict) -> str:
    """The precision whose tolerances the crops are compared at: TensorRT builds fp32 engines with TF32 allowed
    (its default, which ONNX Runtime's provider does not turn off), whose 10-bit mantissa is fp16's."""
    used = record.get("providers_used", {}).get("windows", [""])
    if row.precision == "fp32" and used[0] == "TensorrtExecutionProvider":
        record["note"] = (record.get("note", "") + "; " if record.get("note") else "") + (
            "TensorRT fp32 may run TF32: crops compared at fp16's tolerances")
        return "tf32"
    return row.precision


def runtime_row(row: Row, settings: Settings, deadline: float, report=lambda record: None) -> dict:
    """One runtime, precision and layout, served as the node serves it: figures, what ran, and its dense features,
    crop embeddings and names against eager fp32."""
    import torch

    from .naming_path import CpuNaming, check_frames  # here: the table needs no model side

    if row.runtime == "onnx":
        from ...core.model.runtimes import onnx_unavailable

        missing = onnx_unavailable(settings.device)
        if missing:
            return failed(f"not run: {missing}")
    from ...core.model import runtimes

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    runtimes.CUDA_PROVIDER_OPTIONS["use_tf32"] = 0  # in ONNX Runtime's CUDA provider too
    config = row_config(row, settings)
    frames = check_frames(test_frame(settings.size, can_import("cv2", "scipy")))
    reserve = 0.3 * (deadline - time.monotonic())  # for the comparisons after the timed frames
    record, grid, on_device_crops, waits = on_device(row, settings, config, frames, deadline - reserve, report)
    if settings.cuda:
        record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if not row.is_reference:
        found, problems = dense_cosine(config, frames[0], grid)
        record.update(found)
        record["problems"] += problems
    naming = CpuNaming(config, settings.cuda)
    compared = naming.compare(naming.crop_embeddings(frames), on_device_crops, tolerance(row, record), waits)
    record["problems"] += compared.pop("problems")
    record["naming"] = compared
    problems = record.pop("problems")
    return {**record, "status": "FAIL" if problems else "ok", **({"reason": "; ".join(problems)} if problems else {})}


ROW_KINDS = {"versions": versions_row, "cuda-tests": cuda_tests_row, "runtime": runtime_row}


def run_row(row: Row, settings: Settings, deadline: float, report=lambda record: None) -> dict:
    """``row``'s record; an exception is the row's FAIL with its type and first line. ``report(record)`` is
    called with a partial record where a row has one before its end."""
    try:
        return ROW_KINDS[row.kind](row, settings, deadline, report)
    except Exception as error:  # noqa: BLE001 - a row's failure is its record, never the check's end
        return failed(f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}")


__all__ = ["Settings", "run_row", "runtime_row", "versions_row", "cuda_tests_row", "MIN_COSINE", "can_import"]
