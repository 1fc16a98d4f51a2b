"""``clipomaly calibrate``: choose the settings that decide what reaches the planner, for the user's weights, from
labelled frames.

Searched: ``uncertainty_threshold``, ``min_region_area`` and ``cleanup_radius`` over a full grid, then the naming's
``crop_weight`` (which decides whether a region is named by a known class and so dropped) at the best of those.

What no searched setting changes is computed once per image: the dense features (the backbone pass) are kept on
disk under ``<cache_dir>/calibration`` (keyed by the weights, the dense method, the working size and the image's
bytes, so a second run makes no backbone pass at all) and in memory up to ``memory_budget_mb``; the known-class
logits and their coarse statistics, and the full-resolution anomaly score, are kept in memory beside them. Each
setting then runs only the stages after them (unknown regions, naming, extension). Naming scores a crop of each
region through the image encoder; those crop embeddings are cached by the crop's pixels, so a region that several
settings find is encoded once.

Objectives (the metrics of ``clipomaly evaluate``):

- component level (SegmentMeIfYouCan): ``f1`` (mean F1 over sIoU thresholds 0.25..0.75), ``siou`` (mean sIoU of
  the ground-truth components), both higher is better;
- pixel level, of the continuous anomaly score the node publishes (``anomaly_score``): ``ap`` (average
  precision, higher is better) and ``fpr95`` (false-positive rate at 95 % recall, lower is better). That score is
  the known classes' normalised entropy: no searched setting changes it (only the model, the known classes, the
  prompt templates, ``logit_scale`` and ``pamr_steps`` do), so under these objectives the search says so and keeps
  the current values.

The current (starting) setting is always a candidate and wins ties; another setting is chosen only when it beats
it by more than the noise margin: the standard deviation, over 200 bootstrap resamples of the frames, of the
objective's difference between the two. ``--memory-budget`` bounds what the run holds (images, labels, known-class
logits, dense features); frames past it are read back from their files and the disk cache for each setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import yaml

from ..core.config import CORE_SETTINGS, SETTINGS_BY_NAME, ClipomalyConfig, NODE_NAME
from ..core.datasets import Sample, read_label
from .metrics import ComponentScores, MetricError, PixelScores

SEARCHED = ("uncertainty_threshold", "min_region_area", "cleanup_radius", "crop_weight")
OBJECTIVES = {
    "f1": ("component", "mean_f1", "higher", "SegmentMeIfYouCan mean F1 of components"),
    "siou": ("component", "mean_siou", "higher", "mean sIoU of the ground-truth components"),
    "ap": ("pixel", "auprc", "higher", "average precision of the published continuous anomaly score"),
    "fpr95": ("pixel", "fpr_at_95_tpr", "lower", "false-positive rate at 95 % recall of the published continuous "
                                                  "anomaly score"),
}
CHANGED_BY = {"component": SEARCHED, "pixel": ()}
"""Which searched settings can change an objective of each level: the components come from the reported mask,
which all of them shape; the continuous score is computed before any of them acts."""
FEATURE_SETTINGS = ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method",
                    "window_layout", "inference_size", "window_size", "window_stride", "runtime", "onnx_model",
                    "pamr_steps")
"""The settings that change a frame's dense features: the feature cache is keyed by them (files by content)."""
BOOTSTRAP_ROUNDS = 200


class CalibrationError(ValueError):
    """The data or the search cannot give a calibration; the message says what to change."""


@dataclass(frozen=True)
class SearchSpace:
    """The values tried: a full grid of the first three, then each ``crop_weights`` value at the best of them."""

    thresholds: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(0.30, 0.951, 0.05), 2))
    areas: tuple[int, ...] = (25, 100, 400, 1600)
    radii: tuple[int, ...] = (0, 2, 8)
    crop_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self):
        for name, values in (("uncertainty_threshold", self.thresholds), ("min_region_area", self.areas),
                             ("cleanup_radius", self.radii), ("crop_weight", self.crop_weights)):
            if not values:
                raise CalibrationError(f"no values to try for {name}")
            for value in values:
                SETTINGS_BY_NAME[name].validate(value)  # a ConfigError names the setting and its range


