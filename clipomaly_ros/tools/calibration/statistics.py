"""The statistics of a calibration: per-frame scores that add up, the objective of any set of frames, and the
rule that decides whether a searched setting is worth shipping.

Each frame's component scores are kept as sums (:func:`frame_statistics`): the sIoU and PPV totals and counts, and
the true and false positives at each of SegmentMeIfYouCan's F1 thresholds. Any set of frames, or a bootstrap
resample of them, is then one weighted sum, and its F1 and mean sIoU are exactly what ``clipomaly evaluate`` reports
on those frames. The score matrix of a search is ``(settings, frames, STATISTICS)``.

The rule (:func:`decide`): keeping the best of many settings picks noise when the frames cannot tell them apart,
so a setting other than the start is chosen only when both hold:

1. **It leads by more than chance leads.** Its lead over the start, on all searched frames, exceeds the 99th
   percentile of the *largest* lead that any searched setting shows by chance: over bootstrap resamples of the
   units (drives, or frames where no drive shows), the maximum over all settings of the lead's deviation from its
   own value on all frames.
2. **The search holds on frames that did not choose.** The whole search, re-run by cross-validation (folds of whole
   drives; each fold chosen on the others), is scored on each fold's frames: that is the expected gain on unseen
   frames, and the lower end of its 95 % bootstrap interval must be above 0.

Ties in the objective go to the start; among other settings to the smallest change of threshold, then of area,
radius and crop weight, then to the lower value of each (the one that reports more: a missed obstacle costs more
than a false alarm), never to the grid's order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..metrics import F1_THRESHOLDS, ComponentScores

SEARCHED = ("uncertainty_threshold", "min_region_area", "cleanup_radius", "crop_weight")
OBJECTIVES = {
    "f1": ("component", "mean_f1", "higher", "SegmentMeIfYouCan mean F1 of components"),
    "siou": ("component", "mean_siou", "higher", "mean sIoU of the ground-truth components"),
    "ap": ("pixel", "auprc", "higher", "average precision of the published continuous anomaly score"),
    "fpr95": ("pixel", "fpr_at_95_tpr", "lower", "false-positive rate at 95 % recall of the published continuous "
                                                  "anomaly score"),
}
THRESHOLDS = len(F1_THRESHOLDS)
STATISTICS = 4 + 2 * THRESHOLDS
"""Per frame: sIoU total, truth components, PPV total, predicted components, then the true positives and the false
positives at each F1 threshold."""
BOOTSTRAP_ROUNDS = 1000
MAX_FOLDS = 5
CONFIDENCE = 0.95
"""Of the interval of the expected gain on unseen frames."""
CHANCE_QUANTILE = 0.99
"""Of the largest chance lead: under labels without signal, about 1 search in 100 passes it (at 0.95, the
conjunction with the cross-validation still let about 1 in 20 through: the two are correlated)."""
TIE_TOLERANCE = 1e-9
RULE = ("a new setting only when its lead over the start on the searched frames exceeds the 99th percentile of the "
        "largest lead any searched setting shows by chance (bootstrap of the maximum over all settings), and the "
        "search re-run by cross-validation over drives beats the start on the frames that did not choose it (lower "
        "end of the 95 % interval above 0); ties: the start, then the smallest change of threshold, area, radius and "
        "crop weight, then the lower value")


def frame_statistics(scores: ComponentScores) -> np.ndarray:
    """``(STATISTICS,)`` float64 sums of one frame's component ``scores`` (see :data:`STATISTICS`)."""
    siou, ppv = np.asarray(scores.siou, float), np.asarray(scores.ppv, float)
    true_positives = (siou[None, :] > F1_THRESHOLDS[:, None]).sum(axis=1)
    false_positives = (ppv[None, :] <= F1_THRESHOLDS[:, None]).sum(axis=1)
    return np.concatenate([[siou.sum(), len(siou), ppv.sum(), len(ppv)], true_positives, false_positives]).astype(float)


def summary_of(sums: np.ndarray) -> dict[str, float | None]:
    """What :meth:`ComponentScores.summary` reports, from summed statistics ``(STATISTICS,)``."""
    truth, predicted = int(round(sums[1])), int(round(sums[3]))
    return {"mean_siou": float(sums[0] / sums[1]) if truth else None,
            "mean_ppv": float(sums[2] / sums[3]) if predicted else None,
            "mean_f1": float(_f1(sums)), "truth_components": truth, "predicted_components": predicted}


