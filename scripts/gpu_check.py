#!/usr/bin/env python3
"""The GPU check: every runtime, precision and window layout of the dense encoder on one machine, in one call.

Made for a bare CUDA machine with Python and PyTorch but no network: open_clip and the other pure model-side
packages come from ``.gpu-wheels`` (``make gpu-wheels`` fills it on a connected machine), unpacked into
``.gpu-site`` only where the machine lacks them. On ViT-B-16 with random weights and 1280x720 frames it

- runs the test suite's CUDA cases (``test/test_cuda.py``, ``test/test_gpu_paths.py``) under pytest;
- names the same crops on the GPU and on the CPU in fp32 through the pinned staging ring: the names must be equal;
- for the official and light layouts and every runtime (torch, compile, onnx) and precision (fp16 and fp32 at the
  official layout, fp16 at the light one; fp32 alone on a CPU): ms per frame (p50 and p99 after warm-up), split
  into the vision transformer (``backbone``) and the rest (``host``), frames per second, peak GPU memory, 1 and 8
  cameras batched through one model, the first frame served after warm-up against the median (warm-up and frames
  on one thread, as the node does), and the per-patch cosine against eager PyTorch in fp32, the real reference;
  the whole pipeline when its host packages (opencv, scipy) are there, else the dense pass alone.

Every case has a status. A runtime that cannot run here, a cosine under 0.999, a first frame that recompiled, a
failing test or unequal names is FAIL with its reason, and the script then exits 1 (2: no CUDA device). It keeps to
a time budget (``--budget-s``, 480 s by default): a part that would not fit is FAIL "time budget". It writes
``gpu_check.json`` and ``gpu_check.md`` (the table of docs/measurements.md's GPU section, ``--markdown`` puts it there)
under ``--out`` and ends with one summary table. ``--device cpu`` runs the same steps on a CPU with a few frames and
the bundled tiny ViT, which is how CI proves this script.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from statistics import median

REPO = Path(__file__).resolve().parent.parent
WHEEL_MODULES = {"open_clip_torch": "open_clip", "pyyaml": "yaml", "protobuf": "google.protobuf",
                 "opencv_python_headless": "cv2"}
"""Distribution names whose import name differs (the others import as the distribution's name)."""


def unpack_missing_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every wheel in ``wheels`` whose module this Python cannot import into ``site`` (a wheel is a zip of
    site-packages; these have no build step), and put ``site`` first on the path. Returns what was unpacked."""
    unpacked = []
    for wheel in sorted(wheels.glob("*.whl")):
        distribution = wheel.name.split("-")[0].lower()
        if can_import(WHEEL_MODULES.get(distribution, distribution)):
            continue
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        unpacked.append(wheel.name)
    if unpacked:
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
    return unpacked


def can_import(*modules: str) -> bool:
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            return False

    return all(found(module) for module in modules)


class Budget:
    """Seconds left of the check's time budget."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.deadline - time.monotonic()


def test_frame(size: tuple[int, int], with_scene: bool):
    """A ``size`` = (width, height) RGB frame: the synthetic street when opencv is there, else textured noise."""
    import numpy as np

    if with_scene:
        import cv2

        from clipomaly_ros.tools.scenes import render_street_scene

        image, _ = render_street_scene(360, 640, planted="mattress")
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(16, axis=0).repeat(16, axis=1)[:size[1], :size[0]])


MIN_COSINE = 0.999
"""Below this per-patch cosine to eager fp32 a runtime and precision fails (fp16 LayerNorm overflow shows as far
less, or NaN)."""
SLOW_FIRST_FRAME = 10.0
"""A first frame after warm-up slower than this many median frames (and by over a second) was recompiled."""
CUDA_TESTS = ("test/test_cuda.py", "test/test_gpu_paths.py")


