#!/bin/sh
# End-to-end suite 'choices' (tests/e2e/test_choices.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_choices.py "$@"
