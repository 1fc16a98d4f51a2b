"""Shared fixtures. No test reaches the network: the model hub is switched off and sockets may only connect to
this machine."""

import os
import random
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="clipomaly-test-cache-")  # keep the user's cache clean
WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
WORKER_COUNT = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKER_COUNT > 1:  # torch on one core a worker: workers of two threads each on 2 cores only wait on each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def ros_domain_id(salt: int) -> str:
    """A ``ROS_DOMAIN_ID`` for one test module's nodes and probes: drawn per process (two suites on one machine
    rarely meet) from a slice of 1..101 that is this pytest-xdist worker's alone (two workers never meet).
    ``salt`` tells the modules of one worker apart."""
    width = max(1, 101 // WORKER_COUNT)
    return str(1 + WORKER_INDEX * width + random.Random(os.getpid() + salt).randrange(width))


# The ROS tests' nodes and this process's probes (set here, before any test and before rclpy.init, so that a test
# module imported late changes nothing). Fast DDS's shared-memory transport stopped delivering to a subscriber after
# a burst of large images here; UDP on loopback does not, so the tests (which send such bursts on purpose) use it.
ROS_TEST_ENVIRONMENT = {"ROS_DOMAIN_ID": ros_domain_id(0), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                        "AMENT_PREFIX_PATH": sys.prefix, "PYTHONUNBUFFERED": "1", "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
os.environ.update(ROS_TEST_ENVIRONMENT)
# a profile file that turns the builtin transports off would make Fast DDS ignore FASTDDS_BUILTIN_TRANSPORTS
os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)

_connect = socket.socket.connect


def _local_only_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        raise RuntimeError(f"test tried to reach the network ({address!r})")
    return _connect(self, address)


socket.socket.connect = _local_only_connect

TEST_DIR = Path(__file__).parent
TINY_MODEL = "clipomaly-tiny-vit"


def register_tiny_model():
    from clipomaly_ros.core.model.open_clip_backend import register_bundled_models

    register_bundled_models()
    return TINY_MODEL


DDS_ENVIRONMENT = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY",
                   "FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")


@pytest.fixture(autouse=True)
def dds_environment_is_left_as_found():
    """A test that changes this process's DDS settings and leaves them changed puts every later in-process probe in
    another domain than the nodes it waits for (it did: one test's domain id made every later ROS test time out)."""
    before = {name: os.environ.get(name) for name in DDS_ENVIRONMENT}
    yield
    after = {name: os.environ.get(name) for name in DDS_ENVIRONMENT}
    changed = {name: (before[name], after[name]) for name in DDS_ENVIRONMENT if before[name] != after[name]}
    assert not changed, f"the test left this process's DDS environment changed (was, now): {changed}; use monkeypatch"


@pytest.fixture(scope="session")
def tiny_model_name():
    return register_tiny_model()


@pytest.fixture
def toy_config(tmp_path):
    from clipomaly_ros import ClipomalyConfig

    return ClipomalyConfig(backend="toy", inference_size=240, cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def toy_pipeline(toy_config):
    from clipomaly_ros import Clipomaly

    return Clipomaly(toy_config)
