"""Extension: segment again over the known classes plus the new names; pixels that land on a new name form the
anomaly instances.

Which name wins where, the connected components, ``min_region_area`` and ``max_regions`` are decided on the coarse
map; each kept instance is then refined at the output resolution along its edge (:func:`.maps.sample_points`), so
full-resolution work follows the anomalies' outlines, not the image's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .maps import InstanceMask, sample_points
from .unknown import CONNECTIVITY, ClassStatistics, class_logits, resample


@dataclass(frozen=True)
class Instance:
    """One anomaly instance: its ``mask`` at the output resolution, ``name``, ``score`` (mean probability of the
    name over its pixels, 0..1), ``area`` in output pixels, ``bbox`` (x_min, y_min, x_max, y_max) inclusive and
    ``centroid`` (x, y), in output pixels."""

    mask: InstanceMask
    name: str
    score: float
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]


def coarse_instances(new_wins: np.ndarray, best_new: np.ndarray, names: int, min_cells: int,
                     max_regions: int) -> list[tuple[int, np.ndarray]]:
    """Connected components of each new name where it wins, on the coarse map: ``(name index, (h, w) bool)``
    pairs, largest first, at least ``min_cells`` cells, at most ``max_regions``."""
    components = []
    for name in range(names):
        labels, count = ndimage.label(new_wins & (best_new == name), structure=CONNECTIVITY)
        if count:
            areas = np.bincount(labels.ravel(), minlength=count + 1)
            components += [(int(areas[i]), name, labels == i) for i in np.flatnonzero(areas >= min_cells) if i]
    components.sort(key=lambda component: -component[0])
    return [(name, mask) for _, name, mask in components[:max_regions]]


def footprints(components: list[tuple[int, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` int map: each component's cells and the free cells around it (one cell wide) carry its number
    (1, 2, ...); a free cell between two components goes to the one with the higher number. The refinement looks
    for an instance's pixels only inside its footprint, so instances never overlap."""
    numbers = np.zeros(shape, dtype=np.int32)
    for number, (_, mask) in enumerate(components, start=1):
        numbers[mask] = number
    grown = ndimage.maximum_filter(numbers, size=3)
    return np.where(numbers > 0, numbers, grown)


def extend(features: torch.Tensor, known_logits: torch.Tensor, known_coarse: ClassStatistics,
           new_names: list[str], new_embeddings: torch.Tensor, output_size: tuple[int, int], logit_scale: float,
           known_count: int, min_area: int, max_regions: int,
           refine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[Instance], list[str]]:
    """The anomaly instances of one frame, largest first (ids 1, 2, ...), and the new names that kept one.

    ``features``: ``(h, w, D)`` grid features; ``known_logits``: ``(K, h, w)`` their known-class logits;
    ``known_coarse``: the known classes' statistics on the coarse map; ``new_embeddings``: ``(N, D)`` for
    ``new_names``; ``min_area`` in output pixels; ``refine``: what was done to ``known_logits`` (PAMR), done to the
    new names' logits too.
    """
    if not new_names:
        return [], []
    coarse = tuple(known_coarse.best_logit.shape)
    height, width = output_size
    new_logits = class_logits(features, new_embeddings, logit_scale)
    if refine is not None:
        new_logits = refine(new_logits)
    new_coarse = resample(new_logits, coarse)
    best_new_logit, best_new = new_coarse.max(dim=0)
    new_wins = (best_new_logit > known_coarse.best_logit).cpu().numpy()
    min_cells = max(1, math.floor(min_area * coarse[0] * coarse[1] / (height * width)))
    components = coarse_instances(new_wins, best_new.cpu().numpy(), len(new_names), min_cells, max_regions)
    if not components:
        return [], []
    owner = footprints(components, coarse)
    all_logits = torch.cat([known_logits, new_logits])
    coarse_probability = torch.exp(new_coarse - torch.logaddexp(known_coarse.log_normaliser,
                                                                 torch.logsumexp(new_coarse, dim=0)))
    refined = []
    for number, ((name, component), (rows, cols)) in enumerate(zip(components, ndimage.find_objects(owner)), 1):
        box = (rows.start * height // coarse[0], -(-rows.stop * height // coarse[0]),
               cols.start * width // coarse[1], -(-cols.stop * width // coarse[1]))
        mask, probability_sum = _refine(all_logits, known_count, name, component, owner == number, box,
                                        output_size, coarse_probability[name])
        area = int(mask.sum())
        if area >= min_area:
            refined.append((area, name, box, mask, probability_sum / area))
    refined.sort(key=lambda item: -item[0])
    kept_names: list[str] = []
    instances = []
    for instance_id, (area, name, box, mask, score) in enumerate(refined, start=1):
        if new_names[name] not in kept_names:
            kept_names.append(new_names[name])
        label = known_count + kept_names.index(new_names[name])
        instances.append(_describe(instance_id, label, new_names[name], box, mask, score, area))
    return instances, kept_names


def _refine(all_logits: torch.Tensor, known_count: int, name: int, component: np.ndarray, footprint: np.ndarray,
            box: tuple[int, int, int, int], output_size: tuple[int, int],
            coarse_probability: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The instance's pixels in ``box`` at the output resolution, ``(h, w)`` bool, and the sum of its name's
    probability over them.

    Cells deep inside the component (all 8 neighbours in it too) are inside; the pixels of the other footprint
    cells, along the edge, are decided one by one from the resampled logits: the name must be the best new name
    and beat every known class. So the cost follows the region's outline, not its area.
    """
    y0, y1, x0, x1 = box
    cells_y, cells_x = footprint.shape
    cell_of_row = torch.arange(y0, y1) * cells_y // output_size[0]
    cell_of_column = torch.arange(x0, x1) * cells_x // output_size[1]
    interior = ndimage.binary_erosion(component, structure=CONNECTIVITY)
    edge = footprint & ~interior

    def upsample(cells: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(cells)[cell_of_row[:, None], cell_of_column[None, :]]

    mask = upsample(interior)
    interior_probability = float((coarse_probability.cpu()[cell_of_row[:, None], cell_of_column[None, :]]
                                  * mask).sum())
    ys, xs = torch.nonzero(upsample(edge), as_tuple=True)
    logits = sample_points(all_logits, output_size, ys + y0, xs + x0)
    new_best, new_index = logits[known_count:].max(dim=0)
    inside = ((new_index == name) & (new_best > logits[:known_count].max(dim=0).values)).cpu()
    mask[ys[inside], xs[inside]] = True
    probability = torch.exp(logits[known_count + name] - torch.logsumexp(logits, dim=0)).cpu()
    return mask.to(all_logits.device), interior_probability + float(probability[inside].sum())


def _describe(instance_id: int, label: int, name: str, box, pixels: torch.Tensor, score: float,
              area: int) -> Instance:
    y0, _, x0, _ = box
    ys, xs = torch.nonzero(pixels, as_tuple=True)
    bbox = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()), y0 + int(ys.max()))
    centroid = (x0 + float(xs.float().mean()), y0 + float(ys.float().mean()))
    return Instance(InstanceMask(instance_id, label, box, pixels), name, score, area, bbox, centroid)
