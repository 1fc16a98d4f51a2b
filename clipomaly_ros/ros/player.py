"""``clipomaly play``: publish a bag's messages with rclpy at their recorded timing (where rosbag2 is absent).

Messages go out as the recorded CDR bytes, so no message is decoded and re-encoded on the way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..core.interrupt import GracefulStop
from .bags import BagError, open_bag


def play(bag: str | Path, topics: Sequence[str] | None = None, rate: float = 1.0, loop: bool = False,
         remap: dict[str, str] | None = None, wait_for_subscribers: float = 3.0, reliable: bool = False,
         log=print, stop: GracefulStop | None = None) -> dict[str, int]:
    """Publish ``bag`` (all topics, or ``topics``, named as recorded) at ``rate`` x the recorded speed, each
    under its ``remap`` name if it has one; returns messages per published topic name.

    Playback starts once every topic has a subscriber, or after ``wait_for_subscribers`` seconds. Messages go out
    best effort, as camera drivers publish, unless ``reliable``. It ends early, within 0.1 s and between two
    messages, once ``stop`` is requested (SIGINT, SIGTERM): rclpy's own signal handlers are off, as they would
    shut the context down under a publish in flight."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    if rate <= 0:
        raise ValueError(f"--rate must be positive, got {rate}")
    remap = remap or {}
    published: dict[str, int] = {}
    with open_bag(bag) as reader:
        connections = [c for c in reader.connections if not topics or c.topic in topics]
        missing = set(topics or ()) - {c.topic for c in connections}
        if missing:
            raise BagError(f"topics not in the bag: {', '.join(sorted(missing))}")
        stopped = (lambda: stop.requested) if stop is not None else (lambda: False)
        # not sys.argv: the command line's own arguments are no ROS arguments
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("clipomaly_player")
        try:
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            publishers = _publishers(node, connections, remap, qos, log)
            _wait_for_subscribers(publishers, wait_for_subscribers, stopped, log)
            while not stopped():
                _publish_once(reader, [c for c in connections if c.id in publishers], publishers, rate, stopped,
                              published)
                if not loop or not publishers:
                    break
            time.sleep(0.2)  # let the last messages leave before the node goes
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    return published


def _publishers(node, connections, remap: dict[str, str], qos, log) -> dict:
    """connection id -> (published topic name, publisher), for the connections whose message type is installed."""
    from .messages import ros_type

    publishers = {}
    for connection in connections:
        try:
            message_type = ros_type(connection.msgtype)
        except (ImportError, AttributeError):
            log(f"skipping {connection.topic}: message type {connection.msgtype} is not installed")
            continue
        name = remap.get(connection.topic, connection.topic)
        publishers[connection.id] = (name, node.create_publisher(message_type, name, qos))
    return publishers


def _wait_for_subscribers(publishers: dict, seconds: float, stopped, log) -> None:
    """Messages sent before a subscriber has matched are lost: wait (at most ``seconds``) until every topic has
    one, and say which have none."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopped() and not all(
            publisher.get_subscription_count() for _, publisher in publishers.values()):
        time.sleep(0.05)
    lonely = sorted(topic for topic, publisher in publishers.values() if not publisher.get_subscription_count())
    if lonely:
        log(f"no subscriber after {seconds:.1f} s for: {', '.join(lonely)}; publishing anyway")
    time.sleep(0.2)  # matching is seen by the publisher slightly before the subscriber is ready


def _publish_once(reader, connections, publishers: dict, rate: float, stopped, published: dict[str, int]) -> None:
    """One pass over the bag at ``rate`` x the recorded timing, counting into ``published``; ends between two
    messages (within 0.1 s) once ``stopped()``."""
    start_wall, start_bag = time.monotonic(), None
    for connection, timestamp, raw in reader.messages(connections=connections):
        start_bag = timestamp if start_bag is None else start_bag
        due = start_wall + (timestamp - start_bag) / 1e9 / rate
        while not stopped() and time.monotonic() < due:
            time.sleep(min(0.1, due - time.monotonic()))
        if stopped():
            return
        topic, publisher = publishers[connection.id]
        publisher.publish(bytes(raw))
        published[topic] = published.get(topic, 0) + 1
