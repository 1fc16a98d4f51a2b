"""The labelled frames of a calibration: what each is (its image and label files, their digests, its drive and
time where the file name or the image's EXIF says them), and the checks that held-out frames are other frames.

Drives and stamps (used to group frames for cross-validation and to refuse ``--val`` frames taken seconds from a
searched one):

- a stamp is a run of 10 digits (Unix seconds, optionally ``.fraction`` or ``_fraction``) or of 13, 16 or 19 digits
  (milliseconds, microseconds, nanoseconds) in the file's stem, between 2000 and 2100; else the JPEG's EXIF
  ``DateTimeOriginal`` (with ``SubSecTimeOriginal``);
- the drive is the stem up to its last number, less that number (``aachen_000012_000019_leftImg8bit`` is drive
  ``aachen_000012``, ``drive3_1700000000.25`` is ``drive3``); a stem that is only a number (``17``) or has none
  names no drive.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.datasets import CITYSCAPES_IMAGE, Sample, read_label


class CalibrationError(ValueError):
    """The data or the search cannot give a calibration; the message says what to change."""


NEAR_COPY_BITS = 10
"""Perceptual hashes (63 bits) this close or closer may be one picture: a re-encode or a resize moves a few bits,
two different photographs about half of them (but two synthetic scenes of flat colours can come this close)."""
NEAR_COPY_GREY = 2.0
"""...so a near copy must also match in its grey 32 x 32 thumbnail within this mean difference (of 255)."""
SAME_DRIVE_SECONDS = 5.0
"""Frames of one drive this close in time show the same scene."""
_STAMP = re.compile(r"(?<!\d)(\d{10})(?:[._](\d{1,9}))?(?!\d)|(?<!\d)(\d{13}|\d{16}|\d{19})(?!\d)")
_EARLIEST, _LATEST = 946684800.0, 4102444800.0  # 2000-01-01 and 2100-01-01, UTC


@dataclass
class LabelledFrame:
    """One image of the data: its sample, the label ids that mean anomaly and ignore, the digests of the image's
    and the label's bytes, its ``drive`` and ``stamp`` (Unix seconds) where shown (see the module docstring). The
    pixels are read by :meth:`load_image` and :meth:`load_truth` when needed, so that a run holds only what its
    memory budget allows."""

    sample: Sample
    anomaly_id: int
    ignore_id: int
    digest: str
    label_digest: str = ""
    drive: str | None = None
    stamp: float | None = None

    def load_image(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        from ...core.images import read_rgb

        return read_rgb(self.sample.image)

    def load_truth(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(is_anomaly, void)``, each ``(H, W)`` bool at the image's ``size`` (H, W)."""
        import cv2

        label = read_label(self.sample.label)
        if label.shape != tuple(size):
            label = cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return label == self.anomaly_id, label == self.ignore_id

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8 RGB, is_anomaly (H, W) bool, void (H, W) bool)`` from the files."""
        image = self.load_image()
        return (image, *self.load_truth(image.shape[:2]))


def stamp_in_name(stem: str) -> tuple[float, tuple[int, int]] | None:
    """The Unix time a file's ``stem`` carries (see the module docstring) and where it stands, or None."""
    for match in _STAMP.finditer(stem):
        if match.group(1):
            seconds = float(match.group(1)) + (float("0." + match.group(2)) if match.group(2) else 0.0)
        else:
            digits = match.group(3)
            seconds = int(digits) / 10 ** (len(digits) - 10)
        if _EARLIEST <= seconds < _LATEST:
            return seconds, match.span()
    return None


def exif_stamp(path: Path) -> float | None:
    """The JPEG's EXIF ``DateTimeOriginal`` (and sub-seconds) as Unix seconds, read as UTC; None without it."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            exif = image.getexif().get_ifd(0x8769)  # the Exif IFD
    except OSError:
        return None
    taken, fraction = exif.get(36867), exif.get(37521)
    if not taken:
        return None
    try:
        moment = datetime.strptime(str(taken).strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return moment.timestamp() + (float("0." + str(fraction).strip()) if str(fraction or "").strip().isdigit() else 0)


def drive_and_stamp(sample: Sample) -> tuple[str | None, float | None]:
    """The frame's drive and stamp (see the module docstring)."""
    stem = sample.image.stem.removesuffix(CITYSCAPES_IMAGE)  # the Cityscapes suffix holds a number of its own
    found = stamp_in_name(stem)
    stamp = found[0] if found else exif_stamp(sample.image)
    named = stem[:found[1][0]] if found else stem
    numbers = list(re.finditer(r"\d+", named))
    if numbers and not found:
        named = named[:numbers[-1].start()]
    drive = named.rstrip("_-. ")
    return (drive or None), stamp


