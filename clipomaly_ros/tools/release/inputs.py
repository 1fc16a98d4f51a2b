"""What a release is built from: reviewed mined folders (``MINED/anomalies.parquet``, ``MINED/reviews.jsonl`` and the
run's fingerprint), read and checked.

``reviews.jsonl`` holds one decision a line (``candidate_id``, ``decision``, ``name``, ``known_class``,
``reviewer``, ``time``, ``seconds``, optionally ``mask`` as COCO RLE); a later line for a candidate supersedes an
earlier one. Every line that cannot be used is counted and reported with why (not JSON, cut mid-line, a candidate
the index does not hold, a decision without its name), never dropped silently. Two reviewers whose latest decisions
on one candidate differ are a conflict: the candidate is left out unless ``conflicts="latest"``.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..run_identity import model_version, run_fingerprint, weights_of_fingerprint
from .vocabulary import normalise

INDEX = "anomalies.parquet"
REVIEWS = "reviews.jsonl"
RUN_FILE = "run.json"
DECISIONS = ("accept", "rename", "known_class", "reject", "skip")
CONFIRMED = ("accept", "rename")
"""Decisions that say a candidate is a real anomaly, with its name."""
CONFLICT_POLICIES = ("leave-out", "latest", "refuse")
INDEX_COLUMNS = ("candidate_id", "mask", "bag", "topic", "best_stamp_ns")
"""The index columns a release needs: the candidate, its mask, and where its frame is (bag, topic, stamp). The bag's
content identity (``bag_id``) and folder (``source_path``) are read where the index has them; else the bag's name
and ``summary.json``'s path for it stand in."""


class ReleaseError(ValueError):
    """The inputs cannot give a release; the message is one line saying what was wrong and what to do."""


@dataclass(frozen=True)
class Decision:
    """The decision in force for one candidate (the latest line of the reviewer who decided last)."""

    candidate_id: str
    decision: str
    name: str
    known_class: str
    reviewer: str
    mask: dict | None


@dataclass
class MinedRun:
    """One reviewed mined folder: its index rows by candidate id, the decisions in force, the weights it was mined
    with, the hashes of its index and reviews, and every problem found (one line each)."""

    folder: Path
    rows: dict[str, dict]
    decisions: dict[str, Decision]
    weights: dict
    index_hash: str
    reviews_hash: str
    lines: int = 0
    problems: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    @property
    def weights_id(self) -> str:
        """``weights:<12 hex>``, a short name for :attr:`weights`."""
        return "weights:" + hashlib.sha256(json.dumps(self.weights, sort_keys=True).encode()).hexdigest()[:12]


def tree_hash(path: Path) -> str:
    """``md5:<hex>`` of a file's bytes (the md5 DVC records for a file, so a ``.dvc`` file can reuse it), or of a
    folder's files (relative paths and bytes, in sorted order): this package's own digest, not DVC's ``.dir``
    hash."""
    digest = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return "md5:" + digest.hexdigest()


def read_index(folder: Path) -> dict[str, dict]:
    """The index rows of ``MINED`` by ``candidate_id`` (each a dict of the row's columns)."""
    import pyarrow.dataset as ds

    path = folder / INDEX
    if not path.exists():
        raise ReleaseError(f"{folder}: no {INDEX}: give a folder that clipomaly mine wrote")
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    missing = [name for name in INDEX_COLUMNS if name not in table.column_names]
    if missing:
        raise ReleaseError(f"{path} lacks the column(s) {', '.join(missing)}: it was mined by an older version; "
                           "mine the drives again to review and release them")
    paths = _bag_paths(folder)
    rows = {}
    for row in table.to_pylist():
        if row["candidate_id"] in rows:
            raise ReleaseError(f"{path}: candidate {row['candidate_id']} is there twice; the index is damaged, "
                               "mine again")
        row["bag_id"] = row.get("bag_id") or row["bag"]
        row["source_path"] = row.get("source_path") or paths.get(row["bag"])
        rows[row["candidate_id"]] = row
    return rows


def _bag_paths(folder: Path) -> dict[str, str]:
    """Bag name -> its folder, from ``summary.json``'s bags (for an index without ``source_path``)."""
    summary = folder / "summary.json"
    bags = json.loads(summary.read_text()).get("per_bag", []) if summary.is_file() else []
    return {bag["bag"]: bag["path"] for bag in bags if "bag" in bag and "path" in bag}


