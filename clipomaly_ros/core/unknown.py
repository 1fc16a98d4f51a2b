"""Unknown detection: where do the known classes fail to explain the image?

Per pixel, cosine similarities to the known classes' text embeddings are scaled by ``logit_scale`` and turned
into class probabilities with a softmax; their entropy divided by ``log(K)`` is the uncertainty in [0, 1]
(0: one class certain, 1: all equally likely). Uncertain pixels, cleaned by a morphological opening and closing,
split into connected components; components below a minimum area are dropped and at most ``max_regions`` of
the largest are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def similarity_maps(features: torch.Tensor, text_embeddings: torch.Tensor,
                    working_size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every location to every text embedding, at the working resolution.

    ``features``: ``(h, w, D)`` normalised; ``text_embeddings``: ``(K, D)`` normalised.
    Returns ``(K, H, W)`` float32 (bilinear upsampling of the ``(K, h, w)`` grid).
    """
    grid = torch.einsum("hwd,kd->khw", features, text_embeddings.to(features.dtype))
    if grid.shape[1:] == tuple(working_size):
        return grid
    return F.interpolate(grid[None], size=working_size, mode="bilinear", align_corners=False)[0]


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
    """An unknown region at the working resolution: ``mask`` ``(H, W)`` bool, ``area`` in working pixels,
    ``box`` (x_min, y_min, x_max, y_max) inclusive, in working pixels."""

    mask: np.ndarray
    area: int
    box: tuple[int, int, int, int]


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def find_unknown_regions(uncertainty: np.ndarray, threshold: float, min_area: int, max_regions: int,
                         cleanup_radius: int) -> list[CandidateRegion]:
    """Connected regions of ``uncertainty > threshold`` (``(H, W)`` float), largest first.

    ``min_area`` is in pixels of ``uncertainty``; ``cleanup_radius`` 0 skips the opening and closing.
    """
    mask = uncertainty > threshold
    if cleanup_radius > 0 and mask.any():
        structure = _disk(cleanup_radius)
        mask = ndimage.binary_closing(ndimage.binary_opening(mask, structure), structure)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    order = [index for index in np.argsort(-areas[1:], kind="stable") + 1 if areas[index] >= min_area]
    regions = []
    slices = ndimage.find_objects(labels)
    for index in order[:max_regions]:
        rows, cols = slices[index - 1]
        regions.append(CandidateRegion(mask=labels == index, area=int(areas[index]),
                                       box=(cols.start, rows.start, cols.stop - 1, rows.stop - 1)))
    return regions
