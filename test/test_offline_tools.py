"""clipomaly replay and clipomaly evaluate, end to end on generated bags and data sets (toy backend)."""

import json
from pathlib import Path

import cv2
import numpy as np
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from clipomaly_ros.core.method.overlay import class_colour
from clipomaly_ros.tools.scenes import render_street_scene
from clipomaly_ros.core.model.toy_backend import TOY_LEXICON
from clipomaly_ros.ros.bags import typestore_with_built_msgs
from clipomaly_ros.ros.decoding import image_msg_to_rgb
from clipomaly_ros.tools.cli import main

from helpers import FIRST_STAMP_NS, STORE, image_message, toy_frames, write_image_bag

TOY = ["--backend", "toy", "--inference-size", "240"]


def every_frame_params(folder: Path) -> list[str]:
    """Options for a parameter file that publishes unconfirmed tracks too, so each frame's anomalies are output
    (the frames of these tests change objects every frame)."""
    path = folder / "every_frame.yaml"
    path.write_text("clipomaly:\n  ros__parameters:\n    publish_unconfirmed: true\n")
    return ["--config", str(path)]


def test_replay_writes_every_output_topic_with_input_stamps(tmp_path, capsys):
    frames = toy_frames(4)
    stamps = write_image_bag(tmp_path / "in", [f[0] for f in frames], topic="/camera/image_raw")
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--namespace", "cam"] + TOY
                + every_frame_params(tmp_path)) == 0
    assert "frames read 4, processed 4, failed 0" in capsys.readouterr().out
    store = typestore_with_built_msgs()
    with AnyReader([tmp_path / "out"], default_typestore=store) as reader:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        assert topics["/camera/image_raw"] == ("sensor_msgs/msg/Image", 4)
        for name in ("anomalies", "semantic", "anomaly_score", "anomaly_mask", "anomaly_instances", "overlay",
                     "semantic_color"):
            assert topics[f"/cam/{name}"][1] == 4, name
        assert topics["/cam/label_info"][0] == "vision_msgs/msg/LabelInfo"
        assert topics["/diagnostics"][0] == "diagnostic_msgs/msg/DiagnosticArray"
        by_topic = {}
        for connection, timestamp, raw in reader.messages():
            message = reader.deserialize(raw, connection.msgtype)
            stamp = message.header.stamp.sec * 10**9 + message.header.stamp.nanosec
            assert stamp == timestamp  # outputs recorded at their input's time
            by_topic.setdefault(connection.topic, []).append(message)
    assert sorted(timestamp for timestamp in stamps) == [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
                                                        for m in by_topic["/cam/anomalies"]]
    for (image, planted, _), detections, instances in zip(frames, by_topic["/cam/anomalies"],
                                                          by_topic["/cam/anomaly_instances"]):
        assert [d.results[0].hypothesis.class_id for d in detections.detections] == ([planted] if planted else [])
        values = np.unique(instances.data.view(np.uint16))  # value k: the k-th detection
        assert [int(v) for v in values if v] == list(range(1, len(detections.detections) + 1))
    assert image_msg_to_rgb(by_topic["/cam/overlay"][0]).shape == frames[0][0].shape
    # semantic_color paints each pixel in its class colour: the planted object's pixels in its name's colour
    colours = image_msg_to_rgb(by_topic["/cam/semantic_color"][0])
    assert (colours[frames[0][2]] == class_colour(frames[0][1])).all(axis=1).mean() > 0.95
    with open(next((tmp_path / "out").glob("*.mcap")), "rb") as stream:
        channels = {channel.topic for _, channel, _ in make_reader(stream).iter_messages()}
    assert "/cam/anomalies" in channels and "/camera/image_raw" in channels


def test_replay_of_compressed_sqlite_bag_counts_a_bad_frame_and_goes_on(tmp_path, capsys):
    frames = toy_frames(3)
    path = tmp_path / "in"
    msgtype = "sensor_msgs/msg/CompressedImage"
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection("/cam/image/compressed", msgtype, typestore=STORE)
        for index, (image, _, _) in enumerate(frames):
            message = image_message(image, FIRST_STAMP_NS + index, compressed=True)
            if index == 1:
                message = type(message)(header=message.header, format="jpeg", data=message.data[:50])
            writer.write(connection, FIRST_STAMP_NS + index, STORE.serialize_cdr(message, msgtype))
    code = main(["replay", str(path), "-o", str(tmp_path / "out"), "--storage", "sqlite3"] + TOY)
    captured = capsys.readouterr()
    assert code == 1
    assert "frames read 3, processed 2, failed 1" in captured.out
    assert "corrupt or truncated data" in captured.err
    with AnyReader([tmp_path / "out"], default_typestore=typestore_with_built_msgs()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/cam/image/compressed"] == 3 and counts["/anomalies"] == 2


def test_replay_reports_truncated_image_messages(tmp_path, capsys):
    image = toy_frames(1)[0][0]
    path = tmp_path / "in"
    msgtype = "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/cam/image", msgtype, typestore=STORE)
        good = image_message(image, FIRST_STAMP_NS)
        short = type(good)(header=good.header, height=480, width=640, encoding="rgb8", is_bigendian=0, step=1920,
                           data=np.zeros(30, np.uint8))
        writer.write(connection, FIRST_STAMP_NS, STORE.serialize_cdr(short, msgtype))
        writer.write(connection, FIRST_STAMP_NS + 1, STORE.serialize_cdr(good, msgtype))
    assert main(["replay", str(path), "-o", str(tmp_path / "out")] + TOY) == 1
    captured = capsys.readouterr()
    assert "processed 1, failed 1" in captured.out and "fewer than step x height" in captured.err


