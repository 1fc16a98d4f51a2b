"""Planner-ready anomalies: ground geometry from a calibrated camera, on-road flag, and tracks over sequences."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clipomaly_ros.core.config import ClipomalyConfig, ConfigError
from clipomaly_ros.core.scene.geometry import CalibrationError, CameraModel, CameraMounting, GroundLocator, project
from clipomaly_ros.core.method.pipeline import Clipomaly
from clipomaly_ros.core.scene.planning import AnomalyFollower
from clipomaly_ros.core.method.results import AnomalyRecord
from clipomaly_ros.tools.scenes import StandingObject, render_perspective_street, render_street
from clipomaly_ros.core.scene.tracking import AnomalyTracker

CAMERA = CameraModel(1280, 720, np.array([[1000.0, 0, 640], [0, 1000, 360], [0, 0, 1]]), np.zeros(5))
PERIOD_NS = 100_000_000


@pytest.fixture(scope="module")
def car_pipeline():
    """The toy pipeline with the camera 1.5 m up and 1.2 m ahead of base_link, pitched 2 degrees down."""
    return Clipomaly(ClipomalyConfig(backend="toy", camera_x=1.2, camera_z=1.5, camera_pitch=np.radians(2.0),
                                     track_min_hits=1))


def locate_one(pipeline, image, camera=CAMERA):
    follower = AnomalyFollower()
    follower.set_camera_info(camera)
    frame = follower.update(pipeline(image), 0, pipeline.config)
    assert len(frame.records) == 1, [r.name for r in frame.records]
    return frame.records[0], follower


@pytest.mark.parametrize("distance, lateral", [(5.0, 0.8), (10.0, -1.5), (20.0, 0.8), (40.0, -1.5)])
def test_distance_and_lateral_position_from_the_segmented_ground_contact(car_pipeline, distance, lateral):
    mounting = CameraMounting.from_config(car_pipeline.config)
    image, masks = render_perspective_street(CAMERA, mounting, [StandingObject("mattress", distance, lateral, 1.8,
                                                                               0.6)])
    record, _ = locate_one(car_pipeline, image)
    truth = np.hypot(distance, lateral)
    assert abs(record.ground.distance - truth) / truth < 0.05, record.ground
    assert abs(record.ground.y - lateral) < 0.3, record.ground
    assert abs(record.ground.width - 1.8) < 0.3 and abs(record.ground.height - 0.6) < 0.15, record.ground
    assert record.on_road is True and record.road_fraction > 0.8


def test_lens_distortion_and_a_resized_image_are_accounted_for():
    distorted = CameraModel(1280, 720, CAMERA.k, np.array([-0.3, 0.1, 0.0, 0.0, 0.0]))
    mounting = CameraMounting(z=1.6, pitch=0.05)
    image, masks = render_perspective_street(distorted, mounting, [StandingObject("tire", 12.0, -2.0, 0.7, 0.7)])
    ys, xs = np.nonzero(masks["tire"])
    box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    crop = masks["tire"][box[0]:box[1], box[2]:box[3]]
    estimate = GroundLocator(distorted, mounting).locate(box, crop)
    assert abs(estimate.distance - np.hypot(12.0, 2.0)) < 0.05 * np.hypot(12.0, 2.0)
    assert abs(estimate.y + 2.0) < 0.3
    # ignoring the distortion would be wrong by more: the test sees the undistortion
    naive = GroundLocator(CameraModel(1280, 720, CAMERA.k, np.zeros(5)), mounting).locate(box, crop)
    assert abs(naive.y + 2.0) > abs(estimate.y + 2.0)
    half = distorted.for_image(640, 360)
    assert half.k[0, 0] == 500 and half.k[0, 2] == 320
    with pytest.raises(CalibrationError, match="not a resize"):
        distorted.for_image(640, 640)
    with pytest.raises(CalibrationError, match="not calibrated"):
        CameraModel(640, 480, np.zeros((3, 3)), np.zeros(5))


def test_projection_and_rays_are_inverse():
    mounting = CameraMounting(x=1.0, y=0.3, z=1.4, roll=0.02, pitch=0.08, yaw=-0.1)
    points = np.array([[8.0, 1.0, 0.0], [25.0, -3.0, 0.5], [15.0, 0.0, 1.0]])
    pixels = project(CAMERA, mounting, points)
    rays = CAMERA.rays(pixels) @ mounting.optical_rotation.T
    towards = points - mounting.position
    towards /= np.linalg.norm(towards, axis=1, keepdims=True)
    assert np.allclose(rays, towards, atol=1e-9)


def test_no_ground_contact_above_the_horizon_is_counted_not_guessed():
    mounting = CameraMounting(z=1.5, pitch=0.0)
    box, mask = (100, 140, 600, 680), np.ones((40, 80), bool)  # rows 100..139: above the horizon row 360
    assert GroundLocator(CAMERA, mounting).locate(box, mask) is None
    image, _ = render_street(720, 1280, [("mattress", (600, 100, 680, 140))])
    pipeline = Clipomaly(ClipomalyConfig(backend="toy", track_min_hits=1))
    follower = AnomalyFollower()
    follower.set_camera_info(CAMERA)
    frame = follower.update(pipeline(image), 0, pipeline.config)
    assert frame.records and all(record.ground is None for record in frame.records)
    assert follower.counters.without_ground_contact == len(frame.records) and follower.counters.located == 0


def test_on_road_is_false_beside_the_road_and_drivable_classes_are_checked(car_pipeline):
    mounting = CameraMounting.from_config(car_pipeline.config)
    image, _ = render_perspective_street(CAMERA, mounting, [StandingObject("deer", 12.0, 5.0, 0.8, 1.2)])
    record, _ = locate_one(car_pipeline, image)
    assert record.on_road is False and record.road_fraction < 0.2  # it stands on the sidewalk
    assert record.ground is not None and abs(record.ground.y - 5.0) < 0.3
    with pytest.raises(ConfigError, match="drivable_classes.*not among known_classes"):
        ClipomalyConfig(backend="toy", drivable_classes=("runway",))
    no_road = Clipomaly(ClipomalyConfig(backend="toy", drivable_classes=()))
    assert all(r.on_road is None for r in no_road(image).anomalies)


def test_no_camera_info_means_no_3d_and_says_why(car_pipeline):
    image, _ = render_perspective_street(CAMERA, CameraMounting.from_config(car_pipeline.config),
                                         [StandingObject("mattress", 10.0, 0.0, 1.8, 0.6)])
    follower = AnomalyFollower(camera_info_source="/front/camera_info")
    frame = follower.update(car_pipeline(image), 0, car_pipeline.config)
    assert frame.no_3d_reason == "no camera_info received on /front/camera_info"
    assert frame.records[0].ground is None and follower.counters.frames_without_calibration == 1
    follower.set_camera_info(CameraModel(640, 640, CAMERA.k, np.zeros(5)))  # another camera's info
    frame = follower.update(car_pipeline(image), PERIOD_NS, car_pipeline.config)
    assert "not a resize" in frame.no_3d_reason and not frame.located


# --- tracking -------------------------------------------------------------------------------------------------------
def moving_sequence(frames: int, objects, height: int = 240, width: int = 320):
    """``frames`` toy street frames; ``objects`` is a list of (name, side, path) with ``path(t)`` -> the box's top
    left (x, y) at frame t, or None while it is hidden. Returns [(image, stamp_ns, {name: visible})]."""
    sequence = []
    for t in range(frames):
        placed = []
        for name, side, path in objects:
            corner = path(t)
            if corner is not None:
                x, y = corner
                placed.append((name, (int(x), int(y), int(x) + side, int(y) + side)))
        image, masks = render_street(height, width, placed, seed=t)
        sequence.append((image, t * PERIOD_NS, {n: m.sum() > 0 for n, m in masks.items()}))
    return sequence


def track_ids(pipeline, sequence, **settings):
    """Per frame, {name of the planted object under the anomaly's centroid: track id}."""
    config = pipeline.config.replace(**settings)
    follower = AnomalyFollower(pipeline.name_embeddings)
    ids = []
    for image, stamp, _ in sequence:
        frame = follower.update(pipeline(image), stamp, config)
        ids.append({record.track_name: (record.track_id, record.confirmed) for record in frame.records})
    return ids


@pytest.fixture(scope="module")
def street_pipeline():
    return Clipomaly(ClipomalyConfig(backend="toy", inference_size=240, min_region_area=150))


def test_two_objects_crossing_keep_their_ids(street_pipeline):
    # a deer walks right and a dog left; they pass each other mid-sequence, each within the other's gate (their
    # centres 38 pixels apart at the crossing, about one box diagonal), so only motion and names tell them apart
    sequence = moving_sequence(60, [("deer", 26, lambda t: (20 + 4 * t, 148)),
                                    ("dog", 26, lambda t: (270 - 4 * t, 186))])
    ids = track_ids(street_pipeline, sequence, track_min_hits=3, track_max_misses=5)
    deer = {frame["deer"][0] for frame in ids if "deer" in frame}
    dog = {frame["dog"][0] for frame in ids if "dog" in frame}
    assert len(deer) == 1 and len(dog) == 1 and deer != dog, (deer, dog)
    seen_both = sum("deer" in frame and "dog" in frame for frame in ids)
    assert seen_both >= 50  # both were found almost always, so the ids were really kept, not re-found
    assert ids[1]["deer"][1] is False and ids[2]["deer"][1] is True  # confirmed at the third hit


def test_hidden_for_fewer_than_max_misses_keeps_its_id_longer_gets_a_new_one(street_pipeline):
    def tyre(t):  # rolls right; hidden in frames 20..22 (3 frames) and 40..47 (8 frames)
        return None if 20 <= t <= 22 or 40 <= t <= 47 else (10 + 4 * t, 190)

    ids = track_ids(street_pipeline, moving_sequence(56, [("tire", 24, tyre)]), track_max_misses=5)
    before, after_short, after_long = ids[19]["tire"][0], ids[23]["tire"][0], ids[48]["tire"][0]
    assert before == after_short  # a 3-frame gap is bridged, the box predicted along its velocity
    assert after_long != before  # an 8-frame gap ends the track; ids are not reused
    assert after_long > before


def test_a_one_frame_blob_is_never_confirmed_nor_published(street_pipeline):
    sequence = moving_sequence(52, [("mattress", 40, lambda t: (140, 150)),
                                    ("cardboard box", 24, lambda t: (230, 195) if t == 25 else None)])
    config = street_pipeline.config.replace(track_min_hits=3)
    follower = AnomalyFollower(street_pipeline.name_embeddings)
    published_names = set()
    for image, stamp, _ in sequence:
        frame = follower.update(street_pipeline(image), stamp, config)
        published_names |= {record.track_name for record in frame.published}
        box = [record for record in frame.records if record.track_name == "cardboard box"]
        assert len(box) == (1 if stamp == 25 * PERIOD_NS else 0) and not any(r.confirmed for r in box)
    assert published_names == {"mattress"}
    assert follower.tracker.issued == 2


def test_replay_at_two_rates_gives_identical_tracks(tmp_path, capsys):
    from rosbags.highlevel import AnyReader

    from clipomaly_ros.ros.bags import typestore_with_built_msgs
    from clipomaly_ros.tools.cli import main

    from helpers import STORE, image_message

    sequence = moving_sequence(50, [("deer", 26, lambda t: (20 + 4 * t, 148)),
                                    ("dog", 26, lambda t: (270 - 4 * t, 186)),
                                    ("cardboard box", 24, lambda t: (230, 115) if t % 17 == 5 else None)])
    tracks = []
    for name, record_period in (("normal", PERIOD_NS), ("slow", 3 * PERIOD_NS)):
        # the same stamped frames, recorded as if played at 1x and at 1/3x: only the bag's times differ
        bag = tmp_path / name
        from rosbags.rosbag2 import Writer

        with Writer(bag, version=9) as writer:
            connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
            for index, (image, stamp, _) in enumerate(sequence):
                message = image_message(image, 1_700_000_000_000_000_000 + stamp)
                writer.write(connection, 1_800_000_000_000_000_000 + index * record_period,
                             STORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
        assert main(["replay", str(bag), "-o", str(tmp_path / f"{name}_out"), "--backend", "toy",
                     "--inference-size", "240", "--no-overlay"]) == 0
        with AnyReader([tmp_path / f"{name}_out"], default_typestore=typestore_with_built_msgs()) as reader:
            connections = [c for c in reader.connections if c.topic == "/anomalies"]
            tracks.append([[(d.id, d.results[0].hypothesis.class_id)
                            for d in reader.deserialize(raw, c.msgtype).detections]
                           for c, _, raw in reader.messages(connections=connections)])
    assert len(tracks[0]) == 50 and tracks[0] == tracks[1]
    published = {identifier for frame in tracks[0] for identifier, _ in frame}
    assert len(published) == 2  # deer and dog, confirmed; the box that flickers never
    printed = capsys.readouterr().out
    assert "; 5 tracks;" in printed  # deer, dog, and the box's three one-frame tracks
    assert "no 3D output: no camera_info received on /camera/camera_info" in printed


def record(identifier, name, x, y, side=40, candidates=None):
    return AnomalyRecord(id=identifier, name=name, score=0.9, bbox=(x, y, x + side - 1, y + side - 1),
                         area=side * side, centroid=(x + side / 2, y + side / 2),
                         candidates=candidates or ((name, 0.9),))


def test_same_named_objects_crossing_are_told_apart_by_their_motion():
    tracker = AnomalyTracker(min_hits=2, max_misses=3)
    first = {}
    for t in range(40):
        a, b = record(1, "rock", 10 + 10 * t, 100), record(2, "rock", 400 - 10 * t, 110)
        for tracked in tracker.update([a, b] if t % 2 else [b, a], t * PERIOD_NS):
            heading = "right" if tracked.bbox[0] == 10 + 10 * t else "left"
            assert first.setdefault(heading, tracked.track_id) == tracked.track_id, (t, heading)
    assert first["right"] != first["left"]


def test_the_name_is_voted_and_the_score_smoothed():
    tracker = AnomalyTracker(min_hits=1, max_misses=2)
    names = []
    for t in range(10):
        flip = t == 6  # one frame the naming prefers "boulder"
        candidates = (("boulder", 0.6), ("rock", 0.4)) if flip else (("rock", 0.7), ("boulder", 0.3))
        (tracked,) = tracker.update([record(1, candidates[0][0], 100, 100, candidates=candidates)], t * PERIOD_NS)
        names.append(tracked.track_name)
    assert names == ["rock"] * 10
    scores = []
    for t, score in enumerate((0.9, 0.1, 0.9, 0.1)):
        tracker = tracker if t else AnomalyTracker(min_hits=1)
        (tracked,) = tracker.update([AnomalyRecord(1, "tire", score, (0, 0, 9, 9), 100, (5, 5), ())], t)
        scores.append(tracked.track_score)
    assert max(scores[1:]) - min(scores[1:]) < 0.8 - 0.2  # the flicker is damped


def test_tracks_use_stamps_not_the_wall_clock_and_restart_when_time_goes_back(monkeypatch):
    def run(clock_speed):
        fake = [0.0]

        def tick():
            fake[0] += clock_speed
            return fake[0]

        for name in ("time", "monotonic", "perf_counter"):
            monkeypatch.setattr(time, name, tick)
        tracker = AnomalyTracker(min_hits=2, max_misses=2)
        out = []
        for t in range(30):
            hidden = 10 <= t <= 11
            out.append([(r.track_id, r.confirmed) for r in tracker.update(
                [] if hidden else [record(1, "deer", 5 * t, 50)], t * PERIOD_NS)])
        return out

    assert run(0.001) == run(10.0)
    tracker = AnomalyTracker(min_hits=1)
    (first,) = tracker.update([record(1, "deer", 0, 0)], 5 * PERIOD_NS)
    (again,) = tracker.update([record(1, "deer", 0, 0)], 1 * PERIOD_NS)  # a looped bag
    assert again.track_id != first.track_id and tracker.restarts == 1


def test_track_settings_apply_live(street_pipeline):
    sequence = moving_sequence(6, [("mattress", 40, lambda t: (140, 150))])
    follower = AnomalyFollower(street_pipeline.name_embeddings)
    confirmed = []
    for index, (image, stamp, _) in enumerate(sequence):
        config = street_pipeline.config.replace(track_min_hits=2 if index < 3 else 5)
        (tracked,) = follower.update(street_pipeline(image), stamp, config).records
        confirmed.append(tracked.confirmed)
    assert confirmed == [False, True, True, True, True, True]  # once confirmed, a track stays confirmed
    fresh = AnomalyFollower(street_pipeline.name_embeddings)
    later = [fresh.update(street_pipeline(image), stamp, street_pipeline.config.replace(track_min_hits=5))
             .records[0].confirmed for image, stamp, _ in sequence]
    assert later == [False, False, False, False, True, True]


def test_the_overlay_label_says_track_road_and_distance():
    from clipomaly_ros.core.scene.geometry import GroundEstimate
    from clipomaly_ros.core.method.overlay import anomaly_label

    plain = record(1, "mattress", 0, 0)
    assert anomaly_label(plain) == "mattress 0.90"
    import dataclasses

    tracked = dataclasses.replace(plain, track_id=3, track_name="mattress", track_score=0.8, confirmed=False,
                                  on_road=False, ground=GroundEstimate(12.0, 2.9, 0.0, 12.34, 1.8, 0.6))
    assert anomaly_label(tracked) == "#3? mattress 0.80 off road 12.3 m"
    assert anomaly_label(dataclasses.replace(tracked, confirmed=True, on_road=True)) == "#3 mattress 0.80 12.3 m"


def test_replay_writes_3d_outputs_from_the_recorded_camera_info(tmp_path, capsys):
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Writer

    from clipomaly_ros.ros.bags import typestore_with_built_msgs
    from clipomaly_ros.tools.cli import main

    from helpers import STORE, image_message

    camera = CameraModel(480, 270, np.array([[400.0, 0, 240], [0, 400, 135], [0, 0, 1]]), np.zeros(5))
    info_type = STORE.types["sensor_msgs/msg/CameraInfo"]
    header = STORE.types["std_msgs/msg/Header"]
    stamps = [1_700_000_000_000_000_000 + index * PERIOD_NS for index in range(4)]
    with Writer(tmp_path / "in", version=9) as writer:
        images = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=STORE)
        for index, stamp in enumerate(stamps):
            time_of = STORE.types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
            info = info_type(header=header(stamp=time_of, frame_id="cam"), height=270, width=480,
                             distortion_model="plumb_bob", d=np.zeros(5), k=camera.k.ravel(), r=np.eye(3).ravel(),
                             p=np.zeros(12), binning_x=0, binning_y=0,
                             roi=STORE.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                                                 width=0, do_rectify=False))
            writer.write(infos, stamp, STORE.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            image, _ = render_perspective_street(camera, CameraMounting(), [StandingObject("mattress", 15.0 - index,
                                                                                          1.0, 1.8, 0.6)], seed=index)
            writer.write(images, stamp, STORE.serialize_cdr(image_message(image, stamp), "sensor_msgs/msg/Image"))
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend", "toy", "--inference-size",
                 "240", "--no-overlay"]) == 0
    assert "3D: 4 anomalies located, 0 without ground contact" in capsys.readouterr().out
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        topics = {c.topic: c for c in reader.connections}
        assert topics["/cam/camera_info"].msgcount == 4  # copied with the images
        read = {name: [reader.deserialize(raw, c.msgtype) for c, _, raw in
                       reader.messages(connections=[topics[name]])]
                for name in ("/anomalies", "/anomalies_3d", "/anomaly_markers", "/anomaly_points")}
    assert [m.header.frame_id for m in read["/anomalies_3d"]] == ["base_link"] * 4
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in read["/anomalies_3d"]] == stamps
    # confirmed from the third frame on (track_min_hits 3): the 2D and 3D ids agree frame by frame
    assert [[d.id for d in m.detections] for m in read["/anomalies_3d"]] == \
        [[d.id for d in m.detections] for m in read["/anomalies"]] == [[], [], ["1"], ["1"]]
    front = read["/anomalies_3d"][3].detections[0].bbox
    assert abs(front.center.position.x - front.size.x / 2 - 12.0) < 0.6 and abs(front.center.position.y - 1.0) < 0.3
    assert [len(m.markers) for m in read["/anomaly_markers"]] == [1, 1, 3, 3]  # DELETEALL, then box and label
    # the Nav2 cloud, decoded from its bytes: the mattress (1.8 m wide, 0.6 m high, 12 m ahead, 1 m left)
    cloud = read["/anomaly_points"][3]
    assert cloud.header.frame_id == "base_link" and [f.name for f in cloud.fields] == ["x", "y", "z"]
    points = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 3)
    assert len(points) == cloud.width > 0 and read["/anomaly_points"][0].width == 0  # nothing confirmed yet
    assert points[:, 0].min() == pytest.approx(12.0, rel=0.05) and points[:, 1].mean() == pytest.approx(1.0, abs=0.3)
    assert points[:, 1].max() - points[:, 1].min() == pytest.approx(1.8, rel=0.15)
    assert points[:, 2].min() == pytest.approx(0.0, abs=0.05) and points[:, 2].max() == pytest.approx(0.6, rel=0.15)
    heights = np.unique(points[:, 2].round(4))
    assert np.diff(heights).max() <= 0.1 + 1e-6  # no gap a 10 cm costmap cell could fall through
