"""Masks in the forms the index and the labelling tools use, all of (H, W) bool arrays in full-frame pixels:

- COCO compressed RLE, ``{"size": [h, w], "counts": str}`` (column-major runs, pycocotools' encoding): the index's
  ``mask`` column, the decisions' corrected ``mask`` and COCO's ``segmentation``;
- CVAT's run lengths over a box (row-major, starting with a run of background), ``<mask rle=... left top width
  height>`` in CVAT for images 1.1;
- Label Studio's brush RLE: the RGBA pixels (H * W * 4 bytes, 255 inside) packed by the run-length bit stream its
  front end reads (a 32-bit value count, a 5-bit word size, four 4-bit run-length widths, then runs).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


class MaskError(ValueError):
    """A mask that is not what its format says (one line: what is wrong)."""


def encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a (H, W) bool mask: ``{"size": [h, w], "counts": str}`` (JSON and Parquet ready)."""
    if mask.ndim != 2:
        raise MaskError(f"a mask must be (H, W), got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE (compressed ``counts`` string, or the uncompressed list of runs)."""
    rle = checked(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        compressed = coco_mask.frPyObjects({"size": rle["size"], "counts": counts}, *rle["size"])
    else:
        compressed = {"size": rle["size"], "counts": counts.encode("ascii")}
    try:
        mask = coco_mask.decode(compressed).astype(bool)
    except Exception as error:  # noqa: BLE001 - pycocotools says little; the user gets one line
        raise MaskError(f"the mask's counts do not decode ({error})") from None
    return mask


def checked(rle) -> dict:
    """``rle`` if it is a whole COCO RLE (``size`` two positive ints, ``counts`` a compressed string or a list of
    non-negative ints, the runs either way summing to h * w); else :class:`MaskError` saying what is wrong."""
    if not isinstance(rle, dict) or set(rle) - {"size", "counts"} or "size" not in rle or "counts" not in rle:
        raise MaskError("a mask must be a COCO RLE object with exactly 'size' [h, w] and 'counts'")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 100_000 for v in size)):
        raise MaskError(f"a mask's size must be [height, width], two positive integers, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != size[0] * size[1]:
            raise MaskError("a mask's uncompressed counts must be non-negative runs adding up to height * width")
    elif not isinstance(counts, str) or not counts.isascii():
        raise MaskError("a mask's counts must be a string (compressed RLE) or a list of runs")
    elif (pixels := int(compressed_runs(counts).sum())) != size[0] * size[1]:
        raise MaskError(f"a mask's counts add up to {pixels} pixels, its size {size[0]} x {size[1]} has "
                        f"{size[0] * size[1]}: the counts are damaged")
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


def area(rle: dict) -> int:
    """The pixels inside a COCO RLE (checked first: raises :class:`MaskError`), without decoding it."""
    counts = checked(rle)["counts"]
    return int(sum((counts if isinstance(counts, list) else compressed_runs(counts))[1::2]))


MAX_RUN_DIGITS = 8
"""Most characters one run of a compressed RLE takes (40 bits: far more than any frame's pixel count)."""


def compressed_runs(counts: str) -> np.ndarray:
    """The run lengths (int64, column-major, background first) a compressed COCO ``counts`` string holds. Each run
    is written as 5-bit digits, least significant first, each character ``48 + digit`` with 0x20 set while more
    digits follow and 0x10 of the last one the sign; from the third run on, the value is the difference to the run
    two before. Raises :class:`MaskError` on a character outside the alphabet, a cut run or a negative run."""
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if not codes.size:
        return codes
    if codes.min() < 0 or codes.max() > 63:
        bad = counts[int(np.flatnonzero((codes < 0) | (codes > 63))[0])]
        raise MaskError(f"a mask's counts hold {bad!r}, which no compressed RLE holds")
    ends = np.flatnonzero((codes & 0x20) == 0)
    if not ends.size or ends[-1] != codes.size - 1:
        raise MaskError("a mask's counts end in the middle of a run")
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    digits = ends - starts + 1
    if digits.max() > MAX_RUN_DIGITS:
        raise MaskError("a mask's counts hold a run too long for any frame")
    place = np.arange(codes.size) - np.repeat(starts, digits)
    values = np.add.reduceat((codes & 0x1F) << (5 * place), starts)
    values = values - np.where(codes[ends] & 0x10, np.left_shift(1, 5 * digits), 0)
    # from the third run on, each is written as its difference to the run two before: undo by running sums
    values[3::2] = np.cumsum(values[1::2])[1:]
    values[2::2] = np.cumsum(values[2::2])
    if (values < 0).any():
        raise MaskError("a mask's counts hold a negative run")
    return values


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box of a mask's pixels, ``(left, top, width, height)`` in pixels; None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def box_runs(mask: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """CVAT's form: the runs (background first, row-major over the tight box) and the box ``(left, top, width,
    height)``. An empty mask is refused: CVAT has no empty mask."""
    box = box_of(mask)
    if box is None:
        raise MaskError("an empty mask has no box: CVAT cannot hold it")
    left, top, width, height = box
    return runs(mask[top:top + height, left:left + width].ravel()), box


def from_box_runs(counts: list[int], box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of CVAT's runs over ``box`` ``(left, top, box width, box height)``."""
    left, top, box_width, box_height = box
    if left < 0 or top < 0 or left + box_width > width or top + box_height > height or box_width < 1 or box_height < 1:
        raise MaskError(f"a mask's box {box} is outside its {width} x {height} image")
    if any(v < 0 for v in counts) or sum(counts) != box_width * box_height:
        raise MaskError(f"a mask's runs add up to {sum(counts)} pixels, its box has {box_width * box_height}")
    values = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + box_height, left:left + box_width] = values.reshape(box_height, box_width)
    return mask


