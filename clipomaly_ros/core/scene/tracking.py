"""Anomaly tracks across frames: stable ids, confirmation, a voted name and a smoothed score.

Each frame's anomaly records are matched to the live tracks by an optimal assignment
(``scipy.optimize.linear_sum_assignment``) over a cost that adds how badly the boxes fit (one minus the overlap of
the detection's box with the track's box moved along its velocity, plus their centres' distance in box
diagonals) and how different the names are (one minus the cosine similarity of the track's accumulated name
votes and the detection's candidate names, each weighted by probability, in text-embedding space);
pairs beyond :data:`GATE` or :data:`NAME_GATE` are never matched. Time comes from the frames' stamps only, never from the
wall clock, so a recording replayed at any rate gives the same tracks.

A track is confirmed once it was seen in ``min_hits`` frames and ends after ``max_misses`` frames in a row without
a match; ids are never reused during a run. The name of a track is the one with the most accumulated candidate
probability over its frames, so a name that wins one frame out of ten does not flip it; the score is an
exponential average.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..method.results import AnomalyRecord

NameEmbedding = Callable[[Sequence[str]], np.ndarray]
"""Names -> ``(N, D)`` L2-normalised text embeddings."""

GATE = 1.5
"""Largest centre distance, in predicted-box diagonals, at which a detection may still continue a track."""
NAME_WEIGHT = 1.0
"""Weight of the name dissimilarity (0..1) against the box cost (0..1 + distance in diagonals)."""
NAME_GATE = 0.5
"""A detection continues a track only when their name dissimilarity is below this: unrelated names (dissimilarity
near 1) never do, however well the boxes fit; a name close in meaning (a synonym the naming flips to) does."""
SCORE_SMOOTHING = 0.5
"""Weight of the newest frame's score in a track's exponential average."""
VELOCITY_SMOOTHING = 0.5
"""Weight of the newest measured velocity in a track's velocity."""


@dataclass(eq=False)  # a track is itself, whatever its fields hold
class Track:
    """One tracked anomaly. ``box`` (x0, y0, x1, y1) float pixels where it was last seen at ``stamp_ns``;
    ``velocity`` (px/s) of its box; ``hits``: frames it was seen in; ``misses``: frames in a row without it;
    ``age``: frames since it began; ``votes``: accumulated probability per name; ``score``: smoothed score."""

    id: int
    box: np.ndarray
    stamp_ns: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1
    misses: int = 0
    age: int = 1
    votes: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    confirmed: bool = False

    @property
    def name(self) -> str:
        """The name with the most accumulated probability (ties: the alphabetically last, so it is stable)."""
        return max(self.votes.items(), key=lambda item: (item[1], item[0]))[0]

    def predicted_box(self, stamp_ns: int) -> np.ndarray:
        seconds = max(0.0, (stamp_ns - self.stamp_ns) / 1e9)
        shift = self.velocity * seconds
        return self.box + np.concatenate([shift, shift])


def box_of(record: AnomalyRecord) -> np.ndarray:
    """The record's inclusive pixel box as (x0, y0, x1, y1) edges in float pixels."""
    x0, y0, x1, y1 = record.bbox
    return np.array([x0, y0, x1 + 1, y1 + 1], dtype=np.float64)


