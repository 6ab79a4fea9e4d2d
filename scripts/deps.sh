#!/usr/bin/env bash
# Installs what building and testing need and a fresh Debian machine lacks: a JRE and Maven,
# the pinned ZooKeeper server from Maven Central (zookeeper/install.sh; the tests, the demo
# and the benchmarks start their own servers from it) and the Python Kazoo client
# (interoperability tests). Idempotent; quiet when everything is present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
	echo "installing Debian packages: ${need_apt[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	timeout 600 apt-get update -qq
	timeout 900 apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

bash zookeeper/install.sh >/dev/null

if ! python3 -c 'import kazoo' >/dev/null 2>&1; then
	echo "installing the Python Kazoo client" >&2
	timeout 300 python3 -m pip install --quiet --disable-pip-version-check 'kazoo>=2.9,<3'
fi

command -v cargo >/dev/null 2>&1 || {
	echo "cargo is missing: install Rust (rustup) first" >&2
	exit 1
}
