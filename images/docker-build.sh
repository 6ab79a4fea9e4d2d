#!/usr/bin/env bash
# Builds the images from their Dockerfiles with a real Docker engine, the way a user with
# Docker builds them, on a machine that has no registry to pull a base image from:
#
#   images/docker-build.sh                 # node, operator and zookeeper
#   images/docker-build.sh node zookeeper  # some of them
#
# Needs root and Debian's docker.io (installed with apt when missing). The engine is a
# private one: its own socket, data and exec roots under TASKCLUSTER_DOCKER_ROOT, no iptables
# rules, no bridge, stopped and removed on exit; nothing of a Docker the machine may run is
# touched. Then:
#
# - The fence: the engine sends every registry request to a proxy at a dead loopback port and
#   resolves its own names with a dead loopback resolver (a mount namespace with its own
#   resolv.conf), so a missing or misnamed image fails at once and nothing is pulled. It is
#   checked first: a pull of an image on Docker Hub and one on another registry must both fail
#   at those loopback addresses. Build steps (RUN) use the host's network and resolver and
#   fetch their packages (Debian, crates.io, Maven Central) as builds on the host do.
# - The base images the Dockerfiles name are assembled here under those names (bases.sh):
#   debian:bookworm-slim and the two distroless bases from Debian's packages (mmdebstrap), and
#   rust:1-bookworm from Debian and the host's Rust toolchain.
# - Each Dockerfile is built with BuildKit from the repository root, with its own
#   .dockerignore; its `# syntax=docker/dockerfile:1` line, which makes BuildKit pull the
#   Dockerfile frontend from Docker Hub, is left out of the copy that is built (the engine's
#   built-in frontend reads the rest).
# - Each image is checked: its user, and that what it runs runs (the node's `--version` and
#   shell, the operator up to its search for a cluster, the ZooKeeper server's jars and JRE).
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/.." && pwd)"
DOCKER_ROOT="${TASKCLUSTER_DOCKER_ROOT:-/var/lib/taskcluster-docker}"
DOCKER_HOST="unix://$DOCKER_ROOT/docker.sock"
# The builds' logs, kept after the engine is gone.
LOGS="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/docker-build"
export DOCKER_HOST DOCKER_BUILDKIT=1
# Debian's client, of the engine's release (a newer client on the PATH wants buildx for BuildKit).
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
# Where the engine's registry requests and name lookups go: nothing listens there.
DEAD_PROXY=http://127.0.0.1:9
DEAD_RESOLVER=127.0.0.2
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")"
ZOOKEEPER_VERSION="$(tr -d '[:space:]' <"$REPO_ROOT/zookeeper/VERSION")"

log() { printf '%s [docker-build] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=lib/bases.sh
. "$IMAGES_DIR/lib/bases.sh"

ensure_docker() {
	[[ -x $DOCKERD && -x $DOCKER ]] && return 0
	log "installing Debian's docker.io"
	export DEBIAN_FRONTEND=noninteractive
	timeout 600 apt-get update -qq
	# policy-rc.d keeps the package from starting the machine's own Docker service.
	local policy=/usr/sbin/policy-rc.d created=false
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=true
	fi
	timeout 900 apt-get install -y -qq --no-install-recommends docker.io >/dev/null
	$created && rm -f "$policy"
	[[ -x $DOCKERD && -x $DOCKER ]] || die "docker.io did not install $DOCKERD and $DOCKER"
}

start_engine() {
	stop_engine
	mkdir -p "$DOCKER_ROOT/data" "$DOCKER_ROOT/exec"
	printf 'nameserver %s\n' "$DEAD_RESOLVER" >"$DOCKER_ROOT/resolv.conf"
	# Build steps get the host's resolver (the engine passes --dns on to BuildKit).
	local resolver
	resolver=$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)
	[[ -n $resolver ]] || die "/etc/resolv.conf names no nameserver for the build steps"
	log "starting a private Docker engine ($("$DOCKERD" --version)) in $DOCKER_ROOT"
	HTTP_PROXY=$DEAD_PROXY HTTPS_PROXY=$DEAD_PROXY NO_PROXY='' \
		setsid unshare --mount --propagation private -- \
		sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$DOCKER_ROOT/resolv.conf" \
		"$DOCKERD" --host "$DOCKER_HOST" --data-root "$DOCKER_ROOT/data" --exec-root "$DOCKER_ROOT/exec" \
		--pidfile "$DOCKER_ROOT/dockerd.pid" --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
		--bridge=none --dns "$resolver" --cgroup-parent taskcluster-docker --log-level warn \
		</dev/null >"$DOCKER_ROOT/dockerd.log" 2>&1 &
	local i
	for i in $(seq 120); do
		"$DOCKER" info >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	tail -20 "$DOCKER_ROOT/dockerd.log" >&2
	die "the Docker engine did not answer within 60 s (its log above)"
}

