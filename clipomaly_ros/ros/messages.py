"""Conversions between ROS messages and numpy arrays, without ROS.

They read any object with the message's fields (rclpy messages and rosbags' dataclasses alike) and build
messages through a :class:`MessageFactory` that holds the message classes of either world. The node and the
offline tools share them, so the node runs where cv_bridge is absent and an offline bag holds exactly what the
node would publish.

Supported input encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (either byte order), with any row padding
in ``step``; compressed images in jpeg or png.
"""

from __future__ import annotations

import array as pyarray
import sys
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

import cv2
import numpy as np

from ..core.overlay import class_colour, colour_semantic, render_overlay
from ..core.planning import PlannerFrame
from ..core.results import AnomalyRecord, SegmentationResult
from .autoware import (ORIENTATION_UNAVAILABLE, SHAPE_TYPES, AutowareLabels, existence_probability,
                       position_covariance)

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3, "mono16": 1,
            "16UC1": 1}
TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
          "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB}


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image; the message says what was wrong."""


DEFAULT_MAX_PIXELS = 16_000_000
"""Largest input accepted by default, in pixels: room for 4K (3840 x 2160 = 8.3 MP) and more."""


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"{what} is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ImageConversionError(f"{what} is {width}x{height} = {width * height:,} pixels, more than "
                                   f"max_input_pixels ({max_pixels:,}): a corrupt header or a decompression bomb; "
                                   "raise max_input_pixels if the camera really sends such images")


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` as an RGB uint8 ``(H, W, 3)`` array (a copy; mono16 keeps its top 8 bits).

    The header's size is checked against ``max_pixels`` before anything is allocated."""
    encoding = str(msg.encoding)
    if encoding not in CHANNELS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}': publish one of "
                                   f"{', '.join(sorted(CHANNELS))}, or use input_transport: compressed")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, max_pixels, "image")
    bytes_per_pixel = CHANNELS[encoding] * (2 if encoding in ("mono16", "16UC1") else 1)
    if step < width * bytes_per_pixel:
        raise ImageConversionError(f"step {step} is smaller than width x bytes per pixel "
                                   f"({width} x {bytes_per_pixel}) for {encoding}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if data.size < step * height:
        raise ImageConversionError(f"image data has {data.size} bytes, fewer than step x height = "
                                   f"{step} x {height} = {step * height} (truncated message?)")
    rows = data[: step * height].reshape(height, step)[:, : width * bytes_per_pixel]
    if bytes_per_pixel == 2 * CHANNELS[encoding]:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        grey = (np.ascontiguousarray(rows).view(dtype).reshape(height, width) >> 8).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    pixels = np.ascontiguousarray(rows).reshape(height, width, CHANNELS[encoding]) if CHANNELS[encoding] > 1 \
        else np.ascontiguousarray(rows)
    if encoding in TO_RGB:
        return cv2.cvtColor(pixels, TO_RGB[encoding])
    return pixels.copy()


JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are other segments."""


def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared by a PNG's IHDR or a JPEG's frame header, read without decoding; ``None``
    when the bytes are neither (or the header is missing)."""
    data = bytes(data[:65536]) if isinstance(data, np.ndarray) else bytes(data[:65536])
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            return (int.from_bytes(data[position + 7:position + 9], "big"),
                    int.from_bytes(data[position + 5:position + 7], "big"))
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid stream
            return None
        position += 2 + length
    return None


def _compressed_stream(msg: Any, max_pixels: int) -> np.ndarray:
    """The checked bytes of a ``sensor_msgs/CompressedImage``: a jpeg or png stream whose declared size is at most
    ``max_pixels``."""
    form = str(msg.format).lower()
    if form and not any(kind in form for kind in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"unsupported compressed format '{msg.format}': jpeg and png are supported")
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    size = compressed_image_size(data)
    if size is None:
        raise ImageConversionError(f"compressed image ({msg.format or 'no format'}, {data.size} bytes) is not a "
                                   "jpeg or png stream with a readable header: corrupt or truncated data")
    _check_size(*size, max_pixels, f"compressed image ({msg.format or 'no format'})")
    return data


def compressed_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (jpeg or png) as an RGB uint8 ``(H, W, 3)`` array.

    The size the stream declares is checked against ``max_pixels`` before it is decoded."""
    return _decode_on_cpu(msg, _compressed_stream(msg, max_pixels))


def _decode_on_cpu(msg: Any, data: np.ndarray) -> np.ndarray:
    """The checked stream ``data`` of ``msg`` decoded by OpenCV: RGB uint8 ``(H, W, 3)``."""
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageConversionError(f"compressed image ({msg.format or 'no format'}, {data.size} bytes) could not be "
                                   "decoded: corrupt or truncated data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class DeviceDecoder:
    """Decodes ``sensor_msgs/CompressedImage`` frames where the model runs: a JPEG stream by nvJPEG on ``device``
    (an RGB uint8 ``(H, W, 3)`` tensor there, :func:`~clipomaly_ros.core.images.decode_jpeg_on_device`), a PNG
    stream by the CPU as :func:`compressed_msg_to_rgb` does; checked as that function checks.

    A JPEG the device cannot decode but the CPU can is a device failure, not a bad input: the frame is decoded by
    the CPU instead, each kind of failure (its exception and first line) is warned about once through ``warn`` and
    counted (:meth:`health`, for ``/diagnostics``). One the CPU cannot decode either is a bad input
    (:class:`ImageConversionError`). Called from the inference thread; :meth:`health` from any."""

    def __init__(self, device: Any, warn: Callable[[str], None] = lambda message: None):
        import threading

        self.device = device
        self.warn = warn
        self.failures: dict[str, int] = {}
        """Frames the device failed to decode and the CPU decoded, by kind of failure."""
        self._lock = threading.Lock()

    def __call__(self, msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Any:
        from ..core import images

        data = _compressed_stream(msg, max_pixels)
        if data[:2].tobytes() != b"\xff\xd8":  # PNG: nvJPEG cannot decode it
            return _decode_on_cpu(msg, data)
        try:
            return images.decode_jpeg_on_device(data, self.device)
        except Exception as error:  # noqa: BLE001 - nvJPEG and CUDA raise RuntimeError and more; the CPU decides
            kind = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"
        decoded = _decode_on_cpu(msg, data)  # raises ImageConversionError: the bytes are bad, not the device
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            first = self.failures[kind] == 1
        if first:
            self.warn(f"the {self.device} decoder failed on a JPEG frame that the CPU decodes ({kind}): each frame it "
                      "fails on is decoded on the CPU, and counted in /diagnostics as a device decode failure")
        return decoded

    def health(self) -> dict[str, str | int]:
        """What ``/diagnostics`` says about the device decoder (empty while it has not failed)."""
        with self._lock:
            if not self.failures:
                return {}
            return {"device decode failures (decoded on the CPU)": sum(self.failures.values()),
                    "device decode failure kinds": "; ".join(f"{kind} x{count}" for kind, count in
                                                              self.failures.items())}


class BadRecordedFrame(ValueError):
    """One recorded image message that cannot be used: its bytes do not deserialise, or the image in it does not
    decode (:class:`ImageConversionError`). The offline tools count such a frame as skipped and go on; a bug in our
    own code (a TypeError, an AttributeError...) is never caught as one."""


def deserialize_recorded(reader: Any, raw: bytes, msgtype: str) -> Any:
    """The message in ``raw`` (one recorded message of ``msgtype``), or :class:`BadRecordedFrame` when its bytes
    are not a valid ``msgtype`` (rosbags' deserialisers raise many types for damaged bytes). Out of memory and I/O
    errors pass through: they say nothing about the message."""
    try:
        return reader.deserialize(raw, msgtype)
    except (MemoryError, OSError):
        raise
    except Exception as error:  # noqa: BLE001 - rosbags' code parsing the bytes: every failure means bad bytes
        raise BadRecordedFrame(f"its {len(raw)} bytes are not a valid {msgtype} ({type(error).__name__}: "
                               f"{error})") from None


def decode_recorded(message: Any, msgtype: str) -> np.ndarray:
    """The RGB image of a recorded ``sensor_msgs/Image`` or ``CompressedImage``; :class:`BadRecordedFrame` when it
    does not decode."""
    try:
        return DECODERS[msgtype](message)
    except ImageConversionError as error:
        raise BadRecordedFrame(str(error)) from None


DECODERS: dict[str, Callable[..., np.ndarray]] = {
    "sensor_msgs/msg/Image": image_msg_to_rgb,
    "sensor_msgs/msg/CompressedImage": compressed_msg_to_rgb,
}
"""The RGB decoder for each input message type (``decoder(msg, max_pixels)``), shared by the node and the
offline tools."""


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


class MessageFactory:
    """Builds the node's output messages from classes looked up by ROS type name.

    ``types`` maps names such as ``"sensor_msgs/msg/Image"`` to classes that accept every field as a keyword
    (rclpy message classes, rosbags dataclasses). ``byte_array`` adapts a uint8 numpy array to what the classes
    store for ``uint8[]`` (:func:`uint8_array` for rclpy, the array itself for rosbags). With
    ``data_by_reference`` (rclpy) an image's ``data`` is assigned after construction with field checks on, the
    one way rclpy keeps an ``array.array`` as it is instead of copying it again.
    """

    def __init__(self, types: Callable[[str], Any] | Mapping[str, Any],
                 byte_array: Callable[[np.ndarray], Any] = lambda a: a, data_by_reference: bool = False):
        self._types = types
        self.byte_array = byte_array
        self.data_by_reference = data_by_reference

    def type(self, name: str) -> Any:
        return self._types(name) if callable(self._types) else self._types[name]

    def header(self, sec: int, nanosec: int, frame_id: str) -> Any:
        time = self.type("builtin_interfaces/msg/Time")(sec=int(sec), nanosec=int(nanosec))
        return self.type("std_msgs/msg/Header")(stamp=time, frame_id=str(frame_id))

    def image(self, header: Any, array: np.ndarray, encoding: str) -> Any:
        fields = array_to_image_fields(array, encoding)
        image_type = self.type("sensor_msgs/msg/Image")
        values = dict(header=header, height=fields.height, width=fields.width, encoding=fields.encoding,
                      is_bigendian=fields.is_bigendian, step=fields.step)
        if not self.data_by_reference:
            return image_type(**values, data=self.byte_array(fields.data))
        message = image_type(**values, check_fields=True)
        message.data = self.byte_array(fields.data)
        return message

    def detections(self, header: Any, records: list[AnomalyRecord]) -> Any:
        """``vision_msgs/Detection2DArray``: one detection per record, ``id`` = its track id (its instance id when
        untracked); the first hypothesis is the (voted) name, the others the frame's runner-up candidates."""
        point2d, pose2d = self.type("vision_msgs/msg/Point2D"), self.type("vision_msgs/msg/Pose2D")
        box_type, detection_type = self.type("vision_msgs/msg/BoundingBox2D"), self.type("vision_msgs/msg/Detection2D")
        detections = []
        for record in records:
            x0, y0, x1, y1 = record.bbox
            box = box_type(center=pose2d(position=point2d(x=(x0 + x1 + 1) / 2.0, y=(y0 + y1 + 1) / 2.0), theta=0.0),
                           size_x=float(x1 - x0 + 1), size_y=float(y1 - y0 + 1))
            detections.append(detection_type(header=header, results=self._hypotheses(record), bbox=box,
                                             id=detection_id(record)))
        return self.type("vision_msgs/msg/Detection2DArray")(header=header, detections=detections)

    def _hypotheses(self, record: AnomalyRecord) -> list:
        name, score = record.label
        return [self._hypothesis(name, score)] + [self._hypothesis(n, s) for n, s in record.candidates if n != name]

    def detections_3d(self, header: Any, records: list[AnomalyRecord]) -> Any:
        """``vision_msgs/Detection3DArray`` in ``header.frame_id`` (the base frame): one detection per record (each
        with a ground estimate: :attr:`PlannerFrame.located`), ``id`` as in the 2D detections. The box stands on the
        ground with its front at the estimate; its depth cannot be seen by one camera and is :data:`ASSUMED_DEPTH_M`."""
        detection_type = self.type("vision_msgs/msg/Detection3D")
        detections = [detection_type(header=header, results=self._hypotheses(record), bbox=self._box_3d(record),
                                     id=detection_id(record)) for record in records]
        return self.type("vision_msgs/msg/Detection3DArray")(header=header, detections=detections)

    def _box_3d(self, record: AnomalyRecord) -> Any:
        ground = record.ground
        centre = box_centre(ground)
        vector = self.type("geometry_msgs/msg/Vector3")
        return self.type("vision_msgs/msg/BoundingBox3D")(
            center=self._pose(centre[0], centre[1], ground.z + ground.height / 2),
            size=vector(x=ASSUMED_DEPTH_M, y=float(ground.width), z=float(ground.height)))

    def _pose(self, x: float, y: float, z: float) -> Any:
        point, quaternion = self.type("geometry_msgs/msg/Point"), self.type("geometry_msgs/msg/Quaternion")
        return self.type("geometry_msgs/msg/Pose")(position=point(x=float(x), y=float(y), z=float(z)),
                                                   orientation=quaternion(x=0.0, y=0.0, z=0.0, w=1.0))

    def points(self, header: Any, records: list[AnomalyRecord]) -> Any:
        """``sensor_msgs/PointCloud2`` (x, y, z float32) in ``header.frame_id`` (the base frame) for a costmap's
        obstacle layer: every located anomaly's footprint (its 3D box's, :meth:`detections_3d`) filled from the
        ground to its top, at most :data:`CLOUD_SPACING_M` apart."""
        cloud = np.concatenate([footprint_points(record.ground) for record in records] or [np.zeros((0, 3))])
        cloud = np.ascontiguousarray(cloud, dtype=np.float32)
        field = self.type("sensor_msgs/msg/PointField")
        fields = [field(name=axis, offset=4 * index, datatype=FLOAT32, count=1) for index, axis in enumerate("xyz")]
        return self.type("sensor_msgs/msg/PointCloud2")(
            header=header, height=1, width=len(cloud), fields=fields, is_bigendian=False, point_step=12,
            row_step=12 * len(cloud), data=self.byte_array(cloud.reshape(-1).view(np.uint8)), is_dense=True)

    def detected_objects(self, header: Any, records: list[AnomalyRecord], labels: AutowareLabels,
                         shape: str = "polygon") -> Any:
        """``autoware_perception_msgs/DetectedObjects`` in ``header.frame_id`` (the base frame): one object per record
        (each with a ground estimate), in the box that :meth:`detections_3d` gives it.

        The classification is the (voted) name's label under ``labels`` with the name's probability; the existence
        probability is the track's (:func:`~.autoware.existence_probability`); the pose is the box's centre, with a
        covariance that grows with range (:func:`~.autoware.position_covariance`), and its orientation is marked
        unavailable. ``shape``: ``polygon`` gives the box's footprint around the pose (base-frame axes, identity
        orientation) and its height; ``bounding_box`` the box's depth, width and height, turned along the line of
        sight."""
        objects = [self._detected_object(record, labels, shape) for record in records]
        return self.type("autoware_perception_msgs/msg/DetectedObjects")(header=header, objects=objects)

    def _detected_object(self, record: AnomalyRecord, labels: AutowareLabels, shape: str) -> Any:
        ground = record.ground
        name, score = record.label
        sight = line_of_sight(ground)
        centre = box_centre(ground)
        point, vector = self.type("geometry_msgs/msg/Point"), self.type("geometry_msgs/msg/Vector3")
        if shape == "bounding_box":
            yaw = float(np.arctan2(sight[1], sight[0]))
            orientation = self.type("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=float(np.sin(yaw / 2)),
                                                                     w=float(np.cos(yaw / 2)))
            footprint = []
        else:
            orientation = self.type("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)
            across = np.array([-sight[1], sight[0]])
            half_depth, half_width = sight * ASSUMED_DEPTH_M / 2, across * ground.width / 2
            corners = [-half_depth - half_width, -half_depth + half_width, half_depth + half_width,
                       half_depth - half_width]
            footprint = [self.type("geometry_msgs/msg/Point32")(x=float(c[0]), y=float(c[1]), z=0.0) for c in corners]
        pose = self.type("geometry_msgs/msg/Pose")(
            position=point(x=float(centre[0]), y=float(centre[1]), z=float(ground.z + ground.height / 2)),
            orientation=orientation)
        kinematics = self.type("autoware_perception_msgs/msg/DetectedObjectKinematics")(
            pose_with_covariance=self.type("geometry_msgs/msg/PoseWithCovariance")(
                pose=pose, covariance=position_covariance(ground)),
            has_position_covariance=True, orientation_availability=ORIENTATION_UNAVAILABLE,
            twist_with_covariance=self._still(), has_twist=False, has_twist_covariance=False)
        classification = self.type("autoware_perception_msgs/msg/ObjectClassification")(
            label=labels.label(name), probability=float(score))
        return self.type("autoware_perception_msgs/msg/DetectedObject")(
            existence_probability=existence_probability(record), classification=[classification],
            kinematics=kinematics,
            shape=self.type("autoware_perception_msgs/msg/Shape")(
                type=SHAPE_TYPES[shape], footprint=self.type("geometry_msgs/msg/Polygon")(points=footprint),
                dimensions=vector(x=ASSUMED_DEPTH_M, y=float(ground.width), z=float(ground.height))))

    def _still(self) -> Any:
        vector = self.type("geometry_msgs/msg/Vector3")
        twist = self.type("geometry_msgs/msg/Twist")(linear=vector(x=0.0, y=0.0, z=0.0),
                                                     angular=vector(x=0.0, y=0.0, z=0.0))
        return self.type("geometry_msgs/msg/TwistWithCovariance")(twist=twist,
                                                                  covariance=np.zeros(36, dtype=np.float64))

    def markers(self, header: Any, records: list[AnomalyRecord]) -> Any:
        """``visualization_msgs/MarkerArray``: a DELETEALL, then per record (each with a ground estimate) a box
        (namespace ``anomalies``) and its label (``anomaly_labels``), both with the detection id as marker id."""
        markers = [self._marker(header, "anomalies", 0, DELETEALL, self._pose(0, 0, 0), (0.0, 0.0, 0.0),
                                (0, 0, 0), "")]
        for record in records:
            box = self._box_3d(record)
            name, score = record.label
            colour = class_colour(name)
            marker_id = int(detection_id(record))
            markers.append(self._marker(header, "anomalies", marker_id, CUBE, box.center,
                                        (box.size.x, box.size.y, box.size.z), colour, "", alpha=0.6))
            above = self._pose(box.center.position.x, box.center.position.y,
                               record.ground.z + record.ground.height + 0.4)
            markers.append(self._marker(header, "anomaly_labels", marker_id, TEXT_VIEW_FACING, above, (0.0, 0.0, 0.5),
                                        (255, 255, 255), f"#{marker_id} {name} {score:.2f} {record.ground.distance:.1f} m"))
        return self.type("visualization_msgs/msg/MarkerArray")(markers=markers)

    def _marker(self, header: Any, namespace: str, marker_id: int, kind: int, pose: Any, scale: tuple, colour: tuple,
                text: str, alpha: float = 1.0) -> Any:
        vector, rgba = self.type("geometry_msgs/msg/Vector3"), self.type("std_msgs/msg/ColorRGBA")
        empty = self.byte_array(np.zeros(0, dtype=np.uint8))
        return self.type("visualization_msgs/msg/Marker")(
            header=header, ns=namespace, id=int(marker_id), type=kind, action=DELETEALL if kind == DELETEALL else 0,
            pose=pose, scale=vector(x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
            color=rgba(r=colour[0] / 255.0, g=colour[1] / 255.0, b=colour[2] / 255.0, a=float(alpha)),
            lifetime=self.type("builtin_interfaces/msg/Duration")(sec=0, nanosec=0), frame_locked=False, points=[],
            colors=[], texture_resource="",
            texture=self.type("sensor_msgs/msg/CompressedImage")(header=header, format="", data=empty),
            uv_coordinates=[], text=text, mesh_resource="",
            mesh_file=self.type("visualization_msgs/msg/MeshFile")(filename="", data=empty),
            mesh_use_embedded_materials=False)

    def _hypothesis(self, name: str, score: float) -> Any:
        point, quaternion = self.type("geometry_msgs/msg/Point"), self.type("geometry_msgs/msg/Quaternion")
        pose = self.type("geometry_msgs/msg/Pose")(position=point(x=0.0, y=0.0, z=0.0),
                                                   orientation=quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
        with_covariance = self.type("geometry_msgs/msg/PoseWithCovariance")(pose=pose,
                                                                            covariance=np.zeros(36, dtype=np.float64))
        hypothesis = self.type("vision_msgs/msg/ObjectHypothesis")(class_id=name, score=float(score))
        return self.type("vision_msgs/msg/ObjectHypothesisWithPose")(hypothesis=hypothesis, pose=with_covariance)

    def label_info(self, header: Any, labels: list[str], threshold: float) -> Any:
        """``vision_msgs/LabelInfo`` mapping every id of ``semantic`` to its name."""
        vision_class = self.type("vision_msgs/msg/VisionClass")
        class_map = [vision_class(class_id=index, class_name=name) for index, name in enumerate(labels)]
        return self.type("vision_msgs/msg/LabelInfo")(header=header, class_map=class_map, threshold=float(threshold))

    def result_messages(self, header: Any, result: SegmentationResult, frame: PlannerFrame,
                        wanted=("semantic", "anomaly_score", "anomaly_mask", "anomaly_instances"),
                        autoware: tuple[AutowareLabels, str] | None = None,
                        available: Collection[str] | None = None) -> dict[str, Any]:
        """The per-frame messages but the pictures (:func:`picture_messages`) and ``label_info``, keyed by
        relative topic name: ``anomalies`` and ``anomalies_on_road`` always; ``anomalies_3d``, ``anomaly_markers``,
        ``anomaly_points`` and, given ``autoware`` (labels and shape, :meth:`detected_objects`),
        ``anomalies_objects`` (stamped like ``header``, in ``frame.base_frame``) when the camera is calibrated; and
        the image outputs named in ``wanted``. Maps not wanted are never computed. ``available``: the outputs whose
        message package is installed (default: all); the others are never built."""
        build = {
            "semantic": lambda: self.image(header, result.semantic, "mono16"),
            "anomaly_score": lambda: self.image(header, result.anomaly_score, "32FC1"),
            "anomaly_mask": lambda: self.image(header, result.anomaly_mask.view(np.uint8) * np.uint8(255), "mono8"),
            "anomaly_instances": lambda: self.image(header, published_instances(result, frame.published), "mono16"),
        }
        messages = {"anomalies": self.detections(header, frame.published),
                    "anomalies_on_road": self.detections(header, [r for r in frame.published if r.on_road])}
        if frame.no_3d_reason is None:
            base_header = self.type("std_msgs/msg/Header")(stamp=header.stamp, frame_id=frame.base_frame)
            located = {"anomalies_3d": lambda: self.detections_3d(base_header, frame.located),
                       "anomaly_markers": lambda: self.markers(base_header, frame.located),
                       "anomaly_points": lambda: self.points(base_header, frame.located)}
            if autoware is not None:
                located["anomalies_objects"] = lambda: self.detected_objects(base_header, frame.located, *autoware)
            messages.update({name: make() for name, make in located.items()
                             if available is None or name in available})
        messages.update({name: make() for name, make in build.items() if name in wanted})
        return messages


ASSUMED_DEPTH_M = 0.5
"""Depth (along the line of sight) given to an anomaly's 3D box: one camera sees its front, not how deep it is."""
CLOUD_SPACING_M = 0.1
"""Largest distance between neighbouring points of ``anomaly_points``: a 5 cm costmap cell still sees a wall."""
FLOAT32 = 7  # sensor_msgs/PointField


def line_of_sight(ground) -> np.ndarray:
    """The unit ``(2,)`` horizontal direction from the camera to a ground estimate (from the base frame's origin
    for an estimate that does not know its camera): the axis along which an anomaly's box extends
    :data:`ASSUMED_DEPTH_M` behind its front."""
    if getattr(ground, "sight", None) is not None:
        return np.asarray(ground.sight, dtype=np.float64)
    return np.array([ground.x, ground.y]) / max(ground.distance, 1e-9)


def box_centre(ground) -> np.ndarray:
    """The ``(2,)`` base-frame centre of an anomaly's 3D box: its front at the estimate, :data:`ASSUMED_DEPTH_M` deep
    along the line of sight."""
    return np.array([ground.x, ground.y]) + line_of_sight(ground) * ASSUMED_DEPTH_M / 2


def footprint_points(ground, spacing: float = CLOUD_SPACING_M) -> np.ndarray:
    """``(N, 3)`` points in the base frame filling the box of a :class:`~clipomaly_ros.core.geometry.GroundEstimate`
    (its front at the estimate, :data:`ASSUMED_DEPTH_M` deep along the line of sight, ``width`` across it, from
    the ground to ``height``), at most ``spacing`` apart along each axis."""
    along = line_of_sight(ground)
    across = np.array([-along[1], along[0]])

    def steps(length: float) -> np.ndarray:
        return np.linspace(0.0, length, max(2, int(np.ceil(length / spacing)) + 1))

    depth, lateral, height = np.meshgrid(steps(ASSUMED_DEPTH_M), steps(ground.width) - ground.width / 2,
                                         steps(max(ground.height, 0.0)), indexing="ij")
    xy = np.array([ground.x, ground.y]) + depth.reshape(-1, 1) * along + lateral.reshape(-1, 1) * across
    return np.column_stack([xy, ground.z + height.reshape(-1)])
CUBE, TEXT_VIEW_FACING, DELETEALL = 1, 9, 3  # visualization_msgs/Marker constants


def stamp_ns(header: Any) -> int:
    """A ``std_msgs/Header``'s stamp in nanoseconds: the time tracks and frame pairing go by."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def detection_id(record: AnomalyRecord) -> str:
    """A detection's ``id``: the record's track id, or its instance id when it is not tracked."""
    return str(record.track_id if record.track_id is not None else record.id)


def published_instances(result: SegmentationResult, published: list[AnomalyRecord]) -> np.ndarray:
    """The ``anomaly_instances`` image: ``(H, W)`` uint16 where pixel value k (k >= 1) belongs to
    ``published[k - 1]``, the k-th detection of ``anomalies`` with the same stamp, and 0 to everything else
    (anomalies not published included)."""
    lookup = np.zeros(max((r.id for r in result.anomalies), default=0) + 1, dtype=np.uint16)
    for position, record in enumerate(published, start=1):
        lookup[record.id] = position
    return lookup[result.instances]


def uint8_array(array: np.ndarray) -> pyarray.array:
    """The bytes of a contiguous numpy array as the ``array.array('B')`` that rclpy keeps for ``uint8[]``: the
    one copy message building makes."""
    data = pyarray.array("B")
    data.frombytes(memoryview(array).cast("B"))
    return data


OPTIONAL_OUTPUTS = ("anomalies_objects", "anomaly_markers")
"""Outputs whose message package (autoware_perception_msgs, visualization_msgs) the node can run without: an
output whose type is not installed is off, with one warning."""
OUTPUT_TYPES = {
    "anomalies": "vision_msgs/msg/Detection2DArray",
    "anomalies_on_road": "vision_msgs/msg/Detection2DArray",
    "anomalies_3d": "vision_msgs/msg/Detection3DArray",
    "anomaly_markers": "visualization_msgs/msg/MarkerArray",
    "anomaly_points": "sensor_msgs/msg/PointCloud2",
    "anomalies_objects": "autoware_perception_msgs/msg/DetectedObjects",
    "semantic": "sensor_msgs/msg/Image",
    "label_info": "vision_msgs/msg/LabelInfo",
    "anomaly_score": "sensor_msgs/msg/Image",
    "anomaly_mask": "sensor_msgs/msg/Image",
    "anomaly_instances": "sensor_msgs/msg/Image",
    "overlay": "sensor_msgs/msg/Image",
    "semantic_color": "sensor_msgs/msg/Image",
}
"""The node's per-frame output topics (relative names) and their message types."""

ON_DEMAND_OUTPUTS = ("overlay", "semantic_color")
"""Pictures for people (rgb8), drawn only for a subscriber (the node) or when asked for (replay)."""


def picture_messages(factory: MessageFactory, header: Any, image: np.ndarray, result: SegmentationResult,
                     wanted, published: list[AnomalyRecord] | None = None) -> dict[str, Any]:
    """The rgb8 ``overlay`` and ``semantic_color`` messages named in ``wanted``; the overlay outlines and names
    the ``published`` anomalies only (default: all), as ``anomalies`` lists them."""
    draw = {"overlay": lambda: render_overlay(image, result, records=published),
            "semantic_color": lambda: colour_semantic(result)}
    return {name: factory.image(header, draw[name](), "rgb8") for name in ON_DEMAND_OUTPUTS if name in wanted}
