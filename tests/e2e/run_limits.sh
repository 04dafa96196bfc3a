#!/bin/sh
# End-to-end suite 'limits' (tests/e2e/test_limits.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_limits.py "$@"
