# shellcheck shell=bash
# Writes the cluster's certificates, kubeconfigs and component configurations.
# Sourced by local.sh after lib/common.sh. Everything is generated offline, once per
# cluster; `down` deletes it with the state directory.

# One hosts.toml for each registry name in use and one for `_default` (any other name),
# each naming REGISTRY_DEAD_END as the registry's server and its only host. The `server`
# replaces the registry's real address, so containerd neither resolves nor contacts it;
# containerd 1.6 honours it only beside a [host] entry (a file with a server alone falls
# back to the real registry). `ctr images pull` reads these only when given
# `--hosts-dir "$REGISTRY_HOSTS_DIR"`: it resolves in the client, not through containerd.
write_registry_hosts() {
	rm -rf "$REGISTRY_HOSTS_DIR"
	local name
	for name in _default $REGISTRY_NAMES; do
		mkdir -p "$REGISTRY_HOSTS_DIR/$name"
		cat >"$REGISTRY_HOSTS_DIR/$name/hosts.toml" <<TOML
# Written by the local cluster provider: images come from archives, never from a registry.
server = "$REGISTRY_DEAD_END"

[host."$REGISTRY_DEAD_END"]
  capabilities = ["pull", "resolve"]
TOML
	done
}

write_configs() {
	mkdir -p "$CONF_DIR" "$PKI_DIR" "$KCFG_DIR" "$STATE_DIR/cni/net.d" "$STATE_DIR/cni/ipam"
	local kubeadm="$KUBERNETES_BIN/kubeadm"

	cat >"$CONF_DIR/kubeadm.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $NODE_IP
  bindPort: 6443
nodeRegistration:
  name: $NODE_NAME
  criSocket: unix://$CONTAINERD_SOCK
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
# Given explicitly: kubeadm would otherwise ask the internet for the latest version.
kubernetesVersion: $KUBERNETES_VERSION
clusterName: taskcluster-e2e
certificatesDir: $PKI_DIR
controlPlaneEndpoint: $NODE_IP:6443
networking:
  serviceSubnet: $SERVICE_CIDR
  podSubnet: $POD_CIDR
  dnsDomain: $CLUSTER_DOMAIN
apiServer:
  certSANs: [$NODE_IP, 127.0.0.1, localhost]
YAML

	if [[ ! -f $PKI_DIR/ca.crt ]]; then
		log "generating certificates and kubeconfigs with kubeadm"
		"$kubeadm" init phase certs all --config "$CONF_DIR/kubeadm.yaml" >"$LOG_DIR/kubeadm.log" 2>&1 ||
			die "kubeadm init phase certs failed: see $LOG_DIR/kubeadm.log"
		"$kubeadm" init phase kubeconfig all --config "$CONF_DIR/kubeadm.yaml" \
			--kubeconfig-dir "$KCFG_DIR" >>"$LOG_DIR/kubeadm.log" 2>&1 ||
			die "kubeadm init phase kubeconfig failed: see $LOG_DIR/kubeadm.log"
		local user
		for user in kube-proxy coredns kube-router; do
			"$kubeadm" kubeconfig user --config "$CONF_DIR/kubeadm.yaml" \
				--client-name "system:$user" >"$KCFG_DIR/$user.conf" 2>>"$LOG_DIR/kubeadm.log" ||
				die "kubeadm kubeconfig user system:$user failed: see $LOG_DIR/kubeadm.log"
		done
		chmod 0600 "$KCFG_DIR"/*.conf
	fi

	cat >"$CONF_DIR/containerd.toml" <<TOML
version = 2
root = "$STATE_DIR/containerd"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$RUN_DIR/containerd/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The machine does not let root lower oom_score_adj below its own; clamp instead of
  # failing every sandbox (kubelet asks for -998).
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$RUN_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$STATE_DIR/cni/net.d"
  # Every registry is a dead loopback port (write_registry_hosts): images come from
  # archives only, and a pull the kubelet asks for fails at once, on the machine.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$REGISTRY_HOSTS_DIR"
TOML
	write_registry_hosts

	cat >"$STATE_DIR/cni/net.d/10-taskcluster-e2e.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "taskcluster-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON

	# Pods that do not use cluster DNS get the cluster's resolver too: nothing resolves
	# through the machine's upstream servers.
	echo "nameserver $NODE_IP" >"$CONF_DIR/resolv.conf"

	cat >"$CONF_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# The machine has a cgroup v1 hybrid layout; 1.34 still runs on it when told to.
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CONF_DIR/resolv.conf
podLogsDir: $STATE_DIR/pod-logs
# Images come from archives, never from a registry: garbage collection of images is
# off (a high threshold of 100 disables it), and eviction only on real exhaustion.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
maxPods: 110
serializeImagePulls: false
YAML

	cat >"$CONF_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KCFG_DIR/kube-proxy.conf
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node address, never on the machine's external interface.
nodePortAddresses: [$NODE_IP/32]
conntrack:
  # Leave the machine's conntrack table size alone.
  maxPerCore: 0
YAML

	# Storage: local-path-provisioner runs on the node and makes one directory per claim
	# under the state directory, through helper pods of the ZooKeeper image (it has sh).
	mkdir -p "$STATE_DIR/volumes"
	cat >"$CONF_DIR/local-path.json" <<JSON
{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$STATE_DIR/volumes"]}]}
JSON
	cat >"$CONF_DIR/local-path-helper.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  containers:
    - name: helper-pod
      image: $LOCAL_PATH_HELPER_IMAGE
      imagePullPolicy: Never
      # The claim directories belong to root on the node.
      securityContext: {runAsUser: 0, runAsGroup: 0}
YAML

	cat >"$CONF_DIR/Corefile" <<COREFILE
# Cluster DNS only: no forward plugin exists in this build, so names outside
# $CLUSTER_DOMAIN get no answer and nothing is asked of any other server.
.:53 {
    bind $NODE_IP
    ready 127.0.0.1:18181
    health 127.0.0.1:18080
    errors
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $KCFG_DIR/coredns.conf
        pods insecure
    }
    cache 30
    loadbalance
}
COREFILE
}
