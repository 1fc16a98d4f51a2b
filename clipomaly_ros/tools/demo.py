"""``clipomaly demo``: the node as a vehicle runs it, on a synthetic drive generated on the spot.

A few seconds of a drive seen through a calibrated camera (a mattress ahead, a tyre rolling across the road; see
:func:`~clipomaly_ros.tools.scenes.perspective_drive`) are published as a camera driver publishes them (reliable,
depth 1, each with its ``camera_info``) into a real ``clipomaly_node`` process over DDS kept
on this machine. What the node publishes is printed as a planner subscribed to ``anomalies`` and ``anomalies_3d``
sees it, and its ``overlay`` images become an animated GIF.

By default the drive is paced: the next frame goes out once the node has answered the one before, so every frame
is processed and what the demo shows does not depend on how fast this machine is. A frame the node never
received (its ``/diagnostics`` counters tell) is sent again.
A camera does not wait: ``realtime=True`` publishes at the frame rate, and the node then processes only the
newest frame whenever it is free, so a slower machine answers fewer frames.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .scenes import DRIVE_CAMERA, drive_camera, perspective_drive
from ..ros.messages import stamp_ns
from ..core.interrupt import GracefulStop

NAMESPACE = "/demo"
DOMAIN_ID_MAX = 101
"""The largest ROS_DOMAIN_ID that every RMW accepts on Linux without its ports reaching the ephemeral range
(the demo draws from 1 to this; 0 is the default domain, which other ROS programs on the machine use)."""
READY_TIMEOUT_S = 300.0  # real weights can take minutes to load and to encode the naming dictionary once
ANSWER_TIMEOUT_S = 300.0  # real CLIP on a busy CPU may take a minute a frame, the toy backend well under a second
RESEND_AFTER_S = 3.0
"""A paced frame is sent again when it has not been answered after this long and the node's /diagnostics,
published after it went out, do not count it as received."""
SAMPLE_REPAIR_S = 4.0
"""How long to wait for a frame's other outputs once its ``anomalies`` are in: a reliable sample lost on the wire
comes again after the writer's next heartbeat (Fast DDS: 3 s)."""
DRAIN_TIMEOUT_S = 15.0


class DemoError(RuntimeError):
    """The demo could not run; the message says why and where the node's log is."""


@dataclass
class DemoSummary:
    """What the demo saw: frames published (``resent`` of them again, when the first copy never reached the
    node), frames the node answered, anomalies per name, the node's mean milliseconds per frame (``pipeline_ms``
    in the pipeline, ``output_ms`` building and publishing its outputs; None when unknown), files written, and
    whether Ctrl-C ended the drive early."""

    published: int = 0
    resent: int = 0
    answered: int = 0
    anomalies_by_name: dict[str, int] = field(default_factory=dict)
    pipeline_ms: float | None = None
    output_ms: float | None = None
    files: list[Path] = field(default_factory=list)
    interrupted: bool = False
    paced: bool = True


@dataclass
class AnsweredFrame:
    """One frame's outputs as they come in on three topics: ``anomalies`` (Detection2DArray), ``located``
    (Detection3DArray) and ``overlay`` (RGB uint8 ``(H, W, 3)``)."""

    anomalies: Any = None
    located: Any = None
    overlay: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return self.anomalies is not None and self.located is not None and self.overlay is not None


def local_ros_environment() -> dict[str, str]:
    """Environment that keeps DDS traffic on this machine, in a domain of its own, over shared memory
    (``clipomaly_ros/data/fastdds_local.xml``: camera-sized samples go through whole, see its comment)."""
    from importlib import resources

    return {"ROS_DOMAIN_ID": str(random.Random(os.getpid()).randint(1, DOMAIN_ID_MAX)),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "FASTRTPS_DEFAULT_PROFILES_FILE": str(resources.files("clipomaly_ros").joinpath("data/fastdds_local.xml")),
            "AMENT_PREFIX_PATH": os.environ.get("AMENT_PREFIX_PATH") or sys.prefix}


