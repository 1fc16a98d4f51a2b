"""What the labelling tools' formats share: the frame of a candidate, the name a review gives it, a tool's label
read back as a decision, and what an import found (:mod:`.exchange` picks the format).

An import turns a tool's reviewed annotations into decision lines appended to ``reviews.jsonl`` (``source`` says
which tool). A mask the tool changed becomes the decision's ``mask``; the index keeps the original beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import decisions, masks
from .index import MinedIndex, frame_key

class FormatError(ValueError):
    """A file that is not the format it should be (one line: what is wrong)."""


@dataclass
class ImportOutcome:
    """What an import found: the decision lines to append, and what it could not use, counted with a reason."""

    lines: list[dict] = field(default_factory=list)
    corrected_masks: int = 0
    without_decision: int = 0
    unknown_candidates: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    not_newer: int = 0

    def keep_newer(self, log: decisions.ReviewLog) -> None:
        """Leave out (and count) each line that repeats one already in ``log`` or is not later, by its ``time``,
        than the latest decision recorded on its candidate: importing a file again, or an export older than the
        reviews made since, changes nothing."""
        seen = {_identity(line) for line in log.lines}
        latest = {candidate: _moment(line) for candidate, line in log.latest.items()}
        kept = []
        for line in self.lines:
            recorded, moment = latest.get(line["candidate_id"]), _moment(line)
            if _identity(line) in seen or (recorded and moment and moment <= recorded):
                self.not_newer += 1
                continue
            kept.append(line)
            seen.add(_identity(line))
            latest[line["candidate_id"]] = moment
        self.lines = kept

    def summary(self, path: Path) -> str:
        parts = [f"imported {len(self.lines)} decision(s) from {path} ({self.corrected_masks} with a corrected "
                 f"mask)"]
        if self.without_decision:
            parts.append(f"{self.without_decision} annotation(s) carried no decision and were left out")
        if self.unknown_candidates:
            parts.append(f"{len(self.unknown_candidates)} named no candidate of this index (first: "
                         f"{self.unknown_candidates[0]!r}) and were left out")
        if self.problems:
            parts.append(f"{len(self.problems)} could not be read (first: {self.problems[0]})")
        if self.not_newer:
            parts.append(f"{self.not_newer} were already recorded or not later than the candidate's latest decision "
                         "and were left out")
        return "; ".join(parts)


def _identity(line: dict) -> tuple:
    """What makes two decision lines the same decision (where it came from aside)."""
    return (*(line.get(key) for key in decisions.FIXED_KEYS if key != "seconds"),
            json.dumps(line.get("mask"), sort_keys=True))


def _moment(line: dict):
    """A line's time as an aware datetime; None when it is not a readable time."""
    try:
        return decisions.moment_of(line.get("time"))
    except decisions.DecisionError:
        return None


def frame_file(row: dict) -> str:
    """Where a candidate's full frame is, relative to the mined folder (``clipomaly frames MINED -o MINED/frames``
    writes it there)."""
    return f"frames/{frame_key(row)}.png"


def label_names(index: MinedIndex) -> list[str]:
    """The labels a tool offers for renaming, as the review page does: the names in the index, the naming
    dictionary, the anomaly vocabulary (all in ``index.names``) and the known classes."""
    return sorted(set(index.names) | set(index.known_classes))


def reviewed_name(row: dict, decision: dict | None) -> str:
    """The name a candidate carries after review: the new name of a rename, the known class of known_class, else
    the name mining gave it."""
    if decision and decision["decision"] == "rename":
        return decision["name"]
    if decision and decision["decision"] == "known_class":
        return decision["known_class"]
    return row["name"]


def decision_from_label(index: MinedIndex, row: dict, label: str, reviewer: str, time: str | None, **extra) -> dict:
    """A tool's label on a candidate as a decision: a known class is known_class, the candidate's own name accept,
    any other name rename."""
    if label in index.known_classes:
        return decisions.make_decision(row["candidate_id"], "known_class", known_class=label, reviewer=reviewer,
                                       time=time, **extra)
    kind = "accept" if label == row["name"] else "rename"
    return decisions.make_decision(row["candidate_id"], kind, name=label, reviewer=reviewer, time=time, **extra)


def with_mask(outcome: ImportOutcome, line: dict, row: dict, mask: np.ndarray | None) -> dict:
    """``line`` with the tool's ``mask`` when it differs from the index's (the index keeps the original). A mask of
    another size than the candidate's frame, or an empty one, raises :class:`~.masks.MaskError`."""
    if mask is None:
        return line
    height, width = row["mask"]["size"]
    if mask.shape != (height, width):
        raise masks.MaskError(f"the corrected mask is {mask.shape[1]} x {mask.shape[0]}, the candidate's frame "
                              f"{width} x {height}: draw it on the exported frame")
    if not mask.any():
        raise masks.MaskError("the corrected mask is empty: reject the candidate instead")
    if not np.array_equal(mask, masks.decode(row["mask"])):
        outcome.corrected_masks += 1
        line["mask"] = masks.encode(mask)
    return line


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise FormatError(f"{path} is not JSON ({error})") from None
