"""The ROS 2 node ``clipomaly``: camera images in, anomalies, maps and diagnostics out.

Topics (relative to the node's namespace):

- in: ``image`` (sensor_msgs/Image) or, with ``input_transport: compressed``, ``image/compressed``
  (sensor_msgs/CompressedImage); depth 1, reliability from ``input_reliability``;
- out, stamped with the input's header and at its resolution: ``anomalies`` (vision_msgs/Detection2DArray),
  ``semantic`` (mono16) with ``label_info`` (vision_msgs/LabelInfo, transient local), ``anomaly_score`` (32FC1),
  ``anomaly_mask`` (mono8), ``anomaly_instances`` (mono16), ``overlay`` and ``semantic_color`` (rgb8, drawn only
  while subscribed);
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period`` seconds;
- service ``~/enable`` (std_srvs/SetBool) pauses and resumes processing with the model kept loaded.

Only the newest frame is processed: inference runs on a worker thread, and a frame that arrives while another
waits replaces it and is counted as dropped.
"""

from __future__ import annotations

import collections
import importlib
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool

from ..core.backend import ModelLoadError
from ..core.config import NODE_NAME, SETTINGS, SETTINGS_BY_NAME, ClipomalyConfig, ConfigError, Setting
from ..core.pipeline import Clipomaly
from .messages import (DECODERS, ON_DEMAND_OUTPUTS, OUTPUT_TYPES, ImageConversionError, MessageFactory,
                       picture_messages)
from ..core.vocabulary import VocabularyError

PARAMETER_TYPES = {
    "str": ParameterType.PARAMETER_STRING, "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
    "str_list": ParameterType.PARAMETER_STRING_ARRAY,
}
INT_LIMIT = 2 ** 31 - 1


def ros_type(name: str) -> Any:
    """The rclpy message class for ``"package/msg/Type"``."""
    package, kind, type_name = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), type_name)


def descriptor_for(setting: Setting) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=setting.name, type=PARAMETER_TYPES[setting.kind],
                                     description=setting.description, read_only=not setting.live)
    if setting.choices:
        descriptor.additional_constraints = f"one of: {', '.join(setting.choices)}"
    if setting.kind == "int" and (setting.minimum is not None or setting.maximum is not None):
        descriptor.integer_range = [IntegerRange(
            from_value=int(setting.minimum if setting.minimum is not None else -INT_LIMIT),
            to_value=int(setting.maximum if setting.maximum is not None else INT_LIMIT), step=1)]
    if setting.kind == "float" and (setting.minimum is not None or setting.maximum is not None):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(setting.minimum if setting.minimum is not None else -1e300),
            to_value=float(setting.maximum if setting.maximum is not None else 1e300), step=0.0)]
    return descriptor


class LatestFrame:
    """A one-slot mailbox: ``put`` replaces what is waiting (returns True when it replaced something)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item) -> bool:
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: float):
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> bool:
        with self._condition:
            had, self._item = self._item is not None, None
            return had

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class Counters:
    """What the node did, for /diagnostics; changed under one lock by the callback and worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = self.processed = self.dropped = self.bad_inputs = self.failed = self.skipped_paused = 0
        self.processing_ms: collections.deque = collections.deque(maxlen=100)
        self.latency_ms: collections.deque = collections.deque(maxlen=100)
        self.processed_times: collections.deque = collections.deque(maxlen=200)


