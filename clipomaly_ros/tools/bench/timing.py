"""The bench's timed parts: each pipeline stage, the node's output work, frames a second for one camera and for
a batch of cameras, the host's share of a frame outside the vision transformer, the planner, the tracker, a live
vocabulary change, the RAM++ tagger's runs and calibration's cost per setting; and the street frames they run on.
Times are medians in milliseconds of fresh frames, the device synchronised around each."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch

from ...core.config import ClipomalyConfig
from ...core.method.results import AnomalyRecord
from ...core.scene.tracking import AnomalyTracker
from ..scenes import render_street_scene
from .flops import tagger_gflop
from .outputs import BenchOutputs, calibrated_follower, every_output_parts

NEW_NAMES = ("lost luggage", "fallen ladder", "loose tarp", "stray goat", "broken pallet", "spilled gravel",
             "lost hubcap", "dropped helmet", "runaway trolley", "abandoned sofa")


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def street_frame(size: tuple[int, int], planted: str = "mattress") -> np.ndarray:
    """The synthetic street scene at ``size`` = (width, height)."""
    return labelled_street_frame(size, planted)[0]


def labelled_street_frame(size: tuple[int, int], planted: str = "mattress") -> tuple[np.ndarray, np.ndarray]:
    """The synthetic street scene at ``size`` = (width, height) and its planted object's (H, W) bool mask."""
    image, truth = render_street_scene(360, 640, planted=planted)
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(truth.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0)


def calibration_cost(pipeline, size: tuple[int, int], evaluate_ms: float, settings: int = 3) -> dict:
    """What ``clipomaly calibrate`` pays per setting and image once the dense pass is done, against
    ``evaluate_ms``, what an evaluate run pays per image (the pipeline's whole frame)."""
    from ...core.datasets import Sample
    from ..calibration import Calibrator, read_frames

    image, truth = labelled_street_frame(size)
    with tempfile.TemporaryDirectory() as folder:
        sample = Sample("bench", Path(folder) / "bench.png", Path(folder) / "bench_label.png")
        cv2.imwrite(str(sample.image), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(sample.label), truth.astype(np.uint8))
        (frame,) = read_frames([sample], anomaly_id=1, ignore_id=255)
        calibrator = Calibrator(pipeline, Path(folder))
        first_pass_s, _ = calibrator.prepare([frame], progress=False)
        times = []
        for threshold in np.linspace(0.5, 0.7, settings):
            start = time.perf_counter()
            calibrator.score([frame], {"uncertainty_threshold": float(threshold), "min_region_area": 400,
                                        "cleanup_radius": 2, "crop_weight": 0.5})
            times.append((time.perf_counter() - start) * 1000.0)
    per_setting = median(times)
    return {"first_pass_ms": round(1000.0 * first_pass_s, 1), "per_setting_ms": round(per_setting, 1),
            "evaluate_ms": round(evaluate_ms, 1), "speed_up": round(evaluate_ms / per_setting, 1)}


def tagger_cost(pipeline, tagging_ms: list[float]) -> dict:
    """The RAM++ tagger's cost from the timed frames' ``tagging`` times (one camera): milliseconds a run (the frames
    it ran on) and a frame amortised over all of them, and GFLOP a run (:func:`~.flops.tagger_gflop`) and a frame
    at that rate."""
    gflop = tagger_gflop(pipeline.tagger)
    runs = [ms for ms in tagging_ms if ms > 0.5]  # a frame without a run spends only the schedule's bookkeeping
    share = len(runs) / len(tagging_ms)
    # means, not medians: a frame's amortised share is then a run's times the share of frames tagged
    return {"period": pipeline.config.tagger_period, "frames": len(tagging_ms), "runs": len(runs),
            "ms_per_run": round(sum(runs) / len(runs), 1) if runs else 0.0,
            "ms_per_frame": round(sum(tagging_ms) / len(tagging_ms), 1),
            "gflop_per_run": round(gflop, 1), "gflop_per_frame": round(gflop * share, 1)}


