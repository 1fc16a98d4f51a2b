"""Which bags to mine and how to cut them into shards: one bag, one image topic, one time window each.

Plain Python over rosbags: the driver plans here, the workers only read their own shard. A shard's id is a hash
of the bag's content identity (:func:`bag_identity`), its topic and window, so the same bags plan the same shards
wherever they are mounted, and a committed shard is found again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...ros.bags import (IMAGE_TYPES, BagError, CutMcapReader, bag_directory, index_cut_mcap, metadata_missing,
                         open_bag)

IDENTITY_BYTES = 1 << 20
"""How much of each storage file's head and tail the bag identity hashes (1 MiB)."""


@dataclass(frozen=True)
class Shard:
    """One unit of work: ``topic`` of the bag at ``bag`` (its folder, absolute: where it is read this run) over the
    recorded times ``[start_ns, stop_ns)``. ``bag_name`` names the bag in the outputs; ``bag_id`` is its content
    identity and ``lineage`` that of its beginning (see :func:`bag_identity`); ``first`` and ``last`` say whether
    the window starts at the bag's beginning or ends at its end (a track seen at a window's edge elsewhere was cut
    there); ``frames`` estimates its image messages, for the progress bar; ``cut_offset`` is the byte where a cut
    MCAP file's complete records end as planning found it (-1: the bag is whole), which the worker's own scan must
    match."""

    bag: str
    bag_name: str
    topic: str
    msgtype: str
    start_ns: int
    stop_ns: int
    first: bool
    last: bool
    frames: int
    bag_id: str
    lineage: str
    cut_offset: int = -1

    @property
    def id(self) -> str:
        """16 hex digits from the bag's content identity, the topic and the window: the same for every run over the
        same bags, wherever they are mounted."""
        key = f"{self.bag_id}|{self.topic}|{self.start_ns}|{self.stop_ns}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_dict(cls, values: dict) -> "Shard":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass(frozen=True)
class BagPlan:
    """A bag found among the inputs: its ``path``, ``name``, recorded ``seconds``, image ``topics`` to mine and its
    ``shards``; or the ``failure`` that keeps it from being mined. ``bag_id`` and ``lineage``: see
    :func:`bag_identity`."""

    path: str
    name: str
    bag_id: str = ""
    lineage: str = ""
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
        if path.is_dir() and not (path / "metadata.yaml").is_file() and not metadata_missing(path):
            inside = sorted({p.parent for p in path.rglob("metadata.yaml")}
                            | {p.parent for p in path.rglob("*.mcap") if metadata_missing(p.parent)})
            if not inside:
                problems.append((str(given), "no rosbag2 recording (a folder with metadata.yaml, or one .mcap "
                                             "file) in this folder"))
            found.update(dict.fromkeys(inside))
            continue
        try:
            found[bag_directory(path)] = None
        except BagError as error:
            problems.append((str(given), str(error)))
    return list(found), problems


def bag_identity(folder: Path, reader) -> tuple[str, str]:
    """``(bag_id, lineage)``, 16 hex digits each, from the bag's content, not its path: ``bag_id`` from the
    recording's start time, its topics, types and message counts, and a hash of the first and last
    :data:`IDENTITY_BYTES` of each storage file with its size; ``lineage`` from the start time and the first file's
    head only (for .db3, its first messages: see :func:`_first_messages_hash`). A bag whose end moved (recovered,
    grown, still uploading) keeps its lineage and gets another id."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".mcap", ".db3") and p.is_file())
    ends = []
    for file in files:
        size = file.stat().st_size
        with file.open("rb") as stream:
            head = hashlib.sha256(stream.read(IDENTITY_BYTES)).hexdigest()
            stream.seek(max(0, size - IDENTITY_BYTES))
            ends.append((size, head, hashlib.sha256(stream.read()).hexdigest()))
    topics = sorted((c.topic, c.msgtype, c.msgcount) for c in reader.connections)
    first_head = ends[0][1] if ends else ""
    if files and files[0].suffix == ".db3":
        first_head = _first_messages_hash(reader)
    content = json.dumps([reader.start_time, topics, ends])
    return (hashlib.sha1(content.encode()).hexdigest()[:16],
            hashlib.sha1(f"{reader.start_time}|{first_head}".encode()).hexdigest()[:16])


LINEAGE_MESSAGES = 16
"""How many of a .db3 bag's first messages its lineage hashes."""


def _first_messages_hash(reader) -> str:
    """The hash of a bag's first :data:`LINEAGE_MESSAGES` messages (topic, time, bytes). A .db3 file's first bytes
    are no lineage: SQLite rewrites its header and b-tree pages near the file's start as rows are added."""
    digest = hashlib.sha256()
    for connection, timestamp, raw in itertools.islice(reader.messages(), LINEAGE_MESSAGES):
        digest.update(f"{connection.topic}|{timestamp}|".encode())
        digest.update(bytes(raw))
    return digest.hexdigest()


