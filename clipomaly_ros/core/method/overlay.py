"""Overlay rendering: known classes coloured, anomalies outlined and labelled with their names, a legend of the
classes in view."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from .results import SegmentationResult

CITYSCAPES_COLOURS = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142), "truck": (0, 0, 70),
    "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32),
}
ANOMALY_COLOUR = (255, 215, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour per class name: Cityscapes' colour where it has one, else one from the name's hash."""
    if name in CITYSCAPES_COLOURS:
        return CITYSCAPES_COLOURS[name]
    digest = hashlib.md5(name.encode()).digest()
    return int(digest[0]), int(digest[1]), int(digest[2])


def colour_semantic(result: SegmentationResult) -> np.ndarray:
    """``semantic`` in class colours: RGB uint8 ``(H, W, 3)``, the colours of the overlay and its legend."""
    palette = np.array([class_colour(name) for name in result.labels], dtype=np.uint8)
    return palette[result.semantic]


def render_overlay(image: np.ndarray, result: SegmentationResult, alpha: float = 0.45,
                   legend: bool = True, records: list | None = None) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the image blended with class colours, anomalies outlined and named, and a legend
    of the classes present in the frame.

    ``records``: the anomalies to outline and name (default: all of ``result.anomalies``); the node passes the
    published tracks only. Every label stays inside the image: above its region where there is room, else below
    it, else inside it.
    """
    overlay = cv2.addWeighted(image, 1 - alpha, colour_semantic(result), alpha, 0)
    height, width = image.shape[:2]
    thickness = max(2, round(min(height, width) / 240))
    font_scale = max(0.4, min(height, width) / 900)
    for record in result.anomalies if records is None else records:
        mask = (result.instances == record.id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, ANOMALY_COLOUR, thickness)
        _label(overlay, anomaly_label(record), record.bbox, font_scale)
    if legend:
        present = np.unique(result.semantic)
        _legend(overlay, [(result.labels[i], class_colour(result.labels[i]), i >= result.known_count)
                          for i in present.tolist()], font_scale)
    return overlay


def anomaly_label(record) -> str:
    """The text drawn next to an anomaly: ``#track`` when tracked (``?`` while unconfirmed), its (voted) name and
    score, ``off road`` when it lies beside the road, and its distance when it was placed on the ground."""
    name, score = record.label
    parts = [f"{name} {score:.2f}"]
    if record.track_id is not None:
        parts.insert(0, f"#{record.track_id}{'' if record.confirmed else '?'}")
    if record.on_road is False:
        parts.append("off road")
    if record.ground is not None:
        parts.append(f"{record.ground.distance:.1f} m")
    return " ".join(parts)


def label_position(text_size: tuple[int, int], baseline: int, bbox: tuple[int, int, int, int],
                   image_size: tuple[int, int]) -> tuple[int, int]:
    """Where a label's text baseline starts, (x, y) in pixels, so that its box lies inside an ``image_size``
    (height, width) image next to ``bbox`` (x0, y0, x1, y1): above the region, else below, else at its top."""
    text_w, text_h = text_size
    height, width = image_size
    x0, y0, x1, y1 = bbox
    box_h = text_h + baseline + 2
    x = int(np.clip(x0, 0, max(0, width - text_w - 1)))
    if y0 - box_h >= 0:
        y = y0 - baseline - 2
    elif y1 + 1 + box_h <= height:
        y = y1 + 1 + text_h + 1
    else:
        y = y0 + text_h + 1
    return x, int(np.clip(y, text_h + 1, max(text_h + 1, height - baseline - 1)))


def _label(canvas: np.ndarray, text: str, bbox, font_scale: float) -> None:
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, font_scale, 1)
    x, y = label_position((text_w, text_h), baseline, bbox, canvas.shape[:2])
    cv2.rectangle(canvas, (x, y - text_h - 1), (x + text_w, y + baseline), (0, 0, 0), -1)
    cv2.putText(canvas, text, (x, y), FONT, font_scale, ANOMALY_COLOUR, 1, cv2.LINE_AA)


def _legend(canvas: np.ndarray, entries: list[tuple[str, tuple[int, int, int], bool]], font_scale: float) -> None:
    """A box in the top-right corner: one swatch and name per class present; anomaly names marked with '*'."""
    if not entries:
        return
    scale = font_scale * 0.8
    texts = [f"{name}{' *' if is_anomaly else ''}" for name, _, is_anomaly in entries]
    sizes = [cv2.getTextSize(text, FONT, scale, 1) for text in texts]
    line = max(h + b for (_, h), b in sizes) + 4
    swatch = line - 4
    box_w = swatch + 6 + max(w for (w, _), _ in sizes) + 8
    height, width = canvas.shape[:2]
    rows = max(1, min(len(entries), (height - 8) // line))
    left, top = max(0, width - box_w - 4), 4
    region = canvas[top:top + rows * line + 4, left:left + box_w]
    region[:] = (region * 0.35).astype(np.uint8)
    for row, ((name, colour, _), text, ((_, text_h), _)) in enumerate(zip(entries[:rows], texts, sizes)):
        y = top + 2 + row * line
        cv2.rectangle(canvas, (left + 4, y + 2), (left + 4 + swatch, y + 2 + swatch), tuple(int(c) for c in colour), -1)
        cv2.putText(canvas, text, (left + swatch + 10, y + 2 + swatch - 2), FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
