#!/usr/bin/env bash
# Runs the e2e suite on the local provider, as CI does, and always takes the cluster
# down again. Exits non-zero if the cluster cannot come up, the smoke or fence test or
# any e2e test fails, or the fence stopped a packet of the cluster leaving the machine
# (`local.sh down` prints the fence's counters and log, then fails).
#
#   bash e2e/cluster/ci.sh
#
# Cold (empty /var/cache/taskcluster-e2e): builds Kubernetes, etcd and CoreDNS from the
# Go module proxy and the ZooKeeper root filesystem first; see docs/benchmarks.md.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

cleanup() {
	local rc=$?
	"$CLUSTER_DIR/local.sh" down || rc=1
	exit $rc
}

[[ $(id -u) == 0 ]] || die "the local provider runs as root"
ensure_host_packages

log "building the release binaries and the images"
cargo build --release --locked -p taskcluster
if grep -q '^name = "taskcluster-operator"' operator/Cargo.toml 2>/dev/null; then
	cargo build --release --locked -p taskcluster-operator
fi
"$REPO_ROOT/images/build.sh" node operator zookeeper

trap cleanup EXIT
"$CLUSTER_DIR/local.sh" up
"$CLUSTER_DIR/local.sh" smoke

log "running the e2e suite"
eval "$("$CLUSTER_DIR/build.sh" paths)"
TASKCLUSTER_E2E=1 KUBECONFIG="$KUBECONFIG_OUT" \
	KUBECTL="$KUBERNETES_BIN/kubectl" HELM="$HELM_BIN/helm" \
	cargo test --locked -p taskcluster-e2e -- --test-threads=1
