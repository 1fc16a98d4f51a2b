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
- pixel level, of the anomaly score of the pixels the pipeline reports (0 elsewhere, so the settings matter):
  ``ap`` (average precision, higher is better) and ``fpr95`` (false-positive rate at 95 % recall, lower is
  better).
"""

from __future__ import annotations

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
    "ap": ("pixel", "auprc", "higher", "average precision of the reported pixels' anomaly score"),
    "fpr95": ("pixel", "fpr_at_95_tpr", "lower", "false-positive rate at 95 % recall of the reported pixels' "
                                                  "anomaly score"),
}


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
    """One image of the data: its sample, the RGB image, the truth masks (H, W) bool, and what the settings do
    not change (filled by :class:`FeatureStore`)."""

    sample: Sample
    image: np.ndarray
    is_anomaly: np.ndarray
    void: np.ndarray
    score: np.ndarray | None = None
    known: object = None


def read_frames(samples: Sequence[Sample], anomaly_id: int, ignore_id: int) -> list[LabelledFrame]:
    """The images and truth masks; raises :class:`CalibrationError` when no label holds ``anomaly_id``."""
    import cv2

    from ..core.images import read_rgb

    for name, value in (("--anomaly-id", anomaly_id), ("--ignore-id", ignore_id)):
        if not 0 <= value <= 65535:
            raise CalibrationError(f"{name} {value}: label ids are 0..65535 (PNG labels)")
    frames, present = [], set()
    for sample in samples:
        image, label = read_rgb(sample.image), read_label(sample.label)
        if label.shape != image.shape[:2]:
            label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        present.update(np.unique(label).tolist())
        frames.append(LabelledFrame(sample, image, label == anomaly_id, label == ignore_id))
    if not any(frame.is_anomaly.any() for frame in frames):
        raise CalibrationError(
            f"no pixel of the {len(frames)} labels has the anomaly id {anomaly_id} (ids present: "
            f"{', '.join(map(str, sorted(present)[:20]))}): give the anomaly's id with --anomaly-id, or data with "
            "anomalies (calibration needs them)")
    return frames


class CachedCrops:
    """A backend whose ``encode_images`` remembers each crop's embedding by the crop's pixels; everything else
    is the wrapped backend's. ``encoded`` counts the crops that really went through the encoder."""

    def __init__(self, backend):
        self._backend = backend
        self._embeddings: dict[bytes, torch.Tensor] = {}
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def encode_images(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        keys = [hashlib.blake2b(np.ascontiguousarray(c).tobytes() + str(c.shape).encode(), digest_size=16).digest()
                for c in crops]
        missing = [i for i, key in enumerate(keys) if key not in self._embeddings]
        if missing:
            embedded = self._backend.encode_images([crops[i] for i in missing])
            self.encoded += len(missing)
            for i, row in zip(missing, embedded):
                self._embeddings[keys[i]] = row
        return torch.stack([self._embeddings[key] for key in keys])


class FeatureStore:
    """Dense features per image, computed once: on disk under ``folder`` and in memory up to ``budget_mb``.
    ``backbone_passes`` counts the images that went through the dense backbone in this run."""

    def __init__(self, pipeline, folder: Path, budget_mb: float):
        self.pipeline = pipeline
        self.folder = folder
        self.budget_bytes = budget_mb * 1e6
        self.held_bytes = 0
        self._memory: dict[str, object] = {}
        self.backbone_passes = 0
        config = pipeline.config
        self._key = "|".join([pipeline.backend.identity, config.dense_method, str(config.working_short_side),
                              str(config.pamr_steps)])

    def _file(self, frame: LabelledFrame) -> Path:
        digest = hashlib.sha256(self._key.encode() + frame.image.tobytes() + str(frame.image.shape).encode())
        return self.folder / f"{digest.hexdigest()[:32]}.pt"

    def features(self, frame: LabelledFrame):
        from ..core.model.backend import DenseFeatures

        path = self._file(frame)
        key = path.name
        if key in self._memory:
            return self._memory[key]
        if path.is_file():
            saved = torch.load(path, map_location=self.pipeline.backend.device, weights_only=True)
            features = DenseFeatures(saved["grid"], tuple(saved["working_size"]), saved.get("image"))
        else:
            with torch.inference_mode():
                (features,) = self.pipeline.backend.dense_features_batch([frame.image])
            self.backbone_passes += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            torch.save({"grid": features.grid.cpu(), "working_size": list(features.working_size),
                        "image": None if features.image is None else features.image.cpu()}, partial)
            partial.replace(path)  # atomic: an interrupted run never leaves half a file under the real name
        size = features.grid.numel() * features.grid.element_size()
        if self.held_bytes + size <= self.budget_bytes:
            self._memory[key] = features
            self.held_bytes += size
        return features


@dataclass
class CalibrationReport:
    """The search: ``trials`` (each setting with its metrics, in the order tried), the ``chosen`` trial, the
    ``default`` one (the configuration's own values), an optional ``validation`` of chosen and default on held-out
    data, and the cost (``timing``: seconds of the first pass, milliseconds per setting)."""

    objective: str
    data: str
    images: int
    trials: list[dict] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)
    default: dict = field(default_factory=dict)
    validation: dict | None = None
    timing: dict = field(default_factory=dict)
    backbone_passes: int = 0
    crops_encoded: int = 0

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}


