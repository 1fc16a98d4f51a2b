"""COCO instances JSON with RLE masks, both ways. One image per full frame (``frames/<key>.png``), one category per
reviewed name (the rejected candidates under :data:`REJECTED`, never as positives of a name), one annotation per
candidate carrying ``candidate_id``, ``name`` (mining's), ``score``, ``model_version``, ``reported`` and, when
reviewed, ``review`` (the latest decision line)."""

from __future__ import annotations

import json
from pathlib import Path

from pycocotools import mask as coco_mask

from . import decisions, masks
from .formats import FormatError, ImportOutcome, frame_file, reviewed_name, with_mask
from .index import MinedIndex

REJECTED = "rejected"
"""The category of the candidates a reviewer rejected (nothing there): kept for the round trip, never a positive of
an anomaly's name."""


def coco_document(index: MinedIndex, latest: dict[str, dict]) -> dict:
    """The instances document of every candidate."""
    images: dict[str, dict] = {}
    categories: dict[str, int] = {}
    annotations = []
    for row in index.rows:
        height, width = row["mask"]["size"]
        image = images.setdefault(frame_file(row), {
            "id": len(images) + 1, "file_name": frame_file(row), "height": height, "width": width,
            "bag": row["bag"], "topic": row["topic"], "stamp_ns": row["best_stamp_ns"]})
        decision = latest.get(row["candidate_id"])
        rejected = bool(decision) and decision["decision"] == "reject"
        category = categories.setdefault(REJECTED if rejected else reviewed_name(row, decision), len(categories) + 1)
        mask = masks.decode((decision or {}).get("mask") or row["mask"])
        left, top, box_width, box_height = masks.box_of(mask) or (0, 0, 0, 0)
        annotation = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                      "segmentation": (decision or {}).get("mask") or row["mask"], "area": int(mask.sum()),
                      "bbox": [left, top, box_width, box_height], "iscrowd": 0,
                      "candidate_id": row["candidate_id"], "name": row["name"], "score": row["peak_score"],
                      "model_version": index.model_version, "reported": row.get("reported", True) is not False}
        if decision:
            annotation["review"] = decision
        annotations.append(annotation)
    return {"info": {"description": f"candidates mined by clipomaly ({index.folder.name})",
                     "version": index.model_version, "date_created": decisions.utc_now()},
            "images": list(images.values()),
            "categories": [{"id": number, "name": name, "supercategory": REJECTED if name == REJECTED else "anomaly"}
                           for name, number in categories.items()],
            "annotations": annotations}


def export_coco(index: MinedIndex, latest: dict[str, dict], output: Path) -> str:
    document = coco_document(index, latest)
    Path(output).write_text(json.dumps(document))
    return (f"wrote {output}: {len(document['annotations'])} annotations on {len(document['images'])} frames, "
            f"{sum('review' in a for a in document['annotations'])} reviewed")


def segmentation_mask(segmentation, height: int, width: int):
    """A COCO segmentation (RLE, compressed or not, or polygons) as a (height, width) bool mask."""
    if isinstance(segmentation, dict):
        return masks.decode(segmentation)
    if isinstance(segmentation, list) and all(isinstance(p, list) and len(p) >= 6 for p in segmentation):
        return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))).astype(bool)
    raise masks.MaskError("a segmentation must be an RLE object or a list of polygons")


def import_coco(index: MinedIndex, document: dict, reviewer: str) -> ImportOutcome:
    """Decisions from the annotations that carry ``candidate_id`` and ``review`` (``review.decision`` and, for
    rename and known_class, its ``name`` / ``known_class``); their segmentation becomes a corrected mask when it
    differs from the index's."""
    outcome = ImportOutcome()
    if not isinstance(document.get("annotations"), list):
        raise FormatError("a COCO file's 'annotations' must be a list")
    for number, annotation in enumerate(document["annotations"], start=1):
        row = index.by_id.get(annotation.get("candidate_id")) if isinstance(annotation, dict) else None
        if row is None:
            outcome.unknown_candidates.append(str(annotation.get("candidate_id") if isinstance(annotation, dict)
                                                  else annotation)[:60])
            continue
        review = annotation.get("review")
        if not isinstance(review, dict) or "decision" not in review:
            outcome.without_decision += 1
            continue
        try:
            line = decisions.make_decision(
                row["candidate_id"], review["decision"], reviewer=review.get("reviewer") or reviewer,
                name=review.get("name") or (row["name"] if review["decision"] == "accept" else None),
                known_class=review.get("known_class"), seconds=review.get("seconds"), time=review.get("time"),
                known_classes=index.known_classes, source="coco import")
            mask = None
            if "segmentation" in annotation:
                mask = segmentation_mask(annotation["segmentation"], *row["mask"]["size"])
            outcome.lines.append(with_mask(outcome, line, row, mask))
        except (decisions.DecisionError, masks.MaskError) as error:
            outcome.problems.append(f"annotation {number}: {error}")
    return outcome
