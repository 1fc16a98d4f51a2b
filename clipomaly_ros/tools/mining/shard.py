"""Mining one shard: its frames through the pipeline with tracking, in stamp order; one row per confirmed track;
its results committed to the output folder in one atomic rename.

Plain Python (no Ray): :class:`ShardMiner` is what a Ray actor holds, one model per worker.

Tracks do not cross shard borders: each shard tracks on its own, and a track that was already in view at its
window's first frame, or still in view at its last, is marked ``cut_at_start`` / ``cut_at_end`` (never at the
bag's own beginning or end). One object crossing a border is therefore two rows, each marked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ...core.config import ClipomalyConfig
from ...core.scene.planning import AnomalyFollower
from ...core.method.results import AnomalyRecord, DroppedRegion
from ...ros.bags import BagDataError, BagError, CutMcapReader, open_bag
from ...ros.frame_step import FrameStep
from ...ros.messages import stamp_ns
from ...ros.recorded import RecordedDrive
from .plan import Shard

SHARDS_FOLDER = "shards"
DROPPED_TRACK_BASE = 1_000_000
"""Ids of the chains of dropped regions (see :func:`_gather_dropped`) start here, clear of the tracker's."""
DROPPED_MIN_IOU = 0.3
"""Box overlap (intersection over union) that links a dropped region to one in the frame before."""
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
    best_tags: tuple[str, ...] = ()
    thumbnail: bytes = b""
    seen_first_frame: bool = False
    seen_last_frame: bool = False
    mask: dict | None = None
    """The best frame's mask, COCO compressed RLE in full-frame pixels."""
    dropped: DroppedRegion | None = None
    """For a chain of regions naming dropped (``reported`` false in the index): its best region; else None."""
    dropped_box: tuple[int, int, int, int] | None = None
    """That chain's box in the last frame it was seen in (x0, y0, x1, y1), to link the next frame's regions."""


@dataclass
class ShardOutcome:
    """What mining a shard gave: the rows, the frames read, processed, skipped (bad images, with reasons) and
    thinned out (``--rate``), the seconds it took, and ``truncated``: why the bag's data ended before the window
    did (rosbags found the file cut or its data damaged), else None; the rows before the cut are kept."""

    rows: list[dict] = field(default_factory=list)
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    frames_read: int = 0
    frames_processed: int = 0
    frames_skipped: int = 0
    frames_thinned: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    truncated: str | None = None
    cut_confirmed: bool = False
    """Whether ``truncated`` was found at the same place twice (a cut MCAP file is checked when planned)."""


