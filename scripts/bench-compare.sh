#!/usr/bin/env bash
# Compares the throughput of two builds in alternating runs on one machine, each run against a
# fresh local ZooKeeper (the pinned release, fsync on): how a change is measured against the
# build before it while the machine's noise moves both alike.
#
#   bash scripts/bench-compare.sh OLD_BINARY NEW_BINARY [ROUNDS] [TASKS]
#
# Prints one JSON line per run ({"build": "old"|"new", ...the bench's JSON}); the ratio to raw
# creates is taken within each run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
old=$1 new=$2 rounds=${3:-3} tasks=${4:-20000}
zk_home=$(bash zookeeper/install.sh)

run() {
	local build=$1 bin=$2 dir port zk
	dir=$(mktemp -d /tmp/taskcluster-compare-zk.XXXXXX)
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	printf 'tickTime=100\ninitLimit=100\nsyncLimit=50\ndataDir=%s/data\nclientPort=%s\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=ruok\n' \
		"$dir" "$port" >"$dir/zoo.cfg"
	mkdir -p "$dir/data"
	java -Xmx1g -cp "$zk_home/conf:$zk_home/lib/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/zk.log" 2>&1 &
	zk=$!
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port" && echo ruok >&3 && grep -q imok <&3) 2>/dev/null; then break; fi
		sleep 0.2
	done
	local line
	line=$(timeout 600 "$bin" bench --zk "127.0.0.1:$port" --masters 1 --workers 8 --clients 2 --inflight 16 --tasks "$tasks" 2>/dev/null | tail -n 1)
	kill "$zk" 2>/dev/null || true
	wait "$zk" 2>/dev/null || true
	rm -rf "$dir"
	echo "{\"build\":\"$build\",${line#\{}"
}

for _ in $(seq "$rounds"); do
	run old "$old"
	run new "$new"
done
