"""Test helpers: toy frames and rosbag2 files written with rosbags."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from clipomaly_ros.tools.scenes import render_street_scene

STORE = get_typestore(Stores.ROS2_JAZZY)
FIRST_STAMP_NS = 1_700_000_000_000_000_000


def toy_frames(count: int, height: int = 240, width: int = 320, planted=("mattress", "tire", None, "deer")):
    """``count`` (image, planted name, truth mask) toy scenes, cycling through ``planted``."""
    frames = []
    for index in range(count):
        name = planted[index % len(planted)]
        image, truth = render_street_scene(height, width, planted=name, seed=index)
        frames.append((image, name, truth))
    return frames


def image_message(image: np.ndarray, stamp_ns: int, frame_id: str = "camera", compressed: bool = False,
                  store=STORE):
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)
    if compressed:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        return store.types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=jpeg.ravel())
    height, width = image.shape[:2]
    return store.types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding="rgb8",
                                                 is_bigendian=0, step=width * 3, data=image.reshape(-1).copy())


def write_image_bag(path: Path, images, topic: str = "/camera/image_raw", period_ns: int = 100_000_000,
                    compressed: bool = False, storage: str = "mcap") -> list[int]:
    """Write ``images`` as one image topic; returns the stamps (ns), which equal the record times."""
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    stamps = []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=STORE)
        for index, image in enumerate(images):
            stamp = FIRST_STAMP_NS + index * period_ns
            message = image_message(image, stamp, compressed=compressed)
            writer.write(connection, stamp, STORE.serialize_cdr(message, msgtype))
            stamps.append(stamp)
    return stamps


def malformed_images(count: int, seed: int = 0):
    """``count`` malformed camera messages of many kinds, as (kind, message fields): raw ``Image`` fields or
    compressed ``CompressedImage`` fields (``format``, ``data``). Each kind is a way real fuzzing broke nodes."""
    import struct
    import zlib

    rng = np.random.default_rng(seed)
    good = render_street_scene(48, 64, planted="tire", seed=seed)[0]
    ok, jpeg = cv2.imencode(".jpg", good)
    ok, png = cv2.imencode(".png", good)
    jpeg, png = jpeg.tobytes(), png.tobytes()

    def png_bomb(width, height):
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        return b"\x89PNG\r\n\x1a\n" + chunk + bytes(32)

    def jpeg_bomb(width, height):
        at = jpeg.index(b"\xff\xc0") + 5
        return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]

    raw = {
        "truncated data": lambda: dict(height=48, width=64, encoding="rgb8", step=192,
                                       data=good.tobytes()[: int(rng.integers(0, 9000))]),
        "wrong step": lambda: dict(height=48, width=64, encoding="rgb8", step=int(rng.integers(1, 191)),
                                   data=good.tobytes()),
        "zero size": lambda: dict(height=0, width=int(rng.integers(0, 64)), encoding="rgb8", step=0, data=b""),
        "absurd size": lambda: dict(height=int(rng.integers(2**16, 2**31)), width=int(rng.integers(2**16, 2**31)),
                                    encoding="rgb8", step=3 * 2**16, data=bytes(64)),
        "unsupported encoding": lambda: dict(height=48, width=64, encoding=str(rng.choice(["yuv422", "bayer_rggb8",
                                                                                          "32FC1", "nv21"])),
                                             step=128, data=bytes(48 * 128)),
        "misspelled encoding": lambda: dict(height=48, width=64, encoding=str(rng.choice(["RGB8", "rgb 8", "rbg8",
                                                                                         "bgr", ""])),
                                            step=192, data=good.tobytes()),
        "big-endian mono16": lambda: dict(height=48, width=64, encoding="mono16", is_bigendian=1, step=128,
                                          data=rng.integers(0, 255, 48 * 128, dtype=np.uint8).tobytes()),
        "junk bytes": lambda: dict(height=int(rng.integers(1, 64)), width=int(rng.integers(1, 64)),
                                   encoding="rgb8", step=int(rng.integers(0, 300)),
                                   data=rng.integers(0, 255, int(rng.integers(0, 500)), dtype=np.uint8).tobytes()),
    }
    compressed = {
        "junk jpeg": lambda: dict(format="jpeg", data=rng.integers(0, 255, int(rng.integers(1, 2000)),
                                                                   dtype=np.uint8).tobytes()),
        "truncated jpeg": lambda: dict(format="jpeg", data=jpeg[: int(rng.integers(1, len(jpeg) - 1))]),
        "truncated png": lambda: dict(format="png", data=png[: int(rng.integers(1, len(png) - 1))]),
        "flipped bytes jpeg": lambda: dict(format="jpeg", data=bytes(b ^ 0xFF if rng.random() < 0.02 else b
                                                                     for b in jpeg)),
        "size-bomb png": lambda: dict(format="png", data=png_bomb(int(rng.integers(5000, 100000)),
                                                                  int(rng.integers(5000, 100000)))),
        "size-bomb jpeg": lambda: dict(format="jpeg", data=jpeg_bomb(65000, 65000)),
        "unsupported format": lambda: dict(format=str(rng.choice(["h264", "tiff", "gif"])), data=jpeg),
        "empty": lambda: dict(format="jpeg", data=b""),
    }
    messages = []
    for index in range(count):
        table = raw if index % 2 == 0 else compressed
        kind = list(table)[(index // 2) % len(table)]
        messages.append((kind, table[kind]()))
    return messages


@contextlib.contextmanager
def deterministic_torch(threads: int = 2):
    """Training inside is repeatable: deterministic algorithms and a fixed thread count (float sums are split
    across threads, so their order, and the last bits, depend on it); both restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(previous)


