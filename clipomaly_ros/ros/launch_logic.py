"""What ``launch/clipomaly.launch.py`` decides, as plain functions (launch and launch_ros are not needed to test
them): which parameter-file section a node gets, when a launch argument overrides the file, and how the image
and camera_info topics are remapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..core.config import NODE_NAME, read_parameter_file
from .bags import camera_info_topic_for


def parse_bool(text: str, argument: str) -> bool:
    """A launch argument's ``true``/``false`` (also 1/0, yes/no); anything else is an error naming it."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {argument}:={text!r} must be true or false")


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
