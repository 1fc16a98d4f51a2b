import json

import cv2
import numpy as np
import pytest

from clipomaly_ros.tools.cli import main
from clipomaly_ros.tools.scenes import render_street_scene


def write_scene(path, planted="mattress"):
    image, truth = render_street_scene(240, 320, planted=planted)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return truth


def test_segment_writes_maps_overlay_and_json(tmp_path, capsys):
    truth = write_scene(tmp_path / "street.png")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "street.png"), "-o", str(out), "--backend", "toy",
                 "--inference-size", "240", "--vocab", "rock, dog"])
    assert code == 0
    semantic = cv2.imread(str(out / "street_semantic.png"), cv2.IMREAD_UNCHANGED)
    score = cv2.imread(str(out / "street_score.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "street_overlay.png"))
    report = json.loads((out / "street_anomalies.json").read_text())
    assert semantic.dtype == np.uint16 and score.dtype == np.uint16 and semantic.shape == (240, 320)
    assert overlay.shape == (240, 320, 3)
    assert [a["name"] for a in report["anomalies"]] == ["mattress"]
    mattress_id = report["labels"].index("mattress")
    assert ((semantic == mattress_id) & truth).sum() / truth.sum() > 0.9
    assert np.median(score[truth]) > 0.9 * 65535
    assert {"features", "total"} <= set(report["timings_ms"])
    assert "mattress" in capsys.readouterr().out


def test_segment_tracks_an_image_sequence(tmp_path, capsys):
    from clipomaly_ros.tools.scenes import render_street

    paths = []
    for index in range(4):  # a tyre rolling right, frame by frame
        image, _ = render_street(240, 320, [("tire", (60 + 12 * index, 170, 90 + 12 * index, 200))], seed=index)
        paths.append(tmp_path / f"frame{index}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["segment", *map(str, paths), "-o", str(out), "--sequence-rate", "10", "--backend", "toy",
                 "--inference-size", "240"]) == 0
    records = [json.loads((out / f"frame{index}_anomalies.json").read_text())["anomalies"] for index in range(4)]
    assert [r[0]["track_id"] for r in records] == [1, 1, 1, 1]
    assert [r[0]["confirmed"] for r in records] == [False, False, True, True]  # track_min_hits 3
    assert records[0][0]["on_road"] is True and records[0][0]["ground"] is None  # no calibration for images
    assert "#1? tire" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse refuses it, naming the option
        main(["segment", str(paths[0]), "-o", str(out), "--sequence-rate", "0", "--backend", "toy"])
    assert "--sequence-rate: must be above 0" in capsys.readouterr().err


def test_unreadable_image_is_reported_and_others_still_processed(tmp_path, capsys):
    write_scene(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "broken.png"), str(tmp_path / "good.png"), str(tmp_path / "gone.jpg"),
                 "-o", str(out), "--backend", "toy", "--inference-size", "240"])
    assert code == 1
    assert (out / "good_anomalies.json").is_file()
    assert not (out / "broken_anomalies.json").exists()
    err = capsys.readouterr().err
    assert "broken.png: not a readable image" in err and "gone.jpg: no such file" in err


