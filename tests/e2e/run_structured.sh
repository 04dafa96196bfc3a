#!/bin/sh
# End-to-end suite 'structured' (tests/e2e/test_structured.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_structured.py "$@"