def box_costs(predicted: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """``(T, N)`` cost of continuing each of T predicted boxes with each of N detected ones (x0, y0, x1, y1):
    one minus their intersection over union plus the centres' distance in predicted-box diagonals; ``inf``
    beyond :data:`GATE` diagonals."""
    top_left = np.maximum(predicted[:, None, :2], detected[None, :, :2])
    bottom_right = np.minimum(predicted[:, None, 2:], detected[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(predicted)[:, None] + area(detected)[None, :] - overlap
    iou = overlap / np.maximum(union, 1e-9)
    centre = lambda boxes: (boxes[:, :2] + boxes[:, 2:]) / 2  # noqa: E731
    diagonal = np.hypot(predicted[:, 2] - predicted[:, 0], predicted[:, 3] - predicted[:, 1])
    distance = np.linalg.norm(centre(predicted)[:, None] - centre(detected)[None], axis=2) / np.maximum(
        diagonal[:, None], 1.0)
    return np.where(distance <= GATE, 1.0 - iou + distance, np.inf)


class AnomalyTracker:
    """Follows the anomalies of one camera over time (see the module docstring).

    >>> tracker = AnomalyTracker(min_hits=3, max_misses=5, name_embedding=pipeline.embedder_numpy)
    >>> records = tracker.update(result.anomalies, stamp_ns)   # the same records, with track fields set

    ``min_hits`` and ``max_misses`` may be changed between frames. ``name_embedding`` maps names to unit text
    embeddings; without it two names are alike only when equal (the candidate lists can still overlap).
    """

    def __init__(self, min_hits: int = 3, max_misses: int = 5, name_embedding: NameEmbedding | None = None):
        self.min_hits = min_hits
        self.max_misses = max_misses
        self.name_embedding = name_embedding
        self.tracks: list[Track] = []
        self.issued = 0
        """How many track ids were handed out (the ids are 1..issued)."""
        self.last_stamp_ns: int | None = None
        self.restarts = 0
        """How often the stamps went backwards (a looped bag, a reset clock) and the tracks were ended."""

    def _name_costs(self, tracks: list[Track], records: Sequence[AnomalyRecord]) -> np.ndarray:
        """``(T, N)`` one minus the cosine similarity of each track's accumulated votes and each record's
        candidate probabilities, both as probability-weighted sums of the names' embeddings (one axis per name
        without ``name_embedding``)."""
        weights = [track.votes for track in tracks] + [dict(record.candidates or ((record.name, record.score),))
                                                       for record in records]
        names = sorted({name for votes in weights for name in votes})
        index = {name: position for position, name in enumerate(names)}
        mass = np.zeros((len(weights), len(names)))
        for row, votes in enumerate(weights):
            for name, weight in votes.items():
                mass[row, index[name]] = weight
        if self.name_embedding is not None:
            mass = mass @ np.asarray(self.name_embedding(names), dtype=np.float64)
        mass /= np.maximum(np.linalg.norm(mass, axis=1, keepdims=True), 1e-12)
        similarity = mass[: len(tracks)] @ mass[len(tracks):].T
        return np.clip(1.0 - similarity, 0.0, 1.0)

    def update(self, records: Sequence[AnomalyRecord], stamp_ns: int) -> list[AnomalyRecord]:
        """Match one frame's ``records``, taken at ``stamp_ns`` (ns), to the tracks; returns them with
        ``track_id``, ``track_name``, ``track_score``, ``track_hits``, ``track_age`` and ``confirmed`` set."""
        if self.last_stamp_ns is not None and stamp_ns < self.last_stamp_ns:
            self.tracks = []
            self.restarts += 1
        self.last_stamp_ns = stamp_ns
        matches: dict[int, Track] = {}
        if self.tracks and records:
            predicted = np.stack([track.predicted_box(stamp_ns) for track in self.tracks])
            names = self._name_costs(self.tracks, records)
            costs = np.where(names < NAME_GATE, box_costs(predicted, np.stack([box_of(r) for r in records]))
                             + NAME_WEIGHT * names, np.inf)
            finite = np.isfinite(costs)
            rows, columns = linear_sum_assignment(np.where(finite, costs, 1e9))
            matches = {column: self.tracks[row] for row, column in zip(rows, columns) if finite[row, column]}
        for track in self.tracks:
            track.age += 1
            if track not in matches.values():
                track.misses += 1
        self.tracks = [track for track in self.tracks if track.misses <= self.max_misses]
        tracked = []
        for index, record in enumerate(records):
            track = matches.get(index)
            if track is None:
                self.issued += 1
                track = Track(id=self.issued, box=box_of(record), stamp_ns=stamp_ns, score=record.score)
                self.tracks.append(track)
            else:
                self._follow(track, record, stamp_ns)
            for name, probability in record.candidates or ((record.name, record.score),):
                track.votes[name] = track.votes.get(name, 0.0) + probability
            track.confirmed = track.confirmed or track.hits >= self.min_hits
            tracked.append(dataclasses.replace(
                record, track_id=track.id, track_name=track.name, track_score=track.score, track_hits=track.hits,
                track_age=track.age, confirmed=track.confirmed))
        return tracked

    @staticmethod
    def _follow(track: Track, record: AnomalyRecord, stamp_ns: int) -> None:
        box = box_of(record)
        seconds = (stamp_ns - track.stamp_ns) / 1e9
        if seconds > 0:
            measured = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2 / seconds
            weight = VELOCITY_SMOOTHING if track.hits > 1 else 1.0
            track.velocity = weight * measured + (1 - weight) * track.velocity
        track.box, track.stamp_ns = box, stamp_ns
        track.hits += 1
        track.misses = 0
        track.score = SCORE_SMOOTHING * record.score + (1 - SCORE_SMOOTHING) * track.score
