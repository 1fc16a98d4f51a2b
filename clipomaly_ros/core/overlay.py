"""Overlay rendering: known classes coloured, anomalies outlined and labelled with their names."""

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


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour per class name: Cityscapes' colour where it has one, else one from the name's hash."""
    if name in CITYSCAPES_COLOURS:
        return CITYSCAPES_COLOURS[name]
    digest = hashlib.md5(name.encode()).digest()
    return int(digest[0]), int(digest[1]), int(digest[2])


def render_overlay(image: np.ndarray, result: SegmentationResult, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: the image blended with class colours, anomalies outlined and named."""
    palette = np.array([class_colour(name) for name in result.labels], dtype=np.uint8)
    colours = palette[result.semantic]
    overlay = cv2.addWeighted(image, 1 - alpha, colours, alpha, 0)
    thickness = max(2, round(min(image.shape[:2]) / 240))
    font_scale = max(0.4, min(image.shape[:2]) / 900)
    for record in result.anomalies:
        mask = (result.instances == record.id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, ANOMALY_COLOUR, thickness)
        text = f"{record.name} {record.score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x = int(np.clip(record.bbox[0], 0, max(0, image.shape[1] - text_w)))
        y = int(max(text_h + baseline, record.bbox[1] - 3))
        cv2.rectangle(overlay, (x, y - text_h - baseline), (x + text_w, y + baseline // 2), (0, 0, 0), -1)
        cv2.putText(overlay, text, (x, y - baseline // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ANOMALY_COLOUR, 1,
                    cv2.LINE_AA)
    return overlay
