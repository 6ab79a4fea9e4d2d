#!/usr/bin/env bash
# The kind cluster provider, for machines with Docker: the same e2e suite as the local
# provider (local.sh), on a kind cluster. Each step names its local.sh counterpart.
#
#   e2e/cluster/kind.sh up           create the cluster, build and load the images
#   e2e/cluster/kind.sh load-images  rebuild the images with docker and load them
#   e2e/cluster/kind.sh status
#   e2e/cluster/kind.sh down
#
# After `up`: export KUBECONFIG=$HOME/.kube/taskcluster-e2e.kubeconfig
set -euo pipefail

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
NAME=taskcluster-e2e
# The kind release whose node image kind-config.yaml pins by digest: a node image is built for
# one kind release, and another kind may not boot it.
KIND_VERSION=v0.30.0
# kind writes this file only, never the user's default kubeconfig.
KUBECONFIG_OUT="${TASKCLUSTER_E2E_KUBECONFIG:-$HOME/.kube/taskcluster-e2e.kubeconfig}"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")"
ZOOKEEPER_VERSION="$(tr -d '[:space:]' <"$REPO_ROOT/zookeeper/VERSION")"
# The same names the local provider imports with `ctr images import`.
IMAGES=("taskcluster/node:$VERSION" "taskcluster/operator:$VERSION" "taskcluster/zookeeper:$ZOOKEEPER_VERSION")

log() { printf '%s [kind-cluster] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() { command -v "$1" >/dev/null || die "$1 is not installed: $2"; }

# local.sh: images/build.sh writes OCI archives; here docker builds the Dockerfiles, for the
# host's architecture.
cmd_load_images() {
	docker build -f "$REPO_ROOT/images/node/Dockerfile" -t "${IMAGES[0]}" "$REPO_ROOT"
	docker build -f "$REPO_ROOT/images/operator/Dockerfile" -t "${IMAGES[1]}" "$REPO_ROOT"
	docker build -f "$REPO_ROOT/images/zookeeper/Dockerfile" -t "${IMAGES[2]}" "$REPO_ROOT"
	# local.sh: ctr -n k8s.io images import. `kind load docker-image` fails with Docker's
	# containerd image store (the default since Docker 29); an archive loads from either store.
	local archive
	archive=$(mktemp /tmp/taskcluster-kind-images.XXXXXX.tar)
	docker save -o "$archive" "${IMAGES[@]}"
	kind load image-archive --name "$NAME" "$archive"
	rm -f "$archive"
}

# The pinned kind release, or a clear message.
check_kind() {
	need kind "go install sigs.k8s.io/kind@$KIND_VERSION"
	local version
	version=$(kind version 2>/dev/null | awk '{print $2}')
	[[ $version == "$KIND_VERSION" ]] ||
		die "kind ${version:-?} found; the node image is pinned for kind $KIND_VERSION (go install sigs.k8s.io/kind@$KIND_VERSION)"
}

cmd_up() {
	need docker "https://docs.docker.com/engine/install/"
	check_kind
	need kubectl "the local provider's build.sh builds one"
	need helm "https://helm.sh/docs/intro/install/ (the suite installs the operator's chart with it)"
	mkdir -p "$(dirname "$KUBECONFIG_OUT")"
	# local.sh: build.sh + kubeadm phases + supervised components
	if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
		kind create cluster --config "$CLUSTER_DIR/kind-config.yaml" --kubeconfig "$KUBECONFIG_OUT" --wait 180s
	fi
	kind get kubeconfig --name "$NAME" >"$KUBECONFIG_OUT"
	cmd_load_images
	# local.sh: waits for the Ready node and for CoreDNS to resolve kubernetes.default
	KUBECONFIG="$KUBECONFIG_OUT" kubectl wait --for=condition=Ready node --all --timeout=180s
	KUBECONFIG="$KUBECONFIG_OUT" kubectl -n kube-system rollout status deployment/coredns --timeout=180s
	log "cluster is up; export KUBECONFIG=$KUBECONFIG_OUT"
}

cmd_status() {
	kind get clusters 2>/dev/null | grep -qx "$NAME" || { echo "cluster $NAME does not exist"; return 1; }
	KUBECONFIG="$KUBECONFIG_OUT" kubectl get nodes -o wide
}

cmd_down() {
	kind delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_OUT"
	rm -f "$KUBECONFIG_OUT"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
load-images) cmd_load_images ;;
*) die "usage: kind.sh up|down|status|load-images" ;;
esac
