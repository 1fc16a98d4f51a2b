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

from ..core.planning import AnomalyFollower
from ..core.interrupt import GracefulStop
from ..ros.bags import (BagError, camera_info_connections, image_connections, open_bag, transform_connections,
                        typestore_with_built_msgs)
from ..ros.autoware import autoware_style
from ..ros.messages import ON_DEMAND_OUTPUTS, OUTPUT_TYPES, MessageFactory, picture_messages, stamp_ns
from ..ros.decoding import BadRecordedFrame, decode_recorded, deserialize_recorded
from ..ros.transforms import MountingFinder, add_transforms, recorded_static_transforms


@dataclass
class ReplaySummary:
    """What a replay did: frame counts, per-frame milliseconds of the pipeline, and failures by reason."""

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


def replay(pipeline, in_bag: str | Path, out_bag: str | Path, image_topic: str | None = None,
           namespace: str = "", storage: str = "mcap", overlay: bool = True, progress: bool = True,
           log=lambda message: print(message, file=sys.stderr), camera_info_topic: str | None = None) -> ReplaySummary:
    """Segment every frame of ``image_topic`` in ``in_bag`` and write ``out_bag`` (see the module docstring);
    ``camera_info_topic`` overrides the image topic's sibling ``camera_info``. Ctrl-C or SIGTERM stops it after
    the current frame with ``out_bag`` closed and readable (``summary.interrupted_at``)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    out_bag = Path(out_bag)
    if out_bag.exists():
        raise BagError(f"{out_bag} exists already: choose a new output path")
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be mcap or sqlite3, got {storage!r}")
    autoware_style(pipeline.config)  # an unknown dictionary section in autoware_labels fails here, not mid-bag
    store = typestore_with_built_msgs()
    factory = MessageFactory(store.types)
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    topics = {name: f"{prefix}/{name}" for name in OUTPUT_TYPES if overlay or name not in ON_DEMAND_OUTPUTS}
    summary = ReplaySummary()
    threshold = pipeline.config.uncertainty_threshold
    with GracefulStop(log) as stop, open_bag(in_bag) as reader:
        connections = image_connections(reader, image_topic)
        info_connections, info_topic = camera_info_connections(reader, connections[0].topic, camera_info_topic)
        follower = AnomalyFollower(pipeline.name_embeddings, info_topic)
        static, dynamic = transform_connections(reader)
        tf_connections = static + dynamic
        tree = recorded_static_transforms(reader, static, log)
        finder = MountingFinder(tree, "the bag's /tf_static and /tf")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(out_bag, version=9, storage_plugin=plugin)
        writer.open()
        try:
            copies = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store)
                      for c in connections + info_connections + tf_connections}
            outputs = {name: writer.add_connection(topic, OUTPUT_TYPES[name], typestore=store)
                       for name, topic in topics.items()}
            diagnostics_connection = writer.add_connection("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
                                                           typestore=store)
            published_labels, last_diagnostics, last_stamp = None, None, 0
            last_header, last_processed_at = None, None
            summary.total = sum(c.msgcount for c in connections)
            messages = reader.messages(connections=connections + info_connections + tf_connections)
            for connection, timestamp, raw in tqdm(_guarded(messages, in_bag), unit="message",
                                                   total=sum(c.msgcount for c in connections + info_connections
                                                             + tf_connections),
                                                   desc="replaying", disable=not progress):
                if stop.requested:
                    summary.interrupted_at = last_stamp
                    break
                writer.write(copies[connection.id], timestamp, bytes(raw))
                if connection in info_connections:
                    follower.set_camera_info(reader.deserialize(raw, connection.msgtype))
                    continue
                if connection in tf_connections:
                    if connection in dynamic:
                        for problem in add_transforms(tree, reader.deserialize(raw, connection.msgtype)):
                            log(f"left out a recorded {problem}")
                    continue
                summary.read += 1
                try:
                    message = deserialize_recorded(reader, raw, connection.msgtype)
                    image = decode_recorded(message, connection.msgtype)
                except BadRecordedFrame as error:
                    summary.failed += 1
                    reason = f"frame {summary.read} at {timestamp} ns on {connection.topic}: {error}"
                    summary.failures.append(reason)
                    log(f"skipped {reason}")
                    continue
                result = pipeline(image)
                summary.processed += 1
                summary.milliseconds.append(result.timings_ms["total"])
                header = message.header
                last_stamp = stamp_ns(header)
                config, summary.mounting = finder.find(header.frame_id, pipeline.config)
                frame = follower.update(result, last_stamp, config)
                outputs_of_frame = factory.result_messages(header, result, frame, autoware=autoware_style(config))
                if (tuple(result.labels), result.known_count) != published_labels:
                    outputs_of_frame["label_info"] = factory.label_info(header, result.labels, threshold)
                    published_labels = (tuple(result.labels), result.known_count)
                if overlay:
                    outputs_of_frame.update(picture_messages(factory, header, image, result, ON_DEMAND_OUTPUTS,
                                                                 frame.published))
                for name, output in outputs_of_frame.items():
                    writer.write(outputs[name], timestamp, store.serialize_cdr(output, OUTPUT_TYPES[name]))
                summary.published.update(list(outputs_of_frame))
                summary.tracks = follower.tracker.issued
                summary.located = follower.counters.located
                summary.without_ground_contact = follower.counters.without_ground_contact
                summary.hidden_contact = follower.counters.hidden_contact
                summary.no_3d_reason = follower.no_3d_reason
                if last_diagnostics is None or timestamp - last_diagnostics >= DIAGNOSTICS_PERIOD_NS:
                    diagnostics = _diagnostics(store, header, summary, f"{prefix}/clipomaly")
                    writer.write(diagnostics_connection, timestamp,
                                 store.serialize_cdr(diagnostics, "diagnostic_msgs/msg/DiagnosticArray"))
                    last_diagnostics = timestamp
                last_header, last_processed_at = header, timestamp
            if summary.processed and last_diagnostics != last_processed_at:  # the final counts, at the last frame
                writer.write(diagnostics_connection, last_processed_at, store.serialize_cdr(
                    _diagnostics(store, last_header, summary, f"{prefix}/clipomaly"),
                    "diagnostic_msgs/msg/DiagnosticArray"))
        finally:
            # also after an error or a second Ctrl-C: the bag gets its index and metadata.yaml and keeps the
            # frames written so far
            writer.close()
    return summary


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
    return types["diagnostic_msgs/msg/DiagnosticArray"](header=header, status=[status])


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
