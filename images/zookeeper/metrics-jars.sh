#!/usr/bin/env bash
# Resolves the ZooKeeper image's Prometheus exporter (metrics-pom.xml beside this script) from
# Maven Central into OUT, checksums verified: ZooKeeper's PrometheusMetricsProvider, the
# Prometheus client and the Jetty release of the pinned server (zookeeper/VERSION).
#
#   images/zookeeper/metrics-jars.sh OUT SERVER_LIB
#
# SERVER_LIB holds the server's jars (zookeeper/install.sh's <home>/lib): an artifact found in
# both would put two versions of one library on the classpath, so it fails the resolution.
# Used by images/build.sh and images/zookeeper/Dockerfile.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(tr -d '[:space:]' <"$here/../../zookeeper/VERSION")"
out=${1:?usage: metrics-jars.sh OUT SERVER_LIB}
server_lib=${2:?usage: metrics-jars.sh OUT SERVER_LIB}

fail() {
	echo "images/zookeeper/metrics-jars.sh: $*" >&2
	exit 1
}

command -v mvn >/dev/null 2>&1 || fail "Maven is missing: apt-get install -y maven"
[[ -f $server_lib/zookeeper-$version.jar ]] || fail "$server_lib has no zookeeper-$version.jar; run zookeeper/install.sh"
mkdir -p "$out"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! timeout 600 mvn --batch-mode --quiet --strict-checksums -f "$here/metrics-pom.xml" \
	-Dzookeeper.version="$version" -DincludeScope=runtime -DoutputDirectory="$out" \
	dependency:copy-dependencies >"$log" 2>&1; then
	cat "$log" >&2
	fail "resolving the Prometheus exporter's jars failed (above)"
fi
compgen -G "$out/zookeeper-prometheus-metrics-*.jar" >/dev/null ||
	fail "zookeeper-prometheus-metrics is not among the resolved jars"

# An artifact's name is its file name up to the version (the first -<digit>).
artifact() {
	local name=${1##*/}
	echo "${name%%-[0-9]*}"
}
declare -A server=()
for jar in "$server_lib"/*.jar; do
	server[$(artifact "$jar")]=${jar##*/}
done
for jar in "$out"/*.jar; do
	name=$(artifact "$jar")
	[[ -z ${server[$name]:-} ]] || fail "${jar##*/} duplicates the server's ${server[$name]}"
done