def runs(values: np.ndarray) -> list[int]:
    """Run lengths of a flat bool array, alternating, starting with a (possibly empty) run of False."""
    flat = np.asarray(values, dtype=bool)
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    lengths = np.diff(bounds).tolist()
    return ([0] + lengths) if flat.size and flat[0] else lengths


BRUSH_RUN_WIDTHS = (3, 4, 8, 16)
"""Bits of the four run-length classes in Label Studio's brush stream (its own encoder's choice)."""


def brush_encode(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (a list of byte values) of a (H, W) bool mask: RGBA pixels, 255 inside, 0 outside,
    written as repeat runs of 8-bit words."""
    flat = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4)
    bits = _BitWriter()
    bits.write(flat.size, 32)
    bits.write(8 - 1, 5)
    for width in BRUSH_RUN_WIDTHS:
        bits.write(width - 1, 4)
    longest = 1 << BRUSH_RUN_WIDTHS[-1]
    position = 0
    for length in runs(flat):
        value = 255 if position % 2 else 0
        position += 1
        while length > 0:
            chunk = min(length, longest)
            width_class = next(k for k, w in enumerate(BRUSH_RUN_WIDTHS) if chunk - 1 < 1 << w)
            bits.write(1, 1)
            bits.write(width_class, 2)
            bits.write(chunk - 1, BRUSH_RUN_WIDTHS[width_class])
            bits.write(value, 8)
            length -= chunk
    return bits.bytes()


def brush_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of a Label Studio brush RLE: pixels whose alpha is not 0."""
    if not isinstance(rle, list) or not all(isinstance(v, int) and 0 <= v < 256 for v in rle):
        raise MaskError("a brush mask's rle must be a list of byte values (0 to 255)")
    bits = _BitReader(rle)
    count, word = bits.read(32), bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if count != height * width * 4:
        raise MaskError(f"a brush mask holds {count} values, its {width} x {height} image needs {height * width * 4}")
    values = np.zeros(count, dtype=np.uint32)
    index = 0
    while index < count:
        repeat = bits.read(1)
        stop = min(count, index + 1 + bits.read(widths[bits.read(2)]))
        if repeat:
            values[index:stop] = bits.read(word)
        else:
            for position in range(index, stop):
                values[position] = bits.read(word)
        index = stop
    return values.reshape(height, width, 4)[:, :, 3] > 0


class _BitWriter:
    """Bits written most significant first into bytes."""

    def __init__(self):
        self.words: list[tuple[int, int]] = []

    def write(self, value: int, width: int) -> None:
        self.words.append((value, width))

    def bytes(self) -> list[int]:
        number, total = 0, 0
        for value, width in self.words:
            number = (number << width) | value
            total += width
        padding = 8 - total % 8  # a whole zero byte when the bits fill whole bytes, as the SDK's encoder writes
        return list((number << padding).to_bytes((total + padding) // 8, "big"))


class _BitReader:
    """Bits read most significant first from a list of byte values."""

    def __init__(self, data: list[int]):
        self.number = int.from_bytes(bytes(data), "big")
        self.total = len(data) * 8
        self.position = 0

    def read(self, width: int) -> int:
        if self.position + width > self.total:
            raise MaskError("a brush mask's rle ends in the middle of a value")
        self.position += width
        return (self.number >> (self.total - self.position)) & ((1 << width) - 1)