def demo_parameters(model_parameters: dict[str, Any]) -> str:
    """The node's parameter file: the toy backend unless ``model_parameters`` name real weights."""
    # reliable input: a 640x360 frame is some 40 UDP fragments, and on a loaded machine a best-effort sample
    # often loses one of them and is gone, while a reliable one is repaired
    parameters = {"backend": "toy", "inference_size": 240, "diagnostics_period": 1.0, "input_reliability": "reliable",
                  "camera_z": DRIVE_CAMERA["height_m"], "camera_pitch": DRIVE_CAMERA["pitch"]}
    parameters.update(model_parameters)
    lines = ["/**/clipomaly:", "  ros__parameters:"]
    lines += [f"    {name}: {json.dumps(value)}" for name, value in parameters.items()]
    return "\n".join(lines) + "\n"


def format_detections(message, located=None) -> list[str]:
    """One line per anomaly of a ``vision_msgs/Detection2DArray``, as a planner reads it, with where it stands
    from the ``vision_msgs/Detection3DArray`` of the same frame when given."""
    stamp = f"{message.header.stamp.sec}.{message.header.stamp.nanosec // 1_000_000:03d}"
    if not message.detections:
        return [f"stamp {stamp}  no anomalies"]
    places = places_by_id(located)
    lines = []
    for detection in message.detections:
        best = detection.results[0].hypothesis
        box = detection.bbox
        x0, y0 = box.center.position.x - box.size_x / 2, box.center.position.y - box.size_y / 2
        line = (f"stamp {stamp}  id {detection.id:>2}  {best.class_id:<12} score {best.score:.2f}  "
                f"box x {x0:.0f}..{x0 + box.size_x - 1:.0f}  y {y0:.0f}..{y0 + box.size_y - 1:.0f}")
        place = places.get(detection.id)
        if place is not None:
            side = f"{abs(place['lateral_m']):.1f} m {'left' if place['lateral_m'] >= 0 else 'right'}"
            line += f"  {place['distance_m']:.1f} m ahead, {side}, {place['width_m']:.1f} m wide"
        lines.append(line)
    return lines


def places_by_id(located) -> dict[str, dict[str, float]]:
    """Where each anomaly of a ``vision_msgs/Detection3DArray`` stands, by detection id: ``distance_m`` to its
    front along x, ``lateral_m`` (y, left positive), ``width_m`` and ``height_m``, in ``base_frame``."""
    if located is None:
        return {}
    return {detection.id: {"distance_m": detection.bbox.center.position.x - detection.bbox.size.x / 2,
                           "lateral_m": detection.bbox.center.position.y,
                           "width_m": detection.bbox.size.y, "height_m": detection.bbox.size.z}
            for detection in located.detections}


