"""``clipomaly demo``: the node as a vehicle runs it, on a synthetic drive generated on the spot.

A few seconds of a drive seen through a calibrated camera (a mattress ahead, a tyre rolling across the road; see
:func:`~clipomaly_ros.core.scenes.perspective_drive`) are published as a camera driver would publish them, the
images best effort at their frame rate with their ``camera_info``, into a real ``clipomaly_node`` process over DDS
kept on this machine. What the node publishes is printed as a planner subscribed to ``anomalies`` and
``anomalies_3d`` sees it, and its ``overlay`` images become an animated GIF.
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

from ..core.scenes import DRIVE_CAMERA, drive_camera, perspective_drive

NAMESPACE = "/demo"
READY_TIMEOUT_S = 300.0  # real weights can take minutes to load and to encode the naming dictionary once
DRAIN_TIMEOUT_S = 15.0


class DemoError(RuntimeError):
    """The demo could not run; the message says why and where the node's log is."""


@dataclass
class DemoSummary:
    """What the demo saw: frames published, frames the node answered, anomalies per name, files written."""

    published: int = 0
    answered: int = 0
    anomalies_by_name: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def local_ros_environment() -> dict[str, str]:
    """Environment that keeps DDS traffic on this machine, in a domain of its own."""
    return {"ROS_DOMAIN_ID": str(random.Random(os.getpid()).randint(100, 200)),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            # Fast DDS shared memory stalled after bursts of large images on these machines; UDP on loopback does not
            "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
            "AMENT_PREFIX_PATH": os.environ.get("AMENT_PREFIX_PATH") or sys.prefix}


