#!/bin/sh
# End-to-end suite 'clients' (tests/e2e/test_clients.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_clients.py "$@"
