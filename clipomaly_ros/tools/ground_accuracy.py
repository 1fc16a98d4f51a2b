"""How far off the ground estimates are: distance and lateral errors of anomalies placed on the ground, on
perspective street scenes with objects at known positions, segmented by the toy backend. An evaluation of the
scene geometry (run by ``clipomaly bench --ground-check``), kept beside the pixel evaluation."""

from __future__ import annotations

import numpy as np

from ..core.config import ClipomalyConfig
from ..core.scene.geometry import CameraModel, CameraMounting
from ..core.scene.planning import AnomalyFollower
from .scenes import StandingObject, render_perspective_street

GROUND_RANGES = (5.0, 10.0, 20.0, 30.0, 40.0)
"""Distances in metres of the object ahead of the camera."""
GROUND_LATERALS = (0.8, -1.5)
"""Lateral offsets in metres of the object from the lane's middle (positive: left)."""


def ground_errors(log=print, ranges: tuple[float, ...] = GROUND_RANGES,
                  laterals: tuple[float, ...] = GROUND_LATERALS) -> dict[str, dict[str, float]]:
    """Per distance of ``ranges`` (``"5 m"``, ...): the worst over ``laterals`` of the distance error in percent of
    the true range and the lateral error in metres, for a 1.8 x 0.6 m object on 1280x720 perspective
    scenes (camera 1.5 m up, pitched 2 degrees down, focal length 1000 px) segmented by the toy backend. An object
    not located at all is an infinite distance error (and a line through ``log``)."""
    from ..core.method.pipeline import Clipomaly

    config = ClipomalyConfig(backend="toy", camera_z=1.5, camera_pitch=np.radians(2.0), track_min_hits=1)
    pipeline = Clipomaly(config)
    camera = CameraModel(1280, 720, np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 1]]), np.zeros(5))
    mounting = CameraMounting.from_config(config)
    errors = {}
    for distance in ranges:
        worst_distance, worst_lateral = 0.0, 0.0
        for lateral in laterals:
            image, _ = render_perspective_street(camera, mounting, [StandingObject("mattress", distance, lateral,
                                                                                   1.8, 0.6)])
            follower = AnomalyFollower()
            follower.set_camera_info(camera)
            frame = follower.update(pipeline(image), 0, config)
            located = [record.ground for record in frame.records if record.ground is not None]
            if not located:
                log(f"ground check: nothing located at {distance} m")
                worst_distance = float("inf")
                continue
            truth = float(np.hypot(distance, lateral))
            worst_distance = max(worst_distance, abs(located[0].distance - truth) / truth)
            worst_lateral = max(worst_lateral, abs(located[0].y - lateral))
        errors[f"{distance:g} m"] = {"distance_error_pct": round(100 * worst_distance, 2),
                                     "lateral_error_m": round(worst_lateral, 3)}
    return errors


def format_ground_errors(errors: dict[str, dict[str, float]]) -> str:
    """One line of :func:`ground_errors`' figures."""
    return "ground estimates (toy backend, worst of two lateral positions): " + "; ".join(
        f"{distance}: distance {e['distance_error_pct']:.1f} %, lateral {e['lateral_error_m']:.2f} m"
        for distance, e in errors.items())
