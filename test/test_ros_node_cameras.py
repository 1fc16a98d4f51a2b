"""Integration tests of the real node: one node with two cameras and lazy outputs, a flood of malformed messages,
an out-of-range parameter at start-up (real rclpy and Fast DDS, traffic kept on this machine)."""

from __future__ import annotations

import os
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

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from helpers import toy_frames  # noqa: E402
from test_ros_node import (CAMERAS, PARAMS, ROS_ENV, _header, nodes, outputs_for, publish_frame, ros,  # noqa: E402,F401
                           set_parameter, stamp_base, stamp_ns, wait_for)


# --- one node, two cameras, lazy outputs ---------------------------------------------------------------------

MULTI = "/itest_multi"


@pytest.fixture(scope="module")
def multi_camera_node(ros, tmp_path_factory):
    node, _, _ = ros
    folder = tmp_path_factory.mktemp("multi")
    params = folder / "params.yaml"
    params.write_text(PARAMS + "    cameras: [front, rear]\n    front:\n      camera_z: 2.5\n")
    log = folder / "node.log"
    with open(log, "w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file",
                                    str(params), "-r", f"__ns:={MULTI}"], stdout=stream, stderr=subprocess.STDOUT,
                                   env={**os.environ, **ROS_ENV})
    kept: dict[str, list] = {}
    lock = threading.Lock()

    def keeper(key):
        def keep(message):
            with lock:
                kept.setdefault(key, []).append(message)
        return keep

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    for camera in ("front", "rear"):  # only the records: no image output has a subscriber yet
        node.create_subscription(Detection2DArray, f"{MULTI}/{camera}/anomalies", keeper(f"{camera}/anomalies"),
                                 reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", keeper("diagnostics"), reliable)
    # reliable cameras: the node matches them (input_reliability: auto), so no frame of a burst is lost on the way
    camera_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {camera: node.create_publisher(Image, f"{MULTI}/{camera}/image", camera_qos)
                  for camera in ("front", "rear")}

    def received(key):
        with lock:
            return list(kept.get(key, []))

    def diagnostics(camera):
        statuses = [s for array in received("diagnostics") for s in array.status
                    if s.name == f"{MULTI}/clipomaly: camera {camera}"]
        return {kv.key: kv.value for kv in statuses[-1].values} if statuses else {}

    ready = wait_for(lambda: all(p.get_subscription_count() for p in publishers.values())
                     and all(node.count_publishers(f"{MULTI}/{c}/anomalies") for c in ("front", "rear"))
                     and all(diagnostics(c).get("input qos", "").startswith("reliable") for c in ("front", "rear")),
                     90)
    assert process.poll() is None and ready, log.read_text()
    time.sleep(0.5)

    yield node, publishers, received, diagnostics, keeper
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def test_two_cameras_in_one_node_keep_their_frames_stamps_and_outputs_apart(multi_camera_node):
    node, publishers, received, diagnostics, _ = multi_camera_node
    scenes = {"front": toy_frames(1, planted=("mattress",))[0][0], "rear": toy_frames(1, planted=("deer",))[0][0]}
    stamps = {"front": stamp_base(20), "rear": stamp_base(20) + 7}
    for camera in ("front", "rear"):  # back to back: both wait together and share one backbone pass
        publish_frame(publishers[camera], scenes[camera], stamps[camera])

    def answer(camera, stamp):
        return [m for m in received(f"{camera}/anomalies") if stamp_ns(m.header) == stamp]

    assert wait_for(lambda: answer("front", stamps["front"]) and answer("rear", stamps["rear"]), 15)
    names = {camera: [d.results[0].hypothesis.class_id for d in answer(camera, stamps[camera])[0].detections]
             for camera in ("front", "rear")}
    assert names == {"front": ["mattress"], "rear": ["deer"]}
    assert not answer("front", stamps["rear"]) and not answer("rear", stamps["front"])

    # a bad frame on one camera touches neither the other camera's output nor its counters
    assert wait_for(lambda: diagnostics("front") and diagnostics("rear"), 5)
    front_before, rear_before = diagnostics("front"), diagnostics("rear")
    truncated = Image(header=_header(stamp_base(21)), height=240, width=320, encoding="rgb8", step=960,
                      data=bytes(100))
    publishers["rear"].publish(truncated)
    publish_frame(publishers["front"], scenes["front"], stamp_base(21) + 1)
    assert wait_for(lambda: answer("front", stamp_base(21) + 1), 10)
    assert wait_for(lambda: int(diagnostics("rear")["bad inputs"]) == int(rear_before["bad inputs"]) + 1, 5)
    assert int(diagnostics("front")["bad inputs"]) == int(front_before["bad inputs"])
    assert not answer("rear", stamp_base(21))
    for camera in ("front", "rear"):
        values = diagnostics(camera)
        assert {"processed fps", "processing ms p95", "input to output latency ms p95", "frames dropped"} <= set(values)


def test_an_image_output_without_subscribers_is_never_computed(multi_camera_node):
    node, publishers, received, diagnostics, keeper = multi_camera_node
    image = toy_frames(1, planted=("tire",))[0][0]
    publish_frame(publishers["front"], image, stamp_base(22))
    assert wait_for(lambda: [m for m in received("front/anomalies") if stamp_ns(m.header) == stamp_base(22)], 10)
    assert wait_for(lambda: int(diagnostics("front").get("frames processed", 0)) >= 2, 5)
    values = diagnostics("front")
    assert values["frames with full-resolution maps"] == "0"  # records only: no map was made
    assert "published semantic" not in values and int(values["published anomalies"]) >= 2

    node.create_subscription(Image, f"{MULTI}/front/semantic", keeper("front/semantic"),
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    assert wait_for(lambda: node.count_subscribers(f"{MULTI}/front/semantic") > 0, 5)
    time.sleep(0.5)
    publish_frame(publishers["front"], image, stamp_base(22) + 1)
    assert wait_for(lambda: [m for m in received("front/semantic") if stamp_ns(m.header) == stamp_base(22) + 1],
                    10)
    assert wait_for(lambda: int(diagnostics("front").get("frames with full-resolution maps", 0)) >= 1, 5)
    values = diagnostics("front")
    assert int(values["published semantic"]) >= 1 and "published anomaly_score" not in values
    assert "published semantic" not in diagnostics("rear")


def test_each_camera_of_a_node_has_its_own_mounting_and_it_changes_live(multi_camera_node):
    from sensor_msgs.msg import CameraInfo
    from vision_msgs.msg import Detection3DArray

    from clipomaly_ros.core.scene.geometry import CameraModel, CameraMounting
    from clipomaly_ros.tools.scenes import StandingObject, render_perspective_street

    node, publishers, received, diagnostics, keeper = multi_camera_node
    camera = CameraModel(480, 270, np.array([[400.0, 0, 240], [0, 400, 135], [0, 0, 1]]), np.zeros(5))
    info = CameraInfo(width=480, height=270, distortion_model="plumb_bob", d=[0.0] * 5, k=camera.k.ravel().tolist())
    infos = {name: node.create_publisher(CameraInfo, f"{MULTI}/{name}/camera_info", 1) for name in ("front", "rear")}
    for name in ("front", "rear"):
        node.create_subscription(Detection3DArray, f"{MULTI}/{name}/anomalies_3d", keeper(f"{name}/3d"), 10)
    assert wait_for(lambda: all(p.get_subscription_count() for p in infos.values())
                    and all(node.count_publishers(f"{MULTI}/{n}/anomalies_3d") for n in ("front", "rear")), 10)
    time.sleep(0.5)

    def front_distance(name, height, stamp):
        image, _ = render_perspective_street(camera, CameraMounting(z=height), [StandingObject("mattress", 10.0, 0.0,
                                                                                              1.8, 0.6)])
        for _ in range(3):
            infos[name].publish(info)
            publish_frame(publishers[name], image, stamp)
            if wait_for(lambda: [m for m in received(f"{name}/3d") if stamp_ns(m.header) == stamp], 5):
                break
        (answer,) = [m for m in received(f"{name}/3d") if stamp_ns(m.header) == stamp]
        (detection,) = answer.detections
        return detection.bbox.center.position.x - detection.bbox.size.x / 2

    # front is mounted 2.5 m up by its own parameter, rear at the plain camera_z (1.5 m)
    assert abs(front_distance("front", 2.5, stamp_base(23)) - 10.0) < 0.5
    assert abs(front_distance("rear", 1.5, stamp_base(23) + 1) - 10.0) < 0.5
    assert set_parameter(node, MULTI, "front.camera_z", 1.5).successful
    assert abs(front_distance("front", 1.5, stamp_base(24)) - 10.0) < 0.5
    assert not set_parameter(node, MULTI, "front.camera_pitch", 3.0).successful  # out of range, with the reason


# --- hardening ---------------------------------------------------------------------------------------------------

def test_a_thousand_malformed_messages_never_stop_the_node(ros, nodes):
    from helpers import malformed_images

    node, listeners, publishers = ros
    counter_names = ("frames received", "frames processed", "frames dropped", "bad inputs", "failed frames",
                     "frames skipped while paused")

    def counters(namespace):
        values = listeners[namespace].diagnostics()
        return {name: int(values[name]) for name in counter_names}

    before = {namespace: counters(namespace) for namespace in CAMERAS}
    sent = {"/itest_raw": 0, "/itest_jpeg": 0}
    for index, (kind, fields) in enumerate(malformed_images(1200, seed=5)):
        header = _header(stamp_base(30) + index)
        if "format" in fields:
            publishers["/itest_jpeg"].publish(CompressedImage(header=header, **fields))
            sent["/itest_jpeg"] += 1
        else:
            publishers["/itest_raw"].publish(Image(header=header, is_bigendian=fields.pop("is_bigendian", 0),
                                                   **fields))
            sent["/itest_raw"] += 1
        time.sleep(0.002)
    assert sum(sent.values()) >= 1000
    image = toy_frames(1, planted=("deer",))[0][0]
    for namespace, compressed in (("/itest_raw", False), ("/itest_jpeg", True)):
        process, log = nodes[namespace]
        assert process.poll() is None, Path(log).read_text()[-3000:]
        # best effort may lose one frame: send the good frame until it is answered
        good = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(outputs_for(listeners[namespace], s)["anomalies"]
                                                      for s in good):
            good.append(stamp_base(31) + len(good))
            publish_frame(publishers[namespace], image, good[-1], compressed=compressed)
            wait_for(lambda: outputs_for(listeners[namespace], good[-1])["anomalies"], 1.0)
        answers = [m for s in good for m in outputs_for(listeners[namespace], s)["anomalies"]]
        assert answers and [d.results[0].hypothesis.class_id for d in answers[0].detections] == ["deer"]

        def balanced():
            now = counters(namespace)
            return now["frames received"] == sum(now[name] for name in counter_names[1:]), now

        assert wait_for(lambda: balanced()[0], 5), balanced()[1]
        after = counters(namespace)
        received = after["frames received"] - before[namespace]["frames received"]
        rejected = after["bad inputs"] - before[namespace]["bad inputs"]
        assert received >= 100 and rejected >= 50, (namespace, received, rejected)
        assert listeners[namespace].diagnostics()["inference thread restarts"] == "0"


def test_an_out_of_range_parameter_at_start_up_is_one_fatal_line_and_exit_code_1(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(PARAMS)
    completed = subprocess.run([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file",
                                str(params), "-p", "uncertainty_threshold:=1.7", "-r", "__ns:=/itest_range"],
                               env={**os.environ, **ROS_ENV}, capture_output=True, text=True, timeout=60)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    fatal = [line for line in output.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, output
    assert "itest_range.clipomaly" in fatal[0]  # the node's full name, namespace included
    assert "uncertainty_threshold = 1.7 is out of range: it must be between 0.0 and 1.0" in fatal[0]
    assert "Traceback" not in output
