#!/usr/bin/env bash
# The test suite: unit tests, integration tests against real ZooKeeper servers (started by
# the tests on free loopback ports), Kazoo interop, the operator's tests, then the end-to-end
# suite on a local single-node Kubernetes built from upstream components (needs root; skip
# it with TASKCLUSTER_E2E=0), then the images' Dockerfiles built by a private Docker engine
# (root; skip with TASKCLUSTER_DOCKER_BUILD=0).
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every phase is bounded, so a hang fails the run with time left for the e2e teardown and
# diagnostics (CI stops everything at 90 minutes). A phase's SIGTERM lets it clean up; the
# SIGKILL after it is the last resort.
bounded() {
	local limit=$1
	shift
	timeout --kill-after=120 "$limit" "$@" || {
		local rc=$?
		[ $rc -eq 124 ] && echo "test.sh: '$*' did not finish within ${limit}s" >&2
		return $rc
	}
}

bounded 900 bash scripts/deps.sh

# ZooKeeper JVMs are heavy on a small machine: a few test threads at a time. The e2e crate
# runs below, against a cluster.
threads="${TEST_THREADS:-2}"
bounded 2100 cargo test --workspace --locked --exclude taskcluster-e2e -- --test-threads="$threads"

if [ "${TASKCLUSTER_E2E:-1}" != "0" ]; then
	bounded 3000 bash e2e/cluster/ci.sh
fi

# The path a user with Docker takes: `docker build` of every Dockerfile, on bases assembled here.
if [ "${TASKCLUSTER_DOCKER_BUILD:-1}" != "0" ]; then
	bounded 1800 bash images/docker-build.sh
fi