def test_replay_of_a_truncated_or_missing_bag_is_a_clear_error(tmp_path, capsys):
    write_image_bag(tmp_path / "in", [f[0] for f in toy_frames(6)])
    data_file = next((tmp_path / "in").glob("*.mcap"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out")] + TOY) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nothing"), "-o", str(tmp_path / "out2")] + TOY) == 2
    assert "no such bag" in capsys.readouterr().err


def test_replay_needs_a_topic_choice_when_there_are_several(tmp_path, capsys):
    write_image_bag(tmp_path / "in", [f[0] for f in toy_frames(1)])
    assert main(["replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--image-topic", "/nope"] + TOY) == 2
    assert "no image topic '/nope'" in capsys.readouterr().err


def make_dataset(folder, planted=("mattress", "tire", "deer"), border_void=True):
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index, name in enumerate(planted):
        image, truth = render_street_scene(240, 320, planted=name, seed=index)
        label = truth.astype(np.uint8)
        if border_void:
            label[:5] = 255
        cv2.imwrite(str(folder / "images" / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "labels" / f"{index}.png"), label)


def test_evaluate_scores_a_toy_data_set(tmp_path, capsys):
    make_dataset(tmp_path / "set")
    assert main(["evaluate", str(tmp_path / "set"), "--json", str(tmp_path / "report.json")] + TOY) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 3
    assert report["pixel"]["auprc"] > 0.9 and report["pixel"]["auroc"] > 0.95
    assert report["pixel"]["fpr_at_95_tpr"] < 0.05
    assert report["component"]["mean_siou"] > 0.8 and report["component"]["mean_f1"] > 0.9
    assert report["anomaly_names"] == {"mattress": 1, "tire": 1, "deer": 1}
    assert "AUPRC" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "set"), "--limit", "1", "--json", str(tmp_path / "one.json")] + TOY) == 0
    assert json.loads((tmp_path / "one.json").read_text())["images"] == 1


def test_evaluate_plots_the_precision_recall_curve_and_score_histograms(tmp_path, capsys):
    make_dataset(tmp_path / "set")
    plots = tmp_path / "plots"
    assert main(["evaluate", str(tmp_path / "set"), "--plots", str(plots), "--json", str(tmp_path / "r.json")]
                + TOY) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(Path(p).name for p in report["plots"]) == ["instance_recall.png", "precision_recall.png",
                                                             "score_histogram.png"]
    for name in ("precision_recall.png", "score_histogram.png", "instance_recall.png"):
        picture = cv2.imread(str(plots / name))
        assert picture is not None and picture.shape[0] > 300 and picture.std() > 10, name
    assert "precision_recall.png" in capsys.readouterr().out


def test_plot_titles_stay_inside_the_picture(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    inside = []
    save = Figure.savefig

    def checked_savefig(figure, *args, **kwargs):
        renderer = figure.canvas.get_renderer()
        for axes in figure.axes:
            title, frame = axes.title.get_window_extent(renderer), figure.bbox
            inside.append(title.x0 >= frame.x0 and title.x1 <= frame.x1 and title.y1 <= frame.y1)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checked_savefig)
    folder = tmp_path / "road_anomaly_validation_frames_from_the_second_test_drive"  # the title is the set's name
    make_dataset(folder)
    assert main(["evaluate", str(folder), "--plots", str(tmp_path / "plots")] + TOY) == 0
    assert inside == [True, True, True]


def test_evaluate_without_anomaly_pixels_says_so(tmp_path, capsys):
    make_dataset(tmp_path / "set", planted=(None, None))
    assert main(["evaluate", str(tmp_path / "set")] + TOY) == 2
    assert "no anomaly pixels" in capsys.readouterr().err


def test_known_classes_miou_mode(tmp_path, capsys):
    make_dataset(tmp_path / "set", planted=("mattress",))
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "set" / "images" / "0.png")), cv2.COLOR_BGR2RGB)
    known = list(TOY_LEXICON)[:19]
    palette = np.array([TOY_LEXICON[name] for name in known], dtype=np.float32)
    distance = ((image[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    train_ids = distance.argmin(-1).astype(np.uint8)
    train_ids[distance.min(-1) > 60 ** 2] = 255  # the planted object is no known class
    cv2.imwrite(str(tmp_path / "set" / "labels" / "0.png"), train_ids)
    assert main(["evaluate", str(tmp_path / "set"), "--known-classes-miou", "--json", str(tmp_path / "m.json")]
                + TOY) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["known_class_iou"]["road"] > 0.95 and report["known_class_iou"]["car"] > 0.9
    assert report["known_class_iou"]["train"] is None  # absent from truth and prediction
    assert report["miou"] > 0.9


def test_evaluate_rejects_a_wrong_layout(tmp_path, capsys):
    (tmp_path / "set" / "images").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "set")] + TOY) == 2
    assert "images/ and labels/" in capsys.readouterr().err


