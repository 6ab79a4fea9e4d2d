#!/usr/bin/env bash
# The local cluster provider: a real single-node Kubernetes made of upstream components
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# CoreDNS) on containerd and runc, supervised without systemd, for the e2e suite, with
# kube-router enforcing NetworkPolicies (the CNI bridge plugin enforces none).
#
#   e2e/cluster/local.sh up           build what is missing, start the cluster, wait for
#                                     a Ready node with working DNS (idempotent)
#   e2e/cluster/local.sh load-images  import target/images/*.tar into the node
#   e2e/cluster/local.sh status       components, node, memory
#   e2e/cluster/local.sh smoke        ZooKeeper StatefulSet + DNS + Service check, then
#                                     the fence test (nothing leaves the machine)
#   e2e/cluster/local.sh fence        the fence's counters and log; fails on a leak
#   e2e/cluster/local.sh down         stop everything and remove all it made; fails if
#                                     the fence stopped a packet leaving the machine
#
# After `up`: export KUBECONFIG=/var/lib/taskcluster-e2e/admin.kubeconfig
# Runs as root. See docs/e2e.md.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
. "$CLUSTER_DIR/lib/network.sh"
. "$CLUSTER_DIR/lib/config.sh"
. "$CLUSTER_DIR/lib/fence_test.sh"
. "$CLUSTER_DIR/lib/host_state.sh"
. "$REPO_ROOT/images/lib/oci.sh"

# Control-plane components in start order; `down` stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns local-path-provisioner kube-router)

load_bin_paths() {
	eval "$("$CLUSTER_DIR/build.sh" paths)"
	export PATH="$KUBERNETES_BIN:$PATH"
}

kubectl_admin() { "$KUBERNETES_BIN/kubectl" --kubeconfig "$KCFG_DIR/admin.conf" "$@"; }

# The sandbox ("pause") image: the static pause binary alone in one layer.
pause_archive() {
	local archive
	archive="$CACHE_DIR/images/pause-$(inputs_hash "$PAUSE_BIN/pause" "$REPO_ROOT/images/lib/oci.sh").tar"
	if [[ ! -s $archive ]]; then
		local work
		work=$(mktemp -d)
		install -D -m 0755 "$PAUSE_BIN/pause" "$work/root/pause"
		oci_layer_from_dir "$work/root" "$work/layer.tar"
		oci_archive "$archive" "$PAUSE_IMAGE" '{"User":"65535:65535","Entrypoint":["/pause"]}' "$work/layer.tar"
		rm -rf "$work"
	fi
	echo "$archive"
}

# Imports an archive unless an image of that name with the same content is present.
import_archive() {
	local archive=$1 name
	name=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"]')
	local want have
	want=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].digest')
	have=$(ctr_k8s images ls "name==$name" 2>/dev/null | awk 'NR==2 {print $3}')
	if [[ $want == "$have" ]]; then
		log "image $name is present"
		return 0
	fi
	log "importing $name from $archive"
	ctr_k8s images import --no-unpack=false "$archive" >/dev/null
}

