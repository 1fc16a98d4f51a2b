"""The mined index as the review sees it: ``MINED/anomalies.parquet`` read into candidates (one per row) sorted by
score, with what the page and the exports need from ``run.json`` (the known classes, the model version) and the
names offered for renaming (the naming dictionary, the anomaly vocabulary and the names in the index)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from ...core.config import CITYSCAPES_CLASSES, ClipomalyConfig
from ..run_identity import model_version, run_fingerprint

INDEX_FOLDER = "anomalies.parquet"
NEEDED = ("candidate_id", "mask", "name", "candidates", "peak_score", "bag", "topic", "best_stamp_ns", "box",
          "on_road", "distance_m", "lateral_m", "thumbnail", "frames")
SHOWN = ("candidate_id", "name", "peak_score", "bag", "topic", "best_stamp_ns", "box", "on_road", "distance_m",
         "lateral_m", "thumbnail", "frames", "reported", "bag_id")


class MinedFolderError(ValueError):
    """The mined folder cannot be reviewed (one line: what is missing and what to do)."""


@dataclass
class MinedIndex:
    """A mined folder's candidates: ``rows`` (index rows as dicts, best score first), ``by_id`` (candidate id ->
    row), ``known_classes``, ``names`` (what renaming offers) and ``model_version`` (from the run's settings)."""

    folder: Path
    rows: list[dict]
    by_id: dict[str, dict]
    known_classes: tuple[str, ...]
    names: tuple[str, ...]
    model_version: str

    def shown(self, row: dict) -> dict:
        """What the page shows of a row (no mask: the page asks for an outline when it shows the frame)."""
        item = {key: row.get(key) for key in SHOWN}
        item["candidates"] = [[c["name"], round(c["score"], 4)] for c in row.get("candidates") or []][:8]
        if item["reported"] is None:
            item["reported"] = True
        return item


def load_index(folder: Path) -> MinedIndex:
    """Read ``folder/anomalies.parquet`` (and ``run.json`` when there). Raises :class:`MinedFolderError` when the folder
    is no mined output, or was mined (wholly, or in some shards a later run resumed) before the index carried
    candidate ids and masks."""
    folder = Path(folder)
    parquet = folder / INDEX_FOLDER
    if not parquet.is_dir():
        raise MinedFolderError(f"{folder} has no {INDEX_FOLDER}: give the OUT_DIR of 'clipomaly mine'")
    dataset = ds.dataset(parquet, format="parquet", partitioning=_partitioning(parquet))
    missing = [name for name in NEEDED if name not in dataset.schema.names]
    if missing:
        raise MinedFolderError(f"{parquet} lacks the column(s) {', '.join(missing)}: it was mined by an older version; "
                          "mine the drives again into a new OUT_DIR (or with --force-new)")
    columns = [name for name in dataset.schema.names if name in set(NEEDED) | set(SHOWN) | {"source_path"}]
    rows = dataset.to_table(columns=columns).to_pylist()
    older = sum(1 for row in rows if not row["candidate_id"] or not row["mask"])
    if older:
        raise MinedFolderError(f"{parquet}: {older} of {len(rows)} rows have no candidate_id or mask: their shards "
                               "were mined by an older version; mine again into a new OUT_DIR (or with --force-new)")
    rows.sort(key=lambda row: (-(row["peak_score"] or 0.0), row["candidate_id"]))
    by_id = {row["candidate_id"]: row for row in rows}
    if len(by_id) != len(rows):
        raise MinedFolderError(f"{parquet} holds a candidate_id twice: the index is damaged; mine again into a new "
                               "OUT_DIR")
    settings = _run_settings(folder)
    known = tuple(settings.get("known_classes") or CITYSCAPES_CLASSES)
    vocabulary = tuple(settings.get("anomaly_vocabulary") or ClipomalyConfig().anomaly_vocabulary)
    dictionary = shipped_dictionary()
    names = tuple(sorted({*dictionary, *vocabulary, *(row["name"] for row in rows)} - set(known)))
    return MinedIndex(folder, rows, by_id, known, names, model_version(run_fingerprint(folder)))


def _partitioning(parquet: Path) -> ds.Partitioning:
    """The index's hive partitioning (``bag=<name>/``, and ``bag_id=<id>/`` where mining writes it) with every key a
    string: inferred, a content id of digits alone would be read as a number."""
    first = next(parquet.rglob("*.parquet"), None)
    keys = [part.split("=", 1)[0] for part in first.relative_to(parquet).parts[:-1]] if first else []
    return ds.partitioning(pa.schema([(key, pa.string()) for key in keys]), flavor="hive")


def shipped_dictionary() -> list[str]:
    """The naming dictionary shipped with the package (read as text: the vocabulary module would bring torch into
    a server that needs none of it)."""
    text = resources.files("clipomaly_ros").joinpath("data/naming_dictionary.txt").read_text()
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _run_settings(folder: Path) -> dict:
    return run_fingerprint(folder) or {}


def frame_key(row: dict) -> str:
    """A file-name-safe key of a row's full frame (its bag, topic and best stamp): candidates seen in one frame
    share it."""
    topic = row["topic"].strip("/").replace("/", "_")
    return f"{row.get('bag_id') or row['bag']}_{topic}_{row['best_stamp_ns']}"
