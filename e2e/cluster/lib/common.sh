# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the local cluster provider. Sourced, never run.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
# shellcheck source=../versions.env
. "$CLUSTER_DIR/versions.env"

# Heavy, reusable artifacts live outside the clone so a fresh checkout starts warm.
CACHE_DIR="${TASKCLUSTER_E2E_CACHE:-/var/cache/taskcluster-e2e}"
# Everything that belongs to one running cluster: pidfiles, logs, certs, kubeconfigs.
STATE_DIR="${TASKCLUSTER_E2E_STATE:-/var/lib/taskcluster-e2e}"
# The kubeconfig `up` writes for tests and users.
KUBECONFIG_OUT="${TASKCLUSTER_E2E_KUBECONFIG:-$STATE_DIR/admin.kubeconfig}"

log() { printf '%s [local-cluster] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a Go command with the caches outside the clone and a pinned toolchain, at low
# priority so builds yield the CPU to anything else running on the machine.
go_in() {
	local toolchain=$1 dir=$2
	shift 2
	(
		cd "$dir" &&
			GOTOOLCHAIN="$toolchain" \
				GOMODCACHE="$CACHE_DIR/go/mod" \
				GOCACHE="$CACHE_DIR/go/build" \
				GOFLAGS="-modcacherw -buildvcs=false ${GO_BUILD_FLAGS:-}" \
				CGO_ENABLED=0 \
				nice -n "${BUILD_NICE:-15}" go "$@"
	)
}

# A short hash of files, used to key cached builds by their inputs.
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

RUN_DIR=/run/taskcluster-e2e
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
PKI_DIR="$STATE_DIR/pki"
KCFG_DIR="$STATE_DIR/kubeconfig"
LOG_DIR="$STATE_DIR/logs"
PID_DIR="$STATE_DIR/pids"
CONF_DIR="$STATE_DIR/config"
# containerd's registry hosts directory (the certs.d layout): one hosts.toml per registry.
REGISTRY_HOSTS_DIR="$CONF_DIR/certs.d"

# The Debian packages the provider runs; installed on first use.
HOST_PACKAGES=(containerd runc containernetworking-plugins iproute2 iptables ipset conntrack mmdebstrap jq curl bind9-dnsutils busybox-static)
CNI_BIN_DIR=/usr/lib/cni

ensure_host_packages() {
	local missing=() p
	for p in "${HOST_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	log "installing Debian packages: ${missing[*]}"
	apt-get update -qq
	# policy-rc.d keeps the packages' own services from starting: the provider runs
	# containerd itself, on its own socket.
	local policy=/usr/sbin/policy-rc.d created=false
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=true
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	$created && rm -f "$policy"
	return 0
}

# The cgroup (v2) every component runs in, so the fence can match their sockets: under
# the cgroup v2 hierarchy (the hybrid layout's /sys/fs/cgroup/unified, or a unified
# /sys/fs/cgroup); empty where there is none.
COMPONENT_CGROUP_NAME=taskcluster-e2e
CGROUP2_MOUNT=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/self/mounts 2>/dev/null)
COMPONENT_CGROUP=${CGROUP2_MOUNT:+$CGROUP2_MOUNT/$COMPONENT_CGROUP_NAME}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Is the process of a pidfile alive, and is it still the binary we started?
proc_alive() {
	local name=$1 pid
	[[ -f $PID_DIR/$name.pid ]] || return 1
	pid=$(<"$PID_DIR/$name.pid")
	[[ -n $pid && -d /proc/$pid ]] || return 1
	[[ $(cat "$PID_DIR/$name.cmd" 2>/dev/null) == "$(readlink "/proc/$pid/exe" 2>/dev/null)" ]]
}

# start_proc NAME BINARY ARGS...: runs a component in its own session and in the
# component cgroup (before it runs, so every socket it opens is the fence's), its output
# in LOG_DIR/NAME.log; a component already running is left alone. It does not inherit
# ci.sh's lock (fd 9): a component that outlived its run would hold the next run off.
start_proc() {
	local name=$1
	shift
	if proc_alive "$name"; then
		log "$name is running (pid $(<"$PID_DIR/$name.pid"))"
		return 0
	fi
	mkdir -p "$LOG_DIR" "$PID_DIR"
	printf '\n==== %s start: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOG_DIR/$name.log"
	(
		if [[ -n $COMPONENT_CGROUP && -d $COMPONENT_CGROUP ]]; then
			echo "$BASHPID" >"$COMPONENT_CGROUP/cgroup.procs"
		fi
		exec setsid "$@"
	) >>"$LOG_DIR/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$PID_DIR/$name.pid"
	readlink -f "$1" >"$PID_DIR/$name.cmd"
	log "started $name (pid $!, log $LOG_DIR/$name.log)"
}

stop_proc() {
	local name=$1 pid i
	[[ -f $PID_DIR/$name.pid ]] || return 0
	if proc_alive "$name"; then
		pid=$(<"$PID_DIR/$name.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			[[ -d /proc/$pid ]] || break
			sleep 0.1
		done
		if [[ -d /proc/$pid ]]; then
			log "$name did not stop on SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
		log "stopped $name (pid $pid)"
	fi
	rm -f "$PID_DIR/$name.pid" "$PID_DIR/$name.cmd"
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_until() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 1
	done
}
