#!/bin/sh
# End-to-end suite 'gemma' (tests/e2e/test_gemma.py): Gemma 3 with registry-gemma/.
. "$(dirname "$0")/lib.sh"
run_suite test_gemma.py "$@"
