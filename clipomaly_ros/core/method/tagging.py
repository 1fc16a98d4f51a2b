"""Candidate names from the RAM++ image tagger (the paper's "RAM + CLIP-Best"): what the frame shows, by tag.

A :class:`FrameTagger` tags a camera's frame every ``tagger_period`` frames, and at once when a new object comes
into view: an unknown region that overlaps none of the camera's previous frame's regions (the start of a new,
still unnamed track, followed frame to frame as the tracker would); between runs it reuses the camera's last
tags. The frames due in one batch of cameras go through the tagger together.

A frame's candidates (:meth:`FrameTagger.candidates`) are its fired tags minus those that mean a known class, by
the rule that cleans the naming dictionary (the exact name, or a text embedding at least
``exclusion_similarity`` cosine-similar to a known class's); their text embeddings are the pipeline's template
ensemble, cached per name, so a new tag costs one text pass once.

The user's ``anomaly_vocabulary`` names that the release does not know are tagged too (open set), each from its
text embedding, with the ``tagger_threshold``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..model.tagger import RamPlus, tagger_input
from .vocabulary import TextEmbedder


@dataclass(frozen=True)
class FrameTags:
    """One frame's tags: ``names`` that fired, best first, with their ``scores`` (sigmoid probabilities), and
    ``fresh``: the tagger ran on this frame (False: the camera's last tags, reused)."""

    names: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    fresh: bool = False
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)
    """``(T,)`` every released tag's probability, in the release's order, when fresh."""


@dataclass
class _CameraState:
    frames_since: int = 0
    previous: list[np.ndarray] = field(default_factory=list)
    """The previous frame's region masks (coarse map)."""
    last: FrameTags = field(default_factory=FrameTags)
    tagged_once: bool = False


def has_new_region(masks: Sequence[np.ndarray], previous: Sequence[np.ndarray]) -> bool:
    """Whether a region of ``masks`` ((h, w) bool, one frame) overlaps none of ``previous`` (the frame before, the
    same map size): an object that was not in view a frame ago. A region that moved keeps overlapping itself at
    camera rates."""
    if not masks:
        return False
    if not previous or previous[0].shape != masks[0].shape:
        return True
    seen = np.logical_or.reduce(previous)
    return any(not (mask & seen).any() for mask in masks)


class FrameTagger:
    """Tags frames with ``model`` on its device, per camera, on a schedule (see the module docstring).

    ``embedder``: the pipeline's text embedder (open-set names and the tags' candidate embeddings); ``runner``:
    what computes the probabilities (default the eager model; ``runtime: compile`` and ``onnx`` give a
    ``CompiledTagger`` and an ``OnnxTagger``).
    Thread-safe for :meth:`set_open_set` against a running batch."""

    def __init__(self, model: RamPlus, embedder: TextEmbedder, runner=None):
        self.model = model
        self.runner = runner if runner is not None else model.probabilities
        """``runner(images, open_set)``: the model's probabilities (:meth:`RamPlus.probabilities`)."""
        self.embedder = embedder
        self.device = next(model.parameters()).device
        self._thresholds = torch.from_numpy(model.tags.thresholds).to(self.device)
        self._cameras: dict[str, _CameraState] = {}
        self._lock = threading.Lock()
        self._open_set: tuple[tuple[str, ...], float] = ((), 0.5)
        self.runs = 0
        """Frames tagged so far (each frame of a batch counts)."""

    def set_open_set(self, names: Sequence[str], threshold: float) -> None:
        """Tag ``names`` that the release does not know, each above ``threshold``, from their text embeddings."""
        released = set(self.model.tags.names)
        unknown = tuple(name for name in dict.fromkeys(names) if name not in released)
        with self._lock:
            if (unknown, threshold) == self._open_set:
                return
            embeddings = self.embedder.embed(list(unknown)).to(self.device)
            if embeddings.shape[1:] != (self.model.architecture.width,) and unknown:
                raise ValueError(f"the text model's embeddings have {embeddings.shape[1]} dimensions, the tagger's "
                                 f"tag embeddings {self.model.architecture.width} (CLIP ViT-B/16's): open-set tags "
                                 "need a text model of that width; use a ViT-B CLIP model or leave the vocabulary "
                                 "to the dictionary")
            self.model.set_open_set(unknown, embeddings.reshape(len(unknown), self.model.architecture.width))
            self._open_set = (unknown, threshold)

    def due(self, camera: str, masks: Sequence[np.ndarray], period: int) -> bool:
        """Whether ``camera``'s frame, with its unknown regions' ``masks`` ((h, w) bool on the coarse map), is to
        be tagged: its first frame, ``period`` frames after the last run, or a new region (:func:`has_new_region`).
        Counts the frame."""
        with self._lock:
            state = self._cameras.setdefault(camera, _CameraState())
            state.frames_since += 1
            new = has_new_region(masks, state.previous)
            state.previous = list(masks)
            return not state.tagged_once or state.frames_since >= period or new

    def tag(self, cameras: Sequence[str], frames: Sequence[np.ndarray | torch.Tensor]) -> list[FrameTags]:
        """Tag ``frames`` (RGB uint8 (H, W, 3) host arrays, one per camera in ``cameras``) in one batch; each camera
        keeps these as its last tags. The host copy is resized (PIL, as the release was trained) and only the
        (B, 3, 384, 384) batch goes to the model's device."""
        if not frames:
            return []
        batch = tagger_input(list(frames), device=self.device)
        with self._lock, torch.inference_mode():
            probabilities = self.runner(batch, self.model.open_set_embed)
            released = len(self.model.tags.names)
            thresholds = torch.cat([self._thresholds, torch.full((probabilities.shape[1] - released,),
                                                                 self._open_set[1], device=self.device)])
            names = self.model.tags.names + self.model.open_set_names
            fired = (probabilities > thresholds).cpu().numpy()
            values = probabilities.float().cpu().numpy()
            results = []
            for camera, row, scores in zip(cameras, fired, values):
                order = sorted(np.flatnonzero(row), key=lambda index: -scores[index])
                tags = FrameTags(tuple(names[i] for i in order), tuple(float(scores[i]) for i in order), True,
                                 scores[:released])
                state = self._cameras.setdefault(camera, _CameraState())
                state.frames_since, state.last, state.tagged_once = 0, tags, True
                results.append(tags)
            self.runs += len(frames)
        return results

    def last(self, camera: str) -> FrameTags:
        """``camera``'s last tags, marked not fresh."""
        with self._lock:
            last = self._cameras.get(camera, _CameraState()).last
        return FrameTags(last.names, last.scores, False)

    def candidates(self, tags: FrameTags, known: Sequence[str], known_embeddings: torch.Tensor,
                   exclusion_similarity: float) -> tuple[list[str], torch.Tensor]:
        """The naming candidates of ``tags``: the names that do not mean a known class, and their ``(N, D)``
        text embeddings (the template ensemble)."""
        names = [name for name in tags.names if name not in set(known)]
        embeddings = self.embedder.embed(names)
        if not names:
            return [], embeddings
        keep = ((embeddings @ known_embeddings.T).max(dim=1).values < exclusion_similarity).cpu().numpy()
        index = torch.from_numpy(np.flatnonzero(keep)).to(embeddings.device)
        return [name for name, kept in zip(names, keep) if kept], embeddings[index]
