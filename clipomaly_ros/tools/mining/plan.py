"""Which bags to mine and how to cut them into shards: one bag, one image topic, one time window each.

Plain Python over rosbags: the driver plans here, the workers only read their own shard. A shard's id is a hash
of what it covers, so the same command always plans the same shards, and a committed shard is found again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ...ros.bags import IMAGE_TYPES, BagError, bag_directory, open_bag


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``topic`` of the bag at ``bag`` (its folder, absolute) over the recorded times
    ``[start_ns, stop_ns)``. ``bag_name`` names the bag in the outputs; ``first`` and ``last`` say whether the
    window starts at the bag's beginning or ends at its end (a track seen at a window's edge elsewhere was cut
    there); ``frames`` estimates its image messages, for the progress bar."""

    bag: str
    bag_name: str
    topic: str
    msgtype: str
    start_ns: int
    stop_ns: int
    first: bool
    last: bool
    frames: int

    @property
    def id(self) -> str:
        """16 hex digits from the bag's path, the topic and the window: the same for every run of one command."""
        key = f"{self.bag}|{self.topic}|{self.start_ns}|{self.stop_ns}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_dict(cls, values: dict) -> "Shard":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BagPlan:
    """A bag found among the inputs: its ``path``, ``name``, recorded ``seconds``, image ``topics`` to mine and its
    ``shards``; or the ``failure`` that keeps it from being mined."""

    path: str
    name: str
    seconds: float = 0.0
    topics: tuple[str, ...] = ()
    shards: tuple[Shard, ...] = ()
    failure: str | None = None


def find_bags(inputs) -> tuple[list[Path], list[tuple[str, str]]]:
    """The rosbag2 folders among ``inputs`` (bag folders, their .mcap or .db3 files, or folders searched
    recursively for bags), each once, in a stable order; and ``(input, reason)`` for inputs that hold none."""
    found: dict[Path, None] = {}
    problems = []
    for given in inputs:
        path = Path(given).expanduser().resolve()
        if path.is_dir() and not (path / "metadata.yaml").is_file():
            inside = sorted(p.parent for p in path.rglob("metadata.yaml"))
            if not inside:
                problems.append((str(given), "no rosbag2 recording (a folder with metadata.yaml) in this folder"))
            found.update(dict.fromkeys(inside))
            continue
        try:
            found[bag_directory(path)] = None
        except BagError as error:
            problems.append((str(given), str(error)))
    return list(found), problems


def bag_names(paths: list[Path]) -> dict[Path, str]:
    """A short unique name per bag folder: its own name, with a few digits of its path's hash where two share it."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.name] = counts.get(path.name, 0) + 1
    return {path: path.name if counts[path.name] == 1 else
            f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}" for path in paths}


def plan_bag(path: Path, name: str, topics: list[str] | None, window_s: float) -> BagPlan:
    """Open the bag and cut each wanted image topic into windows of ``window_s`` seconds. A bag that cannot be
    opened, or has none of the wanted topics, gets a :attr:`BagPlan.failure`."""
    try:
        with open_bag(path) as reader:
            start, stop = reader.start_time, reader.end_time + 1
            images = {c.topic: c for c in reader.connections if c.msgtype in IMAGE_TYPES}
            counts = {topic: sum(c.msgcount for c in reader.connections if c.topic == topic) for topic in images}
    except BagError as error:
        return BagPlan(str(path), name, failure=str(error))
    wanted = sorted(images) if topics is None else [t for t in topics if t in images]
    if not wanted:
        have = ", ".join(f"{t} ({c.msgtype})" for t, c in sorted(images.items())) or "none"
        return BagPlan(str(path), name, seconds=(stop - start) / 1e9,
                       failure=f"none of the topics {', '.join(topics or [])} in the bag; its image topics: {have}")
    window_ns = max(1, round(window_s * 1e9))
    count = max(1, math.ceil((stop - start) / window_ns))
    shards = []
    for topic in wanted:
        for index in range(count):
            begin, end = start + index * window_ns, min(stop, start + (index + 1) * window_ns)
            shards.append(Shard(str(path), name, topic, images[topic].msgtype, begin, end, index == 0,
                                index == count - 1, max(1, round(counts[topic] * (end - begin) / (stop - start)))))
    return BagPlan(str(path), name, (stop - start) / 1e9, tuple(wanted), tuple(shards))


def plan(inputs, topics: list[str] | None = None, window_s: float = 60.0) -> tuple[list[BagPlan], list[tuple]]:
    """Every bag of ``inputs`` planned (:func:`plan_bag`), and the inputs that held no bag with the reason."""
    paths, problems = find_bags(inputs)
    names = bag_names(paths)
    return [plan_bag(path, names[path], topics, window_s) for path in paths], problems