def read_frames(samples: Sequence[Sample], anomaly_id: int, ignore_id: int) -> list[LabelledFrame]:
    """The frames of ``samples`` (each label read once, to check it); raises :class:`CalibrationError` when no label
    holds ``anomaly_id``."""
    from ...core.fingerprint import file_digest

    for name, value in (("--anomaly-id", anomaly_id), ("--ignore-id", ignore_id)):
        if not 0 <= value <= 65535:
            raise CalibrationError(f"{name} {value}: label ids are 0..65535 (PNG labels)")
    frames, present, anomalous = [], set(), False
    for sample in samples:
        label = read_label(sample.label)
        values = np.unique(label)
        present.update(values.tolist())
        anomalous = anomalous or bool((values == anomaly_id).any())
        drive, stamp = drive_and_stamp(sample)
        frames.append(LabelledFrame(sample, anomaly_id, ignore_id, file_digest(sample.image),
                                    file_digest(sample.label), drive, stamp))
    if not anomalous:
        raise CalibrationError(
            f"no pixel of the {len(frames)} labels has the anomaly id {anomaly_id} (ids present: "
            f"{', '.join(map(str, sorted(present)[:20]))}): give the anomaly's id with --anomaly-id, or data with "
            "anomalies (calibration needs them)")
    return frames


def content_hash(frames: Sequence[LabelledFrame]) -> str:
    """One SHA-256 of the frames' image and label bytes (by their digests, in any order): the same data gives the
    same hash whatever the files are named."""
    pairs = sorted(f"{frame.digest}:{frame.label_digest}" for frame in frames)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The grey ``(32, 32)`` float32 thumbnail of an RGB uint8 ``(H, W, 3)`` image (area-averaged)."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)


def perceptual_hash(small: np.ndarray) -> int:
    """A 63-bit DCT hash of a :func:`thumbnail`: its 8 x 8 lowest frequencies less the constant term, each above or
    below their median. Re-encoding or resizing the image keeps it."""
    from scipy.fft import dctn

    low = dctn(small, norm="ortho")[:8, :8].ravel()[1:]
    bits = low > np.median(low)
    return int("".join("1" if bit else "0" for bit in bits), 2)


def check_disjoint(search: Sequence[LabelledFrame], held_out: Sequence[LabelledFrame]) -> None:
    """Raise :class:`CalibrationError` when a frame of ``held_out`` is one of ``search``: the same bytes, a picture
    within :data:`NEAR_COPY_BITS` and :data:`NEAR_COPY_GREY` of one (a re-encode, a resize), or a frame of the same drive within
    :data:`SAME_DRIVE_SECONDS` of one. Held-out figures must come from frames the search did not see."""
    shared = [f"{other.sample.image} is {how} {frame.sample.image}" for other, how, frame in seen_frames(search,
                                                                                                       held_out)]
    if shared:
        raise CalibrationError(f"--val holds {len(shared)} frame(s) of the searched data ({'; '.join(shared[:5])}"
                               f"{'; ...' if len(shared) > 5 else ''}): held-out frames must be other scenes, from "
                               "other drives or minutes apart")


def seen_frames(search: Sequence[LabelledFrame], held_out: Sequence[LabelledFrame]
                ) -> list[tuple[LabelledFrame, str, LabelledFrame]]:
    """Each frame of ``held_out`` that is one of ``search`` (see :func:`check_disjoint`): the held-out frame, words
    saying how, and the searched frame it repeats."""
    thumbnails = {id(frame): thumbnail(frame.load_image()) for frame in [*search, *held_out]}
    hashes = {key: (perceptual_hash(small), small) for key, small in thumbnails.items()}
    seen = []
    for other in held_out:
        for frame in search:
            reason = _sameness(frame, other, hashes)
            if reason:
                seen.append((other, reason, frame))
                break
    return seen


def _sameness(frame: LabelledFrame, other: LabelledFrame, hashes: dict) -> str:
    """How ``other`` is the same frame as ``frame`` (words for the error), or '' when it is another; ``hashes``:
    each frame's perceptual hash and thumbnail, by ``id``."""
    if frame.digest == other.digest:
        return "a byte-for-byte copy of"
    (hash_one, small_one), (hash_two, small_two) = hashes[id(frame)], hashes[id(other)]
    distance = bin(hash_one ^ hash_two).count("1")
    if distance <= NEAR_COPY_BITS and float(np.abs(small_one - small_two).mean()) <= NEAR_COPY_GREY:
        return f"a near copy ({distance} of 63 perceptual-hash bits differ) of"
    # frames whose names show no drive, stamped by EXIF alone, are taken for one camera's
    if (frame.drive == other.drive and frame.stamp is not None and other.stamp is not None
            and abs(frame.stamp - other.stamp) <= SAME_DRIVE_SECONDS):
        return f"{abs(frame.stamp - other.stamp):.1f} s from, on the same drive ({frame.drive or 'by EXIF'}),"
    return ""