MOUNTED_CAMERA = dict(x=1.2, y=-0.2, z=1.6, roll=0.0, pitch=0.04, yaw=0.02)
"""Where the camera of :func:`mounted_drive` sits in base_link: nowhere near the camera_* parameters' defaults, so
only a mounting read from the transforms places its anomalies right."""


def mounted_drive(frames: int = 30, rate_hz: float = 10.0):
    """A drive seen by a 640x360 camera (focal 500 px) at :data:`MOUNTED_CAMERA`: a mattress (2.0 x 0.8 m) 0.6 m
    left of the path, 22 m ahead at first and closing at 4 m/s, and from 1 s on a deer (0.8 x 1.2 m) crossing 13 m
    ahead from left to right at 2.5 m/s. Returns ``(camera, mounting, [(stamp_ns, image, {name: (x, y)})])`` with
    each object's front middle in base_link."""
    from clipomaly_ros.core.scene.geometry import CameraModel, CameraMounting
    from clipomaly_ros.tools.scenes import StandingObject, render_perspective_street

    camera = CameraModel(640, 360, np.array([[500.0, 0, 320], [0, 500, 180], [0, 0, 1]]), np.zeros(5))
    mounting = CameraMounting(**MOUNTED_CAMERA)
    drive = []
    for index in range(frames):
        t = index / rate_hz
        objects = [StandingObject("mattress", 22.0 - 4.0 * t, 0.6, 2.0, 0.8)]
        if t >= 1.0:
            objects.append(StandingObject("deer", 13.0, 3.5 - 2.5 * (t - 1.0), 0.8, 1.2))
        image, _ = render_perspective_street(camera, mounting, objects, seed=index)
        drive.append((FIRST_STAMP_NS + round(index * 1e9 / rate_hz), image, {o.name: (o.x, o.y) for o in objects}))
    return camera, mounting, drive


def static_transforms(mounting, store=STORE, stamp_ns: int = FIRST_STAMP_NS):
    """A ``tf2_msgs/TFMessage`` as robot_state_publisher sends it on /tf_static: base_link -> camera_link at
    ``mounting`` (body frame), camera_link -> camera_optical_frame (REP 103's optical rotation)."""
    from scipy.spatial.transform import Rotation

    types = store.types
    time = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)

    def stamped(parent, child, translation, quaternion):
        return types["geometry_msgs/msg/TransformStamped"](
            header=types["std_msgs/msg/Header"](stamp=time, frame_id=parent), child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](
                translation=types["geometry_msgs/msg/Vector3"](**dict(zip("xyz", map(float, translation)))),
                rotation=types["geometry_msgs/msg/Quaternion"](**dict(zip("xyzw", map(float, quaternion))))))

    body = Rotation.from_euler("xyz", [mounting.roll, mounting.pitch, mounting.yaw]).as_quat()
    return types["tf2_msgs/msg/TFMessage"](transforms=[
        stamped("base_link", "camera_link", mounting.position, body),
        stamped("camera_link", "camera_optical_frame", (0, 0, 0), (-0.5, 0.5, -0.5, 0.5))])