class ShardFailed(RuntimeError):
    """An attempt at a shard that raised (an I/O error, out of memory, a bug, a model that cannot load): nothing
    of it may be committed, and it is tried again. ``reason`` is one line naming the exception."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason



DATA_ERROR_MODULES = ("rosbags", "mcap", "zstandard", "lz4", "sqlite3")
"""Where the errors come from that mean a bag's own bytes are cut or damaged: the readers and decompressors that
parse them."""


def truncation(error: BaseException) -> bool:
    """Whether ``error``, raised while reading a bag's messages, says the bag's own data ends early or is damaged,
    as rosbags, the MCAP stream reader, the decompressors and SQLite report it. An ``OSError`` (EIO from a flaky
    file system, a vanished mount) or ``MemoryError`` is never a truncation: the bytes may be whole, only the
    reading failed, so the shard is tried again; so is SQLite's "disk I/O error". A damaged chunk (a checksum
    mismatch) is a truncation here, but :meth:`ShardMiner.attempt` accepts it only once a second read meets it at
    the same place."""
    if isinstance(error, (OSError, MemoryError)) or "disk i/o error" in str(error).lower():
        return False  # SQLite says "disk I/O error" for a failed read of whole bytes: the disk, not the bag
    if isinstance(error, (EOFError, struct.error)):
        return True
    return type(error).__module__.split(".")[0] in DATA_ERROR_MODULES


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
    given) with tracking and, where the bag holds them, its camera_info, /tf_static and /tf; rows for its
    confirmed tracks. One pass over the bag reads the window's frames with their camera_info and transforms.

    A bag whose data rosbags finds cut short or damaged ends the shard there, with the rows before the cut and
    :attr:`ShardOutcome.truncated` saying why. Anything else that raises (an I/O error, out of memory, an error in
    the pipeline, a bug) raises :class:`ShardFailed`: the attempt is lost whole, nothing of it is to be committed."""
    started = time.perf_counter()
    outcome = ShardOutcome()
    tracks: dict[int, TrackSummary] = {}
    last_frame_ids: set[int] = set()
    try:
        with open_bag(shard.bag) as reader:
            _check_cut(reader, shard)
            last_frame_ids = _mine_frames(reader, pipeline, shard, rate_hz, outcome, tracks)
            if isinstance(reader, CutMcapReader) and shard.last:  # its cut was found at one place twice when planned
                outcome.truncated = (f"the bag's file ends early, at byte {reader.cut_offset} ({reader.cut}): its "
                                     f"last message is at {reader.end_time} ns; the rows before it are kept")
                outcome.cut_confirmed = True
    except BagDataError as error:
        outcome.truncated = str(error)
    except BagError as error:  # the bag would not open: a cut file is found when planning, so this is the disk
        raise ShardFailed(f"{shard.bag}: {error}") from error
    except ShardFailed:
        raise
    except Exception as error:  # noqa: BLE001 - whatever it is, this attempt is lost and must not be committed
        raise ShardFailed(f"{type(error).__name__} after {outcome.frames_read} frames of {shard.topic}: "
                          f"{str(error).splitlines()[0] if str(error) else '(no message)'}") from error
    for track_id in last_frame_ids:
        tracks[track_id].seen_last_frame = True
    for summary in sorted(tracks.values(), key=lambda t: t.track_id):
        if summary.confirmed:
            key = f"{shard.id}-{summary.track_id}"
            outcome.rows.append(_row(shard, summary, key))
            outcome.thumbnails[key] = summary.thumbnail
    outcome.seconds = time.perf_counter() - started
    return outcome


def _check_cut(reader, shard: Shard) -> None:
    """Raise :class:`ShardFailed` (the attempt is tried again) where this worker's scan of a cut file ends its
    records at another byte than planning's did: one of the two reads failed, so this worker's kept index is
    dropped and the next attempt scans again."""
    offset = reader.cut_offset if isinstance(reader, CutMcapReader) else -1
    if offset != shard.cut_offset:
        if isinstance(reader, CutMcapReader):
            reader.forget_index()
        raise ShardFailed(f"{shard.bag}: this worker reads the file's complete records up to byte {offset}, "
                          f"planning read them up to byte {shard.cut_offset} (-1: whole): an I/O problem, not a cut")


def _mine_frames(reader, pipeline, shard: Shard, rate_hz: float | None, outcome: ShardOutcome,
                 tracks: dict[int, TrackSummary]) -> set[int]:
    """The frames of ``shard`` through ``pipeline`` and the tracker (the loop replay runs, without messages),
    gathered into ``tracks``; the track ids seen in the last frame. Reading errors that mean a cut or damaged bag
    raise :class:`BagDataError`."""
    images = [c for c in reader.connections if c.topic == shard.topic]
    drive = RecordedDrive(reader, images, report=outcome.skipped_reasons.append, guard=_data_guarded)
    step = FrameStep(AnomalyFollower(pipeline.name_embeddings, drive.camera_info_topic))
    last_frame_ids: set[int] = set()
    first_frame = True
    try:
        for processed in drive.frames(pipeline, step, start=shard.start_ns, stop=shard.stop_ns, rate_hz=rate_hz):
            last_frame_ids = _gather(tracks, processed.frame.records, processed.result, processed.image,
                                     stamp_ns(processed.header), first_frame)
            first_frame = False
    finally:
        outcome.frames_read, outcome.frames_processed = drive.counts.read, drive.counts.processed
        outcome.frames_skipped, outcome.frames_thinned = drive.counts.skipped, drive.counts.thinned
    return last_frame_ids


