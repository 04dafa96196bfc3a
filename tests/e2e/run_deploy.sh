#!/bin/sh
# Suite 'deploy' (tests/e2e/test_deploy.py): offline checks of deploy/ — the Kubernetes
# manifests against the API schemas, deploy/compose.yaml against the Compose specification, their
# semantics, and `haproxy -c` on deploy/haproxy/. Needs no server, engine or cluster.
. "$(dirname "$0")/lib.sh"
run_suite test_deploy.py "$@"
