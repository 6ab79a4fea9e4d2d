#!/usr/bin/env bash
# Installs the pinned ZooKeeper server (the release in zookeeper/VERSION) from Maven Central
# into a cache outside the clone, and prints the directory it lives in:
#
#   <home>/lib/*.jar         the server and its run-time dependencies (checksums verified)
#   <home>/conf/logback.xml  its logging configuration (on the classpath before lib/)
#
# Run it with `java -cp '<home>/conf:<home>/lib/*' org.apache.zookeeper.server.quorum.QuorumPeerMain`.
# The home is $TASKCLUSTER_ZOOKEEPER_HOME, else ${XDG_CACHE_HOME:-~/.cache}/taskcluster/zookeeper-<version>;
# runtime/src/localzk.rs finds it the same way. Idempotent: a complete install whose inputs
# (this folder's files) did not change is kept.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(tr -d '[:space:]' <"$here/VERSION")"
home="${TASKCLUSTER_ZOOKEEPER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/taskcluster/zookeeper-$version}"
key="$(cat "$here/VERSION" "$here/pom.xml" "$here/logback.xml" "$here/install.sh" | sha256sum | cut -c1-16)"

if [[ -f $home/.key && $(cat "$home/.key") == "$key" && -f $home/lib/zookeeper-$version.jar ]]; then
	echo "$home"
	exit 0
fi

command -v mvn >/dev/null 2>&1 || {
	echo "zookeeper/install.sh: Maven is missing: apt-get install -y maven (and a JRE: default-jre-headless)" >&2
	exit 1
}
echo "installing ZooKeeper $version from Maven Central into $home" >&2
mkdir -p "$(dirname "$home")"
staging="$(mktemp -d "$(dirname "$home")/.zookeeper-$version.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
# --strict-checksums: a jar whose checksum does not match fails the install.
if ! timeout 600 mvn --batch-mode --quiet --strict-checksums -f "$here/pom.xml" \
	-Dzookeeper.version="$version" -DincludeScope=runtime -DoutputDirectory="$staging/lib" \
	dependency:copy-dependencies >"$staging/mvn.log" 2>&1; then
	cat "$staging/mvn.log" >&2
	echo "zookeeper/install.sh: resolving ZooKeeper $version's jars failed (above)" >&2
	exit 1
fi
[[ -f $staging/lib/zookeeper-$version.jar ]] || {
	echo "zookeeper/install.sh: zookeeper-$version.jar is not among the resolved jars" >&2
	exit 1
}
rm "$staging/mvn.log"
install -D -m 0644 "$here/logback.xml" "$staging/conf/logback.xml"
echo "$key" >"$staging/.key"
chmod 0755 "$staging"
# The finished directory replaces the old one in one rename, so a reader never sees half.
rm -rf "$home.old"
[[ -e $home ]] && mv "$home" "$home.old"
mv "$staging" "$home"
rm -rf "$home.old"
trap - EXIT
echo "$home"
