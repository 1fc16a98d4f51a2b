"""`clipomaly calibrate` and evaluate's per-instance report, on generated scenes with the toy backend.

The scenes are made so that the best uncertainty_threshold is known: each holds a labelled object (a blend of the
road's colour and the mattress's, uncertainty u_object) and an unlabelled decoy (a blend towards the dog's colour,
a lower uncertainty u_decoy, which the toy model names 'dog' when it is reported). A threshold below u_decoy reports
the decoy too (a false positive), one above u_object misses the object: the best lie between the two.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import cv2
import torch
import numpy as np
import pytest
import yaml

from conftest import ros_domain_id
from clipomaly_ros.core.config import ClipomalyConfig, load_config
from clipomaly_ros.core.method.pipeline import Clipomaly
from clipomaly_ros.core.model.toy_backend import TOY_LEXICON, ToyColourBackend
from clipomaly_ros.tools.calibration import SEARCHED, CalibrationError, SearchSpace, calibrate, read_frames
from clipomaly_ros.tools.cli import main
from clipomaly_ros.tools.evaluation import find_samples

TOY = ["--backend", "toy", "--inference-size", "64"]
ROAD = np.array(TOY_LEXICON["road"], float)


def toy_pipeline(tmp_path, **settings):
    return Clipomaly(ClipomalyConfig(backend="toy", inference_size=64, cache_dir=str(tmp_path / "cache"), **settings))


def blend(target: str, t: float) -> np.ndarray:
    return np.round((1 - t) * ROAD + t * np.array(TOY_LEXICON[target], float)).astype(np.uint8)


def uncertainty(pipeline, colour) -> float:
    return float(pipeline(np.broadcast_to(colour, (64, 64, 3)).copy()).anomaly_score.mean())


def colour_with_uncertainty(pipeline, target: str, goal: float) -> tuple[np.ndarray, float]:
    """The blend of road and ``target`` whose (flat) uncertainty is nearest ``goal``, by bisection (it rises
    with the share of ``target``), and that uncertainty."""
    low, high = 0.5, 1.0
    for _ in range(14):
        middle = (low + high) / 2
        low, high = (middle, high) if uncertainty(pipeline, blend(target, middle)) < goal else (low, middle)
    candidates = [blend(target, t) for t in (low, high)]
    values = [uncertainty(pipeline, c) for c in candidates]
    best = int(np.argmin([abs(v - goal) for v in values]))
    return candidates[best], values[best]


@pytest.fixture(scope="module")
def designed(tmp_path_factory):
    """Scenes with a known best threshold window: (folder, u_decoy, u_object, object colour, decoy colour)."""
    folder = tmp_path_factory.mktemp("calibration")
    pipeline = toy_pipeline(folder)
    decoy, u_decoy = colour_with_uncertainty(pipeline, "dog", 0.72)
    thing, u_object = colour_with_uncertainty(pipeline, "mattress", 0.9)
    assert 0.62 < u_decoy < 0.8 and 0.85 < u_object < 0.97 and u_object - u_decoy > 0.1, (u_decoy, u_object)
    for split, seed, count in (("train", 0, 6), ("val", 100, 3)):
        write_designed_scenes(folder / split, seed, count, thing, decoy)
    return folder, u_decoy, u_object, thing, decoy


def write_designed_scenes(folder, seed: int, count: int, thing, decoy) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        image = np.broadcast_to(ROAD.astype(np.uint8), (128, 192, 3)).copy()
        label = np.zeros((128, 192), np.uint8)
        x_object, x_decoy = rng.integers(8, 60), rng.integers(110, 150)
        y_object, y_decoy = rng.integers(10, 80), rng.integers(10, 80)
        image[y_object:y_object + 32, x_object:x_object + 32] = thing
        label[y_object:y_object + 32, x_object:x_object + 32] = 1
        image[y_decoy:y_decoy + 32, x_decoy:x_decoy + 32] = decoy  # unlabelled: reporting it is a false positive
        cv2.imwrite(str(folder / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "labels" / f"{index}.png"), label)


QUICK = SearchSpace(areas=(25,), radii=(0,), crop_weights=(0.5,))


def test_the_search_finds_the_threshold_the_scenes_were_made_for(designed, tmp_path):
    folder, u_decoy, u_object, _, _ = designed
    frames = read_frames(find_samples(folder / "train"), 1, 255)
    report = calibrate(toy_pipeline(tmp_path), frames, "f1", QUICK, data=str(folder / "train"), progress=False,
                       log=lambda _: None)
    step = 0.05
    chosen = report.chosen["uncertainty_threshold"]
    assert u_decoy - step <= chosen <= u_object + step, (chosen, u_decoy, u_object)  # within one grid step
    assert report.chosen["mean_f1"] == pytest.approx(1.0)
    # the default threshold (0.6) sits below the decoy: it is reported, and the score is worse
    assert report.default["uncertainty_threshold"] == 0.6 and report.default["mean_f1"] < 0.8
    # every threshold inside the window is as good, every one outside worse
    for trial in report.trials:
        inside = u_decoy < trial["uncertainty_threshold"] < u_object
        if abs(trial["uncertainty_threshold"] - u_decoy) > 0.02 and abs(trial["uncertainty_threshold"] - u_object) > 0.02:
            assert (trial["mean_f1"] == pytest.approx(1.0)) == inside, trial


def test_each_setting_scores_as_a_full_pipeline_run_though_naming_and_extension_run_once_per_distinct_input(
        tmp_path, monkeypatch):
    """The search names a region once per crop_weight and extends once per set of names and min_region_area, and
    its scores are, setting by setting and frame by frame, those of the pipeline's whole segmentation."""
    from clipomaly_ros.core.method import pipeline as pipeline_module
    from clipomaly_ros.tools.calibration import Calibrator
    from clipomaly_ros.tools.calibration.statistics import frame_statistics
    from clipomaly_ros.tools.metrics import ComponentScores

    from clipomaly_ros.tools.scenes import render_street_scene

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    for index, (planted, side) in enumerate([("mattress", 12), ("tire", 22), ("deer", 34), ("mattress", 44),
                                             ("tire", 60), ("deer", 16)]):
        x, y = 40 + 37 * index % 200, 120 + 11 * index
        image, mask = render_street_scene(240, 320, planted, (x, y, x + side, y + side), seed=index)
        # a smaller one of the same kind: at min_region_area 1600 it is no region of its own, and the extension
        # over that name keeps it only at the smaller areas
        small = cv2.resize(image[y:y + side, x:x + side], (28, 28), interpolation=cv2.INTER_NEAREST)
        image[196:224, 20:48], mask[196:224, 20:48] = small, True
        cv2.imwrite(str(tmp_path / "data" / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "data" / "labels" / f"{index}.png"), mask.astype(np.uint8))
    frames = read_frames(find_samples(tmp_path / "data"), 1, 255)
    calibrator = Calibrator(toy_pipeline(tmp_path), tmp_path / "features")
    extensions = []
    original = pipeline_module.Clipomaly.extended_instances
    monkeypatch.setattr(pipeline_module.Clipomaly, "extended_instances",
                        lambda self, *args: extensions.append(1) or original(self, *args))
    space = SearchSpace(thresholds=(0.3, 0.5, 0.7, 0.9), areas=(25, 400, 1600), radii=(0, 8), crop_weights=(0.0, 1.0))
    settings = [dict(uncertainty_threshold=t, min_region_area=a, cleanup_radius=r, crop_weight=w)
                for t in space.thresholds for a in space.areas for r in space.radii for w in space.crop_weights]
    stats = calibrator.score(frames, settings)
    assert 0 < len(extensions) < len(settings) * len(frames) / 2  # the same input is never extended twice
    monkeypatch.undo()
    whole_run = toy_pipeline(tmp_path / "whole")  # the pipeline as the node runs it: segment_batch, every stage
    for row, setting in list(enumerate(settings))[::3]:
        whole_run.configure(**setting)
        for column, frame in enumerate(frames):
            image, is_anomaly, void = frame.load()
            whole = ComponentScores()
            whole.add(whole_run(image).anomaly_mask, is_anomaly, void)
            np.testing.assert_array_equal(stats[row, column], frame_statistics(whole), err_msg=str(setting))


