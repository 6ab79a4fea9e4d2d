# shellcheck shell=bash
# What the cluster changes on the host outside its own directories: kernel settings that
# kubelet, kube-proxy and the network set (kernel.panic, vm.overcommit_memory, conntrack
# limits and timeouts, route_localnet, ...) and host paths the components create whatever
# their configuration (/opt/containerd, /var/lib/cni, /var/log/pods, ...), iptables rules and
# kube-router's ipsets. `up` records them before anything starts, `down` puts them back, and
# `leftovers` reports any difference.
# Sourced, never run.

HOST_STATE_SYSCTLS="$STATE_DIR/sysctl.before"
HOST_STATE_PATHS="$STATE_DIR/paths.created"
HOST_STATE_IPSETS="$STATE_DIR/ipsets.before"

# Kernel settings worth comparing: every writable key under these prefixes.
HOST_SYSCTL_PREFIXES='^(kernel\.|vm\.|net\.core\.|net\.bridge\.|net\.netfilter\.nf_conntrack_|net\.ipv4\.ip_forward|net\.ipv4\.conf\.(all|default)\.|net\.ipv6\.conf\.(all|default)\.)'
# Keys that move on their own (counters, random state, taint flags): never compared.
HOST_SYSCTL_VOLATILE='^(kernel\.random\.|kernel\.ns_last_pid|kernel\.pty\.nr|kernel\.tainted|kernel\.core_pipe_limit|kernel\.sched_domain\.|kernel\.perf_event_|kernel\.usermodehelper\.|vm\.stat_refresh|vm\.drop_caches|vm\.compact_memory|net\.netfilter\.nf_conntrack_count|net\.netfilter\.nf_conntrack_expect_max|net\.netfilter\.nf_conntrack_buckets)'

# Paths components create outside the state directory: kubelet's plugin and log
# directories, the CNI plugins' state, containerd's default option directory.
HOST_PATHS=(/opt/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods /etc/cni /var/lib/containerd /run/netns)

# The compared settings, one `key<TAB>value` line each (values may hold spaces and tabs,
# which sysctl prints as they are). A key printed on several lines (a list of choices, such
# as kernel.core_modes) is no setting to restore.
host_sysctls() {
	sysctl -a 2>/dev/null |
		sed -n -E 's/^([^ ]+) = (.*)$/\1\t\2/p' |
		grep -E "$HOST_SYSCTL_PREFIXES" | grep -vE "$HOST_SYSCTL_VOLATILE" |
		awk -F '\t' '{lines[$1]++; line[$1] = $0} END {for (k in lines) if (lines[k] == 1) print line[k]}' | sort || true
}

# Records the host's state once per cluster (a second `up` keeps the first record).
host_state_record() {
	mkdir -p "$STATE_DIR"
	[[ -f $HOST_STATE_SYSCTLS ]] || host_sysctls >"$HOST_STATE_SYSCTLS"
	local cmd
	for cmd in iptables ip6tables; do
		[[ -f $STATE_DIR/$cmd.before ]] || { $cmd-save 2>/dev/null | grep -v '^#' >"$STATE_DIR/$cmd.before" || true; }
	done
	[[ -f $HOST_STATE_IPSETS ]] || our_ipsets >"$HOST_STATE_IPSETS"
	if [[ ! -f $HOST_STATE_PATHS ]]; then
		local path
		for path in "${HOST_PATHS[@]}"; do
			[[ -e $path ]] || echo "$path"
		done >"$HOST_STATE_PATHS"
	fi
}

# The record, loaded into memory by `host_state_load` at the start of `down`, which removes
# the state directory before its leftovers check.
declare -A HOST_SYSCTL_BEFORE=() HOST_IPTABLES_BEFORE=()
HOST_PATHS_CREATED=() HOST_IPSETS_BEFORE=()