def _data_guarded(messages):
    """``messages`` (a rosbags iterator) with an error that :func:`truncation` calls a cut or damaged bag turned
    into :class:`BagDataError`; any other error passes as it is."""
    count = 0
    iterator = iter(messages)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - sorted by truncation(): data errors or not
            if truncation(error):
                detail = str(error).strip() or "the file ends in the middle of a record"
                raise BagDataError(f"the bag's data ends or is damaged after {count} messages "
                                   f"({type(error).__name__}: {detail}); the rows before it are kept") from error
            raise
        count += 1
        yield item


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
            summary.best_tags = result.tags.names if getattr(result, "tags", None) is not None else ()
            box, pixels = result.instance_mask(record.id)
            summary.thumbnail = thumbnail(image, box, pixels)
            summary.mask = full_frame_rle(image.shape[:2], box, pixels)
    seen |= _gather_dropped(tracks, getattr(result, "dropped", ()), result, image, stamp, first_frame)
    return seen


def full_frame_rle(size: tuple[int, int], box: tuple[int, int, int, int], pixels: np.ndarray) -> dict:
    """COCO compressed RLE (``{"size": [h, w], "counts": str}``) of a mask given as its box (y0, y1, x0, x1) and
    the bool pixels inside it, placed in a frame of ``size`` (h, w)."""
    from ..review.masks import encode

    mask = np.zeros(size, dtype=bool)
    mask[box[0]:box[1], box[2]:box[3]] = pixels
    return encode(mask)


