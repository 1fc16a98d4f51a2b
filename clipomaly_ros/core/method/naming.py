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

import numpy as np
import torch
import torch.nn.functional as F
# at import, not on the first region: open_clip loads it anyway, and with the toy backend a first load in the
# middle of a run would add its ~160 MB of libraries to that run's memory
from torchvision.ops import roi_align

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
    import cv2  # here, not at import: the model side (the GPU check's naming path) runs without opencv

    grid_h, grid_w = features.shape[:2]
    weights = cv2.resize(mask.astype(np.float32), (grid_w, grid_h), interpolation=cv2.INTER_AREA)
    if weights.sum() <= 0:
        weights = (weights == weights.max()).astype(np.float32)
    weights_t = torch.from_numpy(weights).to(features.device)
    pooled = (features.float() * weights_t[..., None]).sum(dim=(0, 1))
    return F.normalize(pooled, dim=-1)


def crop_box(image_size: tuple[int, int], region: CandidateRegion, margin: float) -> tuple[int, int, int, int]:
    """The square crop around ``region`` in an image of ``image_size`` (height, width): ``(left, top, right,
    bottom)`` in pixels, half-open, inside the image (a square as large as the image's short side at most).

    ``region`` may be on a map of any resolution (its cells are scaled to the image); ``margin`` widens the box by
    that fraction of its size."""
    height, width = image_size
    region_h, region_w = region.mask.shape
    scale_y, scale_x = height / region_h, width / region_w
    x0, y0, x1, y1 = region.box
    centre_x, centre_y = (x0 + x1 + 1) / 2 * scale_x, (y0 + y1 + 1) / 2 * scale_y
    extent = max((x1 - x0 + 1) * scale_x, (y1 - y0 + 1) * scale_y) * (1 + margin)
    extent = min(extent, max(height, width))
    left = int(np.clip(round(centre_x - extent / 2), 0, max(0, width - extent)))
    top = int(np.clip(round(centre_y - extent / 2), 0, max(0, height - extent)))
    return left, top, min(width, left + int(round(extent))), min(height, top + int(round(extent)))


def region_crops(frame: torch.Tensor, regions: list[CandidateRegion], margin: float, background: float,
                 fill: tuple[int, int, int], side: int, method: str | None = None) -> torch.Tensor:
    """Square crops around ``regions`` (see :func:`crop_box`) of an RGB uint8 ``(H, W, 3)`` ``frame`` (on any
    device), each ``side`` x ``side`` pixels with its background faded towards ``fill``: ``(N, 3, side, side)``
    float32 0..255 on the frame's device.

    ``method``: ``roi_align`` (default on a GPU) resamples every crop in one batched op per pyramid level:
    ``torchvision.ops.roi_align``, bilinear samples averaged over each output pixel's footprint, as an antialiased
    resize does when shrinking; only the union of the boxes is converted to float. ``host`` (default on the CPU,
    where the frame already is) resizes each crop in 8 bits (antialiased bilinear when shrinking, bicubic when
    enlarging), a quarter of roi_align's CPU time. Either way a crop pixel keeps ``background`` of its colour (the
    rest is ``fill``) unless its centre lies on a region cell."""
    height, width = frame.shape[:2]
    boxes = np.array([crop_box((height, width), region, margin) for region in regions], dtype=np.int64)
    method = method or ("host" if frame.device.type == "cpu" else "roi_align")
    if method not in ("host", "roi_align"):
        raise ValueError(f"unknown crop method {method!r}: roi_align or host")
    device = frame.device
    # nearest-neighbour lookup of each region's cells at its crop's pixel centres
    centres = (np.arange(side, dtype=np.float64) + 0.5) / side
    region_h, region_w = regions[0].mask.shape
    rows = ((boxes[:, 1:2] + centres * (boxes[:, 3:4] - boxes[:, 1:2])) * (region_h / height)).astype(np.int64)
    cols = ((boxes[:, 0:1] + centres * (boxes[:, 2:3] - boxes[:, 0:1])) * (region_w / width)).astype(np.int64)
    rows, cols = np.minimum(rows, region_h - 1), np.minimum(cols, region_w - 1)
    keep = np.stack([region.mask[np.ix_(r, c)] for region, r, c in zip(regions, rows, cols)])
    if method == "host":
        return _resized_on_host(frame.numpy(), boxes, side, keep, background, fill)
    crops = _resampled_by_roi_align(frame, boxes, side)
    keep = torch.from_numpy(keep).to(device)[:, None]
    colour = torch.tensor(fill, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    faded = background * crops + (1.0 - background) * colour
    return torch.where(keep, crops, faded)


def _resized_on_host(frame: np.ndarray, boxes: np.ndarray, side: int, keep: np.ndarray, background: float,
                     fill: tuple[int, int, int]) -> torch.Tensor:
    """Each box of the (H, W, 3) uint8 ``frame`` resized to ``side`` and faded where ``keep`` ((N, side, side)
    bool) is false, in 8 bits: (N, 3, side, side) float32."""
    import cv2  # here, not at import: a GPU cuts its crops with roi_align and needs no opencv

    crops = np.empty((len(boxes), side, side, 3), dtype=np.uint8)
    blank = np.full((side, side, 3), fill, dtype=np.uint8)
    for crop, inside, (left, top, right, bottom) in zip(crops, keep.view(np.uint8), boxes):
        piece = frame[top:bottom, left:right]
        if piece.shape[0] * piece.shape[1] > side * side:  # PyTorch's 8-bit antialiased resize: the fastest here
            resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(piece)).permute(2, 0, 1)[None],
                                    size=(side, side), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
        else:
            resized = cv2.resize(piece, (side, side), interpolation=cv2.INTER_CUBIC)
        cv2.addWeighted(resized, background, blank, 1.0 - background, 0.0, dst=crop)
        cv2.copyTo(resized, inside, crop)
    # contiguous (N, 3, S, S): a channels-last stride would send a compiled encoder to compile again
    return torch.from_numpy(crops).permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)


