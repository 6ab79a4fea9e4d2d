# shellcheck shell=bash
# Writes container images as archives without a Docker engine or a registry.
# Sourced by images/build.sh and e2e/cluster. Never run.
#
# An archive holds both an OCI image layout (index.json, oci-layout) and the Docker
# `manifest.json`, so `ctr images import`, `docker load` and `kind load image-archive`
# all accept it and name the image after its reference.

# oci_layer_from_dir DIR OUT_TAR
# Packs DIR into an uncompressed layer tarball with fixed timestamps and numeric
# owners, so the same input gives the same layer digest.
oci_layer_from_dir() {
	local dir=$1 out=$2
	tar --create --file "$out" --directory "$dir" --sort=name --format=gnu \
		--numeric-owner --mtime=@0 .
}

# The OCI name of the host's architecture, the one the images' binaries are built for.
oci_architecture() {
	case $(uname -m) in
	x86_64) echo amd64 ;;
	aarch64 | arm64) echo arm64 ;;
	*)
		echo "oci.sh: no OCI architecture name for $(uname -m)" >&2
		return 1
		;;
	esac
}

# oci_archive OUT REF CONFIG_JSON LAYER_TAR...
#   OUT          archive to write
#   REF          full reference, e.g. docker.io/taskcluster/node:0.1.0
#   CONFIG_JSON  the image's run configuration (User, Entrypoint, Env, ...) as JSON
#   LAYER_TAR    uncompressed layer tarballs, bottom first
oci_archive() {
	local out=$1 ref=$2 run_config=$3
	shift 3
	local work
	work=$(mktemp -d)
	mkdir -p "$work/blobs/sha256"

	local diff_ids=() layer_descs=() layer_paths=() layer
	for layer in "$@"; do
		local diff_id digest size
		diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
		gzip -n -6 -c "$layer" >"$work/layer.tmp"
		digest=$(sha256sum "$work/layer.tmp" | cut -d' ' -f1)
		size=$(stat -c %s "$work/layer.tmp")
		mv "$work/layer.tmp" "$work/blobs/sha256/$digest"
		diff_ids+=("\"sha256:$diff_id\"")
		layer_descs+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}")
		layer_paths+=("\"blobs/sha256/$digest\"")
	done

	local arch
	arch=$(oci_architecture)
	local IFS=,
	jq -cn --arg arch "$arch" --argjson config "$run_config" --argjson diff_ids "[${diff_ids[*]}]" '{
		architecture: $arch, os: "linux", created: "1970-01-01T00:00:00Z",
		config: $config,
		rootfs: {type: "layers", diff_ids: $diff_ids}
	}' >"$work/config.json"
	local config_digest config_size
	config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
	config_size=$(stat -c %s "$work/config.json")
	mv "$work/config.json" "$work/blobs/sha256/$config_digest"

	jq -cn --argjson layers "[${layer_descs[*]}]" \
		--arg cd "sha256:$config_digest" --argjson cs "$config_size" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
		layers: $layers
	}' >"$work/manifest.tmp"
	local manifest_digest manifest_size
	manifest_digest=$(sha256sum "$work/manifest.tmp" | cut -d' ' -f1)
	manifest_size=$(stat -c %s "$work/manifest.tmp")
	mv "$work/manifest.tmp" "$work/blobs/sha256/$manifest_digest"

	jq -cn --arg ref "$ref" --arg tag "${ref##*:}" \
		--arg md "sha256:$manifest_digest" --argjson ms "$manifest_size" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.index.v1+json",
		manifests: [{
			mediaType: "application/vnd.oci.image.manifest.v1+json",
			digest: $md, size: $ms,
			annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $tag}
		}]
	}' >"$work/index.json"
	echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
	# Docker's RepoTags use the short form (taskcluster/node:0.1.0).
	local short=${ref#docker.io/}
	short=${short#library/}
	jq -cn --arg tag "$short" --arg cfg "blobs/sha256/$config_digest" \
		--argjson layers "[${layer_paths[*]}]" \
		'[{Config: $cfg, RepoTags: [$tag], Layers: $layers}]' >"$work/manifest.json"

	mkdir -p "$(dirname "$out")"
	tar --create --file "$out.tmp" --directory "$work" --sort=name --numeric-owner \
		--owner=0 --group=0 --mtime=@0 oci-layout index.json manifest.json blobs
	mv "$out.tmp" "$out"
	rm -rf "$work"
}
