"""The ROS 2 node ``clipomaly``: camera images in, anomalies, maps and diagnostics out.

In, relative to its namespace: ``image`` or ``image/compressed``, ``camera_info``, ``/tf_static`` and ``/tf``. Out,
stamped with the input's header: ``anomalies`` and ``anomalies_on_road`` (vision_msgs/Detection2DArray, one
detection per confirmed track), ``label_info``; with a camera_info ``anomalies_3d``, ``anomaly_markers``,
``anomaly_points`` and ``anomalies_objects`` in ``base_frame``; the label and score images only while subscribed;
``/diagnostics``; the service ``~/enable``. With ``cameras: [front, rear]`` one model serves several cameras, their
waiting frames in one batch. docs/ros-reference.md has every topic and its QoS (from :mod:`.topic_catalogue`).

A lifecycle node: with ``managed: false`` (the default) it configures and activates itself at start; with
``managed: true`` it waits for a lifecycle manager. Configure loads the model, activate subscribes, deactivate
stops processing with the model kept, cleanup frees it. Only the newest frame of each camera is processed, on the
inference thread (:mod:`.inference`); a frame that arrives while another of the same camera waits replaces it and
is counted as dropped.
"""

from __future__ import annotations

import gc
import sys
import threading
import traceback

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool

from ..core.config import NODE_NAME, SETTINGS, SETTINGS_BY_NAME, ClipomalyConfig, ConfigError
from ..core.scene.frames import FrameTree
from ..core.interrupt import GracefulStop, StopRequested
from ..core.model.backend import ModelLoadError
from ..core.method.pipeline import Clipomaly
from ..core.scene.planning import AnomalyFollower
from ..core.method.vocabulary import VocabularyError
from .autoware import autoware_style
from .camera import CameraStream, LatestFrames, Watchdog
from .decoding import DECODERS, DeviceDecoder
from .inference import InferenceLoop
from .messages import MessageFactory, ros_type, uint8_array
from .node_diagnostics import NodeDiagnostics, log_loaded_weights
from .parameters import NodeParameters
from .topic_catalogue import CAMERA_INFO, DIAGNOSTICS, ENABLE_SERVICE
from .topics import NodeTopics, catalogue_qos
from .transforms import MountingFinder

FINAL_COUNTS = ("frames received", "frames processed", "frames dropped", "bad inputs", "failed frames",
                "frames skipped while paused", "frames dropped at shutdown")
"""The counters of the node's last log line."""


class StartupError(RuntimeError):
    """The node could not start; it has logged the reason as FATAL, and the process exits with status 1."""


STARTUP_ERRORS = (ConfigError, ModelLoadError, VocabularyError, ParameterException)
"""What a bad setting, missing weights or an empty vocabulary raise while the node configures: a reason to log,
never a crash."""


class ClipomalyNode(NodeParameters, NodeTopics, InferenceLoop, NodeDiagnostics, LifecycleNode):
    """Runs :class:`~clipomaly_ros.core.method.pipeline.Clipomaly` on one or more camera streams (see the module
    docstring). A lifecycle node: with ``managed: false`` (the default) it configures and activates itself at
    start, with ``managed: true`` it waits unconfigured for a lifecycle manager.

    Its rooms: :class:`~.parameters.NodeParameters` (declared, read and live-set parameters),
    :class:`~.topics.NodeTopics` (subscriptions and publishers), :class:`~.inference.InferenceLoop` (the thread that
    runs the frames), :class:`~.node_diagnostics.NodeDiagnostics` (``/diagnostics``); this class holds the lifecycle
    and what configure makes and cleanup releases."""

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
        self.release_id = values["release_id"] or "none"  # which release runs: in the log and /diagnostics
        self.get_logger().info(f"release {self.release_id}")
        autoware_style(config)  # an autoware_labels section the dictionary lacks: said now, not per frame
        self.get_logger().info("loading the toy backend ..." if config.backend == "toy" else
                               f"loading {config.model} ({config.checkpoint or config.pretrained}) ...")
        self.pipeline = Clipomaly(config)
        log_loaded_weights(self.get_logger(), config, self.pipeline)
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
            info_topic = self.resolve_topic_name(f"{prefix}{CAMERA_INFO}")
            self.cameras[name] = CameraStream(name, self._create_outputs(prefix), self.factory,
                                              AnomalyFollower(self.pipeline.name_embeddings, info_topic),
                                              values["expected_rate"])
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, DIAGNOSTICS, catalogue_qos(DIAGNOSTICS))
        self.enable_service = self.create_service(SetBool, ENABLE_SERVICE, self._on_enable)
        self.diagnostics_timer = self.create_timer(values["diagnostics_period"], self._publish_diagnostics)
        self._warned_topics: set[str] = set()
        self._running = True
        self.worker = self._start_worker(first=True)
        self.get_logger().info("configured: model loaded" + ("; activate to start processing" if self.managed
                                                             else ""))

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

    # start-up ------------------------------------------------------------------------------------------------
    # callbacks -----------------------------------------------------------------------------------------------
    # inference -----------------------------------------------------------------------------------------------
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
    node = executor = None
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
        if executor is not None:
            executor.shutdown(timeout_sec=0.5)
        if node is not None:
            node.shut_down(f"{stop.signal_name} received" if stop.requested else "ROS shut down")
            stop.reported = True
            node.destroy_node()
        elif stop.requested:
            print(f"clipomaly_node: stopping: {stop.signal_name} received while starting", file=sys.stderr,
                  flush=True)
            stop.reported = True
        rclpy.try_shutdown()
        # deletes the DDS participant now (peers see the node leave), not in Python's finalization, which is skipped
        rclpy.get_default_context().destroy()
    return stop.exit_code