def test_a_second_run_makes_no_backbone_pass(designed, tmp_path, monkeypatch):
    folder = designed[0]
    calls = []
    original = ToyColourBackend.dense_features_batch
    monkeypatch.setattr(ToyColourBackend, "dense_features_batch",
                        lambda self, images: calls.append(len(images)) or original(self, images))
    frames = read_frames(find_samples(folder / "train"), 1, 255)
    first = calibrate(toy_pipeline(tmp_path), frames, "f1", QUICK, progress=False, log=lambda _: None)
    assert sum(calls) == len(frames) == first.backbone_passes  # once per image, however many settings
    assert len(first.trials) == len(QUICK.thresholds) + 1  # the grid and the starting settings
    calls.clear()
    frames = read_frames(find_samples(folder / "train"), 1, 255)
    second = calibrate(toy_pipeline(tmp_path), frames, "f1", QUICK, progress=False, log=lambda _: None)
    assert calls == [] and second.backbone_passes == 0  # read from the disk cache
    assert second.trials == first.trials
    calls.clear()
    calibrate(toy_pipeline(tmp_path), frames, "f1", SearchSpace(thresholds=(0.8,), areas=(25,), radii=(0,),
                                                                crop_weights=(0.5,)),
              progress=False, log=lambda _: None, memory_budget_mb=0.0)
    assert calls == []  # with no memory to hold them, features are read back from disk for each setting


