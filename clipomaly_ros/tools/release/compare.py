"""Two releases over the same labelled frames: component F1, named-anomaly accuracy and FPR95 side by side, and
the frames where they disagree most, as a picture.

Labelled frames: ``images/<stem>.*`` + ``labels/<stem>.png`` (1 anomaly, 255 ignored, as ``clipomaly evaluate``
reads them), and for the names ``instances/<stem>.png`` (one id per anomaly, 0 none) with ``names.json``
(``{stem: {id: name}}``). Named-anomaly accuracy: the share of named truth anomalies that a reported anomaly
covers (IoU at least :data:`MATCH_IOU`) under the same name (normalised); without names it is not given.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.datasets import Sample, find_samples, read_label
from ..metrics import ComponentScores, MetricError, PixelScores
from .vocabulary import normalise

MATCH_IOU = 0.5
PICTURE_FRAMES = 4
"""Frames in the disagreement picture."""


@dataclass
class SideScores:
    """One release's figures, accumulated frame by frame."""

    pixels: PixelScores = field(default_factory=PixelScores)
    components: ComponentScores = field(default_factory=ComponentScores)
    named: int = 0
    named_right: int = 0

    def summary(self) -> dict:
        try:
            fpr95 = self.pixels.summary()["fpr_at_95_tpr"]
        except MetricError:
            fpr95 = None
        return {"component_f1": self.components.summary()["mean_f1"], "fpr95": fpr95,
                "named_accuracy": self.named_right / self.named if self.named else None,
                "named_anomalies": self.named}


def truth_names(folder: Path, stem: str) -> list[tuple[str, np.ndarray]]:
    """``[(name, (H, W) bool mask)]`` of the named truth anomalies of a frame; empty without names."""
    names_file, instances_file = folder / "names.json", folder / "instances" / f"{stem}.png"
    if not names_file.is_file() or not instances_file.is_file():
        return []
    names = json.loads(names_file.read_text()).get(stem, {})
    instances = read_label(instances_file)
    return [(name, instances == int(key)) for key, name in sorted(names.items(), key=lambda kv: int(kv[0]))]


def named_right(result, truth: list[tuple[str, np.ndarray]]) -> int:
    """How many of the ``truth`` anomalies a reported anomaly of ``result`` covers under their own name."""
    right = 0
    for name, mask in truth:
        best_iou, best_name = 0.0, ""
        for record in result.anomalies:
            predicted = result.instances == record.id
            union = np.logical_or(predicted, mask).sum()
            iou = np.logical_and(predicted, mask).sum() / union if union else 0.0
            if iou > best_iou:
                best_iou, best_name = iou, record.name
        right += int(best_iou >= MATCH_IOU and normalise(best_name) == normalise(name))
    return right


def _score(side: SideScores, result, label: np.ndarray, truth, stem: str) -> None:
    is_anomaly, void = label == 1, label == 255
    side.pixels.add(result.anomaly_score, is_anomaly, ~void)
    side.components.add(result.anomaly_mask, is_anomaly, void, image=stem)
    side.named += len(truth)
    side.named_right += named_right(result, truth)


def disagreement(old, new) -> float:
    """How much two results of one frame differ: the share of their anomaly pixels that only one reports, plus one
    for each anomaly name only one gives."""
    union = np.logical_or(old.anomaly_mask, new.anomaly_mask).sum()
    pixels = np.logical_xor(old.anomaly_mask, new.anomaly_mask).sum() / union if union else 0.0
    names = {r.name for r in old.anomalies} ^ {r.name for r in new.anomalies}
    return float(pixels + len(names))


def compare(old_pipeline, new_pipeline, data: Path, limit: int | None = None) -> tuple[dict, list]:
    """Both pipelines over the labelled frames in ``data``: ``({"old": figures, "new": figures, "frames": n},
    the frames where they disagree most as (score, stem, image, old result, new result), most first)``."""
    from ...core.images import read_rgb

    samples: list[Sample] = find_samples(Path(data), limit)
    sides = {"old": SideScores(), "new": SideScores()}
    worst: list = []
    for order, sample in enumerate(samples):
        image, label = read_rgb(sample.image), read_label(sample.label)
        truth = truth_names(Path(data), sample.stem)
        results = {"old": old_pipeline(image), "new": new_pipeline(image)}
        for side, result in results.items():
            _score(sides[side], result, label, truth, sample.stem)
        entry = (disagreement(results["old"], results["new"]), -order, sample.stem, image, results["old"],
                 results["new"])
        if entry[0] > 0:
            (heapq.heappush if len(worst) < PICTURE_FRAMES else heapq.heappushpop)(worst, entry)
    figures = {"frames": len(samples), "old": sides["old"].summary(), "new": sides["new"].summary()}
    ordered = [(score, stem, image, old, new) for score, _, stem, image, old, new in sorted(worst, reverse=True)]
    return figures, ordered


def _panel(image: np.ndarray, result, title: str) -> np.ndarray:
    """``image`` with ``result``'s anomalies tinted and outlined, their names written, ``title`` on top."""
    import cv2

    panel = image.copy()
    mask = result.anomaly_mask
    panel[mask] = (0.5 * panel[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(panel, contours, -1, (255, 255, 0), 1)
    for record in result.anomalies:
        cv2.putText(panel, record.name, (int(record.bbox[0]), max(10, int(record.bbox[1]) - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(panel, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def disagreement_picture(frames: list, path: Path, old_name: str = "old", new_name: str = "new") -> Path | None:
    """A PNG at ``path``: one row per frame of :func:`compare`'s list, the old release's result left, the new
    one's right; None when the two agree everywhere."""
    import cv2

    if not frames:
        return None
    rows = []
    width = max(image.shape[1] for _, _, image, _, _ in frames)
    for score, stem, image, old, new in frames:
        row = np.concatenate([_panel(image, old, f"{old_name}: {stem}"),
                              _panel(image, new, f"{new_name} (disagreement {score:.2f})")], axis=1)
        rows.append(np.pad(row, ((0, 4), (0, 2 * width - row.shape[1]), (0, 0))))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR))
    return path


def figures_table(figures: dict, old_name: str, new_name: str) -> str:
    """The figures of :func:`compare` as a Markdown table, with the change."""
    lines = [f"| on {figures['frames']} frames | {old_name} | {new_name} | change |", "| --- | ---: | ---: | ---: |"]
    for key, label in (("component_f1", "component F1"), ("named_accuracy", "named-anomaly accuracy"),
                       ("fpr95", "FPR95 (lower is better)")):
        old, new = figures["old"][key], figures["new"][key]
        change = "-" if old is None or new is None else f"{100 * (new - old):+.1f} points"
        lines.append(f"| {label} | {_percent(old)} | {_percent(new)} | {change} |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"
