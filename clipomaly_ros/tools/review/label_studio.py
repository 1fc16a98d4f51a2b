"""Label Studio's tasks JSON, both ways. Export: one task per candidate (``data``: the frame's path, the
candidate id, bag, topic, stamp and name) with our mask as a ``predictions`` brush (``brushlabels``, RLE, with
``model_version`` and ``score``), and beside it the labelling configuration those tasks need. Import: the tasks
exported after review; each task's latest annotation becomes a decision with its reviewer, time and
``lead_time``.

Reading a reviewed annotation: a ``decision`` choice of ``reject`` or ``skip`` says so; otherwise the brush's
label is a known class (known_class), the candidate's name (accept) or a new name (rename), and the brush is the
mask. An annotation with no result is a reject; a cancelled (skipped) one is a skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from . import decisions, masks
from .formats import (FormatError, ImportOutcome, decision_from_label, frame_file, label_names, reviewed_name,
                      with_mask)
from .index import MinedIndex

BRUSH, IMAGE, CHOICE = "label", "image", "decision"
"""The names in the labelling configuration: the brush labels, the image and the decision choices."""


def tasks(index: MinedIndex, latest: dict[str, dict]) -> list[dict]:
    """One task per candidate, our mask as its prediction."""
    found = []
    for number, row in enumerate(index.rows, start=1):
        height, width = row["mask"]["size"]
        decision = latest.get(row["candidate_id"])
        brush = masks.brush_encode(masks.decode(row["mask"]))
        found.append({
            "id": number,
            "data": {IMAGE: frame_file(row), "candidate_id": row["candidate_id"], "bag": row["bag"],
                     "topic": row["topic"], "stamp_ns": row["best_stamp_ns"], "name": row["name"],
                     "reviewed_name": reviewed_name(row, decision) if decision else None},
            "predictions": [{"model_version": index.model_version, "score": row["peak_score"], "result": [{
                "id": row["candidate_id"][:10], "from_name": BRUSH, "to_name": IMAGE, "type": "brushlabels",
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"format": "rle", "rle": brush, "brushlabels": [row["name"]]}}]}]})
    return found


def label_config(index: MinedIndex) -> str:
    """The labelling configuration for the exported tasks: a brush per name (:func:`~.formats.label_names`) and the
    reject / skip choices."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in label_names(index))
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n  <BrushLabels name="{BRUSH}" toName="{IMAGE}">\n'
            f'{labels}\n  </BrushLabels>\n  <Choices name="{CHOICE}" toName="{IMAGE}">\n'
            f'    <Choice value="reject"/>\n    <Choice value="skip"/>\n  </Choices>\n</View>\n')


def export_tasks(index: MinedIndex, latest: dict[str, dict], output: Path) -> str:
    output = Path(output)
    output.write_text(json.dumps(tasks(index, latest)))
    config = output.with_suffix(".label_config.xml")
    config.write_text(label_config(index))
    return f"wrote {output} ({len(index.rows)} tasks with our masks as predictions) and its labelling config {config}"


def _reviewer(annotation: dict, fallback: str) -> str:
    who = annotation.get("created_username") or annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return str(who).strip() if who not in (None, "") else fallback


def _latest_annotation(task: dict) -> dict | None:
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    return max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""), default=None)


def annotation_decision(index: MinedIndex, row: dict, annotation: dict, reviewer: str) -> tuple[dict, object]:
    """One reviewed annotation as a decision line and the mask it drew (None when it drew none)."""
    who, time = _reviewer(annotation, reviewer), annotation.get("updated_at") or annotation.get("created_at")
    lead = annotation.get("lead_time")
    extra = {"seconds": lead, "lead_time": lead, "source": "label-studio import"}
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
    chosen = [c for r in results if r.get("type") == "choices" for c in r.get("value", {}).get("choices", [])]
    if annotation.get("was_cancelled") or "skip" in chosen:
        return decisions.make_decision(row["candidate_id"], "skip", reviewer=who, time=time, **extra), None
    brushes = [r for r in results if r.get("type") == "brushlabels"]
    if "reject" in chosen or not brushes:
        return decisions.make_decision(row["candidate_id"], "reject", reviewer=who, time=time, **extra), None
    labels = brushes[0]["value"].get("brushlabels") or [row["name"]]
    mask = None
    for brush in brushes:
        drawn = masks.brush_decode(brush["value"]["rle"], int(brush["original_height"]), int(brush["original_width"]))
        mask = drawn if mask is None else mask | drawn
    return decision_from_label(index, row, labels[0], who, time, **extra), mask


def import_tasks(index: MinedIndex, document, reviewer: str) -> ImportOutcome:
    """Decisions from Label Studio's export of reviewed tasks (JSON: a list of tasks with ``annotations``)."""
    if not isinstance(document, list):
        raise FormatError("a Label Studio export must be a JSON list of tasks")
    outcome = ImportOutcome()
    for task in document:
        data = task.get("data") if isinstance(task, dict) else None
        row = index.by_id.get(data.get("candidate_id")) if isinstance(data, dict) else None
        if row is None:
            outcome.unknown_candidates.append(str(data.get("candidate_id") if isinstance(data, dict) else task)[:60])
            continue
        annotation = _latest_annotation(task)
        if annotation is None:
            outcome.without_decision += 1
            continue
        try:
            line, mask = annotation_decision(index, row, annotation, reviewer)
            outcome.lines.append(with_mask(outcome, line, row, mask))
        except (decisions.DecisionError, masks.MaskError, KeyError, TypeError, ValueError) as error:
            outcome.problems.append(f"task {task.get('id')}: {type(error).__name__}: {error}")
    return outcome
