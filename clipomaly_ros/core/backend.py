"""What the pipeline asks of a vision-language model, and the errors loading one can raise.

A backend embeds text prompts, whole images and dense per-location image features into one space. The pipeline
uses only this interface, so the real open_clip backend (:mod:`.open_clip_backend`) and the deterministic toy
backend (:mod:`.toy_backend`) are interchangeable; :func:`.factory.create_backend` picks one from the settings.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch


class ModelLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message names the setting to change."""


class DenseFeatures:
    """Dense image features of one frame.

    ``grid``: ``(h, w, D)`` float32 tensor, L2-normalised per location, covering the whole image;
    ``working_size``: (height, width) in pixels of the resized image the grid was computed on; every map the
    pipeline derives from the features lives at this resolution before being resized to the input's.
    """

    def __init__(self, grid: torch.Tensor, working_size: tuple[int, int]):
        self.grid = grid
        self.working_size = working_size


class VisionLanguageBackend(Protocol):
    """The interface the pipeline needs from a vision-language model."""

    identity: str
    """Names the model and weights; text embeddings cached on disk are keyed by it."""
    device: torch.device
    embed_dim: int
    """D, the size of the joint embedding space."""
    mean_colour: tuple[int, int, int]
    """RGB uint8 colour that normalises to zero: what region crops fade their background towards."""

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised embeddings of ``prompts``."""

    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised global embeddings of RGB uint8 images of any size."""

    def dense_features(self, image: np.ndarray) -> DenseFeatures:
        """Dense features of one RGB uint8 ``(H, W, 3)`` image."""


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named device, checked to exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ModelLoadError(f"device {requested!r} is not a device name: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but this machine has no CUDA GPU: set device to "
                             "cpu or auto")
    return device
