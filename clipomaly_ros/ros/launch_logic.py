"""What ``launch/clipomaly.launch.py`` decides, as plain functions (launch and launch_ros are not needed to test
them): which parameter-file section a node gets, when a launch argument overrides the file, and how the image
and camera_info topics are remapped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core.config import NODE_NAME, read_parameter_file
from .topic_catalogue import camera_info_topic_for


def parse_bool(text: str, argument: str) -> bool:
    """A launch argument's ``true``/``false`` (also 1/0, yes/no); anything else is an error naming it."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {argument}:={text!r} must be true or false")


@dataclass(frozen=True)
class LaunchArgument:
    """One argument of ``launch/clipomaly.launch.py``: its ``name``, ``default`` (``None``: the package's
    config/clipomaly.yaml, found at launch time) and ``description`` (what ``ros2 launch --show-args`` prints)."""

    name: str
    default: str | None
    description: str


AS_THE_FILE = "empty: as the parameter file says"
LAUNCH_ARGUMENTS = (
    LaunchArgument("namespace", "", "namespace of this camera's node"),
    LaunchArgument("image_topic", "", "the camera's base image topic (compressed input adds /compressed)"),
    LaunchArgument("camera_info_topic", "", "the camera's CameraInfo topic (default: image_topic's sibling "
                   "camera_info)"),
    LaunchArgument("compressed", "", f"true: CompressedImage input; {AS_THE_FILE}"),
    LaunchArgument("params_file", None, "ROS 2 parameter file (default: the package's config/clipomaly.yaml)"),
    LaunchArgument("use_sim_time", "", f"true: use /clock (bag replay); {AS_THE_FILE}"),
    LaunchArgument("managed", "", "true: start as a lifecycle node, unconfigured, for a lifecycle manager; "
                   + AS_THE_FILE),
    LaunchArgument("backend", "", f"open_clip or toy; {AS_THE_FILE}"),
    LaunchArgument("device", "", f"auto, cpu, cuda or cuda:N; {AS_THE_FILE}"),
    LaunchArgument("checkpoint", "", f"local weights file; {AS_THE_FILE}"),
    LaunchArgument("tagger_weights", "", "RAM++ checkpoint (ram_plus_swin_large_14m.pth) for tag-named anomalies; "
                   + AS_THE_FILE),
    LaunchArgument("naming_source", "", f"dictionary, tagger or both; {AS_THE_FILE}"),
    LaunchArgument("tagger_period", "", f"frames per camera between tagger runs; {AS_THE_FILE}"),
)
"""The launch file's arguments, declared from this table in this order (``docs/ros-reference.md`` is made from
it)."""

LAUNCH_OVERRIDES = ("compressed", "use_sim_time", "managed", "backend", "device", "checkpoint", "tagger_weights",
                    "naming_source", "tagger_period")
"""Launch arguments that override the parameter file, each only when given (a non-empty value)."""


def launch_overrides(arguments: Mapping[str, str]) -> dict[str, Any]:
    """The parameters that the given launch ``arguments`` set: ``compressed`` as ``input_transport``,
    ``use_sim_time``, ``managed``, ``backend``, ``device``, ``checkpoint``, ``tagger_weights``, ``naming_source``
    and ``tagger_period``; an empty argument sets nothing, so the file's value, or the node's default, stays."""
    overrides: dict[str, Any] = {}
    if arguments.get("compressed", ""):
        overrides["input_transport"] = "compressed" if parse_bool(arguments["compressed"], "compressed") else "raw"
    for name in ("use_sim_time", "managed"):
        if arguments.get(name, ""):
            overrides[name] = parse_bool(arguments[name], name)
    for name in ("backend", "device", "checkpoint", "tagger_weights", "naming_source"):
        if arguments.get(name, ""):
            overrides[name] = arguments[name]
    if arguments.get("tagger_period", ""):
        try:
            overrides["tagger_period"] = int(arguments["tagger_period"])
        except ValueError:
            raise ValueError(f"launch argument tagger_period:={arguments['tagger_period']!r} must be a whole number "
                             "of frames") from None
    return overrides


def node_parameters(params_file: str | Path, namespace: str, arguments: Mapping[str, str],
                    node_name: str = NODE_NAME) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """What the node in ``namespace`` will run with: ``(values, overrides, sections)``.

    The launch file hands the parameter file itself to the node, so rcl reads it (every matching section, in file
    order), and then ``overrides`` (:func:`launch_overrides`). ``values`` is the outcome read by the same rule
    (:func:`~clipomaly_ros.core.config.select_section`), for the decisions the launch file takes itself (the
    input transport, for the remapping); ``sections`` names the file's sections that apply.
    """
    sections: list[str] = []
    values = read_parameter_file(params_file, node_name, namespace, sections)
    overrides = launch_overrides(arguments)
    return {**values, **overrides}, overrides, sections


def image_remappings(image_topic: str, transport: str, camera_info_topic: str = "") -> list[tuple[str, str]]:
    """Remappings for the node's inputs, following image_transport: ``image_topic`` is the base topic, so with
    compressed input the node reads ``<image_topic>/compressed``, and the calibration is its sibling
    ``camera_info`` (``/cam/image_raw`` -> ``/cam/camera_info``) unless ``camera_info_topic`` names another."""
    remappings = [("camera_info", camera_info_topic)] if camera_info_topic else []
    if not image_topic:
        return remappings
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        raise ValueError(f"image_topic:={image_topic} names the compressed topic; give its base topic "
                         f"{base[:-len('/compressed')]} (the node adds /compressed, as image_transport does)")
    image = [("image/compressed", f"{base}/compressed")] if transport == "compressed" else [("image", base)]
    return image + (remappings or [("camera_info", camera_info_topic_for(base))])