def test_evaluate_never_writes_nan_and_says_when_nothing_was_predicted(tmp_path, capsys):
    make_dataset(tmp_path / "set", planted=("mattress",))
    # a known class named like the planted object: the pipeline finds no anomaly at all
    assert main(["evaluate", str(tmp_path / "set"), "--json", str(tmp_path / "r.json"),
                 "--known", "road,sidewalk,building,vegetation,sky,car,mattress"] + TOY) == 0

    def no_nan(constant):
        raise AssertionError(f"{constant} in JSON")

    report = json.loads((tmp_path / "r.json").read_text(), parse_constant=no_nan)
    assert report["component"]["predicted_components"] == 0 and report["component"]["mean_ppv"] is None
    assert "no predicted components" in capsys.readouterr().out


def test_clear_errors_for_a_folder_given_as_an_image_an_empty_bag_and_play_arguments(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["segment", str(tmp_path / "images"), "-o", str(tmp_path / "out")] + TOY) == 1
    assert "is a folder: give image files" in capsys.readouterr().err
    (tmp_path / "empty_bag").mkdir()
    assert main(["replay", str(tmp_path / "empty_bag"), "-o", str(tmp_path / "o")] + TOY) == 2
    assert "is not a rosbag2 recording: it has no metadata.yaml (it is empty)" in capsys.readouterr().err
    from clipomaly_ros.tools.cli import build_parser

    args = build_parser().parse_args(["play", "--topics", "/a,/b", "--topics", "/c", "my_bag"])
    assert args.topics == ["/a", "/b", "/c"] and str(args.bag) == "my_bag"


def test_known_classes_miou_reads_the_cityscapes_layout(tmp_path, capsys):
    names = ["road", "sidewalk", "building", "vegetation", "sky", "car"]
    for split, city, index in (("val", "lindau", 0), ("val", "munster", 1), ("train", "aachen", 2)):
        image, _ = render_street_scene(240, 320, planted=None, seed=index)
        label = np.full(image.shape[:2], 255, np.uint8)
        for class_id, name in enumerate(names):  # trainIds of the known classes, from the colours drawn
            label[(np.abs(image.astype(int) - TOY_LEXICON[name]).sum(-1) < 40)] = class_id
        stem = f"{city}_000000_00001{index}"
        (tmp_path / "cs" / "leftImg8bit" / split / city).mkdir(parents=True)
        (tmp_path / "cs" / "gtFine" / split / city).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "cs" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "cs" / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"), label)
    assert main(["evaluate", str(tmp_path / "cs"), "--known-classes-miou", "--known", ",".join(names),
                 "--json", str(tmp_path / "m.json")] + TOY) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["images"] == 3 and report["miou"] > 0.9
    assert main(["evaluate", str(tmp_path / "cs" / "leftImg8bit" / "val"), "--known-classes-miou", "--known",
                 ",".join(names), "--json", str(tmp_path / "v.json")] + TOY) == 0  # one split
    assert json.loads((tmp_path / "v.json").read_text())["images"] == 2
    (tmp_path / "cs" / "gtFine" / "val" / "munster" / "munster_000000_000011_gtFine_labelTrainIds.png").unlink()
    assert main(["evaluate", str(tmp_path / "cs"), "--known-classes-miou"] + TOY) == 2
    assert "no *_gtFine_labelTrainIds.png for munster_000000_000011_leftImg8bit.png" in capsys.readouterr().err


def test_evaluate_checks_the_ground_estimates_with_or_without_a_data_set(tmp_path, capsys, monkeypatch):
    from clipomaly_ros.tools import ground_accuracy

    full_check = ground_accuracy.ground_errors
    monkeypatch.setattr(ground_accuracy, "ground_errors", lambda: full_check(ranges=(10.0,), laterals=(-1.5,)))
    assert main(["evaluate", "--ground-check", "--json", str(tmp_path / "ground.json")]) == 0
    assert "10 m: distance" in capsys.readouterr().out
    assert json.loads((tmp_path / "ground.json").read_text())["ground_errors"]["10 m"]["distance_error_pct"] < 3
    make_dataset(tmp_path / "set")
    assert main(["evaluate", str(tmp_path / "set"), "--limit", "1", "--ground-check",
                 "--json", str(tmp_path / "both.json")] + TOY) == 0
    both = json.loads((tmp_path / "both.json").read_text())
    assert "ground_errors" in both and "config" in both
    assert main(["evaluate"]) == 2
    assert "DATASET_DIR" in capsys.readouterr().err
