"""Where an anomaly is: its ground contact seen through a calibrated camera, on the flat ground of the vehicle frame.

Frames follow REP 103: ``base_frame`` has x forward, y left, z up, and the ground is the plane ``z = ground_z``.
The camera's *body* frame (x forward, y left, z up) sits in ``base_frame`` at a :class:`CameraMounting`; its
*optical* frame (x right, y down, z forward) is the one the intrinsics project from. The mounting is a small,
separate value: the ``camera_*`` settings give it, or a lookup in the robot's transforms
(:mod:`~clipomaly_ros.core.scene.frames`, :meth:`CameraMounting.from_optical_pose`).

For one anomaly instance the lowest mask pixel of each column near the instance's bottom is its contact with the
road. Their rays, undistorted and turned into ``base_frame``, meet the ground at the anomaly's front; the
instance's leftmost, rightmost and top pixels, cast onto the upright plane through that front (facing the
camera), give its width and height. An instance whose contact rays do not meet the ground within
``max_distance`` (above the horizon) gets no estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from ..method.results import GroundEstimate

OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""Rotation taking optical-frame vectors (x right, y down, z forward) into the body frame (x forward, y left, z
up)."""

DOWN_ENOUGH = 0.5
"""An image frame's y axis (image rows) must point at least this much down in the base frame (its z component
below minus this) to be taken for an optical frame: a road camera's rows run downward, whatever its pitch."""


def frame_convention(rotation: np.ndarray) -> str:
    """Which convention an image's frame follows, from ``rotation`` (3x3, its vectors into a z-up base frame):
    ``optical`` (REP-103's camera optical frame: z forward, x right, y down), ``body`` (x forward, y left, z up:
    a camera_link published without its ``_optical`` child) or ``unknown``."""
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation[2, 1] < -DOWN_ENOUGH:
        return "optical"
    if (rotation @ OPTICAL_TO_BODY)[2, 1] < -DOWN_ENOUGH:
        return "body"
    return "unknown"


CONTACT_BAND = 0.1
"""Columns whose lowest pixel lies within this fraction of the instance's height of its lowest row touch the
ground; the others end above it (an overhang, or a part hidden behind something)."""


class CalibrationError(ValueError):
    """A camera calibration that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics with lens distortion, as ``sensor_msgs/CameraInfo`` gives them.

    ``width`` x ``height`` in pixels; ``k`` the 3x3 camera matrix; ``d`` the distortion coefficients of
    ``distortion_model`` (``plumb_bob`` or ``rational_polynomial``: OpenCV's model; ``equidistant``: the fisheye
    model; empty ``d``: none).
    """

    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    distortion_model: str = "plumb_bob"

    def __post_init__(self):
        k = np.asarray(self.k, dtype=np.float64).reshape(3, 3)
        d = np.asarray(self.d, dtype=np.float64).reshape(-1)
        if not (k[0, 0] > 0 and k[1, 1] > 0 and np.isfinite(k).all()):
            raise CalibrationError(f"camera matrix K has no focal length (fx={k[0, 0]}, fy={k[1, 1]}): the camera is "
                                   "not calibrated; publish a calibrated camera_info")
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(f"camera_info size {self.width}x{self.height} is empty")
        if self.distortion_model == "equidistant" and d.size not in (0, 4):
            raise CalibrationError(f"the equidistant model takes 4 coefficients, camera_info has {d.size}")
        if self.distortion_model not in ("plumb_bob", "rational_polynomial", "equidistant", ""):
            raise CalibrationError(f"distortion model {self.distortion_model!r} is not supported: plumb_bob, "
                                   "rational_polynomial or equidistant")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "d", d)

    @classmethod
    def from_camera_info(cls, info) -> "CameraModel":
        """From a ``sensor_msgs/CameraInfo`` (rclpy or rosbags message, or anything with its fields)."""
        return cls(int(info.width), int(info.height), np.asarray(info.k, dtype=np.float64),
                   np.asarray(info.d, dtype=np.float64), str(info.distortion_model))

    def for_image(self, width: int, height: int) -> "CameraModel":
        """This model for images of ``width`` x ``height``: the same camera resized (the intrinsics scale).
        Raises :class:`CalibrationError` when the aspect ratio differs (a crop, or another camera's info)."""
        if (width, height) == (self.width, self.height):
            return self
        scale_x, scale_y = width / self.width, height / self.height
        if abs(scale_x - scale_y) > 0.01 * max(scale_x, scale_y):
            raise CalibrationError(f"camera_info is for {self.width}x{self.height} images but the image is "
                                   f"{width}x{height}, not a resize of it: publish the camera_info of this image")
        k = self.k.copy()
        k[0] *= scale_x
        k[1] *= scale_y
        return CameraModel(width, height, k, self.d, self.distortion_model)

    def rays(self, pixels: np.ndarray) -> np.ndarray:
        """Unit rays ``(N, 3)`` in the optical frame through ``pixels`` ``(N, 2)`` (u, v; pixel centres are whole
        numbers, as in OpenCV), undistorted."""
        points = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if not self.d.any():
            normalised = (points.reshape(-1, 2) - self.k[:2, 2]) / np.diag(self.k)[:2]
        elif self.distortion_model == "equidistant":
            normalised = cv2.fisheye.undistortPoints(points, self.k, self.d).reshape(-1, 2)
        else:
            normalised = cv2.undistortPoints(points, self.k, self.d).reshape(-1, 2)
        rays = np.concatenate([normalised, np.ones((len(normalised), 1))], axis=1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def rotation_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The 3x3 rotation of fixed-axis roll, pitch, yaw (radians) as ROS and tf2 define it: Rz(yaw) Ry(pitch)
    Rx(roll)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw),
                              math.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


