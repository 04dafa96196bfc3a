#!/bin/sh
# End-to-end suite 'cluster' (tests/e2e/test_cluster.py): three real replicas behind a real
# HAProxy with deploy/haproxy/haproxy.cfg.
. "$(dirname "$0")/lib.sh"
run_suite test_cluster.py "$@"
