#!/bin/sh
# Creates the Python virtualenv used by tests, clients and tools (never by the server).
# usage: tools/venv.sh DIR REQUIREMENTS
set -eu
dir=$1 req=$2
if [ ! -x "$dir/bin/python" ]; then
    echo "venv: creating $dir"
    python3 -m venv "$dir"
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
