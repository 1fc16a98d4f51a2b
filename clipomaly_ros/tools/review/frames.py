"""Full frames read back from the bags by the index's frame reference (the bag's path, the topic, the best
frame's header stamp), written as PNG: ``clipomaly frames`` and the page's full-frame view."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from ...ros.bags import BagError, open_bag
from ...ros.decoding import BadRecordedFrame, decode_recorded, deserialize_recorded
from .index import MinedIndex, frame_key



def bag_paths(index: MinedIndex) -> dict[str, str]:
    """Bag name -> its path, from the index's ``source_path`` column or else ``summary.json``'s bags."""
    found = {row["bag"]: row["source_path"] for row in index.rows if row.get("source_path")}
    summary = index.folder / "summary.json"
    if summary.is_file():
        for bag in json.loads(summary.read_text()).get("per_bag", []):
            found.setdefault(bag["bag"], bag["path"])
    return found


def extract_frames(index: MinedIndex, rows: list[dict], out_dir: Path, problems: list[str] | None = None) -> int:
    """Write the full frame of each row as ``out_dir/<frame key>.png`` (frames already there are kept); the
    number written. A bag that cannot be read or a frame not found in it is reported in ``problems``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = problems if problems is not None else []
    paths = bag_paths(index)
    wanted: dict[str, dict[tuple[str, int], str]] = {}
    for row in rows:
        key = frame_key(row)
        if not (out_dir / f"{key}.png").is_file():
            wanted.setdefault(row["bag"], {})[(row["topic"], row["best_stamp_ns"])] = key
    written = 0
    for bag, frames in sorted(wanted.items()):
        if bag not in paths:
            problems.append(f"{bag}: the index names no path for this bag")
            continue
        try:
            written += _frames_of_bag(paths[bag], frames, out_dir, problems)
        except BagError as error:
            problems.append(str(error))
    return written


def _frames_of_bag(path: str, frames: dict[tuple[str, int], str], out_dir: Path, problems: list[str]) -> int:
    from ...ros.messages import stamp_ns  # here: the messages module brings torch, which the review server avoids

    left, written = dict(frames), 0
    with open_bag(path) as reader:
        connections = [c for c in reader.connections if c.topic in {topic for topic, _ in frames}]
        for connection, _, raw in reader.messages(connections=connections):
            try:
                message = deserialize_recorded(reader, raw, connection.msgtype)
                key = left.pop((connection.topic, stamp_ns(message.header)), None)
                if key is None:
                    continue
                image = decode_recorded(message, connection.msgtype)
            except BadRecordedFrame as error:
                problems.append(f"{path} {connection.topic}: {error}")
                continue
            cv2.imwrite(str(out_dir / f"{key}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            written += 1
            if not left:
                break
    problems.extend(f"{path} {topic}: no frame stamped {stamp} ns" for topic, stamp in sorted(left))
    return written
