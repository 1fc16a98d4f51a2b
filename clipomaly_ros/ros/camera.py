"""One camera served by the node: its input, its newest waiting frame, its counters and its outputs.

Needs rclpy only through the publishers and subscription the node hands in; the logic here (which outputs to
build, what to count) is plain Python.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.config import ClipomalyConfig
from ..core.scene.planning import AnomalyFollower
from .autoware import autoware_style
from .decoding import ImageConversionError
from .frame_step import FrameStep
from .messages import ON_DEMAND_OUTPUTS, MessageFactory, stamp_ns

IMAGE_OUTPUTS = ("semantic", "anomaly_score", "anomaly_mask", "anomaly_instances") + ON_DEMAND_OUTPUTS
"""Outputs that are images: each is computed and published only while it has a subscriber."""


@dataclass
class CameraCounters:
    """What happened to one camera's frames. ``received`` always equals ``processed + dropped + bad_inputs +
    failed + skipped_paused + dropped_at_shutdown`` plus the frame (at most one) waiting or in work. Guarded by the
    camera's lock. ``dropped_at_shutdown``: waiting or in work when the node was deactivated or stopped."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad_inputs: int = 0
    failed: int = 0
    skipped_paused: int = 0
    dropped_at_shutdown: int = 0
    frames_with_maps: int = 0
    published: collections.Counter = field(default_factory=collections.Counter)
    processing_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    output_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    processed_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))


class InputGaps:
    """Frames missing from a camera's input, estimated from gaps in their header stamps.

    The camera's period is ``expected_period_ns`` when the camera's rate is declared, else the smallest interval
    between stamps that recurs (``steady`` intervals within ``tolerance`` of each other, among the last
    ``history`` intervals of the images and of camera_info, :meth:`add_reference`): a stream that loses frames
    from its first one still has some frames back to back, while the median of its intervals would take the
    lossy rate for the camera's own. A gap of ``n`` periods (rounded, above 1.5) means ``n - 1`` frames that were
    published but never arrived. Every gap is kept (as a count per 0.1 ms), so when the period is learned or
    corrected, the gaps before are counted again with it. A repeated stamp counts nothing; a stamp that goes back
    (a restarted camera, a looped bag) starts the count again from there, and a gap of more than ``pause`` periods
    is a pause of the camera, not lost frames. Plain Python: fed by the node's callbacks."""

    BIN_NS = 100_000

    def __init__(self, expected_period_ns: float | None = None, history: int = 64, pause: int = 20, steady: int = 3,
                 tolerance: float = 0.1):
        self.expected_period_ns = expected_period_ns
        self.pause = pause
        self.steady = steady
        self.tolerance = tolerance
        self.intervals: collections.deque = collections.deque(maxlen=history)
        self.reference_intervals: collections.deque = collections.deque(maxlen=history)
        self.gaps: collections.Counter = collections.Counter()
        """Every interval between received stamps, in units of :attr:`BIN_NS`, and how often it came."""
        self.last_ns: int | None = None
        self.last_reference_ns: int | None = None
        self.missing = 0
        self._counted_with: float | None = None

    @property
    def period_ns(self) -> float | None:
        """The camera's period (ns), or None while no interval has recurred ``steady`` times."""
        if self.expected_period_ns:
            return float(self.expected_period_ns)
        values = np.sort(np.fromiter((*self.intervals, *self.reference_intervals), dtype=np.float64))
        for index, smallest in enumerate(values):
            close = values[index:np.searchsorted(values, smallest * (1.0 + self.tolerance), side="right")]
            if close.size >= self.steady:
                return float(np.median(close))
        return None

    def add(self, stamp: int) -> None:
        """One received frame's header stamp in nanoseconds."""
        if self.last_ns is not None and stamp > self.last_ns:
            interval = stamp - self.last_ns
            self.intervals.append(interval)
            binned = round(interval / self.BIN_NS)
            self.gaps[binned] += 1
            period = self.period_ns
            if period != self._counted_with:
                self._recount(period)
            elif period is not None:
                self.missing += self._lost_in(binned * self.BIN_NS, period)
        if stamp != self.last_ns:
            self.last_ns = stamp

    def add_reference(self, stamp: int) -> None:
        """A stamp of the camera's other stream (camera_info, sent with every frame and small, so rarely lost):
        its intervals show the camera's period when the images lose many frames."""
        if self.last_reference_ns is not None and stamp > self.last_reference_ns:
            self.reference_intervals.append(stamp - self.last_reference_ns)
            period = self.period_ns
            if period != self._counted_with:
                self._recount(period)
        if stamp != self.last_reference_ns:
            self.last_reference_ns = stamp

    def _recount(self, period: float | None) -> None:
        self._counted_with = period
        self.missing = 0 if period is None else sum(
            count * self._lost_in(binned * self.BIN_NS, period) for binned, count in self.gaps.items())

    def _lost_in(self, interval: float, period: float) -> int:
        if interval > self.pause * period or interval <= 1.5 * period:
            return 0  # a pause or restart of the camera, or no frame lost
        return round(interval / period) - 1


