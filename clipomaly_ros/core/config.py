"""Settings of the Clipomaly pipeline and node, declared once as data.

Every setting is a :class:`Setting` in :data:`SETTINGS`: its default, type, allowed range or choices, whether it
can change while running (``live``) and which layer reads it (``core`` for the ROS-free pipeline, ``node`` for the
ROS node only). The library, the command line tool and the node all read the same ROS 2 parameter file
(``/**/clipomaly: ros__parameters: ...``), so a setting means the same everywhere. Which sections of such a file
apply to a node is rcl's rule, kept in :mod:`.parameter_files`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .parameter_files import (ParameterFileError, is_ros_standard_parameter, no_section_message, read_document,
                              select_section)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a {} on the road.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is a {} in the scene.",
)

DENSE_METHODS = ("scclip", "naclip", "sclip", "clearclip", "maskclip", "none")
OFFICIAL_SHORT_SIDE = {"scclip": 560, "naclip": 560, "sclip": 560, "clearclip": 448, "maskclip": 560, "none": 560}
"""Short side of the official Cityscapes evaluation of each method (ViT-B/16, 224-pixel windows every 112); no
official sliding-window setting was found for maskclip, which gets SCLIP's."""
LIGHT_SHORT_SIDE = 448
"""Short side of the light window layout: windows side by side (stride = window) at 448 pixels, 8 windows of 224
for a 1280x720 frame instead of the official layout's 32."""
WINDOW_LAYOUTS = ("official", "light")
RUNTIMES = ("torch", "compile", "onnx")
BACKENDS = ("open_clip", "toy")
NODE_NAME = "clipomaly"


def default_cache_dir() -> Path:
    """Where caches go when ``cache_dir`` is empty: ``$XDG_CACHE_HOME/clipomaly_ros`` (``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipomaly_ros"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and what to do."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default, meaning and limits.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``str_list`` (the ROS parameter types).
    ``minimum``/``maximum`` bound numbers (inclusive), ``choices`` bounds strings.
    """

    name: str
    default: Any
    description: str
    kind: str
    scope: str = "core"
    live: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    allow_empty: bool = True
    item_pattern: str | None = None
    """For ``str`` and ``str_list``: a regular expression the value (every item) must match in full."""

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to this setting's type, or raise :class:`ConfigError` saying why not."""
        name = self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ConfigError(f"{name} must be an integer, got {value!r}")
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(f"{name} must be one of {', '.join(self.choices)}; got {value!r}")
            if self.item_pattern is not None and not re.fullmatch(self.item_pattern, value):
                raise ConfigError(f"{name}: {value!r} is not allowed ({self.description})")
            return value
        elif self.kind == "str_list":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")
            items = []
            for item in value:
                if not isinstance(item, str):
                    raise ConfigError(f"{name} must be a list of strings; {item!r} is not a string")
                if not item.strip():
                    raise ConfigError(f"{name}: item {len(items) + 1} is empty; remove it")
                if item != " ".join(item.split()):
                    raise ConfigError(f"{name}: {item!r} has leading, trailing or repeated spaces; write "
                                      f"{' '.join(item.split())!r}")
                if self.item_pattern is not None and not re.fullmatch(self.item_pattern, item):
                    raise ConfigError(f"{name}: {item!r} is not allowed ({self.description})")
                if item in items:
                    raise ConfigError(f"{name}: {item!r} is listed twice; list each name once")
                items.append(item)
            if not items and not self.allow_empty:
                raise ConfigError(f"{name} is empty: give at least one name")
            return tuple(items)
        else:  # pragma: no cover - a programming error in SETTINGS
            raise AssertionError(f"unknown kind {self.kind}")
        too_small = self.minimum is not None and value < self.minimum
        too_large = self.maximum is not None and value > self.maximum
        if too_small or too_large:
            raise ConfigError(f"{name} = {value} is out of range: it must be {self.range_text()}")
        return value

    def range_text(self) -> str:
        """``between 0.0 and 1.0``, ``at least 1`` or ``at most 4``."""
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum} and {self.maximum}"
        return f"at least {self.minimum}" if self.minimum is not None else f"at most {self.maximum}"


