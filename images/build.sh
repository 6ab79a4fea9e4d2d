#!/usr/bin/env bash
# Builds the project's container images as archives, without a Docker engine or a
# registry, from binaries built on the host:
#
#   docker.io/taskcluster/node:VERSION       taskcluster (master and worker), uid 65532
#   docker.io/taskcluster/operator:VERSION   taskcluster-operator, uid 65532
#   docker.io/taskcluster/zookeeper:<zookeeper/VERSION>
#                                            ZooKeeper from Maven Central on Debian bookworm's
#                                            JRE, uid 1000
#
# Usage: images/build.sh [--cargo] [all|node|operator|zookeeper]...
#   --cargo   build the release binaries first (cargo build --release -p ...)
#
# TASKCLUSTER_RELEASE=V tags the node and operator images V instead of the crate's version
# and names their archives <name>-V.tar; with --cargo the operator binary is stamped V too
# (the e2e suite's upgrade scenario starts from such a build).
#
# Archives go to target/images/ (IMAGES_OUT overrides). Import them with
#   ctr -n k8s.io images import target/images/<name>.tar
# or `docker load` / `kind load image-archive`. The Dockerfiles beside this script build
# the same images with Docker.
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/.." && pwd)"
# shellcheck source=lib/oci.sh
. "$IMAGES_DIR/lib/oci.sh"

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
IMAGES_OUT="${IMAGES_OUT:-$REPO_ROOT/target/images}"
CACHE_DIR="${TASKCLUSTER_E2E_CACHE:-/var/cache/taskcluster-e2e}"
VERSION="${TASKCLUSTER_RELEASE:-$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")}"
# Archives of a stamped release sit beside the crate's own.
ARCHIVE_SUFFIX="${TASKCLUSTER_RELEASE:+-$TASKCLUSTER_RELEASE}"
ZOOKEEPER_VERSION="$(tr -d '[:space:]' <"$REPO_ROOT/zookeeper/VERSION")"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The JRE alone: the server's jars come from Maven Central (zookeeper/install.sh), not from
# Debian, whose libzookeeper-java is an older release.
ZOOKEEPER_PACKAGES=openjdk-17-jre-headless,netbase
NONROOT_UID=65532
BUSYBOX=/bin/busybox

