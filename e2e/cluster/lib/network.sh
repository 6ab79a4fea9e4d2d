# shellcheck shell=bash
# Network of the local cluster and the fence that keeps its traffic on the machine.
# Sourced by local.sh after lib/common.sh.

FENCE_CHAIN=TASKCLUSTER-E2E-FENCE

# The node address lives on a bridge with no ports: a local address that nothing
# routes to from outside, unlike the machine's external address.
network_up() {
	if ! ip link show "$NODE_IF" >/dev/null 2>&1; then
		ip link add "$NODE_IF" type bridge
	fi
	ip addr replace "$NODE_IP/32" dev "$NODE_IF"
	ip link set "$NODE_IF" up
	# The pod bridge exists before the first pod so the fence can name it; the CNI
	# bridge plugin adopts it.
	if ! ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
		ip link add "$POD_BRIDGE" type bridge
	fi
	ip addr replace "$POD_GATEWAY/${POD_CIDR#*/}" dev "$POD_BRIDGE"
	ip link set "$POD_BRIDGE" up
	fence_up
	# Bridged pod traffic must pass iptables for Services to work.
	if [[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
		echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	fi
	# Routing between pods, Services and the node needs forwarding; the fence decides
	# what may be forwarded. Remember the old value for `down`.
	[[ -f $STATE_DIR/ip_forward.before ]] || cat /proc/sys/net/ipv4/ip_forward >"$STATE_DIR/ip_forward.before"
	echo 1 >/proc/sys/net/ipv4/ip_forward
}

# The fence, in mangle POSTROUTING: it sees every packet after routing and after any
# Service DNAT, whether forwarded or sent by the node, and kube-proxy never reorders
# it. Anything from or to the pod range that does not go out the pod bridge, anything
# still addressed to a Service address (no backend took it), and anything to the node
# address that would not be delivered locally is dropped. So nothing of the cluster
# can leave through eth0 or any other interface.
fence_rules() {
	cat <<RULES
-s $POD_CIDR ! -o $POD_BRIDGE -j DROP
-d $POD_CIDR ! -o $POD_BRIDGE -j DROP
-d $SERVICE_CIDR -j DROP
-d $NODE_IP/32 ! -o lo -j DROP
RULES
}

fence_up() {
	iptables -t mangle -N "$FENCE_CHAIN" 2>/dev/null || iptables -t mangle -F "$FENCE_CHAIN"
	local rule
	while read -r rule; do
		# shellcheck disable=SC2086
		iptables -t mangle -A "$FENCE_CHAIN" $rule
	done < <(fence_rules)
	iptables -t mangle -C POSTROUTING -j "$FENCE_CHAIN" 2>/dev/null ||
		iptables -t mangle -I POSTROUTING 1 -j "$FENCE_CHAIN"
}

fence_down() {
	while iptables -t mangle -D POSTROUTING -j "$FENCE_CHAIN" 2>/dev/null; do :; done
	iptables -t mangle -F "$FENCE_CHAIN" 2>/dev/null || true
	iptables -t mangle -X "$FENCE_CHAIN" 2>/dev/null || true
}

# Removes every iptables chain and rule that the cluster's components made: kube-proxy
# and kubelet (KUBE-*), CNI plugins (CNI-*), and the fence.
iptables_sweep() {
	local cmd table
	for cmd in iptables ip6tables; do
		for table in filter nat mangle raw; do
			$cmd -t "$table" -S >/dev/null 2>&1 || continue
			local rules
			rules=$($cmd -t "$table" -S 2>/dev/null)
			local rule
			while read -r rule; do
				# shellcheck disable=SC2086
				$cmd -t "$table" ${rule/#-A/-D} 2>/dev/null || true
			done < <(grep -E '^-A .*-j (KUBE-|CNI-|TASKCLUSTER-E2E)' <<<"$rules" || true)
			local chain
			for chain in $($cmd -t "$table" -S 2>/dev/null | sed -n -E 's/^-N ((KUBE-|CNI-|TASKCLUSTER-E2E)[^ ]*)$/\1/p'); do
				$cmd -t "$table" -F "$chain" 2>/dev/null || true
			done
			for chain in $($cmd -t "$table" -S 2>/dev/null | sed -n -E 's/^-N ((KUBE-|CNI-|TASKCLUSTER-E2E)[^ ]*)$/\1/p'); do
				$cmd -t "$table" -X "$chain" 2>/dev/null || true
			done
		done
	done
}

network_down() {
	fence_down
	iptables_sweep
	local ns
	for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
		ip netns delete "$ns" 2>/dev/null || true
	done
	ip link del "$POD_BRIDGE" 2>/dev/null || true
	ip link del "$NODE_IF" 2>/dev/null || true
	if [[ -f $STATE_DIR/ip_forward.before ]]; then
		cat "$STATE_DIR/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
	fi
}
