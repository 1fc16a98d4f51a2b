"""Launch one clipomaly node per camera.

    ros2 launch clipomaly_ros clipomaly.launch.py namespace:=front image_topic:=/front/camera/image_raw

Arguments: namespace, image_topic (remapped onto the node's 'image' input; with compressed:=true onto
'image/compressed'), compressed, params_file (default: the package's config/clipomaly.yaml), use_sim_time.
The parameter file's 'clipomaly' section is passed to the node whatever its namespace, so one file serves every
camera.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    from clipomaly_ros.core.config import read_parameter_file

    params_file = LaunchConfiguration("params_file").perform(context)
    compressed = LaunchConfiguration("compressed").perform(context).lower() in ("true", "1", "yes")
    image_topic = LaunchConfiguration("image_topic").perform(context)
    parameters = read_parameter_file(params_file)
    parameters["input_transport"] = "compressed" if compressed else "raw"
    parameters["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")
    remappings = [("image/compressed" if compressed else "image", image_topic)] if image_topic else []
    return [Node(package="clipomaly_ros", executable="clipomaly_node", name="clipomaly",
                 namespace=LaunchConfiguration("namespace"), parameters=[parameters], remappings=remappings,
                 output="screen")]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("clipomaly_ros"), "config", "clipomaly.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of this camera's node"),
        DeclareLaunchArgument("image_topic", default_value="", description="camera topic to remap onto 'image'"),
        DeclareLaunchArgument("compressed", default_value="false", description="subscribe to CompressedImage"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        OpaqueFunction(function=_node),
    ])