host_state_load() {
	local key value cmd
	if [[ -f $HOST_STATE_SYSCTLS ]]; then
		while IFS=$'\t' read -r key value; do
			HOST_SYSCTL_BEFORE[$key]=$value
		done <"$HOST_STATE_SYSCTLS"
	fi
	[[ -f $HOST_STATE_PATHS ]] && mapfile -t HOST_PATHS_CREATED <"$HOST_STATE_PATHS"
	[[ -f $HOST_STATE_IPSETS ]] && mapfile -t HOST_IPSETS_BEFORE <"$HOST_STATE_IPSETS"
	for cmd in iptables ip6tables; do
		[[ -f $STATE_DIR/$cmd.before ]] && HOST_IPTABLES_BEFORE[$cmd]=$(<"$STATE_DIR/$cmd.before")
	done
	return 0
}

# The rules and chain lines (`-A ...`, `:CHAIN ...`) of one table before `up`.
host_iptables_before() {
	local cmd=$1 table=$2
	awk -v t="*$table" '$0 == t {f = 1; next} /^COMMIT/ {f = 0} f' <<<"${HOST_IPTABLES_BEFORE[$cmd]:-}"
}

# Was the ipset NAME there before `up`?
host_ipset_before() {
	local set
	for set in "${HOST_IPSETS_BEFORE[@]}"; do
		[[ $set == "$1" ]] && return 0
	done
	return 1
}

# Puts back every recorded setting that changed, removes every recorded path that the
# cluster created. Keys that did not exist before (a module loaded since) stay as they are.
host_state_restore() {
	local key value restored=()
	while IFS=$'\t' read -r key value; do
		[[ -v HOST_SYSCTL_BEFORE[$key] ]] || continue
		[[ ${HOST_SYSCTL_BEFORE[$key]} == "$value" ]] && continue
		if sysctl -q -w "$key=${HOST_SYSCTL_BEFORE[$key]}" >/dev/null 2>&1; then
			restored+=("$key $value -> ${HOST_SYSCTL_BEFORE[$key]}")
		else
			log "cannot restore $key to ${HOST_SYSCTL_BEFORE[$key]} (it is $value)"
		fi
	done < <(host_sysctls)
	((${#restored[@]} == 0)) || log "kernel settings restored: $(printf '%s; ' "${restored[@]}")"
	local path
	for path in "${HOST_PATHS_CREATED[@]}"; do
		[[ -n $path && -e $path ]] || continue
		# Mounts below a path (a pod's netns file) go first.
		awk -v p="$path" 'index($5, p "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r umount -l 2>/dev/null || true
		rm -rf "$path"
	done
}

# Lists the settings that differ from the record and the created paths still present;
# succeeds only if there are none.
host_state_leftovers() {
	local found=0 key value path
	while IFS=$'\t' read -r key value; do
		[[ -v HOST_SYSCTL_BEFORE[$key] ]] || continue
		if [[ ${HOST_SYSCTL_BEFORE[$key]} != "$value" ]]; then
			log "left: sysctl $key = $value (was ${HOST_SYSCTL_BEFORE[$key]})"
			found=1
		fi
	done < <(host_sysctls)
	for path in "${HOST_PATHS_CREATED[@]}"; do
		[[ -n $path && -e $path ]] && { log "left: $path"; found=1; }
	done
	local set
	for set in $(our_ipsets); do
		host_ipset_before "$set" || { log "left: ipset $set"; found=1; }
	done
	local cmd table before line
	for cmd in iptables ip6tables; do
		for table in filter nat mangle raw; do
			before=$(host_iptables_before "$cmd" "$table")
			while read -r line; do
				case $line in
				-N\ *) grep -q "^:${line#-N } " <<<"$before" && continue ;;
				*) grep -qxF -- "$line" <<<"$before" && continue ;;
				esac
				log "left: $cmd -t $table $line"
				found=1
			done < <($cmd -t "$table" -S 2>/dev/null | grep -E '^(-N|-A) (KUBE-|CNI-|TASKCLUSTER-E2E)|^-A .*-j (KUBE-|CNI-|TASKCLUSTER-E2E)' || true)
		done
	done
	return $found
}
