#!/usr/bin/env bash
# The main job on one machine: starts a local ZooKeeper, two masters and three workers,
# submits tasks, stops the leader half-way and shows the failover and the results.
# `operator` shows the same on Kubernetes instead: the operator on a local cluster
# (scripts/operator-demo.sh; root).
#
#   bash scripts/demo.sh [--tasks N]
#   bash scripts/demo.sh operator
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == operator ]]; then
	shift
	exec bash scripts/operator-demo.sh "$@"
fi

bash scripts/deps.sh
cargo build --release --locked -p taskcluster
exec ./target/release/taskcluster demo "$@"