@dataclass(frozen=True)
class CameraMounting:
    """Where the camera body frame sits in ``base_frame``: position ``x, y, z`` (m) and ``roll, pitch, yaw``
    (rad; pitch > 0 looks down). ``ground_z`` is the ground's height in ``base_frame`` (0 for base_footprint)."""

    base_frame: str = "base_link"
    x: float = 0.0
    y: float = 0.0
    z: float = 1.5
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    ground_z: float = 0.0

    @property
    def position(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])

    @property
    def optical_rotation(self) -> np.ndarray:
        """Rotation taking optical-frame vectors into ``base_frame``."""
        return rotation_rpy(self.roll, self.pitch, self.yaw) @ OPTICAL_TO_BODY

    @classmethod
    def from_optical_pose(cls, base_frame: str, rotation: np.ndarray, position, ground_z: float = 0.0
                          ) -> "CameraMounting":
        """The mounting whose optical frame sits in ``base_frame`` at ``position`` (m) with ``rotation`` (3x3, optical
        vectors into ``base_frame``): the inverse of :attr:`optical_rotation` and :attr:`position`, as a tf lookup
        from the base frame to an image's (optical) frame gives them."""
        body = np.asarray(rotation, dtype=np.float64) @ OPTICAL_TO_BODY.T
        # fixed-axis x, y, z = Rz(yaw) Ry(pitch) Rx(roll), as rotation_rpy builds it
        roll, pitch, yaw = Rotation.from_matrix(body).as_euler("xyz")
        x, y, z = (float(v) for v in position)
        return cls(base_frame, x, y, z, float(roll), float(pitch), float(yaw), ground_z)

    def as_settings(self) -> dict[str, float]:
        """The ``camera_*`` settings of this mounting."""
        return {"camera_x": self.x, "camera_y": self.y, "camera_z": self.z, "camera_roll": self.roll,
                "camera_pitch": self.pitch, "camera_yaw": self.yaw}

    @classmethod
    def from_config(cls, config) -> "CameraMounting":
        """From the ``base_frame``, ``camera_*`` and ``ground_z`` settings of a :class:`ClipomalyConfig`."""
        return cls(config.base_frame, config.camera_x, config.camera_y, config.camera_z, config.camera_roll,
                   config.camera_pitch, config.camera_yaw, config.ground_z)


