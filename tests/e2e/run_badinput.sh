#!/bin/sh
# End-to-end suite 'badinput' (tests/e2e/test_badinput.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_badinput.py "$@"
