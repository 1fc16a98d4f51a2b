"""Text side: prompt ensembles, cached text embeddings, the live vocabulary and the naming dictionary.

A name's embedding is the normalised mean of its prompts' embeddings over the templates. Embeddings are cached
in memory per name, so a vocabulary change encodes only names never seen before; the naming dictionary (thousands
of prompts, minutes on a CPU) is also cached on disk, keyed by the backend identity, templates and names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)


class VocabularyError(ValueError):
    """A vocabulary that cannot be used (empty known classes, unreadable dictionary)."""


class TextEmbedder:
    """Prompt-ensemble text embeddings with an in-memory cache per name. Thread-safe.

    ``embed(names)`` returns ``(len(names), D)`` float32, L2-normalised, on the backend's device.
    """

    def __init__(self, backend, templates: Sequence[str]):
        self.backend = backend
        self.templates = tuple(templates)
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.encoded_names = 0  # how many names were sent through the text encoder, for tests and benchmarks

    def _encode(self, names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        templates = self.templates if templates is None else tuple(templates)
        prompts = [template.format(name) for name in names for template in templates]
        embeddings = self.backend.encode_text(prompts).float()
        embeddings = embeddings.reshape(len(names), len(templates), -1).mean(dim=1)
        return F.normalize(embeddings, dim=-1)

    def embed(self, names: Sequence[str]) -> torch.Tensor:
        with self._lock:
            missing = [name for name in dict.fromkeys(names) if name not in self._cache]
            if missing:
                for name, embedding in zip(missing, self._encode(missing)):
                    self._cache[name] = embedding
                self.encoded_names += len(missing)
            if not names:
                return torch.zeros(0, self.backend.embed_dim, device=self.backend.device)
            return torch.stack([self._cache[name] for name in names])

    def embed_many(self, names: Sequence[str], templates: Sequence[str], cache_dir: Path | None,
                   batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embeddings ``(N, D)`` of a long name list (the dictionary) with their own ``templates``, read from or
        written to a disk cache in ``cache_dir`` (``None``: no disk cache)."""
        templates = tuple(templates)
        key = hashlib.sha256(json.dumps([self.backend.identity, templates, list(names)]).encode()).hexdigest()
        path = cache_dir / f"text-{key[:24]}.npy" if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                cached = np.load(path)
                if cached.shape == (len(names), self.backend.embed_dim):
                    return torch.from_numpy(cached).to(self.backend.device)
                LOG.warning("text-embedding cache %s does not fit this model; encoding again", path)
            except (OSError, ValueError) as error:
                LOG.warning("ignoring unreadable text-embedding cache %s: %s", path, error)
        chunks = []
        starts = range(0, len(names), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encoding naming dictionary", unit="batch")
        for start in starts:
            chunks.append(self._encode(names[start:start + batch_size], templates))
        embeddings = torch.cat(chunks) if chunks else torch.zeros(0, self.backend.embed_dim)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(temporary, embeddings.cpu().numpy())
                os.replace(temporary, path)
            except OSError as error:
                LOG.warning("could not write text-embedding cache %s: %s", path, error)
        return embeddings


def read_name_list(path: str | Path | None = None) -> tuple[str, ...]:
    """Names from a text file (one a line, '#' comments); ``None``: the dictionary shipped with the package."""
    names = list(dict.fromkeys(n for n in _dictionary_lines(path) if n and not n.startswith("#")))
    if not names:
        raise VocabularyError(f"naming dictionary {path or '(shipped)'} holds no names")
    return tuple(names)


def read_name_sections(path: str | Path | None = None) -> dict[str, frozenset[str]]:
    """The names of a dictionary file by section: a comment line of its own (``# animals``) starts a section named
    by its text up to a ';' (``animals``), which runs to the next one. Names before any section are left out."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in _dictionary_lines(path):
        if line.startswith("#"):
            current = line.lstrip("#").split(";")[0].strip()
            sections.setdefault(current, set())
        elif line and current is not None:
            sections[current].add(line)
    return {name: frozenset(names) for name, names in sections.items() if names}


def _dictionary_lines(path: str | Path | None) -> list[str]:
    if path:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as error:
            raise VocabularyError(f"naming_dictionary {path} cannot be read ({error.strerror}): set "
                                  "'naming_dictionary' to a text file, or leave it empty for the shipped one") from None
    else:
        text = resources.files("clipomaly_ros").joinpath("data/naming_dictionary.txt").read_text()
    return [" ".join(line.split()) for line in text.splitlines()]


@dataclass(frozen=True)
class Vocabulary:
    """One consistent view of the names the pipeline works with; replaced whole, never changed in place.

    ``known``: the known class names, ``known_embeddings`` ``(K, D)``; ``anomaly``: the user's anomaly names,
    ``anomaly_embeddings`` ``(A, D)``; ``dictionary``: naming candidates left after excluding those that mean a
    known class, ``dictionary_embeddings`` ``(N, D)``; ``excluded``: the dictionary names dropped for that.
    """

    known: tuple[str, ...]
    known_embeddings: torch.Tensor
    anomaly: tuple[str, ...]
    anomaly_embeddings: torch.Tensor
    dictionary: tuple[str, ...]
    dictionary_embeddings: torch.Tensor
    excluded: tuple[str, ...]


class VocabularyManager:
    """Builds :class:`Vocabulary` snapshots and swaps them atomically.

    ``set(known, anomaly)`` encodes only names not seen before and never touches the image model, so it is
    cheap and safe while another thread segments with the previous snapshot.
    """

    def __init__(self, embedder: TextEmbedder, dictionary_names: Sequence[str], exclusion_similarity: float,
                 cache_dir: Path | None, progress: bool = False):
        self.embedder = embedder
        self.exclusion_similarity = exclusion_similarity
        self._dictionary_names = tuple(dictionary_names)
        # the dictionary's names compete with the known classes in one softmax: the same template ensemble
        self._dictionary_embeddings = embedder.embed_many(self._dictionary_names, embedder.templates, cache_dir,
                                                          progress=progress)
        self._lock = threading.Lock()
        self._current: Vocabulary | None = None

    @property
    def current(self) -> Vocabulary:
        if self._current is None:
            raise VocabularyError("no vocabulary set yet")
        return self._current

    def set(self, known: Sequence[str], anomaly: Sequence[str],
            exclusion_similarity: float | None = None) -> Vocabulary:
        known = tuple(dict.fromkeys(known))
        if not known:
            raise VocabularyError("known_classes is empty: give at least one known class name (Cityscapes' 19 are "
                                  "the default)")
        anomaly = tuple(name for name in dict.fromkeys(anomaly) if name not in known)
        with self._lock:
            if exclusion_similarity is not None:
                self.exclusion_similarity = exclusion_similarity
            known_embeddings = self.embedder.embed(known)
            anomaly_embeddings = self.embedder.embed(anomaly)
            similarity = (self._dictionary_embeddings @ known_embeddings.T).max(dim=1).values
            keep = (similarity < self.exclusion_similarity).cpu().numpy()
            known_set = set(known)
            keep &= np.array([name not in known_set for name in self._dictionary_names], dtype=bool)
            keep_index = torch.from_numpy(np.flatnonzero(keep)).to(self._dictionary_embeddings.device)
            vocabulary = Vocabulary(
                known=known, known_embeddings=known_embeddings,
                anomaly=anomaly, anomaly_embeddings=anomaly_embeddings,
                dictionary=tuple(n for n, k in zip(self._dictionary_names, keep) if k),
                dictionary_embeddings=self._dictionary_embeddings[keep_index],
                excluded=tuple(n for n, k in zip(self._dictionary_names, keep) if not k),
            )
            self._current = vocabulary
        return vocabulary
