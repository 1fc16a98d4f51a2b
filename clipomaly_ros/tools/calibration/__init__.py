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

from .caches import FEATURE_SETTINGS, CachedCrops, FeatureStore, MemoryBudget, feature_key
from .frames import CalibrationError, LabelledFrame, check_disjoint, content_hash, read_frames
from .parameter_file import format_report, tuned_parameter_file, write_outputs
from .scoring import Calibrator
from .search import CalibrationReport, SearchSpace, calibrate
from .statistics import OBJECTIVES, RULE, SEARCHED, decide

__all__ = ["FEATURE_SETTINGS", "OBJECTIVES", "RULE", "SEARCHED", "CachedCrops", "CalibrationError",
           "CalibrationReport", "Calibrator", "FeatureStore", "LabelledFrame", "MemoryBudget", "SearchSpace",
           "calibrate", "check_disjoint", "content_hash", "decide", "feature_key", "format_report", "read_frames",
           "tuned_parameter_file", "write_outputs"]
