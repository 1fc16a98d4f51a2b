"""Conversions between ROS messages and numpy arrays, without ROS.

They read any object with the message's fields (rclpy messages and rosbags' dataclasses alike) and build
messages through a :class:`MessageFactory` that holds the message classes of either world. The node and the
offline tools share them, so the node runs where cv_bridge is absent and an offline bag holds exactly what the
node would publish.

Decoding the input images is :mod:`.decoding`; the 3D boxes come from :mod:`~clipomaly_ros.core.scene.geometry`; an
array's image fields and which map each image output publishes are :mod:`.image_messages`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from ..core.scene.geometry import ASSUMED_DEPTH_M, box_centre, footprint_points, line_of_sight
from ..core.method.overlay import class_colour, colour_semantic, render_overlay
from ..core.scene.planning import PlannerFrame
from ..core.method.results import AnomalyRecord, SegmentationResult
from .autoware import (ORIENTATION_UNAVAILABLE, SHAPE_TYPES, AutowareLabels, existence_probability,
                       position_covariance)
from .image_messages import (MAP_OUTPUTS, OUTPUT_DTYPES, ImageFields, array_to_image_fields,  # noqa: F401 - and
                             map_image, published_instances, share_data, uint8_array)  # importable from here
from .topic_catalogue import camera_outputs


class MessageFactory:
    """Builds the node's output messages from classes looked up by ROS type name.

    ``types`` maps names such as ``"sensor_msgs/msg/Image"`` to classes that accept every field as a keyword
    (rclpy message classes, rosbags dataclasses). ``byte_array`` adapts a uint8 numpy array to what the classes
    store for ``uint8[]`` (:func:`uint8_array` for rclpy, the array itself for rosbags). With
    ``data_by_reference`` (rclpy) an image's ``data`` is the map's own buffer (:func:`share_data`): no copy is
    made while building; publishing serialises it once.
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
        message = image_type(**values)
        share_data(message, fields.data, self.byte_array)
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
        ground to its top, at most :data:`~clipomaly_ros.core.scene.geometry.CLOUD_SPACING_M` apart."""
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

    def classification(self, header: Any, names: Sequence[str], scores: Sequence[float]) -> Any:
        """``vision_msgs/Classification``: one hypothesis per (name, probability), in the given order."""
        hypothesis = self.type("vision_msgs/msg/ObjectHypothesis")
        return self.type("vision_msgs/msg/Classification")(
            header=header,
            results=[hypothesis(class_id=name, score=float(score)) for name, score in zip(names, scores)])

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
        messages.update({name: self.image(header, *map_image(name, result, frame.published))
                         for name in MAP_OUTPUTS if name in wanted})
        return messages


FLOAT32 = 7  # sensor_msgs/PointField
CUBE, TEXT_VIEW_FACING, DELETEALL = 1, 9, 3  # visualization_msgs/Marker constants


def ros_type(name: str) -> Any:
    """The rclpy message class for ``"package/msg/Type"`` (imported on the first call: this module needs no ROS)."""
    package, kind, type_name = name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), type_name)


def stamp_ns(header: Any) -> int:
    """A ``std_msgs/Header``'s stamp in nanoseconds: the time tracks and frame pairing go by."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def detection_id(record: AnomalyRecord) -> str:
    """A detection's ``id``: the record's track id, or its instance id when it is not tracked."""
    return str(record.track_id if record.track_id is not None else record.id)


OUTPUT_TYPES = {entry.name: entry.type for entry in camera_outputs()}
"""The node's per-frame output topics (relative names; :data:`PRIVATE_OUTPUTS` in the node's private namespace) and
their message types, from the topic catalogue (:mod:`.topic_catalogue`)."""
OPTIONAL_OUTPUTS = tuple(entry.name for entry in camera_outputs() if entry.optional)
"""Outputs whose message package (autoware_perception_msgs, visualization_msgs) the node can run without: an
output whose type is not installed is off, with one warning."""
PRIVATE_OUTPUTS = tuple(entry.name for entry in camera_outputs() if entry.private)
"""Outputs under ``~/`` (the node's own namespace): the frame's RAM++ tags, a view of the node's working."""

ON_DEMAND_OUTPUTS = ("overlay", "semantic_color")
"""Pictures for people (rgb8), drawn only for a subscriber (the node) or when asked for (replay)."""


def picture_messages(factory: MessageFactory, header: Any, image: np.ndarray, result: SegmentationResult,
                     wanted, published: list[AnomalyRecord] | None = None) -> dict[str, Any]:
    """The rgb8 ``overlay`` and ``semantic_color`` messages named in ``wanted``; the overlay outlines and names
    the ``published`` anomalies only (default: all), as ``anomalies`` lists them."""
    draw = {"overlay": lambda: render_overlay(image, result, records=published),
            "semantic_color": lambda: colour_semantic(result)}
    return {name: factory.image(header, draw[name](), "rgb8") for name in ON_DEMAND_OUTPUTS if name in wanted}
