# shellcheck shell=bash
# The fence test (part of `local.sh smoke`): proves that nothing of the cluster leaves the
# machine, from a pod and from the node. Sourced by local.sh after lib/network.sh.
#
# Every probe is aimed at FENCE_PROBE_IP (TEST-NET-1), at names under `.invalid`, or at
# registries that containerd only knows as a dead loopback port: if the fence failed, the
# probes would still address nothing real.

FENCE_NS=taskcluster-fence
FENCE_FAILURES=()

fence_check() {
	local what=$1
	shift
	if "$@"; then
		log "fence test: ok: $what"
	else
		log "fence test: FAILED: $what"
		FENCE_FAILURES+=("$what")
	fi
}

# in_component_cgroup COMMAND...: runs COMMAND as a component of the cluster would run,
# so the fence treats its sockets as the cluster's.
in_component_cgroup() {
	(
		[[ -n $COMPONENT_CGROUP ]] && echo "$BASHPID" >"$COMPONENT_CGROUP/cgroup.procs"
		exec "$@"
	)
}

fence_pod() { kubectl_admin -n "$FENCE_NS" get pod "$1" -o "jsonpath=$2" 2>/dev/null; }

fence_pod_done() { [[ $(fence_pod "$1" '{.status.phase}') =~ ^(Succeeded|Failed)$ ]]; }

fence_pod_waiting_for() {
	[[ $(fence_pod "$1" '{.status.containerStatuses[0].state.waiting.reason}') =~ ^($2)$ ]]
}

# Pull errors of a pod, from its container status and its events.
fence_pod_pull_errors() {
	fence_pod "$1" '{.status.containerStatuses[0].state.waiting.message}'
	echo
	kubectl_admin -n "$FENCE_NS" get events --field-selector "involvedObject.name=$1" \
		-o 'jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}' 2>/dev/null
}

# Every container of every pod in the cluster runs with imagePullPolicy Never, but the
# pull probe's.
fence_every_pod_never_pulls() {
	local pods others
	pods=$(kubectl_admin get pods --all-namespaces -o 'jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{.spec.containers[*].imagePullPolicy}{" "}{.spec.initContainers[*].imagePullPolicy}{"\n"}{end}') ||
		return 1
	others=$(awk -v probe="$FENCE_NS/pull-probe" '$1 != probe {for (i = 2; i <= NF; i++) if ($i != "Never") {print; break}}' <<<"$pods")
	[[ -z $others ]] || { printf 'pods that may pull:\n%s\n' "$others" >&2; return 1; }
}

