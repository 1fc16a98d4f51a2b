"""``MINED/reviews.jsonl``: the reviewers' decisions, one JSON object a line, appended and never rewritten.

This file is the interface that ``clipomaly release`` and other tools read; its keys are fixed:

- ``candidate_id``: the index row's ``candidate_id``;
- ``decision``: ``accept`` | ``rename`` | ``known_class`` | ``reject`` | ``skip``;
- ``name``: the anomaly's name (accept, rename; else null);
- ``known_class``: which known class it is (known_class; else null);
- ``reviewer``: who decided; ``time``: when, ISO 8601 in UTC; ``seconds``: how long they looked at it;
- ``mask`` (optional): a corrected mask, COCO compressed RLE ``{"size": [h, w], "counts": str}``.

Other keys may follow (``source``: where the decision came from, ``lead_time``: a labelling tool's own measure).
A later line on the same candidate supersedes an earlier one; both stay. Each line is appended with one
``os.write`` to a file opened ``O_APPEND`` under an exclusive ``flock``, so concurrent reviewers (threads or
processes, on one machine or over NFS with locking) never lose or interleave a line.
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import masks

REVIEWS_FILE = "reviews.jsonl"
DECISIONS = ("accept", "rename", "known_class", "reject", "skip")
FIXED_KEYS = ("candidate_id", "decision", "name", "known_class", "reviewer", "time", "seconds")
MAX_TEXT = 200
"""Longest name, known class or reviewer accepted, in characters."""


class DecisionError(ValueError):
    """A decision that cannot be recorded (one line: what is wrong and what to send instead)."""


def utc_now() -> str:
    """Now as ISO 8601 in UTC to the millisecond, e.g. ``2026-12-06T13:54:51.123Z``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc(text: str) -> str:
    """An ISO 8601 time (with a zone; none means UTC) as :func:`utc_now` writes it; raises :class:`DecisionError`."""
    return moment_of(text).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moment_of(text: str) -> datetime.datetime:
    """An ISO 8601 time (a zone, ``Z`` or ``z`` included; none means UTC) as an aware UTC datetime; raises
    :class:`DecisionError`."""
    text = str(text).strip()
    if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat reads no Z, and none reads RFC 3339's lowercase z
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise DecisionError(f"time {str(text)[:40]!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def _text(value, what: str, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise DecisionError(f"{what} is required for this decision")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or not value.isprintable():
        raise DecisionError(f"{what} must be printable text of 1 to {MAX_TEXT} characters")
    return " ".join(value.split())


def make_decision(candidate_id: str, decision: str, *, reviewer: str, name: str | None = None,
                  known_class: str | None = None, seconds: float | None = None, mask: dict | None = None,
                  time: str | None = None, known_classes=None, **extra) -> dict:
    """A checked decision line (a dict with :data:`FIXED_KEYS` first). ``name`` is required for rename (and for
    accept, where it is the candidate's own name), and is no known class when ``known_classes`` are given;
    ``known_class`` for known_class, one of ``known_classes`` when given; ``mask``, a corrected mask, must hold
    pixels. Raises :class:`DecisionError`."""
    if not isinstance(candidate_id, str) or not candidate_id or len(candidate_id) > MAX_TEXT:
        raise DecisionError("candidate_id must be a candidate's id from the index")
    if decision not in DECISIONS:
        raise DecisionError(f"decision must be one of {', '.join(DECISIONS)}, got {str(decision)[:40]!r}")
    name = _text(name, "name", decision in ("accept", "rename")) if decision in ("accept", "rename") else None
    known_class = _text(known_class, "known_class", True) if decision == "known_class" else None
    if known_class is not None and known_classes is not None and known_class not in known_classes:
        raise DecisionError(f"known_class {known_class!r} is not one of the known classes "
                            f"({', '.join(known_classes)})")
    if name is not None and known_classes is not None and name in known_classes:
        raise DecisionError(f"{name!r} is a known class: use known_class (k) for it, not {decision}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 <= seconds < 86_400 * 365):
        raise DecisionError("seconds must be a non-negative number")
    line = {"candidate_id": candidate_id, "decision": decision, "name": name, "known_class": known_class,
            "reviewer": _text(reviewer, "reviewer", True), "time": iso_utc(time) if time else utc_now(),
            "seconds": None if seconds is None else round(float(seconds), 3)}
    if mask is not None:
        try:
            line["mask"] = masks.checked(mask)
            if not masks.area(mask):
                raise masks.MaskError("a corrected mask must hold pixels: reject the candidate instead")
        except masks.MaskError as error:
            raise DecisionError(str(error)) from None
    return line | {key: value for key, value in extra.items() if value is not None}


def append(folder: Path, lines: list[dict]) -> None:
    """Append decision lines to ``folder/reviews.jsonl`` at once: one ``os.write`` under an exclusive lock. A cut
    last line (a writer killed mid-line on a file system without atomic appends) is closed first, so it stays one
    bad line and the new ones stay whole."""
    if not lines:
        return
    data = "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines).encode()
    descriptor = os.open(Path(folder) / REVIEWS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            data = b"\n" + data
        written = os.write(descriptor, data)
        if written != len(data):
            raise OSError(f"only {written} of {len(data)} bytes of a decision were written to {REVIEWS_FILE}")
    finally:
        os.close(descriptor)  # closing releases the lock


@dataclass
class ReviewLog:
    """``reviews.jsonl`` read: every good line in file order, the latest per candidate, and the lines that were
    not decisions (cut or damaged), by line number with why."""

    lines: list[dict] = field(default_factory=list)
    latest: dict[str, dict] = field(default_factory=dict)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def problems(self) -> str | None:
        """One line about the lines that were not read, or None."""
        if not self.bad_lines:
            return None
        number, why = self.bad_lines[0]
        more = f" (and {len(self.bad_lines) - 1} more)" if len(self.bad_lines) > 1 else ""
        return (f"{REVIEWS_FILE}: line {number} {why}{more}; it is ignored (the other decisions stand; a cut "
                f"last line is what a writer killed mid-line leaves)")


def read_log(folder: Path) -> ReviewLog:
    """Every decision of ``folder/reviews.jsonl`` (none if it does not exist); a line that is not a whole decision
    is counted in ``bad_lines``, never fatal."""
    log = ReviewLog()
    path = Path(folder) / REVIEWS_FILE
    if not path.is_file():
        return log
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            why = _bad_line_reason(raw)
            if why:
                log.bad_lines.append((number, why))
                continue
            line = json.loads(raw)
            log.lines.append(line)
            log.latest[line["candidate_id"]] = line
    return log


def _bad_line_reason(raw: bytes) -> str | None:
    if not raw.endswith(b"\n"):
        return "is cut (no end of line)"
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "is not JSON"
    if not isinstance(line, dict) or any(key not in line for key in FIXED_KEYS):
        return "lacks the fixed keys"
    if line["decision"] not in DECISIONS or not isinstance(line["candidate_id"], str):
        return "has no valid decision"
    return None


def verdict(line: dict) -> tuple:
    """What a decision says, for comparing reviewers: the decision with its name or known class."""
    return line["decision"], line.get("name") if line["decision"] in ("accept", "rename") else line.get("known_class")


def conflicts(log: ReviewLog) -> list[dict]:
    """Candidates on which reviewers disagree: each reviewer's latest decision (skips aside) differs. One dict per
    candidate: ``candidate_id`` and ``reviewers`` (reviewer -> their latest line)."""
    per_candidate: dict[str, dict[str, dict]] = {}
    for line in log.lines:
        if line["decision"] != "skip":
            per_candidate.setdefault(line["candidate_id"], {})[line["reviewer"]] = line
    return [{"candidate_id": candidate, "reviewers": by_reviewer}
            for candidate, by_reviewer in sorted(per_candidate.items())
            if len({verdict(line) for line in by_reviewer.values()}) > 1]


def conflict_text(found: list[dict]) -> str:
    """``clipomaly review --conflicts``'s table: one line per candidate and reviewer."""
    if not found:
        return "no disagreements between reviewers"
    lines = [f"{len(found)} candidate(s) with disagreeing reviewers:"]
    for conflict in found:
        for reviewer, line in sorted(conflict["reviewers"].items()):
            what = " ".join(str(v) for v in verdict(line) if v)
            lines.append(f"  {conflict['candidate_id']}  {reviewer}: {what}  ({line['time']})")
    return "\n".join(lines)
