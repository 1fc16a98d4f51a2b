"""The managed node driven by a real lifecycle client (lifecycle_msgs ChangeState and GetState from rclpy): every
transition, outputs only while active, the model freed on cleanup, a failing configure that leaves the node
running, and a node that reads /tf_static for its mounting."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("lifecycle_msgs.srv", reason="lifecycle_msgs not installed: run scripts/setup_ros.sh")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from test_ros_node import ROS_ENV, call, publish_frame, set_parameter, stamp_base, stamp_ns, wait_for  # noqa: E402

from helpers import toy_frames  # noqa: E402

MANAGED_PARAMS = """/**/clipomaly:
  ros__parameters:
    managed: true
    backend: toy
    inference_size: 240
    diagnostics_period: 0.3
    anomaly_vocabulary: []
    publish_unconfirmed: true
"""


class Probe:
    """A node of our own in its own context, spun on a thread: the lifecycle client and the listener."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def state(self, node_name: str) -> str:
        return call(self.node, GetState, f"{node_name}/get_state", GetState.Request(), timeout=30).current_state.label

    def change(self, node_name: str, transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return call(self.node, ChangeState, f"{node_name}/change_state", request, timeout=120).success

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_node(params: Path, namespace: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file",
                             str(params), "-r", f"__ns:={namespace}", *extra], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**__import__("os").environ, **ROS_ENV})


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def probe():
    created = Probe("clipomaly_lifecycle_probe")
    yield created
    created.close()


