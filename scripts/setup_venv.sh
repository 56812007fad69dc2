#!/usr/bin/env bash
# Create the virtual environment VENV (default .venv) with every dependency of vo_node, install
# the package in editable mode, and build the tf2_msgs interface that PyPI does not carry.
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --disable-pip-version-check -q -r "$here/requirements.txt"
"$venv/bin/pip" install --disable-pip-version-check -q --no-deps --no-build-isolation -e "$here"
if [ -x "$here/scripts/build_tf2_msgs.sh" ]; then
    bash "$here/scripts/build_tf2_msgs.sh" "$venv"
fi
