"""Anomaly-segmentation metrics: pixel level over a whole dataset, SegmentMeIfYouCan's component level, and
known-class IoU.

Pixel level (AUPRC, FPR at 95 % TPR, AUROC) accumulates per-bin counts of anomaly and normal pixels, with scores
quantised to 16 bits (the resolution of ``<stem>_score.png``), so a dataset of any size costs two histograms.
Component level follows SegmentMeIfYouCan (Chan et al., 2021): per ground-truth component the sIoU, per predicted
component the PPV, and the F1 of component counts averaged over thresholds 0.25, 0.30, ..., 0.75.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

SCORE_BINS = 65536
F1_THRESHOLDS = np.round(np.arange(0.25, 0.7501, 0.05), 2)
CONNECTIVITY = np.ones((3, 3), dtype=bool)


class MetricError(ValueError):
    """The data cannot give the metric (for example a set without anomaly pixels)."""


class PixelScores:
    """Histograms of anomaly scores of anomaly and normal pixels, filled image by image."""

    def __init__(self):
        self.positive = np.zeros(SCORE_BINS, dtype=np.int64)
        self.negative = np.zeros(SCORE_BINS, dtype=np.int64)

    def add(self, scores: np.ndarray, is_anomaly: np.ndarray, valid: np.ndarray) -> None:
        """``scores`` float in [0, 1], ``is_anomaly`` and ``valid`` bool masks, all (H, W)."""
        bins = np.clip(np.round(scores[valid] * (SCORE_BINS - 1)), 0, SCORE_BINS - 1).astype(np.int64)
        labels = is_anomaly[valid]
        self.positive += np.bincount(bins[labels], minlength=SCORE_BINS)
        self.negative += np.bincount(bins[~labels], minlength=SCORE_BINS)

    def curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Operating points from the highest threshold down: (true positives, false positives, precision)."""
        if self.positive.sum() == 0:
            raise MetricError("the data set has no anomaly pixels: AUPRC, FPR95 and AUROC need both anomaly and "
                              "normal pixels (check --anomaly-id and the label files)")
        if self.negative.sum() == 0:
            raise MetricError("the data set has no normal (non-anomaly, non-ignored) pixels")
        occupied = (self.positive + self.negative) > 0
        true_positives = np.cumsum(self.positive[::-1][occupied[::-1]])
        false_positives = np.cumsum(self.negative[::-1][occupied[::-1]])
        precision = true_positives / (true_positives + false_positives)
        return true_positives, false_positives, precision

    def summary(self) -> dict[str, float]:
        """``auprc`` (average precision), ``fpr_at_95_tpr`` and ``auroc``, each in [0, 1]."""
        true_positives, false_positives, precision = self.curves()
        recall = true_positives / true_positives[-1]
        fpr = false_positives / false_positives[-1]
        average_precision = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
        tpr_points, fpr_points = np.concatenate([[0.0], recall]), np.concatenate([[0.0], fpr])
        auroc = float(np.trapezoid(tpr_points, fpr_points))
        fpr95 = float(fpr[np.searchsorted(recall, 0.95 - 1e-12)])
        return {"auprc": average_precision, "fpr_at_95_tpr": fpr95, "auroc": auroc,
                "anomaly_pixels": int(self.positive.sum()), "normal_pixels": int(self.negative.sum())}


FOUND_SIOU = 0.5
"""A ground-truth instance counts as found when its sIoU exceeds this (the middle of SMIYC's F1 thresholds)."""
SIZE_CLASSES = (("small", 0, 32 * 32), ("medium", 32 * 32, 96 * 96), ("large", 96 * 96, None))
"""Instance sizes in pixels, as COCO bins them: below 32 x 32, below 96 x 96, and larger."""


def size_class(pixels: int) -> str:
    return next(name for name, low, high in SIZE_CLASSES if pixels >= low and (high is None or pixels < high))


