"""A frame's maps at the output resolution, computed on the device from patch-grid logits, and only when asked for.

The pipeline decides everything it can on the patch grid and on a coarse map; full-resolution pixels are touched
only along each anomaly's edge (:func:`sample_points`), and the whole-image maps (``semantic``,
``anomaly_score``, ``instances``) are made by :class:`FrameMaps` the first time a consumer asks for them. Both
paths resample the grid logits bilinearly as ``F.interpolate(..., mode="bilinear", align_corners=False)`` does.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from .unknown import resample, softmax_entropy

Box = tuple[int, int, int, int]
"""(y0, y1, x0, x1) in output pixels, half-open."""


def sample_points(grid_maps: torch.Tensor, output_size: tuple[int, int], ys: torch.Tensor,
                  xs: torch.Tensor) -> torch.Tensor:
    """``(C, h, w)`` maps bilinearly resampled to ``output_size`` (H, W), but only at the pixels (``ys``,
    ``xs``) (int tensors of P coordinates): ``(C, P)``. Costs what those pixels cost, not what the image's do."""
    _, height, width = grid_maps.shape

    def source(coordinates, out_length, in_length):
        position = ((coordinates.float() + 0.5) * (in_length / out_length) - 0.5).clamp(min=0.0)
        lower = position.floor().long().clamp(max=in_length - 1)
        return lower, (lower + 1).clamp(max=in_length - 1), position - lower

    top, bottom, down = source(ys.to(grid_maps.device), output_size[0], height)
    left, right, across = source(xs.to(grid_maps.device), output_size[1], width)
    return ((grid_maps[:, top, left] * (1 - across) + grid_maps[:, top, right] * across) * (1 - down)
            + (grid_maps[:, bottom, left] * (1 - across) + grid_maps[:, bottom, right] * across) * down)