class Subject:
    """What is timed for one runtime, precision and layout: the whole pipeline, or the backend's dense pass alone.
    Loaded, warmed up and served on one thread (:attr:`thread`), as the node does: compiled CUDA graphs are per
    thread."""

    def __init__(self, config, precision: str, full: bool):
        import torch

        from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend

        self.torch = torch
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-check-serving")
        self.backend = self.on_thread(OpenClipBackend, config, precision)
        if full:
            from clipomaly_ros.core.method.pipeline import Clipomaly

            self.pipeline = Clipomaly(config, backend=self.backend)
        else:
            self.pipeline = None
        self.backend.clock.synchronize = True  # the device's time for the backbone, not the launch's

    def on_thread(self, function, *args):
        return self.thread.submit(function, *args).result()

    def frame(self, image) -> tuple[float, float]:
        """Milliseconds for one frame, and of those inside the vision transformer."""
        milliseconds, results = self.batch([image])
        if results is None:
            return milliseconds, self.backend.clock.take()
        return milliseconds, results[0].timings_ms["backbone"]

    def batch(self, images) -> tuple[float, list | None]:
        """Milliseconds for ``images`` (one per camera, one backbone pass), and the pipeline's results."""
        return self.on_thread(self._batch, images)

    def _batch(self, images):
        torch = self.torch
        device = self.backend.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.backend.clock.take()
        start = time.perf_counter()
        if self.pipeline is not None:
            results = self.pipeline.segment_batch(images)
        else:
            results = None
            self.backend.dense_features_batch(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000.0, results

    def grid(self, image):
        return self.on_thread(lambda: self.backend.dense_features(image).grid.float())

    def close(self) -> None:
        self.on_thread(self.backend.runtime.close)
        self.thread.shutdown()


def percentile(values, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(config, precision: str, image, frames: int, camera_counts, full: bool, reference, budget: Budget,
            log) -> tuple[dict, object]:
    """One runtime and precision at one layout: warm-up, first frame, per-frame timing, camera batches, cosine
    against ``reference`` (eager fp32; None when this row is that reference)."""
    import torch

    cuda = config.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    subject = Subject(config, precision, full)
    load_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        subject.on_thread(subject.backend.warm_up, image.shape[:2], max(camera_counts))
        warm_up_s = time.perf_counter() - started
        first_ms, _ = subject.frame(image)
        subject.frame(image)
        cost = subject.backend.layout_cost(image.shape[:2])
        report = {"runtime": config.runtime, "precision": precision, "layout": config.window_layout,
                  "load_s": round(load_s, 1), "warm_up_s": round(warm_up_s, 1), "windows": cost.windows,
                  "tokens": cost.tokens, "gflop": round(cost.gflop, 1),
                  "measured": "pipeline" if full else "dense pass", "description": subject.backend.description}
        totals, backbones = [], []
        for index in range(frames):
            if index >= 3 and budget.left < 20:
                log(f"{config.runtime}/{precision}/{config.window_layout}: time budget reached after {index} frames")
                break
            total, backbone = subject.frame(image)
            totals.append(total)
            backbones.append(backbone)
        middle = median(totals)
        report.update(frames=len(totals), ms_per_frame=round(middle, 2), p99_ms=round(percentile(totals, 0.99), 2),
                      backbone_ms=round(median(backbones), 2),
                      host_ms=round(median(t - b for t, b in zip(totals, backbones)), 2),
                      fps=round(1000.0 / middle, 1), first_frame_ms=round(first_ms, 1))
        problems = []
        if first_ms > SLOW_FIRST_FRAME * middle and first_ms - middle > 1000.0:
            problems.append(f"first frame after warm-up {first_ms:.0f} ms against a median of {middle:.0f} ms "
                            "(recompiled?)")
        cameras = {}
        for count in camera_counts:
            if budget.left < 15:
                cameras[str(count)] = "skipped: time budget"
                continue
            times = [subject.batch([image] * count)[0] for _ in range(max(2, min(frames // 5, 10)))]
            cameras[str(count)] = {"ms_per_batch": round(median(times), 1), "p99_ms": round(percentile(times, 0.99), 1),
                                   "fps_per_camera": round(1000.0 / median(times), 1)}
        report["cameras"] = cameras
        grid = subject.grid(image)
        if reference is not None:
            cosine = torch.nn.functional.cosine_similarity(grid, reference, dim=-1)
            report["cosine_vs_fp32"] = round(float(cosine.mean()), 6)
            report["cosine_min"] = round(float(cosine.min()), 6)
            if not report["cosine_vs_fp32"] >= MIN_COSINE:  # NaN fails too
                problems.append(f"per-patch cosine to eager fp32 {report['cosine_vs_fp32']} < {MIN_COSINE}")
        health = subject.backend.runtime.health()
        if health:
            problems.append("runtime fell back: " + "; ".join(f"{k} {v}" for k, v in health.items()))
        if cuda:
            report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        report["status"] = "FAIL" if problems else "ok"
        if problems:
            report["reason"] = "; ".join(problems)
        return report, grid
    finally:
        subject.close()
        del subject


def onnx_unavailable(device: str) -> str:
    """Why runtime onnx cannot run on ``device`` here, or "" when it can (a seam the tests replace)."""
    from clipomaly_ros.core.model.runtimes import onnx_unavailable as reason

    return reason(device)


def run_cuda_tests(budget: Budget, out: Path) -> dict:
    """The test suite's CUDA cases under pytest, in a child process; the outcome as a check row."""
    if not can_import("pytest"):
        return {"check": "CUDA tests", "status": "FAIL", "detail": "pytest is not installed here (make gpu-wheels "
                                                                   "adds it)"}
    timeout = max(30.0, min(240.0, budget.left - 200.0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS],
                                   cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"check": "CUDA tests", "status": "FAIL", "detail": f"did not finish within {timeout:.0f} s"}
    (out / "cuda_tests.log").write_text(completed.stdout + completed.stderr)
    summary = (completed.stdout.strip().splitlines() or ["no output"])[-1]
    return {"check": "CUDA tests", "status": "ok" if completed.returncode == 0 else "FAIL",
            "detail": f"{summary} (exit {completed.returncode}; log cuda_tests.log)"}


def naming_crops(image) -> list:
    """Eight crops of ``image`` of different sizes and places, as region naming cuts them."""
    height, width = image.shape[:2]
    crops = []
    for index in range(8):
        side = max(16, int(min(height, width) * (0.15 + 0.1 * index)))
        wide = min(width, side + (index % 3) * side // 2)
        top = (index * 37) % max(1, height - side)
        left = (index * 101) % max(1, width - wide)
        crops.append(image[top:top + side, left:left + wide].copy())
    return crops


def naming_check(model: str, window_size: int, image, device: str) -> dict:
    """The same crops named on ``device`` and on the CPU, both fp32 (TF32 off): names must be equal wherever the
    CPU's best name leads the next by more than rounding, and each crop's embedding must agree. A crop staged over
    a buffer still being copied arrives as another crop and fails both."""
    import torch

    from clipomaly_ros import ClipomalyConfig
    from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend

    names = list(ClipomalyConfig().known_classes) + ["tire", "deer", "mattress", "cardboard box", "traffic cone",
                                                      "shopping cart", "suitcase", "rock", "dog", "bicycle wheel"]
    settings = dict(model=model, random_weights=True, window_size=window_size)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = OpenClipBackend(ClipomalyConfig(device="cpu", **settings), precision="fp32")
        here = OpenClipBackend(ClipomalyConfig(device=device, **settings), precision="fp32")
        text = cpu.encode_text([f"a photo of a {name}." for name in names])
        crops = naming_crops(image)
        on_cpu, on_device = cpu.encode_images(crops), here.encode_images(crops).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    scores_cpu, scores_device = on_cpu @ text.T, on_device @ text.T
    top = scores_cpu.topk(2, dim=-1)
    decided = (top.values[:, 0] - top.values[:, 1]) > 1e-3
    names_cpu = [names[i] for i in scores_cpu.argmax(-1).tolist()]
    names_device = [names[i] for i in scores_device.argmax(-1).tolist()]
    unequal = [index for index in range(len(crops)) if decided[index] and names_cpu[index] != names_device[index]]
    cosine = float(torch.nn.functional.cosine_similarity(on_cpu, on_device, dim=-1).min())
    problems = []
    if unequal:
        problems.append(f"names differ on crops {unequal}: {[names_device[i] for i in unequal]} on {device}, "
                        f"{[names_cpu[i] for i in unequal]} on the CPU")
    if not cosine >= 0.9999:
        problems.append(f"a crop embedding's cosine to the CPU's is {cosine:.6f}")
    staging = getattr(here, "staging", None)
    detail = (f"{int(decided.sum())} of {len(crops)} crops decided, names equal on all of them; crop embedding "
              f"cosine >= {cosine:.6f}" if not problems else "; ".join(problems))
    if staging is not None:
        detail += f"; staging ring waits {staging.waits}"
    if device == "cpu":
        detail += " (the CPU against itself: the case is proven on CUDA only)"
    return {"check": f"names on {device} = names on cpu", "status": "FAIL" if problems else "ok", "detail": detail,
            "names": names_device, "max_score_difference": float((scores_cpu - scores_device).abs().max())}


def plan(cpu: bool) -> list[tuple[str, str]]:
    """(layout, precision) in the order they run: fp32 first, the reference of each layout's cosines."""
    if cpu:
        return [("official", "fp32"), ("light", "fp32")]
    return [("official", "fp32"), ("official", "fp16"), ("light", "fp32"), ("light", "fp16")]


def format_table(report: dict) -> str:
    lines = [f"clipomaly gpu check: {report['device_name']}, {report['model']}, {report['size']}, torch "
             f"{report['torch']}",
             f"{'layout':<9}{'runtime':<9}{'prec':<6}{'windows':>8}{'GFLOP':>7}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'backbone':>9}{'host':>7}{'first':>8}{'fps':>7}{'GPU MB':>8}{'cos fp32':>10}"
             f"  cameras {report['cameras']} fps each",
             "-" * 124]
    for row in report["results"]:
        if "ms_per_frame" not in row:
            lines.append(f"{row['layout']:<9}{row['runtime']:<9}{row['precision']:<6}  FAIL: {row['reason']}")
            continue
        cameras = " / ".join(f"{v['fps_per_camera']:.1f}" if isinstance(v, dict) else "-"
                             for v in row["cameras"].values())
        gpu_mb = f"{row['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in row else "-"
        cosine = f"{row['cosine_vs_fp32']:.6f}" if "cosine_vs_fp32" in row else "reference"
        lines.append(f"{row['layout']:<9}{row['runtime']:<9}{row['precision']:<6}{row['windows']:>8}"
                     f"{row['gflop']:>7.0f}{row['ms_per_frame']:>9.1f}{row['p99_ms']:>9.1f}{row['backbone_ms']:>9.1f}"
                     f"{row['host_ms']:>7.1f}{row['first_frame_ms']:>8.0f}{row['fps']:>7.1f}{gpu_mb:>8}{cosine:>10}"
                     f"  {cameras}")
    lines.append(f"measured: {', '.join(sorted({r.get('measured', '-') for r in report['results']}))}; "
                 f"{report['elapsed_s']:.0f} s in all")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    """One line per case: runtime x precision x cosine x ms x status, then the checks."""
    lines = ["", "SUMMARY", f"{'layout':<9}{'runtime':<9}{'precision':<10}{'cosine':>10}{'ms':>9}  status",
             "-" * 60]
    for row in report["results"]:
        cosine = f"{row['cosine_vs_fp32']:.6f}" if "cosine_vs_fp32" in row else (
            "reference" if "ms_per_frame" in row else "-")
        milliseconds = f"{row['ms_per_frame']:.1f}" if "ms_per_frame" in row else "-"
        status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        lines.append(f"{row['layout']:<9}{row['runtime']:<9}{row['precision']:<10}{cosine:>10}{milliseconds:>9}  "
                     f"{status}")
    for check in report["checks"]:
        lines.append(f"{check['check']}: {check['status']}: {check['detail']}")
    failed = [row for row in report["results"] + report["checks"] if row["status"] != "ok"]
    lines.append(f"gpu check {'FAILED: ' + str(len(failed)) + ' case(s)' if failed else 'passed: every case ok'}")
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    """The GPU table for docs/measurements.md (``--markdown``)."""
    lines = [f"Measured by `make gpu-check` on {report['device_name']} ({report['model']}, random weights, "
             f"{report['size']}, torch {report['torch']}, {report['date']}): {report['verdict']}.", "",
             "| layout | runtime | precision | p50 ms | p99 ms | backbone ms | host ms | first frame ms | frames/s | "
             f"GPU MB | cosine to eager fp32 | {report['cameras']} cameras, frames/s each | status |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in report["results"]:
        if "ms_per_frame" not in row:
            lines.append(f"| {row['layout']} | `{row['runtime']}` | {row['precision']} | - | - | - | - | - | - | - | - "
                         f"| - | FAIL: {row['reason']} |")
            continue
        cameras = " / ".join(f"{v['fps_per_camera']:.1f}" if isinstance(v, dict) else "-"
                             for v in row["cameras"].values())
        cosine = f"{row['cosine_vs_fp32']:.6f}" if "cosine_vs_fp32" in row else "reference"
        lines.append(f"| {row['layout']} | `{row['runtime']}` | {row['precision']} | {row['ms_per_frame']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['backbone_ms']:.1f} | {row['host_ms']:.1f} | "
                     f"{row['first_frame_ms']:.0f} | {row['fps']:.1f} | {row.get('peak_gpu_mb', '-')} | {cosine} | "
                     f"{cameras} | {row['status'] + (': ' + row['reason'] if row.get('reason') else '')} |")
    lines.append("")
    lines += [f"- {check['check']}: {check['status']}: {check['detail']}" for check in report["checks"]]
    return "\n".join(lines) + "\n"


TABLE_BEGIN = "<!-- gpu-check table: begin (written by scripts/gpu_check.py --markdown) -->"
TABLE_END = "<!-- gpu-check table: end -->"


def write_into_markdown(page: Path, table: str) -> None:
    """Replace what lies between ``page``'s gpu-check markers by ``table``."""
    text = page.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{page} has no gpu-check markers ({TABLE_BEGIN} ... {TABLE_END})")
    before, rest = text.split(TABLE_BEGIN, 1)
    after = rest.split(TABLE_END, 1)[1]
    page.write_text(f"{before}{TABLE_BEGIN}\n{table}{TABLE_END}{after}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a few frames, the tiny ViT)")
    parser.add_argument("--model", help="open_clip architecture (default ViT-B-16; on cpu clipomaly-tiny-vit)")
    parser.add_argument("--frames", type=int, help="frames timed per runtime and layout (default 50; on cpu 3)")
    parser.add_argument("--size", default="1280x720", help="frame size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--window-size", type=int, help="window side in pixels (default: the model's; on cpu 128, "
                                                        "where the tiny ViT's 16 patches a window would leave "
                                                        "SC-CLIP's outlier factor a tie that rounding breaks)")
    parser.add_argument("--cameras", default="1,8", help="camera counts batched through one model (default 1,8)")
    parser.add_argument("--runtimes", default="torch,compile,onnx",
                        help="comma-separated runtimes to check (default all three: one that cannot run here fails)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the CUDA test cases")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds (default 480)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels")
    parser.add_argument("--out", type=Path, default=REPO / "gpu_check_out")
    parser.add_argument("--markdown", type=Path, help="also write the table into this Markdown file between its "
                        "gpu-check markers (docs/measurements.md)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    budget = Budget(args.budget_s)
    cpu = args.device == "cpu"
    notes = []
    unpacked = unpack_missing_wheels(args.wheels, REPO / ".gpu-site") if args.wheels.is_dir() else []
    if unpacked:
        notes.append(f"unpacked from {args.wheels.name}: {', '.join(unpacked)}")
    sys.path.insert(0, str(REPO))
    import torch

    from clipomaly_ros import ClipomalyConfig

    if not cpu and not torch.cuda.is_available():
        print(f"gpu check: no CUDA device here (torch {torch.__version__}); run with DEVICE=cpu for the CPU "
              "variant", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    full = can_import("cv2", "scipy")
    if not full:
        notes.append("opencv or scipy is missing here: the dense pass alone was timed (upload, resize, windows, "
                     "transformer, fusion), not the whole pipeline")
    model = args.model or ("clipomaly-tiny-vit" if cpu else "ViT-B-16")
    frames = args.frames or (3 if cpu else 50)
    window_size = args.window_size if args.window_size is not None else (128 if cpu and not args.model else 0)
    width, height = (int(v) for v in args.size.lower().split("x"))
    camera_counts = [int(c) for c in args.cameras.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    image = test_frame((width, height), full)
    checks = []
    if not args.skip_tests:
        print("CUDA test cases ...", flush=True)
        checks.append(run_cuda_tests(budget, args.out))
    print("naming on the device and on the CPU ...", flush=True)
    try:
        checks.append(naming_check(model, window_size, image, args.device))
    except Exception as error:  # noqa: BLE001 - a failure to report, not to stop at
        checks.append({"check": f"names on {args.device} = names on cpu", "status": "FAIL",
                       "detail": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
    cache = Path(tempfile.mkdtemp(prefix="clipomaly-gpu-check-"))
    results, references = [], {}
    for layout, precision in plan(cpu):
        for runtime in runtimes:
            row = {"layout": layout, "runtime": runtime, "precision": precision}
            unavailable = onnx_unavailable(args.device) if runtime == "onnx" else ""
            if unavailable:
                results.append({**row, "status": "FAIL", "reason": f"cannot run here: {unavailable}"})
                continue
            if budget.left < 30:
                results.append({**row, "status": "FAIL", "reason": "not run: time budget"})
                continue
            config = ClipomalyConfig(model=model, random_weights=True, device=args.device, runtime=runtime,
                                     window_layout=layout, cache_dir=str(cache), window_size=window_size)
            print(f"{layout} layout, runtime {runtime}, {precision} ...", flush=True)
            reference = references.get(layout)
            if reference is None and (runtime, precision) != ("torch", "fp32"):
                results.append({**row, "status": "FAIL", "reason": "no eager fp32 reference to compare with"})
                continue
            try:
                measured, grid = measure(config, precision, image, frames, camera_counts, full, reference, budget,
                                         notes.append)
            except Exception as error:  # noqa: BLE001 - one runtime failing must not hide the others' figures
                results.append({**row, "status": "FAIL",
                                "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                continue
            if reference is None:
                references[layout] = grid
            results.append(measured)
    failed = [row for row in results + checks if row["status"] != "ok"]
    report = {"device": args.device, "device_name": torch.cuda.get_device_name() if not cpu else platform.processor()
              or "cpu", "model": model, "size": f"{width}x{height}", "torch": torch.__version__,
              "python": platform.python_version(), "frames": frames, "cameras": " / ".join(map(str, camera_counts)),
              "date": time.strftime("%Y-%m-%d"),
              "verdict": f"{len(failed)} case(s) FAILED" if failed else "every case ok",
              "results": results, "checks": checks, "notes": notes, "elapsed_s": round(time.monotonic() - started, 1)}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(report)
    (args.out / "gpu_check.md").write_text(table)
    if args.markdown is not None:
        write_into_markdown(args.markdown, table)
    print(format_table(report))
    print(summary_table(report))
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
