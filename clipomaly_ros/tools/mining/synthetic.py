"""A small synthetic fleet: bags with known anomalies at known stamps, raw and compressed, for the tests, the
bench and a first try of ``clipomaly mine`` without real drives (toy backend colours)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..scenes import render_street
from ...ros.bags import camera_info_topic_for

FIRST_STAMP_NS = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class Appearance:
    """``name`` in view on ``topic`` of bag ``bag`` from frame ``first`` to frame ``last`` (inclusive), drifting
    right one pixel a frame from ``box`` ((x0, y0, x1, y1) at its first frame)."""

    bag: str
    topic: str
    name: str
    first: int
    last: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class StandingAppearance:
    """``name`` standing on the flat ground in front of a calibrated camera (:data:`CAMERA`) on ``topic``, from
    frame ``first`` to frame ``last``: its front middle ``x`` m ahead (closing at ``speed`` m/s from the first
    frame) and ``y`` m left, ``width`` by ``height`` m. The bag records the camera's camera_info beside the images."""

    bag: str
    topic: str
    name: str
    first: int
    last: int
    x: float
    y: float
    speed: float
    width: float
    height: float

    def position(self, index: int) -> tuple[float, float]:
        """(x, y) of its front middle at frame ``index``, in base_link metres."""
        return self.x - self.speed * (index - self.first) / RATE_HZ, self.y


CAMERA = dict(width=640, height=360, focal=500.0)
"""The calibrated camera of :class:`StandingAppearance` topics, mounted as the ``camera_*`` defaults say (1.5 m up
at base_link's origin, level)."""

FLEET = (
    Appearance("drive_a", "/front/image_raw", "mattress", 3, 15, (120, 150, 200, 200)),
    Appearance("drive_a", "/front/image_raw", "deer", 24, 36, (90, 140, 150, 210)),
    Appearance("drive_b", "/rear/image_raw/compressed", "tire", 2, 12, (140, 160, 190, 210)),
    Appearance("drive_b", "/rear/image_raw/compressed", "dog", 22, 35, (180, 150, 240, 200)),
    Appearance("drive_c", "/front/image_raw", "mattress", 4, 14, (60, 150, 140, 200)),
    Appearance("drive_c", "/rear/image_raw/compressed", "cardboard box", 25, 37, (150, 150, 210, 205)),
    StandingAppearance("drive_d", "/front/image_raw", "tire", 5, 30, 12.0, 0.6, 1.5, 1.0, 0.6),
)
"""Four seconds a topic at 10 frames/s; with 2 s windows every appearance lies inside one shard but drive_d's
tyre, which crosses a border (two rows, marked cut)."""
FRAMES, RATE_HZ, SIZE = 40, 10.0, (240, 320)


def appearance_stamps(appearance: Appearance) -> tuple[int, int]:
    """The first and last stamps (ns) at which ``appearance`` is in view."""
    period = round(1e9 / RATE_HZ)
    return FIRST_STAMP_NS + appearance.first * period, FIRST_STAMP_NS + appearance.last * period


SQLITE_BAGS = ("drive_b",)
"""Bags written as .db3 (the others as .mcap): both storages are mined."""


