#!/usr/bin/env bash
# Installs what building and testing need and a fresh Debian machine lacks: Debian's ZooKeeper
# server (the tests and the demo start their own servers from it) and the Python Kazoo client
# (interoperability tests). Idempotent; quiet when everything is present.
set -euo pipefail

need_apt=()
[ -f /usr/share/java/zookeeper.jar ] || need_apt+=(zookeeper)
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
	echo "installing Debian packages: ${need_apt[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import kazoo' >/dev/null 2>&1; then
	echo "installing the Python Kazoo client" >&2
	python3 -m pip install --quiet --disable-pip-version-check 'kazoo>=2.9,<3'
fi

command -v cargo >/dev/null 2>&1 || {
	echo "cargo is missing: install Rust (rustup) first" >&2
	exit 1
}
