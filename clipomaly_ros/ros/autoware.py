"""What Autoware's ``autoware_perception_msgs/DetectedObjects`` needs beyond our records, without ROS: the
classification of anomaly names, a track's existence probability and the position covariance.

The message definitions are autoware_msgs 1.12.0's (``clipomaly_ros/data/autoware_perception_msgs/msg``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..core.config import ConfigError
from ..core.method.results import AnomalyRecord
from ..core.method.vocabulary import read_name_sections

OBJECT_LABELS = ("UNKNOWN", "CAR", "TRUCK", "BUS", "TRAILER", "MOTORCYCLE", "BICYCLE", "PEDESTRIAN", "ANIMAL",
                 "HAZARD", "OVER_DRIVABLE", "UNDER_DRIVABLE")
"""``ObjectClassification``'s label constants in the order of their values (UNKNOWN = 0 ... UNDER_DRIVABLE = 11)."""
ORIENTATION_UNAVAILABLE = 0  # DetectedObjectKinematics.UNAVAILABLE
SHAPE_TYPES = {"bounding_box": 0, "polygon": 2}  # Shape.BOUNDING_BOX, Shape.POLYGON
HEADING_VARIANCE = float(np.pi ** 2)
"""Variance (rad^2) of the rotations in the pose covariance: one camera does not see which way an object faces."""


@dataclass(frozen=True)
class AutowareLabels:
    """The ``autoware_labels`` setting as a lookup: ``names`` (name -> label value), ``sections`` (naming dictionary
    section -> label value, with the section's names) and ``fallback`` (every other name)."""

    names: dict[str, int]
    sections: tuple[tuple[frozenset[str], int], ...]
    fallback: int

    @classmethod
    def from_entries(cls, entries, dictionary: str | None = None) -> "AutowareLabels":
        """From ``NAME=LABEL`` entries (``@SECTION=LABEL`` for a section of the naming dictionary ``dictionary``,
        the shipped one when empty; ``*=LABEL`` for the rest), as :data:`~clipomaly_ros.core.config.SETTINGS`
        describes them. An unknown section is a ``ValueError`` that lists the dictionary's sections."""
        names, sections, fallback = {}, [], 0
        found = None
        for entry in entries:
            name, _, label = entry.rpartition("=")
            value = OBJECT_LABELS.index(label)
            if name == "*":
                fallback = value
            elif name.startswith("@"):
                found = found if found is not None else _sections(dictionary or "")
                if name[1:] not in found:
                    raise ValueError(f"autoware_labels: {entry!r} names no section of the naming dictionary; its "
                                     f"sections are {' | '.join(sorted(found))}")
                sections.append((found[name[1:]], value))
            else:
                names[name] = value
        return cls(names, tuple(sections), fallback)

    def label(self, name: str) -> int:
        """The label value for an anomaly name: its own entry, else its section's (first listed first), else the
        fallback."""
        if name in self.names:
            return self.names[name]
        for members, value in self.sections:
            if name in members:
                return value
        return self.fallback


@functools.lru_cache(maxsize=4)
def _sections(dictionary: str) -> dict[str, frozenset[str]]:
    return read_name_sections(dictionary or None)


def existence_probability(record: AnomalyRecord) -> float:
    """How sure the track is that the anomaly exists (0..1): the share of its frames it was seen in, times
    ``1 - 2^-hits`` so that evidence builds up with every sighting (0.5 after one, 0.875 after three). An
    untracked record counts as one sighting."""
    hits, age = record.track_hits or 1, record.track_age or 1
    return float(min(1.0, hits / max(age, hits)) * (1.0 - 0.5 ** hits))


def position_covariance(ground) -> np.ndarray:
    """The row-major 6x6 pose covariance (x, y, z in m^2, then rotations about x, y, z in rad^2) in the base frame of
    a :class:`~clipomaly_ros.core.method.results.GroundEstimate`: its ``along_sigma`` along the camera's line of sight
    (from the camera, wherever it is mounted) and ``across_sigma`` across it
    (:meth:`~clipomaly_ros.core.method.results.GroundEstimate.horizontal_covariance`); z from the across error (the
    object's height is measured at the same range); rotations :data:`HEADING_VARIANCE`."""
    covariance = np.zeros((6, 6))
    covariance[:2, :2] = ground.horizontal_covariance()
    covariance[2, 2] = ground.across_sigma ** 2
    covariance[3:, 3:] = np.eye(3) * HEADING_VARIANCE
    return covariance.reshape(-1)


def autoware_style(config) -> tuple[AutowareLabels, str]:
    """``(labels, shape)`` for :meth:`~.messages.MessageFactory.detected_objects` from a
    :class:`~clipomaly_ros.core.config.ClipomalyConfig`'s ``autoware_labels``, ``naming_dictionary`` and
    ``autoware_shape``; a section the dictionary lacks raises :class:`~clipomaly_ros.core.config.ConfigError`."""
    return _style(tuple(config.autoware_labels), config.naming_dictionary, config.autoware_shape)


@functools.lru_cache(maxsize=8)
def _style(entries: tuple[str, ...], dictionary: str, shape: str) -> tuple[AutowareLabels, str]:
    try:
        return AutowareLabels.from_entries(entries, dictionary), shape
    except ValueError as error:
        raise ConfigError(str(error)) from None
