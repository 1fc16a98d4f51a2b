"""The search of ``clipomaly calibrate``: which settings are tried, in what order, and the report of what was found.

Searched: ``uncertainty_threshold``, ``min_region_area`` and ``cleanup_radius`` over a full grid, then the naming's
``crop_weight`` (which decides whether a region is named by a known class and so dropped) at the best of those; the
crop weights are also tried at the best of each cross-validation fold, so that each fold re-runs the whole search.
The starting setting (the configuration's own values) is always the first candidate. Which setting is shipped is
the rule of :mod:`.statistics`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...core.config import SETTINGS_BY_NAME
from .frames import CalibrationError, LabelledFrame, check_disjoint, content_hash
from .scoring import Calibrator
from .statistics import (OBJECTIVES, RULE, SEARCHED, Decision, decide, group_frames, objective_values, preference,
                         select, summary_of)

CHANGED_BY = {"component": SEARCHED, "pixel": ()}
"""Which searched settings can change an objective of each level: the components come from the reported mask,
which all of them shape; the continuous score is computed before any of them acts."""


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

    def grid(self, crop_weight: float) -> list[dict]:
        """The first stage's settings, at ``crop_weight``."""
        return [dict(zip(SEARCHED[:3], values)) | {"crop_weight": crop_weight}
                for values in itertools.product(self.thresholds, self.areas, self.radii)]


@dataclass
class CalibrationReport:
    """The search: ``trials`` (each setting with its metrics on all searched frames; the first is the starting
    one), the ``chosen`` trial, the ``default`` one, whether the start was ``kept`` and why (``decision``), the rule's
    figures (``rule``, ``noise_margin``: the lead chance reaches, ``expected_gain`` on unseen frames and its
    ``gain_interval``, ``folds`` and ``grouping``), the data (``data_hash``, ``images``, ``drives``), an optional
    ``validation`` of chosen and default on held-out data, and the cost (``timing``)."""

    objective: str
    data: str
    images: int
    trials: list[dict] = field(default_factory=list)
    chosen: dict = field(default_factory=dict)
    default: dict = field(default_factory=dict)
    kept: bool = False
    decision: str = ""
    rule: str = RULE
    noise_margin: float | None = None
    expected_gain: float | None = None
    gain_interval: tuple[float, float] | None = None
    folds: int = 0
    grouping: str = ""
    data_hash: str = ""
    drives: int = 0
    validation: dict | None = None
    timing: dict = field(default_factory=dict)
    backbone_passes: int = 0
    crops_encoded: int = 0

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}

    def take(self, decision: Decision) -> None:
        self.chosen, self.kept, self.decision = self.trials[decision.chosen], decision.kept, decision.text
        self.noise_margin, self.expected_gain, self.gain_interval = (decision.margin, decision.expected_gain,
                                                                     decision.interval)
        self.folds, self.grouping = decision.folds, decision.grouping


