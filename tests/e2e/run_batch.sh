#!/bin/sh
# End-to-end suite 'batch' (tests/e2e/test_batch.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_batch.py "$@"
