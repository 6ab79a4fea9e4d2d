#!/usr/bin/env bash
# Benchmarks of the runtime against a local ZooKeeper (the pinned release, fsync on), each
# ending with one JSON line: throughput and latency, SIGTERM failover, SIGKILL failover (with
# the worker's resident memory under load). Results go to docs/benchmarks.md by hand.
#
#   bash scripts/bench.sh [TASKS] [BACKLOG]
#
# With BACKLOG (e.g. 100000), a fourth part: BACKLOG tasks submitted with no master running,
# then a master and 4 workers started: the leader's rebuild time and the drain rate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tasks="${1:-20000}"
backlog="${2:-}"

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
zk_home=$(bash zookeeper/install.sh)
java -Xmx1g -cp "$zk_home/conf:$zk_home/lib/*" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/zk.log" 2>&1 &
zk=$!
pids=()
# Masters and workers stop first, while the server can still see them leave.
# (Each step may fail, e.g. with no masters started: the trap runs under errexit.)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; kill $zk 2>/dev/null || true; wait $zk 2>/dev/null || true; rm -rf "$dir"' EXIT
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

[ -n "$backlog" ] || exit 0
echo "== backlog: $backlog tasks submitted with no master, then 1 master and 4 workers" >&2
zkaddr="127.0.0.1:$port/backlog"
started=$(date +%s%N)
"$bin" submit --zk "$zkaddr" --count "$backlog" --inflight 512 >"$dir/ids"
submitted=$(date +%s%N)
"$bin" master --zk "$zkaddr" --id m1 --listen 127.0.0.1:0 --log-format json >"$dir/master.log" 2>&1 &
pids+=($!)
for i in 0 1 2 3; do
	"$bin" worker --zk "$zkaddr" --id "w$i" --handler echo --listen 127.0.0.1:0 >/dev/null 2>&1 &
	pids+=($!)
done
until "$bin" status --zk "$zkaddr" --json | grep -q "\"completed\":$backlog,"; do sleep 0.2; done
drained=$(date +%s%N)
rebuild_ms=$(grep -o '"elapsed_ms":[0-9]*' "$dir/master.log" | head -1 | cut -d: -f2)
python3 - "$backlog" "$started" "$submitted" "$drained" "$rebuild_ms" "$(awk '{n += length($0) + 4} END {print n}' "$dir/ids")" <<'PY'
import json, sys
n, started, submitted, drained, rebuild_ms, listing = (int(a) for a in sys.argv[1:])
submit_s, drain_s = (submitted - started) / 1e9, (drained - submitted) / 1e9
print(json.dumps({"backlog": n, "submit_s": round(submit_s, 2), "submit_per_s": round(n / submit_s),
                  "listing_bytes": listing, "rebuild_ms": rebuild_ms,
                  "drain_s": round(drain_s, 2), "drain_per_s": round(n / drain_s)}))
PY
