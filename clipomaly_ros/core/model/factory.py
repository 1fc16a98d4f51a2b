"""Builds the backend that the settings name."""

from __future__ import annotations

from .backend import VisionLanguageBackend, resolve_device
from ..config import ClipomalyConfig


def create_backend(config: ClipomalyConfig) -> VisionLanguageBackend:
    """The backend named by ``config.backend``, loaded and ready. ``config.device`` is checked first, whatever the
    backend: a device this machine lacks is refused before any weights load."""
    resolve_device(config.device)
    if config.backend == "toy":
        from .toy_backend import ToyColourBackend

        return ToyColourBackend(inference_size=config.working_short_side)
    from .open_clip_backend import OpenClipBackend

    return OpenClipBackend(config)
