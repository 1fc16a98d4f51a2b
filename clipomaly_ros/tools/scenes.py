"""Synthetic street scenes in the toy backend's colours, with objects the known classes do not cover.

They give tests, the demo and the benchmark meaningful frames without any real data or weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.model.toy_backend import TOY_LEXICON


Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1 and y1 exclusive."""


def render_street_scene(height: int = 240, width: int = 320, planted: str | None = "mattress",
                        planted_box: Box | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A street-like RGB scene in toy-lexicon colours, with an optional planted object.

    Returns ``(image (H, W, 3) uint8, planted_mask (H, W) bool)``. ``planted_box`` is (x0, y0, x1, y1) in pixels;
    by default the object stands on the road in the lower middle. Mild pixel noise keeps it from being trivial.
    """
    if planted is None:
        image, _ = render_street(height, width, [], seed)
        return image, np.zeros((height, width), dtype=bool)
    box = planted_box or (int(width * 0.4), int(height * 0.62), int(width * 0.6), int(height * 0.85))
    image, masks = render_street(height, width, [(planted, box)], seed)
    return image, masks[planted]


def render_street(height: int, width: int, objects: Sequence[tuple[str, Box]],
                  seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The street scene with ``objects`` ((toy-lexicon name, box) pairs, painted in order, later ones in front).

    Returns ``(image (H, W, 3) uint8, {name: (H, W) bool mask of its visible pixels})``.
    """
    colour = {name: np.array(rgb, dtype=np.float32) for name, rgb in TOY_LEXICON.items()}
    image = np.zeros((height, width, 3), dtype=np.float32)
    horizon = int(height * 0.45)
    image[:horizon] = colour["sky"]
    image[int(height * 0.15):horizon, : width // 3] = colour["building"]
    image[int(height * 0.2):horizon, 2 * width // 3:] = colour["vegetation"]
    image[horizon:] = colour["road"]
    image[horizon:, : width // 8] = colour["sidewalk"]
    image[horizon:, -width // 8:] = colour["sidewalk"]
    image[int(height * 0.5):int(height * 0.7), int(width * 0.7):int(width * 0.85)] = colour["car"]
    masks: dict[str, np.ndarray] = {}
    for name, (x0, y0, x1, y1) in objects:
        mask = np.zeros((height, width), dtype=bool)
        mask[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
        for other in masks.values():
            other &= ~mask
        masks[name] = mask
        image[mask] = colour[name]
    noise = np.random.default_rng(seed).normal(0.0, 4.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), masks


@dataclass(frozen=True)
class DriveFrame:
    """One frame of a synthetic drive.

    ``image``: (H, W, 3) uint8 RGB; ``stamp_ns``: capture time in nanoseconds; ``objects``: planted name -> (H, W)
    bool mask of its visible pixels (only the objects in view).
    """

    image: np.ndarray
    stamp_ns: int
    objects: dict[str, np.ndarray]


def synthetic_drive(seconds: float = 4.0, rate_hz: float = 10.0, height: int = 360, width: int = 640,
                    start_ns: int = 1_700_000_000_000_000_000) -> list[DriveFrame]:
    """A drive towards two objects the Cityscapes classes do not cover, ``rate_hz`` frames a second.

    A mattress lies ahead on the road from 0.5 s on and grows as the car approaches it; a tyre rolls across the
    road in front of it, from left to right, from 1.5 s on. Deterministic: the same arguments give the same frames.
    """
    frames = []
    period_ns = round(1e9 / rate_hz)
    for index in range(max(1, round(seconds * rate_hz))):
        t = index / rate_hz
        objects: list[tuple[str, Box]] = []
        if t >= 0.5:
            approach = min(1.0, (t - 0.5) / max(seconds - 0.5, 1e-6))
            half_w, box_h = width * (0.06 + 0.08 * approach), height * (0.05 + 0.08 * approach)
            bottom = height * (0.58 + 0.18 * approach)
            objects.append(("mattress", (int(width * 0.42 - half_w), int(bottom - box_h), int(width * 0.42 + half_w),
                                         int(bottom))))
        if t >= 1.5:
            progress = (t - 1.5) / max(seconds - 1.5, 1e-6)
            side = int(height * 0.12)
            left = int(width * 0.12 + progress * width * 0.70)
            top = int(height * 0.84)
            objects.append(("tire", (left, top, left + side, top + side)))
        image, masks = render_street(height, width, objects, seed=index)
        frames.append(DriveFrame(image, start_ns + index * period_ns, {n: m for n, m in masks.items() if m.any()}))
    return frames


@dataclass(frozen=True)
class StandingObject:
    """An upright box standing on the ground, seen by :func:`render_perspective_street`: ``name`` (a toy-lexicon
    colour), the middle of its front at ``x`` ahead and ``y`` to the left (metres, ``base_frame``), its
    ``width`` and ``height`` (m)."""

    name: str
    x: float
    y: float
    width: float
    height: float


def render_perspective_street(camera, mounting, objects: Sequence[StandingObject] = (), road_half_width: float = 3.5,
                              sidewalk_width: float = 2.5, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A flat street seen through ``camera`` (:class:`~.geometry.CameraModel`) mounted at ``mounting``
    (:class:`~.geometry.CameraMounting`), with ``objects`` standing on it: road within ``road_half_width`` of
    the line y = 0, sidewalks beside it, terrain beyond, sky above the horizon.

    Returns ``(image (H, W, 3) uint8, {name: (H, W) bool mask of its visible pixels})``; objects nearer the
    camera hide those behind them.
    """
    colour = {name: np.array(rgb, dtype=np.float32) for name, rgb in TOY_LEXICON.items()}
    height, width = camera.height, camera.width
    columns, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = camera.rays(np.stack([columns.ravel(), rows.ravel()], axis=1)) @ mounting.optical_rotation.T
    drop = mounting.ground_z - mounting.z
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = np.where(rays[:, 2] < -1e-6, drop / rays[:, 2], np.inf)
    lateral = np.abs(mounting.y + rays[:, 1] * np.where(np.isfinite(reach), reach, 0.0)).reshape(height, width)
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = colour["sky"]
    ground = np.isfinite(reach).reshape(height, width)
    image[ground] = colour["terrain"]
    image[ground & (lateral < road_half_width + sidewalk_width)] = colour["sidewalk"]
    image[ground & (lateral < road_half_width)] = colour["road"]
    origin = np.array([mounting.x, mounting.y, mounting.z])
    masks: dict[str, np.ndarray] = {}
    for item in sorted(objects, key=lambda o: -o.x):  # far to near: nearer objects paint over farther ones
        # a pixel shows the object when the ray through its centre meets the object's upright front face
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.where(rays[:, 0] > 1e-9, (item.x - origin[0]) / rays[:, 0], -1.0)
        hit = origin + rays * along[:, None]
        mask = ((along > 0) & (np.abs(hit[:, 1] - item.y) <= item.width / 2)
                & (hit[:, 2] >= mounting.ground_z) & (hit[:, 2] <= mounting.ground_z + item.height))
        mask = mask.reshape(height, width)
        for other in masks.values():
            other &= ~mask
        masks[item.name] = mask
        image[mask] = colour[item.name]
    noise = np.random.default_rng(seed).normal(0.0, 4.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), masks


def labelled_street_scene(height: int = 128, width: int = 256, seed: int = 0, planted: str | Sequence[str] | None = None,
                          planted_labels: dict[str, int] | None = None,
                          planted_size: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """A street scene with a random layout and its pixel labels, for fine-tuning and its tests.

    Sky, buildings, vegetation, road, sidewalks, terrain, cars, poles and people in toy-lexicon colours (lighting
    and noise vary per scene). Returns ``(image (H, W, 3) uint8, labels (H, W) uint8)`` with labels the Cityscapes
    trainIds (the index in :data:`~.config.CITYSCAPES_CLASSES`). A ``planted`` object (one name, or names to pick
    one from at random), ``planted_size`` of the image's sides, is labelled 255 (ignored: it is not a known class),
    or ``planted_labels[name]``.
    """
    from ..core.config import CITYSCAPES_CLASSES

    rng = np.random.default_rng(seed)
    labels = np.full((height, width), CITYSCAPES_CLASSES.index("sky"), dtype=np.uint8)

    if planted is not None and not isinstance(planted, str):
        planted = str(rng.choice(list(planted)))
    ids = {name: index for index, name in enumerate(CITYSCAPES_CLASSES)}
    if planted is not None:
        ids[planted] = (planted_labels or {}).get(planted, 255)

    def paint(name: str, y0: float, y1: float, x0: float, x1: float) -> None:
        labels[max(0, int(y0)):max(0, int(y1)), max(0, int(x0)):max(0, int(x1))] = ids[name]

    horizon = rng.uniform(0.35, 0.55) * height
    for _ in range(rng.integers(1, 4)):
        left = rng.uniform(-0.1, 0.9) * width
        paint(str(rng.choice(["building", "vegetation"])), rng.uniform(0.05, 0.3) * height, horizon, left,
              left + rng.uniform(0.15, 0.45) * width)
    paint("terrain", horizon, height, 0, width)
    road_left, road_right = rng.uniform(0.1, 0.35) * width, rng.uniform(0.65, 0.9) * width
    paint("sidewalk", horizon, height, road_left - rng.uniform(0.05, 0.15) * width,
          road_right + rng.uniform(0.05, 0.15) * width)
    paint("road", horizon, height, road_left, road_right)
    for _ in range(rng.integers(0, 3)):
        x = rng.uniform(0, 0.9) * width
        paint("pole", rng.uniform(0.1, 0.3) * height, horizon + rng.uniform(0.05, 0.2) * height, x,
              x + max(2, 0.015 * width))
    for name, size in (("car", 0.22), ("person", 0.06)):
        for _ in range(rng.integers(0, 3)):
            top = rng.uniform(horizon, 0.8 * height)
            left = rng.uniform(0, 0.85) * width
            paint(name, top, top + size * height * (1.5 if name == "person" else 0.7), left, left + size * width)
    if planted is not None:
        top, left = rng.uniform(0.55, 0.95 - planted_size) * height, rng.uniform(0.3, 0.7 - planted_size) * width
        paint(planted, top, top + planted_size * height, left, left + planted_size * width)
    colours = {ids[name]: TOY_LEXICON[name] for name in ids}
    palette = np.zeros((256, 3), dtype=np.float32)
    for label, rgb in colours.items():
        palette[label] = rgb
    image = palette[labels] * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_street_dataset(folder, count: int, height: int = 128, width: int = 256, seed: int = 0,
                         planted: str | Sequence[str] | None = None, planted_labels: dict[str, int] | None = None,
                         planted_size: float = 0.12) -> None:
    """``count`` :func:`labelled_street_scene` samples as ``folder/images/<i>.png`` and ``folder/labels/<i>.png``
    (the layout ``clipomaly finetune`` and ``clipomaly evaluate --known-classes-miou`` read)."""
    from pathlib import Path

    import cv2

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, labels = labelled_street_scene(height, width, seed * 100_003 + index, planted, planted_labels,
                                              planted_size)
        cv2.imwrite(str(folder / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "labels" / f"{index}.png"), labels)


DRIVE_CAMERA = dict(width=640, height=360, focal=500.0, height_m=1.5, pitch=0.03)
"""The camera of :func:`perspective_drive`: 640x360, focal length 500 px, 1.5 m above the ground, pitched 0.03
rad down, looking along the road."""


def drive_camera():
    """``(CameraModel, CameraMounting)`` of :func:`perspective_drive`."""
    from ..core.scene.geometry import CameraModel, CameraMounting

    spec = DRIVE_CAMERA
    k = np.array([[spec["focal"], 0, spec["width"] / 2], [0, spec["focal"], spec["height"] / 2], [0, 0, 1]])
    return (CameraModel(spec["width"], spec["height"], k, np.zeros(5)),
            CameraMounting(z=spec["height_m"], pitch=spec["pitch"]))


def perspective_drive(seconds: float = 4.0, rate_hz: float = 10.0,
                      start_ns: int = 1_700_000_000_000_000_000) -> list[DriveFrame]:
    """A drive seen through :func:`drive_camera`, ``rate_hz`` frames a second: the car approaches a mattress
    lying 0.5 m left of its path (2 x 0.8 m, 25 m ahead at the start, closing at 4.5 m/s), and from 1.5 s on a
    tyre (0.7 m) rolls across the road 12 m ahead, from left to right at 3.2 m/s. Deterministic."""
    camera, mounting = drive_camera()
    frames = []
    period_ns = round(1e9 / rate_hz)
    for index in range(max(1, round(seconds * rate_hz))):
        t = index / rate_hz
        objects = [StandingObject("mattress", 25.0 - 4.5 * t, 0.5, 2.0, 0.8)]
        if t >= 1.5:
            objects.append(StandingObject("tire", 12.0, 4.0 - 3.2 * (t - 1.5), 0.7, 0.7))
        image, masks = render_perspective_street(camera, mounting, objects, seed=index)
        frames.append(DriveFrame(image, start_ns + index * period_ns, {n: m for n, m in masks.items() if m.any()}))
    return frames
