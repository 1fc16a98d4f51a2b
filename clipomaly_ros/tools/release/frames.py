"""Labelled frames from reviewed candidates: the full frame read back from its bag (``source_path``, ``topic``,
``best_stamp_ns``) and a label image built from the reviewed masks.

Calibration labels (``labels/<stem>.png``, as ``clipomaly evaluate`` and ``calibrate`` read them): 1 where a
candidate was accepted or renamed (a real anomaly), 0 where it was a known class or rejected, 255 (ignored) on the
other candidates of the frame that have no decision in force and in the boxes of tracks passing through the frame
(alive at its stamp, their best frame another), 0 elsewhere. Fine-tuning labels: the known class's
index where a candidate was called a known class, 255 elsewhere (``clipomaly finetune``'s layout).
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .inputs import CONFIRMED, Decision, MinedRun, decode_mask

ANOMALY, NORMAL, IGNORE = 1, 0, 255
FRAME_READ_WINDOW_NS = 2_000_000_000
"""How far around a stamp the bag is read for the frame: bags are written in receive time, headers carry capture
time."""


@dataclass
class ReviewedFrame:
    """One frame with reviewed candidates: where it is (``bag`` folder, ``topic``, ``stamp_ns``), its drive (the
    bag's content identity, what the held-out split goes by) and its candidates' rows with their decisions."""

    bag: str
    drive: str
    topic: str
    stamp_ns: int
    candidates: list[tuple[dict, Decision | None]] = field(default_factory=list)
    passing: list[list[int]] = field(default_factory=list)
    """Boxes ``[x0, y0, x1, y1]`` (pixels, inclusive) of the other tracks alive at this stamp (seen before and
    after it, their best frame elsewhere): where they are here is not known, so it is no evidence either way."""

    @property
    def stem(self) -> str:
        """A file stem that names the frame: drive, topic and stamp."""
        return f"{self.drive[:12]}_{re.sub(r'[^A-Za-z0-9]+', '_', self.topic).strip('_')}_{self.stamp_ns}"


def reviewed_frames(runs: list[MinedRun]) -> list[ReviewedFrame]:
    """The frames that hold at least one decided candidate (skip is no decision), in a stable order; each with every
    candidate the index has at that frame."""
    frames: dict[tuple, ReviewedFrame] = {}
    for run in runs:
        for candidate_id, row in run.rows.items():
            key = (row["bag_id"], row["topic"], int(row["best_stamp_ns"]))
            frame = frames.setdefault(key, ReviewedFrame(row["source_path"], row["bag_id"], row["topic"], key[2]))
            decision = run.decisions.get(candidate_id)
            frame.candidates.append((row, decision if decision and decision.decision != "skip" else None))
    decided = [f for f in frames.values() if any(d is not None for _, d in f.candidates)]
    for frame in decided:
        frame.passing = [row["box"] for run in runs for row in run.rows.values() if _passes(row, frame)]
    return sorted(decided, key=lambda f: (f.drive, f.topic, f.stamp_ns))


def _passes(row: dict, frame: ReviewedFrame) -> bool:
    """Whether the track ``row`` is alive at ``frame``'s stamp without its best frame being this one."""
    first, last = row.get("first_stamp_ns"), row.get("last_stamp_ns")
    return (row["bag_id"] == frame.drive and row["topic"] == frame.topic and int(row["best_stamp_ns"]) != frame.stamp_ns
            and first is not None and last is not None and int(first) <= frame.stamp_ns <= int(last)
            and row.get("box") is not None)


def calibration_label(frame: ReviewedFrame, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` uint8 calibration label of ``frame`` (see the module docstring)."""
    label = np.full(shape, NORMAL, dtype=np.uint8)
    for x0, y0, x1, y1 in frame.passing:
        label[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = IGNORE
    layers = {None: [], NORMAL: [], ANOMALY: []}
    for row, decision in frame.candidates:
        value = None if decision is None else ANOMALY if decision.decision in CONFIRMED else NORMAL
        layers[value].append(candidate_mask(row, decision, shape))
    for value, fill in ((None, IGNORE), (NORMAL, NORMAL), (ANOMALY, ANOMALY)):  # a decision beats no decision
        for mask in layers[value]:
            label[mask] = fill
    return label


def finetune_label(frame: ReviewedFrame, shape: tuple[int, int], known_classes: tuple[str, ...]) -> np.ndarray | None:
    """The ``(H, W)`` uint8 fine-tuning label: known-class decisions as that class's index, 255 elsewhere; None
    when the frame has none."""
    label = np.full(shape, IGNORE, dtype=np.uint8)
    found = False
    for row, decision in frame.candidates:
        if decision is not None and decision.decision == "known_class" and decision.known_class in known_classes:
            label[candidate_mask(row, decision, shape)] = known_classes.index(decision.known_class)
            found = True
    return label if found else None


def candidate_mask(row: dict, decision: Decision | None, shape: tuple[int, int]) -> np.ndarray:
    """The candidate's mask (the reviewer's corrected one when given), at the frame's size."""
    mask = decode_mask(decision.mask if decision is not None and decision.mask else row["mask"])
    if mask.shape != shape:
        raise ValueError(f"candidate {row['candidate_id']}: its mask is {mask.shape[1]}x{mask.shape[0]}, the frame "
                         f"{shape[1]}x{shape[0]}")
    return mask


def read_frame_images(frames: list[ReviewedFrame], problems: list[str]) -> dict[str, np.ndarray]:
    """``stem -> (H, W, 3) uint8 RGB`` of each frame, read from its bag; a bag or frame that cannot be read is a
    problem line (its frames are left out)."""
    from ...ros.bags import BagError, open_bag
    from ...ros.decoding import BadRecordedFrame, decode_recorded, deserialize_recorded
    from ...ros.messages import stamp_ns

    by_bag: dict[str, list[ReviewedFrame]] = collections.defaultdict(list)
    for frame in frames:
        by_bag[frame.bag].append(frame)
    images: dict[str, np.ndarray] = {}
    unreadable = set()
    for bag, wanted in sorted(by_bag.items(), key=lambda item: str(item[0])):
        if bag is None:
            problems.append(f"{len(wanted)} reviewed frames of a bag the index gives no path for (no source_path, "
                            "none in summary.json): left out")
            unreadable.add(bag)
            continue
        try:
            with open_bag(bag) as reader:
                for topic in sorted({f.topic for f in wanted}):
                    stamps = {f.stamp_ns: f.stem for f in wanted if f.topic == topic}
                    connections = [c for c in reader.connections if c.topic == topic]
                    # Frames are looked for near their stamp first; one recorded much later than stamped (a
                    # delayed camera) is found by reading the whole topic once.
                    for window in ((min(stamps) - FRAME_READ_WINDOW_NS, max(stamps) + FRAME_READ_WINDOW_NS),
                                   (None, None)):
                        missing = {t: stem for t, stem in stamps.items() if stem not in images}
                        if not missing:
                            break
                        for connection, _, raw in reader.messages(connections=connections, start=window[0],
                                                                  stop=window[1]):
                            message = deserialize_recorded(reader, raw, connection.msgtype)
                            stem = missing.get(stamp_ns(message.header))
                            if stem is not None and stem not in images:
                                images[stem] = decode_recorded(message, connection.msgtype)
        except (BagError, BadRecordedFrame) as error:
            problems.append(f"bag {Path(bag).name}: {error}; its {len(wanted)} reviewed frames are left out")
            unreadable.add(bag)
    for frame in (f for f in frames if f.stem not in images and f.bag not in unreadable):
        problems.append(f"bag {Path(frame.bag).name}: no {frame.topic} frame stamped {frame.stamp_ns}; left out")
    return images


def split_by_drive(frames: list[ReviewedFrame], held_out_share: float = 0.25) -> tuple[list, list]:
    """``(search, held_out)``: whole drives held out (about ``held_out_share`` of them, at least one when there are
    two or more drives, chosen by their identity so a rebuild holds out the same ones)."""
    drives = sorted({frame.drive for frame in frames})
    if len(drives) < 2:
        return frames, []
    count = max(1, round(len(drives) * held_out_share))
    held = set(sorted(drives, key=lambda d: d[::-1])[:count])
    return [f for f in frames if f.drive not in held], [f for f in frames if f.drive in held]
