"""What a calibration keeps, and the one memory budget that bounds all of it.

Every in-memory cache of a run (dense features, prepared frames, truth masks, crop embeddings on the model's device,
naming verdicts and extensions, the segmentation each setting gave each frame, each frame's scores) is a
:class:`BoundedCache` whose entries count against one :class:`MemoryBudget`: when a new entry does not fit, the
least recently used entries of any cache are dropped first. A dropped entry is computed again when next needed
(slower, the same result). Dense features also live on disk (:class:`FeatureStore`), outside the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch

from ...core.config import CORE_SETTINGS
from ...core.model.backend import DenseFeatures

FEATURE_SETTINGS = ("backend", "model", "pretrained", "checkpoint", "random_weights", "dense_method",
                    "window_layout", "inference_size", "window_size", "window_stride", "runtime", "onnx_model",
                    "pamr_steps")
"""The settings that change a frame's dense features: the feature cache is keyed by them (files by content)."""
ENTRY_OVERHEAD = 256
"""Bytes counted per cache entry beyond its arrays and tensors: the key, the Python objects around them."""


def nbytes(*items) -> int:
    """Bytes of the arrays, tensors, strings and bytes in ``items`` (dataclasses, tuples, lists and dicts looked
    into)."""
    total = 0
    for item in items:
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, (str, bytes)):
            total += sys.getsizeof(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            total += nbytes(*(getattr(item, f.name) for f in dataclasses.fields(item)))
        elif isinstance(item, DenseFeatures):  # a plain class: its grid, image and frame are most of a frame's bytes
            total += nbytes(item.grid, item.image, item.frame)
        elif isinstance(item, (tuple, list)):
            total += nbytes(*item)
        elif isinstance(item, dict):
            total += nbytes(*item.keys(), *item.values())
    return total


class MemoryBudget:
    """Bytes the caches of a run may hold together (``megabytes`` MB): admitting an entry drops the least recently
    used entries of any cache until it fits; an entry larger than the whole budget is not kept."""

    def __init__(self, megabytes: float):
        self.limit = megabytes * 1e6
        self.held = 0
        self.dropped = 0
        self._order: OrderedDict[tuple, int] = OrderedDict()  # (cache, key) -> bytes, least recently used first

    def admit(self, cache: "BoundedCache", key: Hashable, size: int) -> bool:
        if size > self.limit:
            return False
        while self.held + size > self.limit and self._order:
            (owner, old), freed = self._order.popitem(last=False)
            owner.forget(old)
            self.held -= freed
            self.dropped += 1
        self._order[(cache, key)] = size
        self.held += size
        return True

    def touch(self, cache: "BoundedCache", key: Hashable) -> None:
        self._order.move_to_end((cache, key))


class BoundedCache:
    """A mapping (``get``, ``cache[key] = value``) whose entries count against ``budget`` (see the module
    docstring); ``size`` gives an entry's bytes (default :func:`nbytes` plus :data:`ENTRY_OVERHEAD`)."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self._entries: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default=None):
        if key not in self._entries:
            return default
        self.budget.touch(self, key)
        return self._entries[key]

    def __setitem__(self, key: Hashable, value) -> None:
        if key in self._entries:
            return
        if self.budget.admit(self, key, nbytes(value) + ENTRY_OVERHEAD):
            self._entries[key] = value

    def forget(self, key: Hashable) -> None:
        """Drop ``key`` (the budget's call: it has stopped counting it)."""
        self._entries.pop(key, None)


class FrameMemo:
    """One frame's view of a shared :class:`BoundedCache`, for :meth:`Clipomaly.segment_from_known`'s ``memo``:
    the keys are the pipeline's, prefixed by the frame's ``digest``."""

    def __init__(self, cache: BoundedCache, digest: str):
        self.cache, self.digest = cache, digest

    def get(self, key: Hashable):
        return self.cache.get((self.digest, key))

    def __setitem__(self, key: Hashable, value) -> None:
        self.cache[(self.digest, key)] = value


class CachedCrops:
    """A backend whose ``encode_crops`` remembers each crop's embedding by the crop's pixels (on the model's
    device, within ``budget``); everything else is the wrapped backend's. ``encoded`` counts the crops that really
    went through the encoder."""

    def __init__(self, backend, budget: MemoryBudget):
        self._backend = backend
        self._embeddings = BoundedCache(budget)
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def encode_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` embeddings of crops ``(N, 3, S, S)``, each encoded once per distinct pixels while kept."""
        keys = [hashlib.blake2b(crop.cpu().numpy().tobytes() + str(tuple(crop.shape)).encode(),
                                digest_size=16).digest() for crop in crops]
        found = [self._embeddings.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if missing:
            embedded = self._backend.encode_crops(crops[missing])
            self.encoded += len(missing)
            for i, row in zip(missing, embedded):
                found[i] = row.clone()  # not a view: a kept row must not keep its whole batch alive
                self._embeddings[keys[i]] = found[i]
        return torch.stack(found)


class FeatureStore:
    """Dense features per image, computed once: on disk under ``folder`` (keyed by :func:`feature_key`) and in
    memory within ``budget``. ``backbone_passes`` counts the images that went through the backbone now."""

    def __init__(self, pipeline, folder: Path, budget: MemoryBudget):
        self.pipeline = pipeline
        self.folder = folder
        self._memory = BoundedCache(budget)
        self.backbone_passes = 0
        self._key = feature_key(pipeline)

    def _file(self, digest: str) -> Path:
        return self.folder / f"{hashlib.sha256(f'{self._key}|{digest}'.encode()).hexdigest()[:32]}.pt"

    def features(self, digest: str, image: np.ndarray):
        """The features of the image with content ``digest`` (RGB uint8 ``image``): from memory, the disk cache,
        or a backbone pass."""
        from ...core.model.backend import DenseFeatures

        path = self._file(digest)
        features = self._memory.get(path.name)
        if features is not None:
            return features
        if path.is_file():
            saved = torch.load(path, map_location=self.pipeline.backend.device, weights_only=True)
            features = DenseFeatures(saved["grid"], tuple(saved["working_size"]), saved.get("image"))
        else:
            with torch.inference_mode():
                (features,) = self.pipeline.backend.dense_features_batch([image])
            self.backbone_passes += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            torch.save({"grid": features.grid.cpu(), "working_size": list(features.working_size),
                        "image": None if features.image is None else features.image.cpu()}, partial)
            partial.replace(path)  # atomic: an interrupted run never leaves half a file under the real name
        self._memory[path.name] = features
        return features


def feature_key(pipeline) -> str:
    """What a frame's dense features depend on besides its pixels: the backend's identity, the weights' precision
    and :data:`FEATURE_SETTINGS` (weights and exported graphs by the hash of their bytes)."""
    from ...core.fingerprint import settings_fingerprint

    config = pipeline.config
    fingerprint = settings_fingerprint(config, set(CORE_SETTINGS) - set(FEATURE_SETTINGS))
    model = getattr(pipeline.backend, "model", None)
    precision = str(next(model.parameters()).dtype) if isinstance(model, torch.nn.Module) else "float32"
    return json.dumps({"identity": pipeline.backend.identity, "precision": precision,
                       "working_short_side": config.working_short_side, **fingerprint}, sort_keys=True, default=str)
