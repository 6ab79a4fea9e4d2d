# shellcheck shell=bash
# Network of the local cluster and the fence that keeps its traffic on the machine.
# Sourced by local.sh after lib/common.sh.

# The fence's chains, all in the mangle table. FENCE (POSTROUTING) and FENCE_IN
# (PREROUTING) pick out the cluster's packets, FENCED classifies a fenced packet, and the
# four counter chains log it (rate-limited, prefix "tce2e-fence: <kind> ") and drop it:
# their DROP rules count what the fence stopped.
FENCE_CHAIN=TASKCLUSTER-E2E-FENCE
FENCE_IN_CHAIN=TASKCLUSTER-E2E-FENCE-IN
FENCE_CLASSIFY_CHAIN=TASKCLUSTER-E2E-FENCED
FENCE_LEAK_CHAIN=TASKCLUSTER-E2E-LEAK
FENCE_PROBE_CHAIN=TASKCLUSTER-E2E-PROBE
FENCE_STRAY_CHAIN=TASKCLUSTER-E2E-STRAY
FENCE_INBOUND_CHAIN=TASKCLUSTER-E2E-INBOUND
FENCE_LOG_PREFIX="tce2e-fence: "
# Uptime (s) when the fence went up: its kernel log lines are the ones after it.
FENCE_SINCE_FILE="$STATE_DIR/fence.since"

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
	ip link set "$POD_BRIDGE" address "$POD_BRIDGE_MAC"
	ip addr replace "$POD_GATEWAY/${POD_CIDR#*/}" dev "$POD_BRIDGE"
	ip link set "$POD_BRIDGE" up
	# A packet for a Service address that no kube-proxy rule has translated (yet) goes to
	# the port-less node bridge, not the default route: it stays on the machine.
	ip route replace "$SERVICE_CIDR" dev "$NODE_IF"
	fence_up
	# Bridged pod traffic must pass iptables for Services to work.
	if [[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
		echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	fi
	# Routing between pods, Services and the node needs forwarding; the fence decides
	# what may be forwarded. Remember the old value for `down`. IPv6 forwarding is
	# left off: pods have no IPv6 route anywhere.
	[[ -f $STATE_DIR/ip_forward.before ]] || cat /proc/sys/net/ipv4/ip_forward >"$STATE_DIR/ip_forward.before"
	echo 1 >/proc/sys/net/ipv4/ip_forward
}

# The fence. FENCE is first in mangle POSTROUTING: it sees every packet after routing
# and after any Service DNAT, forwarded or sent by the node, and kube-proxy never
# reorders that table. A packet is the cluster's if it is from or to the pod range or
# the node address, still addressed to a Service address, or sent from a socket of the
# component cgroup (every component, containerd and its shims included). The cluster's
# packets may go out loopback, out the pod bridge to a pod, and out either bridge to
# link-local multicast (the kernel's own IGMP reports); any other is dropped as
#   stray  it would have stayed on the machine (the node bridge, the pod bridge to no pod)
#   probe  for FENCE_PROBE_IP: the fence test's deliberate attempts
#   leak   anything else: it would have left the machine (`down` then fails the run)
# FENCE_IN, first in mangle PREROUTING, drops as inbound what arrives for a cluster
# address (or from one) through any interface but loopback and the pod bridge.
fence_rules() {
	cat <<RULES
$FENCE_CHAIN -o lo -j RETURN
$FENCE_CHAIN -o $POD_BRIDGE -d $POD_CIDR -j RETURN
$FENCE_CHAIN -o $POD_BRIDGE -d 224.0.0.0/24 -j RETURN
$FENCE_CHAIN -o $NODE_IF -d 224.0.0.0/24 -j RETURN
$FENCE_CHAIN -s $POD_CIDR -j $FENCE_CLASSIFY_CHAIN
$FENCE_CHAIN -d $POD_CIDR -j $FENCE_CLASSIFY_CHAIN
$FENCE_CHAIN -s $NODE_IP/32 -j $FENCE_CLASSIFY_CHAIN
$FENCE_CHAIN -d $NODE_IP/32 -j $FENCE_CLASSIFY_CHAIN
$FENCE_CHAIN -d $SERVICE_CIDR -j $FENCE_CLASSIFY_CHAIN
RULES
	[[ -n $COMPONENT_CGROUP ]] &&
		echo "$FENCE_CHAIN -m cgroup --path $COMPONENT_CGROUP_NAME -j $FENCE_CLASSIFY_CHAIN"
	cat <<RULES
$FENCE_CLASSIFY_CHAIN -o $NODE_IF -j $FENCE_STRAY_CHAIN
$FENCE_CLASSIFY_CHAIN -o $POD_BRIDGE -j $FENCE_STRAY_CHAIN
$FENCE_CLASSIFY_CHAIN -d $FENCE_PROBE_IP/32 -j $FENCE_PROBE_CHAIN
$FENCE_CLASSIFY_CHAIN -j $FENCE_LEAK_CHAIN
$FENCE_IN_CHAIN -i lo -j RETURN
$FENCE_IN_CHAIN -i $POD_BRIDGE -j RETURN
$FENCE_IN_CHAIN -d $NODE_IP/32 -j $FENCE_INBOUND_CHAIN
$FENCE_IN_CHAIN -d $POD_CIDR -j $FENCE_INBOUND_CHAIN
$FENCE_IN_CHAIN -d $SERVICE_CIDR -j $FENCE_INBOUND_CHAIN
$FENCE_IN_CHAIN -s $NODE_IP/32 -j $FENCE_INBOUND_CHAIN
$FENCE_IN_CHAIN -s $POD_CIDR -j $FENCE_INBOUND_CHAIN
RULES
}

# IPv6 has no cluster addresses and no forwarding; the components' sockets may use
# loopback only.
fence6_rules() {
	cat <<RULES
$FENCE_CHAIN -o lo -j RETURN
$FENCE_CHAIN -m cgroup --path $COMPONENT_CGROUP_NAME -j $FENCE_LEAK_CHAIN
RULES
}

# fence_chain CMD CHAIN [KIND]: an empty chain; with KIND, one that logs (at most 10
# lines a minute after a burst of 20) and drops, its DROP rule counting the KIND.
fence_chain() {
	local cmd=$1 chain=$2 kind=${3:-}
	$cmd -t mangle -N "$chain" 2>/dev/null || $cmd -t mangle -F "$chain"
	[[ -n $kind ]] || return 0
	$cmd -t mangle -A "$chain" -m limit --limit 10/minute --limit-burst 20 \
		-j LOG --log-prefix "$FENCE_LOG_PREFIX$kind " --log-level warning
	$cmd -t mangle -A "$chain" -j DROP
}

# fence_apply CMD: appends the rules read from stdin ("CHAIN MATCH... -j TARGET").
fence_apply() {
	local cmd=$1 rule
	while read -r rule; do
		# shellcheck disable=SC2086
		[[ -n $rule ]] && $cmd -t mangle -A $rule
	done
	return 0
}

# fence_hook CMD HOOK CHAIN: jumps to CHAIN first thing in HOOK, once.
fence_hook() {
	local cmd=$1 hook=$2 chain=$3
	$cmd -t mangle -C "$hook" -j "$chain" 2>/dev/null || $cmd -t mangle -I "$hook" 1 -j "$chain"
}

fence_up() {
	component_cgroup_up
	fence_chain iptables "$FENCE_LEAK_CHAIN" leak
	fence_chain iptables "$FENCE_PROBE_CHAIN" probe
	fence_chain iptables "$FENCE_STRAY_CHAIN" stray
	fence_chain iptables "$FENCE_INBOUND_CHAIN" inbound
	fence_chain iptables "$FENCE_CLASSIFY_CHAIN"
	fence_chain iptables "$FENCE_CHAIN"
	fence_chain iptables "$FENCE_IN_CHAIN"
	fence_apply iptables < <(fence_rules)
	fence_hook iptables POSTROUTING "$FENCE_CHAIN"
	fence_hook iptables PREROUTING "$FENCE_IN_CHAIN"
	if [[ -n $COMPONENT_CGROUP ]]; then
		fence_chain ip6tables "$FENCE_LEAK_CHAIN" leak
		fence_chain ip6tables "$FENCE_CHAIN"
		fence_apply ip6tables < <(fence6_rules)
		fence_hook ip6tables POSTROUTING "$FENCE_CHAIN"
	fi
	[[ -f $FENCE_SINCE_FILE ]] || cut -d' ' -f1 /proc/uptime >"$FENCE_SINCE_FILE"
}

# Unhooks the fence; iptables_sweep removes its chains with everyone else's.
fence_down() {
	local cmd
	for cmd in iptables ip6tables; do
		while $cmd -t mangle -D POSTROUTING -j "$FENCE_CHAIN" 2>/dev/null; do :; done
		while $cmd -t mangle -D PREROUTING -j "$FENCE_IN_CHAIN" 2>/dev/null; do :; done
	done
}

fence_present() { iptables -t mangle -nL "$FENCE_CHAIN" >/dev/null 2>&1; }

# fence_count CHAIN [CMD]: packets the DROP rule of a counter chain has counted, 0 if
# the chain does not exist.
fence_count() {
	local chain=$1 cmd=${2:-iptables}
	$cmd -t mangle -nvxL "$chain" 2>/dev/null | awk '$3 == "DROP" {n += $1} END {print n + 0}'
}

# Packets the fence stopped on their way off the machine, IPv4 and IPv6.
fence_leaks() {
	echo $(($(fence_count "$FENCE_LEAK_CHAIN") + $(fence_count "$FENCE_LEAK_CHAIN" ip6tables)))
}

# The fence's counters; with --log, then its last 20 kernel log lines since it went up.
fence_report() {
	if ! fence_present; then
		echo "fence: not up"
		return 0
	fi
	echo "fence: packets dropped"
	printf '  %-8s %6d  %s\n' \
		leak "$(fence_leaks)" "would have left the machine (any one fails the run)" \
		probe "$(fence_count "$FENCE_PROBE_CHAIN")" "the fence test's probes of $FENCE_PROBE_IP" \
		stray "$(fence_count "$FENCE_STRAY_CHAIN")" "had no destination on the machine, and stayed on it" \
		inbound "$(fence_count "$FENCE_INBOUND_CHAIN")" "arrived from outside for (or from) a cluster address"
	[[ ${1:-} == --log ]] || return 0
	local lines
	lines=$(fence_log | tail -n 20)
	[[ -z $lines ]] || printf 'fence: kernel log (last 20 lines)\n%s\n' "$lines"
}

# The fence's kernel log lines since it went up.
fence_log() {
	local since=0
	[[ -f $FENCE_SINCE_FILE ]] && since=$(<"$FENCE_SINCE_FILE")
	dmesg 2>/dev/null | awk -v since="$since" -v prefix="$FENCE_LOG_PREFIX" '
		index($0, prefix) {
			t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t)
			if (t + 0 >= since + 0) print
		}'
}

