#!/bin/sh
# End-to-end suite 'step_budget' (tests/e2e/test_step_budget.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_step_budget.py "$@"
