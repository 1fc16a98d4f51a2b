"""The labelling tools' formats both ways: ``clipomaly export MINED --format`` and ``clipomaly import FILE --into
MINED`` pick the format's module here (COCO, Label Studio, CVAT; FiftyOne for export only)."""

from __future__ import annotations

from pathlib import Path

from . import decisions
from .coco import export_coco, import_coco
from .cvat import export_cvat, import_cvat
from .fiftyone_export import export_fiftyone
from .formats import FormatError, ImportOutcome, load_json
from .index import MinedIndex
from .label_studio import export_tasks, import_tasks

FORMATS = ("coco", "label-studio", "cvat", "fiftyone")


def export(index: MinedIndex, kind: str, output: Path) -> str:
    """Write the index (with the latest decisions) as ``kind`` to ``output``; what was written, in a line."""
    latest = decisions.read_log(index.folder).latest
    if kind == "coco":
        return export_coco(index, latest, output)
    if kind == "label-studio":
        return export_tasks(index, latest, output)
    if kind == "cvat":
        return export_cvat(index, latest, output)
    if kind == "fiftyone":
        return export_fiftyone(index, latest, output)
    raise FormatError(f"--format must be one of {', '.join(FORMATS)}, got {kind!r}")


def detect(path: Path) -> str:
    """The format of a file to import: CVAT's XML, a COCO instances JSON, or Label Studio's tasks JSON."""
    head = path.read_bytes()[:4096].lstrip()
    if head.startswith(b"<"):
        return "cvat"
    data = load_json(path)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return "coco"
    if isinstance(data, list) and all(isinstance(task, dict) and "data" in task for task in data):
        return "label-studio"
    raise FormatError(f"{path} is neither CVAT XML, COCO instances JSON nor Label Studio tasks JSON: give --format")


def import_file(index: MinedIndex, path: Path, kind: str | None, reviewer: str) -> ImportOutcome:
    """Read a tool's file into decision lines (not yet appended), leaving out those not later than what
    ``reviews.jsonl`` already holds on their candidate (:meth:`ImportOutcome.keep_newer`)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path} is not a file: give the file the labelling tool exported")
    kind = kind or detect(path)
    if kind == "coco":
        outcome = import_coco(index, load_json(path), reviewer)
    elif kind == "label-studio":
        outcome = import_tasks(index, load_json(path), reviewer)
    elif kind == "cvat":
        outcome = import_cvat(index, path, reviewer)
    else:
        raise FormatError(f"import reads coco, label-studio or cvat, not {kind!r}")
    outcome.keep_newer(decisions.read_log(index.folder))
    # Each line says which weights' candidates it decided, so a release can refuse it in another run's folder.
    outcome.lines = [line | {"model_version": index.model_version} for line in outcome.lines]
    return outcome