def _source_cells(out_length: int, in_length: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``out_length`` output pixels, its two source cells among ``in_length`` and the weight of the
    second, as bilinear resampling with ``align_corners=False`` takes them."""
    position = ((torch.arange(out_length, device=device, dtype=torch.float32) + 0.5) * (in_length / out_length)
                - 0.5).clamp(min=0.0)
    lower = position.floor().long().clamp(max=in_length - 1)
    return lower, (lower + 1).clamp(max=in_length - 1), position - lower


EDGE_SHARE_FOR_FULL_RESAMPLING = 0.06
"""Measured on a 2-core CPU at 1280x720: a road scene's map has 1.6 % of its quads on a class edge and is 2.2x
faster edge by edge; a random-weight model's has 22 % and is 1.4x slower so."""


def best_class_map(grid_maps: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """The argmax over classes of ``(C, h, w)`` maps bilinearly resampled to ``output_size``: ``(H, W)`` int64, as
    ``resample(grid_maps, output_size).argmax(dim=0)`` but without resampling every class at every pixel.

    A resampled pixel is a convex mix of its four source cells; when the four share their best class, that class
    is still best in the mix (each term favours it). Only pixels whose cells disagree, along the class edges, are
    resampled (:func:`sample_points`); when more than :data:`EDGE_SHARE_FOR_FULL_RESAMPLING` of the quads are
    on an edge (a noisy map), resampling everything is cheaper."""
    _, height, width = grid_maps.shape
    best = grid_maps.argmax(dim=0)
    # a quad of cells (i, j), (i + 1, j), (i, j + 1), (i + 1, j + 1), clamped at the last row and column
    below = torch.cat([best[1:], best[-1:]], dim=0)
    right = torch.cat([best[:, 1:], best[:, -1:]], dim=1)
    corner = torch.cat([right[1:], right[-1:]], dim=0)
    uniform = (best == below) & (best == right) & (best == corner)
    if float(uniform.float().mean()) < 1.0 - EDGE_SHARE_FOR_FULL_RESAMPLING:
        return resample(grid_maps, output_size).argmax(dim=0)
    top, _, _ = _source_cells(output_size[0], height, grid_maps.device)
    left, _, _ = _source_cells(output_size[1], width, grid_maps.device)
    labels = best.index_select(0, top).index_select(1, left)
    mixed = ~uniform.index_select(0, top).index_select(1, left)
    ys, xs = mixed.nonzero(as_tuple=True)
    if ys.numel():
        labels[ys, xs] = sample_points(grid_maps, output_size, ys, xs).argmax(dim=0)
    return labels


@dataclass(frozen=True)
class InstanceMask:
    """One anomaly instance at the output resolution: ``id`` (its value in the instance map), ``label`` (its
    index into the frame's labels), ``box`` (y0, y1, x0, x1) and ``mask`` ``(y1 - y0, x1 - x0)`` bool on the
    device."""

    id: int
    label: int
    box: Box
    mask: torch.Tensor


class FrameMaps:
    """The whole-image maps of one frame, each made on the device on first request and kept.

    ``known_logits``: ``(K, h, w)`` grid logits of the known classes; ``output_size``: (H, W) in pixels;
    ``instances``: the anomaly instances, which overwrite the known classes in ``semantic``. Thread-safe.
    """

    def __init__(self, known_logits: torch.Tensor, output_size: tuple[int, int], instances: list[InstanceMask]):
        self.known_logits = known_logits
        self.output_size = tuple(output_size)
        self.instance_masks = instances
        self._maps: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> torch.Tensor:
        """``semantic`` ``(H, W)`` int32 label ids, ``anomaly_score`` ``(H, W)`` float32 in [0, 1], or
        ``instances`` ``(H, W)`` int32 instance ids (0 = none), on the device."""
        with self._lock:
            if name not in self._maps:
                if name == "semantic":
                    # the best class alone, resampled only along class edges, without the softmax the score needs
                    best = best_class_map(self.known_logits, self.output_size).int()
                    self._maps["semantic"] = self._paste(best, "label")
                elif name == "anomaly_score":
                    self._known_maps()
                elif name == "instances":
                    self._maps["instances"] = self._instance_map()
                else:
                    raise KeyError(f"no map named {name!r}: semantic, anomaly_score or instances")
            return self._maps[name]

    @property
    def computed(self) -> list[str]:
        """The maps made so far."""
        with self._lock:
            return sorted(self._maps)

    def _known_maps(self) -> None:
        # the entropy needs every class at every pixel: the same resampled logits give the semantic map, if it is
        # not made yet, for one argmax; the (K, H, W) logits are freed right after
        logits = resample(self.known_logits, self.output_size)
        self._maps["anomaly_score"] = softmax_entropy(logits)
        if "semantic" not in self._maps:
            self._maps["semantic"] = self._paste(logits.argmax(dim=0).int(), "label")

    def _instance_map(self) -> torch.Tensor:
        blank = torch.zeros(self.output_size, dtype=torch.int32, device=self.known_logits.device)
        return self._paste(blank, "id")

    def _paste(self, target: torch.Tensor, value: str) -> torch.Tensor:
        """``target`` with every instance's pixels set to its ``label`` or ``id``."""
        for instance in self.instance_masks:
            y0, y1, x0, x1 = instance.box
            target[y0:y1, x0:x1][instance.mask] = getattr(instance, value)
        return target


ROAD_BAND_MIN_PIXELS = 4
ROAD_BAND_MAX_SAMPLES = 4096
"""The band is sampled on a regular lattice of at most this many pixels: the fraction, not every pixel, matters."""


def road_fraction(known_logits: torch.Tensor, output_size: tuple[int, int], instance: InstanceMask,
                  drivable: list[int], band: float) -> float:
    """The share (0..1) of the band beside and under ``instance`` whose best known class is one of ``drivable``
    (indices into the known classes), from the ``(K, h, w)`` grid ``known_logits``.

    The band spans the instance's lower half and ``band`` times the mean of its box's sides (at least
    :data:`ROAD_BAND_MIN_PIXELS`) to its left, right and below, minus its own pixels."""
    height, width = output_size
    y0, y1, x0, x1 = instance.box
    margin = max(ROAD_BAND_MIN_PIXELS, round(band * ((y1 - y0) + (x1 - x0)) / 2))
    top, bottom = (y0 + y1) // 2, min(height, y1 + margin)
    left, right = max(0, x0 - margin), min(width, x1 + margin)
    step = max(1, math.ceil(math.sqrt((bottom - top) * (right - left) / ROAD_BAND_MAX_SAMPLES)))
    device = known_logits.device
    ys, xs = torch.meshgrid(torch.arange(top, bottom, step, device=device),
                            torch.arange(left, right, step, device=device), indexing="ij")
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    own = torch.zeros_like(inside)
    own[inside] = instance.mask.to(device)[ys[inside] - y0, xs[inside] - x0]
    ys, xs = ys[~own], xs[~own]
    if ys.numel() == 0:
        return 0.0
    best = sample_points(known_logits, output_size, ys, xs).argmax(dim=0)
    return float(torch.isin(best, torch.tensor(drivable, device=device)).float().mean())
