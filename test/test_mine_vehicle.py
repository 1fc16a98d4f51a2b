"""`clipomaly mine` on drives as a vehicle records them (an image beside its camera_info every frame, /tf at the
frame rate, /tf_static once): a bag cut mid-write, an archive moved or grown, a worker the kernel kills, two runs
into one OUT_DIR, I/O errors while planning, a full disk, and files that changed under the resume fingerprint.

One Ray instance serves the module (Ray starts slowly on a small machine); runs join it, with one worker each."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.data", reason="Ray Data not installed: pip install -e '.[mine]'")

import mining_faults  # noqa: E402
from clipomaly_ros.core.config import ClipomalyConfig  # noqa: E402
from clipomaly_ros.tools.cli import main  # noqa: E402
from clipomaly_ros.tools.mining import MineError, failure_line, run_mine  # noqa: E402
from clipomaly_ros.tools.mining.plan import plan  # noqa: E402
from clipomaly_ros.tools.mining.shard import ShardMiner  # noqa: E402
from clipomaly_ros.tools.mining.synthetic import FLEET, write_vehicle_bag  # noqa: E402

TOY = dict(backend="toy", inference_size=240)
QUIET = dict(log=lambda _: None, window_s=2.0, progress=False, workers=1)
DRIVE_A = [a for a in FLEET if a.bag == "drive_a"]  # a mattress at frames 3-15, a deer at 24-36


@pytest.fixture(scope="module")
def ray_started():
    import ray

    mining_faults.ship_to_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def vehicle(tmp_path_factory) -> Path:
    """An archive of two vehicle bags of 40 frames each: drive_a (mcap) and drive_b (sqlite3)."""
    archive = tmp_path_factory.mktemp("vehicle") / "archive"
    write_vehicle_bag(archive / "drive_a", appearances=DRIVE_A)
    write_vehicle_bag(archive / "drive_b", appearances=DRIVE_A[:1], storage="sqlite3")
    return archive


def rows(out: Path) -> list[dict]:
    from clipomaly_ros.tools.mining.report import read_index

    return sorted(read_index(out).to_pylist(), key=lambda r: (r["bag"], r["topic"], r["first_stamp_ns"]))


def batch(shards) -> dict:
    """Shards as Ray Data hands a batch to a worker: a column per field."""
    listed = [shard.as_dict() for shard in shards]
    return {key: [row[key] for row in listed] for key in listed[0]}


def shards_of(*bags, window_s: float = 2.0):
    plans, problems = plan(list(bags), None, window_s)
    assert not problems and not any(p.failure for p in plans), plans
    return [shard for bag in plans for shard in bag.shards]


def cut_copy(bag: Path, folder: Path, share: float = 0.8) -> Path:
    """``bag`` copied to ``folder`` with its MCAP file cut to ``share`` of its bytes, as a recorder killed
    mid-write leaves it: without metadata.yaml."""
    shutil.copytree(bag, folder)
    (folder / "metadata.yaml").unlink()
    (recording,) = folder.glob("*.mcap")
    recording.write_bytes(recording.read_bytes()[: int(recording.stat().st_size * share)])
    return folder


def test_a_cut_vehicle_bag_keeps_its_rows_before_the_cut_marked_truncated(vehicle, ray_started, tmp_path):
    cut = cut_copy(vehicle / "drive_a", tmp_path / "cut" / "drive_a")
    result = run_mine([cut], tmp_path / "out", ClipomalyConfig(**TOY), **QUIET)
    assert result.exit_code == 0, result.table
    summary = result.summary
    (truncated,) = summary["truncated"]
    assert truncated["bag"] == "drive_a" and "ends early" in truncated["reason"]
    assert "no metadata.yaml (recorder killed?)" in truncated["reason"]
    (bag,) = summary["per_bag"]
    assert bag["shards_committed"] == bag["shards"] == 2 and 25 < bag["frames"] < 40
    mattress = [row for row in rows(tmp_path / "out") if row["name"] == "mattress"]
    assert mattress and mattress[0]["distance_m"] is not None  # its camera_info and /tf_static were read


def test_a_moved_archive_mines_nothing_again_and_a_grown_bag_replaces_its_rows(vehicle, ray_started, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(vehicle, archive)
    out = tmp_path / "out"
    config = ClipomalyConfig(**TOY)
    first = run_mine([archive], out, config, **QUIET)
    assert first.exit_code == 0 and first.mined == 4
    before = rows(out)
    assert {row["source_path"] for row in before} == {str(archive / "drive_a"), str(archive / "drive_b")}
    moved = tmp_path / "remounted" / "archive"
    moved.parent.mkdir()
    archive.rename(moved)
    said = []
    again = run_mine([moved], out, config, **(QUIET | {"log": said.append}))
    assert again.exit_code == 0 and again.mined == 0 and any("4 already committed, 0 to mine" in s for s in said)
    assert rows(out) == before
    # drive_a recovered with more frames: its start and first bytes are the same, its end moved
    shutil.rmtree(moved / "drive_a")
    write_vehicle_bag(moved / "drive_a", frames=50, appearances=DRIVE_A)
    grown = run_mine([moved], out, config, **QUIET)
    assert grown.exit_code == 0 and grown.mined == 3
    after = rows(out)
    assert [row["name"] for row in after if row["bag"] == "drive_a"] == ["mattress", "deer"]  # not doubled
    assert len({row["bag_id"] for row in after if row["bag"] == "drive_a"}) == 1
    partitions = sorted(p.relative_to(out / "anomalies.parquet").parent.as_posix()
                        for p in (out / "anomalies.parquet").rglob("*.parquet"))
    assert len(partitions) == 2 and all(p.startswith("bag=drive_") and "/bag_id=" in p for p in partitions)


def test_a_worker_that_dies_on_the_first_bag_fails_it_by_name_and_commits_the_others(vehicle, ray_started,
                                                                                   tmp_path):
    # drive_a's shards are handed out first: its killed workers must not use up the restarts drive_b's need
    started = time.monotonic()
    result = run_mine([vehicle], tmp_path / "out", ClipomalyConfig(**TOY), **(QUIET | {"retries": 1}),
                      miner=mining_faults.ExitingOnFirstBag)
    assert time.monotonic() - started < 600  # bounded: never a hang (tens of seconds here)
    assert result.exit_code == 1
    last = failure_line(result.summary)
    assert last.startswith("FAILED: drive_a (shards ") and "drive_b" not in last
    assert all("no worker answered" in f["reason"] for f in result.summary["failed"])
    assert {row["bag"] for row in rows(tmp_path / "out")} == {"drive_b"}


def holder_said(lock: Path) -> bool:
    """Whether the run holding OUT_DIR has written who it is into its lock file."""
    try:
        return bool(lock.read_text())
    except FileNotFoundError:
        return False


def test_a_second_run_into_a_held_out_dir_refuses_at_once_naming_the_holder(vehicle, ray_started, tmp_path, capsys):
    import os

    out = tmp_path / "out"
    holder = threading.Thread(target=run_mine, args=([vehicle / "drive_a"], out, ClipomalyConfig(**TOY)),
                              kwargs=QUIET)
    holder.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not holder_said(out / ".mine.lock"):
            time.sleep(0.01)
        # other settings too: the lock is taken before the settings are compared
        code = main(["mine", str(vehicle / "drive_a"), "-o", str(out), "--backend", "toy", "--window", "1",
                     "--no-progress"])
    finally:
        holder.join(timeout=600)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "is being mined by another run" in error and f"pid {os.getpid()}" in error
    assert json.loads((out / "summary.json").read_text())["shards"]["committed"] == 2  # the holder finished


def eio_on_first_call(function, calls: list):
    """``function`` that raises EIO on its first call (counted in ``calls``), as a flaky mount does."""
    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return function(*args, **kwargs)

    return flaky


def test_an_io_error_while_planning_is_retried_and_the_bag_not_shortened(vehicle, tmp_path, monkeypatch):
    from rosbags.highlevel import AnyReader

    from clipomaly_ros.ros import bags

    clean, opened = shards_of(vehicle / "drive_a"), []
    monkeypatch.setattr(AnyReader, "open", eio_on_first_call(AnyReader.open, opened))
    plans, _ = plan([vehicle / "drive_a"], None, 2.0, backoff_s=0.0)
    assert not plans[0].failure and list(plans[0].shards) == clean and len(opened) == 2
    # a cut file whose first scan meets EIO: the cut is where the later, whole scans find it
    cut = cut_copy(vehicle / "drive_a", tmp_path / "drive_a")
    whole, scans = shards_of(cut), []
    bags._CUT_INDEXES.clear()
    monkeypatch.setattr(bags, "index_cut_mcap", eio_on_first_call(bags.index_cut_mcap, scans))
    plans, _ = plan([cut], None, 2.0, backoff_s=0.0)
    assert not plans[0].failure and list(plans[0].shards) == whole and len(scans) == 2


def test_a_full_disk_while_writing_the_index_exits_1_named(vehicle, tmp_path, monkeypatch, capsys):
    import pyarrow.dataset as ds

    ShardMiner(ClipomalyConfig(**TOY).as_dict(), str(tmp_path), backoff_s=0.0)(batch(shards_of(vehicle / "drive_a")))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ds, "write_dataset", disk_full)
    (tmp_path / "summary.json").write_text('{"failed": []}')  # an earlier run's
    code = main(["mine", str(vehicle / "drive_a"), "-o", str(tmp_path), "--backend", "toy", "--inference-size",
                 "240", "--window", "2", "--no-progress"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 1 and "anomalies.parquet" in last and "No space left on device" in last
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"][0]["kind"] == "output"  # this run's summary, saying so
    assert not list(tmp_path.glob(".anomalies.parquet.*"))  # no staging left behind


def test_a_damaged_commit_is_set_aside_and_mined_again(vehicle, tmp_path):
    from clipomaly_ros.tools.mining.outputs import repaired_commits

    shards = shards_of(vehicle / "drive_a")
    ShardMiner(ClipomalyConfig(**TOY).as_dict(), str(tmp_path), backoff_s=0.0)(batch(shards))
    (tmp_path / "shards" / shards[1].id / "rows.parquet").write_bytes(b"")  # a write the disk lost
    said = []
    assert list(repaired_commits(tmp_path, "run", said.append)) == [shards[0].id]
    assert "is damaged" in said[0] and (tmp_path / "shards" / f".damaged-{shards[1].id}-run").is_dir()


def test_tagger_weights_changed_in_content_are_refused_by_the_run_and_by_a_worker(tmp_path):
    weights = tmp_path / "ram_plus.pth"
    weights.write_bytes(b"one")
    config = ClipomalyConfig(**TOY, tagger_weights=str(weights))
    run_mine([], tmp_path / "out", config, **QUIET)
    fingerprint = json.loads((tmp_path / "out" / "run.json").read_text())["fingerprint"]
    assert fingerprint["precision"] == "fp32" and fingerprint["package_version"]
    weights.write_bytes(b"two")  # other weights at the same path
    with pytest.raises(MineError, match=r"\(tagger_weights differ\)"):
        run_mine([], tmp_path / "out", config, **QUIET)
    worker = ShardMiner(config.as_dict(), str(tmp_path / "out"), fingerprint=fingerprint)
    assert worker.pipeline is None and "tagger_weights" in worker.load_error


def test_a_topic_whose_every_frame_is_skipped_is_a_named_failure(vehicle):
    from clipomaly_ros.tools.mining.outputs import undecodable_topics

    (bag,) = plan([vehicle / "drive_a"], None, 2.0)[0]
    records = {s.id: {"frames_skipped": 20, "frames_processed": 0, "skipped_reasons": ["unsupported encoding"]}
               for s in bag.shards}
    (failure,) = undecodable_topics([bag], records)
    assert failure["bag"] == "drive_a" and "all 40 frames of /front/image_raw skipped" in failure["reason"]
    assert "undecodable" in failure_line({"failed": [failure]})
    assert "Run the same command again" not in failure_line({"failed": [failure]})  # it would fail alike
    records[bag.shards[0].id]["frames_processed"] = 1
    assert undecodable_topics([bag], records) == []


def test_damage_met_once_is_read_again_and_counts_only_where_it_is_met_twice(vehicle, tmp_path):
    import sqlite3

    from clipomaly_ros.tools.mining.shard import ShardOutcome, truncation

    class DamagedOnce(ShardMiner):
        """The first read meets a checksum mismatch (a flaky disk); later reads as ``damage`` says."""

        damage: list = ["Chunk checksum mismatch. (after 12 messages)", None]

        def mine(self, shard):
            reads = getattr(self, "reads", 0)
            self.reads = reads + 1
            return ShardOutcome(frames_read=20, frames_processed=20, truncated=self.damage[min(reads, 1)])

    (shard,) = shards_of(vehicle / "drive_a", window_s=10.0)
    answers = DamagedOnce(ClipomalyConfig(**TOY).as_dict(), str(tmp_path / "a"), backoff_s=0.0)(batch([shard]))
    assert answers["outcome"] == ["committed"] and answers["attempts"] == [2]  # the disk, not the bag
    DamagedOnce.damage = ["Chunk checksum mismatch. (after 12 messages)"] * 2
    answers = DamagedOnce(ClipomalyConfig(**TOY).as_dict(), str(tmp_path / "b"), backoff_s=0.0)(batch([shard]))
    assert answers["outcome"] == ["truncated"] and answers["attempts"] == [2]  # met twice at one place: damage
    assert not truncation(sqlite3.OperationalError("disk I/O error"))  # tried again, never damage


def test_a_local_dir_model_is_fingerprinted_by_its_weight_files(tmp_path):
    from clipomaly_ros.core.fingerprint import model_fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(b"one")
    (folder / "README.md").write_text("not a weight file")
    before = model_fingerprint(f"local-dir:{folder}")
    (folder / "README.md").write_text("edited")
    assert model_fingerprint(f"local-dir:{folder}") == before
    (folder / "open_clip_model.safetensors").write_bytes(b"two")
    assert model_fingerprint(f"local-dir:{folder}") != before
    assert model_fingerprint("ViT-B-16") == "ViT-B-16"


def test_a_damaged_chunk_holding_tf_static_costs_only_its_own_window(vehicle, tmp_path):
    from clipomaly_ros.core.method.pipeline import Clipomaly
    from clipomaly_ros.tools.mining.shard import mine_shard
    from mcap.reader import make_reader

    damaged = tmp_path / "drive_a"
    shutil.copytree(vehicle / "drive_a", damaged)
    (recording,) = damaged.glob("*.mcap")
    with recording.open("rb") as stream:
        first = make_reader(stream).get_summary().chunk_indexes[0]  # /tf_static and the first 0.4 s of frames
    data = bytearray(recording.read_bytes())
    crc_at = first.chunk_start_offset + 1 + 8 + 3 * 8  # after its opcode, length, start, end, uncompressed size
    data[crc_at:crc_at + 4] = b"\x12\x34\x56\x78"  # a chunk checksum mismatch: its bytes were damaged
    recording.write_bytes(bytes(data))
    pipeline = Clipomaly(ClipomalyConfig(**TOY))
    head, tail = [mine_shard(pipeline, shard) for shard in shards_of(damaged)]
    assert "Chunk checksum mismatch" in head.truncated  # the damage lies in its own window
    assert tail.truncated is None and tail.frames_processed == 20, tail.skipped_reasons
    assert [row["name"] for row in tail.rows] == ["deer"]
    said = "\n".join(tail.skipped_reasons)
    assert "left out the recorded /tf_static" in said and "left out the look-back" in said


def test_a_report_that_cannot_be_written_is_named_in_the_summary_written_after_it(tmp_path, monkeypatch):
    import clipomaly_ros.tools.mining.outputs as outputs

    original = outputs.write_staged

    def report_disk_full(path, text, run_id):
        if path.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, text, run_id)

    monkeypatch.setattr(outputs, "write_staged", report_disk_full)
    result = run_mine([], tmp_path, ClipomalyConfig(**TOY), **QUIET)
    assert result.exit_code == 1
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert [failure["path"] for failure in on_disk["failed"]] == [str(tmp_path / "report.html")]


def test_a_full_disk_while_writing_the_summary_exits_1_named_and_leaves_no_earlier_summary(vehicle, tmp_path,
                                                                                          monkeypatch, capsys):
    original = os.fsync

    def summary_disk_full(descriptor):  # the disk fills while summary.json's staging file is flushed
        if os.readlink(f"/proc/self/fd/{descriptor}").rsplit("/", 1)[-1].startswith(".summary.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(descriptor)

    (tmp_path / "summary.json").write_text('{"failed": [], "frames": 12345}')  # an earlier run's, looking complete
    monkeypatch.setattr(os, "fsync", summary_disk_full)
    code = main(["mine", str(vehicle / "drive_a"), "-o", str(tmp_path), "--backend", "toy", "--inference-size",
                 "240", "--window", "2", "--no-progress"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 1 and "summary.json" in last and "No space left on device" in last
    assert not (tmp_path / "summary.json").exists()  # the earlier run's is gone, not left looking like this one's
    assert not list(tmp_path.glob(".summary.json.*"))  # the staging file the failure met is removed
    assert (tmp_path / "anomalies.parquet").exists() and (tmp_path / "report.html").exists()  # the rest was written


def test_a_torn_run_file_is_named_and_set_aside(tmp_path):
    (tmp_path / "run.json").write_text('{"fingerprint": {"backe')  # a run killed while writing it
    said = []
    result = run_mine([], tmp_path, ClipomalyConfig(**TOY), **(QUIET | {"log": said.append}))
    assert result.exit_code == 0
    assert any("run.json" in line and "cannot be read" in line for line in said), said
    assert json.loads((tmp_path / "run.json").read_text())["fingerprint"]["backend"] == "toy"


def test_a_grown_db3_bag_keeps_its_lineage_and_gets_another_id(tmp_path):
    (short,), _ = plan([write_vehicle_bag(tmp_path / "short" / "drive_b", frames=10, storage="sqlite3")], None, 2.0)
    (grown,), _ = plan([write_vehicle_bag(tmp_path / "grown" / "drive_b", frames=14, storage="sqlite3")], None, 2.0)
    # SQLite rewrites its header and b-tree pages at the file's start as rows are added: no lineage of bytes
    assert grown.lineage == short.lineage and grown.bag_id != short.bag_id


def test_an_io_error_that_rosbags_wraps_while_opening_is_retried_not_called_damage(vehicle, monkeypatch):
    original, calls = Path.read_text, []

    def eio_once(self, *args, **kwargs):
        if self.name == "metadata.yaml" and not calls:
            calls.append(self)
            raise OSError(errno.EIO, "Input/output error")  # rosbags turns it into "Could not read metadata"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", eio_once)
    (bag,), _ = plan([vehicle / "drive_b"], None, 2.0, backoff_s=0.0)
    assert calls and not bag.failure and len(bag.shards) == 2


def test_an_hf_hub_model_not_in_the_cache_is_refused_with_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = ClipomalyConfig(**(TOY | {"backend": "open_clip"}), model="hf-hub:nobody/no-model")
    with pytest.raises(MineError, match="not in the local Hugging Face cache.*download"):
        run_mine([], tmp_path / "out", config, **QUIET)
