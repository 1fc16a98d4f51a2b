"""The one per-frame loop over a recorded drive, shared by ``clipomaly replay`` and ``clipomaly mine``: a camera's
frames read from a bag in recorded order, each after the camera_info and /tf recorded before it, through the
pipeline and the :class:`~.frame_step.FrameStep` the node runs on live frames.

Plain Python over rosbags: no ROS runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..core.config import ClipomalyConfig
from ..core.scene.planning import PlannerFrame
from ..core.method.results import SegmentationResult
from .bags import BagDataError, camera_info_connections, transform_connections
from .decoding import BadRecordedFrame, decode_recorded, deserialize_recorded
from .frame_step import FrameStep
from .messages import stamp_ns
from .transforms import FrameTree, MountingFinder, add_transforms


LOOK_BACK_NS = 2 * 10**9
"""How far before a window a pass starts reading (ns), for the /tf and camera_info in force at its start: the
window's own read begins that much earlier (one pass, the same chunks), and those messages only set the state."""
STATIC_FIRST_SPAN_NS = 10 * 10**9
"""The first window of the bag (from its start, ns) read for /tf_static, where a recorder writes it."""
CAMERA_INFO_LOOK_BACK_NS = 10**9
"""The first step back in the search for the camera_info in force at a window's start (ns)."""


@dataclass
class DriveCounts:
    """Frames of the drive so far: ``read`` (image messages met), ``processed`` (through the pipeline), ``skipped``
    (their bytes do not deserialise or the image does not decode) and ``thinned`` (left out by ``rate_hz``)."""

    read: int = 0
    processed: int = 0
    skipped: int = 0
    thinned: int = 0


@dataclass
class ProcessedFrame:
    """One recorded frame after the per-frame step: its ``header``, recorded ``timestamp`` (ns, the bag's log
    time), decoded ``image`` (H x W x 3 uint8 RGB), the pipeline's ``result``, the followed ``frame``, the settings
    in force for it (``config``, with the camera's mounting) and where that mounting came from, and the output
    ``messages`` the step built (relative topic -> message; empty without a message factory)."""

    header: Any
    timestamp: int
    image: np.ndarray
    result: SegmentationResult
    frame: PlannerFrame
    config: ClipomalyConfig
    mounting: str
    messages: dict[str, Any] = field(default_factory=dict)


