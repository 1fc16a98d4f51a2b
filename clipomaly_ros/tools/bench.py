"""``clipomaly bench``: what each stage costs on this machine, in one run on the same frames.

Random weights by default: the cost of a forward pass does not depend on the weights' values. Reported:

- the median milliseconds of every pipeline stage, the time spent inside the vision transformer (``backbone``:
  patch embedding, blocks, projection, for the dense pass and the naming crops), and the host's share of a frame
  outside it (``total - backbone``);
- the node's conversion and publish cost per frame with only ``anomalies`` subscribed and with every image output
  subscribed (real rclpy publishers when ROS 2 is installed, else message building and CDR serialisation);
- end-to-end frames per second for 1 camera and for ``cameras`` cameras batched through one model;
- the planner step per frame (ground placement and tracking of the frame's anomalies), and the tracker alone
  with ``max_regions`` anomalies a frame;
- per window layout (official, light): windows, tokens and GFLOP per frame, and a Jetson AGX Orin estimate from them;
- opt-in, as they take long: distance and lateral errors of the ground estimates at 5 to 40 m, on perspective street
  scenes segmented by the toy backend (``geometry``); resident memory after the first and the last frame of a long
  run with a small model (``soak_frames``); ``cameras`` cameras batched through one model.

It says at the start how long it will take, from the first frame's time.
"""

from __future__ import annotations

import functools
import gc
import resource
import tempfile
import time
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch

from ..core.config import ClipomalyConfig
from ..core.scene.geometry import CameraModel, CameraMounting
from ..core.scene.planning import AnomalyFollower
from ..core.method.results import AnomalyRecord
from .scenes import StandingObject, render_perspective_street, render_street_scene
from ..core.scene.tracking import AnomalyTracker

NEW_NAMES = ("lost luggage", "fallen ladder", "loose tarp", "stray goat", "broken pallet", "spilled gravel",
             "lost hubcap", "dropped helmet", "runaway trolley", "abandoned sofa")
SOAK_MODEL = "clipomaly-tiny-vit"


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _synchronize(device) -> None:
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
    from ..core.datasets import Sample
    from .calibration import Calibrator, read_frames

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


