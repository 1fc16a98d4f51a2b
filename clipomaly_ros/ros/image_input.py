"""One camera's image subscription, with its reliability matched to the publishers on the topic.

A best-effort reader matches every writer. A reliable reader matches reliable writers only, and only a reliable
reader has lost fragments of a large frame sent again. So with ``input_reliability: auto`` the node reads best
effort until every publisher on the topic is reliable, then reliable.

The switch is made when a publisher matches (the subscription's *matched* event), not at the next poll, so a
reliable camera that starts after the node loses no frame:

- make before break: the new subscription is created first, and the old one is destroyed only once the new one
  has matched the publishers;
- while both live, a frame that both deliver is passed on once (same stamp and frame);
- the graph that says which QoS the publishers use can lag behind the match, so it is read again every 50 ms,
  for up to 2 s, until it shows them.

A reliable reader never hears of a best-effort publisher that comes later. That direction is left to the node's
2 s poll (:meth:`ImageInput.rematch`).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import QoSProfile, ReliabilityPolicy

from .topic_catalogue import image_input_entry

GRAPH_RECHECK_S = 0.05
GRAPH_LAG_S = 2.0
"""How long the graph may lag behind a matched publisher before the poll is left to catch up."""


def matching_reliability(setting: str, publishers: list) -> tuple[ReliabilityPolicy, str]:
    """The reliability to read a topic with, and why: ``setting``'s, or with ``auto`` the ``publishers``'
    (``rclpy`` TopicEndpointInfo). Reliable only when every publisher is: a best-effort reader takes both kinds,
    a reliable one only reliable writers."""
    if setting != "auto":
        policy = ReliabilityPolicy.RELIABLE if setting == "reliable" else ReliabilityPolicy.BEST_EFFORT
        return policy, f"{setting} (set)"
    if not publishers:
        return ReliabilityPolicy.BEST_EFFORT, "best_effort (auto: no publisher yet)"
    if all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers):
        return ReliabilityPolicy.RELIABLE, f"reliable (auto: {len(publishers)} reliable publisher(s))"
    return ReliabilityPolicy.BEST_EFFORT, f"best_effort (auto: {len(publishers)} publisher(s), not all reliable)"


class ImageInput:
    """The image subscription of one camera on ``topic`` (the catalogue's depth, 1: only the newest frame matters),
    passing each frame once to ``on_image(message)``. ``reliability`` is the ``input_reliability`` setting;
    ``log(text)`` says when the reliability changes. ``qos_reason`` says what the reader uses now and why
    (/diagnostics)."""

    def __init__(self, node: Any, message_type: type, topic: str, reliability: str,
                 on_image: Callable[[Any], None], log: Callable[[str], None]):
        self.node = node
        self.message_type = message_type
        self.depth = image_input_entry(message_type.__name__ == "CompressedImage").depth
        self.topic = topic
        self.reliability = reliability
        self.on_image = on_image
        self.log = log
        self.subscription = None
        self.retiring = None
        """The subscription being replaced: it lives until the new one has matched the publishers."""
        self.retiring_since = 0.0
        self.qos_reason = "not subscribed yet"
        self._recent: collections.deque = collections.deque(maxlen=16)
        self._graph_timer = None
        self._graph_deadline = 0.0
        self._matched = 0
        """Publishers matched to the current reader, from its last matched event."""
        self.rematch()

    @property
    def topic_name(self) -> str:
        return self.topic

    def rematch(self) -> None:
        """Read the publishers' QoS from the graph and subscribe again when the reliability should change."""
        publishers = self.node.get_publishers_info_by_topic(self.topic)
        policy, reason = matching_reliability(self.reliability, publishers)
        self.qos_reason = reason
        if self.retiring is not None and time.monotonic() - self.retiring_since > GRAPH_LAG_S:
            self._retire()  # the new reader never matched (its publisher left): nothing more to wait for
        if self.subscription is not None and self.subscription.qos_profile.reliability == policy:
            return
        previous = self.subscription
        self.subscription = self._subscribe(policy, len(publishers))
        self._matched = 0
        if previous is not None:
            if self.retiring is not None:
                self.node.destroy_subscription(self.retiring)
            self.retiring, self.retiring_since = previous, time.monotonic()
            self.log(f"{self.topic}: now subscribed {reason}")

    def destroy(self) -> None:
        for subscription in (self.subscription, self.retiring):
            if subscription is not None:
                self.node.destroy_subscription(subscription)
        self.subscription = self.retiring = None
        self._stop_graph_timer()

    def _subscribe(self, policy: ReliabilityPolicy, publishers: int):
        holder: list = []
        callbacks = SubscriptionEventCallbacks(
            matched=lambda status: self._on_matched(holder[0] if holder else None, status, publishers))
        subscription = self.node.create_subscription(self.message_type, self.topic, self._deliver,
                                                     QoSProfile(depth=self.depth, reliability=policy),
                                                     event_callbacks=callbacks)
        holder.append(subscription)
        return subscription

    def _deliver(self, message: Any) -> None:
        header = message.header
        key = (header.stamp.sec, header.stamp.nanosec, header.frame_id)
        if self.retiring is not None and key in self._recent:
            return  # the same frame from the other reader while both live
        self._recent.append(key)
        self.on_image(message)

    def _on_matched(self, subscription, status, publishers_when_made: int) -> None:
        if subscription is self.subscription:
            self._matched = status.current_count
        if subscription is self.subscription and self.retiring is not None \
                and status.current_count >= max(1, publishers_when_made):
            self._retire()
        if status.current_count_change > 0 and subscription is self.subscription:
            self.rematch()
            if len(self.node.get_publishers_info_by_topic(self.topic)) < status.current_count:
                self._watch_graph()  # the graph has not heard of the new publisher yet

    def _retire(self) -> None:
        if self.retiring is not None:
            self.node.destroy_subscription(self.retiring)
            self.retiring = None

    def _watch_graph(self) -> None:
        self._graph_deadline = time.monotonic() + GRAPH_LAG_S
        if self._graph_timer is None:
            self._graph_timer = self.node.create_timer(GRAPH_RECHECK_S, self._recheck_graph)

    def _recheck_graph(self) -> None:
        self.rematch()
        if time.monotonic() > self._graph_deadline or \
                len(self.node.get_publishers_info_by_topic(self.topic)) >= self._matched:
            self._stop_graph_timer()

    def _stop_graph_timer(self) -> None:
        if self._graph_timer is not None:
            self.node.destroy_timer(self._graph_timer)
            self._graph_timer = None