def read_fingerprint(folder: Path) -> dict:
    """The run fingerprint of ``MINED`` (``run.json``, else ``summary.json``'s settings): every setting that changes a
    row, files by the hash of their bytes."""
    fingerprint = run_fingerprint(folder)
    if fingerprint is None:
        raise ReleaseError(f"{folder}: no run fingerprint ({RUN_FILE}): cannot tell which weights mined it, and a "
                           "release never mixes weights; give the folder clipomaly mine wrote")
    return fingerprint


def _parse(line: str, number: int, last: bool, rows: dict, problems: list[str]) -> dict | None:
    """One review line as a dict, or None with a problem recorded."""
    where = f"line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        problems.append(f"{where}: cut mid-line (the file ends inside it)" if last
                        else f"{where}: not JSON")
        return None
    if not isinstance(entry, dict):
        problems.append(f"{where}: not a JSON object")
        return None
    candidate, decision = entry.get("candidate_id"), entry.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        problems.append(f"{where}: decision {str(decision)[:40]!r} is none of {', '.join(DECISIONS)}")
    elif not isinstance(candidate, str) or candidate not in rows:
        problems.append(f"{where}: candidate {candidate!r} is not in the index")
    elif decision in CONFIRMED and not str(entry.get("name") or "").strip():
        problems.append(f"{where}: {decision} without a name")
    elif decision == "known_class" and not str(entry.get("known_class") or "").strip():
        problems.append(f"{where}: known_class without the class")
    elif entry.get("mask") is not None and (why := _mask_problem(entry["mask"], rows[candidate]["mask"])):
        problems.append(f"{where}: the corrected mask {why}; the line is left out")
    else:
        return entry
    return None