@dataclass
class LabelledFrame:
    """One image of the data: its sample, the label ids that mean anomaly and ignore, and the hash of the image
    file's bytes. The pixels are read by :meth:`load` when needed, so that a run holds only what its memory budget
    allows (see :class:`Calibrator`)."""

    sample: Sample
    anomaly_id: int
    ignore_id: int
    digest: str

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8 RGB, is_anomaly (H, W) bool, void (H, W) bool)`` from the files."""
        import cv2

        from ..core.images import read_rgb

        image, label = read_rgb(self.sample.image), read_label(self.sample.label)
        if label.shape != image.shape[:2]:
            label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return image, label == self.anomaly_id, label == self.ignore_id


def read_frames(samples: Sequence[Sample], anomaly_id: int, ignore_id: int) -> list[LabelledFrame]:
    """The frames of ``samples`` (each label read once, to check it); raises :class:`CalibrationError` when no label
    holds ``anomaly_id``."""
    from ..core.fingerprint import file_digest

    for name, value in (("--anomaly-id", anomaly_id), ("--ignore-id", ignore_id)):
        if not 0 <= value <= 65535:
            raise CalibrationError(f"{name} {value}: label ids are 0..65535 (PNG labels)")
    frames, present, anomalous = [], set(), False
    for sample in samples:
        label = read_label(sample.label)
        values = np.unique(label)
        present.update(values.tolist())
        anomalous = anomalous or bool((values == anomaly_id).any())
        frames.append(LabelledFrame(sample, anomaly_id, ignore_id, file_digest(sample.image)))
    if not anomalous:
        raise CalibrationError(
            f"no pixel of the {len(frames)} labels has the anomaly id {anomaly_id} (ids present: "
            f"{', '.join(map(str, sorted(present)[:20]))}): give the anomaly's id with --anomaly-id, or data with "
            "anomalies (calibration needs them)")
    return frames


def check_disjoint(search: Sequence[LabelledFrame], held_out: Sequence[LabelledFrame]) -> None:
    """Raise :class:`CalibrationError` when an image of ``held_out`` is also in ``search`` (by the bytes of the
    image files, whatever their names): held-out figures must come from images the search did not see."""
    searched = {frame.digest: frame for frame in search}
    shared = [(searched[frame.digest], frame) for frame in held_out if frame.digest in searched]
    if shared:
        pairs = ", ".join(f"{a.sample.image} = {b.sample.image}" for a, b in shared[:5])
        raise CalibrationError(f"--val shares {len(shared)} image(s) with the searched data ({pairs}"
                               f"{', ...' if len(shared) > 5 else ''}): held-out frames must be other images")


class MemoryBudget:
    """Bytes a run may hold; :meth:`take` says whether ``size`` more still fit (and counts them if so)."""

    def __init__(self, megabytes: float):
        self.limit = megabytes * 1e6
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True


def nbytes(*items) -> int:
    """Bytes of the arrays and tensors in ``items`` (dataclasses, tuples and lists looked into)."""
    total = 0
    for item in items:
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            total += nbytes(*(getattr(item, f.name) for f in dataclasses.fields(item)))
        elif isinstance(item, (tuple, list)):
            total += nbytes(*item)
    return total


class CachedCrops:
    """A backend whose ``encode_crops`` remembers each crop's embedding by the crop's pixels; everything else
    is the wrapped backend's. ``encoded`` counts the crops that really went through the encoder."""

    def __init__(self, backend):
        self._backend = backend
        self._embeddings: dict[bytes, torch.Tensor] = {}
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` embeddings of crops ``(N, 3, S, S)``, each encoded once per distinct pixels."""
        keys = [hashlib.blake2b(crop.cpu().numpy().tobytes() + str(tuple(crop.shape)).encode(),
                                digest_size=16).digest() for crop in crops]
        missing = [i for i, key in enumerate(keys) if key not in self._embeddings]
        if missing:
            embedded = self._backend.encode_crops(crops[missing])
            self.encoded += len(missing)
            for i, row in zip(missing, embedded):
                self._embeddings[keys[i]] = row
        return torch.stack([self._embeddings[key] for key in keys])


class FeatureStore:
    """Dense features per image, computed once: on disk under ``folder`` (keyed by :func:`feature_key`) and in
    memory while ``budget`` allows. ``backbone_passes`` counts the images that went through the backbone now."""

    def __init__(self, pipeline, folder: Path, budget: MemoryBudget):
        self.pipeline = pipeline
        self.folder = folder
        self.budget = budget
        self._memory: dict[str, object] = {}
        self.backbone_passes = 0
        self._key = feature_key(pipeline)

    def _file(self, frame: LabelledFrame) -> Path:
        digest = hashlib.sha256(f"{self._key}|{frame.digest}".encode())
        return self.folder / f"{digest.hexdigest()[:32]}.pt"

    def features(self, frame: LabelledFrame, image: np.ndarray | None = None):
        """The frame's features: from memory, the disk cache, or a backbone pass over ``image`` (read from the
        frame's file when not given)."""
        from ..core.model.backend import DenseFeatures

        path = self._file(frame)
        key = path.name
        if key in self._memory:
            return self._memory[key]
        if path.is_file():
            saved = torch.load(path, map_location=self.pipeline.backend.device, weights_only=True)
            features = DenseFeatures(saved["grid"], tuple(saved["working_size"]), saved.get("image"))
        else:
            if image is None:
                image = frame.load()[0]
            with torch.inference_mode():
                (features,) = self.pipeline.backend.dense_features_batch([image])
            self.backbone_passes += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            torch.save({"grid": features.grid.cpu(), "working_size": list(features.working_size),
                        "image": None if features.image is None else features.image.cpu()}, partial)
            partial.replace(path)  # atomic: an interrupted run never leaves half a file under the real name
        if self.budget.take(nbytes(features.grid, features.image)):
            self._memory[key] = features
        return features


def feature_key(pipeline) -> str:
    """What a frame's dense features depend on besides its pixels: the backend's identity, the weights' precision
    and :data:`FEATURE_SETTINGS` (weights and exported graphs by the hash of their bytes)."""
    from ..core.fingerprint import settings_fingerprint

    config = pipeline.config
    fingerprint = settings_fingerprint(config, set(CORE_SETTINGS) - set(FEATURE_SETTINGS))
    model = getattr(pipeline.backend, "model", None)
    precision = str(next(model.parameters()).dtype) if isinstance(model, torch.nn.Module) else "float32"
    return json.dumps({"identity": pipeline.backend.identity, "precision": precision,
                       "working_short_side": config.working_short_side, **fingerprint}, sort_keys=True, default=str)


@dataclass
class CalibrationReport:
    """The search: ``trials`` (each setting with its metrics, in the order tried; the first is the starting one),
    the ``chosen`` trial, the ``default`` one (the configuration's own values), whether the search ``kept`` the
    starting setting and why (``decision``), the ``noise_margin`` it had to be beaten by, an optional
    ``validation`` of chosen and default on held-out data, and the cost (``timing``)."""

    objective: str
    data: str
    images: int
    trials: list[dict] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)
    default: dict = field(default_factory=dict)
    kept: bool = False
    decision: str = ""
    noise_margin: float | None = None
    validation: dict | None = None
    timing: dict = field(default_factory=dict)
    backbone_passes: int = 0
    crops_encoded: int = 0

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}


@dataclass
class PreparedFrame:
    """What the searched settings do not change, of one frame held in memory: its pixels, truth and known-class
    scores."""

    image: np.ndarray
    is_anomaly: np.ndarray
    void: np.ndarray
    known: object


class Calibrator:
    """Scores settings of one pipeline on labelled frames (see the module docstring). It takes the pipeline
    over: its namer encodes crops through :class:`CachedCrops` from then on. Everything it keeps per frame counts
    against ``memory_budget_mb``; a frame that does not fit is read again from its files and the feature cache
    for each setting."""

    def __init__(self, pipeline, cache_folder: Path | None = None, memory_budget_mb: float = 2048.0):
        self.pipeline = pipeline
        self.crops = CachedCrops(pipeline.backend)
        pipeline.namer.backend = self.crops
        cache_dir = pipeline.config.cache_path
        self.budget = MemoryBudget(memory_budget_mb)
        self.store = FeatureStore(pipeline, cache_folder or cache_dir / "calibration", self.budget)
        self._prepared: dict[str, PreparedFrame] = {}
        self._named: dict[tuple, RegionVerdict] = {}
        """(frame, region, crop_weight) -> the naming's verdict for that region."""
        self._embeddings: dict[str, torch.Tensor] = {}
        """name -> its ``(D,)`` text embedding, for the names the naming gave."""
        self._scored: dict[tuple, ComponentScores] = {}
        """(frame, new names, min_region_area) -> the frame's component scores: the extension and the metrics
        depend on nothing else once the known-class scores are fixed."""
        self.streamed = 0
        """Frames that did not fit the budget: read again for each setting."""

    def _known(self, features):
        return self.pipeline.known_scores(features, self.pipeline.config, self.pipeline.vocabulary.current)

    def prepare(self, frames: list[LabelledFrame], progress: bool = True) -> tuple[float, dict]:
        """The dense pass (or the cache) and known-class scores of every frame, and the pixel metrics of the
        published anomaly score over them; returns ``(seconds, pixel metrics)``."""
        from tqdm import tqdm

        started = time.perf_counter()
        pixels = PixelScores()
        with torch.inference_mode():
            for frame in tqdm(frames, desc="dense features", unit="image", disable=not progress):
                image, is_anomaly, void = frame.load()
                features = self.store.features(frame, image)
                known = self._known(features)
                pixels.add(banded_anomaly_score(known.logits, image.shape[:2]), is_anomaly, ~void)
                prepared = PreparedFrame(image, is_anomaly, void, known)
                if self.budget.take(nbytes(image, is_anomaly, void, known)):
                    self._prepared[frame.digest] = prepared
                else:
                    self.streamed += 1
        try:
            pixel = pixels.summary()
        except MetricError as error:
            raise CalibrationError(str(error)) from None
        return time.perf_counter() - started, {k: pixel[k] for k in ("auprc", "fpr_at_95_tpr", "auroc")}

    def _frame(self, frame: LabelledFrame) -> tuple[PreparedFrame, object]:
        prepared = self._prepared.get(frame.digest)
        if prepared is None:  # past the budget: from the files and the feature cache again
            image, is_anomaly, void = frame.load()
            features = self.store.features(frame, image)
            prepared = PreparedFrame(image, is_anomaly, void, self._known(features))
        else:
            features = self.store.features(frame, prepared.image)
        return prepared, features

    def score(self, frames: list[LabelledFrame], settings: dict) -> tuple[dict, list[ComponentScores]]:
        """The component metrics of ``settings`` (values of :data:`SEARCHED`) on ``frames`` (prepared), and each
        frame's own component scores (for the bootstrap)."""
        config = self.pipeline.config.replace(**settings)
        with torch.inference_mode():
            per_frame = [self._frame_scores(frame, config) for frame in frames]
        return pooled(per_frame).summary(), per_frame

    def _frame_scores(self, frame: LabelledFrame, config: ClipomalyConfig) -> ComponentScores:
        """One frame's component scores under ``config``: the pipeline's stages after the known-class scores
        (:meth:`~clipomaly_ros.core.method.pipeline.Clipomaly._segment` does the same), each done once per
        distinct input. Many settings find the same regions (a region is named once per ``crop_weight``), and
        different regions often get the same names (the extension, which depends only on the names and
        ``min_region_area``, runs once per such set): the scores are those of a full run, found faster."""
        prepared, features = self._frame(frame)
        output_size = prepared.image.shape[:2]
        vocabulary = self.pipeline.vocabulary.current
        regions = self.pipeline.unknown_regions(features, prepared.known, config, output_size)
        keys = [(frame.digest, region_key(region), config.crop_weight) for region in regions]
        verdicts = [self._named.get(key) for key in keys]
        unnamed = [index for index, verdict in enumerate(verdicts) if verdict is None]
        if unnamed:
            named = self.pipeline.name_regions(prepared.image, features.grid, [regions[i] for i in unnamed],
                                               config, vocabulary)
            for index, verdict in zip(unnamed, named):
                self._embeddings.setdefault(verdict.name, verdict.embedding.clone())
                verdicts[index] = self._named[keys[index]] = RegionVerdict(verdict.name, verdict.is_known)
        new_names = list(dict.fromkeys(verdict.name for verdict in verdicts if not verdict.is_known))
        embeddings = torch.stack([self._embeddings[name] for name in new_names]) if new_names else None
        key = (frame.digest, tuple(new_names), config.min_region_area if new_names else 0)
        scores = self._scored.get(key)
        if scores is None:
            instances, _ = self.pipeline.extended_instances(features, prepared.known, new_names, embeddings, config,
                                                            vocabulary, output_size)
            scores = self._scored[key] = ComponentScores()
            scores.add(anomaly_mask(instances, output_size), prepared.is_anomaly, prepared.void)
        return scores


@dataclass(frozen=True)
class RegionVerdict:
    """What the extension needs of a region's naming: its name and whether that is a known class (not the
    region's masks, the candidates or a tensor: thousands of small tensors kept among the frames' large
    temporaries fragment the heap, and the process kept gigabytes it no longer used)."""

    name: str
    is_known: bool


def region_key(region) -> bytes:
    """What names a region: its mask on the coarse map (its box and area follow from it)."""
    return hashlib.blake2b(np.packbits(region.mask).tobytes() + str(region.mask.shape).encode(),
                           digest_size=16).digest()


def anomaly_mask(instances: list, output_size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the pixels of any of the ``instances`` (what a result's ``anomaly_mask`` holds)."""
    mask = torch.zeros(output_size, dtype=torch.bool)
    for instance in instances:
        y0, y1, x0, x1 = instance.mask.box
        mask[y0:y1, x0:x1] |= instance.mask.mask.cpu()
    return mask.numpy()


SCORE_BAND_ROWS = 64


def banded_anomaly_score(known_logits: torch.Tensor, output_size: tuple[int, int],
                         rows: int = SCORE_BAND_ROWS) -> np.ndarray:
    """The published ``anomaly_score`` ``(H, W)`` float32 (the normalised entropy of the known-class logits,
    bilinearly resampled to ``output_size``), made ``rows`` image rows at a time: the ``(K, H, W)`` logits at the
    full resolution never exist at once (158 MB for 19 classes at 1920 x 1080), so the memory budget holds."""
    from ..core.method.maps import sample_points
    from ..core.method.unknown import class_statistics

    height, width = output_size
    classes = known_logits.shape[0]
    score = np.empty((height, width), np.float32)
    columns = torch.arange(width, device=known_logits.device)
    for top in range(0, height, rows):
        band = torch.arange(top, min(height, top + rows), device=known_logits.device)
        ys, xs = torch.meshgrid(band, columns, indexing="ij")
        logits = sample_points(known_logits, output_size, ys.reshape(-1), xs.reshape(-1))
        score[top:top + len(band)] = class_statistics(logits.view(classes, len(band), width)).uncertainty.float() \
            .cpu().numpy()
    return score


def pooled(per_frame: Sequence[ComponentScores], pick: Sequence[int] | None = None) -> ComponentScores:
    """The frames' component scores as one (those at the indices ``pick``, repeats counted, when given)."""
    together = ComponentScores()
    for index in (range(len(per_frame)) if pick is None else pick):
        together.siou.extend(per_frame[index].siou)
        together.ppv.extend(per_frame[index].ppv)
    return together


def objective_value(metrics: dict, objective: str) -> float:
    """The objective as a number to maximise (a lower-is-better metric negated; a missing one is the worst)."""
    _, key, direction, _ = OBJECTIVES[objective]
    value = metrics.get(key)
    if value is None:
        return -np.inf
    return value if direction == "higher" else -value


def noise_margin(challenger: list[ComponentScores], current: list[ComponentScores], objective: str,
                 rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> float:
    """The standard deviation of ``objective(challenger) - objective(current)`` over ``rounds`` bootstrap
    resamples of the frames (the same resample for both): how much of a lead the data's own spread explains."""
    rng = np.random.default_rng(seed)
    count = len(current)
    differences = []
    for _ in range(rounds):
        pick = rng.integers(0, count, count)
        values = [objective_value(pooled(scores, pick).summary(), objective) for scores in (challenger, current)]
        if np.isfinite(values).all():
            differences.append(values[0] - values[1])
    return float(np.std(differences)) if differences else 0.0


def nearest(trials: list[dict], start: dict, space: "SearchSpace") -> dict:
    """Of equally good ``trials``, the one nearest the ``start`` setting (each setting's step measured against the
    spread of its searched values), so that a tie never goes to the grid's order."""
    spans = {name: (max(values) - min(values)) or 1.0 for name, values in zip(SEARCHED, (
        space.thresholds, space.areas, space.radii, space.crop_weights))}
    return min(trials, key=lambda t: (sum(abs(t[n] - start[n]) / spans[n] for n in SEARCHED),
                                      tuple(t[n] for n in SEARCHED)))


def calibrate(pipeline, frames: list[LabelledFrame], objective: str = "f1", space: SearchSpace = SearchSpace(),
              data: str = "", val_frames: list[LabelledFrame] | None = None, val_data: str = "",
              memory_budget_mb: float = 2048.0, cache_folder: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> CalibrationReport:
    """Search ``space`` for the settings that optimise ``objective`` on ``frames``; see the module docstring."""
    from tqdm import tqdm

    if objective not in OBJECTIVES:
        raise CalibrationError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if val_frames:
        check_disjoint(frames, val_frames)
    calibrator = Calibrator(pipeline, cache_folder, memory_budget_mb)
    report = CalibrationReport(objective, data, len(frames))
    first_pass, pixel = calibrator.prepare(frames, progress)
    config = pipeline.config
    default = {name: getattr(config, name) for name in SEARCHED}
    started = time.perf_counter()
    seen: dict[tuple, dict] = {}
    per_frame: dict[tuple, list[ComponentScores]] = {}

    def trial(settings: dict) -> dict:
        key = tuple(settings[name] for name in SEARCHED)
        if key not in seen:
            metrics, per_frame[key] = calibrator.score(frames, settings)
            seen[key] = {**settings, **pixel, **metrics}
            report.trials.append(seen[key])
        return seen[key]

    report.default = trial(default)  # always a candidate, and the first
    level = OBJECTIVES[objective][0]
    if not CHANGED_BY[level]:
        report.chosen, report.kept = report.default, True
        report.decision = (f"kept the current setting: none of the searched settings ({', '.join(SEARCHED)}) "
                           f"changes {objective}, which is measured on the continuous anomaly score the node "
                           "publishes (only the model, known_classes, prompt_templates, logit_scale and pamr_steps "
                           "change it)")
    else:
        grid = [dict(zip(SEARCHED[:3], values)) | {"crop_weight": config.crop_weight}
                for values in itertools.product(space.thresholds, space.areas, space.radii)]
        for settings in tqdm(grid, desc="settings", unit="setting", disable=not progress):
            trial(settings)
        best = _best(report.trials, objective, default, space)
        for weight in space.crop_weights:
            trial({**{name: best[name] for name in SEARCHED[:3]}, "crop_weight": weight})
        _decide(report, _best(report.trials, objective, default, space), per_frame, objective)
    searched_seconds = time.perf_counter() - started
    report.timing = {"first_pass_s": first_pass, "settings": len(report.trials),
                     "per_setting_ms": 1000.0 * searched_seconds / max(1, len(report.trials)),
                     "per_image_first_pass_ms": 1000.0 * first_pass / max(1, len(frames)),
                     "frames_streamed": calibrator.streamed}
    if val_frames:
        _, val_pixel = calibrator.prepare(val_frames, progress)
        report.validation = {"data": val_data, "images": len(val_frames),
                             "chosen": {**val_pixel, **calibrator.score(val_frames, _settings(report.chosen))[0]},
                             "default": {**val_pixel, **calibrator.score(val_frames, default)[0]}}
    report.backbone_passes = calibrator.store.backbone_passes
    report.crops_encoded = calibrator.crops.encoded
    return report


def _best(trials: list[dict], objective: str, start: dict, space: SearchSpace) -> dict:
    """The best trial; the start among equals, else the nearest to it."""
    top = max(objective_value(t, objective) for t in trials)
    tied = [t for t in trials if objective_value(t, objective) == top]
    starting = [t for t in tied if _settings(t) == start]
    return starting[0] if starting else nearest(tied, start, space)


def _decide(report: CalibrationReport, best: dict, per_frame: dict, objective: str) -> None:
    """Chosen: ``best`` when it beats the starting setting by more than the bootstrap noise margin, else the
    starting setting."""
    current = report.default
    if best is current:
        report.chosen, report.kept = current, True
        report.decision = "kept the current setting: no searched setting does better"
        return
    key = lambda t: tuple(t[name] for name in SEARCHED)  # noqa: E731
    margin = noise_margin(per_frame[key(best)], per_frame[key(current)], objective)
    lead = objective_value(best, objective) - objective_value(current, objective)
    report.noise_margin = margin
    if lead > margin:
        report.chosen, report.kept = best, False
        report.decision = f"chose a new setting: it leads by {lead:.4f}, more than the noise margin {margin:.4f}"
    else:
        report.chosen, report.kept = current, True
        report.decision = (f"kept the current setting: the best other setting leads by {lead:.4f}, within the "
                           f"noise margin {margin:.4f} (the spread over {BOOTSTRAP_ROUNDS} bootstrap resamples "
                           "of the frames)")


def _settings(trial: dict) -> dict:
    return {name: trial[name] for name in SEARCHED}


def tuned_parameter_file(report: CalibrationReport, config: ClipomalyConfig, identity: str) -> str:
    """TUNED.yaml: a parameter-file section (``/**/clipomaly``: any namespace) with the chosen values and the
    settings that say which weights they were tuned for, and comments saying what was optimised and on what."""
    _, key, direction, meaning = OBJECTIVES[report.objective]
    chosen, default = report.chosen, report.default

    def figure(metrics: dict) -> str:
        value = metrics.get(key)
        return "none" if value is None else f"{value:.4f}"

    lines = [f"# Tuned by clipomaly calibrate on {date.today().isoformat()}.",
             f"# Objective: {report.objective} ({meaning}; {direction} is better).",
             f"# Data: {report.data} ({report.images} images): {figure(chosen)} with these settings, "
             f"{figure(default)} with the settings it started from.",
             f"# Decision: {report.decision}.",
             f"# Weights: {identity}; dense method {config.dense_method}, working short side "
             f"{config.working_short_side} pixels. Other weights need their own calibration."]
    if report.validation:
        validation = report.validation
        lines.append(f"# Held-out data: {validation['data']} ({validation['images']} images, not searched): "
                     f"{figure(validation['chosen'])} with these settings, {figure(validation['default'])} "
                     "with the settings it started from.")
    else:
        lines.append("# No held-out data was given (--val): the figures above are on the data searched, and "
                     "flatter the settings.")
    lines.append("# The whole search is in the JSON file beside this one. Use: --config THIS_FILE, or the node's "
                 "params_file / --params-file.")
    model = {name: getattr(config, name) for name in CORE_SETTINGS
             if name not in SEARCHED and getattr(config, name) != _default(name)
             and name in ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method",
                          "inference_size", "known_classes", "anomaly_vocabulary", "prompt_templates",
                          "naming_dictionary", "logit_scale", "pamr_steps", "max_regions")}
    values = {**{k: list(v) if isinstance(v, tuple) else v for k, v in model.items()},
              **{name: chosen[name] for name in SEARCHED}}
    body = yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": values}}, sort_keys=False,
                          default_flow_style=False, width=1000)
    return "\n".join(lines) + "\n" + body


def _default(name: str):
    return SETTINGS_BY_NAME[name].default


def write_outputs(report: CalibrationReport, config: ClipomalyConfig, identity: str, output: Path,
                  plots: Path | None = None) -> list[Path]:
    """TUNED.yaml at ``output``, the JSON of the whole search beside it, and with ``plots`` the curves."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(tuned_parameter_file(report, config, identity))
    search = output.with_suffix(".json")
    search.write_text(json.dumps(report.as_dict(), indent=1, default=float) + "\n")
    written = [output, search]
    if plots is not None:
        written.append(plot_curves(report, plots / "calibration_curves.png"))
    return written


def plot_curves(report: CalibrationReport, path: Path) -> Path:
    """Each objective against the threshold: the sweep at the chosen area and radius, and the best over every
    other setting at each threshold (dashed); the chosen setting starred."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    chosen = report.chosen
    figure, axes = plt.subplots(2, 2, figsize=(9, 7), dpi=110)
    for axis, (name, (_, key, direction, _)) in zip(axes.ravel(), OBJECTIVES.items()):
        # the threshold sweep at the chosen area and radius, as the grid ran it (with the starting crop weight)
        at_chosen = sorted((t["uncertainty_threshold"], t[key]) for t in report.trials
                           if t["min_region_area"] == chosen["min_region_area"] and t[key] is not None
                           and t["cleanup_radius"] == chosen["cleanup_radius"]
                           and t["crop_weight"] == report.default["crop_weight"])
        best: dict[float, float] = {}
        for t in report.trials:
            if t[key] is not None:
                pick = max if direction == "higher" else min
                threshold = t["uncertainty_threshold"]
                best[threshold] = pick(best.get(threshold, t[key]), t[key])
        if best:
            xs = sorted(best)
            axis.plot(xs, [best[x] for x in xs], "--", color="grey", linewidth=1, label="best over the other settings")
        if at_chosen:
            axis.plot(*zip(*at_chosen), "-o", markersize=3, color="tab:blue", label="at the chosen area and radius")
        if chosen.get(key) is not None:
            axis.plot([chosen["uncertainty_threshold"]], [chosen[key]], "*", markersize=14, color="tab:red",
                      label="chosen" + (f" ({report.objective})" if name == report.objective else ""))
        axis.set(xlabel="uncertainty_threshold", ylabel=key,
                 title=f"{name} ({direction} is better){' - the objective' if name == report.objective else ''}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"clipomaly calibrate on {Path(report.data).name} ({report.images} images): area "
                    f"{chosen['min_region_area']}, radius {chosen['cleanup_radius']}, crop weight "
                    f"{chosen['crop_weight']}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def format_report(report: CalibrationReport) -> str:
    """The chosen settings against the starting ones, and the search's cost."""
    _, key, direction, meaning = OBJECTIVES[report.objective]

    def row(name: str, metrics: dict) -> str:
        values = "  ".join(f"{m} {'-' if metrics.get(k) is None else f'{metrics[k]:.3f}'}"
                           for m, (_, k, _, _) in OBJECTIVES.items())
        return f"{name:<25}{values}"

    lines = [f"objective: {report.objective} ({meaning}; {direction} is better)",
             report.decision,
             "chosen:   " + ", ".join(f"{name} {report.chosen[name]}" for name in SEARCHED),
             "started:  " + ", ".join(f"{name} {report.default[name]}" for name in SEARCHED),
             row("searched data, chosen", report.chosen), row("searched data, started", report.default)]
    if report.validation:
        lines += [row("held-out, chosen", report.validation["chosen"]),
                  row("held-out, started", report.validation["default"])]
    timing = report.timing
    evaluate_s = timing["first_pass_s"] + timing["per_setting_ms"] / 1000.0
    if report.backbone_passes:  # the first pass was a real dense pass: a fair price of one evaluate run
        lines.append(f"an evaluate run per setting would cost about {evaluate_s:.1f} s (its dense pass and the same "
                     f"stages): {evaluate_s / max(timing['per_setting_ms'] / 1000.0, 1e-9):.0f} times a setting here")
    lines.append(f"{timing['settings']} settings on {report.images} images: first pass {timing['first_pass_s']:.1f} s "
                 f"({timing['per_image_first_pass_ms']:.0f} ms an image; backbone passes this run: "
                 f"{report.backbone_passes}), then {timing['per_setting_ms']:.0f} ms per setting; crops encoded: "
                 f"{report.crops_encoded}" + (f"; {timing['frames_streamed']} frame(s) past --memory-budget were read "
                                              "again for each setting" if timing.get("frames_streamed") else ""))
    return "\n".join(lines)
