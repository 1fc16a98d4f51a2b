"""Labelled image folders: the layouts ``clipomaly evaluate`` and ``clipomaly finetune`` read.

``images/<stem>.*`` with ``labels/<stem>.png``, or Cityscapes' own ``leftImg8bit/`` + ``gtFine/`` layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One labelled image: its ``stem`` (a name for messages), the ``image`` file and its ``label`` file."""

    stem: str
    image: Path
    label: Path


CITYSCAPES_IMAGE = "_leftImg8bit"
CITYSCAPES_LABEL = "_gtFine_labelTrainIds"


def cityscapes_samples(dataset: Path, split: str | None = None) -> list[Sample]:
    """Cityscapes' own layout: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (trainIds, 255 ignored), from ``split`` (train,
    val, ...) or every split found under ``dataset``."""
    folder = dataset / "leftImg8bit" / split if split else dataset / "leftImg8bit"
    images = {p.relative_to(dataset / "leftImg8bit").with_name(p.name[: -len(CITYSCAPES_IMAGE + p.suffix)]): p
              for p in folder.rglob(f"*{CITYSCAPES_IMAGE}.png")}
    samples, unlabeled = [], []
    for key, image in sorted(images.items()):
        label = dataset / "gtFine" / key.parent / f"{key.name}{CITYSCAPES_LABEL}.png"
        if label.is_file():
            samples.append(Sample(str(key), image, label))
        else:
            unlabeled.append(image.name)
    if unlabeled:
        raise ValueError(f"{dataset}: no *{CITYSCAPES_LABEL}.png for {', '.join(unlabeled[:5])}"
                         + (" ..." if len(unlabeled) > 5 else "")
                         + " (create them with cityscapesscripts' createTrainIdLabelImgs)")
    return samples


def find_samples(dataset: Path, limit: int | None = None) -> list[Sample]:
    """Pairs of ``images/<stem>.*`` and ``labels/<stem>.png``, sorted by stem (numerically where stems are
    numbers), or Cityscapes' ``leftImg8bit/`` + ``gtFine/`` layout (:func:`cityscapes_samples`: the dataset's
    root for every split, or ``<root>/leftImg8bit/<split>`` for one); raises ``ValueError`` when the layout is
    wrong."""
    if not dataset.is_dir():
        raise ValueError(f"{dataset}: no such folder")
    if dataset.parent.name == "leftImg8bit" and (dataset.parent.parent / "gtFine" / dataset.name).is_dir():
        samples = cityscapes_samples(dataset.parent.parent, dataset.name)
        if not samples:
            raise ValueError(f"{dataset}: no *{CITYSCAPES_IMAGE}.png images")
        return samples[:limit] if limit else samples
    if (dataset / "leftImg8bit").is_dir() and (dataset / "gtFine").is_dir():
        samples = cityscapes_samples(dataset)
        if not samples:
            raise ValueError(f"{dataset}: no *{CITYSCAPES_IMAGE}.png images under leftImg8bit/")
        return samples[:limit] if limit else samples
    images_dir, labels_dir = dataset / "images", dataset / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise ValueError(f"{dataset}: expected the folders images/ and labels/ (matching file stems), or "
                         "Cityscapes' leftImg8bit/ and gtFine/")
    labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples, unlabeled = [], []
    for image in images_dir.iterdir():
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem in labels:
            samples.append(Sample(image.stem, image, labels[image.stem]))
        else:
            unlabeled.append(image.name)
    orphans = sorted(set(labels) - {sample.stem for sample in samples})
    if unlabeled or orphans:
        problems = ([f"no label for {_first(unlabeled)}"] if unlabeled else []) + (
            [f"no image for the labels {_first(orphans)}"] if orphans else [])
        raise ValueError(f"{dataset}: {'; '.join(problems)} (images/<stem>.* and labels/<stem>.png must pair up)")
    if not samples:
        raise ValueError(f"{dataset}: no images found in images/")
    samples.sort(key=lambda s: (0, int(s.stem), "") if s.stem.isdigit() else (1, 0, s.stem))
    return samples[:limit] if limit else samples


def _first(names: list[str], count: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "")


def read_label(path: Path) -> np.ndarray:
    import cv2

    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"{path}: not a readable label image")
    return label if label.ndim == 2 else label[..., 0]


CAMERA_FILE = "camera.yaml"
"""An optional file beside ``images/`` and ``labels/``: the camera every image was taken with (see
:func:`dataset_ground_locator`)."""


def dataset_ground_locator(dataset: Path, max_distance: float = 150.0):
    """A :class:`~.geometry.GroundLocator` for the images of ``dataset`` from its ``camera.yaml`` (``width``,
    ``height``, ``k`` (9 numbers), ``d``, ``distortion_model``, and the mounting as the node's parameters name
    it: ``camera_x`` ... ``camera_yaw``, ``ground_z``), or None without the file. Raises ``ValueError`` for a
    file that cannot be used."""
    import yaml

    from .scene.geometry import CalibrationError, CameraModel, CameraMounting, GroundLocator

    path = Path(dataset) / CAMERA_FILE
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text()) or {}
        camera = CameraModel(int(values["width"]), int(values["height"]), np.asarray(values["k"], np.float64),
                             np.asarray(values.get("d", []), np.float64), str(values.get("distortion_model", "")))
        mounting = CameraMounting(**{name: float(values[f"camera_{name}"]) for name in
                                     ("x", "y", "z", "roll", "pitch", "yaw") if f"camera_{name}" in values},
                                  ground_z=float(values.get("ground_z", 0.0)))
    except (KeyError, TypeError, ValueError, CalibrationError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {type(error).__name__}: {error} (expected width, height, k, d, "
                         "distortion_model and camera_x ... camera_yaw, ground_z)") from None
    return GroundLocator(camera, mounting, max_distance)
