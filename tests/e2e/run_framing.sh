#!/bin/sh
# End-to-end suite 'framing' (tests/e2e/test_framing.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_framing.py "$@"