def run_demo(out_dir: Path, seconds: float = 4.0, rate_hz: float = 10.0, model_parameters: dict | None = None,
             realtime: bool = False, log: Callable[[str], None] = print) -> DemoSummary:
    """Run the node on a synthetic drive, paced (see the module docstring) unless ``realtime``; write
    ``drive.gif``, ``anomalies.jsonl``, ``demo_params.yaml`` and ``node.log`` to ``out_dir``. Ctrl-C ends the
    drive early and still writes what was answered (``summary.interrupted``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    environment = local_ros_environment()
    os.environ.update(environment)  # before rclpy is imported: this process joins the same local domain
    os.environ.pop("FASTDDS_BUILTIN_TRANSPORTS", None)  # the profile below chooses the transports alone
    params = out_dir / "demo_params.yaml"
    params.write_text(demo_parameters(model_parameters or {}))
    frames = perspective_drive(seconds=seconds, rate_hz=rate_hz)
    log(f"synthetic drive: {len(frames)} frames of {frames[0].image.shape[1]}x{frames[0].image.shape[0]} at "
        f"{rate_hz:g} Hz with camera_info (a mattress ahead, a tyre rolling across the road)")
    node_log = out_dir / "node.log"
    with open(node_log, "w") as log_file:
        # its own process group: a Ctrl-C in the terminal reaches the demo, which then stops the node itself
        node = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "-r",
                                 f"__ns:={NAMESPACE}", "--params-file", str(params)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ),
                                start_new_session=True)
        try:
            summary = _Drive(frames, rate_hz, realtime, node, node_log, log).run(out_dir)
        finally:
            if node.poll() is None:
                node.send_signal(signal.SIGINT)
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()
    summary.files += [params, node_log]
    return summary


class _Drive:
    """Publishes the frames into the node and collects what it answers (see the module docstring)."""

    def __init__(self, frames, rate_hz: float, realtime: bool, node: subprocess.Popen, node_log: Path, log):
        self.frames, self.rate_hz, self.realtime = frames, rate_hz, realtime
        self.node, self.node_log, self.log = node, node_log, log
        self.condition = threading.Condition()
        self.answered: dict[int, AnsweredFrame] = {}
        self.labels: set[str] = set()
        self.node_status: tuple[float, dict[str, str]] = (0.0, {})  # when received, the camera's values
        self.printed: set[int] = set()
        self.summary = DemoSummary(paced=not realtime)

    # what the node publishes (executor thread) -----------------------------------------------------------------
    def _store(self, message, what: str, value) -> None:
        with self.condition:
            frame = self.answered.setdefault(stamp_ns(message.header), AnsweredFrame())
            if getattr(frame, what) is None:  # a frame the node processed twice is shown once
                setattr(frame, what, value)
            self.condition.notify_all()

    def _on_labels(self, message) -> None:
        with self.condition:
            self.labels.update(entry.class_name for entry in message.class_map)

    def _on_diagnostics(self, message) -> None:
        for status in message.status:
            if status.name.startswith(f"{NAMESPACE}/clipomaly:"):
                with self.condition:
                    self.node_status = (time.monotonic(), {value.key: value.value for value in status.values})
                    self.condition.notify_all()

    # the drive ------------------------------------------------------------------------------------------------
    def run(self, out_dir: Path) -> DemoSummary:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image
        from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo

        from ..ros.messages import MessageFactory
        from ..ros.decoding import image_msg_to_rgb
        from ..ros.messages import ros_type

        rclpy.init(args=[])
        camera = rclpy.create_node("demo_camera", namespace=NAMESPACE)
        executor = SingleThreadedExecutor()
        executor.add_node(camera)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        camera.create_subscription(Detection2DArray, "anomalies", lambda m: self._store(m, "anomalies", m), reliable)
        camera.create_subscription(Detection3DArray, "anomalies_3d", lambda m: self._store(m, "located", m), reliable)
        camera.create_subscription(Image, "overlay", lambda m: self._store(m, "overlay", image_msg_to_rgb(m)),
                                   reliable)
        camera.create_subscription(LabelInfo, "label_info", self._on_labels, QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        camera.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        model, _ = drive_camera()
        info_publisher = camera.create_publisher(CameraInfo, "camera_info", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        # the newest frame only, as camera drivers publish; reliable, as many do (see demo_parameters)
        publisher = camera.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        factory = MessageFactory(ros_type, byte_array=lambda array: array.tobytes())

        def send(frame) -> None:
            header = factory.header(frame.stamp_ns // 10**9, frame.stamp_ns % 10**9, "camera")
            info_publisher.publish(CameraInfo(header=header, width=model.width, height=model.height,
                                              distortion_model="plumb_bob", d=[0.0] * 5, k=model.k.ravel().tolist()))
            publisher.publish(factory.image(header, frame.image, "rgb8"))

        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            self._wait_until_ready(publisher, camera)
            with GracefulStop(self.log) as self.stop:
                self._publish_all(send)
            self.summary.interrupted = self.stop.requested
            if self.summary.interrupted:
                self.log(f"interrupted: the drive stopped after {self.summary.published} of {len(self.frames)} "
                         "frames; writing what the node answered")
            self._node_costs()
        finally:
            executor.shutdown()
            camera.destroy_node()
            rclpy.try_shutdown()
        self._print_ready(final=True)
        return self._write(out_dir)

    def _wait_until_ready(self, publisher, camera) -> None:
        self.log(f"starting clipomaly_node in {NAMESPACE} (log: {self.node_log}) ...")
        deadline = time.monotonic() + READY_TIMEOUT_S
        # the node subscribes to its input only once the model is loaded and warmed up
        while publisher.get_subscription_count() == 0 or camera.count_publishers(f"{NAMESPACE}/anomalies") == 0:
            self._check_node()
            if time.monotonic() > deadline:
                raise DemoError(f"clipomaly_node was not ready after {READY_TIMEOUT_S:.0f} s; see {self.node_log}")
            time.sleep(0.1)
        time.sleep(0.5)  # let the output subscriptions finish matching too
        how = (f"at {self.rate_hz:g} Hz, as a camera does (frames that arrive while the node is busy are dropped)"
               if self.realtime else "paced: each frame once the node has answered the one before")
        self.log(f"node ready; publishing {NAMESPACE}/image {how}; printing {NAMESPACE}/anomalies:")

    def _check_node(self) -> None:
        if self.node.poll() is not None:
            raise DemoError(f"clipomaly_node exited with code {self.node.returncode}:\n" + _tail(self.node_log))

    def _publish_all(self, send) -> None:
        start = time.monotonic()
        for index, frame in enumerate(self.frames):
            if self.stop.requested:
                return
            if self.realtime:
                delay = start + index / self.rate_hz - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            send(frame)
            self.summary.published += 1
            if not self.realtime:
                self._await_answer(frame, send)
            self._print_ready(final=False)
        if self.realtime:
            self._drain()

    def _await_answer(self, frame, send) -> None:
        """Wait until the node has answered ``frame`` on every subscribed output; send it again when the node's
        own counters say it never arrived."""
        stamp, sent_at = frame.stamp_ns, time.monotonic()
        deadline = sent_at + ANSWER_TIMEOUT_S
        while True:
            with self.condition:
                answer = self.answered.get(stamp)
                if (answer is not None and answer.anomalies is not None) or self.stop.requested:
                    break
                status_time, values = self.node_status
                lost = (time.monotonic() - sent_at > RESEND_AFTER_S and status_time > sent_at + 1.5
                        and int(values.get("frames received", 0)) < self.summary.published + self.summary.resent)
                if not lost:
                    self.condition.wait(0.1)
            self._check_node()
            if time.monotonic() > deadline:
                raise DemoError(f"clipomaly_node did not answer the frame stamped {stamp} within "
                                f"{ANSWER_TIMEOUT_S:.0f} s; see {self.node_log}")
            if lost:
                send(frame)
                self.summary.resent += 1
                sent_at = time.monotonic()
        repair = time.monotonic() + SAMPLE_REPAIR_S
        with self.condition:
            while (stamp in self.answered and not self.answered[stamp].complete and time.monotonic() < repair
                   and not self.stop.requested):
                self.condition.wait(0.1)

    def _drain(self) -> None:
        """After a real-time drive: wait until the node has been quiet for 2 s (a frame missing one of its
        outputs a little longer, for the sample's repair)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline and self.node.poll() is None and not self.stop.requested:
            with self.condition:
                count = sum(1 for f in self.answered.values() for part in (f.anomalies, f.located, f.overlay)
                            if part is not None)
                unpaired = any(f.anomalies is not None and f.located is None for f in self.answered.values())
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            if time.monotonic() - quiet_since > (SAMPLE_REPAIR_S if unpaired else 2.0):
                break
            time.sleep(0.1)

    def _node_costs(self) -> None:
        """The node's mean milliseconds per frame, from a /diagnostics report sent after the last answer."""
        asked = time.monotonic()
        with self.condition:
            while self.node_status[0] < asked and time.monotonic() < asked + 3.0 and self.node.poll() is None:
                self.condition.wait(0.1)
            values = self.node_status[1]
        for key, attribute in (("processing ms", "pipeline_ms"), ("output ms", "output_ms")):
            if key in values:
                setattr(self.summary, attribute, float(values[key]))

    def _print_ready(self, final: bool) -> None:
        """Print, in stamp order, the frames whose 2D and 3D halves are in (at the end, every answered frame)."""
        with self.condition:
            ready = sorted(stamp for stamp, frame in self.answered.items() if stamp not in self.printed
                           and frame.anomalies is not None and (final or frame.located is not None
                                                                or not self.realtime))
            lines = []
            for stamp in ready:
                self.printed.add(stamp)
                lines += format_detections(self.answered[stamp].anomalies, self.answered[stamp].located)
        for line in lines:
            self.log(line)

    def _write(self, out_dir: Path) -> DemoSummary:
        from ..core.method.overlay import class_colour

        summary = self.summary
        with self.condition:
            answered = {stamp: frame for stamp, frame in sorted(self.answered.items())
                        if frame.anomalies is not None}
            labels = sorted(self.labels)
        summary.answered = len(answered)
        for frame in answered.values():
            for detection in frame.anomalies.detections:
                name = detection.results[0].hypothesis.class_id
                summary.anomalies_by_name[name] = summary.anomalies_by_name.get(name, 0) + 1
        records = out_dir / "anomalies.jsonl"
        records.write_text("".join(json.dumps(_frame_record(frame)) + "\n" for frame in answered.values()))
        summary.files.append(records)
        overlays = {stamp: frame.overlay for stamp, frame in answered.items() if frame.overlay is not None}
        if overlays:
            stamps = sorted(overlays)
            # each picture stays up until the next processed frame's capture time: the GIF plays in real time
            durations = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])] + [1000.0 / self.rate_hz]
            summary.files.append(write_gif(out_dir / "drive.gif", [overlays[s] for s in stamps], durations,
                                           exact_colours=[class_colour(name) for name in labels]))
        return summary