def _gather_dropped(tracks: dict[int, TrackSummary], regions, result, image, stamp: int,
                    first_frame: bool) -> set[int]:
    """Chain the frame's dropped regions (never tracked by the node) to those of the frame before whose box
    overlaps by :data:`DROPPED_MIN_IOU`, else start a chain; each chain keeps its best-scoring region. A chain
    becomes a row whatever its length (``confirmed`` set): naming's gaps are what a reviewer wants to see."""
    seen: set[int] = set()
    for region in regions:
        mask = region.mask()
        if not mask.any():
            continue
        x0, y0, x1, y1 = region.box()
        box = (x0, y0, x1, y1)
        near = [t for t in tracks.values() if t.dropped is not None and t.track_id not in seen
                and t.dropped.known == region.known and _iou(t.dropped_box, box) >= DROPPED_MIN_IOU]
        summary = max(near, key=lambda t: _iou(t.dropped_box, box), default=None)
        if summary is None:
            track_id = DROPPED_TRACK_BASE + sum(1 for t in tracks.values() if t.dropped is not None)
            summary = tracks[track_id] = TrackSummary(track_id, first_ns=stamp, seen_first_frame=first_frame,
                                                      confirmed=True)
        seen.add(summary.track_id)
        summary.last_ns, summary.frames, summary.dropped_box = stamp, summary.frames + 1, box
        summary.scores.append(float(region.score))
        if region.score > summary.best_score or summary.dropped is None:
            summary.best_score, summary.best_ns, summary.dropped = region.score, stamp, region
            summary.name = region.name
            summary.best_tags = result.tags.names if getattr(result, "tags", None) is not None else ()
            summary.thumbnail = thumbnail(image, (y0, y1 + 1, x0, x1 + 1), mask[y0:y1 + 1, x0:x1 + 1])
            summary.mask = full_frame_rle(mask.shape, (0, mask.shape[0], 0, mask.shape[1]), mask)
    return seen


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two inclusive pixel boxes (x0, y0, x1, y1)."""
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    areas = [(box[2] - box[0] + 1) * (box[3] - box[1] + 1) for box in (a, b)]
    return width * height / (sum(areas) - width * height)


def candidate_id(bag_id: str, topic: str, track: int, first_stamp_ns: int) -> str:
    """A row's ``candidate_id``, 20 hex digits: from the bag's content identity (not its path or name), the topic,
    the track and the stamp it was first seen at, so the drive mined again from anywhere (or with a model that
    picks another best frame) gives its candidates the same ids and their reviews still apply."""
    return hashlib.sha1(f"{bag_id}|{topic}|{track}|{first_stamp_ns}".encode()).hexdigest()[:20]


def _row(shard: Shard, track: TrackSummary, key: str) -> dict:
    """The index row of a track (``reported``) or of a chain of regions naming dropped (not ``reported``)."""
    best = track.best if track.dropped is None else track.dropped
    ground = getattr(best, "ground", None)
    box = best.bbox if track.dropped is None else best.box()
    return {
        "bag": shard.bag_name, "topic": shard.topic, "shard": shard.id, "track": track.track_id,
        "first_stamp_ns": track.first_ns, "last_stamp_ns": track.last_ns, "best_stamp_ns": track.best_ns,
        "frames": track.frames, "name": track.name,
        "candidates": [{"name": name, "score": float(score)} for name, score in best.candidates],
        "peak_score": float(max(track.scores)), "mean_score": float(np.mean(track.scores)),
        "box": [int(v) for v in box], "on_road": getattr(best, "on_road", None),
        "distance_m": None if ground is None else float(ground.distance),
        "lateral_m": None if ground is None else float(ground.y),
        "cut_at_start": track.seen_first_frame and not shard.first,
        "cut_at_end": track.seen_last_frame and not shard.last,
        "thumbnail": f"thumbnails/{key}.jpg", "tags": list(track.best_tags),
        "candidate_id": candidate_id(shard.bag_id, shard.topic, track.track_id, track.first_ns),
        "reported": track.dropped is None, "mask": track.mask,
        "bag_id": shard.bag_id, "source_path": shard.bag,
    }


def commit(out_dir: Path, shard: Shard, outcome: ShardOutcome) -> bool:
    """Write the shard's rows (``rows.parquet``), thumbnails and ``shard.json`` into a private folder, flush them
    and the folder to the disk (fsync), then rename it to ``OUT_DIR/shards/<id>`` in one step and flush that
    folder: a shard is committed whole or not at all, also across a power cut. False when another run committed it
    first (its results stand). An ``OSError`` (ENOSPC, EIO) leaves nothing committed and propagates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .report import ROW_SCHEMA

    folder = Path(out_dir) / SHARDS_FOLDER
    final = folder / shard.id
    if final.exists():
        return False
    work = folder / f".work-{shard.id}-{socket.gethostname()}-{os.getpid()}"  # process ids repeat across nodes
    shutil.rmtree(work, ignore_errors=True)
    (work / "thumbnails").mkdir(parents=True)
    try:
        pq.write_table(pa.Table.from_pylist(outcome.rows, schema=ROW_SCHEMA), work / "rows.parquet")
        for key, data in outcome.thumbnails.items():
            (work / "thumbnails" / f"{key}.jpg").write_bytes(data)
        (work / "shard.json").write_text(json.dumps(shard_record(shard, outcome), indent=1))
        for path in [*work.rglob("*"), work / "thumbnails", work]:
            fsync_path(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        os.rename(work, final)
    except OSError:  # committed meanwhile by a worker of an earlier, interrupted run; else the disk failed
        shutil.rmtree(work, ignore_errors=True)
        if not final.exists():
            raise
        return False
    fsync_path(folder)
    return True


def shard_record(shard: Shard, outcome: ShardOutcome) -> dict:
    """``shard.json``: the shard, its frame counts (skipped ones with their first reasons), seconds and cut."""
    return {"shard": shard.as_dict(), "frames_read": outcome.frames_read,
            "frames_processed": outcome.frames_processed, "frames_skipped": outcome.frames_skipped,
            "frames_thinned": outcome.frames_thinned, "skipped_reasons": outcome.skipped_reasons[:20],
            "seconds": round(outcome.seconds, 3), "truncated": outcome.truncated, "rows": len(outcome.rows)}


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's content (a folder: its entries) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


RETRIES = 2
"""Attempts after the first at a shard that failed (``--retries``)."""
BACKOFF_S = 1.0
"""Seconds before the first retry; each later one waits twice as long."""


class ShardMiner:
    """One worker: a pipeline built once from ``config`` (a :meth:`ClipomalyConfig.as_dict`), then shard after
    shard mined and committed into ``out_dir``. Called by Ray Data with a batch of shard dicts; returns one small
    row per shard for the driver: ``outcome`` is ``committed``, ``truncated`` (committed up to the bag's cut),
    ``failed`` (every attempt raised: nothing committed; ``failure`` says why) or ``model`` (the model did not load
    in this worker: nothing tried).

    A failed attempt is tried again up to ``retries`` times, after ``backoff_s``, then twice as long each time."""

    def __init__(self, config: dict, out_dir: str, rate_hz: float | None = None, threads: int = 0,
                 retries: int = RETRIES, backoff_s: float = BACKOFF_S, fingerprint: dict | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.out_dir = Path(out_dir)
        self.rate_hz = rate_hz
        self.retries = retries
        self.backoff_s = backoff_s
        self.pipeline = None
        self.load_error: str | None = None
        try:
            settings = ClipomalyConfig(**config)
            self.load_error = _fingerprint_refusal(settings, fingerprint)
            if self.load_error is None:
                self.pipeline = self.build_pipeline(settings)
        except Exception as error:  # noqa: BLE001 - said to the driver, which ends the run with it
            self.load_error = one_line(error)

    def build_pipeline(self, config: ClipomalyConfig):
        from ...core.method.pipeline import Clipomaly

        return Clipomaly(config)

    def mine(self, shard: Shard) -> ShardOutcome:
        """One attempt at ``shard`` (raises :class:`ShardFailed`)."""
        return mine_shard(self.pipeline, shard, self.rate_hz)

    def attempt(self, shard: Shard) -> tuple[str, ShardOutcome | None, str, int]:
        """``(outcome, what was mined or None, failure, attempts)`` for ``shard``: mined and committed, or every
        attempt failed. Damage met while reading (a checksum mismatch, say) counts only once a second read meets it
        at the same place: a different place, or none, was the disk, and the shard is read again."""
        failure, damage = "", None
        for attempt in range(self.retries + 1):
            try:
                outcome = self.mine(shard)
                if outcome.truncated and not outcome.cut_confirmed and outcome.truncated != damage:
                    damage = outcome.truncated
                    raise ShardFailed(f"{outcome.truncated} (read again to tell damage from the disk)")
                commit(self.out_dir, shard, outcome)
                return ("truncated" if outcome.truncated else "committed"), outcome, "", attempt + 1
            except Exception as error:  # noqa: BLE001 - a failed attempt: nothing of it was committed
                failure = error.reason if isinstance(error, ShardFailed) else one_line(error)
            _release_memory()
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        return "failed", None, failure, self.retries + 1

    def __call__(self, batch: dict) -> dict:
        answers: dict[str, list] = {key: [] for key in ("id", "outcome", "frames", "rows", "failure", "attempts",
                                                         "seconds")}
        for values in _batch_rows(batch):
            shard = Shard.from_dict(values)
            if self.load_error is not None:
                kind, outcome, failure, attempts = "model", None, self.load_error, 0
            else:
                kind, outcome, failure, attempts = self.attempt(shard)
            for key, value in (("id", shard.id), ("outcome", kind),
                               ("frames", outcome.frames_processed if outcome else 0),
                               ("rows", len(outcome.rows) if outcome else 0),
                               ("failure", failure or (outcome.truncated if outcome and outcome.truncated else "")),
                               ("attempts", attempts), ("seconds", outcome.seconds if outcome else 0.0)):
                answers[key].append(value)
        return answers


def _fingerprint_refusal(config: ClipomalyConfig, fingerprint: dict | None) -> str | None:
    """Why this worker refuses to mine, or None: the files it would load (weights, ONNX models, dictionary) do not
    hash to the driver's ``fingerprint``, or it would run at another numeric precision, or another version."""
    if fingerprint is None:
        return None
    import torch

    from ... import __version__
    from ...core.fingerprint import files_differing, numeric_precision

    differing = files_differing(config, fingerprint)
    if "precision" in fingerprint and numeric_precision(config.device, torch.cuda.is_available()) != \
            fingerprint["precision"]:
        differing.append("precision (give --device, or --gpus-per-worker, to say where the workers run)")
    if fingerprint.get("package_version", __version__) != __version__:
        differing.append(f"package_version ({__version__} here)")
    if not differing:
        return None
    return (f"this worker's files or settings differ from the run's fingerprint: {', '.join(differing)}; every "
            "node needs the same files at the same paths and the same package version")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, what a failure is reported as."""
    text = str(error).strip()
    if hasattr(error, "render"):  # ModelLoadError: its settings written as command-line options
        text = error.render("cli")
    return f"{type(error).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def _release_memory() -> None:
    """After a failed attempt (out of memory, often): what Python and CUDA's cache hold is given back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _batch_rows(batch: dict) -> list[dict]:
    """A Ray Data batch (column name -> array of values) as one dict per row, with plain Python values."""
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    return [{name: _plain(batch[name][index]) for name in columns} for index in range(size)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
