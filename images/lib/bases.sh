# shellcheck shell=bash
# The base images the Dockerfiles name, assembled on this machine under those names
# (sourced by docker-build.sh; needs DOCKER, log and die). Each is a root filesystem from
# Debian's packages (mmdebstrap, its output streamed into `docker import`) with the image
# settings of the upstream image it stands for:
#
#   debian:bookworm-slim                       Debian's minbase variant
#   rust:1-bookworm                            minbase, a C compiler (ring builds C) and the
#                                              host's Rust toolchain; CARGO_HOME /usr/local/cargo
#   gcr.io/distroless/cc-debian12:nonroot      glibc, libgcc, CA certificates, tzdata, netbase,
#                                              uid 65532, no shell
#   gcr.io/distroless/cc-debian12:debug-nonroot  the same with BusyBox in /busybox
#
# Each trusts the machine's own certificate authorities (/usr/local/share/ca-certificates) as
# the host does: where the way out to the package registries re-signs TLS, a build step that
# fetches crates or jars over HTTPS needs them. In the Debian images they sit where Debian's
# ca-certificates adds them to every trust store it makes (Java's too) when it is installed.

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NONROOT=65532
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LOCAL_CAS=/usr/local/share/ca-certificates
# An mmdebstrap hook: the machine's authorities into the root filesystem.
LOCAL_CA_HOOK="mkdir -p \"\$1$LOCAL_CAS\" && if ls $LOCAL_CAS/*.crt >/dev/null 2>&1; then cp $LOCAL_CAS/*.crt \"\$1$LOCAL_CAS/\"; fi"

# assemble_bases TARGET...: the bases the Dockerfiles of those images name.
assemble_bases() {
	command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
	local target bases=()
	for target in "$@"; do
		case $target in
		node) bases+=(rust distroless_debug) ;;
		operator) bases+=(rust distroless) ;;
		zookeeper) bases+=(debian) ;;
		esac
	done
	local base
	for base in $(printf '%s\n' "${bases[@]}" | sort -u); do
		local start=$SECONDS
		"assemble_$base" >/dev/null
		log "assembled the $base base in $((SECONDS - start)) s"
	done
}

assemble_debian() {
	mmdebstrap --quiet --variant=minbase --customize-hook="$LOCAL_CA_HOOK" "$DEBIAN_SUITE" - "$DEBIAN_MIRROR" |
		"$DOCKER" import --change 'CMD ["bash"]' - docker.io/library/debian:bookworm-slim
}

# The toolchain that builds the project on the host, without its documentation.
assemble_rust() {
	local sysroot
	sysroot=$(rustc --print sysroot) || die "no Rust toolchain on the host (rustc --print sysroot)"
	mmdebstrap --quiet --variant=minbase --include=ca-certificates,gcc,libc6-dev \
		--aptopt='APT::Install-Recommends "false"' \
		--customize-hook="$LOCAL_CA_HOOK" --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
		--customize-hook='mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo/bin" "$1/usr/local/rustup"' \
		--customize-hook="tar -C '$sysroot' --exclude=./share -c . | tar -C \"\$1/usr/local/rust\" -x" \
		--customize-hook='for b in cargo rustc rustdoc; do ln -s ../../rust/bin/$b "$1/usr/local/cargo/bin/$b"; done' \
		--customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"/*' \
		"$DEBIAN_SUITE" - "$DEBIAN_MIRROR" |
		"$DOCKER" import --change "ENV PATH=/usr/local/cargo/bin:$BASE_PATH" \
			--change 'ENV CARGO_HOME=/usr/local/cargo' --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
			- docker.io/library/rust:1-bookworm
}

# distroless_root [debug]: a tar stream of the packages unpacked (no maintainer scripts run:
# there is no shell to run them; mmdebstrap's extract variant runs no hooks either), the CA
# bundle their scripts would make, and the nonroot user.
distroless_root() {
	local include=base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1
	[[ ${1:-} == debug ]] && include+=,busybox-static
	local work
	work=$(mktemp -d)
	local root=$work/root
	mmdebstrap --quiet --variant=extract --include="$include" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >&2
	mkdir -p "$root$LOCAL_CAS" "$root/etc/ssl/certs"
	if compgen -G "$LOCAL_CAS/*.crt" >/dev/null; then cp "$LOCAL_CAS"/*.crt "$root$LOCAL_CAS/"; fi
	cat "$root"/usr/share/ca-certificates/*/*.crt "$root$LOCAL_CAS"/*.crt >"$root/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
		"$NONROOT" "$NONROOT" >"$root/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:%s:\n' "$NONROOT" >"$root/etc/group"
	install -d -m 0700 -o "$NONROOT" -g "$NONROOT" "$root/home/nonroot"
	install -d -m 1777 "$root/tmp"
	if [[ -x $root/bin/busybox ]]; then
		mkdir -p "$root/busybox"
		mv "$root/bin/busybox" "$root/busybox/busybox"
		local applet
		for applet in $("$root/busybox/busybox" --list); do
			[[ -e $root/busybox/$applet ]] || ln -s busybox "$root/busybox/$applet"
		done
	fi
	rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/var/cache/apt" "$root/var/lib/apt" "$root/etc/apt"
	tar -C "$root" -c .
	rm -rf "$work"
}

# import_distroless TAG [debug]: the root filesystem as gcr.io/distroless/cc-debian12:TAG.
import_distroless() {
	local tag=$1 variant=${2:-} path=$BASE_PATH entrypoint=()
	[[ $variant == debug ]] && path+=:/busybox && entrypoint=(--change 'ENTRYPOINT ["/busybox/sh"]')
	distroless_root "$variant" | "$DOCKER" import --change "USER $NONROOT:$NONROOT" --change 'WORKDIR /home/nonroot' \
		--change "ENV PATH=$path" --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
		"${entrypoint[@]}" - "gcr.io/distroless/cc-debian12:$tag"
}

assemble_distroless() { import_distroless nonroot; }
assemble_distroless_debug() { import_distroless debug-nonroot debug; }