class GroundLocator:
    """Places anomaly instances on the ground seen by one camera (see the module docstring).

    ``camera``: its :class:`CameraModel`; ``mounting``: its :class:`CameraMounting`; ``max_distance``: contacts
    farther than this (m) count as no contact; ``pixel_error``: the uncertainty of a contact's row and column
    (pixels, one standard deviation) behind each estimate's ``along_sigma`` and ``across_sigma``.
    """

    def __init__(self, camera: CameraModel, mounting: CameraMounting, max_distance: float = 150.0,
                 pixel_error: float = 1.0):
        self.camera = camera
        self.mounting = mounting
        self.max_distance = max_distance
        self.pixel_error = pixel_error
        self._rotation = mounting.optical_rotation
        self._origin = mounting.position

    def _rays(self, pixels: np.ndarray) -> np.ndarray:
        return self.camera.rays(pixels) @ self._rotation.T

    def locate(self, box: tuple[int, int, int, int], mask: np.ndarray) -> GroundEstimate | None:
        """The estimate for one instance: ``box`` (y0, y1, x0, x1) half-open in image pixels, ``mask`` its
        ``(y1 - y0, x1 - x0)`` bool pixels. ``None`` when it has no ground contact."""
        y0, _, x0, _ = box
        columns = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if columns.size == 0:
            return None
        bottoms = mask.shape[0] - 1 - np.argmax(mask[::-1, columns], axis=0)
        lowest, top = bottoms.max(), rows[0]
        touching = bottoms >= lowest - CONTACT_BAND * (lowest - top + 1)
        # the contact line is the lower edge of the lowest pixels: half a pixel below their centres
        contact = np.stack([x0 + columns[touching], y0 + bottoms[touching] + 0.5], axis=1).astype(np.float64)
        rays = self._rays(contact)
        drop = self.mounting.ground_z - self._origin[2]
        if drop >= 0 or (rays[:, 2] >= -1e-9).any():
            return None
        ground = self._origin + rays * (drop / rays[:, 2])[:, None]
        front = ground.mean(axis=0)
        sight = front[:2] - self._origin[:2]
        if np.linalg.norm(sight) > self.max_distance or not np.isfinite(front).all():
            return None
        # the upright plane through the front, facing the camera, holds its left and right sides and its top
        normal = np.array([*sight / np.linalg.norm(sight), 0.0])
        x_left, x_right = x0 + columns[0] - 0.5, x0 + columns[-1] + 0.5
        middle_row = y0 + (top + lowest) / 2.0
        centre_column = float(contact[:, 0].mean())
        edges = self._rays(np.array([[x_left, middle_row], [x_right, middle_row], [centre_column, y0 + top - 0.5]]))
        reach = (front - self._origin) @ normal
        along = edges @ normal
        if (along <= 1e-9).any():
            return None
        left, right, top_point = self._origin + edges * (reach / along)[:, None]
        middle = (left + right) / 2.0
        sight_range = float(np.linalg.norm(middle[:2] - self._origin[:2]))
        sight_direction = (middle[:2] - self._origin[:2]) / max(sight_range, 1e-9)
        fx, fy = self.camera.k[0, 0], self.camera.k[1, 1]
        return GroundEstimate(
            x=float(middle[0]), y=float(middle[1]), z=float(self.mounting.ground_z),
            distance=float(math.hypot(middle[0], middle[1])), width=float(np.linalg.norm((left - right)[:2])),
            height=float(max(0.0, top_point[2] - self.mounting.ground_z)),
            truncated=bool(y0 + lowest >= self.camera.height - 1),
            along_sigma=float(sight_range ** 2 * self.pixel_error / (fy * -drop)),
            across_sigma=float(sight_range * self.pixel_error / fx),
            sight=(float(sight_direction[0]), float(sight_direction[1])))


def project(camera: CameraModel, mounting: CameraMounting, points: np.ndarray) -> np.ndarray:
    """``base_frame`` points ``(N, 3)`` as pixels ``(N, 2)`` (u, v), with the lens distortion; the inverse of
    :meth:`CameraModel.rays` for points in front of the camera (used to render scenes)."""
    rotation = mounting.optical_rotation
    optical = (np.asarray(points, dtype=np.float64) - mounting.position) @ rotation
    if camera.distortion_model == "equidistant" and camera.d.any():
        pixels, _ = cv2.fisheye.projectPoints(optical.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.k, camera.d)
    else:
        pixels, _ = cv2.projectPoints(optical.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.k,
                                      camera.d if camera.d.any() else None)
    return pixels.reshape(-1, 2)


# the 3D box that one camera's ground estimate stands for (the outputs' boxes, markers and point cloud) ---
ASSUMED_DEPTH_M = 0.5
"""Depth (along the line of sight) given to an anomaly's 3D box: one camera sees its front, not how deep it is."""
CLOUD_SPACING_M = 0.1
"""Largest distance between neighbouring points of ``anomaly_points``: a 5 cm costmap cell still sees a wall."""


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
    """``(N, 3)`` points in the base frame filling the box of a
    :class:`~clipomaly_ros.core.method.results.GroundEstimate` (its front at the estimate, :data:`ASSUMED_DEPTH_M`
    deep along the line of sight, ``width`` across it, from the ground to ``height``), at most ``spacing`` apart
    along each axis."""
    along = line_of_sight(ground)
    across = np.array([-along[1], along[0]])

    def steps(length: float) -> np.ndarray:
        return np.linspace(0.0, length, max(2, int(np.ceil(length / spacing)) + 1))

    depth, lateral, height = np.meshgrid(steps(ASSUMED_DEPTH_M), steps(ground.width) - ground.width / 2,
                                         steps(max(ground.height, 0.0)), indexing="ij")
    xy = np.array([ground.x, ground.y]) + depth.reshape(-1, 1) * along + lateral.reshape(-1, 1) * across
    return np.column_stack([xy, ground.z + height.reshape(-1)])
