"""Message conversions, checked on plain objects and on rosbags' message classes (no ROS runtime needed)."""

from types import SimpleNamespace

import cv2
import numpy as np
import torch
import pytest

from clipomaly_ros.ros.bags import typestore_with_built_msgs
from clipomaly_ros.core.scene.geometry import GroundEstimate
from clipomaly_ros.core.scene.planning import PlannerFrame
from clipomaly_ros.core.method.results import AnomalyRecord, SegmentationResult
from clipomaly_ros.ros.messages import OUTPUT_TYPES, MessageFactory, published_instances, array_to_image_fields
from clipomaly_ros.ros.decoding import ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb

RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 255, (5, 7, 3), dtype=np.uint8)


def padded(rows: np.ndarray, padding: int) -> tuple[bytes, int]:
    """Row-major bytes with ``padding`` junk bytes after every row, and the step."""
    flat = rows.reshape(rows.shape[0], -1)
    junk = np.full((flat.shape[0], padding), 0xAB, dtype=np.uint8)
    return np.hstack([flat.view(np.uint8), junk]).tobytes(), flat.view(np.uint8).shape[1] + padding


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB), ("bgr8", RGB[..., ::-1]), ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[..., ::-1], np.zeros(RGB.shape[:2], np.uint8)])),
])
@pytest.mark.parametrize("padding", [0, 3])
def test_colour_encodings_with_row_padding(encoding, pixels, padding):
    data, step = padded(np.ascontiguousarray(pixels), padding)
    msg = SimpleNamespace(height=5, width=7, encoding=encoding, is_bigendian=0, step=step, data=data)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), RGB)


def test_mono8_and_mono16_in_both_byte_orders():
    grey = RGB[..., 0]
    msg = SimpleNamespace(height=5, width=7, encoding="mono8", is_bigendian=0, step=8, data=padded(grey, 1)[0])
    np.testing.assert_array_equal(image_msg_to_rgb(msg), np.dstack([grey] * 3))
    wide = grey.astype(np.uint16) * 256 + 17
    for big in (0, 1):
        data = wide.astype(">u2" if big else "<u2").tobytes()
        msg = SimpleNamespace(height=5, width=7, encoding="mono16", is_bigendian=big, step=14, data=data)
        np.testing.assert_array_equal(image_msg_to_rgb(msg)[..., 1], grey)


@pytest.mark.parametrize("fields, words", [
    ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
    ({"data": bytes(30)}, "fewer than step x height"),
    ({"step": 10}, "step 10 is smaller"),
    ({"height": 0}, "image is empty"),
])
def test_bad_raw_images_say_what_is_wrong(fields, words):
    msg = SimpleNamespace(**{**dict(height=5, width=7, encoding="rgb8", is_bigendian=0, step=21,
                                    data=RGB.tobytes()), **fields})
    with pytest.raises(ImageConversionError, match=words):
        image_msg_to_rgb(msg)