cmd_load_images() {
	load_bin_paths
	import_archive "$(pause_archive)"
	local images_dir="${IMAGES_OUT:-$REPO_ROOT/target/images}" archive found=false
	for archive in "$images_dir"/*.tar; do
		[[ -e $archive ]] || continue
		import_archive "$archive"
		found=true
	done
	$found || log "no image archives in $images_dir; build them with images/build.sh"
}

start_containerd() {
	mkdir -p "$RUN_DIR/containerd"
	start_proc containerd "$(command -v containerd)" --config "$CONF_DIR/containerd.toml"
	wait_until 30 containerd ctr --address "$CONTAINERD_SOCK" version ||
		die "containerd did not start: see $LOG_DIR/containerd.log"
}

start_etcd() {
	start_proc etcd "$ETCD_BIN/etcd" \
		--name "$NODE_NAME" \
		--data-dir "$STATE_DIR/etcd" \
		--listen-client-urls https://127.0.0.1:2379 \
		--advertise-client-urls https://127.0.0.1:2379 \
		--listen-peer-urls https://127.0.0.1:2380 \
		--initial-advertise-peer-urls https://127.0.0.1:2380 \
		--initial-cluster "$NODE_NAME=https://127.0.0.1:2380" \
		--listen-metrics-urls http://127.0.0.1:2381 \
		--client-cert-auth --trusted-ca-file "$PKI_DIR/etcd/ca.crt" \
		--cert-file "$PKI_DIR/etcd/server.crt" --key-file "$PKI_DIR/etcd/server.key" \
		--peer-client-cert-auth --peer-trusted-ca-file "$PKI_DIR/etcd/ca.crt" \
		--peer-cert-file "$PKI_DIR/etcd/peer.crt" --peer-key-file "$PKI_DIR/etcd/peer.key" \
		--snapshot-count 10000 --log-level warn
	wait_until 60 etcd curl -fsS http://127.0.0.1:2381/health ||
		die "etcd is not healthy: see $LOG_DIR/etcd.log"
}

start_apiserver() {
	start_proc kube-apiserver "$KUBERNETES_BIN/kube-apiserver" \
		--advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port 6443 \
		--allow-privileged=true \
		--authorization-mode Node,RBAC \
		--enable-admission-plugins NodeRestriction \
		--client-ca-file "$PKI_DIR/ca.crt" \
		--tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key" \
		--etcd-servers https://127.0.0.1:2379 --etcd-cafile "$PKI_DIR/etcd/ca.crt" \
		--etcd-certfile "$PKI_DIR/apiserver-etcd-client.crt" --etcd-keyfile "$PKI_DIR/apiserver-etcd-client.key" \
		--kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types InternalIP \
		--proxy-client-cert-file "$PKI_DIR/front-proxy-client.crt" \
		--proxy-client-key-file "$PKI_DIR/front-proxy-client.key" \
		--requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
		--requestheader-allowed-names front-proxy-client \
		--requestheader-extra-headers-prefix X-Remote-Extra- \
		--requestheader-group-headers X-Remote-Group \
		--requestheader-username-headers X-Remote-User \
		--service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
		--service-account-key-file "$PKI_DIR/sa.pub" \
		--service-account-signing-key-file "$PKI_DIR/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--feature-gates MutatingAdmissionPolicy=true \
		--runtime-config admissionregistration.k8s.io/v1beta1=true \
		--profiling=false
	wait_until 120 "kube-apiserver /readyz" kubectl_admin get --raw /readyz ||
		die "kube-apiserver is not ready: see $LOG_DIR/kube-apiserver.log"
}

start_controllers() {
	start_proc kube-controller-manager "$KUBERNETES_BIN/kube-controller-manager" \
		--kubeconfig "$KCFG_DIR/controller-manager.conf" \
		--authentication-kubeconfig "$KCFG_DIR/controller-manager.conf" \
		--authorization-kubeconfig "$KCFG_DIR/controller-manager.conf" \
		--bind-address 127.0.0.1 \
		--client-ca-file "$PKI_DIR/ca.crt" \
		--requestheader-client-ca-file "$PKI_DIR/front-proxy-ca.crt" \
		--cluster-name taskcluster-e2e \
		--cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key" \
		--root-ca-file "$PKI_DIR/ca.crt" \
		--service-account-private-key-file "$PKI_DIR/sa.key" \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--use-service-account-credentials=true \
		--leader-elect=false --profiling=false
	start_proc kube-scheduler "$KUBERNETES_BIN/kube-scheduler" \
		--kubeconfig "$KCFG_DIR/scheduler.conf" \
		--authentication-kubeconfig "$KCFG_DIR/scheduler.conf" \
		--authorization-kubeconfig "$KCFG_DIR/scheduler.conf" \
		--bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

start_node() {
	start_proc kubelet "$KUBERNETES_BIN/kubelet" \
		--config "$CONF_DIR/kubelet.yaml" \
		--kubeconfig "$KCFG_DIR/kubelet.conf" \
		--root-dir "$STATE_DIR/kubelet" \
		--cert-dir "$STATE_DIR/kubelet/pki" \
		--hostname-override "$NODE_NAME" \
		--node-ip "$NODE_IP"
	start_proc kube-proxy "$KUBERNETES_BIN/kube-proxy" --config "$CONF_DIR/kube-proxy.yaml"
	start_proc coredns "$COREDNS_BIN/coredns" -conf "$CONF_DIR/Corefile"
	start_proc local-path-provisioner "$LOCALPATH_BIN/local-path-provisioner" start \
		--kubeconfig "$KCFG_DIR/admin.conf" \
		--config "$CONF_DIR/local-path.json" \
		--helper-pod-file "$CONF_DIR/local-path-helper.yaml" \
		--helper-image "$LOCAL_PATH_HELPER_IMAGE" \
		--provisioner-name rancher.io/local-path \
		--namespace kube-system \
		--configmap-name local-path-config \
		--service-account-name default
}

# kube-router's health port, on loopback only.
KUBE_ROUTER_HEALTH=127.0.0.1:20244

# The NetworkPolicy engine: kube-router's firewall alone (no routing, no service proxy, no
# CNI configuration of its own), iptables rules and ipsets for every policy. It needs the
# node's object, so it starts once the node is registered.
start_kuberouter() {
	start_proc kube-router "$KUBEROUTER_BIN/kube-router" \
		--kubeconfig "$KCFG_DIR/kube-router.conf" \
		--hostname-override "$NODE_NAME" \
		--run-firewall=true --run-router=false --run-service-proxy=false \
		--enable-cni=false --enable-ipv4=true --enable-ipv6=false \
		--service-cluster-ip-range "$SERVICE_CIDR" \
		--health-addr "${KUBE_ROUTER_HEALTH%:*}" --health-port "${KUBE_ROUTER_HEALTH##*:}" \
		--metrics-port 0
	wait_until 60 "kube-router to enforce NetworkPolicies" policy_engine_hooked ||
		die "kube-router does not filter forwarded traffic: see $LOG_DIR/kube-router.log"
}

# Is kube-router healthy and its chain hooked into FORWARD, where pod-to-pod traffic passes?
# (The jump's comment carries a hash of kube-router's own: look for the target; grep reads
# it all, so pipefail sees no SIGPIPE.)
policy_engine_hooked() {
	curl -fsS "http://$KUBE_ROUTER_HEALTH/healthz" >/dev/null &&
		iptables -t filter -S FORWARD | grep -E -- '-j KUBE-ROUTER-FORWARD( |$)' >/dev/null
}

# Pods talk to each other across the pod bridge: only with bridge-nf-call-iptables do those
# frames pass iptables, where kube-router filters them (network_up sets it).
bridged_traffic_filtered() {
	[[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]]
}

node_ready() {
	[[ $(kubectl_admin get node "$NODE_NAME" \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

dns_works() {
	[[ $(dig +short +time=1 +tries=1 "@$NODE_IP" "kubernetes.default.svc.$CLUSTER_DOMAIN" A) == "$KUBERNETES_SERVICE_IP" ]]
}

# Is the never-pull policy in force? A pod asking Always, created as a server-side dry
# run, must come back with Never.
never_pull_in_force() {
	[[ $(kubectl_admin -n default create --dry-run=server -o 'jsonpath={.spec.containers[0].imagePullPolicy}' -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: never-pull-check}
spec:
  containers: [{name: check, image: $NODE_IMAGE, imagePullPolicy: Always}]
YAML
	) == Never ]]
}

cmd_up() {
	local start=$SECONDS
	ensure_host_packages
	"$CLUSTER_DIR/build.sh" all
	load_bin_paths
	mkdir -p "$STATE_DIR" "$LOG_DIR" "$PID_DIR"
	host_state_record
	write_configs
	network_up
	start_containerd
	cmd_load_images
	start_etcd
	start_apiserver
	kubectl_admin --kubeconfig "$KCFG_DIR/super-admin.conf" apply \
		-f "$CLUSTER_DIR/manifests/bootstrap.yaml" -f "$CLUSTER_DIR/manifests/storage.yaml" \
		-f "$CLUSTER_DIR/manifests/never-pull.yaml" >/dev/null
	start_controllers
	start_node
	wait_until 180 "node $NODE_NAME to be Ready" node_ready ||
		die "node $NODE_NAME is not Ready: see $LOG_DIR/kubelet.log"
	start_kuberouter
	bridged_traffic_filtered ||
		die "net.bridge.bridge-nf-call-iptables is not 1: traffic between pods would bypass the NetworkPolicy engine (load br_netfilter)"
	wait_until 60 "cluster DNS" dns_works ||
		die "CoreDNS does not resolve kubernetes.default: see $LOG_DIR/coredns.log"
	wait_until 60 "the default service account" kubectl_admin -n default get serviceaccount default ||
		die "no default service account: see $LOG_DIR/kube-controller-manager.log"
	wait_until 30 "the never-pull policy" never_pull_in_force ||
		die "pods are not admitted with imagePullPolicy Never: see $LOG_DIR/kube-apiserver.log"
	install -m 0600 "$KCFG_DIR/admin.conf" "$KUBECONFIG_OUT"
	log "cluster is up in $((SECONDS - start)) s: node $NODE_NAME Ready, DNS answers, NetworkPolicies enforced"
	log "export KUBECONFIG=$KUBECONFIG_OUT"
}

# Stops every pod through the kubelet, so the CNI plugin releases each pod's network.
drain_pods() {
	proc_alive kube-apiserver && proc_alive kubelet || return 0
	stop_proc kube-controller-manager
	kubectl_admin delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1 || true
	wait_until 60 "pods to stop" bash -c "[[ -z \$(ctr --address '$CONTAINERD_SOCK' -n k8s.io tasks ls -q 2>/dev/null) ]]" || true
}

# Processes left behind by containerd: runc shims and their containers.
stray_pids() {
	local p
	for p in /proc/[0-9]*; do
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $CONTAINERD_SOCK" && echo "${p#/proc/}"
	done
	return 0
}

cmd_down() {
	load_bin_paths 2>/dev/null || true
	host_state_load
	drain_pods
	local i
	for ((i = ${#COMPONENTS[@]} - 1; i >= 1; i--)); do
		stop_proc "${COMPONENTS[$i]}"
	done
	if proc_alive containerd; then
		local task
		for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
			ctr_k8s tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
			ctr_k8s tasks delete -f "$task" >/dev/null 2>&1 || true
		done
		stop_proc containerd
	fi
	local pid
	for pid in $(stray_pids); do
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Pod volumes, container root filesystems and shm mounts, deepest first.
	local mnt
	for mnt in $(awk -v s="$STATE_DIR" -v r="$RUN_DIR" 'index($5, s) == 1 || index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
		umount -l "$mnt" 2>/dev/null || true
	done
	[[ -x $KUBERNETES_BIN/kube-proxy ]] && "$KUBERNETES_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
	local leaks=0
	if fence_present; then
		fence_report --log >&2
		leaks=$(fence_leaks)
	fi
	network_down
	local ctl
	for ctl in $(kubepods_cgroups); do
		find "$ctl" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	host_state_restore
	rm -rf "$STATE_DIR" "$RUN_DIR"
	# containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state dir;
	# remove the directories if our shims left them empty.
	rmdir /run/containerd/s /run/containerd 2>/dev/null || true
	local rc=0
	if leftovers; then
		log "cluster is down; nothing of it is left"
	else
		log "error: cluster is down, but the things listed above are left"
		rc=1
	fi
	if ((leaks > 0)); then
		log "error: the fence stopped $leaks packets of the cluster on their way off the machine;" \
			"its log above names their source, destination and interface"
		rc=1
	fi
	return $rc
}

# The kubelet's pod cgroups: one per controller on cgroup v1 (and the hybrid layout's
# unified tree), a single one on a cgroup v2 host.
kubepods_cgroups() {
	local ctl
	for ctl in /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods; do
		[[ -d $ctl ]] && echo "$ctl"
	done
	return 0
}

# Lists whatever of the cluster survived `down`; succeeds only if nothing did.
leftovers() {
	local found=0 pid
	for pid in $(stray_pids); do
		log "left: process $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")"
		found=1
	done
	# Every component was started with paths under the state directory; processes of
	# the same binaries started by anyone else are not ours.
	local p
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$STATE_DIR/"; then
			log "left: process ${p#/proc/}: $(tr '\0' ' ' 2>/dev/null <"$p/cmdline")"
			found=1
		fi
	done
	if grep -qE " ($STATE_DIR|$RUN_DIR)" /proc/self/mountinfo; then
		log "left: mounts under $STATE_DIR or $RUN_DIR"
		found=1
	fi
	local link
	for link in "$NODE_IF" "$POD_BRIDGE"; do
		ip link show "$link" >/dev/null 2>&1 && { log "left: interface $link"; found=1; }
	done
	host_state_leftovers || found=1
	[[ -n $COMPONENT_CGROUP && -d $COMPONENT_CGROUP ]] && { log "left: cgroup $COMPONENT_CGROUP"; found=1; }
	[[ -n $(kubepods_cgroups) ]] && { log "left: kubepods cgroups: $(kubepods_cgroups | tr '\n' ' ')"; found=1; }
	return $found
}

cmd_status() {
	local c state rc=0 rss_kb=0
	for c in "${COMPONENTS[@]}"; do
		if proc_alive "$c"; then
			local pid
			pid=$(<"$PID_DIR/$c.pid")
			state="running (pid $pid, $(awk '/VmRSS/ {printf "%d MiB", $2/1024}' "/proc/$pid/status"))"
			rss_kb=$((rss_kb + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status")))
		else
			state=stopped
			rc=1
		fi
		printf '%-24s %s\n' "$c" "$state"
	done
	local shim_kb=0 pid
	for pid in $(stray_pids); do
		shim_kb=$((shim_kb + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
	done
	local pods_kb=0
	[[ -r /sys/fs/cgroup/memory/kubepods/memory.usage_in_bytes ]] &&
		pods_kb=$(($(cat /sys/fs/cgroup/memory/kubepods/memory.usage_in_bytes) / 1024))
	printf 'memory: components %d MiB (RSS), shims %d MiB, pods %d MiB (cgroup, incl. page cache)\n' \
		$((rss_kb / 1024)) $((shim_kb / 1024)) $((pods_kb / 1024))
	if [[ $rc == 0 ]]; then
		load_bin_paths
		kubectl_admin get nodes -o wide || rc=1
		dns_works && echo "cluster DNS: kubernetes.default.svc.$CLUSTER_DOMAIN resolves" ||
			{ echo "cluster DNS: not answering"; rc=1; }
		echo "KUBECONFIG=$KUBECONFIG_OUT"
	fi
	fence_report
	return $rc
}

# The fence's counters and log lines; fails if it stopped a packet leaving the machine.
cmd_fence() {
	fence_report --log
	fence_present || return 1
	(($(fence_leaks) == 0))
}

# Proves the cluster end to end: a ZooKeeper StatefulSet from the imported image, found
# by its stable DNS name and through a ClusterIP Service from another pod, and its metrics.
# The manifest names the image's tag @ZOOKEEPER_VERSION@ (zookeeper/VERSION). Then the
# fence test (lib/fence_test.sh): nothing of the cluster leaves the machine.
cmd_smoke() {
	load_bin_paths
	local start=$SECONDS
	sed "s/@ZOOKEEPER_VERSION@/$ZOOKEEPER_VERSION/g" "$CLUSTER_DIR/manifests/smoke.yaml" |
		kubectl_admin apply -f - >/dev/null
	if ! kubectl_admin -n taskcluster-smoke wait --for=condition=complete job/resolve-and-ask --timeout=180s; then
		kubectl_admin -n taskcluster-smoke get pods -o wide || true
		kubectl_admin -n taskcluster-smoke get events --sort-by=.lastTimestamp || true
		kubectl_admin -n taskcluster-smoke logs zk-0 --tail=50 || true
		kubectl_admin -n taskcluster-smoke logs job/resolve-and-ask || true
		die "smoke test failed"
	fi
	kubectl_admin -n taskcluster-smoke get pods -o wide
	kubectl_admin -n taskcluster-smoke logs job/resolve-and-ask
	log "smoke test passed in $((SECONDS - start)) s"
	kubectl_admin delete namespace taskcluster-smoke --wait=true --timeout=120s >/dev/null
	fence_test
}

main() {
	[[ $(id -u) == 0 ]] || die "the local provider runs as root (containerd, kubelet, iptables)"
	case ${1:-} in
	up) cmd_up ;;
	down) cmd_down ;;
	status) cmd_status ;;
	load-images) cmd_load_images ;;
	smoke) cmd_smoke ;;
	fence) cmd_fence ;;
	*) die "usage: local.sh up|down|status|load-images|smoke|fence" ;;
	esac
}

main "$@"
