"""Launch one clipomaly node per camera.

    ros2 launch clipomaly_ros clipomaly.launch.py namespace:=front image_topic:=/front/camera/image_raw

Arguments: namespace; image_topic (the camera's base topic, remapped onto the node's 'image'; with compressed
input the node reads <image_topic>/compressed, as image_transport does); camera_info_topic (the calibration,
default: image_topic's sibling camera_info); compressed, use_sim_time, managed, backend, device, checkpoint,
tagger_weights, naming_source and tagger_period (override the parameter file only when given); params_file
(default: the package's config/clipomaly.yaml). The file
is handed to the node, so rcl reads it as for `ros2 run --params-file`: every section that matches the node, in file
order; the given arguments come after it. The decisions are plain functions in clipomaly_ros.ros.launch_logic.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    from clipomaly_ros.ros.launch_logic import LAUNCH_OVERRIDES, image_remappings, node_parameters

    def argument(name):
        return LaunchConfiguration(name).perform(context)

    namespace = argument("namespace")
    params_file = argument("params_file")
    values, overrides, sections = node_parameters(params_file, namespace,
                                                  {name: argument(name) for name in LAUNCH_OVERRIDES})
    transport = values.get("input_transport", "raw")
    remappings = image_remappings(argument("image_topic"), transport, argument("camera_info_topic"))
    return [
        LogInfo(msg=f"clipomaly in '{namespace or '/'}': parameters from {params_file} section(s) "
                    f"{', '.join(sections) or '(none)'}"
                    + "".join(f", {name}:={value}" for name, value in overrides.items()) + f"; input {transport}"
                    + "".join(f"; {inside} from {outside}" for inside, outside in remappings)),
        # the file itself, so that rcl reads it as for `ros2 run --params-file`; the launch arguments after it
        Node(package="clipomaly_ros", executable="clipomaly_node", name="clipomaly", namespace=namespace,
             parameters=[params_file, overrides], remappings=remappings, output="screen"),
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("clipomaly_ros"), "config", "clipomaly.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of this camera's node"),
        DeclareLaunchArgument("image_topic", default_value="",
                              description="the camera's base image topic (compressed input adds /compressed)"),
        DeclareLaunchArgument("camera_info_topic", default_value="",
                              description="the camera's CameraInfo topic (default: image_topic's sibling camera_info)"),
        DeclareLaunchArgument("compressed", default_value="",
                              description="true: CompressedImage input; empty: as the parameter file says"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag replay); empty: as the parameter file says"),
        DeclareLaunchArgument("managed", default_value="",
                              description="true: start as a lifecycle node, unconfigured, for a lifecycle manager; "
                                          "empty: as the parameter file says"),
        DeclareLaunchArgument("backend", default_value="",
                              description="open_clip or toy; empty: as the parameter file says"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda or cuda:N; empty: as the parameter file says"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="local weights file; empty: as the parameter file says"),
        DeclareLaunchArgument("tagger_weights", default_value="",
                              description="RAM++ checkpoint (ram_plus_swin_large_14m.pth) for tag-named anomalies; "
                                          "empty: as the parameter file says"),
        DeclareLaunchArgument("naming_source", default_value="",
                              description="dictionary, tagger or both; empty: as the parameter file says"),
        DeclareLaunchArgument("tagger_period", default_value="",
                              description="frames per camera between tagger runs; empty: as the parameter file says"),
        OpaqueFunction(function=_node),
    ])
