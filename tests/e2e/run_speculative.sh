#!/bin/sh
# End-to-end suite 'speculative' (tests/e2e/test_speculative.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_speculative.py "$@"
