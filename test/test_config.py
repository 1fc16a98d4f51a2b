from pathlib import Path

import pytest
import yaml

from clipomaly_ros.core.config import (CITYSCAPES_CLASSES, SETTINGS, ClipomalyConfig, ConfigError, default_parameter_file,
                                  load_config, read_parameter_file)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_parameter_file_holds_every_setting_at_its_default():
    shipped = read_parameter_file(REPO / "config" / "clipomaly.yaml")
    assert set(shipped) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        expected = list(setting.default) if isinstance(setting.default, tuple) else setting.default
        assert shipped[setting.name] == expected, setting.name
    assert (REPO / "config" / "clipomaly.yaml").read_text() == default_parameter_file()


def test_defaults_are_cityscapes_and_vit_b16():
    config = ClipomalyConfig()
    assert config.known_classes == CITYSCAPES_CLASSES
    assert (config.model, config.pretrained, config.dense_method) == ("ViT-B-16", "openai", "scclip")
    assert (config.inference_size, config.window_size, config.window_stride) == (0, 0, 0)  # official: 224 every 112
    assert config.working_short_side == 560 and config.replace(dense_method="clearclip").working_short_side == 448


@pytest.mark.parametrize("changes, words", [
    ({"known_classes": []}, "known_classes is empty"),
    ({"uncertainty_threshold": 1.5}, "uncertainty_threshold = 1.5 is out of range: it must be between 0.0 and 1.0"),
    ({"max_regions": 0}, "max_regions = 0 is out of range: it must be between 1 and 255"),
    ({"dense_method": "magic"}, "dense_method must be one of"),
    ({"inference_size": "big"}, "inference_size must be an integer"),
    ({"prompt_templates": ["no slot"]}, "exactly one '{}'"),
    ({"checkpoint": "/x.pt", "random_weights": True}, "choose one"),
    ({"known_classes": "road"}, "list of strings"),
    ({"anomaly_vocabulary": ["tire", "road"]}, "anomaly_vocabulary: 'road' is a known class"),
    ({"anomaly_vocabulary": ["car", "road"]}, "'car', 'road' are known classes"),
    ({"window_layout": "tiny"}, "window_layout must be one of official, light"),
    ({"runtime": "tensorrt"}, "runtime must be one of torch, compile, onnx"),
])
def test_invalid_values_name_the_setting(changes, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        ClipomalyConfig(**changes)


@pytest.mark.parametrize("names, words", [
    (["", "tire"], "anomaly_vocabulary: item 1 is empty"),
    (["tire", "rock", "tire"], "'tire' is listed twice"),
    (["traffic  cone"], "repeated spaces; write 'traffic cone'"),
    ([" tire"], "leading"),
])
def test_empty_duplicate_or_untidy_names_are_rejected_with_the_reason(names, words):
    with pytest.raises(ConfigError, match=words):
        ClipomalyConfig(anomaly_vocabulary=names)
    assert ClipomalyConfig(anomaly_vocabulary=["tire", "traffic cone"]).anomaly_vocabulary == ("tire", "traffic cone")


def test_parameter_file_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"/cams/front/clipomaly": {"ros__parameters": {
        "model": "ViT-B-32", "known_classes": ["road", "car"], "use_sim_time": False}}}))
    config = load_config(path, inference_size=320, model=None, namespace="/cams/front")
    assert (config.model, config.known_classes, config.inference_size) == ("ViT-B-32", ("road", "car"), 320)
    path.write_text(yaml.safe_dump({"clipomaly": {"ros__parameters": {"modle": "x"}}}))
    with pytest.raises(ConfigError, match="unknown setting.*modle"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump({"other_node": {"ros__parameters": {"a": 1}}}))
    with pytest.raises(ConfigError, match="no section for node /clipomaly"):
        load_config(path)
    # a renamed setting is named with its new name, never ignored
    path.write_text(yaml.safe_dump({"clipomaly": {"ros__parameters": {"runtime": "onnx", "engine": "vit.onnx"}}}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) engine \(renamed: engine is now onnx_model\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="renamed: engine is now onnx_model"):
        ClipomalyConfig().replace(engine="vit.onnx")
    assert load_config(onnx_model="vit.onnx").onnx_model == "vit.onnx"


def test_replace_validates():
    config = ClipomalyConfig()
    assert config.replace(max_regions=3).max_regions == 3
    with pytest.raises(ConfigError):
        config.replace(max_regions=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.replace(colour="red")


def test_per_camera_mountings_read_as_ros_flattens_them(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text("clipomaly:\n  ros__parameters:\n    cameras: [front, rear]\n    camera_z: 1.4\n"
                    "    front:\n      camera_z: 2.5\n      camera_pitch: 0.1\n")
    parameters = read_parameter_file(path)
    assert parameters["front.camera_z"] == 2.5 and parameters["front.camera_pitch"] == 0.1
    assert load_config(path).camera_z == 1.4  # the library reads the plain mounting
    path.write_text("clipomaly:\n  ros__parameters:\n    front:\n      camera_height: 2.5\n")
    with pytest.raises(ConfigError, match="unknown setting.*front.camera_height"):
        read_parameter_file(path)
