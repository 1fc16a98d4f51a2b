"""Scoring settings on labelled frames with the pipeline the node runs, each frame's fixed work done once.

What no searched setting changes is computed once per image: the dense features (kept on disk too, see
:class:`~.caches.FeatureStore`), the known-class scores and, under a tagging ``naming_source``, the frame's RAM++
tags (the tagger's run on the still frame, as a camera's first frame gets it). Each setting then runs
:meth:`Clipomaly.segment_from_known`: the stages it changes, with a region named once per naming input and an
extension run once per set of names (its ``memo``). Frames are the outer loop, so a run holds one frame's pixels
at a time beyond what its memory budget keeps.

Every cache counts against one ``memory_budget_mb`` (:mod:`.caches`): the segmentation a setting gave a frame is
kept as its anomaly mask's fingerprint, and a frame's scores by that fingerprint and the label, so that scoring
the same images against other labels (the statistics' tests) segments nothing again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..metrics import ComponentScores, MetricError, PixelScores
from .caches import BoundedCache, CachedCrops, FeatureStore, FrameMemo, MemoryBudget
from .frames import CalibrationError, LabelledFrame
from .statistics import SEARCHED, STATISTICS, frame_statistics


@dataclass
class PreparedFrame:
    """What the searched settings do not change, of one image: its pixels, features, known-class scores and tags."""

    image: np.ndarray
    features: object
    known: object
    tags: object


class Calibrator:
    """Scores settings of one pipeline on labelled frames (see the module docstring). It takes the pipeline over:
    its namer encodes crops through :class:`CachedCrops` from then on."""

    def __init__(self, pipeline, cache_folder: Path | None = None, memory_budget_mb: float = 2048.0):
        self.pipeline = pipeline
        self.budget = MemoryBudget(memory_budget_mb)
        self.crops = CachedCrops(pipeline.backend, self.budget)
        pipeline.namer.backend = self.crops
        self.store = FeatureStore(pipeline, cache_folder or pipeline.config.cache_path / "calibration", self.budget)
        self._prepared = BoundedCache(self.budget)  # image digest -> PreparedFrame
        self._truths = BoundedCache(self.budget)  # (label digest, ids, size) -> (is_anomaly, void)
        self._stages = BoundedCache(self.budget)  # (image digest, the pipeline's key) -> naming verdict, extension
        self._segmented = BoundedCache(self.budget)  # (image digest, settings) -> anomaly mask fingerprint
        self._masks = BoundedCache(self.budget)  # fingerprint -> (instances (box, pixels), (H, W))
        self._scores = BoundedCache(self.budget)  # (fingerprint, label digest, ids) -> (STATISTICS,) sums
        self._score_maps = BoundedCache(self.budget)  # image digest -> the published anomaly score (H, W)
        self.loads = 0
        """Images read from their files (more than one a frame: frames past the budget were read again)."""
        self.segmentations = 0
        """Settings run through the pipeline on a frame (the rest were known)."""
        self._current: tuple[str, PreparedFrame] | None = None
        """The frame being scored, held outside the budget while its settings run (the frames are the outer loop)."""

    def prepared(self, frame: LabelledFrame) -> PreparedFrame:
        """The frame's fixed work (module docstring), kept within the budget."""
        if self._current is not None and self._current[0] == frame.digest:
            return self._current[1]
        prepared = self._prepared.get(frame.digest)
        if prepared is None:
            image = frame.load_image()
            self.loads += 1
            config, vocabulary = self.pipeline.config, self.pipeline.vocabulary.current
            features = self.store.features(frame.digest, image)
            with torch.inference_mode():
                known = self.pipeline.known_scores(features, config, vocabulary)
            prepared = PreparedFrame(image, features, known, self.pipeline.tags_of_still(image, config))
            self._prepared[frame.digest] = prepared
        self._current = (frame.digest, prepared)
        return prepared

    def truth(self, frame: LabelledFrame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        key = (frame.label_digest, frame.anomaly_id, frame.ignore_id, tuple(size))
        truth = self._truths.get(key)
        if truth is None:
            truth = frame.load_truth(size)
            self._truths[key] = truth
        return truth

    def prepare(self, frames: Sequence[LabelledFrame], progress: bool = False) -> tuple[float, dict]:
        """Each frame's fixed work, and the pixel metrics over them: ``(seconds, pixel metrics)``."""
        from tqdm import tqdm

        started = time.perf_counter()
        pixel = self.pixel_metrics(tqdm(frames, desc="dense features", unit="image", disable=not progress))
        return time.perf_counter() - started, pixel

    def pixel_metrics(self, frames: Sequence[LabelledFrame]) -> dict:
        """AUPRC, FPR95 and AUROC of the published continuous anomaly score over ``frames``."""
        pixels = PixelScores()
        for frame in frames:
            score = self._score_maps.get(frame.digest)
            if score is None:
                prepared = self.prepared(frame)
                score = banded_anomaly_score(prepared.known.logits, prepared.image.shape[:2])
                self._score_maps[frame.digest] = score
            is_anomaly, void = self.truth(frame, score.shape)
            pixels.add(score, is_anomaly, ~void)
        try:
            pixel = pixels.summary()
        except MetricError as error:
            raise CalibrationError(str(error)) from None
        return {k: pixel[k] for k in ("auprc", "fpr_at_95_tpr", "auroc")}

    def score(self, frames: Sequence[LabelledFrame], settings: Sequence[dict] | dict,
              progress: bool = False) -> np.ndarray:
        """The score matrix ``(len(settings), len(frames), STATISTICS)`` (see :mod:`.statistics`) of each of
        ``settings`` (values of :data:`SEARCHED`; one dict: one setting) on each frame, frame by frame."""
        from tqdm import tqdm

        settings = [settings] if isinstance(settings, dict) else list(settings)
        stats = np.zeros((len(settings), len(frames), STATISTICS))
        for column, frame in enumerate(tqdm(frames, desc="frames", unit="frame", disable=not progress)):
            for row, setting in enumerate(settings):
                stats[row, column] = self._frame_scores(frame, setting)
        return stats

    def _frame_scores(self, frame: LabelledFrame, setting: dict) -> np.ndarray:
        label_key = (frame.label_digest, frame.anomaly_id, frame.ignore_id)
        fingerprint = self._segmented.get((frame.digest, tuple(setting[name] for name in SEARCHED)))
        if fingerprint is not None:
            scores = self._scores.get((fingerprint, *label_key))
            if scores is not None:
                return scores
        stored = self._masks.get(fingerprint) if fingerprint is not None else None
        if stored is None:
            instances, size = self.segment(frame, setting)
            fingerprint = instances_fingerprint(instances, size)
            self._segmented[(frame.digest, tuple(setting[name] for name in SEARCHED))] = fingerprint
            self._masks[fingerprint] = stored = (instances, size)
        mask = paste(*stored)
        is_anomaly, void = self.truth(frame, mask.shape)
        components = ComponentScores()
        components.add(mask, is_anomaly, void)
        scores = frame_statistics(components)
        self._scores[(fingerprint, *label_key)] = scores
        return scores

    def segment(self, frame: LabelledFrame, setting: dict) -> tuple[list, tuple[int, int]]:
        """The anomaly instances the pipeline gives ``frame`` under ``setting``, each ``(box (y0, y1, x0, x1), bool
        pixels)``, and the frame's size (H, W): the whole-frame mask is made only when it is scored."""
        prepared = self.prepared(frame)
        pipeline = self.pipeline
        config = pipeline.config.replace(**setting)
        self.segmentations += 1
        with torch.inference_mode():
            result = pipeline.segment_from_known(prepared.image, prepared.features, prepared.known, config,
                                                 pipeline.vocabulary.current, prepared.tags,
                                                 memo=FrameMemo(self._stages, frame.digest))
        return [result.instance_mask(anomaly.id) for anomaly in result.anomalies], result.image_size


def instances_fingerprint(instances: list, size: tuple[int, int]) -> bytes:
    """16 bytes that tell one frame's anomaly pixels from another's (``instances`` as :meth:`Calibrator.segment`
    gives them)."""
    digest = hashlib.blake2b(str(tuple(size)).encode(), digest_size=16)
    for box, pixels in sorted(instances, key=lambda instance: instance[0]):
        digest.update(str(box).encode() + np.packbits(pixels).tobytes())
    return digest.digest()


def paste(instances: list, size: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` bool mask of ``instances`` (what a result's ``anomaly_mask`` holds)."""
    mask = np.zeros(size, bool)
    for (y0, y1, x0, x1), pixels in instances:
        mask[y0:y1, x0:x1] |= pixels
    return mask


SCORE_BAND_ROWS = 64


def banded_anomaly_score(known_logits: torch.Tensor, output_size: tuple[int, int],
                         rows: int = SCORE_BAND_ROWS) -> np.ndarray:
    """The published ``anomaly_score`` ``(H, W)`` float32 (the normalised entropy of the known-class logits,
    bilinearly resampled to ``output_size``), made ``rows`` image rows at a time: the ``(K, H, W)`` logits at the
    full resolution never exist at once (158 MB for 19 classes at 1920 x 1080), so the memory budget holds."""
    from ...core.method.maps import sample_points
    from ...core.method.unknown import class_statistics

    height, width = output_size
    classes = known_logits.shape[0]
    score = np.empty((height, width), np.float32)
    columns = torch.arange(width, device=known_logits.device)
    with torch.inference_mode():
        for top in range(0, height, rows):
            band = torch.arange(top, min(height, top + rows), device=known_logits.device)
            ys, xs = torch.meshgrid(band, columns, indexing="ij")
            logits = sample_points(known_logits, output_size, ys.reshape(-1), xs.reshape(-1))
            score[top:top + len(band)] = class_statistics(logits.view(classes, len(band), width)).uncertainty \
                .float().cpu().numpy()
    return score