def _f1(sums: np.ndarray) -> np.ndarray:
    true_positives = sums[..., 4:4 + THRESHOLDS]
    false_negatives = sums[..., 1:2] - true_positives
    denominator = 2 * true_positives + false_negatives + sums[..., 4 + THRESHOLDS:]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * true_positives / denominator, 0.0)
    return f1.mean(axis=-1)


def objective_values(sums: np.ndarray, objective: str) -> np.ndarray:
    """The component ``objective`` (f1 or siou) of summed statistics ``(..., STATISTICS)``, shape ``(...)``; NaN
    where it is undefined (no truth component among the frames, for siou)."""
    if objective == "f1":
        return _f1(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)


def objective_value(metrics: dict, objective: str) -> float:
    """The objective in a metrics dict, as a number to maximise (lower-is-better negated; missing is the worst)."""
    _, key, direction, _ = OBJECTIVES[objective]
    value = metrics.get(key)
    if value is None:
        return -np.inf
    return value if direction == "higher" else -value


def preference(settings: dict, start: dict) -> tuple:
    """The tie order of a setting (smaller first): its change from ``start`` in each searched setting, in the
    order of :data:`SEARCHED`, then its values."""
    return (*(round(abs(settings[name] - start[name]), 9) for name in SEARCHED),
            *(settings[name] for name in SEARCHED))


def select(values: np.ndarray, allowed: np.ndarray, start: int, order: Sequence[tuple]) -> int:
    """The index of the best of ``values`` ``(S,)`` among ``allowed`` ``(S,)`` bool: ``start`` when it ties with
    the best, else the tied one first in ``order`` (:func:`preference` of each setting)."""
    candidates = np.where(allowed & np.isfinite(values), values, -np.inf)
    top = candidates.max()
    if not np.isfinite(top):
        return start
    tied = np.flatnonzero(candidates >= top - TIE_TOLERANCE)
    if start in tied:
        return start
    return int(min(tied, key=lambda index: order[index]))


@dataclass(frozen=True)
class Grouping:
    """How frames are resampled and folded: ``units`` ``(F,)`` the unit of each frame (a drive, a block of one
    drive, or the frame itself), ``folds`` ``(F,)`` its cross-validation fold, and ``text`` saying which."""

    units: np.ndarray
    folds: np.ndarray
    text: str
    drives: int


def group_frames(drives: Sequence[str | None], order: Sequence) -> Grouping:
    """Units and folds of frames whose ``drives`` (None: none shows) and time ``order`` (a sortable key per frame)
    are given: whole drives where names or stamps show two or more; contiguous blocks in time where all frames are
    one drive; else each frame alone. Folds: at most :data:`MAX_FOLDS`, whole units, balanced by frames."""
    count = len(drives)
    named = {drive for drive in drives if drive is not None}
    if len(named) == 1 and all(drive is not None for drive in drives) and count > 1:
        ranked = sorted(range(count), key=lambda index: natural_key(order[index]))
        units = np.empty(count, int)
        units[ranked] = np.arange(count) * min(MAX_FOLDS, count) // count
        text = f"one drive: {units.max() + 1} blocks of consecutive frames"
    else:
        labels = [drive if drive is not None else f"#frame{index}" for index, drive in enumerate(drives)]
        names = sorted(set(labels), key=labels.index)
        units = np.array([names.index(label) for label in labels])
        text = (f"{len(named)} drives (from the file names or stamps)" if named else
                "each frame on its own (no drive shows in the names or stamps)")
    sizes = np.bincount(units)
    fold_count = min(MAX_FOLDS, len(sizes))
    filled, fold_of_unit = np.zeros(fold_count, int), np.zeros(len(sizes), int)
    for unit in sorted(range(len(sizes)), key=lambda u: (-sizes[u], u)):  # largest first, to the emptiest fold
        fold_of_unit[unit] = int(np.argmin(filled))
        filled[fold_of_unit[unit]] += sizes[unit]
    return Grouping(units, fold_of_unit[units], text, len(named))


def natural_key(key) -> tuple:
    """``key`` (a value or a tuple of them) ordered as people read it: the digit runs of a text compared as
    numbers, so that ``frame_2`` comes before ``frame_10``."""
    parts = key if isinstance(key, tuple) else (key,)
    return tuple(tuple((0, int(piece), "") if piece.isdigit() else (1, 0, piece) for piece in re.split(r"(\d+)", part))
                 if isinstance(part, str) else ((0, part, ""),) for part in parts)


