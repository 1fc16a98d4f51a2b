"""The package as a ROS user installs it: built with colcon into a workspace's install tree, whose
``clipomaly_node`` starts, reports ready, publishes with the catalogue's QoS and stops on SIGINT; and the
package's metadata (one version, rosdep keys, no end-of-life aliases).

colcon comes from the package index (scripts/setup_ros.sh installs colcon-common-extensions): without it these
tests fail, as a broken set-up should. ``ros2 launch`` is not on the package index, so its test says so and is
skipped where it is missing; the launch file's decisions and declarations are tested without it
(test_launch_logic.py, test_docs.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import ros_domain_id

REPO = Path(__file__).resolve().parent.parent
PACKAGE_FILES = ("setup.py", "setup.cfg", "package.xml", "README.md", "LICENSE", "resource", "clipomaly_ros",
                 "config", "launch", "foxglove")
"""What the package's source folder in a workspace needs (a clone has more: tests, docs, scripts)."""
BIN = Path(sys.executable).parent
DOMAIN_ID = ros_domain_id(41)


def manifest() -> ElementTree.Element:
    return ElementTree.parse(REPO / "package.xml").getroot()


def colcon() -> str:
    found = shutil.which("colcon", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail("colcon is not installed: scripts/setup_ros.sh installs colcon-common-extensions from the "
                    "package index (pip install colcon-common-extensions)")
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A colcon workspace with this package in src/, built (a copy, not --symlink-install: the install tree must
    hold everything the node needs)."""
    root = tmp_path_factory.mktemp("colcon_ws")
    source = root / "src" / "clipomaly_ros"
    source.mkdir(parents=True)
    for name in PACKAGE_FILES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    built = subprocess.run([colcon(), "build", "--event-handlers", "console_direct-"], cwd=root, env=environment,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return root


def sourced(workspace: Path, command: str) -> list[str]:
    """``command`` run by bash after ``source install/setup.bash``, as a user runs it (with
    :func:`ros_environment`, so that only the install tree provides clipomaly_ros)."""
    return ["bash", "-c", f"source {workspace}/install/setup.bash && {command}"]


def ros_environment() -> dict[str, str]:
    """This process's environment with the venv's tools first, DDS kept on this machine, and the repository taken
    off PYTHONPATH (a ROS installation's own entries there stay)."""
    python_path = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                   if entry and Path(entry).resolve() != REPO]
    # AMENT_PREFIX_PATH is the conftest's: the venv, where scripts/setup_ros.sh put ROS 2
    # without a profile file: one that turns the builtin transports off makes Fast DDS ignore the UDPv4 choice
    inherited = {name: value for name, value in os.environ.items() if name != "FASTRTPS_DEFAULT_PROFILES_FILE"}
    return {**inherited, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(python_path), "ROS_DOMAIN_ID": DOMAIN_ID,
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "PYTHONUNBUFFERED": "1",
            "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """The process's output up to the first line holding ``marker`` (or all of it, if it ends or ``timeout``
    seconds pass first)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def test_the_install_tree_holds_the_node_the_launch_file_and_the_data(workspace):
    share = workspace / "install" / "clipomaly_ros" / "share" / "clipomaly_ros"
    for path in ("package.xml", "config/clipomaly.yaml", "launch/clipomaly.launch.py",
                 "foxglove/clipomaly_layout.json"):
        assert (share / path).is_file(), path
    executables = workspace / "install" / "clipomaly_ros" / "lib" / "clipomaly_ros"
    assert os.access(executables / "clipomaly_node", os.X_OK) and os.access(executables / "clipomaly", os.X_OK)
    where = subprocess.run(sourced(workspace, 'python -c "import clipomaly_ros, importlib.resources as r; '
                                   "print(clipomaly_ros.__file__, clipomaly_ros.__version__, "
                                   "r.files('clipomaly_ros').joinpath('data/naming_dictionary.txt').is_file())\""),
                           env=ros_environment(), cwd=workspace, capture_output=True, text=True, timeout=120)
    module, version, dictionary = where.stdout.split()
    assert module.startswith(str(workspace / "install")), where.stdout + where.stderr
    assert version == manifest().findtext("version") and dictionary == "True"


def stop(process: subprocess.Popen) -> int:
    """SIGINT, as Ctrl-C sends it; the exit status, or -9 when the process group had to be killed after 60 s (no
    process of it is left behind either way)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        return -9
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def test_the_installed_node_reports_ready_publishes_with_the_catalogues_qos_and_stops_on_sigint(workspace):
    # the entry point itself, as colcon installed it (lib/clipomaly_ros is on no PATH: ros2 run finds it there)
    executable = workspace / "install" / "clipomaly_ros" / "lib" / "clipomaly_ros" / "clipomaly_node"
    node = subprocess.Popen(sourced(workspace, f"exec {executable} --ros-args -p backend:=toy -r __ns:=/colcon_check"),
                            env=ros_environment(), cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = read_until(node, "active: listening on", timeout=180)
        assert "ready: toy colour backend" in output and "active: listening on /colcon_check/image" in output, output
        qos = subprocess.run([sys.executable, "-c", QOS_PROBE], env=ros_environment(), capture_output=True,
                             text=True, timeout=120)
        assert qos.returncode == 0, qos.stdout + qos.stderr
    finally:
        code = stop(node)
    assert code == 130, f"exit status {code}: {node.stdout.read()[-2000:]}"


QOS_PROBE = textwrap.dedent("""
    # what the running node offers on each per-camera output, against the topic catalogue
    import sys, time
    import rclpy
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    from clipomaly_ros.ros.topic_catalogue import camera_outputs

    rclpy.init()
    probe = rclpy.create_node("qos_probe")
    wanted = {"/colcon_check/" + entry.name: entry for entry in camera_outputs() if not entry.private}
    deadline, found = time.monotonic() + 60, {}
    while time.monotonic() < deadline and len(found) < len(wanted):
        for name in wanted:
            found[name] = found.get(name) or probe.get_publishers_info_by_topic(name)
        found = {name: info for name, info in found.items() if info}
        rclpy.spin_once(probe, timeout_sec=0.2)
    problems = [f"{name}: no publisher" for name in wanted if name not in found]
    for name, infos in found.items():
        entry, offered = wanted[name], infos[0].qos_profile
        reliable = offered.reliability == ReliabilityPolicy.RELIABLE
        latched = offered.durability == DurabilityPolicy.TRANSIENT_LOCAL
        if reliable != (entry.reliability == "reliable") or latched != (entry.durability == "transient_local"):
            problems.append(f"{name}: offers {offered.reliability.name}, {offered.durability.name}; "
                            f"the catalogue says {entry.qos}")
    print("\\n".join(problems) or f"{len(found)} outputs as catalogued")
    sys.exit(1 if problems else 0)
""")


def test_ros2_launch_starts_the_node_from_the_install_tree(workspace):
    shown = subprocess.run(sourced(workspace, "ros2 launch --help"), env=ros_environment(), capture_output=True,
                           text=True, timeout=120) if shutil.which("ros2") else None
    if shown is None or shown.returncode != 0:
        pytest.skip("ros2 launch is not installed here (launch, launch_ros and ros2cli are not on the package "
                    "index): the launch file's decisions are tested in test_launch_logic.py, its declarations in "
                    "test_docs.py, and the node itself above")
    launch = subprocess.Popen(sourced(workspace, "exec ros2 launch clipomaly_ros clipomaly.launch.py backend:=toy "
                                                 "namespace:=colcon_launch"),
                              env=ros_environment(), cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output = read_until(launch, "active: listening on", timeout=180)
        assert "section(s) /**/clipomaly, backend:=toy" in output, output
        assert "active: listening on /colcon_launch/image" in output, output
    finally:
        stop(launch)


def test_setup_py_the_package_and_package_xml_give_one_version():
    from clipomaly_ros import __version__

    declared = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert declared.stdout.strip().splitlines()[-1] == manifest().findtext("version") == __version__
    for path in ("setup.py", "clipomaly_ros/__init__.py", "CITATION.cff"):
        assert f'"{__version__}"' not in (REPO / path).read_text(), f"{path} writes the version itself"


def test_package_xml_names_a_maintainer_a_bug_tracker_and_no_end_of_life_or_hard_autoware_keys():
    root = manifest()
    assert root.find("maintainer").get("email") and root.findtext("license") == "Apache-2.0"
    urls = {url.get("type"): url.text for url in root.iter("url")}
    assert urls["bugtracker"].startswith("https://") and urls["repository"].startswith("https://")
    keys = {element.text for element in root if element.tag.endswith("depend")}
    assert {"python3-matplotlib", "python3-pil", "python3-torch", "python3-yaml", "ros2launch"} <= keys
    assert "python3-pytorch-pip" not in keys  # end of life in rosdistro since 2025-04-30
    assert not any(key.startswith("autoware") for key in keys)  # optional: the node runs without it
    assert (REPO / "LICENSE").read_text().startswith("\n                                 Apache License")
