"""The README's two commands: the demo (a real node on a synthetic drive over local DDS) and the set-up skipping."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).parent.parent


def test_demo_runs_the_node_on_a_synthetic_drive_and_prints_its_anomalies(tmp_path):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")
    out = tmp_path / "demo"
    completed = subprocess.run([sys.executable, "-m", "clipomaly_ros.tools.cli", "demo", "-o", str(out),
                                "--seconds", "3"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr + (out / "node.log").read_text()
    lines = completed.stdout.splitlines()
    detections = [line for line in lines if line.startswith("stamp ") and " id " in line]
    assert any(" mattress " in line for line in detections) and any(" tire " in line for line in detections)
    # where each one stands, from anomalies_3d (the demo's camera publishes camera_info): the mattress closes in
    assert all(" m ahead, " in line for line in detections), detections
    ahead = [float(line.split(" m ahead")[0].split()[-1]) for line in detections if " mattress " in line]
    assert len(ahead) >= 3 and ahead[0] > ahead[-1] + 5 and all(" 0.5 m left" in line for line in detections
                                                                  if " mattress " in line)
    # stamps are the synthetic camera's, never the wall clock: 1700000000.000 + k * 0.1 s
    stamps = {line.split()[1] for line in detections}
    assert all(stamp.startswith("1700000000.") or stamp.startswith("1700000001.") or stamp.startswith("1700000002.")
               for stamp in stamps)
    assert "published 30 frames" in completed.stdout
    assert len({line.split()[3] for line in detections}) == 2  # one track id per object
    from PIL import Image

    gif = Image.open(out / "drive.gif")
    assert gif.n_frames >= 3 and gif.size == (640, 360)
    assert (out / "anomalies.jsonl").read_text().count("\n") >= 3


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_skips_the_set_up_once_it_is_done():
    if not (REPOSITORY / ".venv" / ".ros-ready").is_file():
        pytest.skip("not set up through make (run `make test`)")
    # as typed in a shell, not as a sub-make of `make test` (which would print its directory changes)
    environment = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    completed = subprocess.run(["make", "-n", "test", "demo"], cwd=REPOSITORY, capture_output=True, text=True,
                               timeout=60, env=environment)
    assert completed.returncode == 0, completed.stderr
    commands = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(commands) == 2, commands  # no set-up step, only the two jobs themselves
    assert commands[0].startswith(".venv/bin/python -m pytest -q test") and commands[1].startswith(
        ".venv/bin/clipomaly demo"), commands