def bootstrap_weights(units: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """``(rounds, F)`` frame weights of ``rounds`` resamples of the units with replacement (each frame weighs as
    often as its unit was drawn)."""
    rng = np.random.default_rng(seed)
    unit_count = int(units.max()) + 1
    draws = rng.integers(0, unit_count, (rounds, unit_count))
    counts = np.stack([np.bincount(row, minlength=unit_count) for row in draws])
    return counts[:, units].astype(float)


@dataclass
class Decision:
    """The rule's verdict: the ``chosen`` setting's index, whether the start was ``kept`` and why (``text``), the
    in-sample ``lead`` of the best, the chance ``margin`` it had to pass, the ``expected_gain`` on unseen frames
    with its ``interval``, and the cross-validation's ``folds``, ``units`` and their description."""

    chosen: int
    kept: bool
    text: str
    lead: float | None = None
    margin: float | None = None
    expected_gain: float | None = None
    interval: tuple[float, float] | None = None
    folds: int = 0
    grouping: str = ""
    fold_choices: list[int] = field(default_factory=list)
    rule: str = RULE


def decide(stats: np.ndarray, objective: str, start: int, procedure: Callable[[np.ndarray], int],
           grouping: Grouping, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> Decision:
    """Apply the rule (module docstring) to the score matrix ``stats`` ``(S, F, STATISTICS)`` of a search whose
    ``procedure`` picks a setting index from summed statistics ``(S, STATISTICS)``; ``start`` indexes the starting
    setting."""
    totals = stats.sum(axis=1)
    best = procedure(totals)
    if best == start:
        return Decision(start, True, "kept the current setting: no searched setting does better on the searched "
                                     "frames")
    values = objective_values(totals, objective)
    lead = float(values[best] - values[start])
    weights = bootstrap_weights(grouping.units, rounds, seed)
    margin = chance_margin(stats, weights, values, objective, start)
    folds = int(grouping.folds.max()) + 1
    if folds < 2:
        return Decision(start, True, f"kept the current setting: the best other setting leads by {lead:.4f}, but "
                                     "one frame cannot show whether that holds on others", lead, margin)
    choices = [procedure(stats[:, grouping.folds != fold].sum(axis=1)) for fold in range(folds)]
    held_out = stats[np.array(choices)[grouping.folds], np.arange(stats.shape[1])]  # (F, STATISTICS)
    gain = float(objective_values(held_out.sum(axis=0), objective) - values[start])
    resampled = objective_values(weights @ held_out, objective) - objective_values(weights @ stats[start], objective)
    low, high = (float(v) for v in np.nanquantile(resampled, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]))
    found = (f"the best other setting leads by {lead:.4f} on the searched frames (chance leads up to {margin:.4f}); "
             f"on frames that did not choose it ({folds}-fold cross-validation, {grouping.text}) the search gains "
             f"{gain:+.4f} (95 % interval {low:+.4f} .. {high:+.4f})")
    chosen = lead > margin and low > 0
    text = ("chose a new setting: " if chosen else "kept the current setting: ") + found
    return Decision(best if chosen else start, not chosen, text, lead, margin, gain, (low, high), folds,
                    grouping.text, [int(c) for c in choices])


def chance_margin(stats: np.ndarray, weights: np.ndarray, values: np.ndarray, objective: str, start: int,
                  chunk: int = 200) -> float:
    """The :data:`CHANCE_QUANTILE` over the resamples ``weights`` ``(B, F)`` of the largest deviation, over all
    settings, of a setting's lead over ``start`` from its lead on all frames (``values`` ``(S,)``)."""
    leads = values - values[start]
    largest = []
    for first in range(0, len(weights), chunk):
        resampled = objective_values(np.einsum("bf,sfm->bsm", weights[first:first + chunk], stats), objective)
        deviations = (resampled - resampled[:, start:start + 1]) - leads[None, :]
        deviations[:, ~np.isfinite(leads)] = np.nan
        largest.append(np.nanmax(np.where(np.isnan(deviations), -np.inf, deviations), axis=1))
    return float(np.quantile(np.concatenate(largest), CHANCE_QUANTILE))
