"""``--format fiftyone``: a FiftyOne dataset of the mined frames, one detection with its mask per candidate, the
review decision as the detection's tag. Only where ``fiftyone`` is installed (its database needs a download at
install time, so it is no dependency of this package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from . import masks
from .formats import FormatError, frame_file, reviewed_name
from .index import MinedIndex


def export_fiftyone(index: MinedIndex, latest: dict[str, dict], output: Path) -> str:
    """A persistent FiftyOne dataset named after ``output``'s last part; the frames must have been extracted
    (``clipomaly frames MINED -o MINED/frames``)."""
    if importlib.util.find_spec("fiftyone") is None:
        raise FormatError("--format fiftyone needs the fiftyone package (pip install fiftyone); the other formats "
                          "need nothing more")
    import fiftyone as fo

    samples: dict[str, fo.Sample] = {}
    for row in index.rows:
        path = index.folder / frame_file(row)
        sample = samples.setdefault(str(path), fo.Sample(filepath=str(path), detections=fo.Detections(detections=[])))
        decision = latest.get(row["candidate_id"])
        mask = masks.decode((decision or {}).get("mask") or row["mask"])
        box = masks.box_of(mask)
        if box is None:
            continue
        left, top, width, height = box
        frame_height, frame_width = mask.shape
        sample["detections"].detections.append(fo.Detection(
            label=reviewed_name(row, decision), confidence=row["peak_score"],
            bounding_box=[left / frame_width, top / frame_height, width / frame_width, height / frame_height],
            mask=mask[top:top + height, left:left + width], candidate_id=row["candidate_id"],
            tags=[decision["decision"]] if decision else []))
    dataset = fo.Dataset(Path(output).name, overwrite=True, persistent=True)
    dataset.add_samples(list(samples.values()))
    return f"made the FiftyOne dataset {dataset.name!r}: {len(samples)} frames, {len(index.rows)} detections"
