"""Unknown detection: where do the known classes fail to explain the image?

Per location, cosine similarities to the known classes' text embeddings are scaled by ``logit_scale`` and turned
into class probabilities with a softmax; their entropy divided by ``log(K)`` is the uncertainty in [0, 1]
(0: one class certain, 1: all equally likely).

Regions are found where that is cheap: on a coarse map (a few thousand cells, :func:`coarse_size`) the uncertain
cells are thresholded and cleaned on the device (an opening and a closing by max-pooling), and only that small
mask goes to the host for connected components. Components below a minimum area are dropped and at most
``max_regions`` of the largest are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COARSE_CELL = 8
"""Side in working pixels of a coarse cell for a ViT-B/16 (half a patch); smaller patches give smaller cells."""
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def coarse_size(working_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(rows, columns) of the coarse map for a working resolution: cells of ``max(4, min(8, patch / 2))`` working
    pixels, so a 1280x720 frame at 448 working pixels gives 56 x 100 cells."""
    cell = max(4, min(COARSE_CELL, patch // 2))
    return max(1, math.ceil(working_size[0] / cell)), max(1, math.ceil(working_size[1] / cell))


def class_logits(features: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale`` x cosine similarity of every ``(h, w, D)`` feature to every ``(K, D)`` text embedding:
    ``(K, h, w)`` float32 on the features' device."""
    return logit_scale * torch.einsum("hwd,kd->khw", features.float(), text_embeddings.to(features.device).float())


def similarity_maps(features: torch.Tensor, text_embeddings: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every location to every text embedding, bilinearly resampled to ``size``.

    ``features``: ``(h, w, D)`` normalised; ``text_embeddings``: ``(K, D)`` normalised. Returns ``(K, H, W)``.
    """
    return resample(class_logits(features, text_embeddings, 1.0), size)


def resample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` maps bilinearly resampled to ``size`` (height, width): ``(C, H, W)``."""
    if maps.shape[1:] == tuple(size):
        return maps
    return F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def normalized_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over dim 0 of ``(K, H, W)`` probabilities divided by ``log K``: ``(H, W)`` in [0, 1]."""
    classes = probabilities.shape[0]
    if classes < 2:
        return torch.zeros(probabilities.shape[1:], device=probabilities.device)
    entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum(dim=0)
    return (entropy / math.log(classes)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class ClassStatistics:
    """What the rest of the pipeline needs from ``(K, H, W)`` class logits, each ``(H, W)``:
    ``log_normaliser`` (logsumexp over classes), ``best_logit`` and ``best_class`` (max and argmax) and
    ``uncertainty`` (normalised entropy of the softmax, in [0, 1])."""

    log_normaliser: torch.Tensor
    best_logit: torch.Tensor
    best_class: torch.Tensor
    uncertainty: torch.Tensor


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The normalised entropy of the softmax of ``(K, H, W)`` logits over dim 0: ``(H, W)`` float32 in [0, 1], the
    ``uncertainty`` of :func:`class_statistics` without its other maps."""
    classes = logits.shape[0]
    if classes < 2:
        return torch.zeros(logits.shape[1:], device=logits.device)
    log_normaliser = torch.logsumexp(logits, dim=0)
    expected_logit = (torch.exp(logits - log_normaliser) * logits).sum(dim=0)
    return ((log_normaliser - expected_logit) / math.log(classes)).clamp(0.0, 1.0).float()


def class_statistics(logits: torch.Tensor) -> ClassStatistics:
    """Softmax statistics of ``(K, H, W)`` logits in one pass over them (entropy = logsumexp - E[logit])."""
    log_normaliser = torch.logsumexp(logits, dim=0)
    expected_logit = (torch.exp(logits - log_normaliser) * logits).sum(dim=0)
    classes = logits.shape[0]
    uncertainty = ((log_normaliser - expected_logit) / math.log(classes)).clamp(0.0, 1.0) if classes > 1 \
        else torch.zeros_like(log_normaliser)
    best_logit, best_class = logits.max(dim=0)
    return ClassStatistics(log_normaliser, best_logit, best_class, uncertainty)


@dataclass(frozen=True)
class CandidateRegion:
    """An unknown region on a map of some resolution (the coarse map in the pipeline): ``mask`` ``(h, w)`` bool,
    ``area`` in cells of that map, ``box`` (x_min, y_min, x_max, y_max) inclusive, in cells."""

    mask: np.ndarray
    area: int
    box: tuple[int, int, int, int]


def clean_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Opening then closing of an ``(h, w)`` bool mask with a ``(2r+1)``-square, on the mask's device."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1

    def dilate(m):
        return F.max_pool2d(m[None, None].float(), size, stride=1, padding=radius)[0, 0] > 0

    def erode(m):
        return ~dilate(~m)

    return erode(dilate(dilate(erode(mask))))


def connected_regions(mask: np.ndarray, min_area: int, max_regions: int) -> list[CandidateRegion]:
    """8-connected components of an ``(h, w)`` bool mask with at least ``min_area`` cells, largest first, at most
    ``max_regions``."""
    from scipy import ndimage  # here, not at import: the model side (the GPU check) runs without scipy

    labels, count = ndimage.label(mask, structure=CONNECTIVITY)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    order = [index for index in np.argsort(-areas[1:], kind="stable") + 1 if areas[index] >= min_area]
    slices = ndimage.find_objects(labels)
    regions = []
    for index in order[:max_regions]:
        rows, cols = slices[index - 1]
        regions.append(CandidateRegion(mask=labels == index, area=int(areas[index]),
                                       box=(cols.start, rows.start, cols.stop - 1, rows.stop - 1)))
    return regions


def find_unknown_regions(uncertainty: torch.Tensor | np.ndarray, threshold: float, min_area: int,
                         max_regions: int, cleanup_radius: int) -> list[CandidateRegion]:
    """Connected regions of ``uncertainty > threshold`` (``(h, w)``, tensor or array), largest first.

    ``min_area`` is in cells of ``uncertainty``; ``cleanup_radius`` (cells) 0 skips the opening and closing.
    Thresholding and clean-up run on the tensor's device; only the bool mask goes to the host.
    """
    uncertainty = torch.as_tensor(uncertainty)
    mask = clean_mask(uncertainty > threshold, cleanup_radius)
    return connected_regions(mask.cpu().numpy(), min_area, max_regions)
