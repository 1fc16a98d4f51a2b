"""The node's camera input over real DDS: reliability matched to the publishers, and frames missing from the input
estimated from gaps in their stamps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from clipomaly_ros.ros.camera import InputGaps

SECOND = 1_000_000_000


def test_missing_frames_are_estimated_from_gaps_in_the_stamps():
    gaps = InputGaps()
    stamps = [k * SECOND // 10 for k in range(10)]  # 10 Hz
    stamps += [stamps[-1] + 3 * SECOND // 10]  # two frames never arrived
    stamps += [stamps[-1] + SECOND // 10] * 2  # then one in order, and the same again
    stamps += [stamps[-1] + 5 * SECOND // 10]  # four more missing
    stamps += [0, SECOND // 10, 3 * SECOND // 10]  # the camera restarts; then one frame missing
    stamps += [stamps[-1] + 60 * SECOND]  # a pause of a minute is no loss
    for stamp in stamps:
        gaps.add(stamp)
    assert gaps.missing == 7 and gaps.period_ns == pytest.approx(SECOND / 10)
    early = InputGaps()
    for stamp in (0, 5 * SECOND):  # no period known yet: nothing is guessed
        early.add(stamp)
    assert early.missing == 0


rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")

from test_ros_params import RunningNode  # noqa: E402
from test_ros_node import ROS_ENV, wait_for  # noqa: E402

PUBLISHER = textwrap.dedent('''
    import sys, time
    import cv2, numpy as np, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    topic, reliability, transport, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    skip = {int(s) for s in sys.argv[5:]}
    rclpy.init()
    node = rclpy.create_node("itest_camera")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    kind = CompressedImage if transport == "compressed" else Image
    publisher = node.create_publisher(kind, topic, QoSProfile(depth=1, reliability=policy))
    deadline = time.monotonic() + 60
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4.5)  # the node looks at its publishers every 2 s
    image = (np.indices((720, 1280)).sum(axis=0) % 256).astype(np.uint8)[..., None].repeat(3, axis=2)
    sent = 0
    for index in range(8):
        message = kind()
        message.header.stamp.sec, message.header.stamp.nanosec = first + index // 2, (index % 2) * 500_000_000
        message.header.frame_id = "camera"
        if transport == "compressed":
            message.format = "jpeg"
            message.data = cv2.imencode(".jpg", image)[1].tobytes()
        else:
            message.height, message.width, message.encoding, message.step = 720, 1280, "rgb8", 3 * 1280
            message.data = image.tobytes()
        if index not in skip:
            publisher.publish(message)
            sent += 1
        time.sleep(0.5)
    time.sleep(1.0)
    print("sent", sent, flush=True)
''')


def publish(topic: str, reliability: str, transport: str, first_second: int, skip=()) -> int:
    """Publish 8 frames of 1280x720 at 2 Hz from another process (those at the indices in ``skip`` are not sent),
    stamped from ``first_second`` on; the number sent."""
    completed = subprocess.run([sys.executable, "-c", PUBLISHER, topic, reliability, transport, str(first_second),
                                *map(str, skip)], env={**os.environ, **ROS_ENV}, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return int(completed.stdout.split()[-1])


def diagnostics_of(namespace: str):
    """The node's latest /diagnostics values, read by a probe of our own."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("itest_input_probe", context=context)
    seen: list = []
    node.create_subscription(DiagnosticArray, "/diagnostics", seen.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def latest() -> dict[str, str]:
        mine = [s for array in seen for s in array.status if s.name.startswith(f"{namespace}/clipomaly")]
        return {kv.key: kv.value for kv in mine[-1].values} if mine else {}

    def read(condition=lambda values: True, timeout: float = 15.0) -> dict[str, str]:
        seen.clear()
        wait_for(lambda: executor.spin_once(timeout_sec=0.1) or (latest() and condition(latest())), timeout)
        return latest()

    return read, lambda: (node.destroy_node(), rclpy.try_shutdown(context=context))


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_the_input_matches_its_publishers_reliability_and_counts_what_went_missing(transport, tmp_path):
    namespace = f"/itest_input_{transport}"
    topic = f"{namespace}/image" + ("/compressed" if transport == "compressed" else "")
    arguments = ["-p", "backend:=toy", "-p", "inference_size:=240", "-p", "diagnostics_period:=0.3",
                 "-p", f"input_transport:={transport}"]
    read, close = diagnostics_of(namespace)
    try:
        with RunningNode(namespace, arguments, tmp_path / "node.log") as running:
            assert read(lambda v: "input qos" in v, 60), running.log.read_text()[-2000:]
            # a reliable camera that skips two frames on purpose: every frame sent arrives, the two are missed
            sent = publish(topic, "reliable", transport, 100, skip=(5, 6))
            values = read(lambda v: int(v["frames received"]) >= sent)
            assert values["input qos"].startswith("reliable (auto"), values
            assert int(values["frames received"]) == sent == 6  # every 1280x720 frame over UDP, none lost
            assert values["frames missing from the input (estimated)"] == "2"
            # it goes; a best-effort camera comes (the pause between them is no loss): the node follows it, and
            # whatever large frames best effort loses on the way, the estimate never exceeds what could be missing
            sent = publish(topic, "best_effort", transport, 200)
            values = read()
            assert values["input qos"].startswith("best_effort (auto"), values
            received = int(values["frames received"]) - 6
            assert sent == 8 and 0 <= received <= 8
            assert 2 <= int(values["frames missing from the input (estimated)"]) <= 2 + 8 - received
    finally:
        close()
