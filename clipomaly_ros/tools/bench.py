"""``clipomaly bench``: what each stage costs on this machine.

Random weights by default: the cost of a forward pass does not depend on the weights' values. The floor no
pipeline can beat is the bare backbone (open_clip's unchanged ``visual`` forward) on the same sliding windows; the
report gives the pipeline's time over that floor, measured in the same run.
"""

from __future__ import annotations

import gc
import resource
import time
from statistics import median

import cv2
import numpy as np
import torch

from ..core.config import ClipomalyConfig
from ..core.dense import resize_for_layout
from ..core.scenes import render_street_scene

NEW_NAMES = ("lost luggage", "fallen ladder", "loose tarp", "stray goat", "broken pallet", "spilled gravel",
             "lost hubcap", "dropped helmet", "runaway trolley", "abandoned sofa")


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def backbone_runner(backend, image: np.ndarray):
    """A function timing one unchanged ``visual`` forward over the pipeline's windows for ``image`` (ms)."""
    layout = backend.layout_for(image.shape[:2])
    tensor = backend._to_tensor(resize_for_layout(image, layout))
    windows = torch.stack([tensor[:, top:top + layout.window, left:left + layout.window]
                           for top, left in layout.origins])

    @torch.inference_mode()
    def run() -> float:
        _synchronize(backend.device)
        start = time.perf_counter()
        for chunk in windows.split(backend.window_batch_size):
            backend.model.visual(chunk)
        _synchronize(backend.device)
        return (time.perf_counter() - start) * 1000.0

    return run


def run_bench(config: ClipomalyConfig, size: tuple[int, int], frames: int, log=print) -> dict:
    """Measure the pipeline on a ``size`` = (width, height) street scene over ``frames`` frames."""
    from ..core.pipeline import Clipomaly
    from ..ros.messages import MessageFactory
    from ..ros.bags import typestore_with_vision_msgs
    from ..core.overlay import render_overlay

    width, height = size
    image, _ = render_street_scene(360, 640, planted="mattress")
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    started = time.perf_counter()
    pipeline = Clipomaly(config)
    load_s = time.perf_counter() - started
    device = getattr(pipeline.backend, "device", torch.device("cpu"))
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipeline(image)  # warm-up
    store = typestore_with_vision_msgs()
    factory = MessageFactory(store.types)
    header = factory.header(1, 0, "camera")
    stages: dict[str, list[float]] = {}
    resident = []
    # the backbone is timed between the frames, so both see the same machine state (clock, other load)
    backbone = backbone_runner(pipeline.backend, image) if hasattr(pipeline.backend, "model") else None
    if backbone is not None:
        backbone()
    for _ in range(frames):
        if backbone is not None:
            stages.setdefault("backbone", []).append(backbone())
        _synchronize(device)
        result = pipeline(image)
        _synchronize(device)
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        start = time.perf_counter()
        messages = factory.result_messages(header, result, config.uncertainty_threshold)
        for name, message in messages.items():
            store.serialize_cdr(message, message.__msgtype__)
        stages.setdefault("messages", []).append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        render_overlay(image, result)
        stages.setdefault("overlay", []).append((time.perf_counter() - start) * 1000.0)
        gc.collect()
        resident.append(_resident_mb())

    # text: the known classes from scratch (no cache), then a live change of 10 new names
    from ..core.vocabulary import TextEmbedder

    start = time.perf_counter()
    TextEmbedder(pipeline.backend, config.prompt_templates).embed(list(config.known_classes))
    known_text_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    pipeline.set_vocabulary(anomaly_vocabulary=list(config.anomaly_vocabulary) + list(NEW_NAMES))
    vocabulary_change_ms = (time.perf_counter() - start) * 1000.0

    report = {
        "device": str(device), "backend": getattr(pipeline.backend, "description", config.backend),
        "size": f"{width}x{height}", "frames": frames, "model_load_s": round(load_s, 2),
        "stage_ms": {stage: round(median(values), 2) for stage, values in stages.items()},
        "fps": round(1000.0 / median(stages["total"]), 3),
        "text_known_classes_ms": round(known_text_ms, 1),
        "vocabulary_change_10_names_ms": round(vocabulary_change_ms, 1),
        "resident_mb_first": round(resident[0], 1), "resident_mb_last": round(resident[-1], 1),
        "resident_mb_growth_per_frame": round((resident[-1] - resident[0]) / max(1, frames - 1), 3),
        "peak_resident_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if torch.device(device).type == "cuda":
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if backbone is not None:
        layout = pipeline.backend.layout_for(image.shape[:2])
        backbone_ms = median(stages["backbone"])
        report["windows"] = len(layout.origins)
        report["working_size"] = f"{layout.resized[1]}x{layout.resized[0]}"
        report["backbone_ms"] = round(backbone_ms, 2)
        report["pipeline_over_backbone"] = round(median(stages["total"]) / backbone_ms, 3)
        report["features_over_backbone"] = round(median(stages["features"]) / backbone_ms, 3)
    return report


def format_bench(report: dict) -> str:
    lines = [f"clipomaly bench: {report['backend']}; {report['size']} input"
             + (f", working {report['working_size']}, {report['windows']} windows" if "windows" in report else "")
             + f"; median of {report['frames']} frames", "", f"{'stage':<34}{'ms':>10}", "-" * 44]
    names = {"features": "dense image features", "unknown": "unknown detection", "naming": "naming",
             "extension": "final segmentation (extension)", "output": "results at input resolution",
             "total": "pipeline total", "messages": "message conversion (+CDR)", "overlay": "overlay drawing"}
    for stage, label in names.items():
        if stage in report["stage_ms"]:
            lines.append(f"{label:<34}{report['stage_ms'][stage]:>10.1f}")
    lines.append(f"{'text: known classes, uncached':<34}{report['text_known_classes_ms']:>10.1f}")
    lines.append(f"{'live vocabulary change, 10 names':<34}{report['vocabulary_change_10_names_ms']:>10.1f}")
    if "backbone_ms" in report:
        lines += [f"{'bare backbone, same windows':<34}{report['backbone_ms']:>10.1f}", "",
                  f"pipeline / backbone: {report['pipeline_over_backbone']:.3f}   "
                  f"dense features / backbone: {report['features_over_backbone']:.3f}"]
    lines += [f"end to end: {report['fps']:.3f} frames/s",
              f"memory: resident {report['resident_mb_first']:.0f} MB after the first frame, "
              f"{report['resident_mb_last']:.0f} MB after the last ({report['resident_mb_growth_per_frame']:+.2f} "
              f"MB/frame); peak {report['peak_resident_mb']:.0f} MB"
              + (f"; GPU peak {report['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in report else "")]
    return "\n".join(lines)
