"""The node's topics: the image, camera_info and transform subscriptions made at activate and removed at
deactivate, the per-camera publishers made at configure, and the ``~/enable`` service."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage
from tf2_msgs.msg import TFMessage

from ..core.config import ConfigError
from .image_input import ImageInput
from .messages import ros_type
from .topic_catalogue import CAMERA_INFO, TF, TF_STATIC, Topic, camera_outputs, catalogue_entry, image_input_entry
from .transforms import add_transforms


def qos_profile(entry: Topic) -> QoSProfile:
    """The QoS the catalogue gives ``entry`` (its image input, whose reliability follows a setting, excepted)."""
    return QoSProfile(depth=entry.depth,
                      reliability={"reliable": ReliabilityPolicy.RELIABLE,
                                   "best_effort": ReliabilityPolicy.BEST_EFFORT}[entry.reliability],
                      durability={"volatile": DurabilityPolicy.VOLATILE,
                                  "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}[entry.durability])


def catalogue_qos(name: str) -> QoSProfile:
    """The QoS of the catalogue's entry called ``name``."""
    return qos_profile(catalogue_entry(name))


class NodeTopics:
    """The topic side of :class:`~clipomaly_ros.ros.node.ClipomalyNode` (a mixin of it)."""

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscriptions to the images, camera_info and the robot's transforms; from now on frames are
        processed and published."""
        compressed = self.input_type is CompressedImage
        for name, camera in self.cameras.items():
            info_topic = self.resolve_topic_name(f"{camera.prefix}{CAMERA_INFO}")
            self.camera_info_subscriptions[name] = self.create_subscription(
                CameraInfo, info_topic, camera.camera_info_arrived, qos_profile(catalogue_entry(CAMERA_INFO)))
            topic = f"{camera.prefix}{image_input_entry(compressed).name}"
            self.image_inputs[name] = ImageInput(
                self, self.input_type, self.resolve_topic_name(topic), self.input_reliability,
                lambda msg, camera=camera: self._on_image(camera, msg), self.get_logger().info)
            camera.image_input = self.image_inputs[name]
        # as tf2's listener reads them: /tf_static latched, /tf reliable
        self.transform_subscriptions = [
            self.create_subscription(TFMessage, name, self._on_transforms, qos_profile(catalogue_entry(name)))
            for name in (TF_STATIC, TF)]
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
        # each with the QoS of its catalogue entry: planners' messages reliable with room for a few frames,
        # label_info latched so that a late subscriber's first message is the mapping in force now
        publishers = {}
        for entry in camera_outputs():
            try:
                message_type = ros_type(entry.type)
            except (ImportError, AttributeError) as error:
                if not entry.optional:
                    raise ConfigError(f"the message type {entry.type} of output '{entry.name}' is not installed "
                                      f"({error}): install its package") from None
                if entry.name not in self._outputs_off:
                    self._outputs_off.add(entry.name)
                    self.get_logger().warning(f"output '{entry.name}' is off: its message type {entry.type} is "
                                              f"not installed ({type(error).__name__}: {error}); install "
                                              f"{entry.type.split('/')[0]} to have it")
                continue
            name = ("~/" if entry.private else "") + prefix + entry.name
            publishers[entry.name] = self.create_publisher(message_type, name, qos_profile(entry))
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
