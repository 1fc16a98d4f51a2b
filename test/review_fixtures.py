"""A mined folder made without mining, for the review's tests: ``anomalies.parquet`` in the index's schema with
candidate ids and masks, thumbnails, and (optionally) the full frames the page shows."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from clipomaly_ros.tools.mining.report import ROW_SCHEMA, write_index
from clipomaly_ros.tools.review import masks
from clipomaly_ros.tools.review.index import frame_key

HEIGHT, WIDTH = 48, 64
NAMES = ("mattress", "tire", "deer", "cardboard box", "traffic cone")


def island_mask(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A mask with a hole and two islands, placed by ``index``."""
    mask = np.zeros((height, width), dtype=bool)
    top, left = 4 + index % 7, 3 + index % 11
    mask[top:top + 18, left:left + 20] = True
    mask[top + 6:top + 10, left + 6:left + 11] = False
    mask[height - 9:height - 3, width - 15 - index % 5:width - 4] = True
    mask[1, width - 1] = True
    return mask


def write_mined(folder: Path, count: int = 12, bags: int = 2, frames: bool = True, unreported_every: int = 4,
                shared_thumbnail: bool = False) -> list[dict]:
    """``count`` candidates over ``bags`` bags into ``folder`` (a mined folder's layout); the rows written. Every
    ``unreported_every``-th is one naming dropped; ``shared_thumbnail``: one thumbnail file for all (big indexes)."""
    folder = Path(folder)
    (folder / "thumbnails").mkdir(parents=True, exist_ok=True)
    thumbnail = cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))[1].tobytes()
    rows = []
    for index in range(count):
        mask = island_mask(index)
        name = NAMES[index % len(NAMES)]
        bag = f"drive{index % bags}"
        stamp = 1_700_000_000_000_000_000 + index * 100_000_000
        key = "shared" if shared_thumbnail else f"{index:016x}-{index}"
        rows.append({
            "bag": bag, "topic": "/camera/image_raw", "shard": f"{index:016x}", "track": index,
            "first_stamp_ns": stamp, "last_stamp_ns": stamp, "best_stamp_ns": stamp, "frames": 3, "name": name,
            "candidates": [{"name": name, "score": 0.7}, {"name": "rock", "score": 0.2}],
            "peak_score": round(1.0 - index / (count + 1), 6), "mean_score": 0.5,
            "box": list(masks.box_of(mask)), "on_road": index % 2 == 0, "distance_m": 10.0 + index,
            "lateral_m": 0.5, "cut_at_start": False, "cut_at_end": False, "thumbnail": f"thumbnails/{key}.jpg",
            "tags": [], "candidate_id": f"c{index:05d}", "mask": masks.encode(mask),
            "reported": index % unreported_every != unreported_every - 1 if unreported_every else True,
            "bag_id": f"id-{bag}", "source_path": str(folder / "bags" / bag)})
        (folder / "thumbnails" / f"{key}.jpg").write_bytes(thumbnail)
        if frames:
            (folder / "frames").mkdir(exist_ok=True)
            picture = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
            picture[mask] = (200, 120, 40)
            cv2.imwrite(str(folder / "frames" / f"{frame_key(rows[-1])}.png"), picture)
    write_index(folder, pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
    (folder / "run.json").write_text(json.dumps({"fingerprint": {"model": "ViT-B-16", "known_classes": [
        "road", "sidewalk", "car", "person"], "anomaly_vocabulary": ["tire", "rock"]}}))
    return rows
