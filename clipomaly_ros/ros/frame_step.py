"""The per-frame step after segmentation, the same for a live camera (the node), a replayed drive and a mined one:
the frame's anomalies tracked and placed on the ground with the mounting in force, then the output messages."""

from __future__ import annotations

from typing import Any, Collection

import numpy as np

from ..core.config import ClipomalyConfig
from ..core.scene.planning import AnomalyFollower, PlannerFrame
from ..core.method.results import SegmentationResult
from .messages import MessageFactory, picture_messages, stamp_ns


class FrameStep:
    """One camera's step after the pipeline: ``step(header, image, result, config) -> (frame, messages)``.

    ``follower`` tracks the camera's anomalies and places them (fed its camera_info by the caller). With a message
    ``factory``, ``messages`` holds the outputs (relative topic -> message): ``anomalies`` and
    ``anomalies_on_road`` always, the 3D ones with a calibration, the image outputs in ``wanted``, and
    ``label_info`` whenever its mapping or its threshold changed (it is latched: a late subscriber reads the last
    one), and ``tags`` (the RAM++ tags the frame was named with, fresh or the camera's last) when the tagger named
    its regions. Without a factory (mining), only the frame."""

    def __init__(self, follower: AnomalyFollower, factory: MessageFactory | None = None):
        self.follower = follower
        self.factory = factory
        self._published_labels: tuple | None = None

    def __call__(self, header: Any, image: np.ndarray, result: SegmentationResult, config: ClipomalyConfig,
                 wanted: Collection[str] = (), autoware=None,
                 available: Collection[str] | None = None) -> tuple[PlannerFrame, dict[str, Any]]:
        """``image``: the frame's H x W x 3 uint8 RGB on the host (drawn on for the pictures); ``autoware``: the
        labels and shape of ``anomalies_objects`` (None leaves it out); ``available``: the outputs that can be
        built (their message packages are installed; default all)."""
        frame = self.follower.update(result, stamp_ns(header), config)
        if self.factory is None:
            return frame, {}
        messages = self.factory.result_messages(header, result, frame, wanted, autoware, available=available)
        messages.update(picture_messages(self.factory, header, image, result, wanted, frame.published))
        tags = getattr(result, "tags", None)
        if tags is not None and (available is None or "tags" in available):
            messages["tags"] = self.factory.classification(header, tags.names, tags.scores)
        # a name can move between known classes and anomalies while the list reads the same
        labels = (tuple(result.labels), result.known_count, float(config.uncertainty_threshold))
        if labels != self._published_labels:
            messages["label_info"] = self.factory.label_info(header, result.labels, config.uncertainty_threshold)
            self._published_labels = labels
        return frame, messages
