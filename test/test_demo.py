"""The README's two commands: the demo (a real node on a synthetic drive over local DDS) and the set-up skipping."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).parent.parent


def run_demo_command(out, *options):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")
    completed = subprocess.run([sys.executable, "-m", "clipomaly_ros.tools.cli", "demo", "-o", str(out), *options],
                               capture_output=True, text=True, timeout=600)
    log = (out / "node.log").read_text() if (out / "node.log").exists() else ""
    assert completed.returncode == 0, completed.stdout + completed.stderr + log
    return completed.stdout


def test_demo_runs_the_node_on_a_synthetic_drive_and_prints_every_frame(tmp_path):
    """Paced: every frame is answered, so what it prints does not depend on how busy the CPU is."""
    from clipomaly_ros.core.method.overlay import class_colour

    out = tmp_path / "demo"
    stdout = run_demo_command(out, "--seconds", "3")
    lines = stdout.splitlines()
    frames = [line for line in lines if line.startswith("stamp ")]
    # one line per anomaly of each of the 30 frames (or one 'no anomalies' line), in stamp order
    stamps = [line.split()[1] for line in frames]
    assert sorted(set(stamps)) == [f"{1700000000 + k // 10}.{k % 10}00" for k in range(30)], stamps
    assert stamps == sorted(stamps)
    assert "published 30 frames, each once the node had answered the one before" in stdout
    assert "the node answered 30;" in stdout
    detections = [line for line in frames if " id " in line]
    assert all(" m ahead, " in line for line in detections), detections  # anomalies_3d for every anomaly
    mattress = [line for line in detections if " mattress " in line]
    tyre = [line for line in detections if " tire " in line]
    # a track is published from its third frame; the tyre enters at 1.5 s, and merges with the mattress while it
    # rolls past in front of it (from 2.3 s)
    assert len(mattress) >= 25 and len(tyre) >= 6, stdout
    ahead = [float(line.split(" m ahead")[0].split()[-1]) for line in mattress]
    assert ahead[0] > ahead[-1] + 5 and all(" 0.5 m left" in line for line in mattress)  # it closes in
    assert {float(line.split(" m ahead")[0].split()[-1]) for line in tyre} <= {11.9, 12.0, 12.1}
    assert len({line.split()[3] for line in detections}) == 2  # one track id per object
    assert "node cost per frame (mean): " in stdout

    from PIL import Image

    gif = Image.open(out / "drive.gif")
    assert gif.n_frames == 30 and gif.size == (640, 360)
    gif.seek(25)
    picture = np.asarray(gif.convert("RGB"))
    legend = picture[:150, 500:]
    for name in ("road", "mattress"):  # the legend's swatches keep their exact class colours
        assert (legend == np.array(class_colour(name))).all(axis=-1).sum() >= 50, name
    records = [json.loads(line) for line in (out / "anomalies.jsonl").read_text().splitlines()]
    assert len(records) == 30
    placed = [a for record in records for a in record["anomalies"]]
    assert placed and all({"distance_m", "lateral_m", "width_m", "height_m"} <= set(a) for a in placed)
    assert {"demo_params.yaml", "node.log", "drive.gif", "anomalies.jsonl"} <= {p.name for p in out.iterdir()}


def test_demo_in_real_time_publishes_at_the_camera_rate(tmp_path):
    """--realtime does not wait for the node; how many frames it answers depends on the machine, so only that
    it answers some, and says how it published, is checked."""
    stdout = run_demo_command(tmp_path / "demo", "--seconds", "1", "--realtime")
    assert "published 10 frames, at 10 Hz; only the newest frame is processed" in stdout
    answered = int(stdout.split("the node answered ")[1].split(";")[0])
    assert 1 <= answered <= 10


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
    assert commands[0].startswith(".venv/bin/python -m pytest -q -n ") and commands[1].startswith(
        ".venv/bin/clipomaly demo"), commands