def calibrate(pipeline, frames: list[LabelledFrame], objective: str = "f1", space: SearchSpace = SearchSpace(),
              data: str = "", val_frames: list[LabelledFrame] | None = None, val_data: str = "",
              memory_budget_mb: float = 2048.0, cache_folder: Path | None = None, progress: bool = True,
              log: Callable[[str], None] = print, calibrator: Calibrator | None = None) -> CalibrationReport:
    """Search ``space`` for the settings that optimise ``objective`` on ``frames`` and decide by the rule of
    :mod:`.statistics`; ``calibrator`` (optional) keeps what an earlier call computed on the same images."""
    if objective not in OBJECTIVES:
        raise CalibrationError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if val_frames:
        check_disjoint(frames, val_frames)
    calibrator = calibrator or Calibrator(pipeline, cache_folder, memory_budget_mb)
    grouping = group_frames([frame.drive for frame in frames],
                            [(frame.stamp is None, frame.stamp or 0.0, frame.sample.image.name) for frame in frames])
    report = CalibrationReport(objective, data, len(frames), data_hash=content_hash(frames), drives=grouping.drives)
    started = time.perf_counter()
    pixel = calibrator.pixel_metrics(frames)
    first_pass = time.perf_counter() - started
    start = {name: getattr(pipeline.config, name) for name in SEARCHED}
    if not CHANGED_BY[OBJECTIVES[objective][0]]:
        settings, stats = [start], calibrator.score(frames, [start])
        report.trials = [{**start, **pixel, **summary_of(stats[0].sum(axis=0))}]
        report.take(Decision(0, True, f"kept the current setting: none of the searched settings ({', '.join(SEARCHED)}) "
                                      f"changes {objective}, which is measured on the continuous anomaly score the "
                                      "node publishes (only the model, known_classes, prompt_templates, logit_scale "
                                      "and pamr_steps change it)"))
    else:
        settings, stats, procedure = search(calibrator, frames, objective, space, start, grouping, progress)
        report.trials = [{**setting, **pixel, **summary_of(row.sum(axis=0))} for setting, row in zip(settings, stats)]
        report.take(decide(stats, objective, 0, procedure, grouping))
    report.default = report.trials[0]
    searched_seconds = time.perf_counter() - started - first_pass
    report.timing = {"first_pass_s": first_pass, "settings": len(report.trials),
                     "per_setting_ms": 1000.0 * searched_seconds / max(1, len(report.trials)),
                     "per_image_first_pass_ms": 1000.0 * first_pass / max(1, len(frames)),
                     "images_read": calibrator.loads, "segmentations": calibrator.segmentations}
    if val_frames:
        chosen = {name: report.chosen[name] for name in SEARCHED}
        scored = calibrator.score(val_frames, [chosen, start]).sum(axis=1)
        val_pixel = calibrator.pixel_metrics(val_frames)
        report.validation = {"data": val_data, "images": len(val_frames), "data_hash": content_hash(val_frames),
                             "chosen": {**val_pixel, **summary_of(scored[0])},
                             "default": {**val_pixel, **summary_of(scored[1])}}
    report.backbone_passes = calibrator.store.backbone_passes
    report.crops_encoded = calibrator.crops.encoded
    return report


def search(calibrator: Calibrator, frames: list[LabelledFrame], objective: str, space: SearchSpace, start: dict,
           grouping, progress: bool) -> tuple[list[dict], np.ndarray, Callable[[np.ndarray], int]]:
    """Score the grid, then the crop weights at the best of the grid on all frames and on each fold's others:
    ``(settings, score matrix (S, F, STATISTICS), the search as a procedure on summed statistics)``."""
    settings = unique([start, *space.grid(start["crop_weight"])])
    stats = calibrator.score(frames, settings, progress)
    first_stage = np.ones(len(settings), bool)
    order = [preference(setting, start) for setting in settings]

    def best_of_grid(sums: np.ndarray) -> int:
        return select(objective_values(sums, objective), first_stage, 0, order)

    subsets = [np.ones(len(frames), bool)] + [grouping.folds != fold for fold in range(grouping.folds.max() + 1)]
    anchors = sorted({best_of_grid(stats[:, subset].sum(axis=1)) for subset in subsets})
    wanted = unique([{**settings[anchor], "crop_weight": weight} for anchor in anchors
                     for weight in space.crop_weights])
    added = [setting for setting in wanted if setting not in settings]
    if added:
        stats = np.concatenate([stats, calibrator.score(frames, added, progress)])
        settings += added
        order += [preference(setting, start) for setting in added]
    first_stage = np.concatenate([first_stage, np.zeros(len(added), bool)])
    index = {tuple(s[n] for n in SEARCHED): i for i, s in enumerate(settings)}
    weighted = {anchor: np.isin(np.arange(len(settings)), [
        index[tuple({**settings[anchor], "crop_weight": w}[n] for n in SEARCHED)] for w in space.crop_weights])
        for anchor in anchors}

    def procedure(sums: np.ndarray) -> int:
        anchor = best_of_grid(sums)
        allowed = first_stage | weighted.get(anchor, first_stage)
        return select(objective_values(sums, objective), allowed, 0, order)

    return settings, stats, procedure


def unique(settings: list[dict]) -> list[dict]:
    """``settings`` without repeats, in their order."""
    seen: dict[tuple, dict] = {}
    for setting in settings:
        seen.setdefault(tuple(setting[name] for name in SEARCHED), setting)
    return list(seen.values())
