"""Synthetic street scenes in the toy backend's colours, with objects the known classes do not cover.

They give tests, the demo and the benchmark meaningful frames without any real data or weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .toy_backend import TOY_LEXICON


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
