#!/bin/sh
# End-to-end suite 'conns' (tests/e2e/test_conns.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_conns.py "$@"