class AnsweredCamera:
    """A camera publisher on ``<namespace>/image`` and a reader of ``<namespace>/anomalies``, on the probe's node,
    that sends the two toy frames and checks whether the node answered them. ``log``: the node's log, shown when
    an answer is missing."""

    def __init__(self, node, namespace: str, log: Path):
        self.log = log
        self.received: list = []
        node.create_subscription(Detection2DArray, f"{namespace}/anomalies", self.received.append,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.publisher = node.create_publisher(Image, f"{namespace}/image",
                                               QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.frames = [image for image, _, _ in toy_frames(2, 240, 320)]

    def send_until_answered(self, base: int) -> list[int]:
        """Frames until each gets its anomalies; the stamps sent (ns)."""
        stamps = []
        for index, image in enumerate(self.frames):
            stamp = base + index * 100_000_000
            stamps.append(stamp)
            for _ in range(3):
                publish_frame(self.publisher, image, stamp)
                if wait_for(lambda: any(stamp_ns(m.header) == stamp for m in self.received), 5):
                    break
            assert any(stamp_ns(m.header) == stamp for m in self.received), self.log.read_text()
        return stamps

    def send_unanswered(self, base: int) -> None:
        for index, image in enumerate(self.frames):
            publish_frame(self.publisher, image, base + index * 100_000_000)
        time.sleep(2.0)  # a node that processed them would have answered by now (it does in < 1 s when active)
        assert not [m for m in self.received if stamp_ns(m.header) >= base], "published while not active"


def test_every_transition_with_outputs_only_while_active(tmp_path, probe):
    params = tmp_path / "managed.yaml"
    params.write_text(MANAGED_PARAMS)
    process = start_node(params, "/lc", tmp_path / "node.log")
    node, name = probe.node, "/lc/clipomaly"
    try:
        assert probe.state(name) == "unconfigured", (tmp_path / "node.log").read_text()
        sender = AnsweredCamera(node, "/lc", tmp_path / "node.log")
        camera, send_until_answered, send_unanswered = sender.publisher, sender.send_until_answered, \
            sender.send_unanswered
        assert node.count_publishers("/lc/anomalies") == 0  # unconfigured: nothing made yet

        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.state(name) == "inactive"
        assert wait_for(lambda: node.count_publishers("/lc/anomalies") == 1, 10)  # publishers made on configure
        assert camera.get_subscription_count() == 0  # ... but no subscription before activate
        send_unanswered(stamp_base(60))

        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        assert probe.state(name) == "active"
        assert wait_for(lambda: camera.get_subscription_count() == 1, 10)
        send_until_answered(stamp_base(61))

        assert probe.change(name, Transition.TRANSITION_DEACTIVATE)
        assert probe.state(name) == "inactive"
        assert wait_for(lambda: camera.get_subscription_count() == 0, 10)
        send_unanswered(stamp_base(62))

        assert probe.change(name, Transition.TRANSITION_CLEANUP)
        assert probe.state(name) == "unconfigured"
        assert wait_for(lambda: node.count_publishers("/lc/anomalies") == 0, 10)

        # configure and activate again: a cleaned-up node comes back whole
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.change(name, Transition.TRANSITION_ACTIVATE)
        assert wait_for(lambda: camera.get_subscription_count() == 1, 10)
        send_until_answered(stamp_base(63))

        assert probe.change(name, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert probe.state(name) == "finalized"
        assert wait_for(lambda: camera.get_subscription_count() == 0 and node.count_publishers("/lc/anomalies") == 0,
                        10)
        assert process.poll() is None  # finalized, not crashed
        log = (tmp_path / "node.log").read_text()
        assert "managed: unconfigured, waiting for a lifecycle manager" in log
        assert log.count("the model and its memory are released") >= 1
    finally:
        stop(process)


def test_a_failing_configure_returns_failure_says_why_and_a_fixed_one_succeeds(tmp_path, probe):
    params = tmp_path / "managed.yaml"
    params.write_text(MANAGED_PARAMS.replace("backend: toy", f"backend: open_clip\n    checkpoint: "
                                                             f"{tmp_path / 'missing.safetensors'}"))
    log = tmp_path / "node.log"
    process = start_node(params, "/lcfail", log)
    name = "/lcfail/clipomaly"
    try:
        assert probe.state(name) == "unconfigured"
        assert not probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.state(name) == "unconfigured" and process.poll() is None
        text = log.read_text()
        assert "configure failed:" in text and "missing.safetensors" in text, text
        assert "Traceback" not in text
        # unconfigured, a managed node takes settings that are fixed while configured; then configure works
        assert set_parameter(probe.node, "/lcfail", "backend", "toy").successful
        assert set_parameter(probe.node, "/lcfail", "checkpoint", "").successful
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert probe.state(name) == "inactive"
        refused = set_parameter(probe.node, "/lcfail", "backend", "open_clip")
        assert not refused.successful and "cannot change while the node is configured" in refused.reason
    finally:
        stop(process)


def test_cleanup_frees_the_model_and_a_new_configure_loads_it_again(tiny_model_name):
    """In this process, so that the model's memory can be watched: after cleanup nothing holds the model."""
    import torch
    from rclpy.parameter import Parameter

    from clipomaly_ros.ros.node import ClipomalyNode

    probe = Probe("clipomaly_lifecycle_memory_probe")
    node = ClipomalyNode(context=probe.context, namespace="/lcmem", parameter_overrides=[
        Parameter("managed", value=True), Parameter("model", value=tiny_model_name),
        Parameter("random_weights", value=True), Parameter("inference_size", value=128),
        Parameter("anomaly_vocabulary", value=["tire"])])
    probe.executor.add_node(node)
    name = "/lcmem/clipomaly"
    try:
        assert probe.state(name) == "unconfigured" and node.pipeline is None
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        model = weakref.ref(node.pipeline.backend.model)
        parameters = [weakref.ref(p) for p in node.pipeline.backend.model.parameters()]
        megabytes = sum(p().numel() * p().element_size() for p in parameters) / 1e6
        assert megabytes > 0.1
        on_cuda = torch.cuda.is_available() and next(model().parameters()).is_cuda
        held = torch.cuda.memory_allocated() if on_cuda else 0
        assert probe.change(name, Transition.TRANSITION_CLEANUP)
        gc.collect()
        assert node.pipeline is None and model() is None and all(p() is None for p in parameters)
        if on_cuda:
            assert torch.cuda.memory_allocated() < held
        assert probe.change(name, Transition.TRANSITION_CONFIGURE)
        assert node.pipeline is not None and probe.state(name) == "inactive"
        assert probe.change(name, Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert node.pipeline is None and probe.state(name) == "finalized"
    finally:
        probe.executor.remove_node(node)
        node.destroy_node()
        probe.close()


def diagnosed_mountings(diagnostics: list, camera_prefix: str) -> list[str]:
    """The ``mounting`` values of the statuses whose name starts with ``camera_prefix``, oldest first."""
    return [kv.value for array in diagnostics for status in array.status if status.name.startswith(camera_prefix)
            for kv in status.values if kv.key == "mounting"]


def publish_static_mounting(node, mounting):
    """Publish ``mounting`` as robot_state_publisher does (latched on /tf_static, base_link -> camera_link ->
    camera_optical_frame) from the probe's ``node``; the publisher, kept alive by the caller."""
    from rclpy.serialization import deserialize_message
    from tf2_msgs.msg import TFMessage

    from helpers import STORE, static_transforms

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(TFMessage, "/tf_static", latched)
    # built by rosbags, sent by rclpy: the same bytes
    publisher.publish(deserialize_message(STORE.serialize_cdr(static_transforms(mounting),
                                                              "tf2_msgs/msg/TFMessage").tobytes(), TFMessage))
    return publisher


def footprints_checked(objects: list, truth: dict) -> int:
    """How many detected objects of the drive's frames were checked against ``truth`` (stamp in ns -> object name
    -> ground position (x, y) in m): each footprint's front edge within 5 % of the range of the nearest true
    object, labelled ANIMAL for the deer and HAZARD otherwise (a failed check is an assertion)."""
    from clipomaly_ros.ros.autoware import OBJECT_LABELS

    checked = 0
    for array in objects:
        if stamp_ns(array.header) not in truth:  # a frame before the drive, published late
            continue
        for detected in array.objects:
            pose = detected.kinematics.pose_with_covariance.pose.position
            corners = np.array([[p.x + pose.x, p.y + pose.y] for p in detected.shape.footprint.points])
            front = corners[np.argsort(np.hypot(*corners.T))[:2]].mean(axis=0)
            name, (x, y) = min(truth[stamp_ns(array.header)].items(), key=lambda item: np.hypot(*(front - item[1])))
            assert np.hypot(*(front - (x, y))) < 0.05 * np.hypot(x, y), (name, front, (x, y))
            assert OBJECT_LABELS[detected.classification[0].label] == ("ANIMAL" if name == "deer" else "HAZARD")
            checked += 1
    return checked


def test_a_node_takes_its_mounting_from_tf_static_and_says_so(tmp_path, probe):
    """A real publisher of a static transform chain (base_link -> camera_link -> camera_optical_frame), latched on
    /tf_static as robot_state_publisher sends it; the node's camera_* parameters are left at their defaults,
    which are far from the mounting. Distances against the drive's truth."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo

    from helpers import mounted_drive

    autoware = pytest.importorskip("autoware_perception_msgs.msg")
    params = tmp_path / "node.yaml"
    params.write_text(MANAGED_PARAMS.replace("managed: true", "managed: false"))
    log = tmp_path / "node.log"
    process = start_node(params, "/tfcam", log)
    node = probe.node
    try:
        camera_model, mounting, drive = mounted_drive(frames=12)
        objects: list = []
        diagnostics: list = []
        node.create_subscription(autoware.DetectedObjects, "/tfcam/anomalies_objects", objects.append,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
        tf_publisher = publish_static_mounting(node, mounting)
        camera = node.create_publisher(Image, "/tfcam/image", QoSProfile(depth=5,
                                                                         reliability=ReliabilityPolicy.RELIABLE))
        info = node.create_publisher(CameraInfo, "/tfcam/camera_info", 1)
        assert wait_for(lambda: camera.get_subscription_count() == 1 and info.get_subscription_count() == 1
                        and tf_publisher.get_subscription_count() >= 1, 60), log.read_text()
        message = CameraInfo(width=640, height=360, distortion_model="plumb_bob", d=[0.0] * 5,
                             k=camera_model.k.ravel().tolist())

        def mounting_says(prefix: str) -> bool:
            return any(value.startswith(prefix) for value in diagnosed_mountings(diagnostics, "/tfcam/"))

        # the latched transforms may reach the node after its first frame, which then uses the parameters (and says
        # so): frames 10 s before the drive until /diagnostics says the mounting comes from /tf_static
        for attempt in range(20):
            info.publish(message)
            publish_frame(camera, drive[0][1], drive[0][0] - 10**10 + attempt, frame_id="camera_optical_frame")
            if wait_for(lambda: mounting_says("/tf_static"), 3):
                break
        assert mounting_says("/tf_static"), log.read_text()
        objects.clear()
        for stamp, image, _ in drive:
            for _ in range(3):
                info.publish(message)
                publish_frame(camera, image, stamp, frame_id="camera_optical_frame")
                if wait_for(lambda: any(stamp_ns(m.header) == stamp for m in objects), 5):
                    break
        truth = {stamp: objects_truth for stamp, _, objects_truth in drive}
        assert footprints_checked(objects, truth) >= 5, log.read_text()
        mine = diagnosed_mountings(diagnostics, "/tfcam/")
        assert mine and mine[-1] == "/tf_static, /tf: base_link <- camera_link <- camera_optical_frame"
        assert "image: camera mounting from /tf_static, /tf: base_link <- camera_link <- camera_optical_frame" \
            in log.read_text()
    finally:
        stop(process)
