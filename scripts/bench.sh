#!/usr/bin/env bash
# Benchmarks of the runtime against a local ZooKeeper (Debian's package, fsync on), each
# ending with one JSON line: throughput and latency, SIGTERM failover, SIGKILL failover (with
# the worker's resident memory under load). Results go to docs/benchmarks.md by hand.
#
#   bash scripts/bench.sh [TASKS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tasks="${1:-20000}"

bash scripts/deps.sh
cargo build --release --locked -p taskcluster
bin=./target/release/taskcluster

dir=$(mktemp -d /tmp/taskcluster-bench-zk.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# tickTime bounds how late a session expires (expiry is checked once per tick): 100 ms here.
cat >"$dir/zoo.cfg" <<CFG
tickTime=100
minSessionTimeout=200
maxSessionTimeout=60000
initLimit=100
syncLimit=50
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok
CFG
mkdir -p "$dir/data"
java -Xmx1g -cp /usr/share/java/zookeeper.jar org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/zk.log" 2>&1 &
zk=$!
trap 'kill $zk 2>/dev/null; wait $zk 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port" && echo ruok >&3 && grep -q imok <&3) 2>/dev/null; then break; fi
	sleep 0.2
done

echo "== throughput: 1 master, 8 workers, 2 clients x 16 in flight, $tasks trivial tasks" >&2
"$bin" bench --zk "127.0.0.1:$port" --masters 1 --workers 8 --clients 2 --inflight 16 --tasks "$tasks"
echo "== failover on SIGTERM" >&2
"$bin" bench --zk "127.0.0.1:$port" --workers 8 --inflight 16 --failover term --rounds 5
echo "== failover on SIGKILL (session timeout 2 s)" >&2
"$bin" bench --zk "127.0.0.1:$port" --workers 8 --inflight 16 --failover kill --rounds 3 --session-timeout 2s
