"""``clipomaly calibrate``: choose the settings that decide what reaches the planner, for the user's weights, from
labelled frames, and ship them only when they hold on frames that did not choose them.

The rooms: :mod:`.frames` (the labelled frames, their drives and stamps, the refusal of held-out near-copies),
:mod:`.caches` (every cache under one memory budget), :mod:`.scoring` (settings scored with the pipeline's own
stages, :meth:`Clipomaly.segment_from_known`), :mod:`.statistics` (per-frame sums, the objective, the rule that
decides), :mod:`.search` (the grid and the report), :mod:`.parameter_file` (what is written and printed).

Objectives (the metrics of ``clipomaly evaluate``):

- component level (SegmentMeIfYouCan): ``f1`` (mean F1 over sIoU thresholds 0.25..0.75), ``siou`` (mean sIoU of
  the ground-truth components), both higher is better;
- pixel level, of the continuous anomaly score the node publishes (``anomaly_score``): ``ap`` (average
  precision, higher is better) and ``fpr95`` (false-positive rate at 95 % recall, lower is better). No searched
  setting changes that score, so under these objectives the search says so and keeps the current values.
"""

import importlib

_ROOMS = {
    "caches": ("FEATURE_SETTINGS", "CachedCrops", "FeatureStore", "MemoryBudget", "feature_key"),
    "frames": ("CalibrationError", "LabelledFrame", "check_disjoint", "content_hash", "read_frames", "seen_frames"),
    "parameter_file": ("format_report", "tuned_parameter_file", "write_outputs"),
    "scoring": ("Calibrator",),
    "search": ("CalibrationReport", "SearchSpace", "calibrate"),
    "statistics": ("OBJECTIVES", "RULE", "SEARCHED", "decide"),
}
_ROOM_OF = {name: room for room, names in _ROOMS.items() for name in names}
__all__ = sorted(_ROOM_OF)


def __getattr__(name: str):
    """The public names, each imported from its room when first asked for: the command line reads
    ``OBJECTIVES`` (numpy only) for its choices without importing the model's rooms, and so torch."""
    if name not in _ROOM_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_ROOM_OF[name]}", __name__), name)
    globals()[name] = value
    return value
