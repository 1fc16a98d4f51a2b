"""The ROS 2 node ``clipomaly``: camera images in, anomalies, maps and diagnostics out.

Topics (relative to the node's namespace):

- in: ``image`` (sensor_msgs/Image) or, with ``input_transport: compressed``, ``image/compressed``
  (sensor_msgs/CompressedImage); depth 1, reliability from ``input_reliability``;
- in: ``camera_info`` (sensor_msgs/CameraInfo, best effort, the newest kept): intrinsics and distortion for the
  3D outputs;
- in: ``/tf_static`` and ``/tf`` (tf2_msgs/TFMessage): the camera's mounting in ``base_frame`` is the chain from
  there to the images' frame; the ``camera_*`` parameters while none is known;
- out, stamped with the input's header and at its resolution: ``anomalies`` and ``anomalies_on_road``
  (vision_msgs/Detection2DArray; ``id`` = track id; only confirmed tracks unless ``publish_unconfirmed``) and
  ``label_info`` (vision_msgs/LabelInfo, transient local) always; with a camera_info, ``anomalies_3d``
  (vision_msgs/Detection3DArray), ``anomaly_markers`` (visualization_msgs/MarkerArray), ``anomaly_points``
  (sensor_msgs/PointCloud2, for Nav2) and ``anomalies_objects`` (autoware_perception_msgs/DetectedObjects),
  stamped with the image and in ``base_frame``; the images ``semantic`` (mono16),
  ``anomaly_score`` (32FC1), ``anomaly_mask`` (mono8), ``anomaly_instances`` (mono16: pixel value k belongs to
  the k-th detection of ``anomalies`` with the same stamp), ``overlay`` and ``semantic_color`` (rgb8) are
  computed and published only while they have subscribers;
- ``/diagnostics`` (diagnostic_msgs/DiagnosticArray) every ``diagnostics_period`` seconds, one status per camera;
- service ``~/enable`` (std_srvs/SetBool) pauses and resumes processing with the model kept loaded.

With ``cameras: [front, rear]`` the node serves several cameras with one model: each has its topics under its
name (``front/image``, ``front/anomalies``, ...), its own newest-frame slot and counters, and the frames waiting
from all cameras go through the backbone in one batch.

A lifecycle node: with ``managed: false`` (the default) it configures and activates itself at start; with
``managed: true`` it waits unconfigured for a lifecycle manager. Configure loads the model, activate subscribes,
deactivate stops processing with the model kept, cleanup frees it.

Only the newest frame of each camera is processed: inference runs on a worker thread, and a frame that arrives
while another of the same camera waits replaces it and is counted as dropped.
"""

from __future__ import annotations

import sys
import gc
import importlib
import threading
import time
import traceback
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool
from tf2_msgs.msg import TFMessage

from ..core.model.adaptation import describe_sidecar
from ..core.model.backend import ModelLoadError
from ..core.config import (NODE_NAME, SETTINGS, SETTINGS_BY_NAME, ClipomalyConfig, ConfigError, Setting,
                           per_camera_setting)
from ..core.images import on_host
from ..core.pipeline import Clipomaly
from ..core.frames import FrameTree
from ..core.planning import AnomalyFollower
from .autoware import autoware_style
from .camera import CameraStream, LatestFrames, Watchdog, decode_frame
from .messages import (DECODERS, OPTIONAL_OUTPUTS, OUTPUT_TYPES, ImageConversionError, MessageFactory,
                       DeviceDecoder, uint8_array)
from ..core.vocabulary import VocabularyError
from ..core.interrupt import GracefulStop, StopRequested
from .image_input import ImageInput
from .transforms import MountingFinder, add_transforms

PARAMETER_TYPES = {
    "str": ParameterType.PARAMETER_STRING, "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
    "str_list": ParameterType.PARAMETER_STRING_ARRAY,
}
INT_LIMIT = 2 ** 31 - 1
PLANNER_OUTPUTS = ("anomalies", "anomalies_on_road", "anomalies_3d", "anomaly_markers", "anomaly_points",
                   "anomalies_objects")
"""Small per-frame messages a planner acts on: their publishers keep more history than the images'."""
FINAL_COUNTS = ("frames received", "frames processed", "frames dropped", "bad inputs", "failed frames",
                "frames skipped while paused", "frames dropped at shutdown")
"""The counters of the node's last log line."""
WARM_UP_SIZE = (720, 1280)
"""(height, width) of the frames a compiled runtime is warmed up for at start: the common vehicle camera; other
sizes compile once on their first frame."""


def ros_type(name: str) -> Any:
    """The rclpy message class for ``"package/msg/Type"``."""
    package, kind, type_name = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), type_name)


