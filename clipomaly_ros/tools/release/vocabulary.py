"""The vocabulary side of a release: the names reviewers confirmed, normalised, counted and merged into
``anomaly_vocabulary``; names the known classes, the vocabulary or the naming dictionary already cover are
reported, not added twice."""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Iterable

KEEP_S = ("ss", "us", "is", "ous")
"""Endings of words whose final ``s`` is no plural (glass, bus, chassis, ...)."""
NOT_PLURAL = frozenset({"alias", "atlas", "bias", "canvas", "chaos", "debris", "gas", "lens", "news", "series",
                        "species", "trousers"})
"""Words ending in ``s`` that are singular (or have no singular): left as they are."""
IRREGULAR = {"buses": "bus", "children": "child", "feet": "foot", "geese": "goose", "heroes": "hero",
             "knives": "knife", "leaves": "leaf", "men": "man", "mice": "mouse", "people": "person",
             "potatoes": "potato", "teeth": "tooth", "tomatoes": "tomato", "wolves": "wolf", "women": "woman"}
"""Plurals no ending rule gets right."""


def singular(word: str) -> str:
    """The obvious singular of an English ``word``: ``tyres`` -> ``tyre``, ``boxes`` -> ``box``, ``puppies`` ->
    ``puppy``, ``buses`` -> ``bus``; a word of :data:`NOT_PLURAL`, or not obviously plural, is returned as it is."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in NOT_PLURAL:
        return word
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and re.search(r"(ss|x|z|ch|sh)es$", word):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(KEEP_S):
        return word[:-1]
    return word


def normalise(name: str, known: Iterable[str] = ()) -> str:
    """``name`` in lower case with single spaces and no surrounding punctuation; its last word made singular
    where that is obvious, unless ``name`` as written is one of ``known`` (names that stay as they are)."""
    text = re.sub(r"\s+", " ", name.strip().lower()).strip(" .,;:!?\"'")
    if text in set(known):
        return text
    words = text.split(" ")
    words[-1] = singular(words[-1])
    return " ".join(words)


@dataclass
class VocabularyChange:
    """What the reviews do to the vocabulary: ``added`` (name -> confirmed finds), ``covered`` (name -> why it is
    not added: a known class, already in the vocabulary, in the dictionary), ``counts`` (every confirmed name ->
    finds) and ``mapping`` (each name as reviewers wrote it -> its normalised form, where they differ)."""

    vocabulary: tuple[str, ...]
    added: dict[str, int] = field(default_factory=dict)
    covered: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    mapping: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"anomaly_vocabulary": list(self.vocabulary), "added": self.added, "covered": self.covered,
                "confirmed_finds": self.counts, "normalised": self.mapping}


def merge_vocabulary(names: Iterable[str], vocabulary: Iterable[str], known_classes: Iterable[str],
                     dictionary: Iterable[str]) -> VocabularyChange:
    """``anomaly_vocabulary`` with the confirmed ``names`` (one per confirmed find) added, normalised (see
    :func:`normalise`); added names in order of their finds, most first, then alphabetically."""
    vocabulary, known_classes = tuple(vocabulary), tuple(known_classes)
    # a reference entry covers the names that normalise as it does ("traffic cones" covers "traffic cone")
    covering = {}
    for entries, why in ((dictionary, "in the naming dictionary"), (vocabulary, "already in anomaly_vocabulary"),
                         (known_classes, "a known class")):  # applied last: a known class is said first
        covering.update({form: why for entry in entries for form in (entry.strip().lower(), normalise(entry))})
    counts: collections.Counter = collections.Counter()
    mapping = {}
    for raw in names:
        name = normalise(raw, covering)
        counts[name] += 1
        if raw != name:
            mapping[raw] = name
    change = VocabularyChange(vocabulary, counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
                              mapping=dict(sorted(mapping.items())))
    for name, finds in change.counts.items():
        if not name:
            change.covered[name] = "no name left once normalised (punctuation only): not added"
        elif name in covering:
            change.covered[name] = covering[name]
        else:
            change.added[name] = finds
    change.vocabulary = vocabulary + tuple(change.added)
    return change