def test_compressed_png_and_jpeg_and_corrupt_data():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(compressed_msg_to_rgb(SimpleNamespace(format="png", data=png.tobytes())), RGB)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert compressed_msg_to_rgb(SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=jpeg)).shape == RGB.shape
    with pytest.raises(ImageConversionError, match="corrupt or truncated data"):
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=jpeg.tobytes()[:40]))
    with pytest.raises(ImageConversionError, match="could not be decoded"):  # header intact, data cut short
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=jpeg.tobytes()[:len(jpeg) // 2]))
    with pytest.raises(ImageConversionError, match="unsupported compressed format"):
        compressed_msg_to_rgb(SimpleNamespace(format="h264", data=b"x"))


def test_jpeg_decoded_where_the_model_runs_equals_the_cpu_decoder():
    from clipomaly_ros.ros.decoding import DeviceDecoder

    scene = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    message = SimpleNamespace(format="jpeg", data=jpeg.tobytes())
    decode = DeviceDecoder(torch.device("cpu"))
    # torchvision's decoder (nvJPEG on a GPU; libjpeg on the CPU, the only one here) against OpenCV's
    decoded = decode(message)
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.uint8 and tuple(decoded.shape) == (48, 64, 3)
    difference = np.abs(decoded.numpy().astype(int) - compressed_msg_to_rgb(message).astype(int))
    assert difference.max() <= 2
    ok, png = cv2.imencode(".png", cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode(SimpleNamespace(format="png", data=png.tobytes())), scene)  # the CPU's
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        decode(SimpleNamespace(format="jpeg", data=jpeg.tobytes()[:len(jpeg) // 2]))
    with pytest.raises(ImageConversionError, match="more than max_input_pixels"):
        decode(message, max_pixels=100)
    assert decode.health() == {}  # bad bytes are bad inputs, never device failures


def test_a_device_decoder_failure_falls_back_to_the_cpu_warns_once_per_kind_and_is_counted(monkeypatch):
    from clipomaly_ros.core import images
    from clipomaly_ros.ros.decoding import DeviceDecoder

    scene = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    message = SimpleNamespace(format="jpeg", data=jpeg.tobytes())
    errors = iter([RuntimeError("nvjpeg: NVJPEG_STATUS_EXECUTION_FAILED"), RuntimeError("nvjpeg: "
                   "NVJPEG_STATUS_EXECUTION_FAILED"), torch.cuda.OutOfMemoryError("CUDA out of memory")])

    def failing_device(data, device):
        raise next(errors)

    monkeypatch.setattr(images, "decode_jpeg_on_device", failing_device)
    warnings = []
    decode = DeviceDecoder(torch.device("cuda"), warnings.append)
    for _ in range(3):
        np.testing.assert_array_equal(decode(message), compressed_msg_to_rgb(message))  # the CPU decoded it
    assert len(warnings) == 2 and "NVJPEG_STATUS_EXECUTION_FAILED" in warnings[0] and "OutOfMemory" in warnings[1]
    health = decode.health()
    assert health["device decode failures (decoded on the CPU)"] == 3
    assert "RuntimeError: nvjpeg: NVJPEG_STATUS_EXECUTION_FAILED x2" in health["device decode failure kinds"]


def test_output_fields_round_trip():
    values = RNG.random((4, 6)).astype(np.float32)
    fields = array_to_image_fields(values, "32FC1")
    assert (fields.step, fields.encoding) == (24, "32FC1")
    np.testing.assert_array_equal(fields.data.view(np.float32).reshape(4, 6), values)
    ids = RNG.integers(0, 60000, (4, 6)).astype(np.uint16)
    np.testing.assert_array_equal(array_to_image_fields(ids, "mono16").data.view(np.uint16).reshape(4, 6), ids)
    with pytest.raises(ValueError, match="rgb8 needs"):
        array_to_image_fields(ids, "rgb8")


def test_factory_builds_serialisable_messages_with_rosbags_types():
    store = typestore_with_built_msgs()
    factory = MessageFactory(store.types)
    instances = np.zeros((6, 8), np.uint16)
    instances[1:3, 2:5] = 1
    instances[4:6, 6:8] = 2
    ground = GroundEstimate(x=12.0, y=-1.0, z=0.0, distance=12.04, width=0.8, height=0.5)
    tire = AnomalyRecord(id=1, name="tire", score=0.8, bbox=(2, 1, 4, 2), area=6, centroid=(3.0, 1.5),
                         candidates=(("tire", 0.8), ("rock", 0.1)), on_road=True, road_fraction=0.9,
                         ground=ground, track_id=7, track_name="tire", track_score=0.7, confirmed=True)
    blob = AnomalyRecord(id=2, name="rock", score=0.6, bbox=(6, 4, 7, 5), area=4, centroid=(6.5, 4.5),
                         candidates=(), on_road=False, track_id=9, track_name="rock", track_score=0.6,
                         confirmed=False)
    result = SegmentationResult(semantic=np.zeros((6, 8), np.uint16), labels=["road", "tire", "rock"],
                                anomaly_score=np.zeros((6, 8), np.float32), anomaly_mask=instances > 0,
                                instances=instances, anomalies=[tire, blob], known_count=1)
    header = factory.header(12, 34, "cam")
    frame = PlannerFrame(records=[tire, blob], published=[tire], base_frame="base_link", no_3d_reason=None)
    messages = factory.result_messages(header, result, frame)
    (detection,) = messages["anomalies"].detections  # the unconfirmed track is not published
    assert detection.id == "7" and [r.hypothesis.class_id for r in detection.results] == ["tire", "rock"]
    assert detection.results[0].hypothesis.score == pytest.approx(0.7)  # the track's smoothed score
    assert (detection.bbox.size_x, detection.bbox.size_y) == (3.0, 2.0)
    assert (detection.bbox.center.position.x, detection.bbox.center.position.y) == (3.5, 2.0)
    assert [d.id for d in messages["anomalies_on_road"].detections] == ["7"]
    (located,) = messages["anomalies_3d"].detections
    assert located.id == "7" and messages["anomalies_3d"].header.frame_id == "base_link"
    assert messages["anomalies_3d"].header.stamp.sec == 12
    assert located.bbox.center.position.z == pytest.approx(0.25) and located.bbox.size.y == pytest.approx(0.8)
    markers = messages["anomaly_markers"].markers
    assert markers[0].action == 3 and [(m.ns, m.id) for m in markers[1:]] == [("anomalies", 7), ("anomaly_labels", 7)]
    assert "tire" in markers[2].text and "12.0 m" in markers[2].text
    # the join: pixel value k belongs to the k-th published detection; unpublished anomalies are 0
    published = image_msg_to_rgb(messages["anomaly_instances"])
    assert published[1, 2, 0] == 0 and published[4, 6, 0] == 0  # mono16 value 1 reads 0 in the top 8 bits
    assert np.array_equal(published_instances(result, frame.published), (instances == 1).astype(np.uint16))
    for topic, message in messages.items():
        msgtype = OUTPUT_TYPES[topic]
        decoded = store.deserialize_cdr(store.serialize_cdr(message, msgtype), msgtype)
        header_of = decoded.markers[0].header if topic == "anomaly_markers" else decoded.header
        assert header_of.stamp.sec == 12
    back = image_msg_to_rgb(messages["anomaly_mask"])
    assert back[1, 2, 0] == 255 and back[0, 0, 0] == 0
    info = factory.label_info(header, result.labels, 0.5)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "road"), (1, "tire"), (2, "rock")]
    without_camera = factory.result_messages(header, result, PlannerFrame([tire], [tire], "base_link", "no info"))
    assert "anomalies_3d" not in without_camera and "anomaly_markers" not in without_camera


def png_header_declaring(width, height):
    """The first bytes of a PNG whose header declares ``width`` x ``height``: a decompression bomb's shape."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def test_declared_sizes_are_read_without_decoding():
    from clipomaly_ros.ros.decoding import compressed_image_size

    image = np.zeros((37, 53, 3), np.uint8)
    for extension, options in ((".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        assert compressed_image_size(cv2.imencode(extension, image, options)[1].tobytes()) == (53, 37)
    assert compressed_image_size(png_header_declaring(100_000, 90_000)) == (100_000, 90_000)
    assert compressed_image_size(b"\xff\xd8 broken") is None and compressed_image_size(b"GIF89a") is None


def test_images_larger_than_the_limit_are_rejected_before_any_allocation():
    bomb = SimpleNamespace(format="png", data=png_header_declaring(100_000, 90_000))
    with pytest.raises(ImageConversionError, match="9,000,000,000 pixels, more than max_input_pixels"):
        compressed_msg_to_rgb(bomb)
    # a raw header claiming a huge image with only a few bytes: the size check comes first
    huge = SimpleNamespace(height=2**20, width=2**20, encoding="rgb8", is_bigendian=0, step=3 * 2**20, data=b"x")
    with pytest.raises(ImageConversionError, match="more than max_input_pixels"):
        image_msg_to_rgb(huge)
    small = SimpleNamespace(height=5, width=7, encoding="rgb8", is_bigendian=0, step=21, data=RGB.tobytes())
    with pytest.raises(ImageConversionError, match="35 pixels, more than max_input_pixels \\(34\\)"):
        image_msg_to_rgb(small, max_pixels=34)
    assert image_msg_to_rgb(small, max_pixels=35).shape == (5, 7, 3)


def test_any_decoder_failure_is_a_bad_input():
    from clipomaly_ros.ros.camera import decode_frame

    def broken(message, max_pixels):
        raise IndexError("deep inside a decoder")

    with pytest.raises(ImageConversionError, match="IndexError: deep inside a decoder"):
        decode_frame(broken, object(), 100)


def test_the_watchdog_reports_frames_waiting_without_progress():
    from clipomaly_ros.ros.camera import Watchdog

    now = [100.0]
    watchdog = Watchdog(timeout=5.0, clock=lambda: now[0])
    assert watchdog.stalled_for() is None
    watchdog.frame_waiting()
    now[0] += 4.0
    watchdog.frame_waiting()  # later frames do not restart the wait
    assert watchdog.stalled_for() is None
    now[0] += 2.0
    assert watchdog.stalled_for() == pytest.approx(6.0)
    watchdog.progress()
    assert watchdog.stalled_for() is None
    now[0] += 60.0  # no frames, no stall: an idle camera is not an error
    assert watchdog.stalled_for() is None
