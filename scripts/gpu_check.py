#!/usr/bin/env python3
"""The GPU check: every runtime and window layout of the dense encoder on one machine, in one call.

Made for a bare CUDA machine with Python and PyTorch but no network: open_clip and the other pure model-side
packages come from ``.gpu-wheels`` (``make gpu-wheels`` fills it on a connected machine), unpacked into
``.gpu-site`` only where the machine lacks them. It measures ViT-B-16 (fp16 on CUDA) with random weights on
1280x720 frames, for the official and light layouts and every runtime that can run there:

- ms per frame (median after warm-up), split into the vision transformer (``backbone``) and the rest (``host``),
  frames per second and peak GPU memory; the whole pipeline when its host packages (opencv, scipy) are there,
  else the dense pass alone (upload, resize, windows, transformer, fusion), and the table says which;
- 1, 4 and 8 cameras batched through one model;
- each runtime's per-patch cosine against eager PyTorch on the same frame.

It keeps to a time budget (``--budget-s``, 330 s by default): a part that would not fit is skipped and named.
Writes ``gpu_check.json`` under ``--out`` and prints a table. ``--device cpu`` runs the same steps on a CPU with
a few frames and the bundled tiny ViT, which is how CI proves this script.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path
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

        from clipomaly_ros.core.scenes import render_street_scene

        image, _ = render_street_scene(360, 640, planted="mattress")
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(16, axis=0).repeat(16, axis=1)[:size[1], :size[0]])


class Subject:
    """What is timed for one runtime and layout: the whole pipeline, or the backend's dense pass alone."""

    def __init__(self, config, full: bool):
        import torch

        from clipomaly_ros.core.model.open_clip_backend import OpenClipBackend

        self.torch = torch
        if full:
            from clipomaly_ros.core.pipeline import Clipomaly

            self.pipeline = Clipomaly(config)
            self.backend = self.pipeline.backend
        else:
            self.pipeline, self.backend = None, OpenClipBackend(config)
        self.backend.clock.synchronize = True  # the device's time for the backbone, not the launch's

    def frame(self, image) -> tuple[float, float]:
        """Milliseconds for one frame, and of those inside the vision transformer."""
        milliseconds, results = self.batch([image])
        if results is None:
            return milliseconds, self.backend.clock.take()
        return milliseconds, results[0].timings_ms["backbone"]

    def batch(self, images) -> tuple[float, list | None]:
        """Milliseconds for ``images`` (one per camera, one backbone pass), and the pipeline's results."""
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
        return self.backend.dense_features(image).grid.float()


