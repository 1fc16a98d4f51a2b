"""One bench run: load and warm the pipeline, say how long the run will take, then gather the timed figures, the
arithmetic model's, and the opt-in parts (the ground-accuracy check, the memory soak) into one report."""

from __future__ import annotations

import resource
import time

import torch

from ...core.config import ClipomalyConfig
from ..ground_accuracy import ground_errors
from .flops import layout_profiles
from .soak import soak
from .timing import calibration_cost, street_frame, tagger_cost, time_frames


def bench_duration_s(frame_s: float, frames: int, cameras: int, soak_frames: int, geometry: bool) -> float:
    """Seconds a bench run will take, from one frame's ``frame_s``: the timed frames, the node's publishing, the
    camera batches, the planner frames and the calibration pass, then the optional parts."""
    pipeline_frames = (frames + 2 * max(2, min(frames, 5)) + max(2, min(frames, 3)) * (1 + (cameras > 1) * cameras)
                       + max(3, min(frames, 10)) + 2)
    return pipeline_frames * frame_s + soak_frames * 0.05 + (12.0 if geometry else 0.0)


def run_bench(config: ClipomalyConfig, size: tuple[int, int], frames: int, cameras: int = 1,
              soak_frames: int = 0, geometry: bool = False, log=print) -> dict:
    """Measure the pipeline on a ``size`` = (width, height) street scene over ``frames`` frames; the memory soak
    (``soak_frames``), the ground check (``geometry``) and camera batches (``cameras`` > 1) are opt-in."""
    image = street_frame(size)
    pipeline, load_s = _loaded_pipeline(config, size, cameras)
    device = getattr(pipeline.backend, "device", torch.device("cpu"))
    started = time.perf_counter()
    pipeline(image)  # warm-up
    frame_s = time.perf_counter() - started
    log(f"bench: one frame took {frame_s:.1f} s; the rest of this run will take about "
        f"{bench_duration_s(frame_s, frames, cameras, soak_frames, geometry):.0f} s")
    report = {"device": str(device), "backend": getattr(pipeline.backend, "description", config.backend),
              "size": f"{size[0]}x{size[1]}", "frames": frames, "model_load_s": round(load_s, 2)}
    figures, stages = time_frames(pipeline, config, image, frames, cameras, device, log)
    report.update(figures)
    report.update(_model_figures(pipeline, config, image, size, device, figures["stage_ms"], stages.get("tagging")))
    pipeline.close()  # a compiled runtime's graphs would outlive it and hold the next run's memory
    del pipeline
    if geometry:
        report["ground_errors"] = ground_errors(log)
    if soak_frames:
        report["memory"] = soak(config, size, soak_frames, log)
    report["peak_resident_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


def _loaded_pipeline(config: ClipomalyConfig, size: tuple[int, int], cameras: int):
    """The pipeline of ``config``, its backbone clocked on the device, warmed up for ``cameras`` cameras of
    ``size`` = (width, height); and the seconds its loading took."""
    from ...core.method.pipeline import Clipomaly

    started = time.perf_counter()
    pipeline = Clipomaly(config)
    load_s = time.perf_counter() - started
    clock = getattr(pipeline.backend, "clock", None)
    if clock is not None:
        clock.synchronize = True  # the device's time, not only the host's share of launching it
    if torch.device(getattr(pipeline.backend, "device", "cpu")).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipeline.warm_up((size[1], size[0]), cameras)
    return pipeline, load_s


def _model_figures(pipeline, config: ClipomalyConfig, image, size: tuple[int, int], device,
                   stage_ms: dict[str, float], tagging_ms: list[float] | None) -> dict:
    """What the run's model adds to the report: its windows and the window layouts' arithmetic (a ViT backend),
    the GPU's peak memory, the tagger's cost (from its frame-by-frame ``tagging_ms``), calibration's cost per
    setting against an evaluate run's ``stage_ms["total"]``, and the runtime's health."""
    figures: dict = {}
    if getattr(pipeline.backend, "clock", None) is not None:
        layout = pipeline.backend.layout_for(image.shape[:2])
        figures.update({"windows": len(layout.origins), "working_size": f"{layout.resized[1]}x{layout.resized[0]}",
                        "backbone_ms": stage_ms["backbone"], "runtime": config.runtime,
                        "window_layout": config.window_layout, "layouts": layout_profiles(pipeline, size)})
    if torch.device(device).type == "cuda":
        figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if pipeline.tagger is not None:
        figures["tagger"] = tagger_cost(pipeline, tagging_ms)
    figures["calibration"] = calibration_cost(pipeline, size, stage_ms["total"])
    figures["runtime_health"] = pipeline.runtime_health()  # a compiled graph run eagerly makes the figures eager's
    return figures
