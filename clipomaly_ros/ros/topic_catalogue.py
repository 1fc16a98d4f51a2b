"""Every topic and service of the node, as data: its name, message type, QoS and when it is published.

The node makes its publishers and subscriptions from this catalogue (:mod:`.topics`), the message conversions take
their output types from it (:mod:`.messages`), and ``docs/ros-reference.md`` is generated from it
(:mod:`clipomaly_ros.tools.docs`), so the page cannot drift from the code. Plain Python: no ROS runtime needed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    """One topic of the node.

    ``name``: relative to the node's namespace (and to the camera's ``<camera>/`` with ``cameras``), absolute when
    it starts with ``/``, or in the node's private namespace (``~/``) when ``private``. ``type``:
    ``package/msg/Type``. ``direction``: ``in`` or ``out``. QoS: ``reliability`` (``reliable``, ``best_effort``,
    or ``input_reliability`` for the image, which follows that setting), ``durability`` (``volatile`` or
    ``transient_local``) and ``depth`` (history kept, in messages). ``when``: when a message is sent or read;
    ``what``: what it carries (at most 40 words, a table cell); ``detail``: more, for the notes below the table.
    ``optional``: the node starts without the message package and leaves the output off."""

    name: str
    type: str
    direction: str
    reliability: str
    depth: int
    when: str
    what: str
    durability: str = "volatile"
    per_camera: bool = True
    private: bool = False
    optional: bool = False
    detail: str = ""

    @property
    def qos(self) -> str:
        """The QoS in words, as the reference page shows it: ``reliable, transient local, depth 1``."""
        following_a_setting = self.reliability == "input_reliability"
        parts = ["`input_reliability`" if following_a_setting else self.reliability.replace("_", " ")]
        if self.durability != "volatile":
            parts.append(self.durability.replace("_", " "))
        return ", ".join(parts + [f"depth {self.depth}"])


IMAGE = "image"
IMAGE_COMPRESSED = "image/compressed"
CAMERA_INFO = "camera_info"
TF_STATIC = "/tf_static"
TF = "/tf"
DIAGNOSTICS = "/diagnostics"
ENABLE_SERVICE = "~/enable"
"""The names the node makes its subscriptions, publishers and service with (outputs are named by their entries)."""

PLANNER_DEPTH = 10
"""History of the small per-frame messages a planner acts on: a lost fragment of a reliable sample is re-sent only
after the writer's next heartbeat, and a shorter history would already have let the sample go by then."""
IMAGE_DEPTH = 5
"""History of the image outputs (large, for people and tools): a few frames."""

