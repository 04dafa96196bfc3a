#!/bin/sh
# End-to-end suite 'ops' (tests/e2e/test_ops.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_ops.py "$@"
