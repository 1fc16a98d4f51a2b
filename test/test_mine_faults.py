"""`clipomaly mine` under faults: a shard that raises is retried, never committed in part, named when it fails for
good and mined by the next run; only a bag whose own bytes end early keeps the rows before its cut; the resume
guard holds every setting that changes a row; and the index holds every committed shard.

The workers' faults are injected where they happen in a real run: in the worker (:class:`ShardMiner`, here run
in this process for speed, or inside Ray's actors through ``mining_faults``)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="Ray Data not installed: pip install -e '.[mine]'")

import mining_faults  # noqa: E402
from clipomaly_ros.core.config import ClipomalyConfig  # noqa: E402
from clipomaly_ros.core.method.pipeline import Clipomaly  # noqa: E402
from clipomaly_ros.tools.cli import main  # noqa: E402
from clipomaly_ros.tools.mining import MineError, run_mine  # noqa: E402
from clipomaly_ros.tools.mining.plan import plan  # noqa: E402
from clipomaly_ros.tools.mining.shard import ShardFailed, ShardMiner, mine_shard  # noqa: E402
from clipomaly_ros.tools.mining.synthetic import write_fleet  # noqa: E402

TOY = dict(backend="toy", inference_size=240)
TOY_OPTIONS = ["--backend", "toy", "--inference-size", "240", "--workers", "2", "--no-progress", "--window", "2"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet") / "drives"
    write_fleet(folder)
    return folder


def shards_of(*bags: Path, window_s: float = 2.0):
    plans, problems = plan(list(bags), None, window_s)
    assert not problems and not any(p.failure for p in plans)
    return [shard for bag in plans for shard in bag.shards]


def batch(shards) -> dict:
    """Shards as Ray Data hands a batch to a worker: a column per field."""
    rows = [shard.as_dict() for shard in shards]
    return {key: [row[key] for row in rows] for key in rows[0]}


def worker(kind, out: Path, **options) -> ShardMiner:
    return kind(ClipomalyConfig(**TOY).as_dict(), str(out), backoff_s=0.0, **options)


@pytest.fixture(scope="module")
def clean(fleet, tmp_path_factory):
    """drive_a and drive_b mined once without a fault, in this process: the rows every faulty run must end with."""
    out = tmp_path_factory.mktemp("clean")
    answers = worker(ShardMiner, out)(batch(shards_of(fleet / "drive_a", fleet / "drive_b")))
    assert set(answers["outcome"]) == {"committed"}
    rows = mining_faults.rows_of(out)
    assert {row["bag"] for row in rows} == {"drive_a", "drive_b"}
    return rows


def test_a_pipeline_raising_once_is_retried_and_gives_the_clean_rows(fleet, clean, tmp_path):
    answers = worker(mining_faults.RaisingOnceAtFrame, tmp_path)(batch(shards_of(fleet / "drive_a",
                                                                                  fleet / "drive_b")))
    assert set(answers["outcome"]) == {"committed"} and sorted(answers["attempts"])[-1] == 2
    assert mining_faults.rows_of(tmp_path) == clean


def test_a_bug_fails_the_shard_with_its_name_and_commits_nothing(fleet, tmp_path):
    class Buggy(ShardMiner):
        def mine(self, shard):
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")

    answers = worker(Buggy, tmp_path, retries=1)(batch(shards_of(fleet / "drive_a")))
    assert answers["outcome"] == ["failed", "failed"] and answers["attempts"] == [2, 2]
    assert all(failure.startswith("TypeError: unsupported operand") for failure in answers["failure"])
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def test_a_bug_in_the_pipeline_is_not_taken_for_a_bad_frame(fleet):
    pipeline = Clipomaly(ClipomalyConfig(**TOY))
    pipeline.namer.name_regions = lambda *args, **kwargs: None.missing  # an AttributeError in our own code
    with pytest.raises(ShardFailed, match="AttributeError"):
        mine_shard(pipeline, shards_of(fleet / "drive_a")[0])


def test_an_io_error_midway_is_a_failed_attempt_not_a_truncated_bag(fleet, tmp_path, monkeypatch):
    from rosbags.highlevel import AnyReader

    original = AnyReader.messages

    def flaky(self, *args, **kwargs):
        for count, item in enumerate(original(self, *args, **kwargs)):
            if count == 5:
                raise OSError(errno.EIO, "Input/output error")
            yield item

    monkeypatch.setattr(AnyReader, "messages", flaky)
    shard = shards_of(fleet / "drive_a")[0]
    with pytest.raises(ShardFailed, match="OSError.*Input/output error"):
        mine_shard(Clipomaly(ClipomalyConfig(**TOY)), shard)
    answers = worker(ShardMiner, tmp_path, retries=1)(batch([shard]))
    assert answers["outcome"] == ["failed"] and "Input/output error" in answers["failure"][0]
    assert not (tmp_path / "shards" / shard.id).exists()


def test_an_io_error_while_committing_commits_nothing_and_the_retry_commits_whole(fleet, clean, tmp_path,
                                                                                monkeypatch):
    import pyarrow.parquet as pq

    original, calls = pq.write_table, []

    def disk_full_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", disk_full_once)
    shards = shards_of(fleet / "drive_a")
    answers = worker(ShardMiner, tmp_path)(batch(shards))
    assert answers["outcome"] == ["committed", "committed"] and answers["attempts"][0] == 2
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == sorted(s.id for s in shards)  # no leftovers
    assert mining_faults.rows_of(tmp_path) == [row for row in clean if row["bag"] == "drive_a"]


def cut_copy(fleet: Path, folder: Path, share: float) -> Path:
    """drive_a with its MCAP file cut to ``share`` of its bytes and no metadata.yaml, as a recorder killed
    mid-write leaves it."""
    shutil.copytree(fleet / "drive_a", folder)
    (folder / "metadata.yaml").unlink()
    (recording,) = folder.glob("*.mcap")
    data = recording.read_bytes()
    recording.write_bytes(data[: int(len(data) * share)])
    return folder


def test_a_truly_cut_bag_is_truncated_with_its_earlier_rows(fleet, clean, tmp_path):
    cut = cut_copy(fleet, tmp_path / "drive_a", 0.75)
    (shard,) = shards_of(cut, window_s=10.0)
    outcome = mine_shard(Clipomaly(ClipomalyConfig(**TOY)), shard)
    assert outcome.truncated and "EndOfFile" in outcome.truncated and "no metadata.yaml (recorder killed?)" in \
        outcome.truncated
    assert 10 < outcome.frames_processed < 40  # the frames before the cut, not the bag's 40
    # the mattress, in view from frame 3 to 15, lies before the cut: its row is there, as in the whole bag
    names = [row["name"] for row in outcome.rows]
    assert "mattress" in names
    answers = worker(ShardMiner, tmp_path / "out")(batch([shard]))
    assert answers["outcome"] == ["truncated"]
    record = json.loads((tmp_path / "out" / "shards" / shard.id / "shard.json").read_text())
    assert "EndOfFile" in record["truncated"]


def test_a_worker_whose_scan_of_a_cut_file_differs_from_planning_fails_the_attempt_and_rescans(fleet, tmp_path):
    import dataclasses

    from clipomaly_ros.ros import bags
    from clipomaly_ros.tools.mining.plan import survey_bag

    cut = cut_copy(fleet, tmp_path / "drive_a", 0.75)
    (shard,) = shards_of(cut, window_s=10.0)
    assert shard.cut_offset > 0
    (key,) = [key for key in bags._CUT_INDEXES if key[0] == str(next(cut.glob("*.mcap")).resolve())]
    good = bags._CUT_INDEXES[key]
    bad = dataclasses.replace(good, cut_offset=good.cut_offset - 100)  # a read that failed early, kept
    bags._CUT_INDEXES[key] = bad
    with pytest.raises(ShardFailed, match="planning read them up to byte"):
        mine_shard(Clipomaly(ClipomalyConfig(**TOY)), shard)
    assert key not in bags._CUT_INDEXES  # dropped: the next attempt scans the file again
    assert mine_shard(Clipomaly(ClipomalyConfig(**TOY)), shard).truncated
    bags._CUT_INDEXES[key] = bad  # planning's retry scans afresh too, not the kept bad scan
    assert survey_bag(cut, retries=1, backoff_s=0.0).cut_offset == good.cut_offset


def test_mining_places_anomalies_with_the_bags_own_tf_static(tmp_path):
    from test_planner_outputs import write_drive_bag

    drive = write_drive_bag(tmp_path / "with_tf")
    write_drive_bag(tmp_path / "without_tf", with_transforms=False)
    truth = {stamp: objects for stamp, _, objects in drive}
    pipeline = Clipomaly(ClipomalyConfig(**TOY))
    errors = {}
    for name in ("with_tf", "without_tf"):
        (shard,) = shards_of(tmp_path / name, window_s=60.0)
        rows = mine_shard(pipeline, shard).rows
        mattress = [row for row in rows if row["name"] == "mattress"]
        assert mattress and mattress[0]["distance_m"] is not None, rows
        x, y = truth[mattress[0]["best_stamp_ns"]]["mattress"]
        errors[name] = abs(mattress[0]["distance_m"] - np.hypot(x, y)) / np.hypot(x, y)
    # the camera_* parameters' mounting (1.5 m up at the origin, level) misplaces it; /tf_static's does not
    assert errors["with_tf"] < 0.05 < errors["without_tf"], errors


def test_the_resume_guard_names_every_changed_setting_and_force_new_starts_afresh(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"one")
    config = ClipomalyConfig(**TOY, checkpoint=str(weights))
    quiet = dict(log=lambda _: None, window_s=2.0, progress=False)
    run_mine([], tmp_path / "out", config, **quiet)
    run_mine([], tmp_path / "out", config.replace(device="cpu"), **quiet)  # where it runs changes no row
    with pytest.raises(MineError, match=r"\(cleanup_radius differ\).*--force-new"):
        run_mine([], tmp_path / "out", config.replace(cleanup_radius=7), **quiet)
    weights.write_bytes(b"two")  # other weights at the same path
    with pytest.raises(MineError, match=r"\(checkpoint differ\)"):
        run_mine([], tmp_path / "out", config, **quiet)
    moved = tmp_path / "moved.pt"
    weights.rename(moved)
    moved.write_bytes(b"one")  # the first weights, moved: the same rows
    run_mine([], tmp_path / "out", config.replace(checkpoint=str(moved)), **quiet)
    (tmp_path / "out" / "shards" / "0123456789abcdef").mkdir(parents=True)
    (tmp_path / "out" / "keep.txt").write_text("the user's")
    said = []
    run_mine([], tmp_path / "out", config.replace(cleanup_radius=7, checkpoint=str(moved)), force_new=True,
             log=said.append, window_s=2.0, progress=False)
    assert not (tmp_path / "out" / "shards").exists() and (tmp_path / "out" / "keep.txt").exists()
    assert any("--force-new: removed" in line for line in said)
    with pytest.raises(MineError, match="no-such.pt"):
        run_mine([], tmp_path / "other", config.replace(checkpoint=str(tmp_path / "no-such.pt")), **quiet)


def test_the_index_holds_every_committed_shard_when_fewer_bags_are_given(fleet, clean, tmp_path):
    config = ClipomalyConfig(**TOY)
    run_mine([], tmp_path, config, window_s=2.0, progress=False, log=lambda _: None)  # the run's settings
    worker(ShardMiner, tmp_path)(batch(shards_of(fleet / "drive_a", fleet / "drive_b")))
    said = []
    result = run_mine([fleet / "drive_a"], tmp_path, config, window_s=2.0, progress=False, log=said.append)
    assert result.exit_code == 0 and result.mined == 0  # nothing to mine: no Ray started
    from clipomaly_ros.tools.mining.report import read_index

    index = sorted(read_index(tmp_path).to_pylist(), key=lambda r: (r["bag"], r["topic"], r["first_stamp_ns"],
                                                                   r["track"]))
    assert index == clean
    assert any("kept 2 committed shard(s) of earlier runs" in line and "drive_b" in line for line in said)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(b["bag"], b.get("earlier_run", False)) for b in summary["per_bag"]] == [("drive_a", False),
                                                                                    ("drive_b", True)]
    assert "drive_b" in (tmp_path / "report.html").read_text()


def test_a_bag_that_always_fails_exits_1_named_and_the_rerun_completes_it(fleet, clean, tmp_path, monkeypatch,
                                                                          capsys):
    import clipomaly_ros.tools.mining.driver as driver

    mining_faults.ship_to_ray()
    monkeypatch.setattr(driver, "ShardMiner", mining_faults.FailingBag)
    inputs = [str(fleet / "drive_a"), str(fleet / "drive_b")]
    assert main(["mine", *inputs, "-o", str(tmp_path), *TOY_OPTIONS, "--retries", "1"]) == 1
    printed = capsys.readouterr().out.strip().splitlines()
    failing = [s.id for s in shards_of(fleet / "drive_b")]
    assert printed[-1].startswith("FAILED: drive_b (shards ") and "2 shard(s) not committed" in printed[-1]
    assert all(shard in printed[-1] for shard in failing)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(f["shard"] for f in summary["failed"]) == sorted(failing)
    assert all("injected" in f["reason"] and "2 attempt(s)" in f["reason"] for f in summary["failed"])
    assert {row["bag"] for row in mining_faults.rows_of(tmp_path)} == {"drive_a"}  # none of the failed bag
    monkeypatch.setattr(driver, "ShardMiner", ShardMiner)
    assert main(["mine", *inputs, "-o", str(tmp_path), *TOY_OPTIONS]) == 0
    assert "2 already committed, 2 to mine" in capsys.readouterr().err  # the failed shards, and only those
    rows = mining_faults.rows_of(tmp_path)
    assert rows == clean  # complete, and no row twice


def test_ray_that_cannot_start_exits_2(fleet, tmp_path, monkeypatch, capsys):
    import ray

    def refuse(*args, **kwargs):
        raise ConnectionError("could not connect to the GCS at 10.0.0.9:6379")

    monkeypatch.setattr(ray, "init", refuse)
    assert main(["mine", str(fleet / "drive_a"), "-o", str(tmp_path), *TOY_OPTIONS]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("clipomaly: error: Ray could not start: ConnectionError") and "Traceback" not in \
        "\n".join(error)


def test_a_checkpoint_no_worker_can_load_exits_2_in_one_line(fleet, tmp_path, capsys):
    from conftest import register_tiny_model

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a checkpoint")
    options = [o for o in TOY_OPTIONS if o not in ("toy",)]
    options[options.index("--backend") + 1:options.index("--backend") + 1] = ["open_clip"]
    code = main(["mine", str(fleet / "drive_a"), "-o", str(tmp_path / "out"), *options, "--model",
                 register_tiny_model(), "--checkpoint", str(broken)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2, error
    (line,) = [line for line in error if line.startswith("clipomaly: error:")]
    assert "no worker could load the model" in line and "broken.pt" in line and "Traceback" not in "\n".join(error)


def test_a_failed_rename_into_place_is_an_error_not_a_commit_by_another(fleet, tmp_path, monkeypatch):
    import os

    from clipomaly_ros.tools.mining.shard import ShardOutcome, commit

    shard = shards_of(fleet / "drive_a")[0]

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "rename", eio)
    with pytest.raises(OSError, match="Input/output error"):
        commit(tmp_path, shard, ShardOutcome())
    assert not (tmp_path / "shards" / shard.id).exists() and not list((tmp_path / "shards").iterdir())


def test_the_cut_reader_decompresses_a_window_group_by_group(fleet, tmp_path, monkeypatch):
    from clipomaly_ros.ros.bags import CutMcapReader, open_bag

    cut = cut_copy(fleet, tmp_path / "drive_a", 0.75)
    read = []
    original = CutMcapReader._group_messages

    def counted(stream, group, *args):
        read.append(group.begin)
        return original(stream, group, *args)

    monkeypatch.setattr(CutMcapReader, "_group_messages", staticmethod(counted))
    with open_bag(cut) as reader:
        assert isinstance(reader, CutMcapReader) and len(reader.index.groups) > 2
        next(iter(reader.messages()))
    assert len(read) == 1  # the first group only, not the whole window at once


def test_two_committed_versions_of_a_bag_not_planned_now_keep_only_the_newest(fleet):
    from clipomaly_ros.tools.mining.outputs import superseded_shards

    def record(bag_id, stop_ns):
        return {"shard": {"bag_name": "drive_b", "lineage": "L", "bag_id": bag_id, "stop_ns": stop_ns}}

    records = {"old": record("a", 10), "new": record("b", 20), "other": {"shard": {
        "bag_name": "drive_c", "lineage": "M", "bag_id": "c", "stop_ns": 5}}}
    assert superseded_shards(records, []) == {"old": "drive_b"}
