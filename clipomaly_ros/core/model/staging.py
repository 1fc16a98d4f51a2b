"""Host images up to the GPU through page-locked buffers, without ever refilling a buffer still being read.

A non-blocking copy from pinned memory only *enqueues* the transfer: the GPU reads the buffer later, when the stream
reaches it. Refilling that buffer before then changes what arrives (the naming crops of one frame all arrived as the
last crop, before this module). :class:`PinnedStaging` therefore keeps a small ring of buffers and records, for
each, the event that marks its copy as done; a buffer is refilled only after waiting on its event. The wait costs
nothing unless the ring has wrapped while copies are still queued.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


class CopyDone(Protocol):
    def query(self) -> bool:
        """Whether the copy is complete, without waiting."""

    def synchronize(self) -> None:
        """Block until the copy is complete (its source buffer may then be reused)."""


class CopyEngine(Protocol):
    """How bytes go to the device: :class:`CudaCopyEngine` on a GPU; tests use one whose copies finish late."""

    def pinned(self, nbytes: int) -> torch.Tensor:
        """A host uint8 buffer of ``nbytes`` that the device can read asynchronously."""

    def copy(self, source: torch.Tensor) -> tuple[torch.Tensor, CopyDone]:
        """Enqueue the copy of host ``source`` to the device: the device tensor, and what marks it done."""


class CudaCopyEngine:
    """Pinned buffers and non-blocking copies on the current CUDA stream of ``device``, each marked by an event."""

    def __init__(self, device: torch.device):
        self.device = device

    def pinned(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8).pin_memory()

    def copy(self, source: torch.Tensor) -> tuple[torch.Tensor, CopyDone]:
        tensor = source.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return tensor, done


@dataclass
class _Slot:
    buffer: torch.Tensor | None = None
    done: Any = None


class PinnedStaging:
    """Uploads RGB uint8 ``(H, W, 3)`` arrays to the device through a ring of ``ring_size`` pinned buffers.

    Each buffer grows to the largest image it has carried (so the memory held is at most ``ring_size`` times the
    largest frame, whatever the crop sizes), and is refilled only after its previous copy is done."""

    def __init__(self, engine: CopyEngine, ring_size: int = 8):
        if ring_size < 1:
            raise ValueError("ring_size must be at least 1")
        self.engine = engine
        self._slots = [_Slot() for _ in range(ring_size)]
        self._next = 0
        self._lock = threading.Lock()
        self.waits = 0
        """How many uploads found the earlier copy from their buffer still pending and waited for it (the ring
        wrapped faster than the device copied)."""

    def upload(self, image: np.ndarray) -> torch.Tensor:
        """``image`` on the device, as a uint8 tensor of the same shape. Its copy may still be in flight when this
        returns; work queued after it on the device's stream sees the complete image."""
        image = np.ascontiguousarray(image)
        with self._lock:
            slot = self._slots[self._next]
            self._next = (self._next + 1) % len(self._slots)
            if slot.done is not None:
                if not slot.done.query():  # counted only where there is something to wait for
                    self.waits += 1
                slot.done.synchronize()  # the device has read this buffer: only now may it be overwritten
                slot.done = None
            if slot.buffer is None or slot.buffer.numel() < image.nbytes:
                slot.buffer = self.engine.pinned(image.nbytes)
            staged = slot.buffer[:image.nbytes].view(image.shape)
            staged.numpy()[...] = image
            tensor, slot.done = self.engine.copy(staged)
        return tensor


__all__ = ["PinnedStaging", "CudaCopyEngine", "CopyEngine", "CopyDone"]