def mean_and_p95(values) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(np.percentile(array, 95))


class CameraStream:
    """One camera: ``name`` ("" for a node serving a single camera), the ``prefix`` of its topics ("" or
    ``name + "/"``), ``publishers`` (relative output topic -> publisher, ``label_info`` included), its
    ``follower`` (tracks and ground geometry, fed its camera_info) and its counters. ``publish`` sends one frame's
    outputs, building only those that have subscribers."""

    def __init__(self, name: str, publishers: dict[str, Any], factory: MessageFactory, follower: AnomalyFollower,
                 expected_rate: float = 0.0):
        self.name = name
        self.prefix = f"{name}/" if name else ""
        self.publishers = publishers
        self.factory = factory
        self.follower = follower
        self.step = FrameStep(follower, factory)
        self.counters = CameraCounters()
        self.lock = threading.Lock()
        self.gaps = InputGaps(1e9 / expected_rate if expected_rate > 0 else None)
        self.image_input = None
        """Its :class:`~.image_input.ImageInput` while subscribed (the node sets it): the reliability and why."""
        self.mounting_source = "not known yet (no frame processed)"
        """Where the camera's mounting in the base frame came from for the last frame, for /diagnostics."""

    def frame_arrived(self, header: Any) -> None:
        """Count a received frame and note its stamp for the estimate of missing frames."""
        with self.lock:
            self.counters.received += 1
            self.gaps.add(stamp_ns(header))

    def camera_info_arrived(self, info: Any) -> None:
        """A camera_info message: its calibration for the 3D outputs, its stamp for the estimate of missing
        frames."""
        with self.lock:
            self.gaps.add_reference(stamp_ns(info.header))
        self.follower.set_camera_info(info)

    def wanted_outputs(self, overlay_allowed: bool) -> list[str]:
        """The image outputs that someone subscribes to now."""
        return [name for name in IMAGE_OUTPUTS if self.publishers[name].get_subscription_count() > 0
                and (overlay_allowed or name != "overlay")]

    def publish(self, header: Any, image: np.ndarray, result, config: ClipomalyConfig, overlay_allowed: bool) -> None:
        """Run the frame step (tracking, 3D, messages; see :class:`~.frame_step.FrameStep`) with the image outputs
        someone subscribes to, and publish what it built."""
        wanted = self.wanted_outputs(overlay_allowed)
        _, messages = self.step(header, image, result, config, wanted,
                                autoware_style(config) if "anomalies_objects" in self.publishers else None,
                                available=self.publishers)
        for topic, message in messages.items():
            self.publishers[topic].publish(message)
        with self.lock:
            self.counters.published.update(list(messages))
            if result.computed_maps:
                self.counters.frames_with_maps += 1

    def count(self, what: str, amount: int = 1) -> None:
        with self.lock:
            setattr(self.counters, what, getattr(self.counters, what) + amount)

    def record_processed(self, processing_ms: float, output_ms: float, latency_ms: float) -> None:
        """One frame done: ``processing_ms`` in the pipeline, ``output_ms`` tracking, building and publishing its
        outputs, ``latency_ms`` from its arrival to the end of publishing."""
        with self.lock:
            counters = self.counters
            counters.processed += 1
            counters.processing_ms.append(processing_ms)
            counters.output_ms.append(output_ms)
            counters.latency_ms.append(latency_ms)
            counters.processed_times.append(time.monotonic())

    def report(self) -> dict[str, Any]:
        """The camera's figures for /diagnostics: counters, rate over the last 5 s, and mean and p95 of the
        processing time and of the input-to-output latency, and the mean time spent on the outputs (ms)."""
        with self.lock:
            counters = self.counters
            now = time.monotonic()
            recent = [t for t in counters.processed_times if now - t <= 5.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            processing, processing_p95 = mean_and_p95(counters.processing_ms)
            latency, latency_p95 = mean_and_p95(counters.latency_ms)
            report = {
                "frames received": counters.received, "frames processed": counters.processed,
                "frames dropped": counters.dropped, "bad inputs": counters.bad_inputs,
                "failed frames": counters.failed, "frames skipped while paused": counters.skipped_paused,
                "frames dropped at shutdown": counters.dropped_at_shutdown,
                "processed fps": f"{fps:.2f}", "processing ms": f"{processing:.1f}",
                "processing ms p95": f"{processing_p95:.1f}",
                "output ms": f"{mean_and_p95(counters.output_ms)[0]:.1f}",
                "input to output latency ms": f"{latency:.1f}",
                "input to output latency ms p95": f"{latency_p95:.1f}",
                "frames with full-resolution maps": counters.frames_with_maps,
                "frames missing from the input (estimated)": self.gaps.missing,
                "input qos": self.image_input.qos_reason if self.image_input is not None else "not subscribed",
                "mounting": self.mounting_source,
            }
            report.update({f"published {topic}": count for topic, count in sorted(counters.published.items())})
        follower = self.follower
        report.update({
            "3d output": "on" if follower.no_3d_reason is None else f"off: {follower.no_3d_reason}",
            "anomalies located on the ground": follower.counters.located,
            "anomalies without ground contact": follower.counters.without_ground_contact,
            "anomalies with a hidden ground contact": follower.counters.hidden_contact,
            "frames without calibration": follower.counters.frames_without_calibration,
            "live tracks": len(follower.tracker.tracks),
            "track restarts (stamps went back)": follower.tracker.restarts,
        })
        return report


class LatestFrames:
    """One slot per camera holding its newest waiting frame; the worker takes every waiting frame at once, so
    frames of several cameras go through the backbone together."""

    def __init__(self):
        self._condition = threading.Condition()
        self._items: dict[str, Any] = {}
        self._closed = False

    def put(self, camera: str, item) -> bool:
        """Store ``item`` for ``camera``; True when it replaced a frame that was still waiting."""
        with self._condition:
            replaced = camera in self._items
            self._items[camera] = item
            self._condition.notify()
            return replaced

    def take_all(self, timeout: float) -> dict[str, Any]:
        """Every waiting frame by camera (empty after ``timeout`` seconds without one, or when closed)."""
        with self._condition:
            if not self._items and not self._closed:
                self._condition.wait(timeout)
            items, self._items = self._items, {}
            return items

    def clear(self) -> list[str]:
        """Drop every waiting frame; returns the cameras that had one."""
        with self._condition:
            cameras, self._items = list(self._items), {}
            return cameras

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def decode_frame(decode: Callable[..., np.ndarray], message: Any, max_pixels: int) -> np.ndarray:
    """``decode(message, max_pixels)``; any failure of the decoder is a bad input, raised as
    :class:`ImageConversionError`."""
    try:
        return decode(message, max_pixels)
    except ImageConversionError:
        raise
    except Exception as error:  # a decoder must not take the node down, whatever the bytes hold
        raise ImageConversionError(f"{type(error).__name__}: {error}") from error


class Watchdog:
    """Notices when frames wait but none gets processed: ``frame_waiting`` when one arrives, ``progress`` when
    one is done (processed, rejected or failed); ``stalled_for`` says how long frames have waited without
    progress, once that exceeds ``timeout`` seconds."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self._clock = clock
        self._waiting_since: float | None = None
        self._lock = threading.Lock()

    def frame_waiting(self) -> None:
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = self._clock()

    def progress(self) -> None:
        with self._lock:
            self._waiting_since = None

    def stalled_for(self) -> float | None:
        with self._lock:
            if self._waiting_since is None:
                return None
            waited = self._clock() - self._waiting_since
            return waited if waited > self.timeout else None