def descriptor_for(setting: Setting, name: str | None = None) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=name or setting.name, type=PARAMETER_TYPES[setting.kind],
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


class StartupError(RuntimeError):
    """The node could not start; it has logged the reason as FATAL, and the process exits with status 1."""


STARTUP_ERRORS = (ConfigError, ModelLoadError, VocabularyError, ParameterException)
"""What a bad setting, missing weights or an empty vocabulary raise while the node configures: a reason to log,
never a crash."""


class ClipomalyNode(LifecycleNode):
    """Runs :class:`~clipomaly_ros.core.pipeline.Clipomaly` on one or more camera streams (see the module
    docstring). A lifecycle node: with ``managed: false`` (the default) it configures and activates itself at
    start, with ``managed: true`` it waits unconfigured for a lifecycle manager."""

    def __init__(self, autostart: bool = True, **kwargs):
        """``autostart``: start at once (:meth:`start`); ``main`` starts the node itself, so that a signal during
        start-up finds the node to tear down."""
        super().__init__(NODE_NAME, **kwargs)
        self.pipeline = None
        self.active = False
        self._running = False
        self._failure = ""
        self._batch_lock = threading.Lock()
        self.worker = None
        self.worker_join_timeout = 30.0
        """Seconds that cleanup and deactivate wait for the frame in work; a worker still running after them is
        reported and kept in :attr:`_lingering_worker`, and no other starts while it lives."""
        self._lingering_worker: threading.Thread | None = None
        self.warm_up_thread: int | None = None
        """The thread that warmed the runtime up; frames are served on it (compiled CUDA graphs are per thread)."""
        self.serving_thread: int | None = None
        self._in_work: set[str] = set()
        """Cameras whose frame the worker holds; each is settled once (:meth:`_settle`), by the worker or, after
        the join time-out at shutdown, as dropped."""
        self._in_work_lock = threading.Lock()
        self._outputs_off: set[str] = set()
        self.frame_tree = FrameTree()
        self.mounting_finder = MountingFinder(self.frame_tree)
        self.transforms_rejected = 0
        try:
            self._declare_settings()
        except (ConfigError, ParameterException) as error:
            self.get_logger().fatal(f"cannot start: {error}")
            raise StartupError(str(error)) from None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if autostart:
            self.start()

    def start(self) -> None:
        """With ``managed: false``, configure and activate (raises :class:`StartupError` after logging why not);
        with ``managed: true``, wait for a lifecycle manager."""
        if self.managed:
            self.get_logger().info("managed: unconfigured, waiting for a lifecycle manager (or `ros2 lifecycle set "
                                   f"{self.get_fully_qualified_name()} configure`, then activate)")
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise StartupError(self._failure)  # on_configure has logged it as FATAL
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise StartupError(self._failure)

    # parameters ----------------------------------------------------------------------------------------------
    def _declare_settings(self) -> None:
        """Declare every setting as a parameter (values are read and checked on configure) and the per-camera
        mountings given at start (``front.camera_x``, ...)."""
        overrides = getattr(self, "_parameter_overrides", {})
        given_managed = overrides.get("managed")
        self.managed = bool(SETTINGS_BY_NAME["managed"].validate(given_managed.value)) \
            if given_managed is not None and given_managed.type_ != Parameter.Type.NOT_SET else False
        for setting in SETTINGS:
            given = overrides.get(setting.name)
            if given is not None and given.type_ != Parameter.Type.NOT_SET:
                setting.validate(given.value)  # before rclpy's own range check, which would not say the range
            default = list(setting.default) if isinstance(setting.default, tuple) else setting.default
            if default == [] and setting.kind == "str_list":
                default = Parameter.Type.STRING_ARRAY  # rclpy would type an empty list as a byte array
            descriptor = descriptor_for(setting)
            if self.managed and setting.name != "managed":
                # an unconfigured managed node takes any setting: _on_set_parameters refuses the ones that are
                # not live while it is configured
                descriptor.read_only = False
            # an empty list: the default, or "[]" in a parameter file, which rcl reads as a value without a type
            unset = setting.kind == "str_list" and (given.type_ == Parameter.Type.NOT_SET if given is not None
                                                    else default == Parameter.Type.STRING_ARRAY)
            if unset:
                # declared by type only it would have no value, and one such parameter empties every answer of
                # get_parameters (`ros2 param dump` wrote nothing); rclpy types an empty list as bytes and a
                # read-only parameter cannot be given one after declaring: writable here, refused when running by
                # _on_set_parameters as every setting that is not live is
                descriptor.read_only = False
            self.declare_parameter(setting.name, Parameter.Type.STRING_ARRAY if unset else default, descriptor)
            if unset:
                self.set_parameters([Parameter(setting.name, Parameter.Type.STRING_ARRAY, [])])
        self.mounting_parameters = []
        for name in sorted(overrides):
            found = per_camera_setting(name)
            if found is not None:
                self.declare_parameter(name, found[1].validate(overrides[name].value), descriptor_for(found[1], name))
                self.mounting_parameters.append(name)

    def _initial_value(self, setting: Setting):
        try:
            return self.get_parameter(setting.name).value
        except ParameterUninitializedException:
            raise ConfigError(f"parameter {setting.name} has no value: set it, or remove it from the parameter file "
                              "to get its default") from None

    def _mountings(self, cameras: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """The per-camera mountings (``front.camera_x``, ...), checked against ``cameras``; a camera without them
        uses the plain ``camera_*`` parameters."""
        mountings: dict[str, dict[str, float]] = {}
        for name in self.mounting_parameters:
            camera, setting = per_camera_setting(name)
            if camera not in cameras:
                raise ConfigError(f"parameter {name} is for camera '{camera}', which is not in cameras "
                                  f"({', '.join(cameras) or 'empty'})")
            mountings.setdefault(camera, {})[setting.name] = setting.validate(self.get_parameter(name).value)
        return mountings

    # lifecycle -----------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Parameters read and checked, the model and text embeddings loaded and warmed up, publishers, the enable
        service, /diagnostics and the inference thread started. A failure releases what was made and returns
        FAILURE with the reason logged."""
        try:
            self._configure()
        except Exception as error:  # noqa: BLE001 - rclpy would turn it into a silent ERROR
            if isinstance(error, STARTUP_ERRORS):
                self._failure = error.render("ros") if isinstance(error, ModelLoadError) else str(error)
            else:
                self._failure = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
            if self.managed:
                self.get_logger().error(f"configure failed: {self._failure}")
            else:
                self.get_logger().fatal(f"cannot start: {self._failure}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscriptions to the images, camera_info and the robot's transforms; from now on frames are
        processed and published."""
        compressed = self.input_type is CompressedImage
        for name, camera in self.cameras.items():
            info_topic = self.resolve_topic_name(f"{camera.prefix}camera_info")
            self.camera_info_subscriptions[name] = self.create_subscription(
                CameraInfo, info_topic, camera.camera_info_arrived,
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
            topic = f"{camera.prefix}image/compressed" if compressed else f"{camera.prefix}image"
            self.image_inputs[name] = ImageInput(
                self, self.input_type, self.resolve_topic_name(topic), self.input_reliability,
                lambda msg, camera=camera: self._on_image(camera, msg), self.get_logger().info)
            camera.image_input = self.image_inputs[name]
        # as tf2's listener reads them: /tf_static latched, /tf reliable
        self.transform_subscriptions = [
            self.create_subscription(TFMessage, "/tf_static", self._on_transforms,
                                     QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                                reliability=ReliabilityPolicy.RELIABLE)),
            self.create_subscription(TFMessage, "/tf", self._on_transforms,
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))]
        self.topic_check_timer = self.create_timer(2.0, self._check_input_topics)
        self.active = True
        topics = ", ".join(f"{image_input.topic} ({image_input.qos_reason})"
                           for image_input in self.image_inputs.values())
        self.get_logger().info(f"active: listening on {topics}, {self.input_transport}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscriptions removed and processing stopped; the model stays loaded. Frames that were waiting are
        counted as skipped, and a batch in work finishes before this returns, so nothing is published after."""
        self.active = False
        self._unsubscribe()
        for name in self.frames.clear():
            self.cameras[name].count("dropped_at_shutdown")
        # the batch in work, if any, publishes or gives up first; one that outlives the time-out is dropped, and
        # _process publishes nothing for it while inactive
        if self._batch_lock.acquire(timeout=self.worker_join_timeout):
            self._batch_lock.release()
        else:
            self._drop_in_work()
            self.get_logger().error(f"the frame in work did not finish within {self.worker_join_timeout:g} s: it is "
                                    "counted as dropped at shutdown, and its outputs are not published")
        self.watchdog.progress()
        self.get_logger().info("inactive: processing stopped, the model stays loaded")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """The model, its GPU memory, the publishers and the inference thread released."""
        self._release()
        self.get_logger().info("unconfigured: the model and its memory are released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"a lifecycle transition failed from {state.label}: releasing everything")
        self.active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        self._refuse_while_lingering()
        values = {s.name: self._initial_value(s) for s in SETTINGS}
        for name, value in values.items():
            values[name] = SETTINGS_BY_NAME[name].validate(value)  # raises ConfigError naming the parameter
        mountings = self._mountings(values["cameras"])
        self.publish_overlay = values["publish_overlay"]
        self.max_input_pixels = values["max_input_pixels"]
        self.stall_timeout = values["stall_timeout"]
        config = ClipomalyConfig(**{s.name: values[s.name] for s in SETTINGS if s.scope == "core"})
        autoware_style(config)  # an autoware_labels section the dictionary lacks: said now, not per frame
        self.get_logger().info("loading the toy backend ..." if config.backend == "toy" else
                               f"loading {config.model} ({config.checkpoint or config.pretrained}) ...")
        self.pipeline = Clipomaly(config)
        if self.pipeline.finetuned is not None:
            self.get_logger().info(f"checkpoint {config.checkpoint}: {describe_sidecar(self.pipeline.finetuned)}")
            if self.pipeline.finetuned.get("dense_method") != config.dense_method:
                self.get_logger().warning(f"the checkpoint was fine-tuned with dense_method "
                                          f"{self.pipeline.finetuned.get('dense_method')} but this node runs "
                                          f"{config.dense_method}: its accuracy is the trained method's only with it")
        self.mountings = mountings
        self.factory = MessageFactory(ros_type, byte_array=uint8_array, data_by_reference=True)
        self.device = str(getattr(self.pipeline.backend, "device", "cpu"))
        self.enabled = True
        self.frames = LatestFrames()
        self._last_reported: dict[str, tuple[int, int]] = {}
        self.watchdog = Watchdog(self.stall_timeout)
        self.worker_restarts = 0
        self.warm_up_cameras = max(1, len(values["cameras"]))

        self.input_reliability = values["input_reliability"]
        self.input_transport = values["input_transport"]
        compressed = self.input_transport == "compressed"
        self.input_type = CompressedImage if compressed else Image
        self._decode = DECODERS["sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"]
        if compressed and torch.device(self.device).type == "cuda":  # JPEG decoded by nvJPEG, never by the CPU
            self._decode = DeviceDecoder(torch.device(self.device), self.get_logger().warning)
        self.cameras: dict[str, CameraStream] = {}
        self.image_inputs = {}
        self.camera_info_subscriptions = {}
        self.transform_subscriptions = []
        self.topic_check_timer = None
        for name in values["cameras"] or ("",):
            prefix = f"{name}/" if name else ""
            info_topic = self.resolve_topic_name(f"{prefix}camera_info")
            self.cameras[name] = CameraStream(name, self._create_outputs(prefix), self.factory,
                                              AnomalyFollower(self.pipeline.name_embeddings, info_topic),
                                              values["expected_rate"])
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.enable_service = self.create_service(SetBool, "~/enable", self._on_enable)
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics)
        self._warned_topics: set[str] = set()
        self._running = True
        self.worker = self._start_worker(first=True)
        self.get_logger().info("configured: model loaded" + ("; activate to start processing" if self.managed
                                                             else ""))

    def _unsubscribe(self) -> None:
        for image_input in self.image_inputs.values():
            image_input.destroy()
        for camera in getattr(self, "cameras", {}).values():
            camera.image_input = None
        for subscription in [*self.camera_info_subscriptions.values(), *self.transform_subscriptions]:
            self.destroy_subscription(subscription)
        self.image_inputs, self.camera_info_subscriptions, self.transform_subscriptions = {}, {}, []
        if self.topic_check_timer is not None:
            self.destroy_timer(self.topic_check_timer)
            self.topic_check_timer = None

    def _release(self) -> None:
        """Undo :meth:`_configure` as far as it got: the inference thread stopped, every entity destroyed, the
        pipeline dropped and the memory it held returned (GPU memory to the driver's cache pool, then freed)."""
        self.active = False
        self._running = False
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        worker = getattr(self, "worker", None)
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=self.worker_join_timeout)
            if worker.is_alive():
                self._lingering_worker = worker
                self._drop_in_work()
                self.get_logger().error(
                    f"the inference thread did not stop within {self.worker_join_timeout:g} s (a frame still runs "
                    "in the model): its frame is counted as dropped, the model's memory is freed when it ends, and "
                    "no new inference thread starts until then")
        self.worker = None
        if getattr(self, "image_inputs", None) is not None:
            self._unsubscribe()
        for camera in getattr(self, "cameras", {}).values():
            for publisher in camera.publishers.values():
                self.destroy_publisher(publisher)
        self.cameras = {}
        for name, destroy in (("diagnostics_publisher", self.destroy_publisher),
                              ("enable_service", self.destroy_service), ("diagnostics_timer", self.destroy_timer)):
            entity = getattr(self, name, None)
            if entity is not None:
                destroy(entity)
                setattr(self, name, None)
        on_cuda = self.pipeline is not None and torch.device(self.device).type == "cuda"
        if self.pipeline is not None and self._lingering_worker is None:
            self.pipeline.close()
        self.pipeline = None
        self.factory = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def _on_transforms(self, message) -> None:
        problems = add_transforms(self.frame_tree, message)
        if problems:
            self.transforms_rejected += len(problems)
            self.get_logger().warning(f"left out {len(problems)} transform(s): {'; '.join(problems[:3])}",
                                      throttle_duration_sec=10.0)

    # start-up ------------------------------------------------------------------------------------------------
    def _create_outputs(self, prefix: str) -> dict:
        # reliable, with room for a few frames: a lost fragment is re-sent only after the writer's next
        # heartbeat, and a shorter history would already have let the sample go by then
        publishers = {}
        for topic, type_name in OUTPUT_TYPES.items():
            if topic == "label_info":
                continue
            try:
                message_type = ros_type(type_name)
            except (ImportError, AttributeError) as error:
                if topic not in OPTIONAL_OUTPUTS:
                    raise ConfigError(f"the message type {type_name} of output '{topic}' is not installed "
                                      f"({error}): install its package") from None
                if topic not in self._outputs_off:
                    self._outputs_off.add(topic)
                    self.get_logger().warning(f"output '{topic}' is off: its message type {type_name} is not "
                                              f"installed ({type(error).__name__}: {error}); install "
                                              f"{type_name.split('/')[0]} to have it")
                continue
            publishers[topic] = self.create_publisher(message_type, prefix + topic,
                                                      10 if topic in PLANNER_OUTPUTS else 5)
        # latched: transient local with a depth of 1, so a late subscriber's first message is the mapping in force
        # now, never an older vocabulary
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        publishers["label_info"] = self.create_publisher(ros_type(OUTPUT_TYPES["label_info"]), prefix + "label_info",
                                                         latched)
        return publishers

    def _warm_up(self, cameras: int, first: bool = True) -> None:
        """Compile or build the runtime for ``cameras`` and run one frame, on the calling thread: the inference
        thread, which serves the frames after (a CUDA graph recorded on one thread is not replayed on another,
        pytorch#123177). A restarted thread (``first`` false) warms the runtime up again, without the log."""
        started = time.perf_counter()
        self.warm_up_thread = threading.get_ident()
        if self.pipeline.config.runtime != "torch":
            if first:
                self.get_logger().info(f"warming up runtime {self.pipeline.config.runtime} for {cameras} camera(s) "
                                       f"at {WARM_UP_SIZE[1]}x{WARM_UP_SIZE[0]} ...")
            self.pipeline.warm_up(WARM_UP_SIZE, cameras)
        self.pipeline(np.full((480, 640, 3), 128, dtype=np.uint8))
        if not first:
            return
        vocabulary = self.pipeline.vocabulary.current
        self.get_logger().info(
            f"ready: {getattr(self.pipeline.backend, 'description', self.pipeline.backend.identity)}; "
            f"device {self.device}; vocabulary: {len(vocabulary.known)} known "
            f"classes, {len(vocabulary.anomaly)} anomaly names, {len(vocabulary.dictionary)} dictionary names "
            f"({len(vocabulary.excluded)} excluded as known); warm-up {1000 * (time.perf_counter() - started):.0f} ms")

    # callbacks -----------------------------------------------------------------------------------------------
    def _on_image(self, camera: CameraStream, msg) -> None:
        camera.frame_arrived(msg.header)
        if not self.enabled:
            camera.count("skipped_paused")
            return
        self.watchdog.frame_waiting()
        if self.frames.put(camera.name, (msg, time.perf_counter())):
            camera.count("dropped")

    def _on_enable(self, request, response):
        self.enabled = bool(request.data)
        if not request.data:
            for name in self.frames.clear():
                self.cameras[name].count("skipped_paused")
            self.watchdog.progress()
        response.success = True
        response.message = "processing resumed" if request.data else "processing paused (model stays loaded)"
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes, mountings = {}, {}
        for parameter in parameters:
            per_camera = per_camera_setting(parameter.name)
            setting = per_camera[1] if per_camera else SETTINGS_BY_NAME.get(parameter.name)
            if setting is None:
                continue
            if parameter.name == "managed":
                return SetParametersResult(successful=False, reason="managed is chosen at start")
            if not setting.live and (self.pipeline is not None or not self.managed):
                return SetParametersResult(successful=False, reason=(
                    f"{parameter.name} cannot change while the node is configured: deactivate and clean it up "
                    "(ros2 lifecycle set NODE cleanup), set it, and configure again" if self.managed else
                    f"{parameter.name} cannot change while running: restart the node with the new value"))
            try:
                value = setting.validate(parameter.value)
            except ConfigError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if per_camera:
                mountings.setdefault(per_camera[0], {})[setting.name] = value
            else:
                changes[parameter.name] = value
        if self.pipeline is None:  # unconfigured: the values are read on configure
            return SetParametersResult(successful=True)
        core = {name: value for name, value in changes.items() if SETTINGS_BY_NAME[name].scope == "core"}
        try:
            if core:
                autoware_style(self.pipeline.config.replace(**core))
                self.pipeline.configure(**core)
        except (ConfigError, VocabularyError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "publish_overlay" in changes:
            self.publish_overlay = changes["publish_overlay"]
        for camera, values in mountings.items():
            self.mountings[camera] = {**self.mountings[camera], **values}
        if core:
            self.get_logger().info(f"applied {', '.join(sorted(core))}; the next frame uses them")
        return SetParametersResult(successful=True)

    # inference -----------------------------------------------------------------------------------------------
    def _start_worker(self, first: bool = False) -> threading.Thread:
        """The inference thread, warmed up on itself before it serves. At configure (``first``) this waits for the
        warm-up and raises what it raised. Refused while a thread that outlived its join time-out still runs a
        frame: two would share the device."""
        self._refuse_while_lingering()
        warmed, outcome = threading.Event(), {}
        worker = threading.Thread(target=self._work, args=(self.frames, first, warmed, outcome),
                                  name="clipomaly-inference", daemon=True)
        worker.start()
        if first:
            warmed.wait()
            if "error" in outcome:
                raise outcome["error"]
        return worker

    def _refuse_while_lingering(self) -> None:
        lingering = self._lingering_worker
        if lingering is not None and lingering.is_alive():
            raise ConfigError("the previous inference thread is still running a frame (it did not stop within "
                              f"{self.worker_join_timeout:g} s at the last cleanup): no second model is loaded and "
                              "no second thread started on the device while it lives; configure again once it has "
                              "ended")
        self._lingering_worker = None

    def _work(self, frames: LatestFrames, first: bool, warmed: threading.Event, outcome: dict) -> None:
        try:
            try:
                self._warm_up(self.warm_up_cameras, first)
            except Exception as error:  # noqa: BLE001 - handed to the thread that configures
                outcome["error"] = error
                if not first and self._running:
                    self.get_logger().error(f"the restarted inference thread failed to warm up: "
                                            f"{type(error).__name__}: {error}")
                return
            finally:
                warmed.set()
            self._serve(frames)
        except Exception:
            if self._running:
                raise  # the watchdog sees the thread gone, says so and starts another
            # stopping: the node and its context may be gone under a frame that outlived the join time-out

    def _serve(self, frames: LatestFrames) -> None:
        while self._running:
            waiting = frames.take_all(timeout=0.2)
            if not waiting:
                continue
            self.serving_thread = threading.get_ident()
            try:
                with self._batch_lock:
                    if not self.active:  # deactivated while the frames waited
                        for name in waiting:
                            self.cameras[name].count("dropped_at_shutdown")
                        continue
                    with self._in_work_lock:
                        self._in_work = set(waiting)
                    self._work_on(waiting)
            except Exception as error:  # a bug here must cost one batch, never the thread
                for name in waiting:
                    if self._settle(name):
                        self.cameras[name].count("failed")
                if not self._running:
                    continue
                self.get_logger().error(f"processing failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
            finally:
                for name in waiting:  # a frame that no branch above counted is dropped, never lost
                    if self._settle(name):
                        self.cameras[name].count("dropped_at_shutdown")
                self.watchdog.progress()  # every waiting frame was processed, rejected or failed

    def _work_on(self, waiting: dict) -> None:
        frames = []
        for name, (msg, received) in waiting.items():
            camera = self.cameras[name]
            try:
                frames.append((camera, msg, received, decode_frame(self._decode, msg, self.max_input_pixels)))
            except ImageConversionError as error:
                if self._settle(camera.name):
                    camera.count("bad_inputs")
                self.get_logger().warning(f"{camera.name or 'image'}: skipped a bad input image: {error}",
                                          throttle_duration_sec=5.0)
        if frames:
            self._process(frames)

    def _process(self, frames: list) -> None:
        """Segment the frames of several cameras in one batch and publish each camera's outputs. When the batch
        fails, each frame is tried alone, so one camera's bad frame cannot take another camera's output."""
        try:
            results = self.pipeline.segment_batch([image for _, _, _, image in frames])
        except Exception:  # noqa: BLE001 - isolated below, frame by frame
            if len(frames) > 1:
                for frame in frames:
                    self._process([frame])
                return
            camera = frames[0][0]
            if not self._running:  # stopping: the frame is dropped at shutdown, not failed
                self._drop_in_work()
                return
            if self._settle(camera.name):
                camera.count("failed")
            self.get_logger().error(f"{camera.name or 'image'}: segmentation failed: "
                                    f"{traceback.format_exc(limit=1).strip().splitlines()[-1]}",
                                    throttle_duration_sec=5.0)
            return
        if not self._running or not self.active:  # stopped or deactivated while the batch ran
            self._drop_in_work()
            return
        for (camera, msg, received, image), result in zip(frames, results):
            if camera.name not in self._in_work:  # dropped by a deactivate that timed out while it ran
                continue
            started = time.perf_counter()
            try:
                host_image = result.image if result.image is not None else on_host(image)  # the pipeline's copy
                camera.publish(msg.header, host_image, result, self._camera_config(camera, msg.header.frame_id),
                               self.publish_overlay)
            except Exception as error:  # the node must outlive any one frame
                if self._settle(camera.name):
                    camera.count("failed")
                self.get_logger().error(f"{camera.name or 'image'}: publishing failed: {type(error).__name__}: "
                                        f"{error}", throttle_duration_sec=5.0)
                continue
            done = time.perf_counter()
            if self._settle(camera.name):
                camera.record_processed(result.timings_ms["total"], 1000.0 * (done - started),
                                        1000.0 * (done - received))

    def _settle(self, camera: str) -> bool:
        """True the first time ``camera``'s frame in work gets its outcome: exactly one counter counts it."""
        with self._in_work_lock:
            if camera not in self._in_work:
                return False
            self._in_work.discard(camera)
            return True

    def _drop_in_work(self) -> None:
        """Count every frame in work that has no outcome yet as dropped at shutdown."""
        with self._in_work_lock:
            names, self._in_work = self._in_work, set()
        for name in names:
            self.cameras[name].count("dropped_at_shutdown")

    def _camera_config(self, camera: CameraStream, frame_id: str) -> ClipomalyConfig:
        """The settings for one camera's frame: its own mounting parameters over the node's, then the mounting
        from the robot's transforms when known (:class:`MountingFinder`); a change of source is logged."""
        config = self.pipeline.config
        mounting = self.mountings.get(camera.name)
        config, source = self.mounting_finder.find(frame_id, config.replace(**mounting) if mounting else config)
        if source != camera.mounting_source:
            camera.mounting_source = source
            log = self.get_logger().info if self.mounting_finder.last_convention == "optical" \
                else self.get_logger().warning
            log(f"{camera.name or 'image'}: camera mounting from {source}")
        return config

    def _check_worker(self) -> str | None:
        """The watchdog's verdict: None when all is well, else why /diagnostics must say ERROR."""
        if self._running and not self.worker.is_alive():
            self.worker_restarts += 1
            self.get_logger().error("the inference thread ended; restarting it")
            self.worker = self._start_worker()
            self.watchdog.progress()
            return "the inference thread had ended and was restarted"
        stalled = self.watchdog.stalled_for()
        if stalled is not None:
            message = (f"frames are waiting but none was processed for {stalled:.1f} s (stall_timeout "
                       f"{self.stall_timeout:g} s)")
            self.get_logger().error(message, throttle_duration_sec=5.0)
            return message
        return None

    def _publish_diagnostics(self) -> None:
        problem = self._check_worker()
        vocabulary = self.pipeline.vocabulary.current
        runtime_health = self.pipeline.runtime_health()
        runtime_health.update(getattr(self._decode, "health", dict)())
        common = {"known classes": len(vocabulary.known), "anomaly vocabulary": len(vocabulary.anomaly),
                  "dictionary names": len(vocabulary.dictionary), "device": self.device, "enabled": self.enabled,
                  "lifecycle state": "active" if self.active else "inactive",
                  "inference thread restarts": self.worker_restarts, "transforms known": len(self.frame_tree),
                  "transforms left out": self.transforms_rejected,
                  "outputs off (message type not installed)": ", ".join(sorted(self._outputs_off)) or "none",
                  **runtime_health}
        statuses = []
        for name, camera in self.cameras.items():
            values = {**camera.report(), **common}
            problems = (values["bad inputs"], values["failed frames"])
            status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: camera {name or 'image'}",
                                      hardware_id=self.device,
                                      values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
            last = self._last_reported.get(name, (0, 0))
            if problem is not None:
                status.level, status.message = DiagnosticStatus.ERROR, problem
            elif problems != last:
                status.level = DiagnosticStatus.WARN
                status.message = (f"{problems[0] - last[0]} bad inputs, {problems[1] - last[1]} failed frames since "
                                  "the last report")
            elif runtime_health:
                status.level = DiagnosticStatus.WARN
                status.message = "runtime: " + "; ".join(f"{key} {value}" for key, value in runtime_health.items())
            else:
                status.level = DiagnosticStatus.OK
                status.message = ("inactive (lifecycle): nothing is processed" if not self.active
                                  else "processing" if self.enabled else "paused")
            if camera.follower.no_3d_reason is not None and problem is None:
                status.message += f"; no 3D output: {camera.follower.no_3d_reason}"
            self._last_reported[name] = problems
            statuses.append(status)
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def _check_input_topics(self) -> None:
        """Every 2 s: match the input's reliability to the publishers again (``input_reliability: auto``), and
        warn once per topic when an input topic exists with another message type (a compressed stream on the raw
        topic, say): then no data would ever arrive."""
        expected = "sensor_msgs/msg/CompressedImage" if self.input_type is CompressedImage else "sensor_msgs/msg/Image"
        types = dict(self.get_topic_names_and_types())
        for image_input in list(self.image_inputs.values()):
            topic = image_input.topic
            image_input.rematch()  # publishers come and go; a best-effort one gives a reliable reader no event
            found = [kind for kind in types.get(topic, []) if kind != expected]
            if found and topic not in self._warned_topics:
                self._warned_topics.add(topic)
                self.get_logger().warning(
                    f"{topic} carries {', '.join(found)}, but this node reads {expected} there: check "
                    "input_transport (compressed input reads <image>/compressed) and the image_topic remapping")

    def shut_down(self, reason: str, join_timeout: float = 1.5) -> None:
        """Stop for good, within about ``join_timeout`` seconds: no new frame is taken, the frames waiting and the
        batch still in work after the time-out are counted as ``dropped at shutdown``, and one log line says why
        the node stopped with each camera's final counts (also sent as a last /diagnostics)."""
        self.active = False
        self._running = False
        frames = getattr(self, "frames", None)
        if frames is not None:
            for name in frames.clear():
                self.cameras[name].count("dropped_at_shutdown")
            frames.close()
        worker = getattr(self, "worker", None)
        if worker is not None and worker.is_alive():
            worker.join(timeout=join_timeout)
            if worker.is_alive():  # a frame longer than the time-out: the thread is a daemon, its frame is lost
                self._drop_in_work()
                self.worker = None
        cameras = getattr(self, "cameras", {})
        counts = "; ".join(f"{name or 'image'}: " + ", ".join(
            f"{value} {key}" for key, value in camera.report().items()
            if key in FINAL_COUNTS) for name, camera in cameras.items())
        self.get_logger().info(f"stopping: {reason}" + (f"; {counts}" if counts else ""))
        if getattr(self, "diagnostics_publisher", None) is not None and self.pipeline is not None:
            try:
                self._publish_diagnostics()
            except Exception as error:  # noqa: BLE001 - the log line above already holds the counts
                self.get_logger().warning(f"the last /diagnostics was not sent: {type(error).__name__}: {error}")

    def destroy_node(self):
        self.active = False
        self._running = False
        if getattr(self, "frames", None) is not None:
            self.frames.close()
        worker = getattr(self, "worker", None)
        if worker is not None and worker.is_alive():
            worker.join(timeout=5.0)
        return super().destroy_node()


def spin_until_stopped(stop: GracefulStop, args=None) -> int:
    """Start the node and spin it until ``stop`` is requested or ROS shuts down, then tear it down; returns the
    exit status (see :func:`clipomaly_ros.ros.process.main`). ``stop.raising`` is on while the node starts."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = ClipomalyNode(autostart=False)
        node.start()
        stop.raising = False
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except StartupError:
        return 1  # the node has logged the reason as FATAL
    except (StopRequested, ExternalShutdownException):
        pass
    finally:
        stop.raising = False
        if node is not None:
            node.shut_down(f"{stop.signal_name} received" if stop.requested else "ROS shut down")
            node.destroy_node()
        elif stop.requested:
            print(f"clipomaly_node: stopping: {stop.signal_name} received while starting", file=sys.stderr,
                  flush=True)
        rclpy.try_shutdown()
    return stop.exit_code

