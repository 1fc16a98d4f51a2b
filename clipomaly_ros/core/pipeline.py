"""The Clipomaly pipeline: image in, :class:`SegmentationResult` out.

Stages (each timed in ``SegmentationResult.timings_ms``):

1. ``features``: dense image features, computed once per frame and reused by every later stage;
2. ``unknown``: known-class probabilities, normalised entropy, candidate regions (:mod:`.unknown`);
3. ``naming``: a name for each region (:mod:`.naming`);
4. ``extension``: segmentation over known + new names; pixels on a new name form the anomaly instances;
5. ``output``: maps resized to the input resolution, anomaly records.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage

from .backend import VisionLanguageBackend
from .config import LIVE_SETTINGS, ClipomalyConfig, ConfigError, load_config
from .factory import create_backend
from .images import check_image
from .naming import RegionName, RegionNamer
from .results import AnomalyRecord, SegmentationResult
from .unknown import ClassStatistics, class_statistics, find_unknown_regions, similarity_maps
from .vocabulary import TextEmbedder, Vocabulary, VocabularyManager, default_cache_dir, read_name_list


class Clipomaly:
    """Finds, segments and names objects that the known classes do not cover.

    >>> pipeline = Clipomaly(ClipomalyConfig(backend="toy"))
    >>> result = pipeline(image)                 # image: (H, W, 3) uint8 RGB
    >>> [(a.name, a.score) for a in result.anomalies]

    Thread safety: one frame at a time per instance is expected, while :meth:`set_vocabulary` and
    :meth:`configure` may be called from other threads; a frame uses the settings and vocabulary that were
    current when it started.
    """

    def __init__(self, config: ClipomalyConfig | None = None, backend: VisionLanguageBackend | None = None,
                 progress: bool = False):
        self.config = config if config is not None else ClipomalyConfig()
        self.backend = backend if backend is not None else create_backend(self.config)
        self.embedder = TextEmbedder(self.backend, self.config.prompt_templates)
        cache_dir = Path(self.config.cache_dir).expanduser() if self.config.cache_dir else default_cache_dir()
        self.vocabulary = VocabularyManager(self.embedder, read_name_list(self.config.naming_dictionary or None),
                                            self.config.dictionary_templates, self.config.exclusion_similarity,
                                            cache_dir, progress=progress)
        self.vocabulary.set(self.config.known_classes, self.config.anomaly_vocabulary)
        self.namer = RegionNamer(self.backend)
        self._settings_lock = threading.Lock()

    @classmethod
    def from_parameter_file(cls, path: str | Path | None, **overrides: Any) -> "Clipomaly":
        """Build from a ROS 2 parameter file (``config/clipomaly.yaml``) with optional overrides."""
        return cls(load_config(path, **overrides))

    # live changes ----------------------------------------------------------------------------------------------
    def set_vocabulary(self, known_classes: Sequence[str] | None = None,
                       anomaly_vocabulary: Sequence[str] | None = None) -> Vocabulary:
        """Replace the known classes and/or the anomaly vocabulary; only new names are encoded."""
        changes = {k: v for k, v in (("known_classes", known_classes), ("anomaly_vocabulary", anomaly_vocabulary))
                   if v is not None}
        self.configure(**changes)
        return self.vocabulary.current

    def configure(self, **changes: Any) -> ClipomalyConfig:
        """Change settings that apply live (see ``LIVE_SETTINGS``); raises :class:`ConfigError` and keeps the
        old settings when a value is invalid or a setting needs a restart."""
        fixed = sorted(set(changes) - LIVE_SETTINGS)
        if fixed:
            raise ConfigError(f"setting(s) {', '.join(fixed)} cannot change while running: restart with a new "
                              "configuration")
        with self._settings_lock:
            config = self.config.replace(**changes)
            if {"known_classes", "anomaly_vocabulary", "exclusion_similarity"} & set(changes):
                self.vocabulary.set(config.known_classes, config.anomaly_vocabulary, config.exclusion_similarity)
            self.config = config
        return config

    # inference -------------------------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray) -> SegmentationResult:
        """Segment one RGB uint8 ``(H, W, 3)`` image; see :class:`SegmentationResult` for the outputs."""
        image = check_image(image)
        config, vocabulary = self.config, self.vocabulary.current
        timings: dict[str, float] = {}
        start = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000.0
            clock = now

        with torch.inference_mode():
            features = self.backend.dense_features(image)
            lap("features")

            working = features.working_size
            known_logits = config.logit_scale * similarity_maps(features.grid, vocabulary.known_embeddings, working)
            known = class_statistics(known_logits)
            del known_logits
            uncertainty = known.uncertainty.cpu().numpy().astype(np.float32)
            working_per_input = (working[0] * working[1]) / (image.shape[0] * image.shape[1])
            min_area = max(1, math.ceil(config.min_region_area * working_per_input))
            regions = find_unknown_regions(uncertainty, config.uncertainty_threshold, min_area,
                                           config.max_regions, config.cleanup_radius)
            lap("unknown")

            named = self.namer.name_regions(
                image, features.grid, working, regions, vocabulary, top_k=config.naming_top_k,
                logit_scale=config.logit_scale, crop_margin=config.crop_margin,
                crop_background=config.crop_background, crop_weight=config.crop_weight,
                reported=config.candidates_reported)
            lap("naming")

            semantic, instances, names, scores = self._extend(features, known, len(vocabulary.known), named,
                                                              min_area, config)
            lap("extension")

        result = self._finish(image.shape[:2], semantic, instances, uncertainty, vocabulary, names, scores,
                              named, timings)
        lap("output")
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return result

    def _extend(self, features, known: ClassStatistics, known_count: int, named: list[RegionName], min_area: int,
                config: ClipomalyConfig):
        """Segment over known + new names. Returns working-resolution ``semantic`` and ``instances`` (uint16),
        the new names that kept at least one instance, and each instance's mean name probability.

        The known classes' logits are not recomputed: their max, argmax and logsumexp from the unknown stage
        are combined with the new names' logits."""
        known_semantic = known.best_class.cpu().numpy()
        new_names: dict[str, torch.Tensor] = {}
        for verdict in named:
            if not verdict.is_known and verdict.name not in new_names:
                new_names[verdict.name] = verdict.embedding
        if not new_names:
            semantic = known_semantic.astype(np.uint16)
            return semantic, np.zeros(semantic.shape, dtype=np.uint16), [], []
        new_logits = config.logit_scale * similarity_maps(features.grid, torch.stack(list(new_names.values())),
                                                          features.working_size)
        new_best_logit, new_best = new_logits.max(dim=0)
        on_new_name = (new_best_logit > known.best_logit).cpu().numpy()
        log_normaliser = torch.logaddexp(known.log_normaliser, torch.logsumexp(new_logits, dim=0))
        new_best = new_best.cpu().numpy()
        components = []
        for offset, name in enumerate(new_names):
            component_map, count = ndimage.label(on_new_name & (new_best == offset), structure=np.ones((3, 3)))
            if count == 0:
                continue
            areas = np.bincount(component_map.ravel(), minlength=count + 1)
            kept = [index for index in np.flatnonzero(areas >= min_area) if index]
            if kept:
                probability = torch.exp(new_logits[offset] - log_normaliser).cpu().numpy()
                components += [(int(areas[i]), name, component_map == i, probability) for i in kept]
        components.sort(key=lambda c: -c[0])
        semantic = known_semantic.astype(np.int64)
        instances = np.zeros(semantic.shape, dtype=np.uint16)
        kept_names: list[str] = []
        scores: list[float] = []
        for instance_id, (_, name, mask, probability) in enumerate(components[:65535], start=1):
            if name not in kept_names:
                kept_names.append(name)
            semantic[mask] = known_count + kept_names.index(name)
            instances[mask] = instance_id
            scores.append(float(probability[mask].mean()))
        return semantic.astype(np.uint16), instances, kept_names, scores

    @staticmethod
    def _finish(input_size, semantic, instances, uncertainty, vocabulary: Vocabulary, names, scores,
                named: list[RegionName], timings) -> SegmentationResult:
        height, width = input_size
        if semantic.shape != (height, width):
            semantic = cv2.resize(semantic, (width, height), interpolation=cv2.INTER_NEAREST)
            instances = cv2.resize(instances, (width, height), interpolation=cv2.INTER_NEAREST)
            uncertainty = np.clip(cv2.resize(uncertainty, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
        known_count = len(vocabulary.known)
        candidates_of = {}
        for verdict in named:
            candidates_of.setdefault(verdict.name, verdict.candidates)
        records = []
        areas = np.bincount(instances.ravel(), minlength=len(scores) + 1)
        present = [i for i in range(1, len(scores) + 1) if areas[i] > 0]
        # an instance can vanish when the working maps are shrunk to a small input; ids stay consecutive
        relabel = np.zeros(len(scores) + 1, dtype=np.uint16)
        relabel[present] = np.arange(1, len(present) + 1)
        instances = relabel[instances]
        slices = ndimage.find_objects(instances.astype(np.int32))
        ys, xs = np.indices(instances.shape, sparse=True)
        for new_id, old_id in enumerate(present, start=1):
            rows, cols = slices[new_id - 1]
            mask = instances[rows, cols] == new_id
            area = int(mask.sum())
            centroid_y = float((ys[rows] * mask).sum() / area)
            centroid_x = float((xs[:, cols] * mask).sum() / area)
            label = int(np.bincount(semantic[rows, cols][mask]).argmax())
            name = names[label - known_count] if label >= known_count else names[0]
            records.append(AnomalyRecord(
                id=new_id, name=name, score=scores[old_id - 1], bbox=(cols.start, rows.start, cols.stop - 1,
                                                                       rows.stop - 1),
                area=area, centroid=(centroid_x, centroid_y), candidates=candidates_of.get(name, ())))
        return SegmentationResult(
            semantic=semantic.astype(np.uint16), labels=list(vocabulary.known) + list(names),
            anomaly_score=uncertainty.astype(np.float32), anomaly_mask=instances > 0,
            instances=instances.astype(np.uint16), anomalies=records, known_count=known_count,
            rejected=[verdict.name for verdict in named if verdict.is_known], timings_ms=timings)