@dataclass
class ComponentScores:
    """SegmentMeIfYouCan component metrics, accumulated image by image; ``instances`` holds one record per
    ground-truth instance: its image, size in pixels and size class, sIoU, whether it was found, and its
    distance in metres when the data has a calibration (else None)."""

    siou: list[float] = field(default_factory=list)
    ppv: list[float] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)

    def add(self, predicted: np.ndarray, is_anomaly: np.ndarray, void: np.ndarray, image: str = "",
            distance=None) -> None:
        """``predicted`` anomaly mask, ground-truth ``is_anomaly`` and ``void`` (ignored) masks, all (H, W) bool.
        ``distance(box, mask)``, when given, places a truth instance (box (y0, y1, x0, x1), its bool pixels) and
        returns metres or None."""
        truth_components, truth_count = ndimage.label(is_anomaly, structure=CONNECTIVITY)
        predicted_components, predicted_count = ndimage.label(predicted & ~void, structure=CONNECTIVITY)
        # every overlap at once: overlap[t, p] pixels lie in truth component t and predicted component p (0: none)
        overlap = np.bincount((truth_components.astype(np.int64) * (predicted_count + 1)
                               + predicted_components).ravel(),
                              minlength=(truth_count + 1) * (predicted_count + 1)).reshape(truth_count + 1, -1)
        truth_sizes = overlap[1:].sum(axis=1)
        for index, where in enumerate(ndimage.find_objects(truth_components), start=1):
            touching = overlap[index, 1:] > 0
            # sIoU: the predicted components touching it, less the other truth components and void (the predicted
            # components hold no void), against the component
            intersection = overlap[index, 1:][touching].sum()
            union = truth_sizes[index - 1] + overlap[0, 1:][touching].sum()
            siou = float(intersection / union)
            self.siou.append(siou)
            pixels = int(truth_sizes[index - 1])
            metres = None
            if distance is not None:
                box = (where[0].start, where[0].stop, where[1].start, where[1].stop)
                metres = distance(box, truth_components[where] == index)
            self.instances.append({"image": image, "pixels": pixels, "size": size_class(pixels),
                                   "siou": round(siou, 4), "found": siou > FOUND_SIOU,
                                   "distance_m": None if metres is None else round(float(metres), 2)})
        # PPV: the share of a predicted component that lies on truth components it touches
        predicted_sizes = overlap[:, 1:].sum(axis=0)
        self.ppv.extend(float((predicted_sizes[p - 1] - overlap[0, p]) / predicted_sizes[p - 1])
                        for p in range(1, predicted_count + 1))

    def summary(self) -> dict[str, float | None]:
        """Mean sIoU (None without ground-truth components), mean PPV (None without predicted components),
        mean F1 and the component counts."""
        siou, ppv = np.asarray(self.siou), np.asarray(self.ppv)
        f1 = []
        for threshold in F1_THRESHOLDS:
            true_positive = int((siou > threshold).sum())
            false_negative = len(siou) - true_positive
            false_positive = int((ppv <= threshold).sum())
            denominator = 2 * true_positive + false_negative + false_positive
            f1.append(2 * true_positive / denominator if denominator else 0.0)
        # None, not NaN, where there is nothing to average: strict JSON parsers reject NaN
        return {"mean_siou": float(siou.mean()) if len(siou) else None,
                "mean_ppv": float(ppv.mean()) if len(ppv) else None,
                "mean_f1": float(np.mean(f1)), "truth_components": len(siou), "predicted_components": len(ppv)}


def recall_by_size(instances: list[dict]) -> dict[str, dict]:
    """Per size class (and ``all``): ground-truth instances, how many were found, and the recall (None when
    there are none of that size)."""
    groups = {name: [i for i in instances if i["size"] == name] for name, _, _ in SIZE_CLASSES}
    groups["all"] = list(instances)
    return {name: {"instances": len(group), "found": sum(i["found"] for i in group),
                   "recall": sum(i["found"] for i in group) / len(group) if group else None}
            for name, group in groups.items()}


class ConfusionMatrix:
    """Known-class confusion over ``classes`` ids; predictions outside them (anomaly ids) count as misses."""

    def __init__(self, classes: int):
        self.classes = classes
        self.counts = np.zeros((classes, classes + 1), dtype=np.int64)

    def add(self, predicted: np.ndarray, truth: np.ndarray, ignore_id: int) -> None:
        valid = (truth != ignore_id) & (truth < self.classes)
        predicted = np.minimum(predicted[valid].astype(np.int64), self.classes)
        index = truth[valid].astype(np.int64) * (self.classes + 1) + predicted
        self.counts += np.bincount(index, minlength=self.classes * (self.classes + 1)).reshape(self.counts.shape)

    def iou(self) -> np.ndarray:
        """Per-class IoU ``(classes,)``; NaN for a class absent from both truth and prediction."""
        true_positive = np.diag(self.counts[:, : self.classes]).astype(np.float64)
        union = self.counts.sum(axis=1) + self.counts[:, : self.classes].sum(axis=0) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)
