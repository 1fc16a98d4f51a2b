"""``clipomaly replay``: run the pipeline over a recorded drive and write the node's outputs into a new bag.

Offline and without a ROS runtime (rosbags). The output bag holds the input image topic (and its camera_info, /tf
and /tf_static), copied byte for byte, and every per-frame output topic of the node under ``namespace`` with the
node's message types, stamped with the input headers and recorded at the input messages' times, so Foxglove or
``ros2 bag play`` show them together. Tracks follow the images' header stamps, as in the node, so a replay gives
the tracks the node would give if it processed every frame. The 3D outputs need the camera's ``camera_info`` in the
bag (by default the image topic's sibling, ``/camera/image_raw`` -> ``/camera/camera_info``); without it they are
left out and the bag's /diagnostics says why. The camera's mounting comes from the bag's /tf_static and /tf (the
chain from ``base_frame`` to the images' frame) when they hold it, else from the ``camera_*`` settings.
"""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.interrupt import GracefulStop
from ..core.scene.planning import AnomalyFollower
from ..ros.autoware import autoware_style
from ..ros.bags import BagError, image_connections, open_bag, typestore_with_built_msgs
from ..ros.camera import IMAGE_OUTPUTS
from ..ros.frame_step import FrameStep
from ..ros.messages import ON_DEMAND_OUTPUTS, OUTPUT_TYPES, MessageFactory, stamp_ns
from ..ros.recorded import ProcessedFrame, RecordedDrive


@dataclass
class ReplaySummary:
    """What a replay did: frame counts, per-frame milliseconds of the pipeline, and what was left out, one line
    each (skipped frames with their reasons, damaged camera_info or /tf messages)."""

    read: int = 0
    processed: int = 0
    failed: int = 0
    milliseconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    tracks: int = 0
    located: int = 0
    without_ground_contact: int = 0
    hidden_contact: int = 0
    no_3d_reason: str | None = None
    mounting: str = "not known yet (no frame processed)"
    """Where the camera's mounting came from for the last frame: the bag's transforms or the parameters."""
    published: collections.Counter = field(default_factory=collections.Counter)
    """Messages written per output topic (relative name)."""
    total: int = 0
    """Image messages in the input bag."""
    interrupted_at: int | None = None
    """The stamp (ns) of the last frame written when Ctrl-C or SIGTERM ended the replay early, else None."""

    def text(self) -> str:
        counts = f"frames read {self.read}, processed {self.processed}, failed {self.failed}"
        if self.interrupted_at is not None:
            counts = (f"interrupted after {self.read} of {self.total} frames (last stamp {self.interrupted_at / 1e9:.3f} "
                      f"s); the bag holds them and is complete; {counts}")
        if not self.milliseconds:
            return counts + "; no frame was processed"
        times = np.asarray(self.milliseconds)
        three_d = (f"3D: {self.located} anomalies located, {self.without_ground_contact} without ground contact"
                   if self.no_3d_reason is None else f"no 3D output: {self.no_3d_reason}")
        return (f"{counts}; pipeline ms per frame: mean {times.mean():.1f}, p95 {np.percentile(times, 95):.1f}; "
                f"{self.tracks} tracks; {three_d}; camera mounting from {self.mounting}")

    def add(self, processed: ProcessedFrame, drive: RecordedDrive, follower: AnomalyFollower) -> None:
        """One processed frame's figures, with the drive's counts and the follower's so far."""
        self.read, self.processed, self.failed = drive.counts.read, drive.counts.processed, drive.counts.skipped
        self.milliseconds.append(processed.result.timings_ms["total"])
        self.mounting = processed.mounting
        self.published.update(list(processed.messages))
        self.tracks = follower.tracker.issued
        self.located = follower.counters.located
        self.without_ground_contact = follower.counters.without_ground_contact
        self.hidden_contact = follower.counters.hidden_contact
        self.no_3d_reason = follower.no_3d_reason


def replay(pipeline, in_bag: str | Path, out_bag: str | Path, image_topic: str | None = None,
           namespace: str = "", storage: str = "mcap", overlay: bool = True, progress: bool = True,
           log=None, camera_info_topic: str | None = None) -> ReplaySummary:
    """Segment every frame of ``image_topic`` in ``in_bag`` and write ``out_bag`` (see the module docstring);
    ``camera_info_topic`` overrides the image topic's sibling ``camera_info``. Ctrl-C or SIGTERM stops it after
    the current frame with ``out_bag`` closed and readable (``summary.interrupted_at``). ``log`` gets each line
    to tell (default: standard error, above the progress bar)."""
    from tqdm import tqdm

    log = log or (lambda message: tqdm.write(message, file=sys.stderr))

    out_bag = Path(out_bag)
    if out_bag.exists():
        raise BagError(f"{out_bag} exists already: choose a new output path")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
    autoware = autoware_style(pipeline.config)  # an unknown dictionary section in autoware_labels fails here
    summary = ReplaySummary()

    def report(line: str) -> None:
        summary.failures.append(line)
        log(line)

    with GracefulStop(log) as stop, open_bag(in_bag) as reader:
        drive = RecordedDrive(reader, image_connections(reader, image_topic), camera_info_topic, report,
                              guard=lambda messages: _guarded(messages, in_bag))
        summary.total = drive.total_frames
        with ReplayBag(out_bag, storage, namespace, drive, overlay) as bag, \
                tqdm(unit="message", total=drive.total_messages(with_static=True), desc="replaying",
                     disable=not progress) as bar:
            step = FrameStep(AnomalyFollower(pipeline.name_embeddings, drive.camera_info_topic), bag.factory)

            def copy(connection, timestamp: int, raw: bytes) -> None:
                bag.copy(connection, timestamp, raw)
                bar.update()

            wanted = [name for name in IMAGE_OUTPUTS if name in bag.topics]
            for processed in drive.frames(pipeline, step, on_message=copy, stop_requested=lambda: stop.requested,
                                          wanted=wanted, autoware=autoware):
                bag.write_outputs(processed)
                summary.add(processed, drive, step.follower)
                bag.write_diagnostics(processed, summary)
            summary.read, summary.failed = drive.counts.read, drive.counts.skipped
            if drive.stopped_early:
                summary.interrupted_at = bag.last_stamp
            bag.write_diagnostics(None, summary)
    return summary