class Calibrator:
    """Scores settings of one pipeline on labelled frames (see the module docstring). It takes the pipeline
    over: its namer encodes crops through :class:`CachedCrops` from then on."""

    def __init__(self, pipeline, cache_folder: Path | None = None, memory_budget_mb: float = 2048.0):
        self.pipeline = pipeline
        self.crops = CachedCrops(pipeline.backend)
        pipeline.namer.backend = self.crops
        cache_dir = pipeline.config.cache_path
        self.store = FeatureStore(pipeline, cache_folder or cache_dir / "calibration", memory_budget_mb)

    def prepare(self, frames: list[LabelledFrame], progress: bool = True) -> float:
        """The dense pass (or the cache), known-class scores and anomaly score of every frame; returns seconds."""
        from tqdm import tqdm

        from ..core.maps import FrameMaps

        started = time.perf_counter()
        config, vocabulary = self.pipeline.config, self.pipeline.vocabulary.current
        with torch.inference_mode():
            for frame in tqdm(frames, desc="dense features", unit="image", disable=not progress):
                features = self.store.features(frame)
                frame.known = self.pipeline.known_scores(features, config, vocabulary)
                frame.score = FrameMaps(frame.known.logits, frame.image.shape[:2], []).get(
                    "anomaly_score").cpu().numpy()
        return time.perf_counter() - started

    def score(self, frames: list[LabelledFrame], settings: dict) -> dict:
        """The metrics of ``settings`` (values of :data:`SEARCHED`) on ``frames`` (prepared)."""
        config = self.pipeline.config.replace(**settings)
        vocabulary = self.pipeline.vocabulary.current
        pixels, components = PixelScores(), ComponentScores()
        with torch.inference_mode():
            for frame in frames:
                features = self.store.features(frame)
                result = self.pipeline._segment(frame.image, features, config, vocabulary, {}, known=frame.known)
                mask = result.anomaly_mask
                pixels.add(np.where(mask, frame.score, 0.0), frame.is_anomaly, ~frame.void)
                components.add(mask, frame.is_anomaly, frame.void)
        try:
            pixel = pixels.summary()
        except MetricError as error:
            raise CalibrationError(str(error)) from None
        return {**{k: pixel[k] for k in ("auprc", "fpr_at_95_tpr", "auroc")}, **components.summary()}


def objective_value(metrics: dict, objective: str) -> float:
    """The objective as a number to maximise (a lower-is-better metric negated; a missing one is the worst)."""
    _, key, direction, _ = OBJECTIVES[objective]
    value = metrics.get(key)
    if value is None:
        return -np.inf
    return value if direction == "higher" else -value


def calibrate(pipeline, frames: list[LabelledFrame], objective: str = "f1", space: SearchSpace = SearchSpace(),
              data: str = "", val_frames: list[LabelledFrame] | None = None, val_data: str = "",
              memory_budget_mb: float = 2048.0, cache_folder: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> CalibrationReport:
    """Search ``space`` for the settings that optimise ``objective`` on ``frames``; see the module docstring."""
    from tqdm import tqdm

    if objective not in OBJECTIVES:
        raise CalibrationError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    calibrator = Calibrator(pipeline, cache_folder, memory_budget_mb)
    report = CalibrationReport(objective, data, len(frames))
    first_pass = calibrator.prepare(frames, progress)
    config = pipeline.config
    default = {name: getattr(config, name) for name in SEARCHED}
    grid = [dict(zip(SEARCHED[:3], values)) | {"crop_weight": config.crop_weight}
            for values in itertools.product(space.thresholds, space.areas, space.radii)]
    started = time.perf_counter()
    seen: dict[tuple, dict] = {}

    def trial(settings: dict) -> dict:
        key = tuple(settings[name] for name in SEARCHED)
        if key not in seen:
            seen[key] = {**settings, **calibrator.score(frames, settings)}
            report.trials.append(seen[key])
        return seen[key]

    for settings in tqdm(grid, desc="settings", unit="setting", disable=not progress):
        trial(settings)
    best = max(report.trials, key=lambda t: objective_value(t, objective))
    for weight in space.crop_weights:
        trial({**{name: best[name] for name in SEARCHED[:3]}, "crop_weight": weight})
    searched_seconds = time.perf_counter() - started
    report.chosen = max(report.trials, key=lambda t: objective_value(t, objective))
    report.default = trial(default)
    report.timing = {"first_pass_s": first_pass, "settings": len(report.trials),
                     "per_setting_ms": 1000.0 * searched_seconds / max(1, len(report.trials)),
                     "per_image_first_pass_ms": 1000.0 * first_pass / max(1, len(frames))}
    if val_frames:
        calibrator.prepare(val_frames, progress)
        report.validation = {"data": val_data, "images": len(val_frames),
                             "chosen": calibrator.score(val_frames, _settings(report.chosen)),
                             "default": calibrator.score(val_frames, default)}
    report.backbone_passes = calibrator.store.backbone_passes
    report.crops_encoded = calibrator.crops.encoded
    return report


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
                 f"{report.crops_encoded}")
    return "\n".join(lines)
