#!/bin/sh
# End-to-end suite 'logs' (tests/e2e/test_logs.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_logs.py "$@"