log() { printf '%s [images] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The minimal /etc of an image whose process runs as NONROOT_UID.
write_etc() {
	local root=$1
	mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
		"$NONROOT_UID" "$NONROOT_UID" >"$root/etc/passwd"
	printf 'root:x:0:\nnonroot:x:%s:\n' "$NONROOT_UID" >"$root/etc/group"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
	chmod 1777 "$root/tmp"
	chown "$NONROOT_UID:$NONROOT_UID" "$root/home/nonroot"
}

# Copies a dynamically linked binary and exactly the shared libraries it loads.
copy_binary_with_libs() {
	local bin=$1 root=$2 dest=$3
	install -D -m 0755 "$bin" "$root$dest"
	local lib
	while read -r lib; do
		[[ -n $lib ]] || continue
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done < <(ldd "$bin" | grep -o '/[^ ]*' | sort -u)
}

# build_binary_image NAME CRATE BINARY
build_binary_image() {
	local name=$1 crate=$2 binary=$3
	local bin="$CARGO_TARGET_DIR/release/$binary"
	if [[ ! -x $bin ]]; then
		if [[ $name == operator ]] && ! grep -q '^name = "taskcluster-operator"' "$REPO_ROOT/operator/Cargo.toml" 2>/dev/null; then
			log "skipping the operator image: the taskcluster-operator crate does not exist yet"
			return 0
		fi
		log "skipping the $name image: $bin is missing;" \
			"build it with: cargo build --release -p $crate (or pass --cargo)"
		return 3
	fi
	local ref="docker.io/taskcluster/$name:$VERSION"
	log "building $ref from $bin"
	local work
	work=$(mktemp -d)
	write_etc "$work/root"
	copy_binary_with_libs "$bin" "$work/root" "/usr/local/bin/$binary"
	if [[ $name == node ]]; then
		# Workers run `--exec` commands through `sh -c`: a static BusyBox provides the shell
		# and the usual tools (Debian's busybox-static).
		[[ -x $BUSYBOX ]] || die "$BUSYBOX is missing: apt-get install busybox-static"
		install -D -m 0755 "$BUSYBOX" "$work/root/bin/busybox"
		local applet
		for applet in $("$BUSYBOX" --list); do
			[[ -e $work/root/bin/$applet ]] || ln -s busybox "$work/root/bin/$applet"
		done
	fi
	oci_layer_from_dir "$work/root" "$work/layer.tar"
	local config
	config=$(jq -cn --arg bin "/usr/local/bin/$binary" --arg user "$NONROOT_UID:$NONROOT_UID" '{
		User: $user, Entrypoint: [$bin], WorkingDir: "/home/nonroot",
		Env: ["PATH=/usr/local/bin:/usr/bin:/bin"],
		Labels: {"org.opencontainers.image.source": "taskcluster"}
	}')
	local archive="$IMAGES_OUT/$name$ARCHIVE_SUFFIX.tar"
	oci_archive "$archive" "$ref" "$config" "$work/layer.tar"
	rm -rf "$work"
	log "wrote $archive ($(du -h "$archive" | cut -f1))"
}

# The ZooKeeper image: a Debian root filesystem with the JRE (mmdebstrap, a minute), the
# server's jars from zookeeper/install.sh and the Prometheus exporter's from
# images/zookeeper/metrics-jars.sh in /opt/zookeeper/lib, logback's configuration in
# /opt/zookeeper/conf. Cached outside the clone, keyed by the suite, the packages, every
# input file and the checksum of every jar.
build_zookeeper() {
	command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
	local ref="docker.io/taskcluster/zookeeper:$ZOOKEEPER_VERSION"
	local work home
	work=$(mktemp -d)
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '$work'" EXIT
	home=$(bash "$REPO_ROOT/zookeeper/install.sh") || die "installing ZooKeeper $ZOOKEEPER_VERSION failed (above)"
	bash "$IMAGES_DIR/zookeeper/metrics-jars.sh" "$work/metrics-lib" "$home/lib" ||
		die "resolving the ZooKeeper image's Prometheus exporter failed (above)"
	local key
	key=$( (
		echo "$DEBIAN_SUITE $ZOOKEEPER_PACKAGES"
		cat "$REPO_ROOT"/zookeeper/{VERSION,pom.xml,logback.xml,install.sh} "$home/conf/logback.xml"
		cat "$IMAGES_DIR"/zookeeper/{zookeeper-server,zookeeper-ready,metrics-pom.xml,metrics-jars.sh} "$IMAGES_DIR/lib/oci.sh"
		(cd "$home/lib" && sha256sum -- *.jar)
		(cd "$work/metrics-lib" && sha256sum -- *.jar)
		declare -f build_zookeeper
	) | sha256sum | cut -c1-16)
	local cached="$CACHE_DIR/images/zookeeper-$ZOOKEEPER_VERSION-$key.tar"
	if [[ ! -s $cached ]]; then
		log "building $ref with mmdebstrap ($DEBIAN_SUITE: $ZOOKEEPER_PACKAGES)"
		local start=$SECONDS
		mmdebstrap --quiet --variant=essential --include="$ZOOKEEPER_PACKAGES" \
			--aptopt='APT::Install-Recommends "false"' \
			--dpkgopt='path-exclude=/usr/share/doc/*' \
			--dpkgopt='path-include=/usr/share/doc/*/copyright' \
			--dpkgopt='path-exclude=/usr/share/man/*' \
			--dpkgopt='path-exclude=/usr/share/locale/*' \
			--dpkgopt='path-exclude=/usr/share/info/*' \
			--setup-hook='mkdir -p "$1/usr/share/man/man1"' \
			--customize-hook='mkdir -p "$1/data" "$1/conf"' \
			--customize-hook='echo "zookeeper:x:1000:1000:ZooKeeper:/data:/usr/sbin/nologin" >>"$1/etc/passwd"' \
			--customize-hook='echo "zookeeper:x:1000:" >>"$1/etc/group"' \
			--customize-hook='chown 1000:1000 "$1/data" "$1/conf"' \
			--customize-hook="copy-in $IMAGES_DIR/zookeeper/zookeeper-server $IMAGES_DIR/zookeeper/zookeeper-ready /usr/local/bin" \
			--customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists" "$1/var/log"/*' \
			"$DEBIAN_SUITE" "$work/root" "$DEBIAN_MIRROR"
		chmod 0755 "$work/root/usr/local/bin/zookeeper-server" "$work/root/usr/local/bin/zookeeper-ready"
		# Owned by root and read-only to the server's uid.
		install -d -m 0755 "$work/root/opt/zookeeper/lib" "$work/root/opt/zookeeper/conf"
		install -m 0644 "$home"/lib/*.jar "$work"/metrics-lib/*.jar "$work/root/opt/zookeeper/lib/"
		install -m 0644 "$home/conf/logback.xml" "$work/root/opt/zookeeper/conf/"
		oci_layer_from_dir "$work/root" "$work/layer.tar"
		local config
		config=$(jq -cn '{
			User: "1000:1000", Entrypoint: ["/usr/local/bin/zookeeper-server"], WorkingDir: "/data",
			Env: ["PATH=/usr/local/bin:/usr/bin:/bin", "ZK_HEAP=256m"],
			ExposedPorts: {"2181/tcp": {}, "2888/tcp": {}, "3888/tcp": {}, "7000/tcp": {}},
			Volumes: {"/data": {}}
		}')
		mkdir -p "$CACHE_DIR/images"
		oci_archive "$cached" "$ref" "$config" "$work/layer.tar"
		log "built the ZooKeeper image in $((SECONDS - start)) s"
	fi
	rm -rf "$work"
	trap - EXIT
	mkdir -p "$IMAGES_OUT"
	ln -f "$cached" "$IMAGES_OUT/zookeeper.tar" 2>/dev/null || cp "$cached" "$IMAGES_OUT/zookeeper.tar"
	log "wrote $IMAGES_OUT/zookeeper.tar ($(du -h "$cached" | cut -f1))"
}

main() {
	[[ $(id -u) == 0 ]] || die "run as root: image files must be owned by their uids"
	local cargo=false targets=()
	for arg in "$@"; do
		case $arg in
		--cargo) cargo=true ;;
		all | node | operator | zookeeper) targets+=("$arg") ;;
		*) die "unknown argument '$arg' (usage: build.sh [--cargo] [all|node|operator|zookeeper]...)" ;;
		esac
	done
	[[ ${#targets[@]} -gt 0 ]] || targets=(all)
	[[ " ${targets[*]} " == *" all "* ]] && targets=(node operator zookeeper)

	local failed=0 t
	for t in "${targets[@]}"; do
		case $t in
		node)
			$cargo && (cd "$REPO_ROOT" && cargo build --release -p taskcluster)
			build_binary_image node taskcluster taskcluster || failed=1
			;;
		operator)
			if $cargo && grep -q '^name = "taskcluster-operator"' "$REPO_ROOT/operator/Cargo.toml" 2>/dev/null; then
				(cd "$REPO_ROOT" && cargo build --release -p taskcluster-operator)
			fi
			build_binary_image operator taskcluster-operator taskcluster-operator || failed=1
			;;
		zookeeper) build_zookeeper ;;
		esac
	done
	return $failed
}

main "$@"
