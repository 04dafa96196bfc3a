#!/bin/sh
# End-to-end suite 'chat_templates' (tests/e2e/test_chat_templates.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_chat_templates.py "$@"
