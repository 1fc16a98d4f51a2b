"""The node's maps and pictures as ``sensor_msgs/Image`` fields, without ROS: an array's fields in the machine's
byte order, which map each image output publishes, and handing the bytes to rclpy without a copy. Used by
:class:`~.messages.MessageFactory`, which builds the messages."""

from __future__ import annotations

import array as pyarray
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..core.method.results import AnomalyRecord, SegmentationResult


@dataclass(frozen=True)
class ImageFields:
    """The fields of a ``sensor_msgs/Image`` for an array: ``data`` is the row-major bytes as a uint8 array."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


OUTPUT_DTYPES = {"mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1), "rgb8": (np.uint8, 3)}


def array_to_image_fields(array: np.ndarray, encoding: str) -> ImageFields:
    """Image fields for ``array`` ((H, W) or (H, W, 3)) in ``encoding`` (mono8, mono16, 32FC1, rgb8), in the
    machine's byte order."""
    dtype, channels = OUTPUT_DTYPES[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.ndim != (2 if channels == 1 else 3):
        raise ValueError(f"{encoding} needs a {'(H, W)' if channels == 1 else '(H, W, 3)'} array, got {array.shape}")
    height, width = array.shape[:2]
    return ImageFields(height=height, width=width, encoding=encoding, is_bigendian=int(sys.byteorder == "big"),
                       step=width * channels * array.itemsize, data=array.reshape(-1).view(np.uint8))


MAP_OUTPUTS = ("anomaly_score", "semantic", "anomaly_mask", "anomaly_instances")
"""The image outputs that publish one of the result's maps (:func:`map_image`); the score first, as making it makes
the semantic map too."""


def map_image(name: str, result: SegmentationResult, published: list[AnomalyRecord]) -> tuple[np.ndarray, str]:
    """The array and encoding that image output ``name`` (one of :data:`MAP_OUTPUTS`) publishes for ``result``."""
    if name == "semantic":
        return result.semantic, "mono16"
    if name == "anomaly_score":
        return result.anomaly_score, "32FC1"
    if name == "anomaly_mask":
        return result.anomaly_mask.view(np.uint8) * np.uint8(255), "mono8"
    if name == "anomaly_instances":
        return published_instances(result, published), "mono16"
    raise KeyError(f"no map output {name!r}: {', '.join(MAP_OUTPUTS)}")


def published_instances(result: SegmentationResult, published: list[AnomalyRecord]) -> np.ndarray:
    """The ``anomaly_instances`` image: ``(H, W)`` uint16 where pixel value k (k >= 1) belongs to
    ``published[k - 1]``, the k-th detection of ``anomalies`` with the same stamp, and 0 to everything else
    (anomalies not published included)."""
    lookup = np.zeros(max((r.id for r in result.anomalies), default=0) + 1, dtype=np.uint16)
    for position, record in enumerate(published, start=1):
        lookup[record.id] = position
    if np.array_equal(lookup, np.arange(len(lookup))):  # every instance published, in id order: the map itself
        return result.instances
    return lookup[result.instances]


def share_data(message: Any, data: np.ndarray, copy: Callable[[np.ndarray], Any]) -> None:
    """Set an rclpy message's ``uint8[]`` field ``data`` to the uint8 array ``data`` itself, without a copy.

    rclpy's setter copies anything but an ``array.array`` (a 1280x720 frame's seven images are ~14 MB, 1-2 ms of
    copying on a small CPU), while its C serialiser reads any object with the buffer protocol. So the array goes
    into the field's slot as it is; ``data`` must not change until the message is published (the maps are fresh
    per frame and never written again). A message class without that slot gets ``copy(data)`` through its
    setter."""
    if "_data" in getattr(type(message), "__slots__", ()):
        message._data = data
    else:
        message.data = copy(data)


def uint8_array(array: np.ndarray) -> pyarray.array:
    """The bytes of a contiguous numpy array as the ``array.array('B')`` that rclpy keeps for ``uint8[]``: the
    one copy message building makes."""
    data = pyarray.array("B")
    data.frombytes(memoryview(array).cast("B"))
    return data
