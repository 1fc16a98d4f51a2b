"""The ROS edges without a running node: input loss estimated from the stamps, image frames that are not optical,
the covariance along the camera's ray, device strings, the demo's domain, a signal to a long command and the input's
reliability switch on a stand-in graph. The real node's edges are in test_ros_node_edges.py."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipomaly_ros.core.scene.geometry import CameraModel, CameraMounting, GroundLocator
from clipomaly_ros.ros.camera import InputGaps

SECOND = 1_000_000_000


# ---------------------------------------------------------------------------------------------------------------
# plain Python: no DDS

def test_an_input_that_loses_half_its_frames_from_the_first_is_estimated_at_half():
    rng = np.random.default_rng(4)
    period = SECOND // 30
    for seed in range(5):
        kept = [k * period for k in range(400) if rng.random() >= 0.5 or k == 0]
        gaps = InputGaps()
        for stamp in kept:
            gaps.add(stamp)
        lost = kept[-1] // period + 1 - len(kept)  # those after the last frame received cannot show
        assert gaps.period_ns == pytest.approx(period, rel=0.01), seed
        assert abs(gaps.missing / (gaps.missing + len(kept)) - 0.5) <= 0.1, (seed, gaps.missing, lost)
        assert gaps.missing == lost, (seed, gaps.missing, lost)


def test_a_camera_that_drops_every_other_frame_needs_its_rate_or_its_camera_info():
    period = SECOND // 20
    every_other = [k * period for k in range(0, 200, 2)]
    learned = InputGaps()
    for stamp in every_other:
        learned.add(stamp)
    assert learned.missing == 0  # no frame ever came back to back: nothing tells the stamps' own rate
    declared = InputGaps(expected_period_ns=period)
    for stamp in every_other:
        declared.add(stamp)
    assert declared.missing == 99
    with_info = InputGaps()
    for index, stamp in enumerate(every_other):
        with_info.add_reference(stamp - period)  # camera_info goes with every frame, the lost ones too
        with_info.add_reference(stamp)
        with_info.add(stamp)
    assert with_info.period_ns == pytest.approx(period)
    assert with_info.missing == 99  # the gaps before the period was known are counted once it is


def test_the_covariance_of_a_located_anomaly_lies_along_the_ray_from_the_camera():
    from clipomaly_ros.ros.autoware import position_covariance
    from clipomaly_ros.core.scene.geometry import line_of_sight

    camera = CameraModel(1280, 720, np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 1]]), np.zeros(5))
    mounting = CameraMounting(y=1.5, z=1.6, pitch=0.05, yaw=-0.35)  # 1.5 m to the left, looking right of ahead
    mask = np.ones((40, 60), dtype=bool)
    box = (460, 500, 560, 620)  # y0, y1, x0, x1: low in the image, a few metres away
    ground = GroundLocator(camera, mounting).locate(box, mask)
    assert ground is not None and ground.along_sigma > 2 * ground.across_sigma
    covariance = position_covariance(ground).reshape(6, 6)[:2, :2]
    values, vectors = np.linalg.eigh(covariance)
    major = vectors[:, np.argmax(values)]
    from_camera = np.array([ground.x - mounting.x, ground.y - mounting.y])
    from_camera /= np.linalg.norm(from_camera)
    from_base = np.array([ground.x, ground.y]) / np.hypot(ground.x, ground.y)
    assert abs(major @ from_camera) > 0.999
    assert abs(from_base @ from_camera) < 0.99  # the two rays differ: the test tells them apart
    assert abs(line_of_sight(ground) @ from_camera) > 0.999  # the 3D box is deep along the same ray


def test_a_camera_frame_published_x_forward_gets_the_optical_rotation_or_a_diagnostic():
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.core.scene.frames import FrameTree, RigidTransform
    from clipomaly_ros.ros.transforms import MountingFinder

    from scipy.spatial.transform import Rotation

    config = ClipomalyConfig(backend="toy")
    body = Rotation.from_euler("xyz", [0.0, 0.08, 0.2])  # camera_link: x forward, pitched down, yawed left
    optical = Rotation.from_matrix([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # REP-103
    tree = FrameTree()
    tree.set("base_link", "camera_link", RigidTransform.from_quaternion((1.8, 0.3, 1.4), tuple(body.as_quat())))
    tree.set("camera_link", "camera_link_optical", RigidTransform.from_quaternion((0, 0, 0), tuple(optical.as_quat())))
    finder = MountingFinder(tree)
    with_optical, source = finder.find("camera_link_optical", config)
    assert finder.last_convention == "optical" and "not an optical frame" not in source
    assert with_optical.camera_pitch == pytest.approx(0.08) and with_optical.camera_yaw == pytest.approx(0.2)
    without_optical, source = finder.find("camera_link", config)
    assert finder.last_convention == "body" and "not an optical frame" in source and "_optical" in source
    for name in ("camera_x", "camera_y", "camera_z", "camera_roll", "camera_pitch", "camera_yaw"):
        assert getattr(without_optical, name) == pytest.approx(getattr(with_optical, name), abs=1e-9), name
    # a frame that is neither (rows running sideways): the parameters, and the reason
    tree.set("base_link", "camera_sideways", RigidTransform.from_quaternion(
        (1.8, 0.3, 1.4), tuple(Rotation.from_euler("y", np.pi / 2).as_quat())))
    kept, source = finder.find("camera_sideways", config)
    assert finder.last_convention == "unknown" and source.startswith("parameters") and "REP-103" in source
    assert kept.camera_pitch == config.camera_pitch


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "cuda", "cpu:1", "meta"])
def test_a_device_this_machine_lacks_is_refused_listing_the_devices_it_has(device, monkeypatch):
    import torch

    from clipomaly_ros import Clipomaly, ClipomalyConfig
    from clipomaly_ros.core.model.backend import ModelLoadError, available_devices

    if device.startswith("cuda") and torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        if device == "cuda":
            pytest.skip("this machine has CUDA: plain 'cuda' is a device it has")
    with pytest.raises(ModelLoadError) as refused:
        Clipomaly(ClipomalyConfig(backend="toy", device=device))  # the toy backend checks it too
    message = str(refused.value)
    assert "\n" not in message and repr(device) in message
    assert "this machine has: " + ", ".join(available_devices()) in message


def test_the_demo_domain_is_one_every_rmw_accepts():
    from clipomaly_ros.tools.demo import local_ros_environment

    assert 0 <= int(local_ros_environment()["ROS_DOMAIN_ID"]) <= 101


def wait_for_value(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    return condition()


def test_a_signal_while_a_long_command_works_gives_the_shell_its_code():
    from clipomaly_ros.core.interrupt import GracefulStop, StopRequested

    for number, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with GracefulStop(announce=None, escalate=False) as stop:
            os.kill(os.getpid(), number)
            os.kill(os.getpid(), signal.SIGINT)  # a second one: counted, never raised
            time.sleep(0.01)
        assert stop.exit_code == code and stop.signals_received == 2
    # SIGTERM, then SIGINT 50 ms later, both while the main thread is in C code (a node's rcl_wait): Python then
    # runs the handlers by signal number, SIGINT first; the first to come must count
    values = np.random.default_rng(0).random(6_000_000).tolist()
    with GracefulStop(announce=None, escalate=False) as stop:
        subprocess.Popen(["sh", "-c", f"kill -TERM {os.getpid()}; sleep 0.05; kill -INT {os.getpid()}"])
        sorted(values)  # holds the interpreter for a second or so
        assert wait_for_value(lambda: stop.signals_received == 2, 10)
    assert stop.exit_code == 143
    with pytest.raises(StopRequested):
        with GracefulStop(announce=None, escalate=False) as stop:
            stop.raising = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    assert stop.exit_code == 143


class FakeGraphNode:
    """The part of an rclpy node that :class:`ImageInput` uses, with a graph the test controls: matched events are
    delivered by the test, as DDS would, and a subscription receives only what the test hands it."""

    def __init__(self):
        from types import SimpleNamespace

        self.namespace = SimpleNamespace
        self.graph: list = []
        self.subscriptions: list = []
        self.timers: list = []

    def publisher(self, reliability):
        return self.namespace(qos_profile=self.namespace(reliability=reliability))

    def get_publishers_info_by_topic(self, topic):
        return list(self.graph)

    def create_subscription(self, kind, topic, callback, qos, event_callbacks=None):
        subscription = self.namespace(qos_profile=qos, callback=callback, events=event_callbacks, alive=True)
        self.subscriptions.append(subscription)
        return subscription

    def destroy_subscription(self, subscription):
        subscription.alive = False

    def create_timer(self, period, callback):
        timer = self.namespace(period=period, callback=callback, alive=True)
        self.timers.append(timer)
        return timer

    def destroy_timer(self, timer):
        timer.alive = False

    def live(self):
        return [s for s in self.subscriptions if s.alive]

    def matched(self, subscription, count, change):
        subscription.events.matched(self.namespace(current_count=count, current_count_change=change))


def test_a_reliable_publisher_switches_the_input_when_it_matches_without_losing_or_doubling_a_frame():
    from types import SimpleNamespace

    from rclpy.qos import ReliabilityPolicy

    from clipomaly_ros.ros.image_input import ImageInput

    def frame(second):
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=second, nanosec=0), frame_id="cam"))

    node, delivered = FakeGraphNode(), []
    image_input = ImageInput(node, object, "/cam/image", "auto", delivered.append, lambda text: None)
    (first,) = node.live()
    assert first.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    # a reliable camera starts: DDS matches it to the best-effort reader, the graph has not heard of it yet
    node.matched(first, 1, 1)
    assert node.live() == [first] and [t for t in node.timers if t.alive]  # the graph is watched, not polled in 2 s
    first.callback(frame(1))
    node.graph.append(node.publisher(ReliabilityPolicy.RELIABLE))
    node.timers[0].callback()  # 50 ms later the graph knows it
    old, new = node.live()
    assert old is first and new.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert not [t for t in node.timers if t.alive]
    assert image_input.qos_reason.startswith("reliable (auto")
    # make before break: the old reader lives until the new one has matched; a frame both deliver counts once
    old.callback(frame(2))
    new.callback(frame(2))
    new.callback(frame(3))
    old.callback(frame(3))
    node.matched(new, 1, 1)
    assert node.live() == [new]
    new.callback(frame(4))
    assert [m.header.stamp.sec for m in delivered] == [1, 2, 3, 4]