class ReplayBag:
    """The output bag of a replay: the input's image, camera_info and transform topics copied byte for byte, the
    node's outputs under ``namespace`` (the pictures only with ``overlay``) and a /diagnostics a second of recorded
    time. Closed on leaving ``with``, also after an error or a second Ctrl-C: the bag gets its index and
    metadata.yaml and keeps the frames written so far."""

    def __init__(self, path: Path, storage: str, namespace: str, drive: RecordedDrive, overlay: bool):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.store = typestore_with_built_msgs()
        self.factory = MessageFactory(self.store.types)
        prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.topics = {name: f"{prefix}/{name}" for name in OUTPUT_TYPES if overlay or name not in ON_DEMAND_OUTPUTS}
        self.diagnostics_name = f"{prefix}/clipomaly"
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap"
                             else StoragePlugin.SQLITE3)
        self.writer.open()
        self.copies = {connection.id: self.writer.add_connection(connection.topic, connection.msgtype,
                                                                 typestore=self.store)
                       for connection in drive.images + drive.infos + drive.static + drive.dynamic}
        self.outputs = {name: self.writer.add_connection(topic, OUTPUT_TYPES[name], typestore=self.store)
                        for name, topic in self.topics.items()}
        self.diagnostics = self.writer.add_connection("/diagnostics", DIAGNOSTICS_TYPE, typestore=self.store)
        self.last_stamp = 0
        self._last: ProcessedFrame | None = None
        self._diagnostics_at: int | None = None

    def __enter__(self) -> "ReplayBag":
        return self

    def __exit__(self, *exc_info) -> None:
        self.writer.close()

    def copy(self, connection, timestamp: int, raw: bytes) -> None:
        self.writer.write(self.copies[connection.id], timestamp, bytes(raw))

    def write_outputs(self, processed: ProcessedFrame) -> None:
        """The frame's outputs, at the input message's time."""
        for name, message in processed.messages.items():
            self.writer.write(self.outputs[name], processed.timestamp,
                              self.store.serialize_cdr(message, OUTPUT_TYPES[name]))
        self.last_stamp = stamp_ns(processed.header)
        self._last = processed

    def write_diagnostics(self, processed: ProcessedFrame | None, summary: ReplaySummary) -> None:
        """The counts so far after ``processed`` once a second of recorded time; with None, the final counts at
        the last frame, unless they were written there already."""
        frame = processed or self._last
        if frame is None:
            return
        due = (self._diagnostics_at is None or frame.timestamp - self._diagnostics_at >= DIAGNOSTICS_PERIOD_NS
               if processed is not None else self._diagnostics_at != frame.timestamp)
        if due:
            message = _diagnostics(self.store, frame.header, summary, self.diagnostics_name)
            self.writer.write(self.diagnostics, frame.timestamp, self.store.serialize_cdr(message, DIAGNOSTICS_TYPE))
            self._diagnostics_at = frame.timestamp


DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
DIAGNOSTICS_PERIOD_NS = 1_000_000_000  # one status a second of recorded time, as the node publishes


def _diagnostics(store, header, summary: ReplaySummary, name: str):
    """A ``DiagnosticArray`` with the replay's counters so far, like the node's /diagnostics."""
    types = store.types
    values = {"frames read": summary.read, "frames processed": summary.processed, "bad inputs": summary.failed,
              "processing ms": f"{np.mean(summary.milliseconds):.1f}", "tracks": summary.tracks,
              "3d output": "on" if summary.no_3d_reason is None else f"off: {summary.no_3d_reason}",
              "anomalies located on the ground": summary.located,
              "anomalies without ground contact": summary.without_ground_contact, "mounting": summary.mounting,
              "anomalies with a hidden ground contact": summary.hidden_contact}
    values.update({f"published {topic}": count for topic, count in sorted(summary.published.items())})
    message = "replay" if summary.no_3d_reason is None else f"replay; no 3D output: {summary.no_3d_reason}"
    status = types["diagnostic_msgs/msg/DiagnosticStatus"](
        level=0, name=f"{name}: pipeline", message=message, hardware_id="offline",
        values=[types["diagnostic_msgs/msg/KeyValue"](key=k, value=str(v)) for k, v in values.items()])
    return types[DIAGNOSTICS_TYPE](header=header, status=[status])


def _guarded(messages, bag):
    """``messages`` with a storage failure midway (a truncated or corrupt file) turned into :class:`BagError`."""
    count = 0
    try:
        for item in messages:
            count += 1
            yield item
    except Exception as error:  # rosbags, sqlite3 and mcap raise many types for damaged files
        raise BagError(f"{bag}: reading failed after {count} messages ({type(error).__name__}: {error}); "
                       "the bag is truncated or corrupt") from None
