"""Edge cases of the real node process: signals at any moment and during the warm-up, frames in work at shutdown,
the play loop's signals, label_info on a threshold change, lost and late camera frames, a missing optional message
package, renamed parameters and missing devices (real rclpy and Fast DDS, traffic kept on this machine)."""

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

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import LabelInfo  # noqa: E402

from test_ros_edges import SECOND  # noqa: E402
from test_ros_input import diagnostics_of  # noqa: E402
from test_ros_node import ROS_ENV, _header, set_parameter, wait_for  # noqa: E402
from test_ros_params import RunningNode, spinning_probe  # noqa: E402

FINAL_LINE = re.compile(r"stopping: (SIG\w+) received; image: (.*)$", re.MULTILINE)


def node_command(namespace: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "-r", f"__ns:={namespace}",
            "-p", "backend:=toy", "-p", "inference_size:=240", "-p", "diagnostics_period:=0.3", *arguments]


def final_counts(line: str) -> dict[str, int]:
    return {key: int(value) for value, key in (part.split(" ", 1) for part in line.split(", "))}


class Camera:
    """Publishes 320x240 frames from a thread of this process, on a context of its own."""

    def __init__(self, topics: list[str], rate_hz: float, reliable: bool = False, depth: int = 1):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("itest_edges_camera", context=self.context)
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.publishers = [self.node.create_publisher(Image, topic, qos) for topic in topics]
        self.rate_hz = rate_hz
        self.sent = 0
        self.running = True
        self.image = (np.indices((240, 320)).sum(axis=0) % 256).astype(np.uint8)[..., None].repeat(3, axis=2)

    def frame(self, stamp: int) -> Image:
        return Image(header=_header(stamp), height=240, width=320, encoding="rgb8", step=960,
                     data=self.image.tobytes())

    def run(self) -> None:
        stamp = 1_900_000_000 * SECOND
        while self.running:
            message = self.frame(stamp)
            for publisher in self.publishers:
                publisher.publish(message)
            self.sent += 1
            stamp += SECOND // 10
            time.sleep(1.0 / self.rate_hz)

    def start(self) -> "Camera":
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def close(self) -> None:
        self.running = False
        time.sleep(0.2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_sigint_and_sigterm_at_any_moment_end_the_node_with_130_and_143_and_no_traceback(tmp_path):
    """20 nodes, 4 at a time: 10 stopped by SIGINT, 10 by SIGTERM, at a random moment from start-up (imports,
    model load, warm-up) to work (half of them get frames at 15 Hz) and idle; half get the signal twice, as a node
    under ``ros2 launch`` gets Ctrl-C from the terminal and from launch. Not in the interpreter's own first
    fraction of a second: until Python has run the node's first import, a signal has Python's default action."""
    rng = random.Random(29)
    plan = [signal.SIGINT] * 10 + [signal.SIGTERM] * 10
    rng.shuffle(plan)
    namespaces = [f"/itest_sig{slot}" for slot in range(4)]
    camera = Camera([f"{ns}/image" for ns in namespaces[:2]], rate_hz=15.0).start()
    outcomes = []
    try:
        for batch in range(0, len(plan), 4):
            runs = []
            for slot, number in enumerate(plan[batch:batch + 4]):
                log = tmp_path / f"node{batch + slot}.log"
                process = subprocess.Popen(node_command(namespaces[slot]), stdout=open(log, "w"),
                                           stderr=subprocess.STDOUT, env={**os.environ, **ROS_ENV})
                runs.append((process, number, rng.uniform(0.8, 9.0), rng.random() < 0.5, log, time.monotonic()))
            for process, number, delay, twice, log, started in sorted(runs, key=lambda run: run[2]):
                time.sleep(max(0.0, started + delay - time.monotonic()))
                process.send_signal(number)
                signalled = time.monotonic()
                if twice:
                    time.sleep(0.05)
                    process.send_signal(signal.SIGINT)
                try:
                    code = process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = "hung"
                outcomes.append((number, delay, twice, code, time.monotonic() - signalled, log))
    finally:
        camera.close()
    for number, delay, twice, code, took, log in outcomes:
        output = log.read_text()
        what = f"{signal.Signals(number).name} at {delay:.1f} s{' twice' if twice else ''}: {output[-1500:]}"
        assert code == 128 + number, what
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, what
        assert took < 10.0, what  # ros2 launch escalates to SIGTERM after 5 s, SIGKILL later; we leave in ~1-2 s
        stopped = FINAL_LINE.findall(output)
        assert len(re.findall(r"stopping: SIG\w+ received", output)) == 1, what  # one line says why, always
        if "active: listening" in output:  # started: one line says why it stopped, with counts that add up
            assert len(stopped) == 1 and stopped[0][0] == signal.Signals(number).name, what
            counts = final_counts(stopped[0][1])
            assert counts["frames received"] == sum(counts[key] for key in (
                "frames processed", "frames dropped", "bad inputs", "failed frames", "frames skipped while paused",
                "frames dropped at shutdown")), what
    print("signal to exit (s):", sorted(round(took, 2) for *_, took, _ in outcomes))


SLOW_WARM_UP = """
import sys, threading, time, torch
from pathlib import Path
from clipomaly_ros.ros import inference
from clipomaly_ros.ros.process import main

warm_up, until, marker = inference.InferenceLoop._warm_up, sys.argv[1], Path(sys.argv[2])

def slow_warm_up(self, *args, **kwargs):
    print("WARMING UP", flush=True)
    ends = time.monotonic() + 20.0
    # in torch's native code most of the time, as a compile or a first frame is; "stop": until shut_down begins
    while time.monotonic() < ends and (until == "20 s" or self._running):
        torch.linalg.svd(torch.randn(96, 96))
    marker.write_text("the slow part ended")
    warm_up(self, *args, **kwargs)

inference.InferenceLoop._warm_up = slow_warm_up
if until == "stop, the signal just after start()":
    # the main thread loses the core as soon as the inference thread starts, as on a loaded machine: the signal
    # reaches it before start() has returned
    start = threading.Thread.start

    def start_then_stall(thread):
        start(thread)
        if thread.name == "clipomaly-inference":
            time.sleep(30.0)

    threading.Thread.start = start_then_stall
sys.argv[1:3] = []
sys.exit(main())
"""


@pytest.mark.parametrize("until", ["stop", "stop, the signal just after start()", "20 s"])
def test_a_signal_during_the_warm_up_exits_130_without_an_abort(until, tmp_path):
    """SIGINT while the inference thread warms the model up (the main thread waits for it in configure). A warm-up
    that ends once the node stops is waited for (shut_down joins for up to 1.5 s); a longer one (a compile on a
    GPU) is left, and the process ends at once with 130. Before, the thread was never joined, and Python's
    finalization stopped it inside torch's native code: "terminate called without an active exception", exit -6."""
    marker = tmp_path / "warmed"
    process = subprocess.Popen([sys.executable, "-c", SLOW_WARM_UP, until, str(marker),
                                "--ros-args", "-r", "__ns:=/itest_warm", "-p", "backend:=toy",
                                "-p", "inference_size:=240"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **ROS_ENV})
    try:
        line = process.stdout.readline()
        while line.startswith("[INFO]"):  # the start-up lines: the release, loading the toy backend
            line = process.stdout.readline()
        assert line.strip() == "WARMING UP"
        process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    took = time.monotonic() - signalled
    assert process.returncode == 130, output
    assert "terminate called" not in output and "Traceback" not in output, output
    assert len(re.findall(r"stopping: SIGINT received", output)) == 1, output
    if until != "20 s":  # joined: the warm-up went on to its end before the process ended
        assert marker.exists() and "still runs" not in output, output
    else:  # left behind, and said so
        assert not marker.exists() and took < 15.0, output
        assert "exiting with 130 while clipomaly-inference still runs" in output, output


def test_frames_in_work_when_the_node_stops_are_counted_as_dropped_at_shutdown(tiny_model_name):
    """In this process: the segmentation of a frame is held until the node has given up waiting for it."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from clipomaly_ros.ros.node import ClipomalyNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = ClipomalyNode(context=context, namespace="/itest_inflight", parameter_overrides=[
        Parameter("backend", value="toy"), Parameter("inference_size", value=128),
        Parameter("input_reliability", value="reliable")])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinning = threading.Thread(target=executor.spin, daemon=True)
    spinning.start()
    held, release = threading.Event(), threading.Event()
    segment = node.pipeline.segment_batch

    def slow_segment(images, cameras=None):
        held.set()
        release.wait(30)
        return segment(images, cameras)

    node.pipeline.segment_batch = slow_segment
    camera = Camera(["/itest_inflight/image"], rate_hz=10.0, reliable=True, depth=5)
    try:
        assert wait_for(lambda: camera.publishers[0].get_subscription_count() > 0, 20)
        time.sleep(0.5)
        camera.publishers[0].publish(camera.frame(1_900_000_000 * SECOND))  # goes into work and is held there
        assert wait_for(held.is_set, 20)
        camera.publishers[0].publish(camera.frame(1_900_000_001 * SECOND))  # waits behind it
        assert wait_for(lambda: node.cameras[""].counters.received == 2, 10)
        node.shut_down("the test stops it", join_timeout=0.5)
        counters = node.cameras[""].counters
        assert counters.dropped_at_shutdown == 2 and counters.processed == counters.failed == 0
        release.set()
        time.sleep(0.5)  # the held frame ends after the node gave it up: counted once, never published
        assert counters.dropped_at_shutdown == 2 and counters.processed == counters.failed == 0
    finally:
        release.set()
        camera.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_play_loop_stopped_by_a_signal_exits_with_its_code_and_no_traceback(number, tmp_path):
    from helpers import toy_frames, write_image_bag

    from rclpy.executors import SingleThreadedExecutor

    write_image_bag(tmp_path / "bag", [image for image, _, _ in toy_frames(4, 60, 80)], topic="/itest_play/image")
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("itest_play_probe", context=context)
    received: list = []
    probe.create_subscription(Image, "/itest_play/image", received.append,
                              QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    process = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.tools.cli", "play", str(tmp_path / "bag"),
                                "--loop", "--rate", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, **ROS_ENV})
    try:
        assert wait_for(lambda: len(received) > 6, 60)  # it has looped
        process.send_signal(number)
        output, _ = process.communicate(timeout=30)
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=context)
    assert process.returncode == 128 + number, output
    assert "Traceback" not in output and "RCLError" not in output, output
    published = int(re.search(r"published (\d+) on /itest_play/image", output).group(1))
    assert published > 6, output
    assert f"stopped by {signal.Signals(number).name}" in output


def test_label_info_is_republished_when_only_the_threshold_changes(tmp_path):
    namespace = "/itest_labels"
    with spinning_probe("itest_labels_probe") as probe:
        label_info_follows_the_threshold(probe, namespace, tmp_path)


def label_info_follows_the_threshold(probe, namespace: str, tmp_path: Path) -> None:
    received: list = []
    latched = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(LabelInfo, f"{namespace}/label_info", received.append, latched)
    camera_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    publisher = probe.create_publisher(Image, f"{namespace}/image", camera_qos)
    camera = Camera([], rate_hz=1.0)
    try:
        with RunningNode(namespace, ["-p", "backend:=toy", "-p", "inference_size:=240"],
                         tmp_path / "node.log") as running:
            assert wait_for(lambda: publisher.get_subscription_count() > 0, 60), running.log.read_text()[-2000:]
            time.sleep(0.5)
            publisher.publish(camera.frame(1_900_000_000 * SECOND))
            assert wait_for(lambda: received, 20), running.log.read_text()[-2000:]
            assert received[-1].threshold == pytest.approx(0.6)
            result = set_parameter(probe, namespace, "uncertainty_threshold", 0.45)
            assert result.successful, result.reason
            publisher.publish(camera.frame(1_900_000_001 * SECOND))
            assert wait_for(lambda: len(received) >= 2, 20), running.log.read_text()[-2000:]
            assert received[-1].threshold == pytest.approx(0.45)
            assert [c.class_name for c in received[-1].class_map] == [c.class_name for c in received[0].class_map]
    finally:
        camera.close()


def test_a_camera_that_loses_half_its_frames_from_the_first_is_reported_at_half(tmp_path):
    namespace = "/itest_loss"
    read, close = diagnostics_of(namespace)
    camera = Camera([f"{namespace}/image"], rate_hz=1.0, reliable=True, depth=10)
    rng = random.Random(7)
    try:
        with RunningNode(namespace, ["-p", "backend:=toy", "-p", "inference_size:=240",
                                     "-p", "diagnostics_period:=0.3"], tmp_path / "node.log") as running:
            assert wait_for(lambda: camera.publishers[0].get_subscription_count() > 0, 60), \
                running.log.read_text()[-2000:]
            assert read(lambda v: v.get("input qos", "").startswith("reliable"), 20)
            sent = 0
            for index in range(160):  # a 30 Hz camera whose every frame is lost with a chance of one half
                if index == 0 or rng.random() >= 0.5:
                    camera.publishers[0].publish(camera.frame(1_900_000_000 * SECOND + index * SECOND // 30))
                    sent += 1
                    # the stamps say 30 Hz; sent slower, so that a busy machine's node takes each one before the
                    # next (its input keeps only the newest frame, by design)
                    time.sleep(0.15)
            values = read(lambda v: int(v["frames received"]) >= sent, 15)
            # on a machine under load a frame may still be overwritten in the depth-1 input before the node takes
            # it (CI: 67 of 68 once); the node cannot tell it from a frame lost on the way, and counts it missing
            received = int(values["frames received"])
            assert sent - 3 <= received <= sent, values
            missing = int(values["frames missing from the input (estimated)"])
            assert abs(missing / (missing + received) - 0.5) <= 0.1, (missing, received, sent)
    finally:
        camera.close()
        close()


def test_a_reliable_camera_that_starts_after_the_node_loses_no_frame(tmp_path):
    namespace = "/itest_late"
    read, close = diagnostics_of(namespace)
    try:
        with RunningNode(namespace, ["-p", "backend:=toy", "-p", "inference_size:=240",
                                     "-p", "diagnostics_period:=0.3"], tmp_path / "node.log") as running:
            assert read(lambda v: "no publisher yet" in v.get("input qos", ""), 60), running.log.read_text()[-2000:]
            camera = Camera([f"{namespace}/image"], rate_hz=1.0, reliable=True, depth=10)
            try:
                assert wait_for(lambda: camera.publishers[0].get_subscription_count() > 0, 20)
                time.sleep(0.2)  # a writer sees the match slightly before the reader is ready (Fast DDS)
                stamp = 1_900_000_000 * SECOND
                large = np.zeros((720, 1280, 3), np.uint8)  # 2.7 MB: best effort loses fragments of such frames
                for index in range(50):  # 5 s at 10 Hz from the moment it matched: the old 2 s poll fell in here
                    message = Image(header=_header(stamp + index * SECOND // 10), height=720, width=1280,
                                    encoding="rgb8", step=3 * 1280, data=large.tobytes())
                    camera.publishers[0].publish(message)
                    time.sleep(0.1)
                values = read(lambda v: int(v["frames received"]) >= 50, 20)
            finally:
                camera.close()
            assert int(values["frames received"]) == 50, (values, running.log.read_text()[-2000:])
            assert values["input qos"].startswith("reliable (auto"), values
            assert values["frames missing from the input (estimated)"] == "0", values
    finally:
        close()


def test_the_node_runs_without_an_optional_message_package_and_says_so_once(tmp_path):
    """autoware_perception_msgs and visualization_msgs hidden from the node's process, as on a machine without
    them: it starts, warns once per output, and the other outputs work."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('autoware_perception_msgs', 'visualization_msgs'):\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    namespace = "/itest_optional"
    log = tmp_path / "node.log"
    environment = {**os.environ, **ROS_ENV,
                   "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    read, close = diagnostics_of(namespace)
    process = subprocess.Popen(node_command(namespace), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               env=environment)
    try:
        values = read(lambda v: "outputs off (message type not installed)" in v, 60)
        assert values, log.read_text()[-3000:]
        assert values["outputs off (message type not installed)"] == "anomalies_objects, anomaly_markers"
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        close()
    output = log.read_text()
    warnings = [line for line in output.splitlines() if "is off: its message type" in line]
    assert len(warnings) == 2 and "autoware_perception_msgs" in warnings[0] + warnings[1], output[-3000:]
    assert "Traceback" not in output and process.returncode == 130


def test_a_node_given_a_renamed_parameter_exits_1_naming_the_new_one():
    completed = subprocess.run(node_command("/itest_renamed", "-p", "runtime:=onnx", "-p", "engine:=vit.onnx"),
                               env={**os.environ, **ROS_ENV}, capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert completed.returncode == 1 and len(fatal) == 1, output
    assert "engine renamed: give onnx_model instead" in fatal[0] and "Traceback" not in output, output


def test_a_node_given_a_device_this_machine_lacks_exits_1_with_one_line(tmp_path):
    completed = subprocess.run(node_command("/itest_device", "-p", "device:=cuda:7"),
                               env={**os.environ, **ROS_ENV}, capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert completed.returncode == 1 and len(fatal) == 1, output
    assert "'cuda:7'" in fatal[0] and "this machine has: cpu" in fatal[0] and "Traceback" not in output