@pytest.fixture(scope="module")
def tuned(designed, tmp_path_factory):
    """``clipomaly calibrate`` run once on the designed scenes: (TUNED.yaml, what it printed, plots folder)."""
    import contextlib
    import io

    folder, out = designed[0], tmp_path_factory.mktemp("tuned")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["calibrate", str(folder / "train"), "-o", str(out / "tuned.yaml"), "--val", str(folder / "val"),
                     "--radii", "0", "--areas", "25,400", "--crop-weights", "0.5,1", "--plots", str(out / "plots")]
                    + TOY)
    assert code == 0, printed.getvalue()
    return out / "tuned.yaml", printed.getvalue(), out / "plots"


def test_the_command_writes_a_parameter_file_the_search_and_curves_and_reports_held_out_data(designed, tuned,
                                                                                              tmp_path):
    folder, u_decoy, u_object, _, _ = designed
    tuned, out, plots = tuned
    assert "held-out, chosen" in out and "settings on 6 images" in out
    text = tuned.read_text()
    assert "# Objective: f1" in text and "# Held-out data (--val):" in text and "toy colour backend" in text
    parameters = yaml.safe_load(text)["/**/clipomaly"]["ros__parameters"]
    assert u_decoy - 0.05 <= parameters["uncertainty_threshold"] <= u_object + 0.05
    assert parameters["backend"] == "toy" and parameters["inference_size"] == 64
    config = load_config(tuned)  # every command reads it as its --config
    assert config.uncertainty_threshold == parameters["uncertainty_threshold"] and config.backend == "toy"
    search = json.loads(tuned.with_suffix(".json").read_text())
    assert len(search["trials"]) >= 14 * 2 and search["validation"]["images"] == 3
    assert search["validation"]["chosen"]["mean_f1"] > search["validation"]["default"]["mean_f1"]
    picture = cv2.imread(str(plots / "calibration_curves.png"))
    assert picture is not None and picture.std() > 10
    # and the segment command with it reports the object only
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.imread(str(folder / "val" / "images" / "0.png")))
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--config", str(tuned)]) == 0
    names = [a["name"] for a in json.loads((tmp_path / "seg" / "scene_anomalies.json").read_text())["anomalies"]]
    assert names == ["mattress"], names