SETTINGS: tuple[Setting, ...] = (
    # --- model -------------------------------------------------------------------------------------------------
    Setting("backend", "open_clip", "Vision-language backend: open_clip (real CLIP) or toy (deterministic "
            "colour model for tests and demos).", "str", choices=BACKENDS),
    Setting("model", "ViT-B-16", "open_clip architecture name (open_clip.list_models()), or a 'local-dir:' "
            "folder holding open_clip_config.json and weights.", "str"),
    Setting("pretrained", "openai", "open_clip pretrained tag, downloaded by open_clip on first use (network "
            "needed once). Ignored when checkpoint is set.", "str"),
    Setting("checkpoint", "", "Local weights file (.pt/.bin/.safetensors) for offline vehicles; overrides "
            "pretrained. Empty: use pretrained.", "str"),
    Setting("random_weights", False, "Random weights: a smoke test only, the output means nothing.", "bool"),
    Setting("device", "auto", "auto (CUDA when present), cpu, cuda or cuda:N.", "str"),
    # --- dense features ------------------------------------------------------------------------------------------
    Setting("dense_method", "scclip", "Training-free dense CLIP, as its paper's official code does it: scclip "
            "(SC-CLIP, the best published Cityscapes mIoU of these), naclip (k-k attention with a Gaussian "
            "neighbourhood), sclip (q-q + k-k attention), clearclip (q-q attention), maskclip (value embedding) or "
            "none (unchanged CLIP; for checks only).", "str", choices=DENSE_METHODS),
    Setting("window_layout", "official", "Sliding windows when inference_size and window_stride are 0: official "
            "(the dense method's published Cityscapes setting: short side 560, 448 for clearclip, windows every half "
            "window; 32 windows of 224 for a 1280x720 frame) or light (short side 448, windows side by side; 8 "
            "windows, a quarter of the tokens: a Jetson-sized budget, accuracy not measured).", "str",
            choices=WINDOW_LAYOUTS),
    Setting("inference_size", 0, "Short side in pixels that the image is resized to before the sliding windows; "
            "0 = what window_layout says.", "int", minimum=0, maximum=4096),
    Setting("window_size", 0, "Sliding-window side in pixels; 0 = the model's native input size.", "int",
            minimum=0, maximum=4096),
    Setting("window_stride", 0, "Sliding-window stride in pixels; 0 = what window_layout says (half the window "
            "for official, the window for light).", "int", minimum=0, maximum=4096),
    Setting("runtime", "torch", "How the vision transformer runs: torch (eager PyTorch), compile (torch.compile; "
            "CUDA graphs on a GPU, window batches padded to powers of two, warmed up at start) or onnx (ONNX "
            "Runtime: TensorRT, then CUDA, then CPU, whichever the installed build has; pip install "
            "'clipomaly_ros[onnx]').", "str", choices=RUNTIMES),
    Setting("onnx_model", "", "The ONNX model for runtime onnx, written by 'clipomaly export'; it must match model, "
            "weights, dense_method and window_size. Empty: exported on first start into cache_dir/engines.",
            "str"),
    Setting("pamr_steps", 0, "Steps of pixel-adaptive mask refinement (PAMR, NACLIP's post-processing: class "
            "maps smoothed along image edges at the working resolution, dilations 8 and 16 pixels); 0 = off. "
            "NACLIP's published figure with PAMR uses 10. Costly on a CPU.", "int", live=True, minimum=0,
            maximum=50),
    Setting("window_batch_size", 0, "Most windows sent through the backbone at once (all windows of every "
            "waiting frame share one pass); 0 = no limit. Lower it only when GPU memory runs out.", "int",
            minimum=0, maximum=4096),
    # --- vocabulary ----------------------------------------------------------------------------------------------
    Setting("known_classes", CITYSCAPES_CLASSES, "Names of the classes the car knows (Cityscapes' 19 by "
            "default); pixels that fit none of them are candidates for anomalies.", "str_list", live=True,
            allow_empty=False),
    Setting("anomaly_vocabulary", ("tire", "animal", "cardboard box", "rock"), "Extra names always offered "
            "when naming an anomaly, beside the dictionary's candidates.", "str_list", live=True),
    Setting("prompt_templates", DEFAULT_TEMPLATES, "Prompt templates, each with one '{}' for the name; the "
            "text embedding of a name is the mean over templates. Every name that competes in one softmax (known "
            "classes, anomaly vocabulary, naming dictionary) uses this one ensemble.", "str_list",
            allow_empty=False),
    Setting("naming_dictionary", "", "Text file with one candidate name per line; empty: the dictionary "
            "shipped with the package.", "str"),
    Setting("cache_dir", "", "Folder for the on-disk cache of dictionary text embeddings; empty: "
            "~/.cache/clipomaly_ros.", "str"),
    # --- unknown detection ---------------------------------------------------------------------------------------
    Setting("logit_scale", 50.0, "Multiplier of cosine similarities before the softmax (CLIP uses 100); "
            "lower gives softer class probabilities and higher entropy.", "float", live=True, minimum=1.0,
            maximum=1000.0),
    Setting("uncertainty_threshold", 0.6, "Normalised entropy (0..1) above which a pixel is unknown.", "float",
            live=True, minimum=0.0, maximum=1.0),
    Setting("min_region_area", 400, "Smallest anomaly region kept, in pixels of the input image.", "int",
            live=True, minimum=1),
    Setting("max_regions", 8, "Most anomaly regions named per frame (largest first).", "int", live=True,
            minimum=1, maximum=255),
    Setting("cleanup_radius", 2, "Radius in working pixels of the opening and closing that clean the unknown "
            "mask; they run on the coarse map in whole cells (8 working pixels for a ViT-B/16), so a radius below "
            "one cell leaves the clean-up to the coarse map's own smoothing; 0 = none.", "int", live=True,
            minimum=0, maximum=32),
    # --- naming --------------------------------------------------------------------------------------------------
    Setting("naming_top_k", 10, "Dictionary names preselected per region by mask-pooled similarity.", "int",
            live=True, minimum=1, maximum=200),
    Setting("exclusion_similarity", 0.9, "Dictionary names whose text embedding has at least this cosine "
            "similarity to a known class are excluded (they mean a known class).", "float", live=True,
            minimum=0.0, maximum=1.0),
    Setting("crop_margin", 0.25, "Context added around a region's box before the crop is scored, as a "
            "fraction of the box size.", "float", live=True, minimum=0.0, maximum=4.0),
    Setting("crop_background", 0.3, "How much of the background stays visible in a region crop (0 = fully "
            "replaced by the mean colour, 1 = untouched).", "float", live=True, minimum=0.0, maximum=1.0),
    Setting("crop_weight", 0.5, "Weight of the crop score against the mask-pooled dense score when naming.",
            "float", live=True, minimum=0.0, maximum=1.0),
    Setting("candidates_reported", 5, "Runner-up names reported per anomaly.", "int", live=True, minimum=1,
            maximum=50),
    Setting("naming_source", "dictionary", "Where a region's candidate names come from: dictionary (the naming "
            "dictionary's names nearest the region), tagger (the tags RAM++ fires on the frame, needs "
            "tagger_weights) or both; the anomaly vocabulary is always a candidate.", "str", live=True,
            choices=("dictionary", "tagger", "both")),
    Setting("tagger_weights", "", "The RAM++ checkpoint ram_plus_swin_large_14m.pth (a local file); empty: no "
            "tagger, naming_source must be dictionary.", "str"),
    Setting("tagger_onnx_model", "", "The RAM++ tagger's ONNX graph for runtime onnx, written by 'clipomaly export "
            "--tagger'; it must match tagger_weights. Empty: exported into cache_dir on the first start with runtime "
            "onnx and reused.", "str"),
    Setting("tagger_period", 5, "Frames per camera between two tagger runs; the last tags are reused between, "
            "and a frame with a new object (a region overlapping none of the previous frame's) is tagged at once. "
            "1 = every frame.", "int", live=True, minimum=1, maximum=1000),
    Setting("tagger_threshold", 0.5, "Probability above which an anomaly_vocabulary name that RAM++ does not "
            "know fires as a tag (open-set tagging); the released tags keep their own thresholds.", "float",
            live=True, minimum=0.0, maximum=1.0),
    # --- planner outputs: on the road, tracks, ground geometry -----------------------------------------------------
    Setting("drivable_classes", ("road",), "Known classes a vehicle drives on. An anomaly is on the road when at "
            "least on_road_fraction of a band beside and under it is segmented as one of them. Empty: no on-road "
            "estimate.", "str_list", live=True),
    Setting("on_road_fraction", 0.5, "Share of the band around an anomaly that must be drivable for on_road.",
            "float", live=True, minimum=0.0, maximum=1.0),
    Setting("road_band", 0.5, "Width of the band beside and under an anomaly that on_road looks at, as a "
            "fraction of the mean of its box's width and height (at least 4 pixels).", "float", live=True,
            minimum=0.05, maximum=5.0),
    Setting("track_min_hits", 3, "Frames an anomaly track must be seen in before it is confirmed.", "int",
            live=True, minimum=1, maximum=1000),
    Setting("track_max_misses", 5, "Frames in a row a track may go unseen before it ends (an anomaly hidden for "
            "at most this many frames keeps its id).", "int", live=True, minimum=0, maximum=1000),
    Setting("publish_unconfirmed", False, "Publish anomalies whose track is not confirmed yet (seen in fewer "
            "than track_min_hits frames); false keeps one-frame flicker from the planner.", "bool", live=True),
    Setting("base_frame", "base_link", "Vehicle frame of the 3D outputs (x forward, y left, z up); the camera "
            "mounting below is given in it.", "str", live=True, item_pattern=r"[A-Za-z_][A-Za-z0-9_/]*"),
    Setting("mounting_from_tf", True, "Take the camera's mounting from the robot's transforms (/tf_static and /tf; "
            "in replay, the bag's): the chain from base_frame to the image's header.frame_id, an optical frame "
            "(x right, y down, z forward) as sensor_msgs/Image defines it. The camera_* parameters below stay the "
            "fallback while no such chain is known; /diagnostics says which is in use.", "bool", live=True),
    Setting("camera_x", 0.0, "Camera position in base_frame, forward (m).", "float", live=True),
    Setting("camera_y", 0.0, "Camera position in base_frame, left (m).", "float", live=True),
    Setting("camera_z", 1.5, "Camera position in base_frame, up (m).", "float", live=True),
    Setting("camera_roll", 0.0, "Camera roll about its forward axis (rad).", "float", live=True,
            minimum=-math.pi, maximum=math.pi),
    Setting("camera_pitch", 0.0, "Camera pitch (rad); positive looks down.", "float", live=True,
            minimum=-math.pi / 2, maximum=math.pi / 2),
    Setting("camera_yaw", 0.0, "Camera yaw (rad); positive looks left.", "float", live=True, minimum=-math.pi,
            maximum=math.pi),
    Setting("ground_z", 0.0, "Height of the flat ground in base_frame (m): 0 for base_footprint, minus the "
            "origin's height above the ground for base_link.", "float", live=True),
    Setting("max_ground_distance", 150.0, "Ground contacts farther than this (m) count as none: the anomaly gets "
            "no 3D estimate.", "float", live=True, minimum=1.0, maximum=10000.0),
    Setting("contact_pixel_error", 1.0, "Uncertainty of a ground contact's image row and column (pixels, one "
            "standard deviation): the position covariance of the Autoware objects grows from it with range, as "
            "Z^2 dv / (f h) along the line of sight and Z du / f across it.", "float", live=True, minimum=0.01,
            maximum=100.0),
    Setting("autoware_labels", ("@animals=ANIMAL", "animal=ANIMAL", "*=HAZARD"), "Autoware classification of "
            "anomaly names in anomalies_objects, as NAME=LABEL with LABEL an autoware_perception_msgs/"
            "ObjectClassification constant (UNKNOWN, CAR, TRUCK, BUS, TRAILER, MOTORCYCLE, BICYCLE, PEDESTRIAN, "
            "ANIMAL, HAZARD, OVER_DRIVABLE, UNDER_DRIVABLE). NAME is an anomaly name, @SECTION every name of that "
            "section of the naming dictionary ('# animals' heads the section @animals), * every other name. A "
            "name's own entry comes first, then its section's, then *; without * the rest are UNKNOWN.", "str_list",
            live=True, item_pattern=r"[^=]+=(UNKNOWN|CAR|TRUCK|BUS|TRAILER|MOTORCYCLE|BICYCLE|PEDESTRIAN|ANIMAL|"
            r"HAZARD|OVER_DRIVABLE|UNDER_DRIVABLE)"),
    Setting("autoware_shape", "polygon", "Shape of the Autoware objects: polygon (the footprint of the 3D box, "
            "with its height) or bounding_box (the 3D box's dimensions).", "str", live=True,
            choices=("polygon", "bounding_box")),
    # --- ROS node only -------------------------------------------------------------------------------------------
    Setting("managed", False, "Start as a managed (lifecycle) node, unconfigured: a lifecycle manager or "
            "`ros2 lifecycle set` configures it (parameters, model, text embeddings), activates it (subscriptions "
            "and outputs), deactivates it (the model stays) and cleans it up (the model and its GPU memory freed). "
            "false: configure and activate at start.", "bool", scope="node"),
    Setting("input_transport", "raw", "raw: subscribe to 'image' (sensor_msgs/Image); compressed: to "
            "'image/compressed' (sensor_msgs/CompressedImage, jpeg or png).", "str", scope="node",
            choices=("raw", "compressed")),
    Setting("input_reliability", "auto", "QoS reliability of the image subscription (always depth 1: the newest "
            "frame only): auto matches the publishers, as ros2 topic echo does (reliable when every publisher on "
            "the topic is reliable, so large frames lost on the way are sent again; best effort otherwise), checked "
            "again as publishers come and go; or best_effort, or reliable.", "str", scope="node",
            choices=("auto", "best_effort", "reliable")),
    Setting("cameras", (), "Cameras served by this node with one model, as topic namespaces relative to the "
            "node's: ['front', 'rear'] reads front/image and publishes front/anomalies, ... Frames waiting from "
            "several cameras share one backbone pass. Empty: one camera on 'image'. Names are ROS name tokens "
            "(letters, digits, '_', '/' between tokens).", "str_list", scope="node",
            item_pattern=r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*"),
    Setting("max_input_pixels", 16_000_000, "Largest input image accepted, in pixels (width x height, from the "
            "message header or the compressed stream's own header, checked before decoding); larger ones are "
            "bad inputs. The default leaves room for 4K.", "int", scope="node", minimum=1, maximum=2**31 - 1),
    Setting("stall_timeout", 10.0, "Seconds that frames may wait without one being processed before "
            "/diagnostics reports ERROR (the inference thread is restarted if it has ended). Set it above the "
            "slowest frame time of the model on this machine.", "float", scope="node", minimum=0.5,
            maximum=3600.0),
    Setting("expected_rate", 0.0, "The cameras' frame rate (Hz), for the estimate of frames missing from the "
            "input in /diagnostics. 0: learned from the stamps of the images and camera_info (the smallest "
            "interval seen steadily), which needs some frames to arrive back to back.", "float", scope="node",
            minimum=0.0, maximum=1000.0),
    Setting("publish_overlay", True, "Publish 'overlay' (rgb8); it is only drawn while someone subscribes.",
            "bool", scope="node", live=True),
    Setting("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", "float", scope="node",
            minimum=0.1, maximum=60.0),
    Setting("release_id", "", "The release this parameter file is (written by 'clipomaly release'): logged at start "
            "and reported in /diagnostics, so a recording shows which release ran. Empty: none.", "str",
            scope="node"),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
MOUNTING_SETTINGS = ("camera_x", "camera_y", "camera_z", "camera_roll", "camera_pitch", "camera_yaw")
"""The settings a node serving several cameras takes per camera, as ``<camera>.camera_x`` (in a parameter file, a
mapping under the camera's name); a camera without them uses the plain ones."""


def per_camera_setting(name: str) -> tuple[str, Setting] | None:
    """``("front", <camera_x>)`` for ``front.camera_x`` (``front/left.camera_x`` for a nested camera name), else
    None."""
    camera, _, setting = name.rpartition(".")
    if camera and setting in MOUNTING_SETTINGS:
        return camera, SETTINGS_BY_NAME[setting]
    return None


CORE_SETTINGS = tuple(s.name for s in SETTINGS if s.scope == "core")
LIVE_SETTINGS = frozenset(s.name for s in SETTINGS if s.live)


def _config_fields():
    return [(s.name, Any, field(default=s.default)) for s in SETTINGS if s.scope == "core"]


_ClipomalyConfigBase = dataclasses.make_dataclass("_ClipomalyConfigBase", _config_fields(), frozen=True)


@dataclass(frozen=True)
class ClipomalyConfig(_ClipomalyConfigBase):
    """The pipeline's settings (see :data:`SETTINGS` for each one's meaning), validated on construction.

    Build it with keywords, ``ClipomalyConfig(model="ViT-B-32")``, or from a parameter file with
    :func:`load_config`. ``replace(**changes)`` returns a validated copy.
    """

    def __post_init__(self):
        for name in CORE_SETTINGS:
            object.__setattr__(self, name, SETTINGS_BY_NAME[name].validate(getattr(self, name)))
        for template in self.prompt_templates:
            if template.count("{}") != 1:
                raise ConfigError(f"prompt_templates: {template!r} must contain exactly one '{{}}' for the name")
        known = [name for name in self.anomaly_vocabulary if name in self.known_classes]
        if known:
            raise ConfigError(f"anomaly_vocabulary: {', '.join(map(repr, known))} "
                              f"{'is a known class' if len(known) == 1 else 'are known classes'}: a region named so "
                              "would be known, never an anomaly; remove it from anomaly_vocabulary (or from "
                              "known_classes)")
        if self.naming_source != "dictionary" and not self.tagger_weights:
            raise ConfigError(f"naming_source {self.naming_source} needs the RAM++ tagger: give tagger_weights "
                              "(ram_plus_swin_large_14m.pth, see the README's tagger section), or set naming_source "
                              "to dictionary")
        missing = [name for name in self.drivable_classes if name not in self.known_classes]
        if missing:
            raise ConfigError(f"drivable_classes: {', '.join(map(repr, missing))} not among known_classes; list "
                              "known classes only, or leave drivable_classes empty for no on-road estimate")
        if self.checkpoint and self.random_weights:
            raise ConfigError("checkpoint and random_weights are both set: choose one")

    @property
    def working_short_side(self) -> int:
        """``inference_size``, or when it is 0 the ``window_layout``'s: the dense method's official Cityscapes short
        side, or :data:`LIGHT_SHORT_SIDE`."""
        if self.inference_size:
            return self.inference_size
        return OFFICIAL_SHORT_SIDE[self.dense_method] if self.window_layout == "official" else LIGHT_SHORT_SIDE

    @property
    def cache_path(self) -> Path:
        """``cache_dir`` as a path, or :func:`default_cache_dir` when it is empty."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def stride_for(self, window: int) -> int:
        """``window_stride``, or when it is 0 the ``window_layout``'s: half of ``window`` (official) or all of it
        (light), in pixels."""
        return self.window_stride or (window // 2 if self.window_layout == "official" else window)

    def replace(self, **changes: Any) -> "ClipomalyConfig":
        unknown = set(changes) - set(CORE_SETTINGS)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}{renamed_hint(unknown)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {name: (list(v) if isinstance(v := getattr(self, name), tuple) else v) for name in CORE_SETTINGS}


def read_parameter_file(path: str | Path, node_name: str = NODE_NAME, namespace: str = "/",
                        sections: list | None = None) -> dict[str, Any]:
    """Read the ``ros__parameters`` of ``node_name`` in ``namespace`` from a ROS 2 parameter file, the sections
    chosen as rcl chooses them (:func:`~.parameter_files.select_section`); the keys used are appended to
    ``sections`` when given.

    Standard ROS parameters (``use_sim_time``, ``qos_overrides.*``, ...) and per-camera mountings
    (``front.camera_x``, see :data:`MOUNTING_SETTINGS`) pass through. Raises
    :class:`ConfigError` for a missing file, bad YAML, no matching section or unknown setting names.
    """
    path = Path(path)
    try:
        document = read_document(path)
    except ParameterFileError as error:
        raise ConfigError(str(error)) from None
    try:
        chosen, parameters = select_section(document, node_name, namespace)
    except ParameterFileError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not chosen and document:
        raise ConfigError(f"{path}: {no_section_message(node_name, namespace)}")
    if sections is not None:
        sections.extend(chosen)
    unknown = sorted(name for name in set(parameters) - set(SETTINGS_BY_NAME)
                     if not is_ros_standard_parameter(name) and per_camera_setting(name) is None)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}{renamed_hint(unknown)}; known: "
                          f"{', '.join(SETTINGS_BY_NAME)}")
    return parameters


RENAMED_SETTINGS = {"engine": "onnx_model"}
"""Settings that were renamed (old name -> new name): a file or command that still gives the old name is told the
new one, never silently ignored."""


def renamed_hint(names) -> str:
    """`` (renamed: engine is now onnx_model)`` for the renamed settings among ``names``, else ``""``."""
    renamed = [f"{name} is now {RENAMED_SETTINGS[name]}" for name in sorted(names) if name in RENAMED_SETTINGS]
    return f" (renamed: {', '.join(renamed)})" if renamed else ""


def load_config(path: str | Path | None = None, namespace: str = "/", **overrides: Any) -> ClipomalyConfig:
    """The pipeline settings from a parameter file (node-only settings are skipped), then ``overrides``.

    The file's section is the one a node ``clipomaly`` in ``namespace`` would get (:func:`select_section`).
    ``None`` values in ``overrides`` are ignored, so command line options that were not given change nothing.
    """
    values = read_parameter_file(path, NODE_NAME, namespace) if path is not None else {}
    values = {k: v for k, v in values.items() if k in CORE_SETTINGS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(CORE_SETTINGS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}{renamed_hint(unknown)}")
    return ClipomalyConfig(**values)


def default_parameter_file() -> str:
    """The parameter-file text holding every setting at its default, with its description as a comment, for the
    node in any namespace (``/**/clipomaly``)."""
    lines = [f"/**/{NODE_NAME}:", "  ros__parameters:"]
    for setting in SETTINGS:
        lines.append(f"    # {setting.description}")
        value = list(setting.default) if isinstance(setting.default, tuple) else setting.default
        lines.append("    " + yaml.safe_dump({setting.name: value}, default_flow_style=True, width=1000,
                                             sort_keys=False).strip()[1:-1])
    return "\n".join(lines) + "\n"


def split_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a, b ,c"`` -> ``("a", "b", "c")``; a sequence is returned as a tuple; ``None`` stays ``None``.

    Empty items are kept (``"a,,b"`` -> ``("a", "", "b")``, ``""`` -> ``("",)``), so that the setting's own
    validation rejects them with the same message as a parameter file or ``ros2 param set`` gets: one rule for
    names everywhere."""
    if text is None:
        return None
    if isinstance(text, str):
        return tuple(part.strip() for part in text.split(","))
    return tuple(text)
