"""Test helpers: toy frames and rosbag2 files written with rosbags."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from clipomaly_ros.core.scenes import render_street_scene

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