def time_frames(pipeline, config: ClipomalyConfig, image: np.ndarray, frames: int, cameras: int, device,
                log=print) -> tuple[dict, dict[str, list[float]]]:
    """Every timed figure of one loaded pipeline on ``image`` as the report's fields (the stages' medians, the
    node's output work, frames a second, the host's share per window layout, the vocabulary, the planner and the
    tracker), and each stage's milliseconds frame by frame."""
    outputs = BenchOutputs(pipeline, image, log)
    stages = _stage_times(pipeline, image, frames, device)
    publish = _publish_times(pipeline, image, frames, outputs)
    output_parts = every_output_parts(pipeline, image, frames, outputs)
    end_to_end = _cameras_fps(pipeline, image, frames, cameras, outputs, device)
    host = host_ms_by_layout(pipeline, config, image, frames, cameras, outputs, device)
    outputs.close()
    figures = {
        "stage_ms": {stage: round(median(values), 2) for stage, values in stages.items()},
        "host_ms_outside_backbone": round(median(stages["host"]), 2),
        "node_publish_ms": {label: round(median(values), 2) for label, values in publish.items()},
        "node_publish_with": "rclpy" if outputs.node is not None else "rosbags CDR (no ROS runtime)",
        "every_output_ms": output_parts,
        "fps": {f"{count} camera{'s' if count > 1 else ''}": round(fps, 3) for count, fps in end_to_end.items()},
        "host_ms_per_frame": host,
        **_vocabulary_times(pipeline, config),
        "planner_ms": _planner_ms(pipeline, image, frames),
        "tracker_ms": tracker_cost(pipeline, config.max_regions),
    }
    return figures, stages


def _stage_times(pipeline, image: np.ndarray, frames: int, device) -> dict[str, list[float]]:
    """Each stage's milliseconds over ``frames`` frames, and ``host``: the total less the backbone."""
    stages: dict[str, list[float]] = {}
    for _ in range(frames):
        synchronize(device)
        result = pipeline(image)
        synchronize(device)
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        stages.setdefault("host", []).append(result.timings_ms["total"] - result.timings_ms["backbone"])
    return stages


def _publish_times(pipeline, image: np.ndarray, frames: int, outputs: BenchOutputs) -> dict[str, list[float]]:
    """The node-side cost of a frame with ``anomalies`` only and with every image output; fresh results each
    time, so a map that is not wanted is never computed."""
    publish: dict[str, list[float]] = {}
    for label, images_on in (("anomalies only", False), ("every image output", True)):
        outputs.subscribe_images(images_on)
        publish[label] = [outputs.publish_ms(pipeline(image), images_on) for _ in range(max(2, min(frames, 5)))]
    outputs.subscribe_images(False)
    return publish


def _cameras_fps(pipeline, image: np.ndarray, frames: int, cameras: int, outputs: BenchOutputs,
                 device) -> dict[int, float]:
    """Frames a second end to end, for one camera and for ``cameras`` through one model (their frames batched)."""
    fps = {}
    for count in sorted({1, cameras}):
        times = []
        for _ in range(max(2, min(frames, 3))):
            start = time.perf_counter()
            for result in pipeline.segment_batch([image] * count):
                outputs.publish_ms(result, False)
            synchronize(device)
            times.append(time.perf_counter() - start)
        fps[count] = count / median(times)
    return fps


def host_ms_per_frame(pipeline, image: np.ndarray, frames: int, cameras: int, outputs: BenchOutputs,
                      device) -> dict[str, dict[str, float]]:
    """Host milliseconds per frame: the wall time of a batch of frames through the pipeline and the node's outputs,
    less the time inside the vision transformer (the backbone clock: patch embedding and blocks, for the windows
    and the naming crops), divided by the frames; with ``anomalies`` alone and with every output subscribed, for
    one camera and for ``cameras``. The rest is what Python and the host add to the GPU's work."""
    clock = getattr(pipeline.backend, "clock", None)
    table = {}
    for label, images_on in (("anomalies only", False), ("every output", True)):
        outputs.subscribe_images(images_on)
        row = {}
        for count in sorted({1, cameras}):
            values = []
            for _ in range(max(2, min(frames, 3))):
                synchronize(device)
                before = clock.total_ms if clock is not None else 0.0
                start = time.perf_counter()
                for result in pipeline.segment_batch([image] * count):
                    outputs.publish_ms(result, images_on)
                synchronize(device)
                # the pipeline takes the clock once a frame: its running total is what spans the whole batch
                inside = clock.total_ms - before if clock is not None else 0.0
                values.append(((time.perf_counter() - start) * 1000.0 - inside) / count)
            row[f"{count} camera{'s' if count > 1 else ''}"] = round(median(values), 2)
        table[label] = row
    outputs.subscribe_images(False)
    return table


