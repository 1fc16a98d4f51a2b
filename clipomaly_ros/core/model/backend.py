"""What the pipeline asks of a vision-language model, and the errors loading one can raise.

A backend embeds text prompts, whole images and dense per-location image features into one space. The pipeline
uses only this interface, so the real open_clip backend (:mod:`.open_clip_backend`) and the deterministic toy
backend (:mod:`.toy_backend`) are interchangeable; :func:`.factory.create_backend` picks one from the settings.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch


SETTING_MENTION = re.compile(r"\{([a-z_]+)=([^}]*)\}")


class ModelLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message names the setting to change.

    A message may mention settings as ``{name=value}``; :meth:`render` writes them the way the reader sets them:
    ``file`` (``name: value``, the default), ``cli`` (``--name value``) or ``ros`` (``-p name:=value``)."""

    def render(self, style: str = "file") -> str:
        def setting(match: re.Match) -> str:
            name, value = match.groups()
            if style == "cli":
                flag = "--" + name.replace("_", "-")
                return flag if value == "true" else f"{flag} {value}"
            if style == "ros":
                return f"-p {name}:={value}"
            return f"{name}: {value}"

        return SETTING_MENTION.sub(setting, str(self.args[0]) if self.args else "")

    def __str__(self) -> str:
        return self.render()


class DenseFeatures:
    """Dense image features of one frame.

    ``grid``: ``(h, w, D)`` float32 tensor on the backend's device covering the whole image, a unit vector per
    location or the mean of several (overlapping windows), so that its dot product with a text embedding is a
    cosine similarity or the mean of several;
    ``working_size``: (height, width) in pixels of the resized image the grid was computed on; every map the
    pipeline derives from the features lives at this resolution before being resized to the input's;
    ``image``: ``(3, H, W)`` the normalised image at the working resolution (for mask refinement), or None;
    ``frame``: the RGB uint8 ``(H, W, 3)`` input where the model runs, when it was put there (what naming crops
    are cut from without a second upload), or None.
    """

    def __init__(self, grid: torch.Tensor, working_size: tuple[int, int], image: torch.Tensor | None = None,
                 frame: torch.Tensor | None = None):
        self.grid = grid
        self.working_size = working_size
        self.image = image
        self.frame = frame


class BackboneClock:
    """Milliseconds spent in the vision transformer, accumulated until :meth:`take`; :attr:`total_ms` keeps
    counting across takes (the pipeline takes once per frame, a caller timing several frames reads the total).

    With ``synchronize`` set (the bench does), CUDA is synchronised around each pass so that the figure is the
    device's time; otherwise nothing waits for the device and the figure is only the host's share.
    """

    def __init__(self):
        self.synchronize = False
        self._elapsed_ms = 0.0
        self.total_ms = 0.0

    @contextmanager
    def measure(self, device: torch.device) -> Iterator[None]:
        wait = self.synchronize and device.type == "cuda"
        if wait:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if wait:
                torch.cuda.synchronize(device)
            elapsed = (time.perf_counter() - start) * 1000.0
            self._elapsed_ms += elapsed
            self.total_ms += elapsed

    def take(self) -> float:
        """The milliseconds accumulated since the last call."""
        elapsed, self._elapsed_ms = self._elapsed_ms, 0.0
        return elapsed


class VisionLanguageBackend(Protocol):
    """The interface the pipeline needs from a vision-language model."""

    identity: str
    """Names the model and weights; text embeddings cached on disk are keyed by it."""
    device: torch.device
    embed_dim: int
    """D, the size of the joint embedding space."""
    mean_colour: tuple[int, int, int]
    """RGB uint8 colour that normalises to zero: what region crops fade their background towards."""
    crop_size: int
    """Side in pixels of the region crops that :meth:`encode_crops` takes (the model's input)."""

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised embeddings of ``prompts``."""

    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised global embeddings of RGB uint8 images of any size."""

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised global embeddings of crops ``(N, 3, crop_size, crop_size)`` float
        0..255 RGB on any device (see :func:`~clipomaly_ros.core.method.naming.region_crops`)."""

    clock: BackboneClock | None
    """Time spent in the vision transformer (None for a backend without one)."""

    def dense_features(self, image: np.ndarray) -> DenseFeatures:
        """Dense features of one RGB uint8 ``(H, W, 3)`` image."""

    def dense_features_batch(self, images: Sequence[np.ndarray]) -> list[DenseFeatures]:
        """Dense features of several RGB uint8 images (sizes may differ), in as few backbone passes as
        possible."""


def available_devices() -> list[str]:
    """The devices this machine has, as device strings: ``cpu`` and one ``cuda:N`` per visible CUDA GPU."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return devices


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise the named device, which must be one this machine has
    (:func:`available_devices`): a bad name, a GPU index past the last GPU or CUDA without a GPU raises
    :class:`ModelLoadError` in one line that lists what there is."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    present = available_devices()
    choices = f"this machine has: {', '.join(present)} (or use auto)"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"device {requested!r} is not a device name; {choices}") from None
    if device.type == "cpu" and device.index in (None, 0):
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} asked for, but this machine has no CUDA GPU; {choices}")
        if device.index is None:
            return device
        if device.index < torch.cuda.device_count():
            return device
        raise ModelLoadError(f"device {requested!r} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s); {choices}")
    raise ModelLoadError(f"device {requested!r} is not on this machine; {choices}")
