"""Pictures of an evaluation: the precision-recall curve and the anomaly-score histograms of anomaly and normal
pixels, as anomaly-segmentation papers show them (PNG, matplotlib without a display)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .metrics import SCORE_BINS, PixelScores

HISTOGRAM_BINS = 100
TITLE_WIDTH = 42
"""Characters per title line that fit the 5-inch figures."""


def _title(name: str, figures: str) -> str:
    """The data set's name (wrapped) above the figures, so that a long name is never cut at the picture's edge."""
    return "\n".join(textwrap.wrap(name, TITLE_WIDTH) + [figures])


def write_pixel_plots(pixels: PixelScores, out_dir: Path, title: str = "") -> list[Path]:
    """Write ``precision_recall.png`` and ``score_histogram.png`` into ``out_dir``; returns their paths.

    Raises :class:`~.metrics.MetricError` when the set lacks anomaly or normal pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    true_positives, _, precision = pixels.curves()
    recall = true_positives / true_positives[-1]
    summary = pixels.summary()
    out_dir.mkdir(parents=True, exist_ok=True)

    figure, axes = plt.subplots(figsize=(5, 4.5), dpi=120)
    axes.plot(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]), color="tab:blue")
    base_rate = summary["anomaly_pixels"] / (summary["anomaly_pixels"] + summary["normal_pixels"])
    axes.axhline(base_rate, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * base_rate:.1f} %)")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title=_title(title, f"AUPRC {100 * summary['auprc']:.1f} %, FPR95 "
                                 f"{100 * summary['fpr_at_95_tpr']:.1f} %"))
    axes.legend(loc="upper right")
    axes.grid(alpha=0.3)
    curve = out_dir / "precision_recall.png"
    figure.tight_layout()
    figure.savefig(curve)
    plt.close(figure)

    # the 16-bit histograms, summed into coarser bins and normalised so both classes show whatever their sizes
    group = SCORE_BINS // HISTOGRAM_BINS
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    figure, axes = plt.subplots(figsize=(5, 4.5), dpi=120)
    for counts, label, colour in ((pixels.negative, "normal pixels", "tab:green"),
                                  (pixels.positive, "anomaly pixels", "tab:red")):
        coarse = counts[: group * HISTOGRAM_BINS].reshape(HISTOGRAM_BINS, group).sum(axis=1)
        coarse[-1] += counts[group * HISTOGRAM_BINS:].sum()
        axes.stairs(coarse / max(1, coarse.sum()), edges, fill=True, alpha=0.45, color=colour,
                    label=f"{label} ({int(counts.sum()):,})")
    axes.set(xlabel="anomaly score (normalised entropy)", ylabel="fraction of pixels", xlim=(0, 1),
             title=_title(title, f"AUROC {100 * summary['auroc']:.1f} %"))
    axes.legend(loc="upper center")
    axes.grid(alpha=0.3)
    histogram = out_dir / "score_histogram.png"
    figure.tight_layout()
    figure.savefig(histogram)
    plt.close(figure)
    return [curve, histogram]


def write_instance_plot(recall: dict[str, dict], out_dir: Path, title: str = "") -> Path:
    """``instance_recall.png``: the share of ground-truth instances found per size class, with their counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [name for name in recall if name != "all"]
    values = [100 * (recall[name]["recall"] or 0.0) for name in names]
    figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
    bars = axes.bar(names, values, color=["tab:red", "tab:orange", "tab:green"][: len(names)])
    for bar, name in zip(bars, names):
        group = recall[name]
        axes.annotate(f"{group['found']} / {group['instances']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=9)
    overall = recall["all"]["recall"]
    axes.set(ylim=(0, 110), ylabel="instances found (sIoU > 0.5), %",
             xlabel="instance size (small < 32x32 px, medium < 96x96 px)",
             title=_title(title, "recall by instance size" + ("" if overall is None else
                                                               f", all: {100 * overall:.1f} %")))
    axes.grid(alpha=0.3, axis="y")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "instance_recall.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_calibration_curves(report, path: Path) -> Path:
    """Each objective of a calibration ``report`` against the threshold: the sweep at the chosen area and radius,
    and the best over every other setting at each threshold (dashed); the chosen setting starred."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from .calibration.statistics import OBJECTIVES

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
