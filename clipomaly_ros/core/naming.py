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
    """Mean of the ``(h, w, D)`` features under a working-resolution ``(H, W)`` mask, normalised: ``(D,)``."""
    grid_h, grid_w = features.shape[:2]
    weights = cv2.resize(mask.astype(np.float32), (grid_w, grid_h), interpolation=cv2.INTER_AREA)
    if weights.sum() <= 0:
        weights = (weights == weights.max()).astype(np.float32)
    weights_t = torch.from_numpy(weights).to(features.device)
    pooled = (features * weights_t[..., None]).sum(dim=(0, 1))
    return F.normalize(pooled, dim=-1)


def region_crop(image: np.ndarray, region: CandidateRegion, working_size: tuple[int, int], margin: float,
                background: float, fill: tuple[int, int, int]) -> np.ndarray:
    """A square RGB crop of ``image`` around ``region`` with the background faded towards ``fill``.

    ``margin`` widens the box by that fraction of its size; ``background`` is how much of the original background
    remains (0: ``fill`` only). ``working_size`` is the resolution of ``region``.
    """
    height, width = image.shape[:2]
    scale_y, scale_x = height / working_size[0], width / working_size[1]
    x0, y0, x1, y1 = region.box
    centre_x, centre_y = (x0 + x1 + 1) / 2 * scale_x, (y0 + y1 + 1) / 2 * scale_y
    side = max((x1 - x0 + 1) * scale_x, (y1 - y0 + 1) * scale_y) * (1 + margin)
    side = min(side, max(height, width))
    left = int(np.clip(round(centre_x - side / 2), 0, max(0, width - side)))
    top = int(np.clip(round(centre_y - side / 2), 0, max(0, height - side)))
    right, bottom = min(width, left + int(round(side))), min(height, top + int(round(side)))
    crop = image[top:bottom, left:right].astype(np.float32)
    mask = cv2.resize(region.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    keep = mask[top:bottom, left:right, None].astype(np.float32)
    faded = background * crop + (1 - background) * np.asarray(fill, dtype=np.float32)
    return np.clip(keep * crop + (1 - keep) * faded, 0, 255).astype(np.uint8)


class RegionNamer:
    """Names unknown regions against a :class:`Vocabulary` (see the module docstring)."""

    def __init__(self, backend):
        self.backend = backend

    def name_regions(self, image: np.ndarray, features: torch.Tensor, working_size: tuple[int, int],
                     regions: list[CandidateRegion], vocabulary: Vocabulary, *, top_k: int, logit_scale: float,
                     crop_margin: float, crop_background: float, crop_weight: float,
                     reported: int) -> list[RegionName]:
        if not regions:
            return []
        fill = tuple(self.backend.mean_colour)
        crops = [region_crop(image, region, working_size, crop_margin, crop_background, fill) for region in regions]
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