def host_ms_by_layout(pipeline, config: ClipomalyConfig, image: np.ndarray, frames: int, cameras: int,
                      outputs: BenchOutputs, device) -> dict[str, dict | str]:
    """:func:`host_ms_per_frame` at the configured window layout and, with the eager runtime, at the other one
    too (a second model; a compiled or exported runtime would compile again for it, so it is left out there)."""
    from ...core.method.pipeline import Clipomaly

    host: dict[str, dict | str] = {config.window_layout: host_ms_per_frame(pipeline, image, frames, cameras,
                                                                           outputs, device)}
    other = "light" if config.window_layout == "official" else "official"
    if config.runtime != "torch" or config.backend != "open_clip":
        reason = "not measured: " + ("the toy backend has no windows" if config.backend != "open_clip" else
                                     f"runtime {config.runtime} would build again for it")
        host[other] = reason
        return host
    second = Clipomaly(config.replace(window_layout=other))
    clock = getattr(second.backend, "clock", None)
    if clock is not None:
        clock.synchronize = True
    second(image)  # warm-up
    host[other] = host_ms_per_frame(second, image, frames, cameras, outputs, device)
    second.close()
    return host


def _planner_ms(pipeline, image: np.ndarray, frames: int) -> float:
    """The median milliseconds of the follower's step (placement, tracking, filtering) on a calibrated camera."""
    planner_ms = []
    planner = calibrated_follower(pipeline)
    for index in range(max(3, min(frames, 10))):
        result = pipeline(image)
        start = time.perf_counter()
        planner.update(result, index * 100_000_000, pipeline.config)
        planner_ms.append((time.perf_counter() - start) * 1000.0)
    return round(median(planner_ms), 3)


def _vocabulary_times(pipeline, config: ClipomalyConfig) -> dict[str, float]:
    """Milliseconds to embed the known classes' prompts, and to add ten anomaly names at run time."""
    from ...core.method.vocabulary import TextEmbedder

    start = time.perf_counter()
    TextEmbedder(pipeline.backend, config.prompt_templates).embed(list(config.known_classes))
    known_text_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    pipeline.set_vocabulary(anomaly_vocabulary=list(config.anomaly_vocabulary) + list(NEW_NAMES))
    return {"text_known_classes_ms": round(known_text_ms, 1),
            "vocabulary_change_10_names_ms": round((time.perf_counter() - start) * 1000.0, 1)}


def tracker_cost(pipeline, anomalies: int, frames: int = 200) -> float:
    """Median milliseconds of one :meth:`AnomalyTracker.update` with ``anomalies`` moving anomalies a frame (as
    many live tracks), names compared by the pipeline's text embeddings."""
    tracker = AnomalyTracker(name_embedding=pipeline.name_embeddings)
    names = ("mattress", "tire", "deer", "rock", "dog", "cardboard box", "traffic cone", "garden gnome")
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 1200, size=(anomalies, 2))
    times = []
    for index in range(frames):
        positions += rng.normal(0, 3, size=positions.shape)
        records = [AnomalyRecord(id=k + 1, name=names[k % len(names)], score=0.8,
                                 bbox=(int(x), int(y), int(x) + 60, int(y) + 40), area=2400,
                                 centroid=(x + 30, y + 20), candidates=((names[k % len(names)], 0.8),))
                   for k, (x, y) in enumerate(positions)]
        start = time.perf_counter()
        tracker.update(records, index * 100_000_000)
        times.append((time.perf_counter() - start) * 1000.0)
    return round(median(times[1:]), 3)


