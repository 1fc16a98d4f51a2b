"""Reading rosbag2 recordings (.mcap or .db3) with rosbags, without a ROS runtime."""

from __future__ import annotations

from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .topic_catalogue import camera_info_topic_for  # noqa: F401 - the bag tools' name for it

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagError(ValueError):
    """A bag that cannot be read, or lacks what was asked for."""


def bag_directory(path: str | Path) -> Path:
    """The rosbag2 folder for ``path`` (the folder itself, or the folder holding a .mcap/.db3 file)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise BagError(f"{path}: no such bag (give a rosbag2 folder or its .mcap/.db3 file)")
    if not (path / "metadata.yaml").is_file():
        found = sorted(p.name for p in path.iterdir())[:5]
        raise BagError(f"{path} is not a rosbag2 recording: it has no metadata.yaml ("
                       + (f"it holds {', '.join(found)}" if found else "it is empty")
                       + "); give the folder that ros2 bag record wrote")
    return path


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """``with open_bag(path) as reader:`` an opened ``AnyReader``; a missing, unreadable or damaged bag raises
    :class:`BagError`. A single-file MCAP bag whose file ends early (a recorder killed mid-write leaves no summary,
    and rosbags refuses it) opens as a :class:`CutMcapReader`: its messages up to the cut, in file order."""
    folder = bag_directory(path)
    reader = AnyReader([folder], default_typestore=get_typestore(Stores.ROS2_JAZZY))
    try:
        reader.open()
    except Exception as error:  # rosbags raises several types for broken bags
        cut = CutMcapReader.for_folder(folder)
        if cut is None:
            raise BagError(f"{folder}: cannot read the bag ({type(error).__name__}: {error}): it is truncated or "
                           "corrupt, or not a rosbag2 folder with metadata.yaml") from error
        reader = cut
    try:
        yield reader
    finally:
        reader.close()


class CutMcapReader:
    """The part of ``AnyReader`` the offline tools use, over one MCAP file that ends early: its records are read in
    file order with the ``mcap`` library's stream reader, which needs no summary. Opening scans the file once for
    its connections, message counts and times; :meth:`messages` ends at the cut by raising what the stream reader
    raises there (``mcap.exceptions.EndOfFile``), so readers can tell a cut from an end."""

    def __init__(self, file: Path):
        from mcap.records import Channel, Message, Schema

        self.file = file
        self.cut = None
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        counts: dict[int, int] = {}
        first = last = None
        try:
            for record in self._records():
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
                elif isinstance(record, Message):
                    counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                    first = record.log_time if first is None else min(first, record.log_time)
                    last = record.log_time if last is None else max(last, record.log_time)
        except Exception as error:  # noqa: BLE001 - where the file ends: what came before it is readable
            self.cut = f"{type(error).__name__}: {error}".rstrip(": ")
        if self.cut is None or first is None:
            raise ValueError(f"{file}: not a cut MCAP file with messages")
        from rosbags.interfaces import Connection, ConnectionExtRosbag2

        self.connections = [Connection(id=channel, topic=topic, msgtype=msgtype, msgdef=None, digest="",
                                       msgcount=counts.get(channel, 0), ext=ConnectionExtRosbag2("cdr", []),
                                       owner=self) for channel, (topic, msgtype) in sorted(channels.items())]
        self.start_time, self.end_time = first, last
        self._store = typestore_with_built_msgs()

    @classmethod
    def for_folder(cls, folder: Path) -> "CutMcapReader | None":
        """The reader of ``folder``'s single MCAP file when it is a cut one, else None."""
        files = sorted(folder.glob("*.mcap"))
        if len(files) != 1:
            return None
        try:
            return cls(files[0])
        except Exception:  # noqa: BLE001 - not a cut file we can read: the caller reports the original error
            return None

    def _records(self):
        from mcap.stream_reader import StreamReader

        with self.file.open("rb") as stream:
            yield from StreamReader(stream).records

    def messages(self, connections=(), start: int | None = None, stop: int | None = None):
        """``(connection, log time in ns, raw bytes)`` of ``connections`` (all when empty) in
        ``[start, stop)``, in file order; at the cut, the stream reader's error is raised."""
        from mcap.records import Message

        wanted = {c.id: c for c in (connections or self.connections)}
        for record in self._records():
            if isinstance(record, Message) and record.channel_id in wanted:
                if (start is None or record.log_time >= start) and (stop is None or record.log_time < stop):
                    yield wanted[record.channel_id], record.log_time, record.data

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
