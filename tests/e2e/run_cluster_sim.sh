#!/bin/sh
# Self-check of tools/cluster_sim.py (tests/e2e/test_cluster_sim.py): small simulations, no server.
. "$(dirname "$0")/lib.sh"
run_suite test_cluster_sim.py "$@"
