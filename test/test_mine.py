"""`clipomaly mine` on Ray Data with 2 local workers and the toy backend, over generated bags with known anomalies
at known stamps (raw and compressed topics): rows against the truth, a resume after the driver was killed, a
truncated bag, tracks cut at shard borders, and the report in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="Ray Data not installed: pip install -e '.[mine]'")
pq = pytest.importorskip("pyarrow.parquet")

from clipomaly_ros.tools.mining.report import ROW_SCHEMA, read_index  # noqa: E402
from clipomaly_ros.tools.mining.synthetic import (FIRST_STAMP_NS, FLEET, RATE_HZ, StandingAppearance,  # noqa: E402
                                                  appearance_stamps, write_fleet)

PERIOD_NS = round(1e9 / RATE_HZ)
PLANNED = 10  # shards of 2 s: drive_a 2, drive_b 2, drive_c 4 (two topics), drive_d 2
CLIPOMALY = [sys.executable, "-m", "clipomaly_ros.tools.cli"]
MINE_OPTIONS = ["--backend", "toy", "--inference-size", "240", "--workers", "2", "--no-progress"]


NO_REPORTS = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
"""The runs' environment: Ray sends no usage report (the driver's default too, set here in case it changes)."""


def mine(inputs, out_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLIPOMALY, "mine", *map(str, inputs), "-o", str(out_dir), *MINE_OPTIONS, *extra],
                          capture_output=True, text=True, timeout=timeout, env=NO_REPORTS)


def comparable(table) -> list[dict]:
    """The rows without what may differ between runs of the same shards: nothing but their order."""
    return sorted(table.to_pylist(), key=lambda row: (row["bag"], row["topic"], row["first_stamp_ns"], row["track"]))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    write_fleet(folder / "drives")
    return folder / "drives"


@pytest.fixture(scope="module")
def mined(fleet, tmp_path_factory):
    """The fleet mined once, never interrupted, in 2 s windows: every appearance lies inside one shard, but for
    drive_d's tyre, which crosses the border at 2 s."""
    out = tmp_path_factory.mktemp("mined") / "out"
    completed = mine([fleet], out, "--window", "2")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed


def test_rows_match_the_known_anomalies_one_track_per_object_per_shard(mined):
    out, completed = mined
    table = read_index(out)
    rows = comparable(table)
    assert len(rows) == len(FLEET) + 1, rows  # drive_d's tyre is cut in two
    for appearance in FLEET:
        if isinstance(appearance, StandingAppearance):
            continue  # below
        (row,) = [r for r in rows if r["bag"] == appearance.bag and r["topic"] == appearance.topic
                  and r["name"] == appearance.name]
        first, last = appearance_stamps(appearance)
        assert abs(row["first_stamp_ns"] - first) <= PERIOD_NS and abs(row["last_stamp_ns"] - last) <= PERIOD_NS
        assert first <= row["best_stamp_ns"] <= last
        assert row["frames"] >= appearance.last - appearance.first - 1
        assert not row["cut_at_start"] and not row["cut_at_end"]
        assert row["candidates"][0]["name"] == appearance.name and 0.5 < row["peak_score"] <= 1.0
        assert row["mean_score"] <= row["peak_score"] and row["distance_m"] is None  # no camera_info recorded
        assert (out / row["thumbnail"]).is_file()
    # the calibrated bag: its camera_info places the tyre on the ground; crossing the 2 s border, it is two rows
    (tyre,) = [a for a in FLEET if isinstance(a, StandingAppearance)]
    halves = [r for r in rows if r["bag"] == "drive_d"]
    assert [(r["name"], r["cut_at_start"], r["cut_at_end"]) for r in halves] == [("tire", False, True),
                                                                                ("tire", True, False)]
    first, last = appearance_stamps(tyre)
    assert abs(halves[0]["first_stamp_ns"] - first) <= PERIOD_NS and abs(halves[1]["last_stamp_ns"] - last) <= PERIOD_NS
    assert halves[1]["first_stamp_ns"] - halves[0]["last_stamp_ns"] == PERIOD_NS
    for row in halves:
        x, y = tyre.position(round((row["best_stamp_ns"] - FIRST_STAMP_NS) / PERIOD_NS))
        assert row["distance_m"] == pytest.approx(np.hypot(x, y), rel=0.05) and abs(row["lateral_m"] - y) < 0.15
        assert row["on_road"] is True
    # partitioned by bag, and each partition holds only its bag's rows
    partitions = sorted(p.name for p in (out / "anomalies.parquet").iterdir())
    assert partitions == ["bag=drive_a", "bag=drive_b", "bag=drive_c", "bag=drive_d"]
    part = pq.read_table(out / "anomalies.parquet" / "bag=drive_b")
    assert part.num_rows == 2 and set(part.column("topic").to_pylist()) == {"/rear/image_raw/compressed"}
    assert set(ROW_SCHEMA.names) - {"bag"} <= set(part.schema.names)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bags"] == 4 and summary["frames"] == 5 * 40 and summary["failed"] == []
    assert summary["anomalies_per_name"] == {"tire": 3, "mattress": 2, "cardboard box": 1, "deer": 1, "dog": 1}
    assert summary["hours"] == pytest.approx(4 * 3.9 / 3600, rel=0.01)
    assert summary["shards"] == {"planned": PLANNED, "committed": PLANNED, "committed_of_plan": PLANNED,
                                 "from_earlier_runs": 0, "failed": 0, "mined_this_run": PLANNED, "resumed": 0}
    assert summary["truncated"] == []
    assert summary["frames_per_second"] > 0
    assert "8 anomaly tracks in 4 bag(s)" in completed.stdout and "drive_c" in completed.stdout