def decode_mask(rle: dict) -> np.ndarray:
    """An ``(H, W)`` bool mask from COCO compressed RLE (``size`` [H, W], ``counts`` a string)."""
    from pycocotools import mask as coco_mask

    counts = rle["counts"]
    return coco_mask.decode({"size": [int(v) for v in rle["size"]],
                             "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)


def _mask_problem(mask, original: dict) -> str | None:
    """Why a reviewer's corrected mask cannot be used (not COCO RLE, not decodable, not the size of the candidate's
    own mask ``original``), or None."""
    if not isinstance(mask, dict) or not isinstance(mask.get("counts"), str) or not isinstance(mask.get("size"), list):
        return "is no COCO RLE (size [H, W] and counts as text)"
    if [int(v) for v in original["size"]] != mask["size"]:
        return f"is {mask['size']}, not the frame's size {list(original['size'])}"
    try:
        decoded = decode_mask(mask)
    except (ValueError, TypeError, KeyError, OverflowError):
        decoded = None
    if decoded is None or list(decoded.shape) != mask["size"]:
        return "cannot be decoded"
    return None


def read_reviews(folder: Path, rows: dict, identities: dict[str, str]) -> tuple[list[dict], list[str], int]:
    """The usable lines of ``MINED/reviews.jsonl`` in file order, the problems (one line each) and the number of
    lines. A line made against another run (its ``weights`` or ``model_version`` key differs from ``identities``'s)
    is refused with :class:`ReleaseError`, naming both."""
    path = folder / REVIEWS
    if not path.is_file():
        raise ReleaseError(f"{folder}: no {REVIEWS}: review the candidates first (clipomaly review {folder})")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    cut = not text.endswith("\n") and text != ""
    entries, problems = [], []
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    for number, line in numbered:
        entry = _parse(line, number, cut and number == len(lines), rows, problems)
        if entry is None:
            continue
        for key, identity in identities.items():
            if entry.get(key) not in (None, identity):
                raise ReleaseError(f"{path} line {number} was reviewed against {entry[key]}, but {folder} was "
                                   f"mined with {identity}: a release never mixes weights; review this run's own "
                                   "candidates")
        entries.append(entry)
    return entries, problems, len(numbered)


def decisions_in_force(entries: list[dict], conflicts: str) -> tuple[dict[str, Decision], list[str]]:
    """Per candidate the decision in force: each reviewer's latest line, then the latest of those. Reviewers whose
    latest decisions differ are a conflict: listed, and by ``conflicts`` the candidate is left out, the latest
    line used, or the release refused."""
    latest: dict[str, dict[str, tuple[int, dict]]] = collections.defaultdict(dict)
    for order, entry in enumerate(entries):
        latest[entry["candidate_id"]][str(entry.get("reviewer") or "")] = (order, entry)
    chosen, conflicting = {}, []
    for candidate, by_reviewer in latest.items():
        # a skip decides nothing, and accepting "Garden gnomes" says what renaming to "garden gnome" says: neither
        # makes a conflict
        said = {r: pair for r, pair in by_reviewer.items() if pair[1]["decision"] != "skip"} or by_reviewer
        verdicts = {("anomaly" if e["decision"] in CONFIRMED else e["decision"], normalise(_said_name(e)))
                    for _, e in said.values()}
        if len(verdicts) > 1:
            conflicting.append(f"{candidate}: " + "; ".join(f"{r or '?'} said {e['decision']} {_said_name(e)}".strip()
                                                           for r, (_, e) in sorted(by_reviewer.items())))
            if conflicts == "refuse":
                raise ReleaseError(f"conflicting decisions on {len(conflicting)}+ candidates, first {conflicting[0]}"
                                   ": settle them (clipomaly review --conflicts), or give --conflicts latest or "
                                   "leave-out")
            if conflicts == "leave-out":
                continue
        _, entry = max(said.values(), key=lambda pair: pair[0])
        chosen[candidate] = Decision(candidate, entry["decision"], _said_name(entry) if entry["decision"] in CONFIRMED
                                     else "", str(entry.get("known_class") or "").strip(),
                                     str(entry.get("reviewer") or ""), entry.get("mask"))
    return chosen, conflicting


def _said_name(entry: dict) -> str:
    value = entry.get("name") if entry["decision"] in CONFIRMED else entry.get("known_class")
    return str(value or "").strip()


def read_mined(folder: Path, conflicts: str = "leave-out") -> MinedRun:
    """One reviewed mined folder, read and checked (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: no such folder; give the OUT_DIR of clipomaly mine")
    rows = read_index(folder)
    fingerprint = read_fingerprint(folder)
    run = MinedRun(folder, rows, {}, weights_of_fingerprint(fingerprint), tree_hash(folder / INDEX), "")
    entries, run.problems, run.lines = read_reviews(folder, rows, {"weights": run.weights_id,
                                                                   "model_version": model_version(fingerprint)})
    run.reviews_hash = tree_hash(folder / REVIEWS)
    run.decisions, run.conflicts = decisions_in_force(entries, conflicts)
    # In force (what the release uses) and every valid line (the reviewers' work, superseded lines included).
    counts: dict = {key: collections.Counter() for key in ("decisions", "reviewers", "valid_line_decisions",
                                                          "valid_line_reviewers")}
    for decision in run.decisions.values():
        counts["decisions"][decision.decision] += 1
        counts["reviewers"][decision.reviewer] += 1
    for entry in entries:
        counts["valid_line_decisions"][entry["decision"]] += 1
        counts["valid_line_reviewers"][str(entry.get("reviewer") or "")] += 1
    run.counts = {key: dict(sorted(value.items())) for key, value in counts.items()}
    return run


def check_same_weights(runs: list[MinedRun], base_weights: dict | None, base_name: str) -> None:
    """Refuse runs mined with other weights than each other or than the release's own (``base_weights``), naming
    both."""
    first = runs[0]
    for run in runs[1:]:
        if run.weights != first.weights:
            raise ReleaseError(f"{run.folder} was mined with {run.weights_id} ({_describe(run.weights)}), "
                               f"{first.folder} with {first.weights_id} ({_describe(first.weights)}): a release "
                               "never mixes weights; release each set of weights on its own")
    if base_weights is not None and base_weights != first.weights:
        other = MinedRun(Path(base_name), {}, {}, base_weights, "", "")
        raise ReleaseError(f"{first.folder} was mined with {first.weights_id} ({_describe(first.weights)}), but "
                           f"{base_name} runs {other.weights_id} ({_describe(base_weights)}): a release never mixes "
                           "weights; mine with the release's weights, or give the matching --config")


def _describe(weights: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in weights.items() if value not in (None, "", False))
