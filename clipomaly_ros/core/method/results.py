"""Typed results of one segmented frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .maps import FrameMaps


@dataclass(frozen=True)
class GroundEstimate:
    """An anomaly placed on the ground, in ``base_frame`` metres.

    ``x``, ``y``: the middle of its front (the side facing the camera) on the ground; ``distance``: the
    horizontal distance from the ``base_frame`` origin to that point; ``width``: its extent across the line of
    sight; ``height``: its top above the ground. ``truncated``: the instance touches the image's bottom edge, so its
    real contact may lie nearer than seen. ``along_sigma`` and ``across_sigma``: one standard deviation (m) of the
    position along the camera's line of sight and across it, from
    :attr:`~clipomaly_ros.core.scene.geometry.GroundLocator.pixel_error`: a contact
    row off by dv pixels at range Z moves the point by about Z^2 dv / (f h) on flat ground (f the focal length in
    pixels, h the camera's height above the ground), a column off by du by Z du / f.
    """

    x: float
    y: float
    z: float
    distance: float
    width: float
    height: float
    truncated: bool = False
    along_sigma: float = 0.0
    across_sigma: float = 0.0
    sight: tuple[float, float] | None = None
    """The camera's line of sight to the point: a unit (x, y) vector in ``base_frame``, from the camera's origin,
    not the base frame's (None: unknown, then taken from the base frame's origin)."""

    def horizontal_covariance(self) -> np.ndarray:
        """``(2, 2)`` covariance (m^2) of (x, y) in ``base_frame``: ``along_sigma`` along the camera's line of
        sight, ``across_sigma`` across it."""
        along = np.array(self.sight if self.sight is not None else (self.x, self.y), dtype=np.float64)
        along = along / max(float(np.linalg.norm(along)), 1e-9)
        across = np.array([-along[1], along[0]])
        return self.along_sigma ** 2 * np.outer(along, along) + self.across_sigma ** 2 * np.outer(across, across)

    def to_dict(self) -> dict:
        return {"x": round(self.x, 3), "y": round(self.y, 3), "z": round(self.z, 3),
                "distance": round(self.distance, 3), "width": round(self.width, 3),
                "height": round(self.height, 3), "truncated": self.truncated}


@dataclass(frozen=True)
class AnomalyRecord:
    """One anomaly region.

    ``id`` equals the region's value in ``SegmentationResult.instances``; ``name`` its given name and ``score``
    the mean probability of that name over the region's pixels (0..1); ``bbox`` (x_min, y_min, x_max, y_max),
    inclusive, in input pixels; ``area`` in input pixels; ``centroid`` (x, y) in input pixels; ``candidates``
    the best names from the naming stage with their probabilities, best first.

    ``road_fraction``: the share (0..1) of a band beside and under the instance that the segmentation calls a
    drivable class, and ``on_road`` whether it reaches ``on_road_fraction`` (both ``None`` without drivable
    classes). ``ground``: where it stands in the vehicle frame (:class:`GroundEstimate`), when a
    calibrated camera saw its ground contact.

    Set by :class:`~.tracking.AnomalyTracker` (``None`` before): ``track_id`` (stable over frames, never reused
    in a run), ``track_name`` (voted over the track's frames), ``track_score`` (smoothed), ``track_hits`` (frames
    seen), ``track_age`` (frames since the track began) and ``confirmed``.
    """

    id: int
    name: str
    score: float
    bbox: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]
    candidates: tuple[tuple[str, float], ...]
    road_fraction: float | None = None
    on_road: bool | None = None
    ground: GroundEstimate | None = None
    track_id: int | None = None
    track_name: str | None = None
    track_score: float | None = None
    track_hits: int | None = None
    track_age: int | None = None
    confirmed: bool | None = None

    @property
    def label(self) -> tuple[str, float]:
        """The name and score to show and publish: the track's when tracked, else this frame's."""
        if self.track_name is not None:
            return self.track_name, self.track_score
        return self.name, self.score

    def to_dict(self) -> dict:
        record = asdict(self)
        record["bbox"] = list(self.bbox)
        record["centroid"] = [round(c, 2) for c in self.centroid]
        record["candidates"] = [{"name": n, "score": round(s, 4)} for n, s in self.candidates]
        record["score"] = round(self.score, 4)
        record["ground"] = self.ground.to_dict() if self.ground is not None else None
        for key in ("road_fraction", "track_score"):
            if record[key] is not None:
                record[key] = round(record[key], 4)
        return record


@dataclass(frozen=True)
class DroppedRegion:
    """An unknown region that naming dropped, so the node never publishes it: its best ``name`` was a known class
    (``known`` true: explained after all), or no pixel of the frame landed on its name when the frame was segmented
    again (``known`` false: no name fitted). What a reviewer should still see: the vocabulary's gaps and the
    detector's false alarms.

    ``score`` is the best name's probability, ``candidates`` the best (name, probability) pairs, best first;
    ``coarse_mask`` ``(h, w)`` bool on the coarse map the region was found on, ``image_size`` the frame's (H, W)."""

    name: str
    score: float
    known: bool
    candidates: tuple[tuple[str, float], ...]
    coarse_mask: np.ndarray
    image_size: tuple[int, int]

    def mask(self) -> np.ndarray:
        """The region at the frame's resolution: ``(H, W)`` bool (nearest-neighbour from the coarse map)."""
        height, width = self.image_size
        rows = np.minimum(np.arange(height) * self.coarse_mask.shape[0] // height, self.coarse_mask.shape[0] - 1)
        cols = np.minimum(np.arange(width) * self.coarse_mask.shape[1] // width, self.coarse_mask.shape[1] - 1)
        return self.coarse_mask[rows[:, None], cols[None, :]]

    def box(self) -> tuple[int, int, int, int]:
        """(x_min, y_min, x_max, y_max), inclusive, in frame pixels."""
        ys, xs = np.nonzero(self.mask())
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


class SegmentationResult:
    """Everything the pipeline says about one frame, at the input resolution (H x W).

    Always at hand, computed with the frame:

    - ``anomalies``: one :class:`AnomalyRecord` per instance, ordered by id;
    - ``labels``: known classes first, then the names given to anomalies in this frame;
    - ``known_count``: how many leading ``labels`` are known classes;
    - ``rejected``: names of unknown regions whose best name was a known class (explained, not anomalies);
    - ``dropped``: those regions and the ones whose name no pixel took (:class:`DroppedRegion`): never published,
      kept for review (mining indexes them with ``reported`` false);
    - ``timings_ms``: milliseconds per stage; ``image_size``: (H, W).

    Made on the model's device the first time they are read (a consumer that wants only the records pays for
    none of them), then kept, as numpy arrays:

    - ``semantic``: ``(H, W)`` uint16 ids indexing ``labels``;
    - ``anomaly_score``: ``(H, W)`` float32 in [0, 1]: the normalised entropy of the known-class probabilities
      (0 = one known class certain, 1 = no known class preferred). It does not depend on whether a region was
      found, so it ranks pixels consistently across a dataset;
    - ``anomaly_mask``: ``(H, W)`` bool, pixels that landed on a new name;
    - ``instances``: ``(H, W)`` uint16 anomaly instance ids, 0 = none.

    ``image``: the RGB uint8 ``(H, W, 3)`` host array the frame was segmented from, the pipeline's one host copy
    of a frame decoded on the device (outputs such as the overlay read it; None for a result built otherwise).

    ``computed_maps`` says which maps have been made. A result can also be built from ready arrays (tests, tools).
    """

    def __init__(self, *, labels: list[str], anomalies: list[AnomalyRecord], known_count: int,
                 rejected: list[str] | None = None, timings_ms: dict[str, float] | None = None,
                 maps: FrameMaps | None = None, semantic: np.ndarray | None = None,
                 anomaly_score: np.ndarray | None = None, anomaly_mask: np.ndarray | None = None,
                 instances: np.ndarray | None = None, image: np.ndarray | None = None):
        self.labels = labels
        self.image = image
        self.dropped: list[DroppedRegion] = []
        self.tags = None
        """The frame's RAM++ tags (:class:`~.tagging.FrameTags`) when the tagger named its regions, else None."""
        self.anomalies = anomalies
        self.known_count = known_count
        self.rejected = rejected if rejected is not None else []
        self.timings_ms = timings_ms if timings_ms is not None else {}
        self._source = maps
        given = {"semantic": semantic, "anomaly_score": anomaly_score, "anomaly_mask": anomaly_mask,
                 "instances": instances}
        self._arrays = {name: array for name, array in given.items() if array is not None}
        if maps is None and not {"semantic", "anomaly_score", "instances"} <= set(self._arrays):
            raise ValueError("give either maps or the arrays semantic, anomaly_score and instances")
        if maps is not None:
            self.image_size = maps.output_size
        else:
            self.image_size = tuple(self._arrays["semantic"].shape[:2])

    def _map(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            if name == "anomaly_mask":
                self._arrays[name] = self.instances > 0
            else:
                tensor = self._source.get(name)
                dtype = np.float32 if name == "anomaly_score" else np.uint16
                self._arrays[name] = tensor.cpu().numpy().astype(dtype, copy=False)
        return self._arrays[name]

    @property
    def semantic(self) -> np.ndarray:
        return self._map("semantic")

    @property
    def anomaly_score(self) -> np.ndarray:
        return self._map("anomaly_score")

    @property
    def anomaly_mask(self) -> np.ndarray:
        return self._map("anomaly_mask")

    @property
    def instances(self) -> np.ndarray:
        return self._map("instances")

    def instance_mask(self, instance_id: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Instance ``instance_id``'s box (y0, y1, x0, x1), half-open in pixels, and its ``(y1 - y0, x1 - x0)``
        bool pixels, without making the whole-image maps."""
        if self._source is not None:
            for instance in self._source.instance_masks:
                if instance.id == instance_id:
                    return instance.box, instance.mask.cpu().numpy()
            raise KeyError(f"no anomaly instance {instance_id}")
        ys, xs = np.nonzero(self.instances == instance_id)
        if ys.size == 0:
            raise KeyError(f"no anomaly instance {instance_id}")
        box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        return box, self.instances[box[0]:box[1], box[2]:box[3]] == instance_id

    @property
    def device(self):
        """The torch device the maps are made on (CPU for a result built from arrays)."""
        import torch

        return self._source.known_logits.device if self._source is not None else torch.device("cpu")

    @property
    def computed_maps(self) -> list[str]:
        """The maps made so far (as numpy arrays or on the device)."""
        made = set(self._arrays) | set(self._source.computed if self._source is not None else ())
        return sorted(made)

    def summary(self) -> dict:
        """JSON-ready description: labels, anomalies, timings (the maps are left out)."""
        return {
            "image_size": {"height": int(self.image_size[0]), "width": int(self.image_size[1])},
            "labels": list(self.labels),
            "known_count": self.known_count,
            "anomalies": [record.to_dict() for record in self.anomalies],
            "rejected_regions": list(self.rejected),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            **({"tags": {"names": list(self.tags.names), "scores": [round(v, 4) for v in self.tags.scores],
                         "fresh": self.tags.fresh}} if self.tags is not None else {}),
        }
