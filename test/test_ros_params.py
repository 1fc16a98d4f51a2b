"""Parameters as rcl reads them, with a real node as the oracle: parameter-file sections, a complete
`ros2 param dump`, launch overrides and start-up errors that name parameters."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")

from rcl_interfaces.srv import GetParameters, ListParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import parameter_value_to_python  # noqa: E402

from clipomaly_ros.core.config import SETTINGS_BY_NAME  # noqa: E402
from clipomaly_ros.ros.launch_logic import node_parameters  # noqa: E402

from test_ros_node import ROS_ENV, call  # noqa: E402  (one DDS domain and transport for all node tests)

BASE = {"backend": "toy", "inference_size": 240}
TOY = [argument for name, value in BASE.items() for argument in ("-p", f"{name}:={value}")]
"""The toy model, given after the file under test so that it changes none of the values compared."""


class RunningNode:
    """A clipomaly node in its own process, started with ``arguments`` after ``--ros-args``."""

    def __init__(self, namespace: str, arguments: list[str], log: Path):
        self.namespace = namespace
        self.log = log
        with open(log, "w") as stream:
            self.process = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args",
                                             "-r", f"__ns:={namespace}", *arguments], stdout=stream,
                                            stderr=subprocess.STDOUT, env={**os.environ, **ROS_ENV})

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextlib.contextmanager
def spinning_probe(name: str):
    """An rclpy node called ``name`` in a context of its own, spun on a daemon thread until the block ends."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def client():
    with spinning_probe("itest_param_client") as node:
        yield node


def node_values(client, running: RunningNode, timeout: float = 60.0) -> dict:
    """Every parameter of the running node, read through its own services as `ros2 param dump` does."""
    name = f"{running.namespace}/clipomaly"
    deadline = time.monotonic() + timeout
    listed = None
    while time.monotonic() < deadline and listed is None:
        assert running.process.poll() is None, running.log.read_text()[-3000:]
        try:
            listed = call(client, ListParameters, f"{name}/list_parameters", ListParameters.Request(), timeout=5)
        except (AssertionError, TimeoutError, RuntimeError):
            time.sleep(0.5)
    assert listed is not None, running.log.read_text()[-3000:]
    names = sorted(listed.result.names)
    got = call(client, GetParameters, f"{name}/get_parameters", GetParameters.Request(names=names), timeout=10)
    assert len(got.values) == len(names), "the node answered get_parameters with fewer values than names"
    return {n: parameter_value_to_python(v) for n, v in zip(names, got.values)}


def expected(values: dict, name: str):
    if name in values:
        return values[name]
    return False if name == "use_sim_time" else SETTINGS_BY_NAME[name].default


SECTION_FILES = {
    "exact then wildcard": {"/itest_p0/clipomaly": {"uncertainty_threshold": 0.41, "min_region_area": 111},
                            "/**/clipomaly": {"uncertainty_threshold": 0.73, "max_regions": 3}},
    "wildcard then exact": {"/**/clipomaly": {"uncertainty_threshold": 0.73, "max_regions": 3},
                            "/itest_p1/clipomaly": {"uncertainty_threshold": 0.41, "min_region_area": 111}},
    "/** and a plain key": {"/**": {"use_sim_time": True, "max_regions": 4},
                            "clipomaly": {"max_regions": 6}, "/*/clipomaly": {"min_region_area": 222}},
    "one level, then everything": {"/*/clipomaly": {"max_regions": 2}, "/**": {"uncertainty_threshold": 0.5}},
}


@pytest.mark.parametrize("index, variant", list(enumerate(SECTION_FILES)))
def test_the_launch_logic_reads_a_parameter_file_as_a_real_node_does(client, tmp_path, index, variant):
    namespace = f"/itest_p{index}"
    document = {key: {"ros__parameters": values} for key, values in SECTION_FILES[variant].items()}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    launch_values, _, _ = node_parameters(path, namespace, {})
    with RunningNode(namespace, ["--params-file", str(path), *TOY], tmp_path / "node.log") as running:
        real = node_values(client, running)
    for name in ("uncertainty_threshold", "min_region_area", "max_regions", "use_sim_time"):
        assert real[name] == expected(launch_values, name), (variant, name)


def dump(values: dict, fqn: str) -> dict:
    """What `ros2 param dump` writes: the node's full name, then its parameters nested at the dots."""
    from clipomaly_ros.core.parameter_files import nest_parameters

    return {fqn: {"ros__parameters": nest_parameters(values)}}


def test_param_dump_of_a_single_camera_node_is_complete_and_starts_the_same_node(client, tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"/**/clipomaly": {"ros__parameters": {**BASE, "max_regions": 5}}}))
    with RunningNode("/itest_dump", ["--params-file", str(first)], tmp_path / "first.log") as running:
        values = node_values(client, running)
    assert values["cameras"] == [] and values["max_regions"] == 5 and values["backend"] == "toy"
    assert set(SETTINGS_BY_NAME) <= set(values)  # every declared setting has a value
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(yaml.safe_dump(dump(values, "/itest_dump/clipomaly")))
    with RunningNode("/itest_dump", ["--params-file", str(dumped)], tmp_path / "second.log") as running:
        again = node_values(client, running)
    assert again == values


def test_launch_overrides_apply_after_the_file(client, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**/clipomaly": {"ros__parameters": {"backend": "open_clip",
                                                                          "device": "cpu", "max_regions": 7}}}))
    launch_values, overrides, _ = node_parameters(path, "/itest_over", {"backend": "toy", "use_sim_time": "true"})
    assert overrides == {"backend": "toy", "use_sim_time": True}
    arguments = ["--params-file", str(path)] + [a for name, value in overrides.items()
                                                for a in ("-p", f"{name}:={str(value).lower()}")]
    with RunningNode("/itest_over", arguments, tmp_path / "node.log") as running:
        real = node_values(client, running)
    assert {n: real[n] for n in ("backend", "use_sim_time", "max_regions")} == {
        n: launch_values[n] for n in ("backend", "use_sim_time", "max_regions")}


def test_missing_weights_at_start_name_the_parameters_not_command_line_flags(tmp_path):
    # the defaults: open_clip's 'openai' weights, which are not cached here and cannot be downloaded
    completed = subprocess.run([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "-r",
                                "__ns:=/itest_noweights"], env={**os.environ, **ROS_ENV, "HF_HUB_OFFLINE": "1"},
                               capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1
    fatal = [line for line in output.splitlines() if "cannot start" in line]
    assert len(fatal) == 1, output[-2000:]
    assert "-p checkpoint:=PATH" in fatal[0] and "-p backend:=toy" in fatal[0] and "-p random_weights:=true" in fatal[0]
    assert "--backend" not in output and "--checkpoint" not in output
