"""The node's per-frame output work as the bench times it: tracking, message building and publishing on real
rclpy publishers where ROS 2 is installed (:class:`NodeOutputs`), else message building and CDR serialisation with
rosbags; and where a frame's outputs spend their time when every output is subscribed."""

from __future__ import annotations

import functools
import time
from statistics import median

import numpy as np

from ...core.scene.geometry import CameraModel
from ...core.scene.planning import AnomalyFollower


class NodeOutputs:
    """The node's per-camera publishing (:class:`~clipomaly_ros.ros.camera.CameraStream`) on real rclpy
    publishers, with image subscribers switched on or off; ``None`` where ROS 2 is not installed."""

    def __init__(self, pipeline):
        import rclpy

        from ...ros.camera import IMAGE_OUTPUTS, CameraStream
        from ...ros.image_messages import uint8_array
        from ...ros.messages import OUTPUT_TYPES, MessageFactory, ros_type

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
    from ...ros.bags import typestore_with_built_msgs

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
    from ...ros.frame_step import FrameStep
    from ...ros.messages import MessageFactory

    return FrameStep(calibrated_follower(pipeline), MessageFactory(_offline_store().types))


def offline_publish_ms(image, result, all_outputs: bool, step, config, stamp_ns: int) -> float:
    """Tracking, message building and CDR serialisation with rosbags, where rclpy is absent."""
    from ...ros.camera import IMAGE_OUTPUTS
    from ...ros.messages import OUTPUT_TYPES

    store = _offline_store()
    header = step.factory.header(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000, "camera")
    start = time.perf_counter()
    _, messages = step(header, image, result, config, IMAGE_OUTPUTS if all_outputs else ())
    for topic, message in messages.items():
        store.serialize_cdr(message, OUTPUT_TYPES[topic])
    return (time.perf_counter() - start) * 1000.0


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
        return offline_publish_ms(self.image, result, all_outputs, self.step, self.config,
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
    from ...core.method.overlay import colour_semantic, render_overlay
    from ...ros.image_messages import MAP_OUTPUTS, map_image

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
