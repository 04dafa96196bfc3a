#!/bin/sh
# End-to-end suite 'api_fields' (tests/e2e/test_api_fields.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_api_fields.py "$@"
