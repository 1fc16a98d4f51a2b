"""RGB images in: checking arrays and reading files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np


class InvalidImageError(ValueError):
    """The image is not an RGB uint8 (H, W, 3) array with H, W > 0."""


def check_image(image: Any) -> np.ndarray:
    """Return ``image`` if it is an RGB uint8 ``(H, W, 3)`` array, else raise :class:`InvalidImageError`."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected a numpy array (H, W, 3) uint8 RGB image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"expected a uint8 RGB image, got dtype {image.dtype}: convert it, for example "
                                "with (image * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"expected an (H, W, 3) RGB image, got shape {image.shape}: convert grey or "
                                "RGBA images to RGB first")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"the image is empty (shape {image.shape})")
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)``; raises ``ValueError`` naming the file if it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give image files, for example {path}/*.png")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image (unknown format or corrupt data)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
