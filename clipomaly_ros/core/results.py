"""Typed results of one segmented frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class AnomalyRecord:
    """One anomaly region.

    ``id`` equals the region's value in ``SegmentationResult.instances``; ``name`` its given name and ``score``
    the mean probability of that name over the region's pixels (0..1); ``bbox`` (x_min, y_min, x_max, y_max),
    inclusive, in input pixels; ``area`` in input pixels; ``centroid`` (x, y) in input pixels; ``candidates``
    the best names from the naming stage with their probabilities, best first.
    """

    id: int
    name: str
    score: float
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]
    candidates: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        record = asdict(self)
        record["bbox"] = list(self.bbox)
        record["centroid"] = [round(c, 2) for c in self.centroid]
        record["candidates"] = [{"name": n, "score": round(s, 4)} for n, s in self.candidates]
        record["score"] = round(self.score, 4)
        return record


@dataclass
class SegmentationResult:
    """Everything the pipeline says about one frame, at the input resolution (H x W).

    - ``semantic``: ``(H, W)`` uint16 ids indexing ``labels``;
    - ``labels``: known classes first, then the names given to anomalies in this frame;
    - ``anomaly_score``: ``(H, W)`` float32 in [0, 1]: the normalised entropy of the known-class probabilities
      (0 = one known class certain, 1 = no known class preferred). It does not depend on whether a region was
      found, so it ranks pixels consistently across a dataset;
    - ``anomaly_mask``: ``(H, W)`` bool, pixels that landed on a new name;
    - ``instances``: ``(H, W)`` uint16 anomaly instance ids, 0 = none;
    - ``anomalies``: one :class:`AnomalyRecord` per instance, ordered by id;
    - ``known_count``: how many leading ``labels`` are known classes;
    - ``rejected``: names of unknown regions whose best name was a known class (explained, not anomalies);
    - ``timings_ms``: milliseconds per stage.
    """

    semantic: np.ndarray
    labels: list[str]
    anomaly_score: np.ndarray
    anomaly_mask: np.ndarray
    instances: np.ndarray
    anomalies: list[AnomalyRecord]
    known_count: int
    rejected: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description: labels, anomalies, timings (the maps are left out)."""
        return {
            "image_size": {"height": int(self.semantic.shape[0]), "width": int(self.semantic.shape[1])},
            "labels": list(self.labels),
            "known_count": self.known_count,
            "anomalies": [record.to_dict() for record in self.anomalies],
            "rejected_regions": list(self.rejected),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
