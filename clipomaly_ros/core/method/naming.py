"""Naming: which word best describes each unknown region?

1. Preselection: the region's mask-pooled dense embedding is compared with every dictionary name; the
   ``top_k`` best stay as candidates, together with the user's anomaly vocabulary and the known classes.
2. Region-aware scoring: a square crop around the region, its background faded towards the model's mean
   colour, is embedded as a whole image. Each candidate's score mixes crop similarity and mask-pooled similarity
   (``crop_weight``), and a softmax over candidates (``logit_scale``) turns scores into probabilities.
3. A region whose best candidate is a known class is explained after all and is not an anomaly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .unknown import CandidateRegion
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class RegionName:
    """The naming verdict for one region: best ``name`` and its probability ``score``, ``is_known`` when that
    name is a known class, ``candidates``: the best (name, probability) pairs, best first."""

    region: CandidateRegion
    name: str
    score: float
    is_known: bool
    candidates: tuple[tuple[str, float], ...]
    embedding: torch.Tensor = field(repr=False, compare=False)
    """``(D,)`` text embedding of ``name``, reused by the extension step."""


def mask_pooled_embedding(features: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """Mean of the ``(h, w, D)`` features under an ``(H, W)`` mask of any resolution, normalised: ``(D,)``."""
    grid_h, grid_w = features.shape[:2]
    weights = cv2.resize(mask.astype(np.float32), (grid_w, grid_h), interpolation=cv2.INTER_AREA)
    if weights.sum() <= 0:
        weights = (weights == weights.max()).astype(np.float32)
    weights_t = torch.from_numpy(weights).to(features.device)
    pooled = (features.float() * weights_t[..., None]).sum(dim=(0, 1))
    return F.normalize(pooled, dim=-1)


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """An RGB uint8 image resized to ``side`` x ``side``: antialiased bilinear when shrinking, bicubic when
    enlarging, close to CLIP's own preprocessing (area and nearest filters would alias or blur)."""
    if side * side >= image.shape[0] * image.shape[1]:
        return cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()


def region_crop(image: np.ndarray, region: CandidateRegion, margin: float, background: float,
                fill: tuple[int, int, int], side: int | None = None) -> np.ndarray:
    """A square RGB crop of ``image`` around ``region`` with the background faded towards ``fill``.

    ``region`` may be on a map of any resolution (its cells are scaled to the image); ``margin`` widens the box
    by that fraction of its size; ``background`` is how much of the original background remains (0: ``fill``
    only). With ``side`` the crop is resized to ``side`` x ``side`` pixels first (:func:`resize_square`), so its
    cost does not grow with the region.
    """
    height, width = image.shape[:2]
    region_h, region_w = region.mask.shape
    scale_y, scale_x = height / region_h, width / region_w
    x0, y0, x1, y1 = region.box
    centre_x, centre_y = (x0 + x1 + 1) / 2 * scale_x, (y0 + y1 + 1) / 2 * scale_y
    extent = max((x1 - x0 + 1) * scale_x, (y1 - y0 + 1) * scale_y) * (1 + margin)
    extent = min(extent, max(height, width))
    left = int(np.clip(round(centre_x - extent / 2), 0, max(0, width - extent)))
    top = int(np.clip(round(centre_y - extent / 2), 0, max(0, height - extent)))
    right, bottom = min(width, left + int(round(extent))), min(height, top + int(round(extent)))
    crop = image[top:bottom, left:right]
    if side is not None and crop.shape[:2] != (side, side):
        crop = resize_square(crop, side)
    # nearest-neighbour lookup of the region's cells for the crop's pixels only
    rows = np.minimum(((top + (np.arange(crop.shape[0]) + 0.5) * (bottom - top) / crop.shape[0]) / scale_y)
                      .astype(int), region_h - 1)
    cols = np.minimum(((left + (np.arange(crop.shape[1]) + 0.5) * (right - left) / crop.shape[1]) / scale_x)
                      .astype(int), region_w - 1)
    keep = region.mask[np.ix_(rows, cols)].astype(np.uint8)
    faded = cv2.addWeighted(crop, background, np.full_like(crop, fill), 1.0 - background, 0.0)
    return cv2.copyTo(crop, keep, faded)


class RegionNamer:
    """Names unknown regions against a :class:`Vocabulary` (see the module docstring)."""

    def __init__(self, backend):
        self.backend = backend

    def name_regions(self, image: np.ndarray, features: torch.Tensor, regions: list[CandidateRegion],
                     vocabulary: Vocabulary, *, top_k: int, logit_scale: float,
                     crop_margin: float, crop_background: float, crop_weight: float,
                     reported: int) -> list[RegionName]:
        if not regions:
            return []
        fill = tuple(self.backend.mean_colour)
        side = getattr(self.backend, "crop_size", None)
        crops = [region_crop(image, region, crop_margin, crop_background, fill, side) for region in regions]
        crop_embeddings = self.backend.encode_images(crops).to(features.device)
        known = set(vocabulary.known)
        results = []
        for region, crop_embedding in zip(regions, crop_embeddings):
            pooled = mask_pooled_embedding(features, region.mask)
            names, embeddings = self._candidates(pooled, vocabulary, top_k)
            score = crop_weight * (embeddings @ crop_embedding) + (1 - crop_weight) * (embeddings @ pooled)
            probabilities = torch.softmax(logit_scale * score, dim=0)
            order = torch.argsort(probabilities, descending=True).tolist()
            best = order[0]
            results.append(RegionName(
                region=region, name=names[best], score=float(probabilities[best]), is_known=names[best] in known,
                candidates=tuple((names[i], float(probabilities[i])) for i in order[:reported]),
                embedding=embeddings[best]))
        return results

    @staticmethod
    def _candidates(pooled: torch.Tensor, vocabulary: Vocabulary, top_k: int) -> tuple[list[str], torch.Tensor]:
        names: list[str] = []
        parts = []
        if vocabulary.dictionary:
            similarity = vocabulary.dictionary_embeddings @ pooled
            top = torch.topk(similarity, min(top_k, len(vocabulary.dictionary))).indices
            names += [vocabulary.dictionary[i] for i in top.tolist()]
            parts.append(vocabulary.dictionary_embeddings[top])
        taken = set(names)
        extra = [i for i, name in enumerate(vocabulary.anomaly) if name not in taken]
        names += [vocabulary.anomaly[i] for i in extra]
        parts.append(vocabulary.anomaly_embeddings[extra])
        names += list(vocabulary.known)
        parts.append(vocabulary.known_embeddings)
        return names, torch.cat(parts)
