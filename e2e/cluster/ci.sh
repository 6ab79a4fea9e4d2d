#!/usr/bin/env bash
# Runs the e2e suite on the local provider, as CI does, and always takes the cluster
# down again. Exits non-zero if the cluster cannot come up, the smoke or fence test or
# any e2e test fails, or the fence stopped a packet of the cluster leaving the machine
# (`local.sh down` prints the fence's counters and log, then fails). One run at a time (a lock);
# a cluster left by a killed run is taken down first; on failure the component logs are kept
# in target/e2e-logs and the failed tests' messages are printed last.
#
#   bash e2e/cluster/ci.sh            # the whole suite
#   bash e2e/cluster/ci.sh NAME...    # only the e2e tests whose names contain NAME (cargo test filters)
#
# Cold (empty /var/cache/taskcluster-e2e): builds Kubernetes, etcd and CoreDNS from the
# Go module proxy and the ZooKeeper root filesystem first; see docs/benchmarks.md.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

E2E_OUTPUT="$CARGO_TARGET_DIR/e2e-test.log"
KEPT_LOGS="$CARGO_TARGET_DIR/e2e-logs"

# On failure the components' logs are kept under target/ (down removes the state directory)
# and their tails printed; after down, the failed tests' messages come last, where a reader of
# a long CI log looks first.
cleanup() {
	local rc=$?
	if [[ $rc != 0 && -d $LOG_DIR ]]; then
		rm -rf "$KEPT_LOGS" && cp -r "$LOG_DIR" "$KEPT_LOGS" || true
		local file
		for file in "$KEPT_LOGS"/*.log; do
			[[ -f $file ]] || continue
			printf '\n---- %s (last 15 lines; whole in %s)\n' "$(basename "$file")" "$file" >&2
			tail -n 15 "$file" | cut -c1-300 >&2
		done
	fi
	"$CLUSTER_DIR/local.sh" down || rc=1
	if [[ $rc != 0 && -s $E2E_OUTPUT ]]; then
		log "what failed (the whole output is above and in $E2E_OUTPUT):"
		grep -E -A6 "panicked at|^test .* FAILED$" "$E2E_OUTPUT" | grep -v "^stack backtrace" | cut -c1-500 | head -80 >&2 || true
	fi
	exit $rc
}

[[ $(id -u) == 0 ]] || die "the local provider runs as root"
# One run at a time on this machine: a second would take the first one's cluster down.
mkdir -p /run/lock
exec 9>/run/lock/taskcluster-e2e-ci.lock
flock -w 1200 9 || die "another e2e run holds /run/lock/taskcluster-e2e-ci.lock"
ensure_host_packages

log "building the release binaries and the images"
cargo build --release --locked -p taskcluster
if grep -q '^name = "taskcluster-operator"' operator/Cargo.toml 2>/dev/null; then
	# The upgrade scenario starts from an older release: this operator stamped with another
	# version, its images tagged with it. Built first, so the last build is this release's.
	export TASKCLUSTER_E2E_UPGRADE_FROM=0.0.0-e2e.previous
	TASKCLUSTER_RELEASE=$TASKCLUSTER_E2E_UPGRADE_FROM cargo build --release --locked -p taskcluster-operator
	TASKCLUSTER_RELEASE=$TASKCLUSTER_E2E_UPGRADE_FROM "$REPO_ROOT/images/build.sh" node operator
	cargo build --release --locked -p taskcluster-operator
fi
"$REPO_ROOT/images/build.sh" node operator zookeeper

# A run killed before its own down (CI's time limit) leaves a cluster whose etcd would bring
# the old pods back: take it down first.
"$CLUSTER_DIR/local.sh" down || log "what an earlier run left is taken down (see above)"
rm -f "$E2E_OUTPUT"
trap cleanup EXIT
"$CLUSTER_DIR/local.sh" up
"$CLUSTER_DIR/local.sh" smoke

log "running the e2e suite"
eval "$("$CLUSTER_DIR/build.sh" paths)"
TASKCLUSTER_E2E=1 KUBECONFIG="$KUBECONFIG_OUT" \
	KUBECTL="$KUBERNETES_BIN/kubectl" HELM="$HELM_BIN/helm" \
	cargo test --locked -p taskcluster-e2e -- --test-threads=1 "$@" 2>&1 | tee "$E2E_OUTPUT"
