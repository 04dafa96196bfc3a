#!/bin/sh
# End-to-end suite 'vllm_lora' (tests/e2e/test_vllm_lora.py) against a real $BUILD/adaptree serve.
. "$(dirname "$0")/lib.sh"
run_suite test_vllm_lora.py "$@"
