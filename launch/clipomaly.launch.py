"""Launch one clipomaly node per camera.

    ros2 launch clipomaly_ros clipomaly.launch.py namespace:=front image_topic:=/front/camera/image_raw

The arguments are declared from clipomaly_ros.ros.launch_logic.LAUNCH_ARGUMENTS (`ros2 launch clipomaly_ros
clipomaly.launch.py --show-args` lists them; docs/ros-reference.md is made from the same table). The parameter file
is handed to the node, so rcl reads it as for `ros2 run --params-file`: every section that matches the node, in file
order; the arguments that override it come after it. The decisions are plain functions in
clipomaly_ros.ros.launch_logic, which imports neither rosbags nor torch, so launching stays quick.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from clipomaly_ros.ros.launch_logic import LAUNCH_ARGUMENTS, LAUNCH_OVERRIDES, image_remappings, node_parameters


def _node(context):
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
        *(DeclareLaunchArgument(argument.name, description=argument.description,
                                default_value=default_params if argument.default is None else argument.default)
          for argument in LAUNCH_ARGUMENTS),
        OpaqueFunction(function=_node),
    ])
