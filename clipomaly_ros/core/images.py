"""RGB images in: checking arrays and reading files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch


class InvalidImageError(ValueError):
    """The image is not an RGB uint8 (H, W, 3) array with H, W > 0."""


def check_image(image: Any) -> np.ndarray | torch.Tensor:
    """Return ``image`` if it is an RGB uint8 ``(H, W, 3)`` array (or a torch tensor of that shape and dtype on
    any device, such as a frame decoded on the GPU), else raise :class:`InvalidImageError`."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise InvalidImageError(f"expected an (H, W, 3) uint8 RGB tensor, got {image.dtype} {tuple(image.shape)}")
        return image
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


def on_host(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as a host numpy array: a tensor is copied down once, an array is returned as it is."""
    return image.cpu().numpy() if isinstance(image, torch.Tensor) else image


def decode_jpeg_on_device(data: np.ndarray, device: torch.device) -> torch.Tensor:
    """JPEG bytes ``(N,)`` uint8 decoded on ``device`` (nvJPEG on a CUDA device, through torchvision): an RGB
    uint8 ``(H, W, 3)`` tensor there, so the frame is never decoded by the CPU nor uploaded whole."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(torch.from_numpy(np.ascontiguousarray(data)), mode=ImageReadMode.RGB, device=device)
    return decoded.permute(1, 2, 0)