class ClipomalyNode(Node):
    """Runs :class:`~clipomaly_ros.core.pipeline.Clipomaly` on a camera stream (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for setting in SETTINGS:
            default = list(setting.default) if isinstance(setting.default, tuple) else setting.default
            self.declare_parameter(setting.name, default, descriptor_for(setting))
        values = {s.name: self._initial_value(s) for s in SETTINGS}
        for name, value in values.items():
            SETTINGS_BY_NAME[name].validate(value)  # raises ConfigError naming the parameter
        self.publish_overlay = values["publish_overlay"]
        config = ClipomalyConfig(**{s.name: values[s.name] for s in SETTINGS if s.scope == "core"})
        self.get_logger().info("loading the toy backend ..." if config.backend == "toy" else
                               f"loading {config.model} ({config.checkpoint or config.pretrained}) ...")
        self.pipeline = Clipomaly(config)
        self.factory = MessageFactory(ros_type, byte_array=lambda array: array.tobytes())
        self.device = str(getattr(self.pipeline.backend, "device", "cpu"))

        # reliable, with room for a few frames: a lost fragment is re-sent only after the writer's next
        # heartbeat, and a shorter history would already have let the sample go by then
        self.outputs = {topic: self.create_publisher(ros_type(type_name), topic, 10 if topic == "anomalies" else 5)
                        for topic, type_name in OUTPUT_TYPES.items() if topic != "label_info"}
        # transient local so late subscribers get the mapping; more than one kept so that a label_info lost on
        # the wire can still be re-sent after the next frame changed the mapping again
        latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.label_info_publisher = self.create_publisher(ros_type(OUTPUT_TYPES["label_info"]), "label_info",
                                                          latched)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._published_labels: tuple | None = None
        self._labels_lock = threading.Lock()

        self.counters = Counters()
        self._last_reported = (0, 0)
        self.enabled = True
        self.slot = LatestFrame()
        self._warm_up()

        reliability = (ReliabilityPolicy.BEST_EFFORT if values["input_reliability"] == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        image_qos = QoSProfile(depth=1, reliability=reliability)
        if values["input_transport"] == "compressed":
            self.subscription = self.create_subscription(CompressedImage, "image/compressed", self._on_image,
                                                         image_qos)
            self._decode = DECODERS["sensor_msgs/msg/CompressedImage"]
        else:
            self.subscription = self.create_subscription(Image, "image", self._on_image, image_qos)
            self._decode = DECODERS["sensor_msgs/msg/Image"]
        self.enable_service = self.create_service(SetBool, "~/enable", self._on_enable)
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._running = True
        self.worker = threading.Thread(target=self._work, name="clipomaly-inference", daemon=True)
        self.worker.start()
        self.get_logger().info(f"listening on {self.subscription.topic_name} ({values['input_transport']}, "
                               f"{values['input_reliability']})")

    # start-up ------------------------------------------------------------------------------------------------
    def _initial_value(self, setting: Setting):
        try:
            return self.get_parameter(setting.name).value
        except ParameterUninitializedException:
            # rcl reads "[]" in a parameter file as a value without a type
            if setting.kind == "str_list":
                self.set_parameters([Parameter(setting.name, Parameter.Type.STRING_ARRAY, [])])
                return []
            raise ConfigError(f"parameter {setting.name} has no value: set it, or remove it from the parameter file "
                              "to get its default") from None

    def _warm_up(self) -> None:
        started = time.perf_counter()
        self.pipeline(np.full((480, 640, 3), 128, dtype=np.uint8))
        vocabulary = self.pipeline.vocabulary.current
        config = self.pipeline.config
        self.get_logger().info(
            f"ready: {getattr(self.pipeline.backend, 'description', self.pipeline.backend.identity)}; "
            f"device {self.device}; vocabulary: {len(vocabulary.known)} known "
            f"classes, {len(vocabulary.anomaly)} anomaly names, {len(vocabulary.dictionary)} dictionary names "
            f"({len(vocabulary.excluded)} excluded as known); warm-up {1000 * (time.perf_counter() - started):.0f} ms")

    # callbacks -----------------------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        with self.counters.lock:
            self.counters.received += 1
            if not self.enabled:
                self.counters.skipped_paused += 1
                return
        if self.slot.put((msg, time.perf_counter())):
            with self.counters.lock:
                self.counters.dropped += 1

    def _on_enable(self, request, response):
        with self.counters.lock:
            self.enabled = bool(request.data)
        if not request.data and self.slot.clear():
            with self.counters.lock:
                self.counters.skipped_paused += 1
        response.success = True
        response.message = "processing resumed" if request.data else "processing paused (model stays loaded)"
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            setting = SETTINGS_BY_NAME.get(parameter.name)
            if setting is None:
                continue
            try:
                changes[parameter.name] = setting.validate(parameter.value)
            except ConfigError as error:
                return SetParametersResult(successful=False, reason=str(error))
        core = {name: value for name, value in changes.items() if SETTINGS_BY_NAME[name].scope == "core"}
        try:
            if core:
                self.pipeline.configure(**core)
        except (ConfigError, VocabularyError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "publish_overlay" in changes:
            self.publish_overlay = changes["publish_overlay"]
        if core:
            self.get_logger().info(f"applied {', '.join(sorted(core))}; the next frame uses them")
        return SetParametersResult(successful=True)

    # inference -----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while self._running:
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            msg, received = item
            try:
                image = self._decode(msg)
            except ImageConversionError as error:
                with self.counters.lock:
                    self.counters.bad_inputs += 1
                self.get_logger().warning(f"skipped a bad input image: {error}", throttle_duration_sec=5.0)
                continue
            try:
                result = self.pipeline(image)
            except Exception as error:  # the node must outlive any one frame
                with self.counters.lock:
                    self.counters.failed += 1
                self.get_logger().error(f"segmentation failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
                continue
            self._publish(msg.header, image, result)
            now = time.perf_counter()
            with self.counters.lock:
                self.counters.processed += 1
                self.counters.processing_ms.append(result.timings_ms["total"])
                self.counters.latency_ms.append(1000.0 * (now - received))
                self.counters.processed_times.append(now)

    def _publish(self, header, image: np.ndarray, result) -> None:
        threshold = self.pipeline.config.uncertainty_threshold
        # republished when an id's name changes, and when the vocabulary changed (a name moved between known
        # classes and anomalies even if the list reads the same)
        labels = (tuple(result.labels), result.known_count)
        with self._labels_lock:
            if labels != self._published_labels:
                self.label_info_publisher.publish(self.factory.label_info(header, result.labels, threshold))
                self._published_labels = labels
        for topic, message in self.factory.result_messages(header, result, threshold).items():
            self.outputs[topic].publish(message)
        wanted = [name for name in ON_DEMAND_OUTPUTS if self.outputs[name].get_subscription_count() > 0
                  and (self.publish_overlay or name != "overlay")]
        for topic, message in picture_messages(self.factory, header, image, result, wanted).items():
            self.outputs[topic].publish(message)

    def _publish_diagnostics(self) -> None:
        counters = self.counters
        with counters.lock:
            now = time.perf_counter()
            recent = [t for t in counters.processed_times if now - t <= 5.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            processing = float(np.mean(counters.processing_ms)) if counters.processing_ms else 0.0
            latency = float(np.mean(counters.latency_ms)) if counters.latency_ms else 0.0
            values = {
                "frames received": counters.received, "frames processed": counters.processed,
                "frames dropped": counters.dropped, "bad inputs": counters.bad_inputs,
                "failed frames": counters.failed, "frames skipped while paused": counters.skipped_paused,
                "processed fps": f"{fps:.2f}", "processing ms": f"{processing:.1f}",
                "input to output latency ms": f"{latency:.1f}",
            }
            problems = (counters.bad_inputs, counters.failed)
            enabled = self.enabled
        vocabulary = self.pipeline.vocabulary.current
        values.update({"known classes": len(vocabulary.known), "anomaly vocabulary": len(vocabulary.anomaly),
                       "dictionary names": len(vocabulary.dictionary), "device": self.device,
                       "enabled": enabled})
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: pipeline", hardware_id=self.device,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        if problems != self._last_reported:
            status.level = DiagnosticStatus.WARN
            status.message = (f"{problems[0] - self._last_reported[0]} bad inputs, "
                              f"{problems[1] - self._last_reported[1]} failed frames since the last report")
        else:
            status.level = DiagnosticStatus.OK
            status.message = "processing" if enabled else "paused"
        self._last_reported = problems
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def destroy_node(self):
        self._running = False
        self.slot.close()
        if self.worker.is_alive():
            self.worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ClipomalyNode()
        rclpy.spin(node)
    except (ConfigError, ModelLoadError, VocabularyError) as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {error}")
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
