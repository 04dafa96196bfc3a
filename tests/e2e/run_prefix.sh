#!/bin/sh
# End-to-end suite 'prefix' (tests/e2e/test_prefix.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_prefix.py "$@"