class RecordedDrive:
    """One camera's recording in an open bag (``reader``): the image ``connections`` of its topic, its camera_info
    (``camera_info_topic``, default the image topic's sibling) and the bag's /tf_static (read whole at once: static
    transforms hold over the whole recording) and /tf (applied in recorded order).

    A pass over a window reads only that window and a bounded look-back before it, so its cost does not grow with
    its place in the bag: it starts reading :data:`LOOK_BACK_NS` before the window, in the same pass, for the /tf
    and camera_info in force at its start; only when no camera_info was recorded in that time is an older one
    searched backwards in growing steps (one recorded once, at the start).

    ``report`` gets one line for each thing left out on the way: a skipped frame, a damaged camera_info or /tf
    message, an unusable transform. ``guard`` wraps the bag's message iterator (how the caller wants a storage
    failure midway reported)."""

    def __init__(self, reader, connections: list, camera_info_topic: str | None = None,
                 report: Callable[[str], None] = lambda line: None,
                 guard: Callable[[Iterable], Iterable] = lambda messages: messages):
        self.reader = reader
        self.images = connections
        self.topic = connections[0].topic
        self.infos, self.camera_info_topic = camera_info_connections(reader, self.topic, camera_info_topic)
        self.static, self.dynamic = transform_connections(reader)
        self.report = report
        self.guard = guard
        self.tree = self._static_tree()
        self.finder = MountingFinder(self.tree, "the bag's /tf_static and /tf")
        self.counts = DriveCounts()
        self._latest_info: tuple[bytes, str] | None = None
        self.stopped_early = False
        """Whether the last pass ended because ``stop_requested()`` was true, before the end of its window."""

    @property
    def total_frames(self) -> int:
        return sum(connection.msgcount for connection in self.images)

    def total_messages(self, with_static: bool = False) -> int:
        """The messages a pass reads: frames, camera_info and /tf (and /tf_static with ``with_static``)."""
        return sum(connection.msgcount for connection in self._connections(with_static))

    def _connections(self, with_static: bool) -> list:
        return self.images + self.infos + self.dynamic + (self.static if with_static else [])

    def frames(self, pipeline, step: FrameStep, start: int | None = None, stop: int | None = None,
               rate_hz: float | None = None, on_message: Callable[[Any, int, bytes], None] | None = None,
               stop_requested: Callable[[], bool] = lambda: False, **outputs) -> Iterator[ProcessedFrame]:
        """Every frame of the drive recorded in ``[start, stop)`` (ns of log time; whole drive by default) through
        ``pipeline`` and ``step``, which also gets ``outputs`` (``wanted``, ``autoware``). The newest camera_info
        and the /tf recorded before ``start`` (see the class) are in force at its first frame. ``rate_hz``: at most
        that many frames a second of the images' stamps; the others are counted as thinned and not decoded.
        ``on_message(connection, timestamp, raw)`` sees every message read (frames, camera_info, /tf and, with it,
        /tf_static too), before the frame it may belong to is processed. The pass ends early once
        ``stop_requested()`` is true, before the next message."""
        last_stamp: int | None = None
        self.stopped_early = False
        begin = self._look_back_start(start)
        looking_back = begin != start
        for connection, timestamp, raw in self._window(self._connections(on_message is not None), begin, start,
                                                       stop):
            if looking_back and timestamp < start:  # before the window: its state only, nothing else
                if connection in self.infos or connection in self.dynamic:
                    self._take_state(connection, raw)
                continue
            if looking_back:
                looking_back = False
                self._older_camera_info(begin)
            if stop_requested():
                self.stopped_early = True
                return
            if on_message is not None:
                on_message(connection, timestamp, raw)
            if connection not in self.images:
                self._take_state(connection, raw)
                continue
            self.counts.read += 1
            try:
                message = deserialize_recorded(self.reader, raw, connection.msgtype)
                stamp = stamp_ns(message.header)
                if rate_hz and last_stamp is not None and stamp - last_stamp < 1e9 / rate_hz - 1e3:
                    self.counts.thinned += 1
                    continue
                image = decode_recorded(message, connection.msgtype)
            except BadRecordedFrame as error:
                self.counts.skipped += 1
                self.report(f"skipped frame {self.counts.read} at {timestamp} ns on {connection.topic}: {error}")
                continue
            last_stamp = stamp
            yield self._step(pipeline, step, message.header, timestamp, image, outputs)

    def _window(self, connections: list, begin: int | None, start: int | None, stop: int | None) -> Iterator:
        """The guarded messages of ``connections`` in ``[begin, stop)``; where damaged data (:class:`BagDataError`)
        is met in the look-back before ``start``, it is reported and the read starts again at ``start``, without
        the state recorded before it."""
        reached = begin == start
        try:
            for item in self.guard(self.reader.messages(connections=connections, start=begin, stop=stop)):
                reached = reached or item[1] >= start
                yield item
        except BagDataError as error:
            if reached:
                raise
            self.report(f"left out the look-back before {start} ns: {error}")
            yield from self.guard(self.reader.messages(connections=connections, start=start, stop=stop))

    def _static_tree(self) -> FrameTree:
        """The transforms of the bag's /tf_static, read from the bag's start in windows growing fourfold from
        :data:`STATIC_FIRST_SPAN_NS` until all of its messages were met (one step where the recorder wrote them once
        at the start, as it does); a message that does not deserialise is reported and left out, and so is the rest
        of /tf_static where its data is damaged (the frames are mined on with what was met)."""
        try:
            return self._read_static_tree()
        except BagDataError as error:
            self.report(f"left out the recorded /tf_static from where its data is damaged: {error}")
            return self._partial_tree

    def _read_static_tree(self) -> FrameTree:
        tree = self._partial_tree = FrameTree()
        expected = sum(connection.msgcount for connection in self.static)
        bag_start, bag_end = getattr(self.reader, "start_time", 0), getattr(self.reader, "end_time", None)
        begin, span, met = bag_start, STATIC_FIRST_SPAN_NS, 0
        while met < expected and (bag_end is None or begin <= bag_end):
            stop = None if bag_end is None else begin + span
            for connection, timestamp, raw in self.guard(self.reader.messages(connections=self.static, start=begin,
                                                                              stop=stop)):
                met += 1
                self._add_static(tree, connection, timestamp, raw)
            if stop is None:
                break
            begin, span = stop, span * 4
        return tree

    def _add_static(self, tree: FrameTree, connection, timestamp: int, raw: bytes) -> None:
        try:
            problems = add_transforms(tree, deserialize_recorded(self.reader, raw, connection.msgtype))
        except BadRecordedFrame as error:
            problems = [f"/tf_static message at {timestamp} ns: {error}"]
        for problem in problems:
            self.report(f"left out a recorded {problem}")

    def _look_back_start(self, start: int | None) -> int | None:
        """Where a pass over a window starting at ``start`` begins reading: :data:`LOOK_BACK_NS` before it (not
        before the bag's start) when the drive has camera_info or /tf, else at ``start``."""
        if not start or not (self.infos or self.dynamic):
            return start
        return max(getattr(self.reader, "start_time", 0), start - LOOK_BACK_NS)

    def _older_camera_info(self, before: int | None) -> None:
        """When no camera_info was read since ``before``: the newest one before it, searched back in windows
        growing fourfold from one second to the bag's start (a camera_info recorded once, at the start)."""
        if not self.infos or self._latest_info is not None or before is None:
            return
        span, bag_start = CAMERA_INFO_LOOK_BACK_NS, getattr(self.reader, "start_time", 0)
        while before > bag_start:
            begin = max(bag_start, before - span)
            try:
                found = list(self.guard(self.reader.messages(connections=self.infos, start=begin, stop=before)))
            except BagDataError as error:  # the search stops: the window's own camera_info comes later
                self.report(f"left out the camera_info recorded before {before} ns: {error}")
                return
            if found:
                connection, _, raw = max(found, key=lambda item: item[1])
                self._take_state(connection, raw)
                return
            before, span = begin, span * 4

    def _step(self, pipeline, step: FrameStep, header, timestamp: int, image: np.ndarray,
              outputs: dict) -> ProcessedFrame:
        self._apply_camera_info(step)
        result = pipeline(image)
        config, mounting = self.finder.find(header.frame_id, pipeline.config)
        frame, messages = step(header, image, result, config, **outputs)
        self.counts.processed += 1
        return ProcessedFrame(header, timestamp, image, result, frame, config, mounting, messages)

    def _take_state(self, connection, raw: bytes) -> None:
        """A camera_info (kept raw: only the newest in force at a frame is deserialised) or a /tf message (into
        the transform tree); /tf_static was read whole at the start."""
        if connection in self.infos:
            self._latest_info = (raw, connection.msgtype)
        elif connection in self.dynamic:
            try:
                problems = add_transforms(self.tree, deserialize_recorded(self.reader, raw, connection.msgtype))
            except BadRecordedFrame as error:
                problems = [f"a /tf message: {error}"]
            for problem in problems:
                self.report(f"left out a recorded {problem}")

    def _apply_camera_info(self, step: FrameStep) -> None:
        if self._latest_info is None:
            return
        (raw, msgtype), self._latest_info = self._latest_info, None
        try:
            step.follower.set_camera_info(deserialize_recorded(self.reader, raw, msgtype))
        except BadRecordedFrame as error:  # the calibration in force stays
            self.report(f"left out a recorded camera_info on {self.camera_info_topic}: {error}")