def _resampled_by_roi_align(frame: torch.Tensor, boxes: np.ndarray, side: int) -> torch.Tensor:
    """Each box of the (H, W, 3) uint8 ``frame`` resampled to ``side`` by roi_align over a box-filter pyramid:
    (N, 3, side, side) float32 on the frame's device."""
    left, top = boxes[:, :2].min(axis=0)
    right, bottom = boxes[:, 2:].max(axis=0)
    union = frame[top:bottom, left:right].permute(2, 0, 1)[None].float()
    device = frame.device
    shifted = torch.as_tensor(boxes - np.array([left, top, left, top]), dtype=torch.float32, device=device)
    rois = torch.cat([torch.zeros(len(boxes), 1, device=device), shifted], dim=1)
    # A crop shrunk by s >= 2 is sampled from the level of a 2x box-filter pyramid that leaves 1 <= s < 2, with
    # at most 2 x 2 bilinear samples per output pixel: what an antialiased resize gives, at a fraction of the
    # samples roi_align takes from full resolution (s^2 per pixel, slow on a CPU). One roi_align per level.
    extents = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    levels = np.floor(np.log2(np.maximum(extents / side, 1.0))).astype(int)
    pyramid = [union]
    for _ in range(levels.max()):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
    crops = union.new_empty(len(boxes), 3, side, side)
    for level in np.unique(levels):
        chosen = torch.from_numpy(np.flatnonzero(levels == level))
        # aligned: pixel i covers [i, i + 1), as in F.interpolate(align_corners=False)
        crops[chosen.to(device)] = roi_align(pyramid[level], rois[chosen.to(device)], output_size=side,
                                             spatial_scale=0.5 ** level, sampling_ratio=-1, aligned=True)
    return crops


class RegionNamer:
    """Names unknown regions against a :class:`Vocabulary` (see the module docstring)."""

    def __init__(self, backend):
        self.backend = backend

    def name_regions(self, frame: np.ndarray | torch.Tensor, features: torch.Tensor, regions: list[CandidateRegion],
                     vocabulary: Vocabulary, *, top_k: int, logit_scale: float,
                     crop_margin: float, crop_background: float, crop_weight: float,
                     reported: int, tagged: tuple[list[str], torch.Tensor] | None = None,
                     use_dictionary: bool = True) -> list[RegionName]:
        """A verdict per region. Candidates: the ``top_k`` dictionary names nearest the region's pooled embedding
        (with ``use_dictionary``), the ``tagged`` names and their ``(N, D)`` embeddings (the frame's tags), the
        anomaly vocabulary and the known classes, each once."""
        if not regions:
            return []
        if not isinstance(frame, torch.Tensor):
            frame = torch.from_numpy(frame)
        crops = region_crops(frame, regions, crop_margin, crop_background, tuple(self.backend.mean_colour),
                             self.backend.crop_size)
        crop_embeddings = self.backend.encode_crops(crops).to(features.device)
        known = set(vocabulary.known)
        results = []
        for region, crop_embedding in zip(regions, crop_embeddings):
            pooled = mask_pooled_embedding(features, region.mask)
            names, embeddings = self._candidates(pooled, vocabulary, top_k if use_dictionary else 0, tagged)
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
    def _candidates(pooled: torch.Tensor, vocabulary: Vocabulary, top_k: int,
                    tagged: tuple[list[str], torch.Tensor] | None = None) -> tuple[list[str], torch.Tensor]:
        names: list[str] = []
        parts = []
        if vocabulary.dictionary and top_k > 0:
            similarity = vocabulary.dictionary_embeddings @ pooled
            top = torch.topk(similarity, min(top_k, len(vocabulary.dictionary))).indices
            names += [vocabulary.dictionary[i] for i in top.tolist()]
            parts.append(vocabulary.dictionary_embeddings[top])
        taken = set(names)
        if tagged is not None and tagged[0]:
            fresh = [i for i, name in enumerate(tagged[0]) if name not in taken and name not in vocabulary.known]
            names += [tagged[0][i] for i in fresh]
            parts.append(tagged[1][fresh].to(pooled.device))
            taken = set(names)
        extra = [i for i, name in enumerate(vocabulary.anomaly) if name not in taken]
        names += [vocabulary.anomaly[i] for i in extra]
        parts.append(vocabulary.anomaly_embeddings[extra])
        names += list(vocabulary.known)
        parts.append(vocabulary.known_embeddings)
        return names, torch.cat(parts)