def bag_names(paths: list[Path], ids: dict[Path, str]) -> dict[Path, str]:
    """A short unique name per bag folder: its own name, with a few digits of its content id (``ids``) where two
    share it."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.name] = counts.get(path.name, 0) + 1
    return {path: path.name if counts[path.name] == 1 else f"{path.name}-{ids.get(path, '')[:6]}" for path in paths}


@dataclass(frozen=True)
class BagSurvey:
    """What planning needs from an opened bag: its recorded ``[start, stop)`` (ns), its image connections by
    topic, each topic's message count, its identity (:func:`bag_identity`) and, for a cut MCAP file, where its
    complete records end (``cut_offset``, -1 for a whole bag)."""

    start: int
    stop: int
    images: dict
    counts: dict
    bag_id: str
    lineage: str
    cut_offset: int = -1


def survey_bag(path: Path, retries: int = 2, backoff_s: float = 1.0) -> BagSurvey:
    """Open the bag and survey it. An I/O error (``OSError``) is tried again ``retries`` times, ``backoff_s``
    apart and twice as long each time, as a shard's error is; a cut MCAP file is indexed twice, and accepted as
    cut only where both scans find its cut at the same byte. Raises :class:`BagError` for a bag that cannot be
    read, and the last ``OSError`` when every attempt failed."""
    for attempt in range(retries + 1):
        try:
            with open_bag(path) as reader:
                cut_offset = -1
                if isinstance(reader, CutMcapReader):
                    again = index_cut_mcap(reader.file)
                    cut_offset = reader.cut_offset
                    if again.cut_offset != reader.cut_offset:
                        reader.forget_index()  # the next attempt scans afresh, not the kept first scan
                        raise OSError(f"{reader.file}: the file reads differently twice (cut at byte "
                                      f"{reader.cut_offset}, then {again.cut_offset}): an I/O problem, not a cut")
                images = {c.topic: c for c in reader.connections if c.msgtype in IMAGE_TYPES}
                counts = {topic: sum(c.msgcount for c in reader.connections if c.topic == topic)
                          for topic in images}
                bag_id, lineage = bag_identity(bag_directory(path), reader)
                return BagSurvey(reader.start_time, reader.end_time + 1, images, counts, bag_id, lineage,
                                 cut_offset)
        except OSError:
            if attempt == retries:
                raise
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def plan_bag(path: Path, topics: list[str] | None, window_s: float, retries: int = 2,
             backoff_s: float = 1.0) -> BagPlan:
    """Survey the bag (:func:`survey_bag`) and cut each wanted image topic into windows of ``window_s`` seconds;
    named after the bag's folder (:func:`plan` makes the names unique). A bag that cannot be read, whose every
    read failed, or that has none of the wanted topics, gets a :attr:`BagPlan.failure`."""
    name = path.name
    try:
        bag = survey_bag(path, retries, backoff_s)
    except BagError as error:
        return BagPlan(str(path), name, failure=str(error))
    except OSError as error:
        return BagPlan(str(path), name, failure=f"{path}: every read failed ({retries + 1} attempt(s)): "
                                                f"{type(error).__name__}: {error}; run the same command again")
    start, stop, images = bag.start, bag.stop, bag.images
    wanted = sorted(images) if topics is None else [t for t in topics if t in images]
    if not wanted:
        have = ", ".join(f"{t} ({c.msgtype})" for t, c in sorted(images.items())) or "none"
        return BagPlan(str(path), name, bag.bag_id, bag.lineage, seconds=(stop - start) / 1e9,
                       failure=f"none of the topics {', '.join(topics or [])} in the bag; its image topics: {have}")
    window_ns = max(1, round(window_s * 1e9))
    count = max(1, math.ceil((stop - start) / window_ns))
    shards = []
    for topic in wanted:
        for index in range(count):
            begin, end = start + index * window_ns, min(stop, start + (index + 1) * window_ns)
            shards.append(Shard(str(path), name, topic, images[topic].msgtype, begin, end, index == 0,
                                index == count - 1, max(1, round(bag.counts[topic] * (end - begin) / (stop - start))),
                                bag.bag_id, bag.lineage, bag.cut_offset))
    return BagPlan(str(path), name, bag.bag_id, bag.lineage, (stop - start) / 1e9, tuple(wanted), tuple(shards))


def plan(inputs, topics: list[str] | None = None, window_s: float = 60.0, retries: int = 2,
         backoff_s: float = 1.0) -> tuple[list[BagPlan], list[tuple]]:
    """Every bag of ``inputs`` planned (:func:`plan_bag`, I/O errors tried again ``retries`` times), named uniquely,
    and the inputs that held no bag with the reason."""
    paths, problems = find_bags(inputs)
    plans = {path: plan_bag(path, topics, window_s, retries, backoff_s) for path in paths}
    names = bag_names(paths, {path: bag.bag_id for path, bag in plans.items()})
    return [_renamed(plans[path], names[path]) for path in paths], problems


def _renamed(bag: BagPlan, name: str) -> BagPlan:
    shards = tuple(dataclasses.replace(shard, bag_name=name) for shard in bag.shards)
    return dataclasses.replace(bag, name=name, shards=shards)
