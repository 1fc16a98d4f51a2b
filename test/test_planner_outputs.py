"""Outputs for planners read back by an independent reader (rosbags, types built from the .msg text): Autoware's
DetectedObjects and Nav2's PointCloud2 from a replayed drive whose camera mounting comes from the bag's
/tf_static, against the drive's ground truth; the frame tree and the Autoware label map on their own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from scipy.spatial.transform import Rotation

from clipomaly_ros.core.config import ConfigError, load_config
from clipomaly_ros.core.scene.frames import FrameTree, RigidTransform
from clipomaly_ros.core.scene.geometry import CameraMounting
from clipomaly_ros.ros.autoware import OBJECT_LABELS, AutowareLabels, autoware_style, existence_probability
from clipomaly_ros.ros.bags import BUILT_MESSAGE_PACKAGES, typestore_with_built_msgs
from clipomaly_ros.tools.cli import main

from helpers import MOUNTED_CAMERA, STORE, image_message, mounted_drive, static_transforms

LABEL = {name: value for value, name in enumerate(OBJECT_LABELS)}


def write_drive_bag(path: Path, with_transforms: bool = True, damaged_info_at: int | None = None) -> list:
    """The :func:`mounted_drive` with its camera_info and /tf_static; ``damaged_info_at``: that frame's
    camera_info is written as bytes that do not deserialise."""
    camera, mounting, drive = mounted_drive()
    types = STORE.types
    with Writer(path, version=9) as writer:
        images = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=STORE)
        if with_transforms:
            static = writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=STORE)
            writer.write(static, drive[0][0] - 1, STORE.serialize_cdr(static_transforms(mounting),
                                                                      "tf2_msgs/msg/TFMessage"))
        for index, (stamp, image, _) in enumerate(drive):
            message = image_message(image, stamp, frame_id="camera_optical_frame")
            info = types["sensor_msgs/msg/CameraInfo"](
                header=message.header, height=camera.height, width=camera.width, distortion_model="plumb_bob",
                d=np.zeros(5), k=camera.k.ravel(), r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
                roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False))
            raw = STORE.serialize_cdr(info, "sensor_msgs/msg/CameraInfo")
            writer.write(infos, stamp, raw[:12] if index == damaged_info_at else raw)
            writer.write(images, stamp, STORE.serialize_cdr(message, "sensor_msgs/msg/Image"))
    return drive


def read_outputs(bag: Path, topics) -> dict[str, list]:
    with AnyReader([bag], default_typestore=typestore_with_built_msgs()) as reader:
        chosen = [c for c in reader.connections if c.topic in topics]
        read: dict[str, list] = {topic: [] for topic in topics}
        for connection, _, raw in reader.messages(connections=chosen):
            read[connection.topic].append(reader.deserialize(raw, connection.msgtype))
    return read


def stamp_of(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def front_of(detected) -> np.ndarray:
    """The middle of a polygon object's side facing the vehicle: the mean of its two footprint corners nearest to
    base_link's origin (the footprint is given around the pose, in base_link's axes)."""
    pose = detected.kinematics.pose_with_covariance.pose.position
    corners = np.array([[p.x + pose.x, p.y + pose.y] for p in detected.shape.footprint.points])
    return corners[np.argsort(np.hypot(*corners.T))[:2]].mean(axis=0)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drive")
    drive = write_drive_bag(folder / "in")
    assert main(["replay", str(folder / "in"), "-o", str(folder / "out"), "--backend", "toy", "--inference-size",
                 "240", "--no-overlay"]) == 0
    topics = ("/anomalies_objects", "/anomaly_points", "/anomalies", "/diagnostics", "/tf_static")
    return drive, read_outputs(folder / "out", topics), folder


def test_autoware_objects_sit_where_the_drive_put_them_with_the_mounting_from_tf_static(replayed):
    drive, read, _ = replayed
    truth_by_stamp = {stamp: truth for stamp, _, truth in drive}
    arrays = read["/anomalies_objects"]
    assert [stamp_of(m.header) for m in arrays] == [stamp for stamp, _, _ in drive]  # one per frame, image stamps
    assert {m.header.frame_id for m in arrays} == {"base_link"}
    located = {"mattress": 0, "deer": 0}
    for array in arrays:
        truth = truth_by_stamp[stamp_of(array.header)]
        for detected in array.objects:
            front = front_of(detected)
            name, (x, y) = min(truth.items(), key=lambda item: np.hypot(*(front - item[1])))
            # within 5 % of the range: the parameters' mounting (camera 1.5 m up at the origin, level) would miss
            assert np.hypot(*(front - (x, y))) < 0.05 * np.hypot(x, y), (name, front, (x, y))
            (classification,) = detected.classification
            assert classification.label == (LABEL["ANIMAL"] if name == "deer" else LABEL["HAZARD"])
            assert 0.0 < classification.probability <= 1.0 and 0.0 < detected.existence_probability <= 1.0
            kinematics = detected.kinematics
            assert kinematics.orientation_availability == 0 and kinematics.has_position_covariance
            assert not kinematics.has_twist
            assert detected.shape.type == 2 and len(detected.shape.footprint.points) == 4
            assert detected.shape.dimensions.z == pytest.approx(1.2 if name == "deer" else 0.8, rel=0.15)
            located[name] += 1
    assert located["mattress"] >= 20 and located["deer"] >= 10, located  # confirmed after track_min_hits frames


def test_the_position_covariance_grows_with_range_as_flat_ground_geometry_says(replayed):
    drive, read, _ = replayed
    height = MOUNTED_CAMERA["z"]
    checked = 0
    for array in read["/anomalies_objects"]:
        for detected in array.objects:
            covariance = np.array(detected.kinematics.pose_with_covariance.covariance).reshape(6, 6)
            position = detected.kinematics.pose_with_covariance.pose.position
            sight = np.array([position.x - MOUNTED_CAMERA["x"], position.y - MOUNTED_CAMERA["y"]])
            unit = sight / np.linalg.norm(sight)
            along = math.sqrt(unit @ covariance[:2, :2] @ unit)
            across = math.sqrt(np.array([-unit[1], unit[0]]) @ covariance[:2, :2] @ np.array([-unit[1], unit[0]]))
            # one pixel of contact_pixel_error: Z^2 / (f h) along the line of sight, Z / f across it
            front_range = np.hypot(*(front_of(detected) - [MOUNTED_CAMERA["x"], MOUNTED_CAMERA["y"]]))
            assert along == pytest.approx(front_range ** 2 / (500.0 * height), rel=0.1)
            assert across == pytest.approx(front_range / 500.0, rel=0.1)
            assert np.allclose(covariance, covariance.T) and covariance[5, 5] > 1.0  # heading: not observed
            checked += 1
    assert checked >= 30
    mattress = [o for a in read["/anomalies_objects"] for o in a.objects
                if o.classification[0].label == LABEL["HAZARD"]]
    first, last = (np.array(o.kinematics.pose_with_covariance.covariance)[0] for o in (mattress[0], mattress[-1]))
    assert first > 4 * last  # the mattress came from about 21 m to 11 m: the variance falls with range^4


def test_existence_probability_builds_up_along_a_track(replayed):
    _, read, _ = replayed
    mattress = [o.existence_probability for a in read["/anomalies_objects"] for o in a.objects
                if o.classification[0].label == LABEL["HAZARD"]]
    # first published when confirmed: seen in 3 of 3 frames; then near 1 while seen in nearly every frame
    assert mattress[0] == pytest.approx(0.875) and max(mattress) > 0.95 and min(mattress) > 0.5


def test_the_nav2_cloud_fills_each_anomaly_from_the_ground_to_its_top(replayed):
    drive, read, _ = replayed
    truth_by_stamp = {stamp: truth for stamp, _, truth in drive}
    clouds = [m for m in read["/anomaly_points"] if m.width > 0]
    assert len(clouds) >= 20 and {m.header.frame_id for m in clouds} == {"base_link"}
    # the frames where the mattress stands apart from the deer (2 m or more), so that its points are told apart
    apart = [c for c in clouds if all(abs(truth_by_stamp[stamp_of(c.header)]["mattress"][0] - xy[0]) >= 2.0
                                      for name, xy in truth_by_stamp[stamp_of(c.header)].items() if name == "deer")]
    assert len(apart) >= 15
    for cloud in apart:
        truth = truth_by_stamp[stamp_of(cloud.header)]
        points = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 3)
        x, y = truth["mattress"]
        near = points[np.abs(points[:, 0] - x) < 1.0]
        assert len(near) and near[:, 0].min() == pytest.approx(x, rel=0.05)
        assert near[:, 1].mean() == pytest.approx(y, abs=0.05 * x)
        assert near[:, 2].min() == pytest.approx(0.0, abs=0.05) and near[:, 2].max() == pytest.approx(0.8, rel=0.15)


def test_replay_copies_the_transforms_says_where_the_mounting_came_from_and_counts_every_topic(replayed, capsys):
    drive, read, _ = replayed
    assert len(read["/tf_static"]) == 1
    values = {kv.key: kv.value for kv in read["/diagnostics"][-1].status[0].values}
    assert values["mounting"] == "the bag's /tf_static and /tf: base_link <- camera_link <- camera_optical_frame"
    assert int(values["published anomalies_objects"]) == int(values["published anomaly_points"]) > 0
    # the deer passing behind the mattress: its lowest visible pixels are the mattress's top, not the road
    assert int(values["anomalies with a hidden ground contact"]) >= 1


def test_without_the_transforms_the_parameters_place_the_anomalies_and_say_so(tmp_path, capsys):
    write_drive_bag(tmp_path / "in", with_transforms=False)
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend", "toy",
                 "--inference-size", "240", "--no-overlay"]) == 0
    assert ("camera mounting from parameters (no transform from base_link to 'camera_optical_frame' on the bag's "
            "/tf_static and /tf)") in capsys.readouterr().out
    read = read_outputs(tmp_path / "out", ("/anomalies_objects",))
    fronts = [front_of(o) for a in read["/anomalies_objects"] for o in a.objects]
    # the defaults (1.5 m up, level, at the origin) put the same pixels elsewhere: more than 5 % off
    assert fronts and all(np.hypot(*f) > 0 for f in fronts)
    _, _, drive = mounted_drive()
    errors = [min(np.hypot(*(f - t)) / np.hypot(*t) for t in truth.values())
              for f, (_, _, truth) in zip(fronts, drive[-len(fronts):])]
    assert np.median(errors) > 0.05


def test_replay_and_mining_run_one_loop_with_the_bag_s_transforms_and_a_damaged_camera_info_left_out(tmp_path,
                                                                                                     capsys):
    """Mining runs the replay's per-frame loop: the mounting from /tf_static places its rows' anomalies where the
    drive put them, and a camera_info whose bytes are damaged is left out and reported alike by both (replay used
    to stop on it)."""
    pytest.importorskip("pyarrow")
    from clipomaly_ros.core.config import ClipomalyConfig
    from clipomaly_ros.core.method.pipeline import Clipomaly
    from clipomaly_ros.tools.mining.plan import plan
    from clipomaly_ros.tools.mining.shard import mine_shard

    drive = write_drive_bag(tmp_path / "in", damaged_info_at=5)
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backend", "toy",
                 "--inference-size", "240", "--no-overlay"]) == 0
    reported = [line for line in capsys.readouterr().err.splitlines() if "camera_info" in line]
    assert len(reported) == 1 and reported[0].startswith("left out a recorded camera_info on /cam/camera_info")
    assert len(read_outputs(tmp_path / "out", ("/anomalies",))["/anomalies"]) == len(drive)

    plans, problems = plan([tmp_path / "in"], None, 60.0)
    assert not problems and len(plans[0].shards) == 1
    outcome = mine_shard(Clipomaly(ClipomalyConfig(backend="toy", inference_size=240)), plans[0].shards[0])
    assert outcome.frames_processed == len(drive) and outcome.skipped_reasons == [reported[0]]
    truth = {stamp: objects for stamp, _, objects in drive}
    placed = 0
    for row in outcome.rows:
        assert row["distance_m"] is not None, row
        front = np.array([row["distance_m"], row["lateral_m"]])
        x, y = min(truth[row["best_stamp_ns"]].values(), key=lambda xy: abs(np.hypot(*xy) - front[0]))
        # distance and lateral offset from the transforms' mounting: the parameters' would be far more off
        assert abs(front[0] - np.hypot(x, y)) < 0.05 * np.hypot(x, y) and abs(front[1] - y) < 0.5, (row, (x, y))
        placed += 1
    assert placed >= 2


def test_frame_tree_composes_a_chain_through_the_common_ancestor():
    tree = FrameTree()
    mounting = CameraMounting(**MOUNTED_CAMERA)
    body = Rotation.from_euler("xyz", [mounting.roll, mounting.pitch, mounting.yaw]).as_quat()
    tree.set("base_link", "camera_link", RigidTransform.from_quaternion(mounting.position, body))
    tree.set("camera_link", "camera_optical_frame", RigidTransform.from_quaternion((0, 0, 0), (-0.5, 0.5, -0.5, 0.5)))
    tree.set("/base_link", "lidar", RigidTransform.from_quaternion((0.5, 0, 2.0), (0, 0, 0, 1)))
    transform, frames = tree.lookup("base_link", "camera_optical_frame")
    assert frames == ["camera_optical_frame", "camera_link", "base_link"]
    found = CameraMounting.from_optical_pose("base_link", transform.rotation, transform.translation)
    assert np.allclose(found.optical_rotation, mounting.optical_rotation) and np.allclose(found.position,
                                                                                          mounting.position)
    assert found.pitch == pytest.approx(MOUNTED_CAMERA["pitch"]) and found.yaw == pytest.approx(MOUNTED_CAMERA["yaw"])
    # from the camera into the lidar: through base_link; a point 10 m ahead of the camera's lens
    to_lidar, frames = tree.lookup("lidar", "camera_optical_frame")
    assert frames == ["camera_optical_frame", "camera_link", "base_link", "lidar"]
    point = to_lidar.rotation @ [0, 0, 10.0] + to_lidar.translation
    expected = mounting.optical_rotation @ [0, 0, 10.0] + mounting.position - [0.5, 0, 2.0]
    assert np.allclose(point, expected)
    assert tree.lookup("base_link", "unknown_frame") is None
    with pytest.raises(ValueError, match="not a rotation"):
        RigidTransform.from_quaternion((0, 0, 0), (0, 0, 0, 0))


def test_autoware_labels_map_names_sections_and_the_rest():
    labels = AutowareLabels.from_entries(["@animals=ANIMAL", "animal=ANIMAL", "traffic cone=HAZARD",
                                          "leaf=OVER_DRIVABLE", "*=UNKNOWN"])
    assert [labels.label(n) for n in ("deer", "moose", "animal", "leaf", "mattress")] == \
        [LABEL["ANIMAL"], LABEL["ANIMAL"], LABEL["ANIMAL"], LABEL["OVER_DRIVABLE"], LABEL["UNKNOWN"]]
    default = autoware_style(load_config(backend="toy"))[0]
    assert default.label("wild boar") == LABEL["ANIMAL"] and default.label("mattress") == LABEL["HAZARD"]
    with pytest.raises(ConfigError, match="names no section of the naming dictionary; its sections are .*animals"):
        autoware_style(load_config(backend="toy", autoware_labels=["@pets=ANIMAL"]))
    with pytest.raises(ConfigError, match="autoware_labels"):
        load_config(backend="toy", autoware_labels=["deer=GIRAFFE"])


def test_existence_probability_counts_sightings_and_misses():
    from clipomaly_ros.core.method.results import AnomalyRecord

    record = AnomalyRecord(1, "tire", 0.8, (0, 0, 9, 9), 100, (5.0, 5.0), ())
    assert existence_probability(record) == 0.5
    seen_three = record.__class__(**{**record.__dict__, "track_hits": 3, "track_age": 3})
    missed_three = record.__class__(**{**record.__dict__, "track_hits": 3, "track_age": 6})
    assert existence_probability(seen_three) == 0.875 and existence_probability(missed_three) == 0.4375


def test_the_built_message_types_have_upstreams_hashes_in_both_readers():
    """rosidl (what rclpy publishes) and rosbags (what reads the bags) hash the same definitions alike."""
    import sys

    share = Path(sys.prefix) / "share"
    store = typestore_with_built_msgs()
    checked = 0
    for package in BUILT_MESSAGE_PACKAGES:
        generated = share / package / "msg"
        if not generated.is_dir():
            pytest.skip(f"{package} is not built into {sys.prefix}: run scripts/setup_ros.sh")
        for description in generated.glob("*.json"):
            hashes = json.loads(description.read_text())["type_hashes"]
            own = next(h for h in hashes if h["type_name"] == f"{package}/msg/{description.stem}")
            assert store.hash_rihs01(own["type_name"]) == own["hash_string"], own["type_name"]
            checked += 1
    assert checked >= 12 + 1 + 5