TOPICS = (
    Topic(IMAGE, "sensor_msgs/msg/Image", "in", "input_reliability", 1, "with input_transport raw",
          "The camera's frames (rgb8, bgr8, rgba8, bgra8, mono8, mono16); only the newest is processed.",
          detail="`input_reliability: auto` (the default) matches the publishers as `ros2 topic echo` does: "
                 "reliable when every publisher is reliable, so a large frame that lost a fragment is sent again, "
                 "best effort otherwise. The switch happens when a publisher matches; the new reader is made before "
                 "the old one goes, and a frame both deliver counts once. A best-effort publisher that joins "
                 "reliable ones is seen by a check every 2 s. `/diagnostics` names the QoS in force (`input qos`) "
                 "and estimates the frames missing from the input from gaps in the header stamps."),
    Topic(IMAGE_COMPRESSED, "sensor_msgs/msg/CompressedImage", "in", "input_reliability", 1,
          "with input_transport compressed", "JPEG or PNG frames, as image_transport's compressed plugin sends "
          "them; checked against `max_input_pixels` before decoding."),
    Topic(CAMERA_INFO, "sensor_msgs/msg/CameraInfo", "in", "best_effort", 1, "always; the newest is kept",
          "Intrinsics and distortion (plumb_bob, rational_polynomial, equidistant) for the 3D outputs; an image "
          "that is a resize of it is handled."),
    Topic(TF_STATIC, "tf2_msgs/msg/TFMessage", "in", "reliable", 100, "always (as tf2's listener reads it)",
          "The robot's static transforms: the camera's mounting is the chain from `base_frame` to the image's "
          "`header.frame_id`.", durability="transient_local", per_camera=False),
    Topic(TF, "tf2_msgs/msg/TFMessage", "in", "reliable", 100, "always (as tf2's listener reads it)",
          "The robot's moving transforms, for a mounting that changes.", per_camera=False),
    Topic("anomalies", "vision_msgs/msg/Detection2DArray", "out", "reliable", PLANNER_DEPTH, "every processed frame",
          "One detection per confirmed anomaly track: bbox in pixels, hypotheses best first (the track's voted "
          "name and smoothed score, then runner-up names), `id` = track id; empty when nothing was found."),
    Topic("anomalies_on_road", "vision_msgs/msg/Detection2DArray", "out", "reliable", PLANNER_DEPTH,
          "every processed frame", "The detections of `anomalies` that lie on a drivable class (same ids)."),
    Topic("anomalies_3d", "vision_msgs/msg/Detection3DArray", "out", "reliable", PLANNER_DEPTH,
          "every processed frame with a camera_info", "The anomalies placed on the ground in `base_frame`, stamped "
          "with the image; `id` = track id; box centre and size in metres."),
    Topic("anomaly_markers", "visualization_msgs/msg/MarkerArray", "out", "reliable", PLANNER_DEPTH,
          "every processed frame with a camera_info", "A DELETEALL, then a box (`anomalies`) and a text label "
          "(`anomaly_labels`) per located anomaly, marker id = track id, for RViz and Foxglove.", optional=True),
    Topic("anomaly_points", "sensor_msgs/msg/PointCloud2", "out", "reliable", PLANNER_DEPTH,
          "every processed frame with a camera_info", "Each located anomaly's `anomalies_3d` box filled with points "
          "(x, y, z float32) at most 0.1 m apart, in `base_frame`, for a Nav2 costmap's obstacle layer."),
    Topic("anomalies_objects", "autoware_perception_msgs/msg/DetectedObjects", "out", "reliable", PLANNER_DEPTH,
          "every processed frame with a camera_info", "One object per located anomaly for Autoware, in "
          "`base_frame`: label from `autoware_labels`, existence probability from the track, footprint polygon, "
          "position covariance growing with range.", optional=True,
          detail="Optional: without autoware_perception_msgs (or visualization_msgs for `anomaly_markers`) the node "
                 "starts with one warning, leaves the output off and lists it under `outputs off` in "
                 "`/diagnostics`. The orientation is marked unavailable."),
    Topic("semantic", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH, "while subscribed",
          "mono16 class ids; their names are on `label_info`."),
    Topic("label_info", "vision_msgs/msg/LabelInfo", "out", "reliable", 1,
          "the first processed frame, then when the mapping changes",
          "The names of the ids in `semantic`; republished when the vocabulary or `uncertainty_threshold` "
          "changes.", durability="transient_local",
          detail="Latched (transient local, depth 1): a late subscriber gets the mapping in force now, never an "
                 "older vocabulary."),
    Topic("anomaly_score", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH, "while subscribed",
          "32FC1 anomaly score in [0, 1]."),
    Topic("anomaly_mask", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH, "while subscribed",
          "mono8 mask of the anomalies (0 or 255)."),
    Topic("anomaly_instances", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH, "while subscribed",
          "mono16: pixel value k belongs to the k-th detection of `anomalies` with the same stamp (0: none, or a "
          "track not published)."),
    Topic("overlay", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH,
          "while subscribed and `publish_overlay` is true", "rgb8: the known classes coloured with a legend, the "
          "anomalies outlined and named."),
    Topic("semantic_color", "sensor_msgs/msg/Image", "out", "reliable", IMAGE_DEPTH, "while subscribed",
          "rgb8: `semantic` in the colours of the overlay's legend."),
    Topic("tags", "vision_msgs/msg/Classification", "out", "reliable", IMAGE_DEPTH,
          "every processed frame with `tagger_weights` and `naming_source` tagger or both",
          "The RAM++ tags the frame's regions were named from (fresh, or the camera's last between runs), best "
          "first with their probabilities.", private=True),
    Topic(DIAGNOSTICS, "diagnostic_msgs/msg/DiagnosticArray", "out", "reliable", 10,
          "every `diagnostics_period` seconds, and once when the node stops",
          "One status per camera: rates, latencies (mean and p95), frame counts (received, processed, dropped, "
          "bad, failed, dropped at shutdown), messages per topic, vocabulary sizes, device, outputs off.",
          per_camera=False),
)
"""The node's topics, inputs first, outputs in the order the node makes their publishers."""


@dataclass(frozen=True)
class Service:
    """One service of the node: ``name`` (as :class:`Topic` names it), ``type`` and what a call does."""

    name: str
    type: str
    what: str


SERVICES = (
    Service(ENABLE_SERVICE, "std_srvs/srv/SetBool", "false pauses processing (frames are counted as skipped, the model "
            "stays loaded); true resumes it."),
)
"""The node's own services (rclpy adds the standard parameter and lifecycle services)."""


def catalogue_entry(name: str) -> Topic:
    """The catalogue entry called ``name``; a name not in it is a ``KeyError`` that lists the names."""
    for entry in TOPICS:
        if entry.name == name:
            return entry
    raise KeyError(f"no topic {name!r} in the catalogue: {', '.join(entry.name for entry in TOPICS)}")


def image_input_entry(compressed: bool) -> Topic:
    """The image input's entry: ``image/compressed`` when ``compressed`` (input_transport compressed), else
    ``image``."""
    return catalogue_entry(IMAGE_COMPRESSED if compressed else IMAGE)


def camera_outputs() -> tuple[Topic, ...]:
    """The per-camera outputs, in the order the node makes their publishers."""
    return tuple(entry for entry in TOPICS if entry.direction == "out" and entry.per_camera)


def camera_info_topic_for(image_topic: str) -> str:
    """The camera_info topic next to an image topic, as image_transport names it: ``/cam/image_raw`` and
    ``/cam/image_raw/compressed`` -> ``/cam/camera_info``."""
    topic_name = image_topic.removesuffix("/compressed")
    return topic_name.rsplit("/", 1)[0] + "/camera_info"