# The components run in a cgroup (v2) of their own, so the fence can tell their sockets
# from everyone else's on the machine (start_proc puts each component there).
component_cgroup_up() {
	if [[ -z $COMPONENT_CGROUP ]]; then
		log "no cgroup v2 hierarchy: the fence covers the cluster's addresses, not the components' own sockets"
		return 0
	fi
	mkdir -p "$COMPONENT_CGROUP"
}

component_cgroup_down() {
	[[ -n $COMPONENT_CGROUP && -d $COMPONENT_CGROUP ]] || return 0
	rmdir "$COMPONENT_CGROUP" 2>/dev/null ||
		log "cgroup $COMPONENT_CGROUP still has processes: $(tr '\n' ' ' <"$COMPONENT_CGROUP/cgroup.procs")"
}

# Removes every iptables chain and rule that the cluster's components made: kube-proxy
# and kubelet (KUBE-*), CNI plugins (CNI-*), and the fence. Chains and rules of those names
# that were there before `up` (another Kubernetes on the host) stay.
iptables_sweep() {
	local cmd table ours='(KUBE-|CNI-|TASKCLUSTER-E2E)'
	for cmd in iptables ip6tables; do
		for table in filter nat mangle raw; do
			$cmd -t "$table" -S >/dev/null 2>&1 || continue
			local before
			before=$(host_iptables_before "$cmd" "$table")
			local rule
			while read -r rule; do
				grep -qxF -- "$rule" <<<"$before" && continue
				# `-S` quotes comments the way the shell does.
				eval "$cmd -t $table ${rule/#-A/-D}" 2>/dev/null || true
			done < <($cmd -t "$table" -S 2>/dev/null | grep -E "^-A ($ours|.*-j $ours)" || true)
			local chain
			for chain in $($cmd -t "$table" -S 2>/dev/null | sed -n -E "s/^-N (${ours}[^ ]*)\$/\1/p"); do
				grep -q "^:$chain " <<<"$before" && continue
				$cmd -t "$table" -F "$chain" 2>/dev/null || true
				$cmd -t "$table" -X "$chain" 2>/dev/null || true
			done
		done
	done
}

# kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, kube-router-*; `inet6:` before the IPv6
# ones), once no rule of iptables_sweep's refers to them. Sets of those names that were there
# before `up` stay.
IPSET_OURS='^(inet6:)?(KUBE-|kube-router-)'

# The names of the ipsets that are the cluster's kind, one a line.
our_ipsets() {
	command -v ipset >/dev/null || return 0
	ipset list -n 2>/dev/null | grep -E "$IPSET_OURS" || true
}

ipset_sweep() {
	local set
	for set in $(our_ipsets); do
		host_ipset_before "$set" && continue
		ipset destroy "$set" 2>/dev/null || log "cannot destroy ipset $set"
	done
}

network_down() {
	fence_down
	iptables_sweep
	ipset_sweep
	component_cgroup_down
	local ns
	for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
		ip netns delete "$ns" 2>/dev/null || true
	done
	ip link del "$POD_BRIDGE" 2>/dev/null || true
	# The Service route goes with the node bridge.
	ip link del "$NODE_IF" 2>/dev/null || true
	if [[ -f $STATE_DIR/ip_forward.before ]]; then
		cat "$STATE_DIR/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
	fi
}