# Stops the engine (and the containerd it supervises) and removes everything it wrote.
stop_engine() {
	local pid
	if [[ -f $DOCKER_ROOT/dockerd.pid ]]; then
		pid=$(<"$DOCKER_ROOT/dockerd.pid")
		if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
			local i
			for i in $(seq 60); do
				[[ -d /proc/$pid ]] || break
				sleep 0.5
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	# The mounts lived in the engine's mount namespace and went with it.
	rm -rf "$DOCKER_ROOT"
	local cgroup
	for cgroup in /sys/fs/cgroup/*/taskcluster-docker; do
		[[ -d $cgroup ]] && { find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
	done
	return 0
}

# A pull from Docker Hub and one from another registry must both fail at the dead loopback
# addresses: the engine tried no other way out.
check_fence() {
	local ref out
	for ref in docker.io/library/busybox:taskcluster-fence-check gcr.io/distroless/static:taskcluster-fence-check; do
		if out=$("$DOCKER" pull "$ref" 2>&1); then
			die "the fence let a pull of $ref through"
		fi
		[[ $out == *"${DEAD_PROXY#http://}"* || $out == *"$DEAD_RESOLVER"* ]] ||
			die "a pull of $ref failed, but not at the fence: $out"
		log "fence: a pull of $ref failed at the fence ($(grep -o 'dial [a-z]* [^ ]*' <<<"$out" | head -1))"
	done
}

# build NAME: builds images/NAME/Dockerfile as docker.io/taskcluster/NAME:TAG.
build() {
	local name=$1 tag=$VERSION
	[[ $name == zookeeper ]] && tag=$ZOOKEEPER_VERSION
	local ref="docker.io/taskcluster/$name:$tag" work
	work=$(mktemp -d)
	grep -v '^# syntax=' "$IMAGES_DIR/$name/Dockerfile" >"$work/Dockerfile"
	cp "$IMAGES_DIR/$name/Dockerfile.dockerignore" "$work/Dockerfile.dockerignore"
	log "docker build -f images/$name/Dockerfile -t $ref ."
	local start=$SECONDS
	if ! "$DOCKER" build --progress=plain --network=host -f "$work/Dockerfile" -t "$ref" "$REPO_ROOT" \
		>"$LOGS/$name.log" 2>&1; then
		tail -40 "$LOGS/$name.log" >&2
		rm -rf "$work"
		die "docker build of images/$name/Dockerfile failed (the end of $LOGS/$name.log above)"
	fi
	rm -rf "$work"
	log "built $ref in $((SECONDS - start)) s ($("$DOCKER" image inspect -f '{{.Size}}' "$ref" | numfmt --to=iec) bytes)"
	check_image "$name" "$ref"
}

# check_image NAME REF: the image runs as its user and its entry point works.
check_image() {
	local name=$1 ref=$2 user out
	user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$ref")
	case $name in
	node)
		[[ $user == 65532:65532 ]] || die "$ref runs as '$user', not 65532:65532"
		out=$("$DOCKER" run --rm --network=none "$ref" --version 2>&1) || die "$ref --version failed: $out"
		[[ $out == *"$VERSION"* ]] || die "$ref --version says '$out', not $VERSION"
		# Workers run --exec commands with `sh -c`.
		"$DOCKER" run --rm --network=none --entrypoint sh "$ref" -c true >/dev/null 2>&1 ||
			die "$ref has no shell for --exec commands"
		;;
	operator)
		[[ $user == 65532:65532 ]] || die "$ref runs as '$user', not 65532:65532"
		# Outside a cluster it runs, finds no Kubernetes configuration and says so.
		out=$("$DOCKER" run --rm --network=none "$ref" 2>&1) && die "$ref ran outside a cluster: $out"
		[[ $out == *"no Kubernetes configuration"* ]] || die "$ref did not start: $out"
		out="runs, and outside a cluster says: no Kubernetes configuration found"
		;;
	zookeeper)
		[[ $user == 1000:1000 ]] || die "$ref runs as '$user', not 1000:1000"
		out=$("$DOCKER" run --rm --network=none --entrypoint sh "$ref" -c \
			"ls /opt/zookeeper/lib/zookeeper-$ZOOKEEPER_VERSION.jar && java -version" 2>&1) ||
			die "$ref lacks the ZooKeeper $ZOOKEEPER_VERSION server or a JRE: $out"
		;;
	esac
	log "checked $ref: runs as $user; ${out%%$'\n'*}"
}

main() {
	[[ $(id -u) == 0 ]] || die "run as root: the engine is a private one, started here"
	local targets=() arg
	for arg in "$@"; do
		case $arg in
		node | operator | zookeeper) targets+=("$arg") ;;
		*) die "unknown argument '$arg' (usage: docker-build.sh [node|operator|zookeeper]...)" ;;
		esac
	done
	[[ ${#targets[@]} -gt 0 ]] || targets=(node operator zookeeper)
	ensure_docker
	mkdir -p "$LOGS"
	trap stop_engine EXIT
	start_engine
	check_fence
	assemble_bases "${targets[@]}"
	for arg in "${targets[@]}"; do
		build "$arg"
	done
	log "built and checked: ${targets[*]}"
}

main "$@"
