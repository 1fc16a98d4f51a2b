"""CVAT for images 1.1 XML, both ways: one ``<image>`` per full frame, one ``<mask>`` per candidate with CVAT's
run lengths over its box (``rle``, ``left``, ``top``, ``width``, ``height``) and attributes ``candidate_id``,
``score``, ``reported`` and ``decision`` (empty until reviewed; set it in CVAT to reject or skip).

Reading back: a mask with a ``decision`` attribute says that decision; otherwise a label changed from the
candidate's name says known_class (a known class) or rename; an unchanged label without a decision is no decision.
The mask drawn in CVAT becomes the decision's mask when it differs. The reviewer is the task's owner when the file
names one."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from . import decisions, masks
from .formats import (FormatError, ImportOutcome, decision_from_label, frame_file, label_names, reviewed_name,
                      with_mask)
from .index import MinedIndex

ATTRIBUTES = ("candidate_id", "score", "reported", "decision")


def cvat_document(index: MinedIndex, latest: dict[str, dict]) -> ElementTree.ElementTree:
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    task = ElementTree.SubElement(ElementTree.SubElement(root, "meta"), "task")
    ElementTree.SubElement(task, "name").text = f"clipomaly review of {index.folder.name}"
    size = ElementTree.SubElement(task, "size")   # CVAT's task size counts frames (images), set below
    labels = ElementTree.SubElement(task, "labels")
    for name in label_names(index):
        label = ElementTree.SubElement(labels, "label")
        ElementTree.SubElement(label, "name").text = name
        ElementTree.SubElement(label, "type").text = "mask"
        attributes = ElementTree.SubElement(label, "attributes")
        for attribute in ATTRIBUTES:
            entry = ElementTree.SubElement(attributes, "attribute")
            ElementTree.SubElement(entry, "name").text = attribute
            ElementTree.SubElement(entry, "input_type").text = "text"
    images: dict[str, ElementTree.Element] = {}
    for row in index.rows:
        height, width = row["mask"]["size"]
        image = images.get(frame_file(row))
        if image is None:
            image = images[frame_file(row)] = ElementTree.SubElement(root, "image", {
                "id": str(len(images)), "name": frame_file(row), "width": str(width), "height": str(height)})
        decision = latest.get(row["candidate_id"])
        runs, (left, top, box_width, box_height) = masks.box_runs(masks.decode((decision or {}).get("mask")
                                                                               or row["mask"]))
        element = ElementTree.SubElement(image, "mask", {
            "label": reviewed_name(row, decision), "source": "auto", "occluded": "0",
            "rle": ", ".join(map(str, runs)), "left": str(left), "top": str(top), "width": str(box_width),
            "height": str(box_height), "z_order": "0"})
        values = (row["candidate_id"], f"{row['peak_score']:.6f}", str(row.get("reported", True) is not False).lower(),
                  decision["decision"] if decision else "")
        for name, value in zip(ATTRIBUTES, values):
            ElementTree.SubElement(element, "attribute", {"name": name}).text = value
    size.text = str(len(images))
    return ElementTree.ElementTree(root)


def export_cvat(index: MinedIndex, latest: dict[str, dict], output: Path) -> str:
    document = cvat_document(index, latest)
    ElementTree.indent(document)
    document.write(output, encoding="utf-8", xml_declaration=True)
    return f"wrote {output}: CVAT for images 1.1, {len(index.rows)} masks"


def _mask_of(element: ElementTree.Element, image: ElementTree.Element):
    try:
        runs = [int(v) for v in element.get("rle", "").split(",")]
        box = tuple(int(float(element.get(key))) for key in ("left", "top", "width", "height"))
        return masks.from_box_runs(runs, box, int(image.get("height")), int(image.get("width")))
    except (TypeError, ValueError) as error:
        raise masks.MaskError(f"a mask's rle or box is not numbers ({error})") from None


def import_cvat(index: MinedIndex, path: Path, reviewer: str) -> ImportOutcome:
    """Decisions from a CVAT for images 1.1 file exported after review."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise FormatError(f"{path} is not XML ({error})") from None
    if root.tag != "annotations":
        raise FormatError(f"{path} is no CVAT for images file (its root is <{root.tag}>, not <annotations>)")
    owner = root.findtext("meta/task/owner/username") or root.findtext("meta/job/owner/username") or reviewer
    time = root.findtext("meta/task/updated") or root.findtext("meta/job/updated")
    outcome = ImportOutcome()
    for image in root.iter("image"):
        for element in image.iter("mask"):
            attributes = {a.get("name"): (a.text or "").strip() for a in element.iter("attribute")}
            row = index.by_id.get(attributes.get("candidate_id"))
            if row is None:
                outcome.unknown_candidates.append(str(attributes.get("candidate_id"))[:60])
                continue
            try:
                outcome.lines.extend(_decision(index, row, element, image, attributes, owner, time, outcome))
            except (decisions.DecisionError, masks.MaskError) as error:
                outcome.problems.append(f"mask of {row['candidate_id']}: {error}")
    return outcome


def _decision(index, row, element, image, attributes, reviewer, time, outcome) -> list[dict]:
    label, said = element.get("label", ""), attributes.get("decision", "")
    mask = _mask_of(element, image)
    extra = {"source": "cvat import"}
    if said in ("reject", "skip"):
        return [decisions.make_decision(row["candidate_id"], said, reviewer=reviewer, time=time, **extra)]
    if not said and label == row["name"]:
        outcome.without_decision += 1
        return []
    if said and said not in decisions.DECISIONS:
        raise decisions.DecisionError(f"decision {said!r} is not one of {', '.join(decisions.DECISIONS)}")
    return [with_mask(outcome, decision_from_label(index, row, label, reviewer, time, **extra), row, mask)]
