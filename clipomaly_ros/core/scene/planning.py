"""What a planner needs from one camera's frames: anomalies placed on the ground, tracked, filtered.

:class:`AnomalyFollower` is the one stateful step after the pipeline, one per camera, shared by the node and the
offline tools: ``result -> follower.update(result, stamp_ns, config) -> PlannerFrame -> messages``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from dataclasses import dataclass

from ..config import ClipomalyConfig
from .geometry import CalibrationError, CameraModel, CameraMounting, GroundLocator
from ..method.results import AnomalyRecord, SegmentationResult
from .tracking import AnomalyTracker, NameEmbedding


@dataclass(frozen=True)
class PlannerFrame:
    """One frame's anomalies for a planner.

    ``records``: every anomaly of the frame with its track, ``on_road`` and ``ground`` (the result's
    ``anomalies`` are replaced by them); ``published``: those a planner gets (confirmed tracks, or all with
    ``publish_unconfirmed``), in instance order; ``base_frame``: the frame of the ground estimates;
    ``no_3d_reason``: why no 3D estimate was possible for this frame (``None`` when the camera was calibrated).
    """

    records: list[AnomalyRecord]
    published: list[AnomalyRecord]
    base_frame: str
    no_3d_reason: str | None

    @property
    def located(self) -> list[AnomalyRecord]:
        """The published anomalies that have a ground estimate."""
        return [record for record in self.published if record.ground is not None]


@dataclass
class FollowerCounters:
    """``frames``: frames followed; ``frames_without_calibration``: of those, frames without a usable
    camera_info; ``located``: anomalies placed on the ground; ``without_ground_contact``: anomalies of calibrated
    frames that got no estimate (their contact lies above the horizon or beyond max_ground_distance, or is hidden);
    ``hidden_contact``: of those, anomalies standing behind another one that hides their contact."""

    frames: int = 0
    frames_without_calibration: int = 0
    located: int = 0
    without_ground_contact: int = 0
    hidden_contact: int = 0


class AnomalyFollower:
    """Tracks one camera's anomalies and, once its calibration is known (:meth:`set_camera_info`), places them on
    the ground. ``name_embedding`` lets the tracker compare names by meaning (see :class:`AnomalyTracker`);
    ``camera_info_source`` names where the calibration comes from, for the messages that say it is missing."""

    def __init__(self, name_embedding: NameEmbedding | None = None, camera_info_source: str = "camera_info"):
        self.tracker = AnomalyTracker(name_embedding=name_embedding)
        self.camera: CameraModel | None = None
        self.calibration_problem: str | None = f"no camera_info received on {camera_info_source}"
        self.no_3d_reason: str | None = self.calibration_problem
        """Why the latest frame (or, before any frame, the latest calibration) gave no 3D output; None if it did."""
        self.counters = FollowerCounters()

    def set_camera_info(self, info) -> None:
        """Keep the newest calibration (a ``sensor_msgs/CameraInfo`` or a :class:`CameraModel`); an unusable one
        is remembered as the reason why there is no 3D output."""
        try:
            self.camera = info if isinstance(info, CameraModel) else CameraModel.from_camera_info(info)
            self.calibration_problem = None
        except (CalibrationError, ValueError, TypeError) as error:
            self.camera = None
            self.calibration_problem = f"unusable camera_info: {error}"
        if self.counters.frames == 0:
            self.no_3d_reason = self.calibration_problem

    def update(self, result: SegmentationResult, stamp_ns: int, config: ClipomalyConfig) -> PlannerFrame:
        """Place, track and filter ``result``'s anomalies (taken at ``stamp_ns``, ns) with the settings in
        ``config``; the result's ``anomalies`` become the followed records."""
        self.counters.frames += 1
        records, problem = self._locate(result, config)
        self.no_3d_reason = problem
        if problem is not None:
            self.counters.frames_without_calibration += 1
        self.tracker.min_hits, self.tracker.max_misses = config.track_min_hits, config.track_max_misses
        records = self.tracker.update(records, stamp_ns)
        result.anomalies = records
        published = [r for r in records if r.confirmed or config.publish_unconfirmed]
        return PlannerFrame(records, published, config.base_frame, problem)

    def _locate(self, result: SegmentationResult, config: ClipomalyConfig) -> tuple[list[AnomalyRecord], str | None]:
        if self.camera is None:
            return list(result.anomalies), self.calibration_problem
        try:
            camera = self.camera.for_image(result.image_size[1], result.image_size[0])
        except CalibrationError as error:
            return list(result.anomalies), str(error)
        locator = GroundLocator(camera, CameraMounting.from_config(config), config.max_ground_distance,
                                config.contact_pixel_error)
        records = []
        masks = {record.id: result.instance_mask(record.id) for record in result.anomalies}
        for record in result.anomalies:
            box, mask = masks[record.id]
            hidden = contact_hidden(box, mask, [m for key, m in masks.items() if key != record.id])
            ground = None if hidden else locator.locate(box, mask)
            self.counters.hidden_contact += hidden
            if ground is None:
                self.counters.without_ground_contact += 1
            else:
                self.counters.located += 1
            records.append(dataclasses.replace(record, ground=ground))
        return records, None


HIDDEN_CONTACT_BAND = 0.25
"""How far below an instance's lowest pixels another instance that hides its ground contact is looked for, as a
fraction of the instance's height (at least 3 rows): the segmentation's edges are a few pixels off at coarse
working resolutions."""


def contact_hidden(box: tuple[int, int, int, int], mask: np.ndarray, others) -> bool:
    """Whether most columns of an instance (``box`` (y0, y1, x0, x1) and ``mask`` as
    :meth:`~.results.SegmentationResult.instance_mask` gives them) end just above another instance of ``others``
    (``[(box, mask), ...]``): then it stands behind that one, its real contact with the road is hidden, and its
    lowest pixels would place it far beyond where it is."""
    if not others:
        return False
    y0, _, x0, _ = box
    columns = np.flatnonzero(mask.any(axis=0))
    bottoms = y0 + mask.shape[0] - 1 - np.argmax(mask[::-1, columns], axis=0)
    columns = x0 + columns
    covered = np.zeros(len(columns), dtype=bool)
    band = max(3, round(HIDDEN_CONTACT_BAND * mask.shape[0]))
    for (oy0, oy1, ox0, ox1), other in others:
        for step in range(1, band + 1):
            rows = bottoms + step
            inside = (rows >= oy0) & (rows < oy1) & (columns >= ox0) & (columns < ox1)
            covered[inside] |= other[rows[inside] - oy0, columns[inside] - ox0]
    return bool(covered.mean() > 0.5)