class NodeOutputs:
    """The node's per-camera publishing (:class:`~clipomaly_ros.ros.camera.CameraStream`) on real rclpy
    publishers, with image subscribers switched on or off; ``None`` where ROS 2 is not installed."""

    def __init__(self, pipeline):
        import rclpy

        from ..ros.camera import IMAGE_OUTPUTS, CameraStream
        from ..ros.messages import OUTPUT_TYPES, MessageFactory, uint8_array
        from ..ros.messages import ros_type

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("clipomaly_bench", context=self.context)
        self.listener = rclpy.create_node("clipomaly_bench_listener", context=self.context)
        publishers = {topic: self.node.create_publisher(ros_type(kind), f"bench/{topic}", 5)
                      for topic, kind in OUTPUT_TYPES.items()}
        factory = MessageFactory(ros_type, byte_array=uint8_array, data_by_reference=True)
        self.camera = CameraStream("bench", publishers, factory, calibrated_follower(pipeline))
        self.config = pipeline.config
        self.factory = factory
        self.frames = 0
        self._kinds = {topic: ros_type(OUTPUT_TYPES[topic]) for topic in IMAGE_OUTPUTS}
        self._subscriptions = []

    def subscribe_images(self, on: bool) -> None:
        for subscription in self._subscriptions:
            self.listener.destroy_subscription(subscription)
        self._subscriptions = [self.listener.create_subscription(kind, f"bench/{topic}", lambda _: None, 5)
                               for topic, kind in self._kinds.items()] if on else []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(self.camera.wanted_outputs(True)) != len(self._subscriptions):
            time.sleep(0.05)

    def publish_ms(self, image: np.ndarray, result) -> float:
        self.frames += 1
        header = self.factory.header(1 + self.frames // 10, (self.frames % 10) * 100_000_000, "camera")
        start = time.perf_counter()
        self.camera.publish(header, image, result, self.config, True)
        return (time.perf_counter() - start) * 1000.0

    def close(self) -> None:
        self.listener.destroy_node()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


@functools.lru_cache(maxsize=1)
def _offline_store():
    from ..ros.bags import typestore_with_built_msgs

    return typestore_with_built_msgs()


def calibrated_follower(pipeline) -> AnomalyFollower:
    """A follower whose camera looks ahead from 1.5 m (focal length the image width), so the 3D outputs are
    built as on a vehicle."""
    follower = AnomalyFollower(pipeline.name_embeddings)
    follower.set_camera_info(CameraModel(1280, 720, np.array([[1280.0, 0, 640], [0, 1280, 360], [0, 0, 1]]),
                                         np.zeros(5)))
    return follower


def offline_step(pipeline):
    """The per-frame step after segmentation (:class:`~clipomaly_ros.ros.frame_step.FrameStep`) with a calibrated
    camera and rosbags' message types, for where rclpy is absent."""
    from ..ros.frame_step import FrameStep
    from ..ros.messages import MessageFactory

    return FrameStep(calibrated_follower(pipeline), MessageFactory(_offline_store().types))


def _offline_publish_ms(image, result, all_outputs: bool, step, config, stamp_ns: int) -> float:
    """Tracking, message building and CDR serialisation with rosbags, where rclpy is absent."""
    from ..ros.camera import IMAGE_OUTPUTS
    from ..ros.messages import OUTPUT_TYPES

    store = _offline_store()
    header = step.factory.header(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000, "camera")
    start = time.perf_counter()
    _, messages = step(header, image, result, config, IMAGE_OUTPUTS if all_outputs else ())
    for topic, message in messages.items():
        store.serialize_cdr(message, OUTPUT_TYPES[topic])
    return (time.perf_counter() - start) * 1000.0


ORIN_FP16_TFLOPS = 42.5
"""Jetson AGX Orin's dense fp16 tensor-core peak: 64 tensor cores x 1.3 GHz x 512 FLOP a clock."""
ORIN_EFFICIENCY = (0.35, 0.7)
"""Share of that peak a TensorRT ViT keeps (the issue's 40-100 ms for 1.1-1.6 TFLOP lies in it)."""


def tagger_cost(pipeline, tagging_ms: list[float]) -> dict:
    """The RAM++ tagger's cost from the timed frames' ``tagging`` times (one camera): milliseconds a run (the frames
    it ran on) and a frame amortised over all of them, and GFLOP a run (counted by PyTorch's FLOP counter on one
    384 x 384 image) and a frame at that rate."""
    import torch.utils.flop_counter

    tagger = pipeline.tagger
    size = tagger.model.image_size
    with torch.inference_mode(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        tagger.model(torch.zeros(1, 3, size, size, device=tagger.device))
    gflop = counter.get_total_flops() / 1e9
    runs = [ms for ms in tagging_ms if ms > 0.5]  # a frame without a run spends only the schedule's bookkeeping
    share = len(runs) / len(tagging_ms)
    # means, not medians: a frame's amortised share is then a run's times the share of frames tagged
    return {"period": pipeline.config.tagger_period, "frames": len(tagging_ms), "runs": len(runs),
            "ms_per_run": round(sum(runs) / len(runs), 1) if runs else 0.0,
            "ms_per_frame": round(sum(tagging_ms) / len(tagging_ms), 1),
            "gflop_per_run": round(gflop, 1), "gflop_per_frame": round(gflop * share, 1)}


def layout_profiles(pipeline, size: tuple[int, int]) -> dict:
    """Per window layout (official, light, as each defines its short side and stride; the model's window): windows,
    tokens and GFLOP of one ``size`` = (width, height) frame, and
    the milliseconds a Jetson AGX Orin would take for them by :data:`ORIN_FP16_TFLOPS` x :data:`ORIN_EFFICIENCY`
    (an estimate from arithmetic, not a measurement). Empty for a backend without a ViT."""
    backend = pipeline.backend
    if not hasattr(backend, "layout_cost"):
        return {}
    from ..core.model.dense import layout_cost, plan_windows

    profiles = {}
    for layout in ("official", "light"):
        config = pipeline.config.replace(window_layout=layout, inference_size=0, window_stride=0)  # as defined
        plan = plan_windows((size[1], size[0]), config.working_short_side, backend.window,
                            config.stride_for(backend.window), backend.encoder.patch_size[0])
        cost = layout_cost(backend.encoder, plan)
        fastest, slowest = (cost.gflop / (ORIN_FP16_TFLOPS * share) for share in reversed(ORIN_EFFICIENCY))
        profiles[layout] = {"windows": cost.windows, "tokens": cost.tokens, "gflop": round(cost.gflop, 3),
                            "working_size": f"{plan.resized[1]}x{plan.resized[0]}",
                            "orin_ms_estimate": [round(fastest, 1), round(slowest, 1)]}
    crop = layout_cost(backend.encoder, plan_windows((backend.crop_size,) * 2, backend.crop_size, backend.crop_size,
                                                     backend.crop_size, backend.encoder.patch_size[0]))
    profiles["crop_gflop"] = round(crop.gflop, 3)
    return profiles


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
    from ..core.method.pipeline import Clipomaly

    image = street_frame(size)
    started = time.perf_counter()
    pipeline = Clipomaly(config)
    load_s = time.perf_counter() - started
    device = getattr(pipeline.backend, "device", torch.device("cpu"))
    clock = getattr(pipeline.backend, "clock", None)
    if clock is not None:
        clock.synchronize = True  # the device's time, not only the host's share of launching it
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipeline.warm_up((size[1], size[0]), cameras)
    started = time.perf_counter()
    pipeline(image)  # warm-up
    frame_s = time.perf_counter() - started
    log(f"bench: one frame took {frame_s:.1f} s; the rest of this run will take about "
        f"{bench_duration_s(frame_s, frames, cameras, soak_frames, geometry):.0f} s")
    outputs = BenchOutputs(pipeline, image, log)
    stages = _stage_times(pipeline, image, frames, device)
    publish = _publish_times(pipeline, image, frames, outputs)
    output_parts = every_output_parts(pipeline, image, frames, outputs)
    end_to_end = _cameras_fps(pipeline, image, frames, cameras, outputs, device)
    host = host_ms_by_layout(pipeline, config, image, frames, cameras, outputs, device)
    outputs.close()
    report = {
        "device": str(device), "backend": getattr(pipeline.backend, "description", config.backend),
        "size": f"{size[0]}x{size[1]}", "frames": frames, "model_load_s": round(load_s, 2),
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
    if clock is not None:
        layout = pipeline.backend.layout_for(image.shape[:2])
        report.update({"windows": len(layout.origins), "working_size": f"{layout.resized[1]}x{layout.resized[0]}",
                       "backbone_ms": report["stage_ms"]["backbone"], "runtime": config.runtime,
                       "window_layout": config.window_layout, "layouts": layout_profiles(pipeline, size)})
    if torch.device(device).type == "cuda":
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if pipeline.tagger is not None:
        report["tagger"] = tagger_cost(pipeline, stages["tagging"])
    report["calibration"] = calibration_cost(pipeline, size, report["stage_ms"]["total"])
    report["runtime_health"] = pipeline.runtime_health()  # a compiled graph run eagerly makes the figures eager's
    pipeline.close()  # a compiled runtime's graphs would outlive it and hold the next run's memory
    del pipeline
    if geometry:
        report["ground_errors"] = ground_errors(log)
    if soak_frames:
        report["memory"] = soak(config, size, soak_frames, log)
    report["peak_resident_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


class BenchOutputs:
    """The node's per-frame output work for the bench: on real rclpy publishers (:class:`NodeOutputs`) where ROS 2
    is installed, else message building and CDR serialisation with rosbags."""

    def __init__(self, pipeline, image: np.ndarray, log=print):
        self.image = image
        try:
            self.node = NodeOutputs(pipeline)
        except ImportError:
            self.node = None
            log("ROS 2 (rclpy) is not installed: node-side cost is message building and CDR serialisation only")
        self.step, self.config = offline_step(pipeline), pipeline.config
        self.frames = 0

    def subscribe_images(self, on: bool) -> None:
        if self.node is not None:
            self.node.subscribe_images(on)

    def publish_ms(self, result, all_outputs: bool) -> float:
        """Milliseconds to track ``result`` and build and send its outputs (the image outputs only with
        ``all_outputs``; on rclpy, with what :meth:`subscribe_images` switched on)."""
        if self.node is not None:
            return self.node.publish_ms(self.image, result)
        self.frames += 1
        return _offline_publish_ms(self.image, result, all_outputs, self.step, self.config,
                                   self.frames * 100_000_000)

    def close(self) -> None:
        if self.node is not None:
            self.node.close()


def every_output_parts(pipeline, image: np.ndarray, frames: int, outputs: BenchOutputs) -> dict[str, dict]:
    """Where a frame's outputs with every output subscribed spend their time (median ms over fresh results):
    ``maps`` (the full-resolution maps, made on first use), ``pictures`` (overlay and class colours drawn),
    ``building`` (every message made from those arrays by the node's message factory, with rclpy's classes
    where installed) and ``building_by_output``, each output's share of it, costliest first (the detections and
    3D outputs together)."""
    from ..core.method.overlay import colour_semantic, render_overlay
    from ..ros.messages import MAP_OUTPUTS, map_image

    factory = outputs.node.factory if outputs.node is not None else outputs.step.factory
    follower = calibrated_follower(pipeline)
    parts: dict[str, list[float]] = {"maps": [], "pictures": [], "building": []}
    by_output: dict[str, list[float]] = {}
    for index in range(max(3, min(frames, 5))):
        result = pipeline(image)
        header = factory.header(1, index * 100_000_000, "camera")
        frame = follower.update(result, index * 100_000_000, pipeline.config)
        start = time.perf_counter()
        for name in ("anomaly_score", "semantic", "anomaly_mask", "instances"):  # the node's order (MAP_OUTPUTS)
            getattr(result, name)
        parts["maps"].append((time.perf_counter() - start) * 1000.0)
        start = time.perf_counter()
        pictures = {"overlay": render_overlay(image, result, records=frame.published),
                    "semantic_color": colour_semantic(result)}
        parts["pictures"].append((time.perf_counter() - start) * 1000.0)
        builds = {"detections and 3D outputs": lambda: factory.result_messages(header, result, frame, ())}
        builds.update({name: functools.partial(lambda n: factory.image(header, *map_image(n, result, frame.published)),
                                               name) for name in MAP_OUTPUTS})
        builds.update({name: functools.partial(lambda p: factory.image(header, p, "rgb8"), picture)
                       for name, picture in pictures.items()})
        total = 0.0
        for name, build in builds.items():
            start = time.perf_counter()
            build()
            elapsed = (time.perf_counter() - start) * 1000.0
            total += elapsed
            by_output.setdefault(name, []).append(elapsed)
        parts["building"].append(total)
    report = {part: round(median(values), 3) for part, values in parts.items()}
    report["building_by_output"] = dict(sorted(((name, round(median(values), 3)) for name, values in by_output.items()),
                                               key=lambda item: -item[1]))
    return report


def _stage_times(pipeline, image: np.ndarray, frames: int, device) -> dict[str, list[float]]:
    """Each stage's milliseconds over ``frames`` frames, and ``host``: the total less the backbone."""
    stages: dict[str, list[float]] = {}
    for _ in range(frames):
        _synchronize(device)
        result = pipeline(image)
        _synchronize(device)
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
            _synchronize(device)
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
                _synchronize(device)
                before = clock.total_ms if clock is not None else 0.0
                start = time.perf_counter()
                for result in pipeline.segment_batch([image] * count):
                    outputs.publish_ms(result, images_on)
                _synchronize(device)
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
    from ..core.method.pipeline import Clipomaly

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
    from ..core.method.vocabulary import TextEmbedder

    start = time.perf_counter()
    TextEmbedder(pipeline.backend, config.prompt_templates).embed(list(config.known_classes))
    known_text_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    pipeline.set_vocabulary(anomaly_vocabulary=list(config.anomaly_vocabulary) + list(NEW_NAMES))
    return {"text_known_classes_ms": round(known_text_ms, 1),
            "vocabulary_change_10_names_ms": round((time.perf_counter() - start) * 1000.0, 1)}


def soak(config: ClipomalyConfig, size: tuple[int, int], frames: int, log=print) -> dict:
    """Resident memory after frame 1 and after frame ``frames`` of a small model (the bundled tiny ViT, or the
    toy backend when that is the configured one), every map and message built each frame."""
    from tqdm import tqdm

    from ..core.method.pipeline import Clipomaly

    small = config if config.backend == "toy" else config.replace(model=SOAK_MODEL, random_weights=True,
                                                                   checkpoint="")
    pipeline = Clipomaly(small)
    step = offline_step(pipeline)
    scenes = [street_frame(size, planted) for planted in ("mattress", "tire", "deer", None)]
    resident = []
    for index in tqdm(range(frames), desc=f"memory soak ({small.model if small.backend != 'toy' else 'toy'})",
                      unit="frame", leave=False):
        image = scenes[index % len(scenes)]
        result = pipeline(image)
        _offline_publish_ms(image, result, True, step, small, index * 100_000_000)
        if index == 0 or index == frames - 1:
            gc.collect()
            resident.append(_resident_mb())
    return {"model": "toy" if small.backend == "toy" else SOAK_MODEL, "frames": frames,
            "resident_mb_first": round(resident[0], 1), "resident_mb_last": round(resident[-1], 1),
            "growth_mb": round(resident[-1] - resident[0], 1)}


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


GROUND_RANGES = (5.0, 10.0, 20.0, 30.0, 40.0)


def ground_errors(log=print) -> dict:
    """Distance and lateral errors of the ground estimates for a 1.8 x 0.6 m object at 5 to 40 m, 0.8 m left
    and 1.5 m right of the lane's middle, on 1280x720 perspective scenes (camera 1.5 m up, pitched 2 degrees
    down, focal length 1000 px) segmented by the toy backend."""
    from ..core.method.pipeline import Clipomaly

    config = ClipomalyConfig(backend="toy", camera_z=1.5, camera_pitch=np.radians(2.0), track_min_hits=1)
    pipeline = Clipomaly(config)
    camera = CameraModel(1280, 720, np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 1]]), np.zeros(5))
    mounting = CameraMounting.from_config(config)
    errors = {}
    for distance in GROUND_RANGES:
        worst_distance, worst_lateral = 0.0, 0.0
        for lateral in (0.8, -1.5):
            image, _ = render_perspective_street(camera, mounting, [StandingObject("mattress", distance, lateral,
                                                                                   1.8, 0.6)])
            follower = AnomalyFollower()
            follower.set_camera_info(camera)
            frame = follower.update(pipeline(image), 0, config)
            located = [record.ground for record in frame.records if record.ground is not None]
            if not located:
                log(f"ground check: nothing located at {distance} m")
                worst_distance = float("inf")
                continue
            truth = float(np.hypot(distance, lateral))
            worst_distance = max(worst_distance, abs(located[0].distance - truth) / truth)
            worst_lateral = max(worst_lateral, abs(located[0].y - lateral))
        errors[f"{distance:g} m"] = {"distance_error_pct": round(100 * worst_distance, 2),
                                     "lateral_error_m": round(worst_lateral, 3)}
    return errors


def format_bench(report: dict) -> str:
    lines = [f"clipomaly bench: {report['backend']}; {report['size']} input"
             + (f", working {report['working_size']}, {report['windows']} windows" if "windows" in report else "")
             + f"; median of {report['frames']} frames", "", f"{'stage':<44}{'ms':>10}", "-" * 54]
    names = {"features": "dense image features", "tagging": "RAM++ tagger (a batch's run; 0 between runs)",
             "unknown": "unknown detection", "naming": "naming",
             "extension": "final segmentation (extension)", "output": "results (records; maps are lazy)",
             "total": "pipeline total", "backbone": "  of which inside the vision transformer"}
    for stage, label in names.items():
        if stage in report["stage_ms"]:
            lines.append(f"{label:<44}{report['stage_ms'][stage]:>10.1f}")
    lines.append(f"{'host time outside the backbone':<44}{report['host_ms_outside_backbone']:>10.1f}")
    for label, ms in report["node_publish_ms"].items():
        lines.append(f"{'node conversion + publish, ' + label:<44}{ms:>10.1f}")
    lines.append(f"{'text: known classes, uncached':<44}{report['text_known_classes_ms']:>10.1f}")
    lines.append(f"{'live vocabulary change, 10 names':<44}{report['vocabulary_change_10_names_ms']:>10.1f}")
    lines.append(f"{'planner step (3D + tracks) of this frame':<44}{report['planner_ms']:>10.2f}")
    lines.append(f"{'tracker alone, max_regions anomalies':<44}{report['tracker_ms']:>10.2f}")
    parts = report["every_output_ms"]
    lines.append(f"every output, its parts: full-size maps {parts['maps']:.1f} ms, pictures drawn "
                 f"{parts['pictures']:.1f} ms, messages built {parts['building']:.2f} ms ("
                 + ", ".join(f"{name} {ms:.2f}" for name, ms in list(parts["building_by_output"].items())[:3])
                 + ", ...)")
    lines += ["", f"node cost measured with {report['node_publish_with']}",
              "end to end (pipeline + anomalies published): "
              + ", ".join(f"{label}: {fps:.3f} frames/s" for label, fps in report["fps"].items())]
    for layout, table in report.get("host_ms_per_frame", {}).items():
        lines.append(f"host ms a frame outside the transformer, {layout} layout: " + (table if isinstance(table, str)
                     else "; ".join(f"{label}: " + ", ".join(f"{count} {ms:.1f}" for count, ms in row.items())
                                    for label, row in table.items())))
    if "tagger" in report:
        cost = report["tagger"]
        lines.append(f"RAM++ tagger (every {cost['period']} frames; {cost['runs']} runs in {cost['frames']} frames): "
                     f"{cost['ms_per_run']:.1f} ms and {cost['gflop_per_run']:.1f} GFLOP a run, "
                     f"{cost['ms_per_frame']:.1f} ms and {cost['gflop_per_frame']:.1f} GFLOP a frame amortised")
    if "calibration" in report:
        cost = report["calibration"]
        lines.append(f"calibrate, per setting and image after the first pass: {cost['per_setting_ms']:.1f} ms, against "
                     f"{cost['evaluate_ms']:.1f} ms for an evaluate run ({cost['speed_up']:.0f}x)")
    if "ground_errors" in report:
        lines.append("ground estimates (toy backend, worst of two lateral positions): " + "; ".join(
            f"{rng}: distance {e['distance_error_pct']:.1f} %, lateral {e['lateral_error_m']:.2f} m"
            for rng, e in report["ground_errors"].items()))
    if "memory" in report:
        memory = report["memory"]
        lines.append(f"memory ({memory['model']}, {memory['frames']} frames): resident "
                     f"{memory['resident_mb_first']:.0f} MB after frame 1, {memory['resident_mb_last']:.0f} MB "
                     f"after frame {memory['frames']} ({memory['growth_mb']:+.1f} MB)")
    if report.get("layouts"):
        profiles = report["layouts"]
        lines += ["", f"window layouts at {report['size']} (this run: {report['window_layout']}, runtime "
                      f"{report['runtime']})",
                  f"{'layout':<10}{'working':>10}{'windows':>9}{'tokens':>8}{'GFLOP':>8}  Jetson AGX Orin, ms "
                  f"(estimate: {ORIN_EFFICIENCY[0]:.0%}-{ORIN_EFFICIENCY[1]:.0%} of {ORIN_FP16_TFLOPS} TFLOP/s fp16)"]
        for name in ("official", "light"):
            profile = profiles[name]
            lines.append(f"{name:<10}{profile['working_size']:>10}{profile['windows']:>9}{profile['tokens']:>8}"
                         f"{profile['gflop']:>8.0f}  {profile['orin_ms_estimate'][0]:.0f}-"
                         f"{profile['orin_ms_estimate'][1]:.0f}")
        lines.append(f"each named region adds one crop: {profiles['crop_gflop']:.0f} GFLOP")
    if report.get("runtime_health"):
        lines.append("RUNTIME FELL BACK, these figures are partly eager's: " + "; ".join(
            f"{key} {value}" for key, value in report["runtime_health"].items()))
    lines.append(f"peak resident {report['peak_resident_mb']:.0f} MB"
                 + (f"; GPU peak {report['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in report else ""))
    return "\n".join(lines)
