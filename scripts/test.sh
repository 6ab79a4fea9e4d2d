#!/usr/bin/env bash
# The test suite: unit tests, integration tests against real ZooKeeper servers (started by
# the tests on free loopback ports), Kazoo interop, the operator's tests, and, with
# TASKCLUSTER_E2E=1, the end-to-end suite on a local Kubernetes built from upstream components.
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh

# ZooKeeper JVMs are heavy on a small machine: a few test threads at a time.
threads="${TEST_THREADS:-2}"
cargo test --workspace --locked -- --test-threads="$threads"

if [ "${TASKCLUSTER_E2E:-0}" = "1" ]; then
	bash e2e/cluster/ci.sh
fi
