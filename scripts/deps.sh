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

# The Python the Kazoo tests run: $TASKCLUSTER_PYTHON, else the venv below if there is one,
# else python3 (runtime/tests/support/python.rs looks the same way).
venv="${XDG_CACHE_HOME:-$HOME/.cache}/taskcluster/kazoo-venv"
python="${TASKCLUSTER_PYTHON:-python3}"
[ -z "${TASKCLUSTER_PYTHON:-}" ] && [ -x "$venv/bin/python" ] && python="$venv/bin/python"
if ! "$python" -c 'import kazoo' >/dev/null 2>&1; then
	echo "installing the Python Kazoo client" >&2
	# A Python whose packages belong to Debian (PEP 668) refuses pip: use a venv of our own.
	if ! timeout 300 "$python" -m pip install --quiet --disable-pip-version-check 'kazoo>=2.9,<3' 2>/dev/null; then
		[ -z "${TASKCLUSTER_PYTHON:-}" ] || { echo "pip cannot install Kazoo into $python" >&2; exit 1; }
		echo "pip refused to install into $python; creating $venv" >&2
		if ! python3 -m venv "$venv" >/dev/null 2>&1; then
			export DEBIAN_FRONTEND=noninteractive
			timeout 600 apt-get update -qq
			timeout 900 apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
			rm -rf "$venv"
			python3 -m venv "$venv"
		fi
		python="$venv/bin/python"
		timeout 300 "$python" -m pip install --quiet --disable-pip-version-check 'kazoo>=2.9,<3'
	fi
	"$python" -c 'import kazoo' || { echo "the Kazoo client is still missing from $python" >&2; exit 1; }
fi

command -v cargo >/dev/null 2>&1 || {
	echo "cargo is missing: install Rust (rustup) first" >&2
	exit 1
}
