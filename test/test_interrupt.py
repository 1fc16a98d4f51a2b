"""Ctrl-C during a command that writes files over time: what was done is kept in readable files, the command says
how far it got, and it exits 130. The signal is real (SIGINT sent to this process while a frame is in work)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest
from rosbags.highlevel import AnyReader

from clipomaly_ros.core.method.pipeline import Clipomaly
from clipomaly_ros.tools.scenes import write_street_dataset
from clipomaly_ros.ros.bags import typestore_with_built_msgs
from clipomaly_ros.tools.cli import main
from clipomaly_ros.core.interrupt import EXIT_INTERRUPTED, GracefulStop

from helpers import toy_frames, write_image_bag

TOY = ["--backend", "toy", "--inference-size", "240"]


@pytest.fixture
def ctrl_c_during_call(monkeypatch):
    """``ctrl_c_during_call(owner, name, n)``: the n-th call of ``owner.name`` sends SIGINT to this process as a
    terminal's Ctrl-C would, then finishes its work."""

    def arm(owner, name: str, on_call: int):
        original = getattr(owner, name)
        calls = []

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == on_call:
                os.kill(os.getpid(), signal.SIGINT)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)
        return calls

    return arm


def test_an_interrupted_replay_closes_a_readable_bag_with_the_frames_done(tmp_path, capsys, ctrl_c_during_call):
    frames = toy_frames(12)
    stamps = write_image_bag(tmp_path / "in", [f[0] for f in frames])
    calls = ctrl_c_during_call(Clipomaly, "segment_batch", 4)
    before = signal.getsignal(signal.SIGINT)  # ignored, not Python's default, in a job started in the background
    code = main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out")] + TOY)
    captured = capsys.readouterr()
    assert code == EXIT_INTERRUPTED, captured
    assert len(calls) == 4  # the frame in work was finished, no later one started
    assert "interrupted after 4 of 12 frames" in captured.out and "the bag holds them and is complete" in captured.out
    assert "stopping after the current item" in captured.err
    assert (tmp_path / "out" / "metadata.yaml").is_file()
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        detections = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                      if c.topic == "/anomalies"]
    assert counts["/camera/image_raw"] == 4 and counts["/anomalies"] == 4 and counts["/overlay"] == 4
    assert [d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for d in detections] == sorted(stamps)[:4]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back


def test_a_replay_that_fails_midway_still_closes_its_bag(tmp_path, monkeypatch, toy_pipeline):
    from clipomaly_ros.tools.replay import replay

    write_image_bag(tmp_path / "in", [f[0] for f in toy_frames(6)])
    calls = []
    original = toy_pipeline.segment_batch

    def failing_on_the_third(images):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return original(images)

    monkeypatch.setattr(toy_pipeline, "segment_batch", failing_on_the_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        replay(toy_pipeline, tmp_path / "in", tmp_path / "out", progress=False, log=lambda _: None)
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/anomalies"] == 2 and counts["/camera/image_raw"] == 3  # the failed frame's input was copied


def test_an_interrupted_segment_keeps_the_finished_images(tmp_path, capsys, ctrl_c_during_call):
    import cv2

    paths = []
    for index, (image, _, _) in enumerate(toy_frames(6)):
        paths.append(tmp_path / f"frame{index}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    ctrl_c_during_call(Clipomaly, "segment_batch", 2)
    code = main(["segment", *map(str, paths), "-o", str(tmp_path / "out")] + TOY)
    assert code == EXIT_INTERRUPTED
    assert "interrupted after 2 of 6 images" in capsys.readouterr().out
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted(f"frame{i}_{kind}" for i in (0, 1) for kind in ("semantic.png", "score.png",
                                                                               "overlay.png", "anomalies.json"))


def test_an_interrupted_finetune_saves_a_step_it_resumes_from(tmp_path, capsys, ctrl_c_during_call, tiny_model_name):
    from clipomaly_ros.tools import finetune as finetune_module

    write_street_dataset(tmp_path / "data", 8, seed=1)
    common = ["--model", "clipomaly-tiny-vit", "--random-weights", "--inference-size", "128", "--device", "cpu",
              "--steps", "6", "--batch-size", "2", "--lr", "5e-3", "--workers", "0"]
    assert main(["finetune", str(tmp_path / "data"), "-o", str(tmp_path / "whole.pt")] + common) == 0
    ctrl_c_during_call(finetune_module, "crop_features", 5)  # during step 3 (two calls a step with --preserve)
    code = main(["finetune", str(tmp_path / "data"), "-o", str(tmp_path / "split.pt")] + common)
    assert code == EXIT_INTERRUPTED
    assert "interrupted at step 3 (--resume" in capsys.readouterr().out
    assert main(["finetune", str(tmp_path / "data"), "-o", str(tmp_path / "split.pt"), "--resume",
                 str(tmp_path / "split.pt")] + common) == 0

    def losses(name):
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(open(tmp_path / f"{name}.csv"))]

    assert losses("split") == losses("whole")  # the interrupted step was finished, not half-applied


def test_a_second_ctrl_c_stops_at_once():
    with GracefulStop(lambda _: None) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_demo_writes_what_the_node_answered(tmp_path):
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")
    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.tools.cli", "demo", "-o", str(out),
                             "--seconds", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    try:
        for line in demo.stdout:
            printed.append(line)
            if line.startswith("stamp 1700000000.500"):
                demo.send_signal(signal.SIGINT)
                break
        stdout, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    stdout = "".join(printed) + stdout
    assert demo.returncode == EXIT_INTERRUPTED, stdout + stderr
    assert "interrupted: the drive stopped after" in stdout
    answered = int(stdout.split("the node answered ")[1].split(";")[0])
    assert 6 <= answered < 40
    assert (out / "anomalies.jsonl").read_text().count("\n") == answered
    from PIL import Image

    assert Image.open(out / "drive.gif").n_frames >= 6


def test_a_stop_that_lands_where_python_drops_exceptions_is_raised_just_after(capfd):
    """A signal during an import can land in the import system's weakref callback, where an exception is printed
    as "Exception ignored" and dropped: the node then went on starting until its deadline. A ``__del__`` drops
    exceptions alike; the stop must come out just after it, not be lost."""
    import time

    from clipomaly_ros.core.interrupt import StopRequested

    class SignalledWhileDropped:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # the handler runs here, inside __del__
                pass

    stop = GracefulStop(announce=None)
    with stop:
        stop.raising = True
        with pytest.raises(StopRequested):
            SignalledWhileDropped()  # dropped at once: its __del__ runs
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                time.sleep(0.01)
    assert stop.signal_name == "SIGTERM" and "Exception ignored" not in capfd.readouterr().err
