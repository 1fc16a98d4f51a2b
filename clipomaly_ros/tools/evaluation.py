"""``clipomaly evaluate``: score the pipeline on a folder of images and labels."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np

from ..core.datasets import Sample, find_samples, read_label  # noqa: F401 - find_samples is this tool's too
from .metrics import ComponentScores, ConfusionMatrix, PixelScores, recall_by_size


def evaluate(pipeline, samples: list[Sample], anomaly_id: int = 1, ignore_id: int = 255,
             known_classes_miou: bool = False, progress: bool = True, plots: Path | None = None,
             locator=None) -> dict:
    """Run ``pipeline`` on every sample and return the metrics as a JSON-ready dict.

    In anomaly mode the report also holds ``instances``: per ground-truth instance its image, size, sIoU,
    whether it was found and, with a ``locator`` (:func:`~clipomaly_ros.core.datasets.dataset_ground_locator`),
    its distance; and ``recall_by_size``. ``plots``: a folder for the precision-recall curve, the score
    histograms and the recall by instance size (anomaly mode only)."""
    import cv2
    from tqdm import tqdm

    from ..core.images import read_rgb

    pixels, components = PixelScores(), ComponentScores()
    confusion = ConfusionMatrix(len(pipeline.config.known_classes)) if known_classes_miou else None
    names: collections.Counter = collections.Counter()
    times = []
    for sample in tqdm(samples, desc="evaluating", unit="image", disable=not progress):
        image, label = read_rgb(sample.image), read_label(sample.label)
        result = pipeline(image)
        times.append(result.timings_ms["total"])
        if label.shape != image.shape[:2]:
            label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        void = label == ignore_id
        if confusion is not None:
            confusion.add(result.semantic, label, ignore_id)
        else:
            is_anomaly = label == anomaly_id
            pixels.add(result.anomaly_score, is_anomaly, ~void)
            components.add(result.anomaly_mask, is_anomaly, void, image=sample.stem, distance=_distance(locator, label))
        names.update(record.name for record in result.anomalies)
    report = {"images": len(samples), "mean_ms_per_image": float(np.mean(times)),
              "anomaly_names": dict(names.most_common())}
    if confusion is not None:
        iou = confusion.iou()
        report["known_class_iou"] = {name: (None if math.isnan(v) else float(v))
                                     for name, v in zip(pipeline.config.known_classes, iou)}
        report["miou"] = float(np.nanmean(iou)) if not np.isnan(iou).all() else None
    else:
        report["pixel"] = pixels.summary()
        report["component"] = components.summary()
        report["recall_by_size"] = recall_by_size(components.instances)
        report["instances"] = components.instances
        if plots is not None:
            from .plots import write_instance_plot, write_pixel_plots

            title = samples[0].image.parent.parent.name
            written = write_pixel_plots(pixels, plots, title=title)
            written.append(write_instance_plot(report["recall_by_size"], plots, title=title))
            report["plots"] = [str(path) for path in written]
    return report


def _distance(locator, label: np.ndarray):
    """``distance(box, mask)`` in metres for :meth:`ComponentScores.add`, or None without a calibration."""
    if locator is None:
        return None
    from ..core.scene.geometry import GroundLocator

    height, width = label.shape
    # the labels' size: calibrated for another size of the same camera, the intrinsics scale
    located = GroundLocator(locator.camera.for_image(width, height), locator.mounting, locator.max_distance)

    def distance(box, mask):
        estimate = located.locate(box, mask)
        return None if estimate is None else estimate.distance

    return distance


def format_report(report: dict) -> str:
    """A plain-text table of ``report``."""
    lines = [f"images: {report['images']}   mean time per image: {report['mean_ms_per_image']:.0f} ms"]
    if "pixel" in report:
        p, c = report["pixel"], report["component"]
        lines += ["", f"{'metric':<28}{'value':>10}", "-" * 38,
                  f"{'AUPRC (average precision)':<28}{100 * p['auprc']:>9.2f}%",
                  f"{'FPR at 95% TPR':<28}{100 * p['fpr_at_95_tpr']:>9.2f}%",
                  f"{'AUROC':<28}{100 * p['auroc']:>9.2f}%",
                  f"{'mean sIoU (components)':<28}{_percent(c['mean_siou'], 'no truth components'):>10}",
                  f"{'mean PPV (components)':<28}{_percent(c['mean_ppv'], 'no predicted components'):>10}",
                  f"{'mean F1 (components)':<28}{100 * c['mean_f1']:>9.2f}%",
                  f"anomaly pixels {p['anomaly_pixels']}, normal pixels {p['normal_pixels']}, "
                  f"truth components {c['truth_components']}, predicted components {c['predicted_components']}"]
    if "recall_by_size" in report:
        lines += ["", f"{'instances by size':<28}{'found':>10}{'recall':>9}", "-" * 47]
        for name, group in report["recall_by_size"].items():
            recall = "-" if group["recall"] is None else f"{100 * group['recall']:.1f}%"
            lines.append(f"{name:<28}{group['found']:>5} / {group['instances']:<3}{recall:>8}")
        lines.append("(found: sIoU above 0.5; small: below 32x32 pixels, medium: below 96x96, large: above)")
    if "known_class_iou" in report:
        lines += ["", f"{'class':<16}{'IoU':>8}", "-" * 24]
        lines += [f"{name:<16}{'-' if v is None else f'{100 * v:.1f}%':>8}" for name, v in
                  report["known_class_iou"].items()]
        miou = report["miou"]
        lines.append(f"{'mIoU':<16}{'-' if miou is None else f'{100 * miou:.1f}%':>8}")
    if report.get("plots"):
        lines.append("plots: " + ", ".join(report["plots"]))
    names = report["anomaly_names"]
    lines += ["", "names given: " + (", ".join(f"{n} x{c}" for n, c in names.items()) or "none")]
    return "\n".join(lines)


def _percent(value: float | None, missing: str) -> str:
    return missing if value is None else f"{100 * value:.2f}%"
