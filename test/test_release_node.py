"""The node takes a release's parameter file as it is, logs the release id at start and reports it in /diagnostics
(a separate node process, real rclpy, traffic kept on this machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROS_TEST_ENVIRONMENT, ros_domain_id

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from clipomaly_ros.core.config import ClipomalyConfig  # noqa: E402
from clipomaly_ros.tools.release.provenance import parameter_file  # noqa: E402

ROS_ENV = {**ROS_TEST_ENVIRONMENT, "ROS_DOMAIN_ID": ros_domain_id(43)}  # a domain of this module's own


def test_the_node_runs_a_release_file_and_reports_its_id(tmp_path, monkeypatch):
    identity = "rel-0123456789abcdef"
    config = ClipomalyConfig(backend="toy", inference_size=240, anomaly_vocabulary=("tire", "garden gnome"))
    params = tmp_path / "clipomaly.yaml"
    params.write_text(parameter_file(config, identity, {"release_id": identity, "inputs": {"mined": []}}))
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file",
                                    str(params), "-p", "diagnostics_period:=0.3", "-r", "__ns:=/itest_release"],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ROS_ENV})
    for name, value in ROS_ENV.items():  # this process's probe too, and only for this test
        monkeypatch.setenv(name, value)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("clipomaly_release_probe", context=context)
    received = []
    node.create_subscription(DiagnosticArray, "/diagnostics", received.append,
                             QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def released() -> set[str]:
        return {kv.value for array in list(received) for status in array.status
                if status.name.startswith("/itest_release/clipomaly") for kv in status.values if kv.key == "release"}

    try:
        deadline = time.monotonic() + 120
        while not released() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert released() == {identity}, log_path.read_text()[-2000:]
        assert f"release {identity}" in log_path.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
