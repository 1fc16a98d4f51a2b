"""Integration tests of the real node's outputs: fine-tuned weights, a topic of another type, image messages, 3D
detections and markers (real rclpy and Fast DDS, traffic kept on this machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")

from sensor_msgs.msg import Image  # noqa: E402
from test_ros_node import (PARAMS, ROS_ENV, nodes, outputs_for, publish_frame, ros, stamp_base,  # noqa: E402,F401
                           stamp_ns, wait_for)


def test_a_node_runs_fine_tuned_weights_and_says_what_they_are(tmp_path, tiny_model_name):
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.tools.scenes import write_street_dataset
    from clipomaly_ros.tools.finetune import FinetuneSettings, finetune

    write_street_dataset(tmp_path / "data", 4)
    weights = tmp_path / "tuned.pt"
    finetune(ClipomalyConfig(model=tiny_model_name, random_weights=True, inference_size=128, device="cpu"),
             FinetuneSettings(tmp_path / "data", weights, val=tmp_path / "data", steps=2, batch_size=2, workers=0),
             progress=False)
    params = tmp_path / "p.yaml"
    params.write_text(f"/**/clipomaly:\n  ros__parameters:\n    model: {tiny_model_name}\n    checkpoint: {weights}\n"
                      "    inference_size: 128\n    device: cpu\n")
    command = [sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file", str(params), "-r",
               "__ns:=/itest_tuned"]
    environment = {**os.environ, **ROS_ENV}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any("ready:" in line for line in lines):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=10)
    output = "".join(lines)
    assert f"checkpoint {weights}: fine-tuned from {tiny_model_name} (random weights) with dense method scclip for 19 "\
           "known classes, 2 steps on" in output, output
    assert "validation mIoU" in output and "ready:" in output
    completed = subprocess.run(command + ["-p", "known_classes:=[road, car]", "-p", "drivable_classes:=[road]"],
                               env=environment, capture_output=True, text=True, timeout=90)
    assert completed.returncode == 1
    fatal = [line for line in (completed.stdout + completed.stderr).splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "was fine-tuned for the known classes" in fatal[0], completed.stderr


def test_a_node_reading_a_topic_of_another_type_says_so(ros, tmp_path):
    node, _, _ = ros
    raw_on_the_named_topic = node.create_publisher(Image, "/itest_warn/cam/image_raw", 1)
    params = tmp_path / "p.yaml"
    params.write_text(PARAMS)
    process = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file",
                                str(params), "-p", "input_transport:=compressed", "-r", "__ns:=/itest_warn",
                                "-r", "image/compressed:=/itest_warn/cam/image_raw"],
                               env={**os.environ, **ROS_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "carries sensor_msgs/msg/Image" in line or not line:
                break
        assert any("/itest_warn/cam/image_raw carries sensor_msgs/msg/Image" in line and "input_transport" in line
                   for line in lines), "".join(lines)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        node.destroy_publisher(raw_on_the_named_topic)


def test_an_rclpy_image_message_holds_the_map_itself_and_publishes_its_bytes():
    import rclpy
    from sensor_msgs.msg import Image

    from clipomaly_ros.ros.messages import MessageFactory, ros_type, uint8_array

    copies = []

    def counting_copy(array):
        copies.append(uint8_array(array))
        return copies[-1]

    factory = MessageFactory(ros_type, byte_array=counting_copy, data_by_reference=True)
    semantic = np.arange(12 * 7, dtype=np.uint16).reshape(7, 12) * 700
    message = factory.image(factory.header(1, 2, "cam"), semantic, "mono16")
    assert copies == [] and np.shares_memory(message.data, semantic)  # no copy while building
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    try:  # rclpy serialises the shared buffer: a subscriber gets the map's bytes
        node = rclpy.create_node("share_data_probe", context=context)
        received = []
        node.create_subscription(Image, "share_data_probe", received.append, 5)
        publisher = node.create_publisher(Image, "share_data_probe", 5)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            if publisher.get_subscription_count():
                publisher.publish(message)
            executor.spin_once(timeout_sec=0.1)
        assert received, "the probe received nothing in 10 s"
        assert np.array_equal(np.frombuffer(bytes(received[0].data), np.uint16).reshape(7, 12), semantic)
        assert (received[0].height, received[0].width, received[0].step) == (7, 12, 24)
    finally:
        rclpy.try_shutdown(context=context)


def test_3d_detections_and_markers_follow_camera_info_with_image_stamps_and_track_ids(ros):
    from sensor_msgs.msg import CameraInfo
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    from clipomaly_ros.core.scene.geometry import CameraModel, CameraMounting
    from clipomaly_ros.tools.scenes import StandingObject, render_perspective_street

    node, listeners, publishers = ros
    listener = listeners["/itest_raw"]
    assert wait_for(lambda: listener.diagnostics().get("3d output", "").startswith("off: no camera_info received on "
                                                                                    "/itest_raw/camera_info"), 5)
    kept = {"3d": [], "markers": []}
    node.create_subscription(Detection3DArray, "/itest_raw/anomalies_3d", kept["3d"].append, 10)
    node.create_subscription(MarkerArray, "/itest_raw/anomaly_markers", kept["markers"].append, 10)
    info_publisher = node.create_publisher(CameraInfo, "/itest_raw/camera_info", 1)
    camera = CameraModel(480, 270, np.array([[400.0, 0, 240], [0, 400, 135], [0, 0, 1]]), np.zeros(5))
    info = CameraInfo(width=480, height=270, distortion_model="plumb_bob", d=[0.0] * 5, k=camera.k.ravel().tolist())
    assert wait_for(lambda: info_publisher.get_subscription_count() > 0, 10)
    assert wait_for(lambda: node.count_publishers("/itest_raw/anomalies_3d") > 0, 10)
    info_publisher.publish(info)
    time.sleep(0.5)
    listener.clear()
    stamps = [stamp_base(30) + index * 100_000_000 for index in range(6)]
    for index, stamp in enumerate(stamps):  # the node's mounting: 1.5 m up, level (the parameter defaults)
        image, _ = render_perspective_street(camera, CameraMounting(), [StandingObject("mattress", 12.0 - 0.5 * index,
                                                                                      -0.5, 1.8, 0.6)], seed=index)
        for _ in range(3):  # best effort, as cameras publish: a frame lost on the wire is sent again
            info_publisher.publish(info)
            publish_frame(publishers["/itest_raw"], image, stamp)
            if wait_for(lambda: outputs_for(listener, stamp)["anomalies"], 5):
                break
        assert outputs_for(listener, stamp)["anomalies"], listener.diagnostics()
    assert wait_for(lambda: len(kept["3d"]) >= len(stamps) and len(kept["markers"]) >= len(stamps), 10)
    by_stamp = {stamp_ns(m.header): m for m in kept["3d"]}
    assert set(stamps) <= set(by_stamp)
    for index, stamp in enumerate(stamps):
        flat = outputs_for(listener, stamp)["anomalies"][0]
        three_d = by_stamp[stamp]
        assert three_d.header.frame_id == "base_link"
        assert [d.id for d in three_d.detections] == [d.id for d in flat.detections] != []
        (located,) = three_d.detections
        assert abs(located.bbox.center.position.y + 0.5) < 0.3
        front = located.bbox.center.position.x - located.bbox.size.x / 2
        assert abs(front - (12.0 - 0.5 * index)) < 0.05 * (12.0 - 0.5 * index)
    assert len({d.id for m in kept["3d"] for d in m.detections}) == 1  # one mattress, one track id
    markers = [m for m in kept["markers"] if m.markers and stamp_ns(m.markers[0].header) in stamps]
    assert markers and all(m.markers[0].action == 3 and m.markers[0].header.frame_id == "base_link" for m in markers)
    track_id = int(by_stamp[stamps[-1]].detections[0].id)
    assert {(k.ns, k.id) for k in markers[-1].markers[1:]} == {("anomalies", track_id), ("anomaly_labels", track_id)}
    assert wait_for(lambda: listener.diagnostics().get("3d output") == "on"
                    and int(listener.diagnostics()["anomalies located on the ground"]) >= len(stamps), 5), \
        listener.diagnostics()  # diagnostics come every 0.3 s: the last frame's count may take one more
