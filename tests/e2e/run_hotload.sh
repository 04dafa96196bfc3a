#!/bin/sh
# End-to-end suite 'hotload' (tests/e2e/test_hotload.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_hotload.py "$@"