def measure(config, image, frames: int, camera_counts, full: bool, reference, budget: Budget, log) -> dict:
    """One runtime at one layout: warm-up, per-frame timing, camera batches, cosine against ``reference``."""
    import torch

    cuda = config.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    subject = Subject(config, full)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    subject.backend.warm_up(image.shape[:2], max(camera_counts))
    for _ in range(2):
        subject.frame(image)
    warm_up_s = time.perf_counter() - started
    cost = subject.backend.layout_cost(image.shape[:2])
    report = {"runtime": config.runtime, "layout": config.window_layout, "load_s": round(load_s, 1),
              "warm_up_s": round(warm_up_s, 1), "windows": cost.windows, "tokens": cost.tokens,
              "gflop": round(cost.gflop, 1), "measured": "pipeline" if full else "dense pass",
              "description": subject.backend.description}
    totals, backbones = [], []
    for index in range(frames):
        if index >= 3 and budget.left < 20:
            log(f"  {config.runtime}/{config.window_layout}: time budget reached after {index} frames")
            break
        total, backbone = subject.frame(image)
        totals.append(total)
        backbones.append(backbone)
    report.update(frames=len(totals), ms_per_frame=round(median(totals), 2),
                  backbone_ms=round(median(backbones), 2),
                  host_ms=round(median(t - b for t, b in zip(totals, backbones)), 2),
                  fps=round(1000.0 / median(totals), 1))
    cameras = {}
    for count in camera_counts:
        if budget.left < 15:
            cameras[str(count)] = "skipped: time budget"
            continue
        times = [subject.batch([image] * count)[0] for _ in range(max(2, min(frames // 5, 10)))]
        cameras[str(count)] = {"ms_per_batch": round(median(times), 1),
                               "fps_per_camera": round(1000.0 / median(times), 1)}
    report["cameras"] = cameras
    grid = subject.grid(image)
    if reference is not None:
        report["cosine_vs_eager"] = round(float(torch.nn.functional.cosine_similarity(grid, reference,
                                                                                       dim=-1).min()), 6)
    if cuda:
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del subject
    return report, grid


def runtimes_here(device: str, log) -> list[str]:
    """The runtimes that can run on ``device`` here: eager always; compile where a compiler backend works;
    onnx where ONNX Runtime (with a GPU provider on a GPU) and the exporter are installed."""
    runtimes = ["torch", "compile"]
    if not can_import("onnxruntime", "onnx", "onnxscript"):
        log("runtime onnx: skipped (onnxruntime, onnx or onnxscript not installed here)")
        return runtimes
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if device.startswith("cuda") and not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(providers):
        log(f"runtime onnx: skipped (this onnxruntime has no GPU provider: {', '.join(providers)})")
        return runtimes
    return runtimes + ["onnx"]


def format_table(report: dict) -> str:
    lines = [f"clipomaly gpu check: {report['device_name']}, {report['model']} ({report['precision']}), "
             f"{report['size']}, torch {report['torch']}",
             f"{'layout':<9}{'runtime':<9}{'windows':>8}{'GFLOP':>8}{'ms/frame':>10}{'backbone':>10}{'host':>8}"
             f"{'fps':>8}{'GPU MB':>8}{'cos':>10}  cameras 1/4/8 (fps each)", "-" * 118]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"{row['layout']:<9}{row['runtime']:<9}  {row['error']}")
            continue
        cameras = " / ".join(f"{v['fps_per_camera']:.1f}" if isinstance(v, dict) else "-"
                             for v in row["cameras"].values())
        gpu_mb = f"{row['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in row else "-"
        lines.append(f"{row['layout']:<9}{row['runtime']:<9}{row['windows']:>8}{row['gflop']:>8.0f}"
                     f"{row['ms_per_frame']:>10.1f}{row['backbone_ms']:>10.1f}{row['host_ms']:>8.1f}"
                     f"{row['fps']:>8.1f}{gpu_mb:>8}{row.get('cosine_vs_eager', 1.0):>10.6f}"
                     f"  {cameras}")
    lines.append(f"measured: {', '.join(sorted({r.get('measured', '-') for r in report['results']}))}; "
                 f"{report['elapsed_s']:.0f} s in all")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a few frames, the tiny ViT)")
    parser.add_argument("--model", help="open_clip architecture (default ViT-B-16; on cpu clipomaly-tiny-vit)")
    parser.add_argument("--frames", type=int, help="frames timed per runtime and layout (default 50; on cpu 3)")
    parser.add_argument("--size", default="1280x720", help="frame size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--window-size", type=int, help="window side in pixels (default: the model's; on cpu 128, "
                                                        "where the tiny ViT's 16 patches a window would leave "
                                                        "SC-CLIP's outlier factor a tie that rounding breaks)")
    parser.add_argument("--cameras", default="1,4,8", help="camera counts batched through one model")
    parser.add_argument("--runtimes", help="comma-separated subset of torch,compile,onnx (default: all that run)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="time budget in seconds (default 330)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels")
    parser.add_argument("--out", type=Path, default=REPO / "gpu_check_out")
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
    full = can_import("cv2", "scipy")
    if not full:
        notes.append("opencv or scipy is missing here: the dense pass alone was timed (upload, resize, windows, "
                     "transformer, fusion), not the whole pipeline")
    model = args.model or ("clipomaly-tiny-vit" if cpu else "ViT-B-16")
    frames = args.frames or (3 if cpu else 50)
    window_size = args.window_size if args.window_size is not None else (128 if cpu and not args.model else 0)
    width, height = (int(v) for v in args.size.lower().split("x"))
    camera_counts = [int(c) for c in args.cameras.split(",")]
    runtimes = runtimes_here(args.device, notes.append)
    if args.runtimes:
        runtimes = [r for r in runtimes if r in args.runtimes.split(",")]
    image = test_frame((width, height), full)
    cache = Path(tempfile.mkdtemp(prefix="clipomaly-gpu-check-"))
    results = []
    for layout in ("official", "light"):
        reference = None
        for runtime in runtimes:
            if budget.left < 30:
                results.append({"layout": layout, "runtime": runtime, "error": "skipped: time budget"})
                continue
            config = ClipomalyConfig(model=model, random_weights=True, device=args.device, runtime=runtime,
                                     window_layout=layout, cache_dir=str(cache), window_size=window_size)
            print(f"{layout} layout, runtime {runtime} ...", flush=True)
            try:
                row, grid = measure(config, image, frames, camera_counts, full, reference, budget, notes.append)
            except Exception as error:  # noqa: BLE001 - one runtime failing must not hide the others' figures
                results.append({"layout": layout, "runtime": runtime,
                                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                continue
            if runtime == "torch":
                reference = grid
            results.append(row)
    report = {"device": args.device, "device_name": torch.cuda.get_device_name() if not cpu else platform.processor()
              or "cpu", "model": model, "precision": "fp32" if cpu else "fp16", "size": f"{width}x{height}",
              "torch": torch.__version__, "python": platform.python_version(), "frames": frames,
              "results": results, "notes": notes, "elapsed_s": round(time.monotonic() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0 if results and not all("error" in row for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
