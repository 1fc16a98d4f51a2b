"""The Clipomaly pipeline: image in, :class:`SegmentationResult` out.

Stages (each timed in ``SegmentationResult.timings_ms``):

1. ``features``: dense image features on the patch grid, computed once per frame (one backbone pass for a
   batch of frames) and reused by every later stage;
2. ``unknown``: known-class logits on the grid, their statistics on a coarse map, candidate regions
   (:mod:`.unknown`);
3. ``naming``: a name for each region (:mod:`.naming`), its candidates from the naming dictionary, the RAM++
   tagger's tags of the frame (:mod:`.tagging`, timed as ``tagging``) or both (``naming_source``);
4. ``extension``: segmentation over known + new names; pixels on a new name form the anomaly instances,
   refined at the input resolution inside their boxes (:mod:`.extension`);
5. ``output``: the anomaly records; the full-resolution maps are made only when read (:mod:`.maps`).

``timings_ms`` also holds ``backbone``, the milliseconds spent inside the vision transformer (dense pass and
naming crops), so the host's share is ``total - backbone``. Every per-frame map stays a tensor on the model's
device until a consumer reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..model.adaptation import check_sidecar, read_sidecar
from ..model.backend import VisionLanguageBackend
from ..config import LIVE_SETTINGS, ClipomalyConfig, ConfigError, load_config
from .extension import extend
from ..model.factory import create_backend
from ..images import check_image, on_host
from .maps import FrameMaps, road_fraction
from .naming import RegionNamer
from .pamr import PixelAdaptiveRefinement
from .results import AnomalyRecord, DroppedRegion, SegmentationResult
from .tagging import FrameTagger, FrameTags
from .unknown import class_logits, class_statistics, coarse_size, find_unknown_regions, resample
from .vocabulary import TextEmbedder, Vocabulary, VocabularyManager, read_name_list


@dataclass(frozen=True)
class KnownScores:
    """One frame's known-class evidence: ``logits`` ``(K, h, w)`` on the patch grid (refined by PAMR when on),
    their softmax statistics on the ``coarse_size`` (rows, columns) map, and the PAMR ``refine`` function (or
    None) that later stages apply to their own logits."""

    logits: torch.Tensor
    coarse: Any
    coarse_size: tuple[int, int]
    refine: Any


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
        self.finetuned = read_sidecar(self.config.checkpoint) if self.config.checkpoint else None
        """The sidecar of fine-tuned weights (see :mod:`.adaptation`), None for other weights."""
        check_sidecar(self.config, self.finetuned)
        self.backend = backend if backend is not None else create_backend(self.config)
        self.embedder = TextEmbedder(self.backend, self.config.prompt_templates)
        cache_dir = self.config.cache_path
        self.vocabulary = VocabularyManager(self.embedder, read_name_list(self.config.naming_dictionary or None),
                                            self.config.exclusion_similarity,
                                            cache_dir, progress=progress)
        self.vocabulary.set(self.config.known_classes, self.config.anomaly_vocabulary)
        self.namer = RegionNamer(self.backend)
        self.tagger = self._load_tagger(self.config)
        """The RAM++ :class:`FrameTagger` when ``tagger_weights`` is given, else None."""
        self._settings_lock = threading.Lock()

    def _load_tagger(self, config: ClipomalyConfig) -> FrameTagger | None:
        if not config.tagger_weights:
            return None
        from ..model.tagger import load_tagger

        model = load_tagger(config.tagger_weights, device=self.backend.device)
        tagger = FrameTagger(model, self.embedder, self._tagger_runner(config, model))
        try:
            tagger.set_open_set(config.anomaly_vocabulary, config.tagger_threshold)
        except ValueError as error:
            raise ConfigError(f"tagger_weights: {error}") from None
        return tagger

    def _tagger_runner(self, config: ClipomalyConfig, model):
        """What runs the tagger under the model's runtime: its exported graph under ``runtime: onnx``
        (``tagger_onnx_model``, or one exported into the cache on the first start), ``torch.compile`` under
        ``compile``, else None (the eager model)."""
        if config.runtime == "compile":
            from ..model.tagger import CompiledTagger

            return CompiledTagger(model)
        if config.runtime != "onnx":
            return None
        from ..model.backend import ModelLoadError
        from ..model.tagger import OnnxTagger, default_tagger_graph_path, export_tagger

        path = Path(config.tagger_onnx_model) if config.tagger_onnx_model else default_tagger_graph_path(
            config.cache_path, model)
        if not path.is_file():
            if config.tagger_onnx_model:
                raise ModelLoadError(f"tagger graph {path} not found: write it with 'clipomaly export --tagger', or "
                                     "clear {tagger_onnx_model=''} to have it exported on start")
            export_tagger(model, path)
        return OnnxTagger(path, model, self.backend.device)

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
            check_sidecar(config, self.finetuned)
            if {"known_classes", "anomaly_vocabulary", "exclusion_similarity"} & set(changes):
                self.vocabulary.set(config.known_classes, config.anomaly_vocabulary, config.exclusion_similarity)
            if self.tagger is not None and {"anomaly_vocabulary", "tagger_threshold"} & set(changes):
                try:
                    self.tagger.set_open_set(config.anomaly_vocabulary, config.tagger_threshold)
                except ValueError as error:
                    raise ConfigError(f"anomaly_vocabulary: {error}") from None
            self.config = config
        return config

    def name_embeddings(self, names: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 unit text embeddings of ``names`` with the prompt ensemble, cached per name (what
        :class:`~.tracking.AnomalyTracker` compares names with)."""
        return self.embedder.embed(list(names)).float().cpu().numpy()

    # inference -------------------------------------------------------------------------------------------------
    def warm_up(self, image_size: tuple[int, int] = (720, 1280), cameras: int = 1) -> None:
        """Compile (``runtime: compile``) or build engines (``onnx``) now for ``cameras`` frames of
        ``image_size`` (height, width) and their naming crops, and the RAM++ tagger's compiled graphs, so that the
        first frames are not slow; nothing to do for eager PyTorch or the toy backend."""
        warm_up = getattr(self.backend, "warm_up", None)
        if warm_up is not None and self.config.runtime != "torch":
            warm_up(image_size, cameras)
        tagger_warm_up = getattr(self.tagger.runner, "warm_up", None) if self.tagger is not None else None
        if tagger_warm_up is not None:
            tagger_warm_up(cameras)

    def runtime_health(self) -> dict[str, str | int]:
        """What the model's runtime has had to give up on (a compiled graph run eagerly...), empty when nothing."""
        runtime = getattr(self.backend, "runtime", None)
        health = runtime.health() if runtime is not None else {}
        tagger_health = getattr(self.tagger.runner, "health", None) if self.tagger is not None else None
        return {**health, **(tagger_health() if tagger_health is not None else {})}

    def close(self) -> None:
        """Release what the runtime holds beside the model (compiled graphs keep the weights alive until then);
        the pipeline is not used after."""
        runtime = getattr(self.backend, "runtime", None)
        if runtime is not None:
            runtime.close()

    def __call__(self, image: np.ndarray) -> SegmentationResult:
        """Segment one RGB uint8 ``(H, W, 3)`` image; see :class:`SegmentationResult` for the outputs."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[np.ndarray | torch.Tensor],
                      cameras: Sequence[str] | None = None) -> list[SegmentationResult]:
        """Segment several RGB uint8 images (one per camera; sizes may differ; numpy arrays, or tensors such as
        frames decoded on the GPU, :func:`.images.decode_jpeg_on_device`) with one backbone pass over all
        their windows. Each result's ``timings_ms['features']`` is the shared pass's time, and ``tagging`` the
        shared tagger run's (0 when no frame was due). ``cameras``: a name per image, for the tagger's schedule
        per camera (default: the images' positions)."""
        images = [check_image(image) for image in images]
        # frames decoded on the GPU go to the dense pass as they are; every later stage reads a host copy
        host_images = [on_host(image) for image in images]
        if not getattr(self.backend, "accepts_device_images", False):
            images = host_images
        config, vocabulary = self.config, self.vocabulary.current
        clock = getattr(self.backend, "clock", None)
        if clock is not None:
            clock.take()
        with torch.inference_mode():
            start = time.perf_counter()
            features = self.backend.dense_features_batch(images)
            features_ms = (time.perf_counter() - start) * 1000.0
            features_backbone_ms = clock.take() if clock is not None else 0.0
            cameras = list(cameras) if cameras is not None else [str(index) for index in range(len(images))]
            # every frame's unknown regions first: the tagger's schedule looks at them, and tags all due frames at once
            knowns, regions, unknown_ms = [], [], []
            for image, frame_features in zip(host_images, features):
                started = time.perf_counter()
                knowns.append(self.known_scores(frame_features, config, vocabulary))
                regions.append(self.unknown_regions(frame_features, knowns[-1], config, image.shape[:2]))
                unknown_ms.append((time.perf_counter() - started) * 1000.0)
            start_tagging = time.perf_counter()
            tags = self._frame_tags(cameras, host_images, regions, config)
            tagging_ms = (time.perf_counter() - start_tagging) * 1000.0
            results = []
            for index, (image, frame_features) in enumerate(zip(host_images, features)):
                timings = {"features": features_ms, "tagging": tagging_ms, "unknown": unknown_ms[index]}
                result = self.segment_from_known(image, frame_features, knowns[index], config, vocabulary,
                                                 tags[index], regions[index], timings)
                result.image = image  # the one host copy: the caller's outputs read it, never copy the frame again
                timings["backbone"] = features_backbone_ms + (clock.take() if clock is not None else 0.0)
                timings["total"] = (time.perf_counter() - start) * 1000.0
                results.append(result)
        return results

    def _frame_tags(self, cameras: list[str], images: list[np.ndarray], regions: list[list],
                    config: ClipomalyConfig) -> list[FrameTags | None]:
        """Each frame's tags under a tagging ``naming_source``: the frames due (see :class:`FrameTagger`) tagged
        in one batch, the others with their camera's last tags; None for each without a tagger."""
        if self.tagger is None or config.naming_source == "dictionary":
            return [None] * len(images)
        due = [self.tagger.due(camera, [region.mask for region in found], config.tagger_period)
               for camera, found in zip(cameras, regions)]
        chosen = [index for index, is_due in enumerate(due) if is_due]
        frames = [images[i] for i in chosen]  # the host copy: resized by PIL, exactly as the release was trained
        clock = getattr(self.backend, "clock", None)
        if clock is not None:
            with clock.measure(self.tagger.device):
                fresh = self.tagger.tag([cameras[i] for i in chosen], frames)
        else:
            fresh = self.tagger.tag([cameras[i] for i in chosen], frames)
        tagged = dict(zip(chosen, fresh))
        return [tagged[index] if index in tagged else self.tagger.last(camera) for index, camera in enumerate(cameras)]

    def known_scores(self, features, config: ClipomalyConfig, vocabulary: Vocabulary) -> KnownScores:
        """What a frame's known classes say, from its dense ``features``: computed once per frame, and reused by
        ``clipomaly calibrate`` for every setting it tries (none of the searched settings changes it)."""
        refine = None
        if config.pamr_steps and features.image is not None:
            refine = PixelAdaptiveRefinement(features.image, config.pamr_steps).refine
        known_logits = class_logits(features.grid, vocabulary.known_embeddings, config.logit_scale)
        if refine is not None:
            known_logits = refine(known_logits)
        working_cell = features.working_size[0] / features.grid.shape[0]  # the patch, in working pixels
        coarse = coarse_size(features.working_size, round(working_cell))
        return KnownScores(known_logits, class_statistics(resample(known_logits, coarse)), coarse, refine)

    def unknown_regions(self, features, known: KnownScores, config: ClipomalyConfig,
                        output_size: tuple[int, int]) -> list:
        """The frame's unknown regions on the coarse map, with ``min_region_area`` and ``cleanup_radius`` (output
        and working pixels) turned into cells."""
        coarse = known.coarse_size
        cells_per_pixel = coarse[0] * coarse[1] / (output_size[0] * output_size[1])
        cell_side = features.working_size[0] / coarse[0]
        return find_unknown_regions(known.coarse.uncertainty, config.uncertainty_threshold,
                                    max(1, math.floor(config.min_region_area * cells_per_pixel)),
                                    config.max_regions, math.floor(config.cleanup_radius / cell_side))

    def name_regions(self, image: np.ndarray | torch.Tensor, grid: torch.Tensor, regions: list,
                     config: ClipomalyConfig, vocabulary: Vocabulary, tags: FrameTags | None = None) -> list:
        """One verdict per region (each named on its own: its name depends on its mask, the image and the frame's
        ``tags``); ``image`` is the RGB uint8 ``(H, W, 3)`` frame, on the host or where the model runs. The
        candidates follow ``naming_source``: the dictionary's nearest names, the frame's tags (not meaning a known
        class), or both; the anomaly vocabulary and the known classes always."""
        tagged = None
        if tags is not None and self.tagger is not None:
            tagged = self.tagger.candidates(tags, vocabulary.known, vocabulary.known_embeddings,
                                            config.exclusion_similarity)
        return self.namer.name_regions(
            image, grid, regions, vocabulary, top_k=config.naming_top_k, logit_scale=config.logit_scale,
            crop_margin=config.crop_margin, crop_background=config.crop_background, crop_weight=config.crop_weight,
            reported=config.candidates_reported, tagged=tagged,
            use_dictionary=config.naming_source != "tagger" or tags is None)

    def _named(self, image, grid: torch.Tensor, regions: list, config: ClipomalyConfig, vocabulary: Vocabulary,
               tags: FrameTags | None, memo) -> list:
        """:meth:`name_regions`, with each region's verdict taken from ``memo`` when it holds one (kept there without
        the region's masks, and given this frame's region back: the dropped regions are read from it)."""
        if memo is None:
            return self.name_regions(image, grid, regions, config, vocabulary, tags)
        reads = (config.naming_top_k, config.logit_scale, config.crop_margin, config.crop_background,
                 config.crop_weight, config.candidates_reported, config.naming_source, tags)
        keys = [("named", region_fingerprint(region), reads) for region in regions]
        verdicts = [memo.get(key) for key in keys]
        missing = [index for index, verdict in enumerate(verdicts) if verdict is None]
        if missing:
            fresh = self.name_regions(image, grid, [regions[i] for i in missing], config, vocabulary, tags)
            for index, verdict in zip(missing, fresh):
                verdicts[index] = memo[keys[index]] = dataclasses.replace(
                    verdict, region=None, embedding=verdict.embedding.clone())
        return [dataclasses.replace(verdict, region=region) for verdict, region in zip(verdicts, regions)]

    def extended_instances(self, features, known: KnownScores, new_names: list[str],
                           embeddings: torch.Tensor | None, config: ClipomalyConfig, vocabulary: Vocabulary,
                           output_size: tuple[int, int]) -> tuple[list, list]:
        """The anomaly instances over known + ``new_names`` (``embeddings`` ``(N, D)``, their text embeddings)
        and the names that kept one (see :func:`~.extension.extend`)."""
        return extend(features.grid, known.logits, known.coarse, new_names, embeddings, output_size,
                      config.logit_scale, len(vocabulary.known), config.min_region_area, config.max_regions,
                      known.refine)

    def tags_of_still(self, image: np.ndarray, config: ClipomalyConfig) -> FrameTags | None:
        """The tags a still ``image`` (RGB uint8 ``(H, W, 3)``) gets under ``config``: the tagger's own run on it,
        as a camera's first frame gets (:meth:`segment_batch` tags that frame at once); None when the naming does
        not ask the tagger (no ``tagger_weights``, or ``naming_source: dictionary``)."""
        if self.tagger is None or config.naming_source == "dictionary":
            return None
        with torch.inference_mode():
            (tags,) = self.tagger.tag(["still"], [image])
        return FrameTags(tags.names, tags.scores, tags.fresh)  # without the (T,) probabilities: a tool may keep many

    def segment_from_known(self, image: np.ndarray, features, known: KnownScores, config: ClipomalyConfig,
                           vocabulary: Vocabulary, tags: FrameTags | None = None, regions: list | None = None,
                           timings: dict[str, float] | None = None, memo=None) -> SegmentationResult:
        """Segment a frame whose dense ``features`` and known-class scores ``known`` (:meth:`known_scores`) are
        already computed: the stages that the searched settings of ``clipomaly calibrate`` change (unknown
        regions, naming, extension, the records), as :meth:`segment_batch` runs them. ``image``: the host RGB
        uint8 ``(H, W, 3)`` frame; ``tags``: its tagger's tags under a tagging ``naming_source``; ``timings``
        (ms) gets each stage's time added.

        ``memo`` (optional, ``get(key)`` and ``memo[key] = value``, for this one frame and ``vocabulary``) keeps a
        region's naming verdict and an extension's instances, keyed by everything they read, so that a caller
        trying many settings on one frame names a region and extends a set of names once."""
        timings = timings if timings is not None else {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:  # adds to a stage begun before (the unknown regions of a batch)
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - clock) * 1000.0
            clock = now

        output_size = image.shape[:2]
        known_logits = known.logits
        regions = regions if regions is not None else self.unknown_regions(features, known, config, output_size)
        lap("unknown")

        frame = getattr(features, "frame", None)  # the frame where the model runs, when it was put there
        named = self._named(image if frame is None else frame, features.grid, regions, config, vocabulary, tags, memo)
        lap("naming")

        new_names, embeddings = new_names_of(named)
        extension_key = ("extended", tuple(new_names), config.min_region_area, config.max_regions, config.logit_scale)
        extended = memo.get(extension_key) if memo is not None else None
        if extended is None:
            extended = self.extended_instances(features, known, new_names, embeddings, config, vocabulary,
                                               output_size)
            if memo is not None:
                memo[extension_key] = extended
        instances, kept_names = extended
        lap("extension")

        drivable = [vocabulary.known.index(name) for name in config.drivable_classes if name in vocabulary.known]
        road_key = ("road", extension_key, tuple(drivable), config.road_band)
        fractions = memo.get(road_key) if memo is not None else None
        if fractions is None:
            fractions = [road_fraction(known_logits, output_size, instance.mask, drivable, config.road_band)
                         if drivable else None for instance in instances]
            if memo is not None:
                memo[road_key] = fractions
        records = anomaly_records(instances, named, fractions, config)
        result = SegmentationResult(
            labels=list(vocabulary.known) + kept_names, anomalies=records, known_count=len(vocabulary.known),
            rejected=[verdict.name for verdict in named if verdict.is_known], timings_ms=timings,
            maps=FrameMaps(known_logits, output_size, [instance.mask for instance in instances]))
        result.tags = tags
        result.dropped = dropped_regions(named, kept_names, output_size)
        lap("output")
        return result


def dropped_regions(named: list, kept_names: list[str], image_size: tuple[int, int]) -> list[DroppedRegion]:
    """The naming verdicts that became no anomaly: a known class was the best name, or no pixel took the name."""
    kept = set(kept_names)
    return [DroppedRegion(verdict.name, verdict.score, verdict.is_known, verdict.candidates, verdict.region.mask,
                          tuple(image_size)) for verdict in named if verdict.is_known or verdict.name not in kept]


def anomaly_records(instances: list, named: list, fractions: list, config: ClipomalyConfig) -> list[AnomalyRecord]:
    """One record per extension instance: its name's candidates from the naming verdicts ``named``, and whether
    it stands on the road (``fractions``: each instance's drivable share of its band, or None)."""
    candidates_of: dict[str, tuple] = {}
    for verdict in named:
        candidates_of.setdefault(verdict.name, verdict.candidates)
    return [AnomalyRecord(id=instance.mask.id, name=instance.name, score=instance.score, bbox=instance.bbox,
                          area=instance.area, centroid=instance.centroid,
                          candidates=candidates_of.get(instance.name, ()), road_fraction=fraction,
                          on_road=None if fraction is None else fraction >= config.on_road_fraction)
            for instance, fraction in zip(instances, fractions)]


def region_fingerprint(region) -> bytes:
    """What names a region: its mask on the coarse map (its box and area follow from it), as 16 bytes."""
    return hashlib.blake2b(np.packbits(region.mask).tobytes() + str(region.mask.shape).encode(),
                           digest_size=16).digest()


def new_names_of(named: list) -> tuple[list[str], torch.Tensor | None]:
    """The new names among the naming's verdicts (not a known class), in order of first appearance, and their
    ``(N, D)`` text embeddings (None when there are none)."""
    new_names: dict[str, torch.Tensor] = {}
    for verdict in named:
        if not verdict.is_known and verdict.name not in new_names:
            new_names[verdict.name] = verdict.embedding
    return list(new_names), (torch.stack(list(new_names.values())) if new_names else None)
