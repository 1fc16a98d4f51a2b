"""Image messages in, RGB arrays out, without ROS: ``sensor_msgs/Image`` in any supported encoding, and
``CompressedImage`` streams decoded by the CPU or, where the model runs on a GPU, by nvJPEG with a CPU fallback
(:class:`DeviceDecoder`). Sizes are checked before anything is decoded, and every failure is an
:class:`ImageConversionError` (live frames) or a :class:`BadRecordedFrame` (recorded ones) that says what was wrong.

Supported input encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16 (either byte order), with any row padding
in ``step``; compressed images in jpeg or png.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3, "mono16": 1,
            "16UC1": 1}
TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
          "mono8": cv2.COLOR_GRAY2RGB, "8UC1": cv2.COLOR_GRAY2RGB}


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image; the message says what was wrong."""


DEFAULT_MAX_PIXELS = 16_000_000
"""Largest input accepted by default, in pixels: room for 4K (3840 x 2160 = 8.3 MP) and more."""


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"{what} is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ImageConversionError(f"{what} is {width}x{height} = {width * height:,} pixels, more than "
                                   f"max_input_pixels ({max_pixels:,}): a corrupt header or a decompression bomb; "
                                   "raise max_input_pixels if the camera really sends such images")


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` as an RGB uint8 ``(H, W, 3)`` array (a copy; mono16 keeps its top 8 bits).

    The header's size is checked against ``max_pixels`` before anything is allocated."""
    encoding = str(msg.encoding)
    if encoding not in CHANNELS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}': publish one of "
                                   f"{', '.join(sorted(CHANNELS))}, or use input_transport: compressed")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, max_pixels, "image")
    bytes_per_pixel = CHANNELS[encoding] * (2 if encoding in ("mono16", "16UC1") else 1)
    if step < width * bytes_per_pixel:
        raise ImageConversionError(f"step {step} is smaller than width x bytes per pixel "
                                   f"({width} x {bytes_per_pixel}) for {encoding}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if data.size < step * height:
        raise ImageConversionError(f"image data has {data.size} bytes, fewer than step x height = "
                                   f"{step} x {height} = {step * height} (truncated message?)")
    rows = data[: step * height].reshape(height, step)[:, : width * bytes_per_pixel]
    if bytes_per_pixel == 2 * CHANNELS[encoding]:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        grey = (np.ascontiguousarray(rows).view(dtype).reshape(height, width) >> 8).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    pixels = np.ascontiguousarray(rows).reshape(height, width, CHANNELS[encoding]) if CHANNELS[encoding] > 1 \
        else np.ascontiguousarray(rows)
    if encoding in TO_RGB:
        return cv2.cvtColor(pixels, TO_RGB[encoding])
    return pixels.copy()


JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are other segments."""


def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared by a PNG's IHDR or a JPEG's frame header, read without decoding; ``None``
    when the bytes are neither (or the header is missing)."""
    data = bytes(data[:65536]) if isinstance(data, np.ndarray) else bytes(data[:65536])
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            return (int.from_bytes(data[position + 7:position + 9], "big"),
                    int.from_bytes(data[position + 5:position + 7], "big"))
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid stream
            return None
        position += 2 + length
    return None


def _compressed_stream(msg: Any, max_pixels: int) -> np.ndarray:
    """The checked bytes of a ``sensor_msgs/CompressedImage``: a jpeg or png stream whose declared size is at most
    ``max_pixels``."""
    form = str(msg.format).lower()
    if form and not any(kind in form for kind in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"unsupported compressed format '{msg.format}': jpeg and png are supported")
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    size = compressed_image_size(data)
    if size is None:
        raise ImageConversionError(f"compressed image ({msg.format or 'no format'}, {data.size} bytes) is not a "
                                   "jpeg or png stream with a readable header: corrupt or truncated data")
    _check_size(*size, max_pixels, f"compressed image ({msg.format or 'no format'})")
    return data


def compressed_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (jpeg or png) as an RGB uint8 ``(H, W, 3)`` array.

    The size the stream declares is checked against ``max_pixels`` before it is decoded."""
    return _decode_on_cpu(msg, _compressed_stream(msg, max_pixels))


def _decode_on_cpu(msg: Any, data: np.ndarray) -> np.ndarray:
    """The checked stream ``data`` of ``msg`` decoded by OpenCV: RGB uint8 ``(H, W, 3)``."""
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageConversionError(f"compressed image ({msg.format or 'no format'}, {data.size} bytes) could not be "
                                   "decoded: corrupt or truncated data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class DeviceDecoder:
    """Decodes ``sensor_msgs/CompressedImage`` frames where the model runs: a JPEG stream by nvJPEG on ``device``
    (an RGB uint8 ``(H, W, 3)`` tensor there, :func:`~clipomaly_ros.core.images.decode_jpeg_on_device`), a PNG
    stream by the CPU as :func:`compressed_msg_to_rgb` does; checked as that function checks.

    A JPEG the device cannot decode but the CPU can is a device failure, not a bad input: the frame is decoded by
    the CPU instead, each kind of failure (its exception and first line) is warned about once through ``warn`` and
    counted (:meth:`health`, for ``/diagnostics``). One the CPU cannot decode either is a bad input
    (:class:`ImageConversionError`). Called from the inference thread; :meth:`health` from any."""

    def __init__(self, device: Any, warn: Callable[[str], None] = lambda message: None):
        import threading

        self.device = device
        self.warn = warn
        self.failures: dict[str, int] = {}
        """Frames the device failed to decode and the CPU decoded, by kind of failure."""
        self._lock = threading.Lock()

    def __call__(self, msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Any:
        from ..core import images

        data = _compressed_stream(msg, max_pixels)
        if data[:2].tobytes() != b"\xff\xd8":  # PNG: nvJPEG cannot decode it
            return _decode_on_cpu(msg, data)
        try:
            return images.decode_jpeg_on_device(data, self.device)
        except Exception as error:  # noqa: BLE001 - nvJPEG and CUDA raise RuntimeError and more; the CPU decides
            kind = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"
        decoded = _decode_on_cpu(msg, data)  # raises ImageConversionError: the bytes are bad, not the device
        with self._lock:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            first = self.failures[kind] == 1
        if first:
            self.warn(f"the {self.device} decoder failed on a JPEG frame that the CPU decodes ({kind}): each frame it "
                      "fails on is decoded on the CPU, and counted in /diagnostics as a device decode failure")
        return decoded

    def health(self) -> dict[str, str | int]:
        """What ``/diagnostics`` says about the device decoder (empty while it has not failed)."""
        with self._lock:
            if not self.failures:
                return {}
            return {"device decode failures (decoded on the CPU)": sum(self.failures.values()),
                    "device decode failure kinds": "; ".join(f"{kind} x{count}" for kind, count in
                                                              self.failures.items())}


class BadRecordedFrame(ValueError):
    """One recorded image message that cannot be used: its bytes do not deserialise, or the image in it does not
    decode (:class:`ImageConversionError`). The offline tools count such a frame as skipped and go on; a bug in our
    own code (a TypeError, an AttributeError...) is never caught as one."""


def deserialize_recorded(reader: Any, raw: bytes, msgtype: str) -> Any:
    """The message in ``raw`` (one recorded message of ``msgtype``), or :class:`BadRecordedFrame` when its bytes
    are not a valid ``msgtype`` (rosbags' deserialisers raise many types for damaged bytes). Out of memory and I/O
    errors pass through: they say nothing about the message."""
    try:
        return reader.deserialize(raw, msgtype)
    except (MemoryError, OSError):
        raise
    except Exception as error:  # noqa: BLE001 - rosbags' code parsing the bytes: every failure means bad bytes
        raise BadRecordedFrame(f"its {len(raw)} bytes are not a valid {msgtype} ({type(error).__name__}: "
                               f"{error})") from None


def decode_recorded(message: Any, msgtype: str) -> np.ndarray:
    """The RGB image of a recorded ``sensor_msgs/Image`` or ``CompressedImage``; :class:`BadRecordedFrame` when it
    does not decode."""
    try:
        return DECODERS[msgtype](message)
    except ImageConversionError as error:
        raise BadRecordedFrame(str(error)) from None


DECODERS: dict[str, Callable[..., np.ndarray]] = {
    "sensor_msgs/msg/Image": image_msg_to_rgb,
    "sensor_msgs/msg/CompressedImage": compressed_msg_to_rgb,
}
"""The RGB decoder for each input message type (``decoder(msg, max_pixels)``), shared by the node and the
offline tools."""