def demo_parameters(model_parameters: dict[str, Any]) -> str:
    """The node's parameter file: the toy backend unless ``model_parameters`` name real weights."""
    parameters = {"backend": "toy", "inference_size": 240, "diagnostics_period": 1.0,
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
    places = {detection.id: detection.bbox for detection in located.detections} if located is not None else {}
    lines = []
    for detection in message.detections:
        best = detection.results[0].hypothesis
        box = detection.bbox
        x0, y0 = box.center.position.x - box.size_x / 2, box.center.position.y - box.size_y / 2
        line = (f"stamp {stamp}  id {detection.id:>2}  {best.class_id:<12} score {best.score:.2f}  "
                f"box x {x0:.0f}..{x0 + box.size_x - 1:.0f}  y {y0:.0f}..{y0 + box.size_y - 1:.0f}")
        place = places.get(detection.id)
        if place is not None:
            side = f"{abs(place.center.position.y):.1f} m {'left' if place.center.position.y >= 0 else 'right'}"
            line += (f"  {place.center.position.x - place.size.x / 2:.1f} m ahead, {side}, "
                     f"{place.size.y:.1f} m wide")
        lines.append(line)
    return lines


def run_demo(out_dir: Path, seconds: float = 4.0, rate_hz: float = 10.0, model_parameters: dict | None = None,
             log: Callable[[str], None] = print) -> DemoSummary:
    """Run the node on a synthetic drive; write ``drive.gif``, ``anomalies.jsonl`` and ``node.log`` to
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    environment = local_ros_environment()
    os.environ.update(environment)  # before rclpy is imported: this process joins the same local domain
    params = out_dir / "demo_params.yaml"
    params.write_text(demo_parameters(model_parameters or {}))
    frames = perspective_drive(seconds=seconds, rate_hz=rate_hz)
    log(f"synthetic drive: {len(frames)} frames of {frames[0].image.shape[1]}x{frames[0].image.shape[0]} at "
        f"{rate_hz:g} Hz with camera_info (a mattress ahead, a tyre rolling across the road)")
    node_log = out_dir / "node.log"
    with open(node_log, "w") as log_file:
        node = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.node", "--ros-args", "-r",
                                 f"__ns:={NAMESPACE}", "--params-file", str(params)],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **environment})
        try:
            summary = _drive(frames, rate_hz, node, node_log, out_dir, log)
        finally:
            if node.poll() is None:
                node.send_signal(signal.SIGINT)
                try:
                    node.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.kill()
    summary.files.append(node_log)
    return summary


def _drive(frames, rate_hz: float, node: subprocess.Popen, node_log: Path, out_dir: Path, log) -> DemoSummary:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    from ..ros.messages import MessageFactory, image_msg_to_rgb, stamp_ns
    from ..ros.node import ros_type

    rclpy.init(args=[])
    camera = rclpy.create_node("demo_camera", namespace=NAMESPACE)
    executor = SingleThreadedExecutor()
    executor.add_node(camera)
    lock = threading.Lock()
    detections: list = []
    overlays: dict[int, np.ndarray] = {}
    last_output = [time.monotonic()]

    # a frame's 2D and 3D detections come on two topics: each frame is printed once both are in
    flat: dict[int, Any] = {}
    placed: dict[int, Any] = {}

    def print_frame(stamp: int) -> None:
        for line in format_detections(flat.pop(stamp), placed.pop(stamp, None)):
            log(line)

    def on_anomalies(message):
        stamp = stamp_ns(message.header)
        with lock:
            detections.append(message)
            last_output[0] = time.monotonic()
            flat[stamp] = message
            if stamp in placed:
                print_frame(stamp)

    def on_located(message):
        stamp = stamp_ns(message.header)
        with lock:
            placed[stamp] = message
            last_output[0] = time.monotonic()
            if stamp in flat:
                print_frame(stamp)

    def on_overlay(message):
        stamp = stamp_ns(message.header)
        with lock:
            overlays[stamp] = image_msg_to_rgb(message)
            last_output[0] = time.monotonic()

    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    camera.create_subscription(Detection2DArray, "anomalies", on_anomalies, reliable)
    camera.create_subscription(Image, "overlay", on_overlay, reliable)
    camera.create_subscription(Detection3DArray, "anomalies_3d", on_located, reliable)
    model, _ = drive_camera()
    info_publisher = camera.create_publisher(CameraInfo, "camera_info", QoSProfile(
        depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    # as camera drivers publish: best effort, the newest frame only
    publisher = camera.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    factory = MessageFactory(ros_type, byte_array=lambda array: array.tobytes())
    summary = DemoSummary()
    try:
        log(f"starting clipomaly_node in {NAMESPACE} (log: {node_log}) ...")
        deadline = time.monotonic() + READY_TIMEOUT_S
        # the node subscribes to its input only once the model is loaded and warmed up
        while publisher.get_subscription_count() == 0 or camera.count_publishers(f"{NAMESPACE}/anomalies") == 0:
            if node.poll() is not None:
                raise DemoError(f"clipomaly_node exited with code {node.returncode} before it was ready:\n"
                                + _tail(node_log))
            if time.monotonic() > deadline:
                raise DemoError(f"clipomaly_node was not ready after {READY_TIMEOUT_S:.0f} s; see {node_log}")
            time.sleep(0.1)
        time.sleep(0.5)  # let the output subscriptions finish matching too
        log(f"node ready; publishing {NAMESPACE}/image at {rate_hz:g} Hz, printing {NAMESPACE}/anomalies:")
        start = time.monotonic()
        for index, frame in enumerate(frames):
            delay = start + index / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            header = factory.header(frame.stamp_ns // 10**9, frame.stamp_ns % 10**9, "camera")
            info_publisher.publish(CameraInfo(header=header, width=model.width, height=model.height,
                                              distortion_model="plumb_bob", d=[0.0] * 5, k=model.k.ravel().tolist()))
            publisher.publish(factory.image(header, frame.image, "rgb8"))
            summary.published += 1
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            with lock:
                quiet = time.monotonic() - last_output[0]
                unpaired = bool(flat)
            # a sample lost on the wire comes again after the writer's next heartbeat (Fast DDS: 3 s), so a
            # frame still missing its 3D half is waited for, up to the drain deadline
            if (quiet > 2.0 and not unpaired) or node.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        executor.shutdown()
        camera.destroy_node()
        rclpy.try_shutdown()
    with lock:
        for stamp in sorted(flat):  # frames whose 3D output never came
            print_frame(stamp)
        summary.answered = len(detections)
        for message in detections:
            for detection in message.detections:
                name = detection.results[0].hypothesis.class_id
                summary.anomalies_by_name[name] = summary.anomalies_by_name.get(name, 0) + 1
        records = out_dir / "anomalies.jsonl"
        records.write_text("".join(json.dumps(_detections_record(m)) + "\n" for m in detections))
        summary.files.append(records)
        if overlays:
            stamps = sorted(overlays)
            # each picture stays up until the next processed frame's capture time: the GIF plays in real time
            durations = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])] + [1000.0 / rate_hz]
            summary.files.append(write_gif(out_dir / "drive.gif", [overlays[s] for s in stamps], durations))
    return summary


def _detections_record(message) -> dict:
    return {"stamp": {"sec": message.header.stamp.sec, "nanosec": message.header.stamp.nanosec},
            "anomalies": [{"id": d.id, "name": d.results[0].hypothesis.class_id,
                           "score": round(d.results[0].hypothesis.score, 4),
                           "bbox_center": [d.bbox.center.position.x, d.bbox.center.position.y],
                           "bbox_size": [d.bbox.size_x, d.bbox.size_y]} for d in message.detections]}


def write_gif(path: Path, images: list[np.ndarray], durations_ms: list[float]) -> Path:
    """An animated, looping GIF of RGB uint8 ``images``, each shown for its ``durations_ms``."""
    from PIL import Image

    pictures = [Image.fromarray(image) for image in images]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[round(d) for d in durations_ms],
                     loop=0, optimize=False)
    return path


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
