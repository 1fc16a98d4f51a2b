"""The node's topics: the image, camera_info and transform subscriptions made at activate and removed at
deactivate, the per-camera publishers made at configure, and the ``~/enable`` service."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage
from tf2_msgs.msg import TFMessage

from ..core.config import ConfigError
from .image_input import ImageInput
from .messages import OPTIONAL_OUTPUTS, OUTPUT_TYPES, PRIVATE_OUTPUTS, ros_type
from .transforms import add_transforms

PLANNER_OUTPUTS = ("anomalies", "anomalies_on_road", "anomalies_3d", "anomaly_markers", "anomaly_points",
                   "anomalies_objects")
"""Small per-frame messages a planner acts on: their publishers keep more history than the images'."""


class NodeTopics:
    """The topic side of :class:`~clipomaly_ros.ros.node.ClipomalyNode` (a mixin of it)."""

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscriptions to the images, camera_info and the robot's transforms; from now on frames are
        processed and published."""
        compressed = self.input_type is CompressedImage
        for name, camera in self.cameras.items():
            info_topic = self.resolve_topic_name(f"{camera.prefix}camera_info")
            self.camera_info_subscriptions[name] = self.create_subscription(
                CameraInfo, info_topic, camera.camera_info_arrived,
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
            topic = f"{camera.prefix}image/compressed" if compressed else f"{camera.prefix}image"
            self.image_inputs[name] = ImageInput(
                self, self.input_type, self.resolve_topic_name(topic), self.input_reliability,
                lambda msg, camera=camera: self._on_image(camera, msg), self.get_logger().info)
            camera.image_input = self.image_inputs[name]
        # as tf2's listener reads them: /tf_static latched, /tf reliable
        self.transform_subscriptions = [
            self.create_subscription(TFMessage, "/tf_static", self._on_transforms,
                                     QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                                reliability=ReliabilityPolicy.RELIABLE)),
            self.create_subscription(TFMessage, "/tf", self._on_transforms,
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))]
        self.topic_check_timer = self.create_timer(2.0, self._check_input_topics)
        self.active = True
        topics = ", ".join(f"{image_input.topic} ({image_input.qos_reason})"
                           for image_input in self.image_inputs.values())
        self.get_logger().info(f"active: listening on {topics}, {self.input_transport}")
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for image_input in self.image_inputs.values():
            image_input.destroy()
        for camera in getattr(self, "cameras", {}).values():
            camera.image_input = None
        for subscription in [*self.camera_info_subscriptions.values(), *self.transform_subscriptions]:
            self.destroy_subscription(subscription)
        self.image_inputs, self.camera_info_subscriptions, self.transform_subscriptions = {}, {}, []
        if self.topic_check_timer is not None:
            self.destroy_timer(self.topic_check_timer)
            self.topic_check_timer = None

    def _on_transforms(self, message) -> None:
        problems = add_transforms(self.frame_tree, message)
        if problems:
            self.transforms_rejected += len(problems)
            self.get_logger().warning(f"left out {len(problems)} transform(s): {'; '.join(problems[:3])}",
                                      throttle_duration_sec=10.0)

    def _create_outputs(self, prefix: str) -> dict:
        # reliable, with room for a few frames: a lost fragment is re-sent only after the writer's next
        # heartbeat, and a shorter history would already have let the sample go by then
        publishers = {}
        for topic, type_name in OUTPUT_TYPES.items():
            if topic == "label_info":
                continue
            try:
                message_type = ros_type(type_name)
            except (ImportError, AttributeError) as error:
                if topic not in OPTIONAL_OUTPUTS:
                    raise ConfigError(f"the message type {type_name} of output '{topic}' is not installed "
                                      f"({error}): install its package") from None
                if topic not in self._outputs_off:
                    self._outputs_off.add(topic)
                    self.get_logger().warning(f"output '{topic}' is off: its message type {type_name} is not "
                                              f"installed ({type(error).__name__}: {error}); install "
                                              f"{type_name.split('/')[0]} to have it")
                continue
            name = ("~/" if topic in PRIVATE_OUTPUTS else "") + prefix + topic
            publishers[topic] = self.create_publisher(message_type, name,
                                                      10 if topic in PLANNER_OUTPUTS else 5)
        # latched: transient local with a depth of 1, so a late subscriber's first message is the mapping in force
        # now, never an older vocabulary
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        publishers["label_info"] = self.create_publisher(ros_type(OUTPUT_TYPES["label_info"]), prefix + "label_info",
                                                         latched)
        return publishers

    def _on_enable(self, request, response):
        self.enabled = bool(request.data)
        if not request.data:
            for name in self.frames.clear():
                self.cameras[name].count("skipped_paused")
            self.watchdog.progress()
        response.success = True
        response.message = "processing resumed" if request.data else "processing paused (model stays loaded)"
        self.get_logger().info(response.message)
        return response