def write_fleet(folder: Path, fleet=FLEET, frames: int = FRAMES) -> list[Path]:
    """One rosbag2 folder per bag of ``fleet`` under ``folder`` (sqlite3 for :data:`SQLITE_BAGS`, else mcap), each
    topic ``frames`` frames at :data:`RATE_HZ`; topics ending in ``/compressed`` carry JPEG. Returns the bag
    folders."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bags = sorted({a.bag for a in fleet})
    period = round(1e9 / RATE_HZ)
    for bag in bags:
        mine = [a for a in fleet if a.bag == bag]
        storage = StoragePlugin.SQLITE3 if bag in SQLITE_BAGS else StoragePlugin.MCAP
        with Writer(folder / bag, version=9, storage_plugin=storage) as writer:
            topics = sorted({a.topic for a in mine})
            connections = {topic: writer.add_connection(
                topic, "sensor_msgs/msg/CompressedImage" if topic.endswith("/compressed") else "sensor_msgs/msg/Image",
                typestore=store) for topic in topics}
            calibrated = {a.topic for a in mine if isinstance(a, StandingAppearance)}
            infos = {topic: writer.add_connection(camera_info_topic_for(topic), "sensor_msgs/msg/CameraInfo",
                                                  typestore=store) for topic in sorted(calibrated)}
            for index in range(frames):
                stamp = FIRST_STAMP_NS + index * period
                for topic in topics:
                    header = types["std_msgs/msg/Header"](
                        stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                        frame_id="camera")
                    in_view = [a for a in mine if a.topic == topic and a.first <= index <= a.last]
                    if topic in calibrated:
                        image = _perspective_frame(in_view, index)
                        writer.write(infos[topic], stamp, store.serialize_cdr(_camera_info(types, header),
                                                                              "sensor_msgs/msg/CameraInfo"))
                    else:
                        objects = [(a.name, (a.box[0] + index - a.first, a.box[1], a.box[2] + index - a.first,
                                             a.box[3])) for a in in_view]
                        image, _ = render_street(*SIZE, objects, seed=index)
                    if topic.endswith("/compressed"):
                        jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                            [cv2.IMWRITE_JPEG_QUALITY, 92])[1]
                        message = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                                           data=jpeg.ravel())
                    else:
                        height, width = image.shape[:2]
                        message = types["sensor_msgs/msg/Image"](header=header, height=height, width=width,
                                                                 encoding="rgb8", is_bigendian=0, step=width * 3,
                                                                 data=image.reshape(-1).copy())
                    writer.write(connections[topic], stamp, store.serialize_cdr(message, message.__msgtype__))
    return [folder / bag for bag in bags]


def _camera():
    from ...core.scene.geometry import CameraModel

    k = np.array([[CAMERA["focal"], 0, CAMERA["width"] / 2], [0, CAMERA["focal"], CAMERA["height"] / 2], [0, 0, 1]])
    return CameraModel(CAMERA["width"], CAMERA["height"], k, np.zeros(5))


def _perspective_frame(in_view, index: int) -> np.ndarray:
    from ...core.scene.geometry import CameraMounting
    from ..scenes import StandingObject, render_perspective_street

    objects = [StandingObject(a.name, *a.position(index), a.width, a.height) for a in in_view]
    image, _ = render_perspective_street(_camera(), CameraMounting(), objects, seed=index)
    return image


def _camera_info(types, header):
    camera = _camera()
    return types["sensor_msgs/msg/CameraInfo"](
        header=header, height=camera.height, width=camera.width, distortion_model="plumb_bob", d=np.zeros(5),
        k=camera.k.ravel(), r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


VEHICLE_TOPIC = "/front/image_raw"
VEHICLE_FRAMES = ("base_link", "camera_link", "camera_optical_frame")
"""The frames a vehicle bag's /tf_static chains: base_link -> camera_link (1.5 m up, level) -> the optical frame
the images are stamped in."""


def write_vehicle_bag(path: Path, frames: int = FRAMES, rate_hz: float = RATE_HZ, size: tuple[int, int] = SIZE,
                      appearances=(), storage: str = "mcap", plain_frames: bool = False) -> Path:
    """One rosbag2 folder at ``path`` as a vehicle records it: every frame an image on :data:`VEHICLE_TOPIC`
    (``size`` (height, width) pixels, ``rate_hz`` frames a second) beside its camera_info, /tf (odom -> base_link,
    driving at 10 m/s) at the frame rate, and /tf_static (:data:`VEHICLE_FRAMES`) once at the start. The
    :class:`Appearance` entries of ``appearances`` on that topic are drawn as :func:`write_fleet` draws them;
    ``plain_frames``: one rendered street for every frame (a long bag written fast). ``storage``: mcap or sqlite3."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ...ros.bags import typestore_with_built_msgs

    store = typestore_with_built_msgs()
    period = round(1e9 / rate_hz)
    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    plain = render_street(*size, [], seed=0)[0] if plain_frames else None
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_topic = writer.add_connection(VEHICLE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        info_topic = writer.add_connection(camera_info_topic_for(VEHICLE_TOPIC), "sensor_msgs/msg/CameraInfo",
                                           typestore=store)
        tf_topic = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=store)
        static_topic = writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=store)
        writer.write(static_topic, FIRST_STAMP_NS, store.serialize_cdr(_static_transforms(store, FIRST_STAMP_NS),
                                                                       "tf2_msgs/msg/TFMessage"))
        for index in range(frames):
            stamp = FIRST_STAMP_NS + index * period
            header = _header(store, stamp, VEHICLE_FRAMES[-1])
            objects = [(a.name, (a.box[0] + index - a.first, a.box[1], a.box[2] + index - a.first, a.box[3]))
                       for a in appearances if a.topic == VEHICLE_TOPIC and a.first <= index <= a.last]
            image = plain if plain is not None else render_street(*size, objects, seed=index)[0]
            message = store.types["sensor_msgs/msg/Image"](header=header, height=size[0], width=size[1],
                                                           encoding="rgb8", is_bigendian=0, step=size[1] * 3,
                                                           data=image.reshape(-1).copy())
            writer.write(info_topic, stamp, store.serialize_cdr(_sized_camera_info(store, header, size),
                                                                "sensor_msgs/msg/CameraInfo"))
            writer.write(image_topic, stamp, store.serialize_cdr(message, "sensor_msgs/msg/Image"))
            writer.write(tf_topic, stamp, store.serialize_cdr(_odometry(store, stamp, index / rate_hz * 10.0),
                                                              "tf2_msgs/msg/TFMessage"))
    return path


def _header(store, stamp: int, frame_id: str):
    types = store.types
    return types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)


def _transform(store, stamp: int, parent: str, child: str, translation, quaternion):
    types = store.types
    return types["geometry_msgs/msg/TransformStamped"](
        header=_header(store, stamp, parent), child_frame_id=child,
        transform=types["geometry_msgs/msg/Transform"](
            translation=types["geometry_msgs/msg/Vector3"](**dict(zip("xyz", map(float, translation)))),
            rotation=types["geometry_msgs/msg/Quaternion"](**dict(zip("xyzw", map(float, quaternion))))))


def _static_transforms(store, stamp: int):
    base, link, optical = VEHICLE_FRAMES
    return store.types["tf2_msgs/msg/TFMessage"](transforms=[
        _transform(store, stamp, base, link, (0.0, 0.0, 1.5), (0.0, 0.0, 0.0, 1.0)),
        _transform(store, stamp, link, optical, (0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5))])


def _odometry(store, stamp: int, x_m: float):
    return store.types["tf2_msgs/msg/TFMessage"](transforms=[
        _transform(store, stamp, "odom", VEHICLE_FRAMES[0], (x_m, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))])


def _sized_camera_info(store, header, size: tuple[int, int]):
    """The camera_info of a level pinhole camera of ``size`` (height, width) pixels, focal length its width."""
    height, width = size
    k = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=float)
    types = store.types
    return types["sensor_msgs/msg/CameraInfo"](
        header=header, height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5), k=k.ravel(),
        r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