# containerd_pulled_only_dead_end LOG: LOG has the pull probe failing against the dead
# end, and no connection to anything else or name lookup of any kind.
containerd_pulled_only_dead_end() {
	local lines=$1 dead=${REGISTRY_DEAD_END#http://} probe others
	probe=$(grep -F fence-probe-pull <<<"$lines" || true)
	[[ $probe == *"dial tcp $dead: connect: connection refused"* ]] || return 1
	others=$(grep -E 'dial (tcp|udp)|lookup [^ ]+ on ' <<<"$lines" | grep -vF "dial tcp $dead:" || true)
	[[ -z $others ]] || { printf 'containerd tried elsewhere:\n%s\n' "$others" >&2; return 1; }
}

fence_test() {
	local start=$SECONDS
	FENCE_FAILURES=()
	fence_present || die "the fence is not up: run local.sh up"
	local leaks_before probes_before
	leaks_before=$(fence_leaks)
	probes_before=$(fence_count "$FENCE_PROBE_CHAIN")
	local containerd_log_lines
	containerd_log_lines=$(wc -l <"$LOG_DIR/containerd.log")

	# A failed run leaves its namespace for inspection; start afresh.
	kubectl_admin delete namespace "$FENCE_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
	sed -e "s|@NODE_IMAGE@|$NODE_IMAGE|g" -e "s|@FENCE_PROBE_IP@|$FENCE_PROBE_IP|g" \
		"$CLUSTER_DIR/manifests/fence.yaml" | kubectl_admin apply -f - >/dev/null
	local created=$SECONDS

	# From a pod: TCP and DNS to an outside address, and a name outside the cluster.
	wait_until 90 "pod reach-outside to finish" fence_pod_done reach-outside || true
	log "fence test: reach-outside says:"
	kubectl_admin -n "$FENCE_NS" logs reach-outside >&2 || true
	fence_check "every attempt of reach-outside to reach outside failed" \
		test "$(fence_pod reach-outside '{.status.phase}')" = Succeeded
	local probes_pod
	probes_pod=$(fence_count "$FENCE_PROBE_CHAIN")
	fence_check "the fence dropped the pod's probes ($((probes_pod - probes_before)) packets, at least a TCP SYN and a DNS query)" \
		test $((probes_pod - probes_before)) -ge 2
	fence_check "the fence logged them (\"${FENCE_LOG_PREFIX}probe\" for DST=$FENCE_PROBE_IP)" \
		bash -c "grep -q 'DST=$FENCE_PROBE_IP ' <<<\"\$1\"" _ "$(fence_log | grep -F "${FENCE_LOG_PREFIX}probe")"

	# A missing image under the never-pull policy: the kubelet never asks containerd.
	wait_until 60 "pod missing-image to fail its image" fence_pod_waiting_for missing-image ErrImageNeverPull || true
	fence_check "the pod asking IfNotPresent was admitted with imagePullPolicy Never" \
		test "$(fence_pod missing-image '{.spec.containers[0].imagePullPolicy}')" = Never
	fence_check "its missing image fails with ErrImageNeverPull" fence_pod_waiting_for missing-image ErrImageNeverPull

	# A pull the kubelet does ask for: containerd's only registry is the dead loopback port.
	wait_until 60 "pod pull-probe to fail its pull" fence_pod_waiting_for pull-probe 'ErrImagePull|ImagePullBackOff' || true
	log "fence test: pull-probe failed to pull after at most $((SECONDS - created)) s:"
	fence_pod_pull_errors pull-probe | grep -v '^$' | sort -u | head -n 5 >&2 || true
	fence_check "the pull the kubelet asked for failed against $REGISTRY_DEAD_END" \
		bash -c "grep -qF '${REGISTRY_DEAD_END#http://}' <<<\"\$1\"" _ "$(fence_pod_pull_errors pull-probe)"
	local containerd_lines
	containerd_lines=$(tail -n +"$((containerd_log_lines + 1))" "$LOG_DIR/containerd.log")
	log "fence test: containerd's log of the pulls:"
	grep -F fence-probe <<<"$containerd_lines" | head -n 4 >&2 || true
	fence_check "containerd tried $REGISTRY_DEAD_END for the pull probe, and no other address or name" \
		containerd_pulled_only_dead_end "$containerd_lines"
	fence_check "containerd was never asked for the never-pull image" \
		bash -c "! grep -qF fence-probe-never <<<\"\$1\"" _ "$containerd_lines"

	# From the node: a pull through ctr, as an administrator would type it (with the
	# provider's hosts directory), and a component's own socket to the outside.
	local out t0=$SECONDS
	out=$(in_component_cgroup timeout 20 ctr --address "$CONTAINERD_SOCK" -n k8s.io images pull \
		--hosts-dir "$REGISTRY_HOSTS_DIR" docker.io/library/busybox:latest 2>&1) && out="PULLED: $out"
	log "fence test: ctr images pull docker.io/library/busybox:latest, after $((SECONDS - t0)) s: $(tail -n 1 <<<"$out")"
	fence_check "ctr's pull failed at once against $REGISTRY_DEAD_END" \
		bash -c "[[ \$1 != PULLED* && \$1 == *'dial tcp ${REGISTRY_DEAD_END#http://}: connect: connection refused'* ]] && ((\$2 <= 5))" _ "$out" $((SECONDS - t0))
	if [[ -n $COMPONENT_CGROUP ]]; then
		local probes_node
		probes_node=$(fence_count "$FENCE_PROBE_CHAIN")
		local rc=0
		out=$(in_component_cgroup timeout 4 bash -c "exec 3<>/dev/tcp/$FENCE_PROBE_IP/80" 2>&1) || rc=$?
		case $rc in
		0) out="REACHED: $out" ;;
		124) out="no connection after 4 s" ;;
		esac
		log "fence test: TCP to $FENCE_PROBE_IP:80 from the component cgroup: $(tail -n 1 <<<"$out")"
		fence_check "a component's socket cannot reach $FENCE_PROBE_IP, and the fence counted it" \
			bash -c "[[ \$1 != REACHED* ]] && ((\$2 > \$3))" _ "$out" "$(fence_count "$FENCE_PROBE_CHAIN")" "$probes_node"
	fi

	fence_check "every other pod runs with imagePullPolicy Never" fence_every_pod_never_pulls
	local leaks_after
	leaks_after=$(fence_leaks)
	fence_check "no packet tried to leave the machine (leak counter $leaks_before -> $leaks_after)" \
		test "$leaks_after" = "$leaks_before"
	fence_report --log >&2

	if ((${#FENCE_FAILURES[@]} > 0)); then
		kubectl_admin -n "$FENCE_NS" get pods -o wide >&2 || true
		kubectl_admin -n "$FENCE_NS" get events --sort-by=.lastTimestamp >&2 || true
		die "fence test failed: ${FENCE_FAILURES[*]}"
	fi
	kubectl_admin delete namespace "$FENCE_NS" --wait=true --timeout=120s >/dev/null
	log "fence test passed in $((SECONDS - start)) s"
}