def test_clear_errors_for_data_without_anomalies_and_ids_that_do_not_exist(designed, tmp_path, capsys):
    folder = designed[0]
    assert main(["calibrate", str(folder / "train"), "-o", str(tmp_path / "t.yaml"), "--anomaly-id", "7"] + TOY) == 2
    error = capsys.readouterr().err
    assert "no pixel of the 6 labels has the anomaly id 7 (ids present: 0, 1)" in error and "--anomaly-id" in error
    assert main(["calibrate", str(folder / "train"), "-o", str(tmp_path / "t.yaml"), "--ignore-id", "70000"]
                + TOY) == 2
    assert "label ids are 0..65535" in capsys.readouterr().err
    assert main(["calibrate", str(folder / "train"), "-o", str(tmp_path / "t.yaml"), "--thresholds", "0.5,1.5"]
                + TOY) == 2
    assert "uncertainty_threshold = 1.5 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "t.yaml").exists()


def test_evaluate_reports_each_instance_its_size_and_distance(tmp_path, capsys):
    """Objects standing 8 to 40 m ahead of a calibrated camera: each instance found or missed, with its size and
    the distance placed from the dataset's camera.yaml (within 5 % of the truth)."""
    from clipomaly_ros.tools.scenes import StandingObject, drive_camera, render_perspective_street

    camera, mounting = drive_camera()
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    truth = {}
    for index, distance in enumerate((8.0, 15.0, 40.0)):
        image, masks = render_perspective_street(camera, mounting, [StandingObject("mattress", distance, 0.0, 1.5,
                                                                                   0.6)], seed=index)
        cv2.imwrite(str(tmp_path / "set" / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "set" / "labels" / f"{index}.png"), masks["mattress"].astype(np.uint8))
        truth[str(index)] = distance
    (tmp_path / "set" / "camera.yaml").write_text(yaml.safe_dump({
        "width": camera.width, "height": camera.height, "k": camera.k.ravel().tolist(), "d": [0.0] * 5,
        "distortion_model": "plumb_bob", "camera_x": mounting.x, "camera_y": mounting.y, "camera_z": mounting.z,
        "camera_roll": mounting.roll, "camera_pitch": mounting.pitch, "camera_yaw": mounting.yaw}))
    assert main(["evaluate", str(tmp_path / "set"), "--backend", "toy", "--json", str(tmp_path / "r.json"),
                 "--plots", str(tmp_path / "plots")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    instances = {i["image"]: i for i in report["instances"]}
    assert sorted(instances) == ["0", "1", "2"]
    for stem, instance in instances.items():
        assert instance["distance_m"] == pytest.approx(truth[stem], rel=0.05), instance
        assert instance["found"] == (instance["siou"] > 0.5)
    sizes = [instances[s]["pixels"] for s in ("0", "1", "2")]
    assert sizes == sorted(sizes, reverse=True)  # nearer is bigger
    by_size = report["recall_by_size"]
    assert sum(by_size[name]["instances"] for name in ("small", "medium", "large")) == by_size["all"]["instances"] == 3
    assert "instances by size" in capsys.readouterr().out
    assert cv2.imread(str(tmp_path / "plots" / "instance_recall.png")) is not None


def test_the_node_runs_with_the_tuned_file_and_reports_what_it_was_tuned_for(designed, tuned, tmp_path):
    """A real node started with TUNED.yaml as its parameter file reports the object and not the decoy, where the
    settings it started from report both."""
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: run scripts/setup_ros.sh")
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built: run scripts/setup_ros.sh")
    folder, tuned = designed[0], tuned[0]
    image = cv2.cvtColor(cv2.imread(str(folder / "val" / "images" / "1.png")), cv2.COLOR_BGR2RGB)
    default_names = sorted(a.name for a in toy_pipeline(tmp_path)(image).anomalies)
    assert default_names == ["dog", "mattress"]
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    environment = {**os.environ, "ROS_DOMAIN_ID": ros_domain_id(7)}  # the rest of the ROS settings are conftest's
    node = subprocess.Popen([sys.executable, "-m", "clipomaly_ros.ros.process", "--ros-args", "--params-file", str(tuned),
                             "-p", "publish_unconfirmed:=true", "-p", "input_reliability:=reliable", "-r",
                             "__ns:=/tuned"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        np.save(tmp_path / "image.npy", image)
        probe = subprocess.run([sys.executable, str(script), str(tmp_path / "image.npy")], env=environment,
                               capture_output=True, text=True, timeout=120)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            log = node.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            node.kill()
            log = node.communicate()[0]
    assert probe.returncode == 0, probe.stdout + probe.stderr + log
    reported = json.loads(probe.stdout.strip().splitlines()[-1])
    assert reported["threshold"] == yaml.safe_load(tuned.read_text())["/**/clipomaly"]["ros__parameters"][
        "uncertainty_threshold"]
    assert reported["names"] == ["mattress"], (reported, log)


PROBE = '''
import json, sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.srv import GetParameters
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray
from clipomaly_ros.ros.messages import MessageFactory
from clipomaly_ros.ros.messages import ros_type

rclpy.init()
node = rclpy.create_node("probe", namespace="/tuned")
answers = []
node.create_subscription(Detection2DArray, "anomalies", answers.append, 10)
publisher = node.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
factory = MessageFactory(ros_type, byte_array=lambda array: array.tobytes())
image = np.load(sys.argv[1])
deadline = time.monotonic() + 90
while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
time.sleep(0.5)
publisher.publish(factory.image(factory.header(1800000000, 0, "camera"), image, "rgb8"))
while not answers and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
client = node.create_client(GetParameters, "/tuned/clipomaly/get_parameters")
client.wait_for_service(timeout_sec=10)
future = client.call_async(GetParameters.Request(names=["uncertainty_threshold"]))
rclpy.spin_until_future_complete(node, future, timeout_sec=10)
threshold = future.result().values[0].double_value
print(json.dumps({"threshold": threshold,
                  "names": sorted(d.results[0].hypothesis.class_id for d in answers[0].detections) if answers else None}))
'''


def write_block_scenes(folder, count: int, size: int, side: int, seed: int = 0) -> None:
    """``count`` road scenes of ``size`` x ``size`` pixels, each with one labelled mattress block of ``side``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index in range(count):
        image = np.broadcast_to(ROAD.astype(np.uint8), (size, size, 3)).copy()
        label = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size - side, 2)
        image[y:y + side, x:x + side] = TOY_LEXICON["mattress"]
        label[y:y + side, x:x + side] = 1
        cv2.imwrite(str(folder / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "labels" / f"{index}.png"), label)


def test_fpr95_is_measured_on_the_published_score_and_the_search_says_no_setting_changes_it(tmp_path):
    from clipomaly_ros.tools.metrics import PixelScores

    write_block_scenes(tmp_path / "blocks", 3, 256, 128)
    frames = read_frames(find_samples(tmp_path / "blocks"), 1, 255)
    def pipeline_at_128():  # fine enough that the blocks' edges are told from the road
        return Clipomaly(ClipomalyConfig(backend="toy", inference_size=128, cache_dir=str(tmp_path / "cache")))

    report = calibrate(pipeline_at_128(), frames, "fpr95", QUICK, progress=False, log=lambda _: None)
    expected = PixelScores()
    pipeline = pipeline_at_128()
    for frame in frames:
        image, is_anomaly, void = frame.load()
        expected.add(pipeline(image).anomaly_score, is_anomaly, ~void)
    fpr = expected.summary()["fpr_at_95_tpr"]
    assert fpr < 0.01  # reachable: the continuous score, not one zeroed outside the reported mask (which gave 1.0)
    assert report.chosen["fpr_at_95_tpr"] == pytest.approx(fpr)
    assert report.kept and report.chosen is report.default and len(report.trials) == 1
    assert "none of the searched settings" in report.decision and "fpr95" in report.decision


def test_the_best_is_not_the_first_grid_point_and_ties_never_go_to_grid_order(designed, tmp_path):
    folder, u_decoy, u_object, _, _ = designed
    frames = read_frames(find_samples(folder / "train"), 1, 255)
    report = calibrate(toy_pipeline(tmp_path), frames, "f1", QUICK, progress=False, log=lambda _: None)
    grid_trials = report.trials[1:]  # the first trial is the starting setting
    best_value = max(t["mean_f1"] for t in report.trials)
    tied = [t for t in report.trials if t["mean_f1"] == best_value]
    assert len(tied) > 1 and grid_trials[0]["mean_f1"] < best_value
    assert report.chosen is not tied[0] or len(tied) == 1 or tied[0]["uncertainty_threshold"] == min(
        t["uncertainty_threshold"] for t in tied)
    # of the equally good thresholds, the one nearest the starting 0.6: the lowest inside the window
    assert report.chosen["uncertainty_threshold"] == min(t["uncertainty_threshold"] for t in tied)
    assert not report.kept and "chose a new setting" in report.decision and report.noise_margin is not None
    # started inside the window: the current setting ties with the best, and it is kept
    inside = round(float(np.mean([u_decoy, u_object])), 2)
    kept = calibrate(toy_pipeline(tmp_path / "again", uncertainty_threshold=inside), frames, "f1", QUICK,
                     progress=False, log=lambda _: None)
    assert kept.kept and kept.chosen is kept.default and kept.chosen["uncertainty_threshold"] == inside
    assert "kept the current setting" in kept.decision
    # the whole search with every grid listed backwards chooses the same setting
    backwards = dataclasses.replace(QUICK, **{field.name: tuple(reversed(getattr(QUICK, field.name)))
                                             for field in dataclasses.fields(QUICK)
                                             if isinstance(getattr(QUICK, field.name), tuple)})
    reversed_report = calibrate(toy_pipeline(tmp_path / "backwards"), frames, "f1", backwards, progress=False,
                                log=lambda _: None)
    assert {name: reversed_report.chosen[name] for name in SEARCHED} == {name: report.chosen[name]
                                                                          for name in SEARCHED}


def test_the_feature_cache_key_changes_with_everything_that_changes_features(tmp_path):
    from types import SimpleNamespace

    from clipomaly_ros.tools.calibration import FEATURE_SETTINGS, feature_key

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights one")
    base = ClipomalyConfig(backend="toy", checkpoint=str(weights))
    backend = SimpleNamespace(identity="toy:colour")
    key = feature_key(SimpleNamespace(config=base, backend=backend))
    changes = {"backend": "open_clip", "model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k",
               "random_weights": True, "dense_method": "naclip", "window_layout": "light", "inference_size": 320,
               "window_size": 160, "window_stride": 100, "runtime": "onnx", "pamr_steps": 3}
    assert set(changes) | {"checkpoint", "onnx_model"} == set(FEATURE_SETTINGS)
    for name, value in changes.items():
        extra = {"checkpoint": ""} if name == "random_weights" else {}  # the two exclude each other
        changed = base.replace(**{name: value}, **extra)
        assert feature_key(SimpleNamespace(config=changed, backend=backend)) != key, name
    weights.write_bytes(b"weights two")  # other weights at the same path
    assert feature_key(SimpleNamespace(config=base, backend=backend)) != key
    engine = tmp_path / "e.onnx"
    engine.write_bytes(b"graph")
    assert feature_key(SimpleNamespace(config=base.replace(onnx_model=str(engine)), backend=backend)) != feature_key(
        SimpleNamespace(config=base, backend=backend))
    fp16 = SimpleNamespace(identity="toy:colour", model=torch.nn.Linear(1, 1).half())
    assert feature_key(SimpleNamespace(config=base, backend=fp16)) != feature_key(
        SimpleNamespace(config=base, backend=backend))
    # and what changes no feature leaves it alone
    assert feature_key(SimpleNamespace(config=base.replace(uncertainty_threshold=0.9, device="cpu"),
                                       backend=backend)) == feature_key(SimpleNamespace(config=base, backend=backend))


def test_held_out_data_that_shares_an_image_with_the_searched_data_is_refused(designed, tmp_path, capsys):
    import shutil

    folder = designed[0]
    val = tmp_path / "val"
    shutil.copytree(folder / "val", val)
    shutil.copyfile(folder / "train" / "images" / "2.png", val / "images" / "renamed.png")
    shutil.copyfile(folder / "train" / "labels" / "2.png", val / "labels" / "renamed.png")
    assert main(["calibrate", str(folder / "train"), "-o", str(tmp_path / "t.yaml"), "--val", str(val)] + TOY) == 2
    error = capsys.readouterr().err
    assert "--val holds 1 frame(s) of the searched data" in error and "a byte-for-byte copy of" in error
    assert "2.png" in error and "renamed.png" in error and not (tmp_path / "t.yaml").exists()


BUDGET_SCRIPT = """
import json, os, sys, threading, time
from pathlib import Path
from clipomaly_ros.core.config import ClipomalyConfig
from clipomaly_ros.core.method.pipeline import Clipomaly
from clipomaly_ros.tools.calibration import SearchSpace, calibrate, read_frames
from clipomaly_ros.tools.evaluation import find_samples

folder, budget = Path(sys.argv[1]), float(sys.argv[2])
pipeline = Clipomaly(ClipomalyConfig(backend="toy", inference_size=64, cache_dir=str(folder / "cache")))
frames = read_frames(find_samples(folder / "set"), 1, 255)
space = SearchSpace()  # the full default grid
def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

# the resident set sampled while calibrate runs, against its size just before: the process's peak (ru_maxrss) would
# also hold whatever came before, which depends on what the machine and the caches did earlier
before, highest, running = rss_mb(), [0.0], [True]
def sample():
    while running[0]:
        highest[0] = max(highest[0], rss_mb())
        time.sleep(0.005)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
report = calibrate(pipeline, frames, "f1", space, memory_budget_mb=budget, progress=False, log=lambda _: None)
running[0] = False
sampler.join()
print(json.dumps({"growth_mb": max(highest[0], rss_mb()) - before, "trials": report.trials,
                  "read": report.timing["images_read"], "frames": len(frames)}))
"""


def test_a_memory_budget_smaller_than_the_data_bounds_the_run_and_changes_no_result(tmp_path):
    """The full default grid on 16 full-HD frames: held whole (images, labels, scores, every setting's masks) they
    take over 200 MB; under a 20 MB budget the run grows by less than budget + 300 MB and finds what an unbounded
    run finds."""
    rng = np.random.default_rng(0)
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for index in range(16):
        image = np.broadcast_to(ROAD.astype(np.uint8), (1080, 1920, 3)).copy()
        label = np.zeros((1080, 1920), np.uint8)
        y, x = rng.integers(100, 800), rng.integers(100, 1500)
        image[y:y + 200, x:x + 300] = TOY_LEXICON["mattress"]
        label[y:y + 200, x:x + 300] = 1
        fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        cv2.imwrite(str(tmp_path / "set" / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), fast)
        cv2.imwrite(str(tmp_path / "set" / "labels" / f"{index}.png"), label, fast)
    script = tmp_path / "budget.py"
    script.write_text(BUDGET_SCRIPT)
    runs = {}
    for budget in (20.0, 100000.0):
        completed = subprocess.run([sys.executable, str(script), str(tmp_path), str(budget)], capture_output=True,
                                   text=True, timeout=1200)
        assert completed.returncode == 0, completed.stderr[-3000:]
        runs[budget] = json.loads(completed.stdout.strip().splitlines()[-1])
    bounded, unbounded = runs[20.0], runs[100000.0]
    print("memory budget runs:", runs)
    assert bounded["read"] > bounded["frames"] and unbounded["read"] == unbounded["frames"]  # read again: not kept
    assert bounded["growth_mb"] < 20 + 300, runs
    assert unbounded["growth_mb"] > bounded["growth_mb"] + 100, runs  # what the budget saved: the test can fail
    assert bounded["trials"] == unbounded["trials"]