def _frame_record(frame: AnsweredFrame) -> dict:
    """A frame's line of ``anomalies.jsonl``: its stamp, and per anomaly its track id, name, score and box in
    pixels, and where it stands in metres (``distance_m``, ``lateral_m``, ``width_m``, ``height_m`` in
    ``base_frame``) when it was located."""
    message = frame.anomalies
    places = places_by_id(frame.located)
    return {"stamp": {"sec": message.header.stamp.sec, "nanosec": message.header.stamp.nanosec},
            "anomalies": [{"id": d.id, "name": d.results[0].hypothesis.class_id,
                           "score": round(d.results[0].hypothesis.score, 4),
                           "bbox_center": [d.bbox.center.position.x, d.bbox.center.position.y],
                           "bbox_size": [d.bbox.size_x, d.bbox.size_y],
                           **{key: round(value, 3) for key, value in places.get(d.id, {}).items()}}
                          for d in message.detections]}


def write_gif(path: Path, images: list[np.ndarray], durations_ms: list[float],
              exact_colours: list[tuple[int, int, int]] = ()) -> Path:
    """An animated, looping GIF of RGB uint8 ``images``, each shown for its ``durations_ms``.

    A GIF holds 256 colours. All frames share one palette: ``exact_colours`` (the legend's class colours) kept as
    they are, then an adaptive palette of the frames for everything else, so a legend swatch shows exactly the
    colour of its class."""
    from PIL import Image

    exact = list(dict.fromkeys(tuple(int(v) for v in colour) for colour in exact_colours))[:128]
    free = 256 - len(exact)
    sample = np.concatenate(images[:: max(1, len(images) // 16)], axis=0)  # the adaptive part sees the whole drive
    adaptive = Image.fromarray(sample).quantize(colors=free, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    colours = adaptive.getpalette()[: 3 * free]
    colours += [0] * (3 * free - len(colours))
    colours += [value for colour in exact for value in colour]
    pictures = []
    for image in images:
        indices = np.array(Image.fromarray(image).quantize(palette=adaptive, dither=Image.Dither.NONE))
        # Pillow maps colours to a palette through a cache of nearby colours, which is not exact: the exact ones
        # get their own entries here, pixel by pixel
        for offset, colour in enumerate(exact):
            indices[(image == colour).all(axis=-1)] = free + offset
        picture = Image.frombytes("P", (image.shape[1], image.shape[0]), indices.astype(np.uint8).tobytes())
        picture.putpalette(colours)
        pictures.append(picture)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[round(d) for d in durations_ms],
                     loop=0, optimize=False)
    return path


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
