#!/bin/sh
# Creates the Python virtualenv used by tests, clients and tools (never by the server).
# usage: tools/venv.sh DIR REQUIREMENTS
#
# A REQUIREMENTS line "#wheel: NAME==VERSION --hash=sha256:..." (a comment to pip) names a wheel
# that is downloaded, hash-checked and kept unopened in DIR/wheels/ instead of installed: for
# data a test reads out of a package whose dependencies would conflict with the venv's (the
# Compose specification schema inside docker-compose 1.29.2, for tests/e2e/test_deploy.py).
set -eu
dir=$1 req=$2
if [ ! -x "$dir/bin/python" ]; then
    echo "venv: creating $dir"
    python3 -m venv "$dir"
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
wheels=$(sed -n 's/^#wheel: *//p' "$req")
if [ -n "$wheels" ]; then
    list=$(mktemp)
    trap 'rm -f "$list"' EXIT
    printf '%s\n' "$wheels" >"$list"
    "$dir/bin/python" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
        --only-binary :all: -d "$dir/wheels" -r "$list"
fi