def test_configuration_errors_exit_with_a_message(tmp_path, capsys):
    write_scene(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--checkpoint",
                 str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert code == 2
    assert "checkpoint" in capsys.readouterr().err


def test_scene_command_writes_an_image(tmp_path):
    assert main(["scene", str(tmp_path / "scene.png"), "--object", "deer", "--width", "200", "--height", "100"]) == 0
    assert cv2.imread(str(tmp_path / "scene.png")).shape == (100, 200, 3)


def test_bench_reports_stages_host_share_node_cost_cameras_and_memory(tmp_path, tiny_model_name, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", tiny_model_name, "--device", "cpu", "--size", "200x120", "--frames", "2",
                 "--inference-size", "64", "--cameras", "3", "--soak-frames", "6", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = report["stage_ms"]
    assert {"features", "unknown", "naming", "extension", "total", "backbone", "host"} <= set(stages)
    assert 0 < stages["backbone"] < stages["total"]
    assert report["host_ms_outside_backbone"] == pytest.approx(stages["host"])
    assert set(report["node_publish_ms"]) == {"anomalies only", "every image output"}
    parts = report["every_output_ms"]  # maps, pictures and message building, each output's building named
    assert set(parts["building_by_output"]) == {"detections and 3D outputs", "semantic", "anomaly_score",
                                                "anomaly_mask", "anomaly_instances", "overlay", "semantic_color"}
    assert parts["maps"] > 0 and parts["pictures"] > 0
    assert parts["building"] > 0 and all(ms >= 0 for ms in parts["building_by_output"].values())
    assert list(parts["building_by_output"].values()) == sorted(parts["building_by_output"].values(), reverse=True)
    assert set(report["fps"]) == {"1 camera", "3 cameras"} and all(v > 0 for v in report["fps"].values())
    host = report["host_ms_per_frame"]  # wall less the transformer, per frame, at both window layouts
    assert set(host) == {"official", "light"}
    for table in host.values():
        assert set(table) == {"anomalies only", "every output"}
        assert all(set(row) == {"1 camera", "3 cameras"} and all(ms > 0 for ms in row.values())
                   for row in table.values())
    assert report["memory"]["frames"] == 6 and report["memory"]["resident_mb_last"] > 0
    assert report["windows"] >= 1 and report["vocabulary_change_10_names_ms"] > 0
    calibration = report["calibration"]
    assert calibration["per_setting_ms"] > 0 and calibration["evaluate_ms"] == pytest.approx(stages["total"], abs=0.1)
    layouts = report["layouts"]
    assert layouts["light"]["tokens"] < layouts["official"]["tokens"] and layouts["official"]["windows"] >= 1
    assert layouts["light"]["gflop"] < layouts["official"]["gflop"] and layouts["crop_gflop"] > 0
    text = capsys.readouterr().out
    assert "calibrate, per setting and image after the first pass" in text
    assert "host time outside the backbone" in text and "3 cameras" in text and "RANDOM" in text
    assert "every output, its parts: full-size maps" in text
    assert "host ms a frame outside the transformer, light layout: anomalies only: 1 camera" in text
    assert "the rest of this run will take about" in text and "Jetson AGX Orin" in text


@pytest.mark.parametrize("runtime", ["onnx", "compile"])
def test_bench_is_quick_by_default_and_runs_each_runtime(tmp_path, tiny_model_name, runtime, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", tiny_model_name, "--device", "cpu", "--size", "200x120", "--frames", "2",
                 "--inference-size", "64", "--runtime", runtime, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["runtime"] == runtime and report["stage_ms"]["backbone"] > 0
    assert set(report["fps"]) == {"1 camera"}  # camera batches, the soak and the ground check are opt-in
    assert "memory" not in report and "ground_errors" not in report
    assert ("ONNX Runtime" if runtime == "onnx" else "torch.compile") in report["backend"]
    assert set(report["host_ms_per_frame"]["official"]["every output"]) == {"1 camera"}
    assert report["host_ms_per_frame"]["light"] == f"not measured: runtime {runtime} would build again for it"


def test_bench_rejects_a_bad_size(capsys):
    assert main(["bench", "--backend", "toy", "--size", "big"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.parametrize("vocab, item", [("tire,,deer", 2), ("", 1), ("tire, deer,", 3)])
def test_empty_names_are_refused_on_the_command_line_as_in_the_node(tmp_path, capsys, vocab, item):
    from clipomaly_ros.core.config import SETTINGS_BY_NAME, ConfigError

    write_scene(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--backend", "toy", "--vocab", vocab])
    assert code == 2
    message = capsys.readouterr().err
    assert f"anomaly_vocabulary: item {item} is empty; remove it" in message
    # the node validates its parameter with the same rule, so it says the same
    with pytest.raises(ConfigError) as node_error:
        SETTINGS_BY_NAME["anomaly_vocabulary"].validate([part.strip() for part in vocab.split(",")])
    assert str(node_error.value) in message
    assert main(["play", str(tmp_path / "bag"), "--topics", "/a,,/b"]) == 2
    assert "--topics: a topic name is empty" in capsys.readouterr().err


def test_bench_help_lists_every_dense_method(capsys):
    from clipomaly_ros.core.config import DENSE_METHODS

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(method in text for method in DENSE_METHODS) and "scclip" in text


def test_bench_host_time_leaves_out_the_transformer_that_the_pipeline_clocks_frame_by_frame():
    import time
    import types

    from clipomaly_ros.core.model.backend import BackboneClock
    from clipomaly_ros.tools.bench import host_ms_per_frame

    clock = BackboneClock()

    def segment_batch(images):  # as the pipeline: 0.2 s in the transformer per frame, the clock taken each frame
        results = []
        for _ in images:
            with clock.measure(types.SimpleNamespace(type="cpu")):
                time.sleep(0.2)
            results.append(clock.take())
        return results

    pipeline = types.SimpleNamespace(backend=types.SimpleNamespace(clock=clock), segment_batch=segment_batch)
    outputs = types.SimpleNamespace(subscribe_images=lambda on: None, publish_ms=lambda result, on: 0.0)
    table = host_ms_per_frame(pipeline, np.zeros((8, 8, 3), np.uint8), 2, 2, outputs, "cpu")
    for row in table.values():  # wall time was >= 200 ms a frame, all of it inside the transformer
        assert set(row) == {"1 camera", "2 cameras"} and all(0 <= ms < 100 for ms in row.values()), row


def test_each_verb_is_a_module_with_add_parser_and_run_in_the_registry_order(capsys):
    import argparse
    import importlib
    from pathlib import Path

    from clipomaly_ros.tools import commands
    from clipomaly_ros.tools.cli import build_parser

    modules = {path.stem for path in Path(commands.__file__).parent.glob("*.py")} - {"__init__", "options"}
    assert set(commands.VERBS) == modules and len(commands.VERBS) == len(modules)
    for verb in commands.VERBS:
        module = importlib.import_module(f"clipomaly_ros.tools.commands.{verb}")
        assert callable(module.run), verb
        parser = module.add_parser(argparse.ArgumentParser().add_subparsers())
        assert isinstance(parser, argparse.ArgumentParser) and parser.prog.endswith(f" {verb}"), verb
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(subparsers.choices) == commands.VERBS
    assert build_parser().parse_args(["defaults"]).run is importlib.import_module(
        "clipomaly_ros.tools.commands.defaults").run


def test_the_command_line_module_only_declares_dispatches_and_reports_errors():
    import ast
    from pathlib import Path

    from clipomaly_ros.tools import cli

    tree = ast.parse(Path(cli.__file__).read_text())
    functions = sorted(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)))
    assert functions == ["build_parser", "main"]
    options = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "attr", "") == "add_argument"]
    assert len(options) == 1  # --verbose: every verb's own options live in its module

