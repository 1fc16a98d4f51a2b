"""The launch file's decisions as plain functions: parameter-file sections, argument overrides, remappings."""

import pytest
import yaml

from clipomaly_ros.core.config import ConfigError, read_parameter_file, select_section
from clipomaly_ros.ros.launch_logic import image_remappings, node_parameters

SEVERAL_CAMERAS = {
    "/front/clipomaly": {"ros__parameters": {"uncertainty_threshold": 0.7, "input_transport": "compressed"}},
    "/rear/clipomaly": {"ros__parameters": {"uncertainty_threshold": 0.4}},
    "/**/clipomaly": {"ros__parameters": {"max_regions": 3}},
    "clipomaly": {"ros__parameters": {"max_regions": 5}},
    "/other/node": {"ros__parameters": {"unrelated": 1}},
}

# what `ros2 param dump /front/clipomaly` writes: the node's own parameters and the standard ones of every node
DUMPED = {"/front/clipomaly": {"ros__parameters": {
    "backend": "toy", "uncertainty_threshold": 0.6, "use_sim_time": False, "start_type_description_service": True,
    "qos_overrides./parameter_events.publisher.depth": 1000,
    "qos_overrides./parameter_events.publisher.reliability": "reliable"}}}


def write(tmp_path, document, name="params.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def test_every_matching_section_applies_in_file_order_a_later_one_winning():
    # the example: the exact section first, then a wildcard that overrides one of its values
    ordered = {"/front/clipomaly": {"ros__parameters": {"uncertainty_threshold": 0.41, "min_region_area": 111}},
               "/**/clipomaly": {"ros__parameters": {"uncertainty_threshold": 0.73, "max_regions": 3}}}
    assert select_section(ordered, "clipomaly", "/front") == (
        ["/front/clipomaly", "/**/clipomaly"], {"uncertainty_threshold": 0.73, "min_region_area": 111, "max_regions": 3})
    reversed_order = dict(reversed(list(ordered.items())))
    assert select_section(reversed_order, "clipomaly", "/front")[1]["uncertainty_threshold"] == 0.41
    assert select_section(SEVERAL_CAMERAS, "clipomaly", "/rear") == (
        ["/rear/clipomaly", "/**/clipomaly"], {"uncertainty_threshold": 0.4, "max_regions": 3})


def test_wildcards_match_by_name_tokens_and_a_plain_key_is_the_root_namespace():
    assert select_section(SEVERAL_CAMERAS, "clipomaly", "/side") == (["/**/clipomaly"], {"max_regions": 3})
    assert select_section(SEVERAL_CAMERAS, "clipomaly", "/") == (["/**/clipomaly", "clipomaly"], {"max_regions": 5})
    plain = {k: v for k, v in SEVERAL_CAMERAS.items() if "*" not in k}
    assert select_section(plain, "clipomaly", "/side") == ([], {})
    one_level = {"/*/clipomaly": {"ros__parameters": {"max_regions": 2}}}
    assert select_section(one_level, "clipomaly", "/a")[1] == {"max_regions": 2}
    assert select_section(one_level, "clipomaly", "/a/b") == ([], {})  # '*' is one name token
    everything = {"/**": {"ros__parameters": {"use_sim_time": True}}, "clipomaly": {"ros__parameters": {}}}
    assert select_section(everything, "clipomaly", "/")[1] == {"use_sim_time": True}


def test_a_file_with_only_other_cameras_sections_is_an_error_not_a_merge(tmp_path):
    path = write(tmp_path, {k: v for k, v in SEVERAL_CAMERAS.items() if k.startswith(("/front", "/rear"))})
    with pytest.raises(ConfigError, match="no section for node /side/clipomaly"):
        read_parameter_file(path, "clipomaly", "/side")


def test_a_dumped_parameter_file_is_accepted_with_its_standard_ros_parameters(tmp_path):
    path = write(tmp_path, DUMPED)
    values, overrides, sections = node_parameters(path, "/front", {})
    assert sections == ["/front/clipomaly"] and overrides == {}
    assert values["start_type_description_service"] is True and values["use_sim_time"] is False
    assert values["qos_overrides./parameter_events.publisher.depth"] == 1000
    misspelled = write(tmp_path, {"clipomaly": {"ros__parameters": {"uncertainty_treshold": 0.5}}}, "bad.yaml")
    with pytest.raises(ConfigError, match="unknown setting.*uncertainty_treshold"):
        node_parameters(misspelled, "/", {})


def test_launch_arguments_override_the_file_only_when_given(tmp_path):
    path = write(tmp_path, SEVERAL_CAMERAS)
    kept, overrides, _ = node_parameters(path, "/front", {"compressed": "", "use_sim_time": "", "backend": ""})
    assert kept["input_transport"] == "compressed" and "use_sim_time" not in kept and overrides == {}
    overridden, overrides, _ = node_parameters(path, "/front", {
        "compressed": "false", "use_sim_time": "true", "managed": "true", "backend": "toy", "device": "cpu",
        "checkpoint": "/w.pt", "tagger_weights": "/ram.pth", "naming_source": "both", "tagger_period": "3"})
    assert overrides == {"input_transport": "raw", "use_sim_time": True, "managed": True, "backend": "toy",
                         "device": "cpu", "checkpoint": "/w.pt", "tagger_weights": "/ram.pth", "naming_source": "both",
                         "tagger_period": 3}
    assert overridden["input_transport"] == "raw" and overridden["uncertainty_threshold"] == 0.7
    with pytest.raises(ValueError, match="compressed"):
        node_parameters(path, "/front", {"compressed": "maybe"})
    with pytest.raises(ValueError, match="managed"):
        node_parameters(path, "/front", {"managed": "later"})
    with pytest.raises(ValueError, match="tagger_period:='often' must be a whole number"):
        node_parameters(path, "/front", {"tagger_period": "often"})


def test_the_image_topic_is_a_base_topic_as_in_image_transport():
    assert image_remappings("/cam/image_raw", "raw") == [("image", "/cam/image_raw"),
                                                         ("camera_info", "/cam/camera_info")]
    assert image_remappings("/cam/image_raw", "compressed") == [("image/compressed", "/cam/image_raw/compressed"),
                                                                ("camera_info", "/cam/camera_info")]
    assert image_remappings("/cam/image_raw", "raw", "/calib/info") == [("image", "/cam/image_raw"),
                                                                        ("camera_info", "/calib/info")]
    assert image_remappings("", "compressed") == []
    assert image_remappings("", "raw", "/calib/info") == [("camera_info", "/calib/info")]
    with pytest.raises(ValueError, match="base topic /cam/image_raw"):
        image_remappings("/cam/image_raw/compressed", "compressed")


def test_the_launch_logic_imports_neither_rosbags_nor_torch_nor_rclpy():
    # `ros2 launch` imports it in the launch process: a bag library or torch there would only slow every launch
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, clipomaly_ros.ros.launch_logic; "
         "print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert "clipomaly_ros" in loaded
    assert not {"rosbags", "torch", "rclpy", "numpy", "cv2", "mcap"} & set(loaded), loaded