def test_the_same_command_again_mines_nothing_and_writes_the_same_rows(mined, fleet):
    out, _ = mined
    before = comparable(read_index(out))
    completed = mine([fleet], out, "--window", "2")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"{PLANNED} already committed, 0 to mine" in completed.stderr
    assert comparable(read_index(out)) == before
    refused = mine([fleet], out, "--window", "1")
    assert refused.returncode == 2 and "window_s differ" in refused.stderr


def test_a_driver_killed_after_its_first_commit_resumes_to_the_uninterrupted_rows(mined, fleet, tmp_path):
    reference, _ = mined
    out = tmp_path / "out"
    driver = subprocess.Popen([*CLIPOMALY, "mine", str(fleet), "-o", str(out), *MINE_OPTIONS, "--window", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env=NO_REPORTS)
    shards = out / "shards"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if shards.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in shards.iterdir()):
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the run ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        try:  # what the driver started (the local Ray cluster) goes down with it, as on a machine that died
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    committed_at_kill = [p.name for p in shards.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(committed_at_kill) < PLANNED and not (out / "summary.json").exists()
    resumed = mine([fleet], out, "--window", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # workers busy when the driver died may still have committed their shard (whole, by one rename) before the
    # cluster went down: those are not mined again either
    summary = json.loads((out / "summary.json").read_text())
    skipped = summary["shards"]["resumed"]
    assert len(committed_at_kill) <= skipped < PLANNED and summary["shards"]["mined_this_run"] == PLANNED - skipped
    assert f"{skipped} already committed, {PLANNED - skipped} to mine" in resumed.stderr
    assert summary["shards"]["committed"] == PLANNED
    assert comparable(read_index(out)) == comparable(read_index(reference))  # no row lost, none twice


def processes_named(prefix: str) -> list[int]:
    """The pids whose command line starts with ``prefix`` (Ray names its workers' processes so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").startswith(prefix):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_worker_killed_midway_is_replaced_and_its_shard_mined_again(mined, fleet, tmp_path):
    reference, _ = mined
    out = tmp_path / "out"
    driver = subprocess.Popen([*CLIPOMALY, "mine", str(fleet), "-o", str(out), *MINE_OPTIONS, "--window", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=NO_REPORTS)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and driver.poll() is None and time.monotonic() < deadline:
        committed = [p for p in (out / "shards").glob("*") if not p.name.startswith(".")]
        workers = processes_named("ray::MapWorker")
        if committed and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    output, _ = driver.communicate(timeout=600)
    if killed is None:
        pytest.skip("the run ended before a worker could be killed")
    assert driver.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"]["committed"] == PLANNED and summary["failed"] == []
    assert comparable(read_index(out)) == comparable(read_index(reference))


def test_a_cut_bag_keeps_its_rows_before_the_cut_and_an_unreadable_one_fails(fleet, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(fleet / "drive_a", broken / "drive_x")
    (recording,) = (broken / "drive_x").glob("*.mcap")
    recording.write_bytes(recording.read_bytes()[: recording.stat().st_size // 3])
    shutil.copytree(fleet / "drive_a", broken / "drive_y")
    (recording,) = (broken / "drive_y").glob("*.mcap")
    recording.write_bytes(b"not an mcap file at all")
    out = tmp_path / "out"
    completed = mine([fleet / "drive_b", broken], out, "--window", "2")
    assert completed.returncode == 1, completed.stderr[-3000:]  # drive_y failed: said in the exit status too
    summary = json.loads((out / "summary.json").read_text())
    (failure,) = summary["failed"]
    assert failure["path"].endswith("drive_y") and ("truncated" in failure["reason"] or "corrupt" in failure["reason"])
    (cut,) = summary["truncated"]  # drive_x: its file ends early; the frames before the cut were mined
    assert cut["bag"] == "drive_x" and "EndOfFile" in cut["reason"]
    (drive_x,) = [bag for bag in summary["per_bag"] if bag["bag"] == "drive_x"]
    assert 0 < drive_x["frames"] < 40
    assert {row["bag"] for row in read_index(out).to_pylist()} <= {"drive_b", "drive_x"}
    assert "FAILED drive_y" in completed.stdout and "TRUNCATED drive_x" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1].startswith("FAILED: drive_y (not read): 0 shard(s) not committed")


def test_inputs_are_bag_folders_their_files_or_folders_holding_bags(fleet, tmp_path):
    from clipomaly_ros.tools.mining.plan import find_bags, plan

    (mcap,) = (fleet / "drive_a").glob("*.mcap")
    (db3,) = (fleet / "drive_b").glob("*.db3")
    (tmp_path / "empty").mkdir()
    found, problems = find_bags([mcap, db3, fleet, tmp_path / "empty", tmp_path / "missing"])
    assert [p.name for p in found] == ["drive_a", "drive_b", "drive_c", "drive_d"]  # each once
    assert [Path(path).name for path, _ in problems] == ["empty", "missing"]
    plans, _ = plan([fleet], ["/rear/image_raw/compressed"], window_s=2.0)
    assert [(p.name, p.topics, len(p.shards)) for p in plans if not p.failure] == [
        ("drive_b", ("/rear/image_raw/compressed",), 2), ("drive_c", ("/rear/image_raw/compressed",), 2)]
    without = [p for p in plans if p.failure]
    assert [p.name for p in without] == ["drive_a", "drive_d"]
    assert "its image topics: /front/image_raw (sensor_msgs/msg/Image)" in without[0].failure
    again, _ = plan([fleet], ["/rear/image_raw/compressed"], window_s=2.0)
    assert [s.id for p in again for s in p.shards] == [s.id for p in plans for s in p.shards]  # deterministic


def test_a_track_across_a_shard_border_is_two_rows_marked_cut(fleet, tmp_path):
    out = tmp_path / "out"
    completed = mine([fleet / "drive_a"], out, "--window", "1", "--topics", "/front/image_raw")
    assert completed.returncode == 0, completed.stderr[-3000:]
    mattress = [r for r in comparable(read_index(out)) if r["name"] == "mattress"]
    # in view from frame 3 to 15: windows of 1 s cut it at frame 10
    assert [(r["cut_at_start"], r["cut_at_end"]) for r in mattress] == [(False, True), (True, False)]
    assert mattress[1]["first_stamp_ns"] - mattress[0]["last_stamp_ns"] == PERIOD_NS
    assert mattress[0]["shard"] != mattress[1]["shard"]


def test_the_report_opens_without_a_server_and_shows_every_track(mined, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the report is not rendered")
    out, _ = mined
    page = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="card"') == len(FLEET) + 1
    assert f"{len(FLEET) + 1} shown" in dom  # the page's script ran and counted the cards
    assert "m ahead" in dom  # the calibrated bag's distances
    screenshot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={screenshot}", page], capture_output=True, timeout=120)
    import cv2

    picture = cv2.imread(str(screenshot))
    assert picture is not None and picture.shape[:2] == (900, 1280)
    assert picture.std() > 20  # not blank
    # the thumbnails loaded: the toy scene's road colour (BGR 128, 64, 128) fills part of the gallery
    road = np.all(np.abs(picture.astype(int) - (128, 64, 128)) < 30, axis=2)
    assert road.mean() > 0.02
