#!/usr/bin/env bash
# Builds the binaries of the local cluster from the Go module proxy into the cache:
# Kubernetes components, etcd, CoreDNS, Helm (for the e2e suite's chart install),
# local-path-provisioner and kube-router (the NetworkPolicy engine), each keyed by its pinned
# version, the wrapper module's go.mod/go.sum and, for kube-router, its Go toolchain. A
# component whose binaries exist is not rebuilt.
#
#   e2e/cluster/build.sh            build what is missing, print the bin directories
#   BUILD_NICE=0 e2e/cluster/build.sh   build at normal priority
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

KUBE_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)

kubernetes_bin() { echo "$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION-$(inputs_hash "$CLUSTER_DIR"/go/kubernetes/go.{mod,sum})"; }
etcd_bin() { echo "$CACHE_DIR/bin/etcd-$ETCD_VERSION-$(inputs_hash "$CLUSTER_DIR"/go/etcd/{go.mod,go.sum,main.go})"; }
coredns_bin() { echo "$CACHE_DIR/bin/coredns-$COREDNS_VERSION-$(inputs_hash "$CLUSTER_DIR"/go/coredns/{go.mod,go.sum,main.go})"; }
helm_bin() { echo "$CACHE_DIR/bin/helm-$HELM_VERSION-$(inputs_hash "$CLUSTER_DIR"/go/helm/go.{mod,sum})"; }
localpath_bin() { echo "$CACHE_DIR/bin/local-path-provisioner-$LOCAL_PATH_VERSION-$(inputs_hash "$CLUSTER_DIR"/go/local-path/go.{mod,sum})"; }
kuberouter_bin() {
	echo "$CACHE_DIR/bin/kube-router-$KUBE_ROUTER_VERSION-$KUBE_ROUTER_GO_TOOLCHAIN-$(inputs_hash "$CLUSTER_DIR"/go/kube-router/{go.mod,go.sum,tools.go})"
}
pause_bin() { echo "$CACHE_DIR/bin/pause-$(inputs_hash "$CLUSTER_DIR/pause/pause.c")"; }

# Moves a finished build into place only when it is complete, so an interrupted build is
# never mistaken for a cached one.
publish() {
	local tmp=$1 dest=$2
	rm -rf "$dest"
	mv "$tmp" "$dest"
}

build_kubernetes() {
	local dest
	dest=$(kubernetes_bin)
	[[ -x $dest/${KUBE_COMMANDS[-1]} ]] && return 0
	log "building Kubernetes $KUBERNETES_VERSION (${KUBE_COMMANDS[*]}) into $dest"
	local minor=${KUBERNETES_VERSION#v1.}
	minor=${minor%%.*}
	local x="" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		x+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	local pkgs=()
	for c in "${KUBE_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	go_in "$KUBERNETES_GO_TOOLCHAIN" "$CLUSTER_DIR/go/kubernetes" \
		build -trimpath -ldflags "-s -w$x" -o "$tmp/" "${pkgs[@]}"
	publish "$tmp" "$dest"
	log "built Kubernetes in $((SECONDS - start)) s"
}

build_etcd() {
	local dest
	dest=$(etcd_bin)
	[[ -x $dest/etcd ]] && return 0
	log "building etcd $ETCD_VERSION into $dest"
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	go_in "$ETCD_GO_TOOLCHAIN" "$CLUSTER_DIR/go/etcd" build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .
	publish "$tmp" "$dest"
	log "built etcd in $((SECONDS - start)) s"
}

build_coredns() {
	local dest
	dest=$(coredns_bin)
	[[ -x $dest/coredns ]] && return 0
	log "building CoreDNS $COREDNS_VERSION into $dest"
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	go_in "$COREDNS_GO_TOOLCHAIN" "$CLUSTER_DIR/go/coredns" build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .
	publish "$tmp" "$dest"
	log "built CoreDNS in $((SECONDS - start)) s"
}

build_helm() {
	local dest
	dest=$(helm_bin)
	[[ -x $dest/helm ]] && return 0
	log "building Helm $HELM_VERSION into $dest"
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	go_in "$HELM_GO_TOOLCHAIN" "$CLUSTER_DIR/go/helm" build -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
		-o "$tmp/helm" helm.sh/helm/v3/cmd/helm
	publish "$tmp" "$dest"
	log "built Helm in $((SECONDS - start)) s"
}

build_localpath() {
	local dest
	dest=$(localpath_bin)
	[[ -x $dest/local-path-provisioner ]] && return 0
	log "building local-path-provisioner $LOCAL_PATH_VERSION into $dest"
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	go_in "$KUBERNETES_GO_TOOLCHAIN" "$CLUSTER_DIR/go/local-path" build -trimpath -ldflags "-s -w" \
		-o "$tmp/local-path-provisioner" github.com/rancher/local-path-provisioner
	publish "$tmp" "$dest"
	log "built local-path-provisioner in $((SECONDS - start)) s"
}

build_kuberouter() {
	local dest
	dest=$(kuberouter_bin)
	[[ -x $dest/kube-router ]] && return 0
	log "building kube-router $KUBE_ROUTER_VERSION into $dest"
	local tmp="$dest.partial" start=$SECONDS
	rm -rf "$tmp" && mkdir -p "$tmp"
	go_in "$KUBE_ROUTER_GO_TOOLCHAIN" "$CLUSTER_DIR/go/kube-router" build -trimpath \
		-ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
		-o "$tmp/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
	publish "$tmp" "$dest"
	log "built kube-router in $((SECONDS - start)) s"
}

build_pause() {
	local dest
	dest=$(pause_bin)
	[[ -x $dest/pause ]] && return 0
	log "building the pause binary into $dest"
	local tmp="$dest.partial"
	rm -rf "$tmp" && mkdir -p "$tmp"
	cc -static -Os -Wall -Werror -o "$tmp/pause" "$CLUSTER_DIR/pause/pause.c"
	strip "$tmp/pause"
	publish "$tmp" "$dest"
}

main() {
	command -v go >/dev/null || die "go is not installed; the local provider builds Kubernetes with it"
	mkdir -p "$CACHE_DIR/bin"
	local only=${1:-all}
	case $only in
	all) build_pause && build_etcd && build_coredns && build_kubernetes && build_helm && build_localpath && build_kuberouter ;;
	kubernetes | etcd | coredns | pause | helm | localpath | kuberouter) "build_$only" ;;
	paths)
		printf 'KUBERNETES_BIN=%s\nETCD_BIN=%s\nCOREDNS_BIN=%s\nPAUSE_BIN=%s\nHELM_BIN=%s\nLOCALPATH_BIN=%s\nKUBEROUTER_BIN=%s\n' \
			"$(kubernetes_bin)" "$(etcd_bin)" "$(coredns_bin)" "$(pause_bin)" "$(helm_bin)" "$(localpath_bin)" "$(kuberouter_bin)"
		return 0
		;;
	*) die "unknown component '$only' (all, kubernetes, etcd, coredns, pause, helm, localpath, kuberouter, paths)" ;;
	esac
}

main "$@"
