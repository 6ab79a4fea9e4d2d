#!/usr/bin/env bash
# The main job on one machine: starts a local ZooKeeper, two masters and three workers,
# submits tasks, stops the leader half-way and shows the failover and the results.
#
#   bash scripts/demo.sh [--tasks N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/deps.sh
cargo build --release --locked -p taskcluster
exec ./target/release/taskcluster demo "$@"
