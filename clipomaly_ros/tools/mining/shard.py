"""Mining one shard: its frames through the pipeline with tracking, in stamp order; one row per confirmed track;
its results committed to the output folder in one atomic rename.

Plain Python (no Ray): :class:`ShardMiner` is what a Ray actor holds, one model per worker.

Tracks do not cross shard borders: each shard tracks on its own, and a track that was already in view at its
window's first frame, or still in view at its last, is marked ``cut_at_start`` / ``cut_at_end`` (never at the
bag's own beginning or end). One object crossing a border is therefore two rows, each marked.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...core.config import ClipomalyConfig
from ...core.planning import AnomalyFollower
from ...core.results import AnomalyRecord
from ...ros.bags import BagError, camera_info_connections, open_bag, transform_connections
from ...ros.messages import DECODERS, UNDECODABLE, stamp_ns
from ...ros.transforms import MountingFinder, recorded_static_transforms
from .plan import Shard

SHARDS_FOLDER = "shards"
THUMBNAIL_SIDE = 256
"""Longest side of a thumbnail, in pixels."""


@dataclass
class TrackSummary:
    """One track within a shard, gathered frame by frame."""

    track_id: int
    first_ns: int
    last_ns: int = 0
    frames: int = 0
    scores: list[float] = field(default_factory=list)
    confirmed: bool = False
    name: str = ""
    best_score: float = -1.0
    best_ns: int = 0
    best: AnomalyRecord | None = None
    thumbnail: bytes = b""
    seen_first_frame: bool = False
    seen_last_frame: bool = False


@dataclass
class ShardOutcome:
    """What mining a shard gave: the rows, the frames read, processed, skipped (bad images, with reasons) and
    thinned out (``--rate``), the seconds it took, and the failure that ended it early (a truncated bag), if any."""

    rows: list[dict] = field(default_factory=list)
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    frames_read: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    frames_thinned: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: str | None = None


def thumbnail(image: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray) -> bytes:
    """A JPEG of the region around ``box`` ((y0, y1, x0, x1), half-open, with its bool ``mask``): the box and as
    much again around it, with the anomaly's outline drawn, at most :data:`THUMBNAIL_SIDE` pixels on its long side."""
    y0, y1, x0, x1 = box
    height, width = image.shape[:2]
    margin_y, margin_x = max(8, (y1 - y0) // 2), max(8, (x1 - x0) // 2)
    top, bottom = max(0, y0 - margin_y), min(height, y1 + margin_y)
    left, right = max(0, x0 - margin_x), min(width, x1 + margin_x)
    crop = cv2.cvtColor(np.ascontiguousarray(image[top:bottom, left:right]), cv2.COLOR_RGB2BGR)
    outline = np.zeros(crop.shape[:2], dtype=np.uint8)
    outline[y0 - top:y1 - top, x0 - left:x1 - left] = mask.astype(np.uint8)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(crop, contours, -1, (0, 255, 255), 2)
    scale = THUMBNAIL_SIDE / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()


def mine_shard(pipeline, shard: Shard, rate_hz: float | None = None) -> ShardOutcome:
    """Run ``pipeline`` over the shard's frames in stamp order (at most ``rate_hz`` a second of recorded time when
    given) with tracking and, where the bag holds them, its camera_info and transforms; rows for its confirmed
    tracks. A bag that breaks midway ends the shard with :attr:`ShardOutcome.failure` and keeps what was mined."""
    started = time.perf_counter()
    outcome = ShardOutcome()
    tracks: dict[int, TrackSummary] = {}
    config = pipeline.config
    last_processed: int | None = None
    last_frame_ids: set[int] = set()
    first_frame = True
    try:
        with open_bag(shard.bag) as reader:
            images = [c for c in reader.connections if c.topic == shard.topic]
            infos, info_topic = camera_info_connections(reader, shard.topic)
            follower = AnomalyFollower(pipeline.name_embeddings, info_topic)
            finder = MountingFinder(recorded_static_transforms(reader, transform_connections(reader)[0]),
                                    "the bag's /tf_static")
            if infos:  # the calibration in force at the window's start: the newest camera_info before it
                before = list(reader.messages(connections=infos, stop=shard.start_ns))
                if before:
                    follower.set_camera_info(reader.deserialize(before[-1][2], before[-1][0].msgtype))
            for connection, _, raw in reader.messages(connections=images + infos, start=shard.start_ns,
                                                      stop=shard.stop_ns):
                if connection in infos:
                    follower.set_camera_info(reader.deserialize(raw, connection.msgtype))
                    continue
                outcome.frames_read += 1
                try:
                    message = reader.deserialize(raw, connection.msgtype)
                    stamp = stamp_ns(message.header)
                    if rate_hz and last_processed is not None and stamp - last_processed < 1e9 / rate_hz - 1e3:
                        outcome.frames_thinned += 1  # --rate: not decoded at all
                        continue
                    image = DECODERS[connection.msgtype](message)
                except UNDECODABLE as error:
                    outcome.frames_skipped += 1
                    outcome.skipped_reasons.append(f"{shard.topic} frame {outcome.frames_read}: {error}")
                    continue
                last_processed = stamp
                result = pipeline(image)
                frame_config, _ = finder.find(message.header.frame_id, config)
                frame = follower.update(result, stamp, frame_config)
                outcome.frames_processed += 1
                last_frame_ids = _gather(tracks, frame.records, result, image, stamp, first_frame)
                first_frame = False
    except BagError as error:
        outcome.failure = str(error)
    except Exception as error:  # noqa: BLE001 - rosbags raises many types for damaged files
        outcome.failure = (f"{shard.bag}: reading {shard.topic} failed after {outcome.frames_read} frames "
                           f"({type(error).__name__}: {error}); the bag is truncated or corrupt")
    for track_id in last_frame_ids:
        tracks[track_id].seen_last_frame = True
    for summary in sorted(tracks.values(), key=lambda t: t.track_id):
        if summary.confirmed:
            key = f"{shard.id}-{summary.track_id}"
            outcome.rows.append(_row(shard, summary, key))
            outcome.thumbnails[key] = summary.thumbnail
    outcome.seconds = time.perf_counter() - started
    return outcome


def _gather(tracks: dict[int, TrackSummary], records: list[AnomalyRecord], result, image, stamp: int,
            first_frame: bool) -> set[int]:
    """Add one frame's tracked records to ``tracks``; the track ids seen in it."""
    seen = set()
    for record in records:
        if record.track_id is None:
            continue
        summary = tracks.setdefault(record.track_id, TrackSummary(record.track_id, first_ns=stamp,
                                                                  seen_first_frame=first_frame))
        seen.add(record.track_id)
        summary.last_ns = stamp
        summary.frames += 1
        summary.scores.append(float(record.score))
        summary.confirmed = summary.confirmed or bool(record.confirmed)
        summary.name = record.track_name or record.name
        if record.score > summary.best_score:
            summary.best_score, summary.best_ns, summary.best = float(record.score), stamp, record
            summary.thumbnail = thumbnail(image, *result.instance_mask(record.id))
    return seen


def _row(shard: Shard, track: TrackSummary, key: str) -> dict:
    best = track.best
    ground = best.ground
    return {
        "bag": shard.bag_name, "topic": shard.topic, "shard": shard.id, "track": track.track_id,
        "first_stamp_ns": track.first_ns, "last_stamp_ns": track.last_ns, "best_stamp_ns": track.best_ns,
        "frames": track.frames, "name": track.name,
        "candidates": [{"name": name, "score": float(score)} for name, score in best.candidates],
        "peak_score": float(max(track.scores)), "mean_score": float(np.mean(track.scores)),
        "box": [int(v) for v in best.bbox], "on_road": best.on_road,
        "distance_m": None if ground is None else float(ground.distance),
        "lateral_m": None if ground is None else float(ground.y),
        "cut_at_start": track.seen_first_frame and not shard.first,
        "cut_at_end": track.seen_last_frame and not shard.last,
        "thumbnail": f"thumbnails/{key}.jpg",
    }


def commit(out_dir: Path, shard: Shard, outcome: ShardOutcome) -> bool:
    """Write the shard's rows (``rows.parquet``), thumbnails and ``shard.json`` into a private folder, then rename it
    to ``OUT_DIR/shards/<id>`` in one step: a shard is committed whole or not at all. False when another run
    committed it first (its results stand)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .report import ROW_SCHEMA

    folder = Path(out_dir) / SHARDS_FOLDER
    final = folder / shard.id
    if final.exists():
        return False
    work = folder / f".work-{shard.id}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "thumbnails").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(outcome.rows, schema=ROW_SCHEMA), work / "rows.parquet")
    for key, data in outcome.thumbnails.items():
        (work / "thumbnails" / f"{key}.jpg").write_bytes(data)
    record = {"shard": shard.as_dict(), "frames_read": outcome.frames_read,
              "frames_processed": outcome.frames_processed, "frames_skipped": outcome.frames_skipped,
              "frames_thinned": outcome.frames_thinned, "skipped_reasons": outcome.skipped_reasons[:20],
              "seconds": round(outcome.seconds, 3),
              "failure": outcome.failure, "rows": len(outcome.rows)}
    (work / "shard.json").write_text(json.dumps(record, indent=1))
    try:
        os.rename(work, final)
    except OSError:  # committed meanwhile by a worker of an earlier, interrupted run
        shutil.rmtree(work, ignore_errors=True)
        return False
    return True


class ShardMiner:
    """One worker: a pipeline built once from ``config`` (a :meth:`ClipomalyConfig.as_dict`), then shard after
    shard mined and committed into ``out_dir``. Called by Ray Data with a batch of shard dicts; returns one small
    row per shard for the driver's progress."""

    def __init__(self, config: dict, out_dir: str, rate_hz: float | None = None, threads: int = 0):
        import torch

        from ...core.pipeline import Clipomaly

        if threads:
            torch.set_num_threads(threads)
        self.pipeline = Clipomaly(ClipomalyConfig(**config))
        self.out_dir = Path(out_dir)
        self.rate_hz = rate_hz

    def __call__(self, batch: dict) -> dict:
        answers: dict[str, list] = {"id": [], "frames": [], "rows": [], "committed": [], "failure": [],
                                    "seconds": []}
        for values in _batch_rows(batch):
            shard = Shard.from_dict(values)
            try:
                outcome = mine_shard(self.pipeline, shard, self.rate_hz)
            except Exception as error:  # noqa: BLE001 - one shard's bug must not end the worker
                outcome = ShardOutcome(failure=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}")
            committed = commit(self.out_dir, shard, outcome)
            for key, value in (("id", shard.id), ("frames", outcome.frames_processed), ("rows", len(outcome.rows)),
                               ("committed", committed), ("failure", outcome.failure or ""),
                               ("seconds", outcome.seconds)):
                answers[key].append(value)
        return answers


def _batch_rows(batch: dict) -> list[dict]:
    """A Ray Data batch (column name -> array of values) as one dict per row, with plain Python values."""
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    return [{name: _plain(batch[name][index]) for name in columns} for index in range(size)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
