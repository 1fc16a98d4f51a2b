"""Reading rosbag2 recordings (.mcap or .db3) with rosbags, without a ROS runtime."""

from __future__ import annotations

import errno
import heapq
import io
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .topic_catalogue import camera_info_topic_for  # noqa: F401 - the bag tools' name for it

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagError(ValueError):
    """A bag that cannot be read, or lacks what was asked for."""


class BagDataError(Exception):
    """The bag's own bytes were found cut short or damaged while reading its messages (a reader's ``guard`` raises
    it; see the mining shard's ``truncation``)."""


NO_METADATA = "no metadata.yaml (recorder killed?)"
"""Said of a bag folder holding one MCAP file and no metadata.yaml: a recorder killed mid-write writes none."""


def metadata_missing(folder: Path) -> bool:
    """Whether ``folder`` is a recording whose recorder was killed before writing metadata.yaml: it has none, and
    exactly one .mcap file (read as a cut file by :func:`open_bag`)."""
    return not (folder / "metadata.yaml").is_file() and len(list(folder.glob("*.mcap"))) == 1


def bag_directory(path: str | Path) -> Path:
    """The rosbag2 folder for ``path`` (the folder itself, or the folder holding a .mcap/.db3 file); a folder with
    one .mcap file and no metadata.yaml counts (:func:`metadata_missing`)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise BagError(f"{path}: no such bag (give a rosbag2 folder or its .mcap/.db3 file)")
    if not (path / "metadata.yaml").is_file() and not metadata_missing(path):
        found = sorted(p.name for p in path.iterdir())[:5]
        raise BagError(f"{path} is not a rosbag2 recording: it has no metadata.yaml ("
                       + (f"it holds {', '.join(found)}" if found else "it is empty")
                       + "); give the folder that ros2 bag record wrote")
    return path


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """``with open_bag(path) as reader:`` an opened ``AnyReader``; a missing, unreadable or damaged bag raises
    :class:`BagError`, an I/O error (``OSError``: EIO, a vanished mount; also one rosbags wrapped, see
    :func:`read_failed`) passes as an ``OSError``, for the caller to try again. A single-file MCAP bag whose file ends early (a recorder killed mid-write leaves no summary, and rosbags
    refuses it) opens as a :class:`CutMcapReader`: its messages up to the cut, by time."""
    folder = bag_directory(path)
    reader = _reader_without_metadata(folder) if metadata_missing(folder) else _opened_reader(folder)
    try:
        yield reader
    finally:
        reader.close()


def _reader_without_metadata(folder: Path) -> "CutMcapReader":
    reader = CutMcapReader.for_folder(folder)
    if reader is None:
        raise BagError(f"{folder}: {NO_METADATA}, and its .mcap file does not read as a cut recording: run "
                       "ros2 bag reindex on the folder, or give the folder that ros2 bag record finished")
    reader.cut = f"{NO_METADATA}; {reader.cut}"
    return reader


def _opened_reader(folder: Path):
    reader = AnyReader([folder], default_typestore=get_typestore(Stores.ROS2_JAZZY))
    try:
        reader.open()
    except OSError:
        raise
    except Exception as error:  # rosbags raises several types for broken bags
        if read_failed(error):
            raise OSError(errno.EIO, f"{folder}: {type(error).__name__}: {error}") from error
        cut = CutMcapReader.for_folder(folder)
        if cut is None:
            raise BagError(f"{folder}: cannot read the bag ({type(error).__name__}: {error}): it is truncated or "
                           "corrupt, or not a rosbag2 folder with metadata.yaml") from error
        return cut
    return reader


def read_failed(error: BaseException) -> bool:
    """Whether ``error``, as rosbags raised it, wraps a failed read (an ``OSError`` among its causes and contexts,
    or SQLite's "disk I/O error"): the disk, not the bag, so the caller may try again."""
    seen = 0
    while error is not None and seen < 8:
        text = str(error).lower()
        if isinstance(error, OSError) or "disk i/o error" in text or "could not read metadata" in text:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


@dataclass(frozen=True)
class RecordGroup:
    """Complete records of a cut MCAP file, read together: one chunk, or one message outside any chunk. The bytes
    ``[begin, end)`` of the file; the log times of its messages ``[first_ns, last_ns]``; its messages per channel."""

    begin: int
    end: int
    first_ns: int
    last_ns: int
    counts: dict


@dataclass
class CutIndex:
    """What one scan of a cut MCAP file found up to its cut: topic and type per channel, the :class:`RecordGroup`
    list in file order, the byte offset where the complete records end (``cut_offset``) and what the reader raised
    there (``cut``)."""

    channels: dict
    groups: list
    cut_offset: int
    cut: str


def index_cut_mcap(file: Path) -> CutIndex:
    """Scan ``file`` once, chunk by chunk (each decompressed and its checksum checked once), up to the first record
    that cannot be read. An ``OSError`` (the disk, not the file) propagates: the caller tries again."""
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    groups: list[RecordGroup] = []
    with file.open("rb") as stream:
        offset, cut = stream.tell(), ""
        try:
            for record in StreamReader(stream, emit_chunks=True).records:
                inner = breakup_chunk(record, validate_crc=True) if isinstance(record, Chunk) else [record]
                messages = [r for r in inner if isinstance(r, Message)]
                for item in inner:
                    if isinstance(item, Schema):
                        schemas[item.id] = item.name
                    elif isinstance(item, Channel):
                        channels[item.id] = (item.topic, schemas.get(item.schema_id, ""))
                if messages:
                    counts: dict[int, int] = {}
                    for message in messages:
                        counts[message.channel_id] = counts.get(message.channel_id, 0) + 1
                    times = [message.log_time for message in messages]
                    groups.append(RecordGroup(offset, stream.tell(), min(times), max(times), counts))
                offset = stream.tell()
        except OSError:
            raise
        except Exception as error:  # noqa: BLE001 - where the file ends: what came before it is readable
            cut = f"{type(error).__name__}: {error}".rstrip(": ")
    return CutIndex(channels, groups, offset, cut)


_CUT_INDEXES: dict[tuple[str, int, int], CutIndex] = {}


class CutMcapReader:
    """The part of ``AnyReader`` the offline tools use, over one MCAP file that ends early: no summary, so the file
    is indexed by one scan (:func:`index_cut_mcap`, once a process per file version) and :meth:`messages` then
    reads only the chunks that hold the asked times and channels, never past the cut. ``cut`` says what the reader
    met at the cut; ``cut_offset`` is where the complete records end."""

    def __init__(self, file: Path, index: CutIndex | None = None):
        from rosbags.interfaces import Connection, ConnectionExtRosbag2

        self.file = file
        status = file.stat()
        key = (str(file.resolve()), status.st_size, status.st_mtime_ns)
        if index is None:
            index = _CUT_INDEXES.get(key) or index_cut_mcap(file)
        if not index.cut or not index.groups:
            raise ValueError(f"{file}: not a cut MCAP file with messages")
        _CUT_INDEXES[key] = index
        self._key = key
        self.index, self.cut, self.cut_offset = index, index.cut, index.cut_offset
        counts: dict[int, int] = {}
        for group in index.groups:
            for channel, count in group.counts.items():
                counts[channel] = counts.get(channel, 0) + count
        self.connections = [Connection(id=channel, topic=topic, msgtype=msgtype, msgdef=None, digest="",
                                       msgcount=counts.get(channel, 0), ext=ConnectionExtRosbag2("cdr", []),
                                       owner=self) for channel, (topic, msgtype) in sorted(index.channels.items())]
        self.start_time = min(group.first_ns for group in index.groups)
        self.end_time = max(group.last_ns for group in index.groups)
        self._store = typestore_with_built_msgs()

    @classmethod
    def for_folder(cls, folder: Path) -> "CutMcapReader | None":
        """The reader of ``folder``'s single MCAP file when it is a cut one, else None. An ``OSError`` propagates."""
        files = sorted(folder.glob("*.mcap"))
        if len(files) != 1:
            return None
        try:
            return cls(files[0])
        except OSError:
            raise
        except Exception:  # noqa: BLE001 - not a cut file we can read: the caller reports the original error
            return None

    def forget_index(self) -> None:
        """Drop this file's kept index, so the next reader scans the file again (its scan read differently from
        another's: the disk, not the file)."""
        _CUT_INDEXES.pop(self._key, None)

    def messages(self, connections=(), start: int | None = None, stop: int | None = None):
        """``(connection, log time in ns, raw bytes)`` of ``connections`` (all when empty) in ``[start, stop)``, by
        log time; only the chunks that overlap the window and hold one of the channels are read."""
        wanted = {c.id: c for c in (connections or self.connections)}
        low = -1 if start is None else start
        high = 1 << 64 if stop is None else stop
        groups = [g for g in self.index.groups if g.last_ns >= low and g.first_ns < high
                  and any(channel in wanted for channel in g.counts)]
        with self.file.open("rb") as stream:
            sources = [self._lazy_group(stream, group, wanted, low, high) for group in groups]
            for log_time, _, channel, data in heapq.merge(*sources):
                if channel is not None:  # not a group's marker
                    yield wanted[channel], log_time, data

    def _lazy_group(self, stream, group: RecordGroup, wanted: dict, low: int, high: int):
        """A marker at the group's first time, then its messages: ``heapq.merge`` reads and decompresses a group
        only once the merge reaches its time, so a window holds the groups that overlap in time, not all of them."""
        yield max(group.first_ns, low), -1 - group.begin, None, None
        yield from self._group_messages(stream, group, wanted, low, high)

    @staticmethod
    def _group_messages(stream, group: RecordGroup, wanted: dict, low: int, high: int) -> list:
        """The wanted messages of one group in ``[low, high)`` as ``(log time, offset, channel, data)``, sorted."""
        from mcap.data_stream import ReadDataStream
        from mcap.opcode import Opcode
        from mcap.records import Chunk, Message
        from mcap.stream_reader import breakup_chunk

        stream.seek(group.begin)
        records = ReadDataStream(io.BytesIO(stream.read(group.end - group.begin)))
        opcode, length = records.read1(), records.read8()
        if opcode == Opcode.CHUNK:
            inner = breakup_chunk(Chunk.read(records), validate_crc=True)
        else:
            inner = [Message.read(records, length)]
        found = [(r.log_time, group.begin, r.channel_id, r.data) for r in inner
                 if isinstance(r, Message) and r.channel_id in wanted and low <= r.log_time < high]
        return sorted(found, key=lambda item: item[0])

    def deserialize(self, raw: bytes, msgtype: str):
        return self._store.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        pass


BUILT_MESSAGE_PACKAGES = ("vision_msgs", "tf2_msgs", "autoware_perception_msgs")
"""The message packages not in rosbags' Jazzy store (nor on the package index): their field-only definitions lie in
``clipomaly_ros/data/<package>/msg``, from which scripts/setup_ros.sh builds them for rclpy too."""


def typestore_with_built_msgs():
    """A Jazzy typestore with the types of :data:`BUILT_MESSAGE_PACKAGES`, registered from their .msg text: an
    independent reader of what the node and the offline tools write."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for package in BUILT_MESSAGE_PACKAGES:
        for entry in resources.files("clipomaly_ros").joinpath(f"data/{package}/msg").iterdir():
            if entry.name.endswith(".msg"):
                types.update(get_types_from_msg(entry.read_text(), f"{package}/msg/{entry.name[:-4]}"))
    store.register(types)
    return store


def image_connections(reader: AnyReader, topic: str | None):
    """The image connections to read: ``topic`` if given (must be an image topic), else the only image topic."""
    images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
    if topic is not None:
        chosen = [c for c in images if c.topic == topic]
        if not chosen:
            available = ", ".join(f"{c.topic} ({c.msgtype})" for c in images) or "none"
            raise BagError(f"no image topic '{topic}' in the bag; image topics: {available}")
        return chosen
    topics = sorted({c.topic for c in images})
    if len(topics) != 1:
        raise BagError(f"the bag has {len(topics)} image topics ({', '.join(topics) or 'none'}): choose one with "
                       "--image-topic")
    return [c for c in images if c.topic == topics[0]]


CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


def camera_info_connections(reader: AnyReader, image_topic: str, topic: str | None = None):
    """``(connections, topic)``: the camera_info connections for ``image_topic`` (``topic`` if given, which must
    then be in the bag, else the image topic's sibling, which may be absent: then no connections)."""
    wanted = topic or camera_info_topic_for(image_topic)
    found = [c for c in reader.connections if c.topic == wanted and c.msgtype == CAMERA_INFO_TYPE]
    if topic is not None and not found:
        available = ", ".join(sorted({c.topic for c in reader.connections if c.msgtype == CAMERA_INFO_TYPE}))
        raise BagError(f"no camera_info topic '{topic}' in the bag; camera_info topics: {available or 'none'}")
    return found, wanted


TF_TYPE = "tf2_msgs/msg/TFMessage"


def transform_connections(reader: AnyReader):
    """``(static, dynamic)``: the bag's ``/tf_static`` and ``/tf`` connections of type tf2_msgs/TFMessage."""
    transforms = [c for c in reader.connections if c.msgtype == TF_TYPE]
    return [c for c in transforms if c.topic == "/tf_static"], [c for c in transforms if c.topic == "/tf"]
