#!/usr/bin/env bash
# Operator benchmark against a real API server without nodes: etcd, kube-apiserver and
# kube-controller-manager (Deployments, ReplicaSets, garbage collection), the operator
# running under the chart's ClusterRole, N TaskClusters. Pods stay Pending (no kubelet).
# Then their ZooKeeper answers: the bench plays the StatefulSet controller (it marks every
# ensemble ready; that controller is not run) and starts one real ZooKeeper server (the
# pinned release) on 127.0.0.1:2181, the operator resolving every cluster's client Service
# name to it (a hosts file bind-mounted in the operator's own mount namespace, so as root),
# with a real master, a worker and a client moving the counters there. Prints:
#   - operator resident memory with N TaskClusters,
#   - API writes during a quiet window (expected 0) and the reconcile latency p99 there,
#   - with ZooKeeper answering and counters moving: API writes per cluster per 15 s (target
#     at most 1), reconciles per second, ZooKeeper sessions opened per minute (target 0 once
#     each cluster has one), resident memory (target 32 MiB); then writes once the counters
#     stop (expected 0),
#   - delay from `kubectl scale` to the operator's patch of the worker Deployment (0→50).
#
#   operator/bench/control-plane.sh [N]       (default 100)
#
# Uses the Kubernetes, etcd and Helm binaries e2e/cluster/build.sh caches, the ZooKeeper
# release `zookeeper/install.sh` installs, and the release builds of the operator and of
# `taskcluster` (`cargo build --release -p taskcluster-operator -p taskcluster`).
set -euo pipefail

N=${1:-100}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TASKCLUSTER_E2E_CACHE:-/var/cache/taskcluster-e2e}
KUBE_BIN=${KUBE_BIN:-$(ls -d "$CACHE"/bin/kubernetes-*/ 2>/dev/null | head -1)}
ETCD=${ETCD:-$(ls "$CACHE"/bin/etcd-*/etcd 2>/dev/null | head -1)}
HELM=${HELM:-$(ls "$CACHE"/bin/helm-*/helm 2>/dev/null | head -1)}
OPERATOR=${OPERATOR:-${CARGO_TARGET_DIR:-$REPO/target}/release/taskcluster-operator}
NODE=${NODE:-${CARGO_TARGET_DIR:-$REPO/target}/release/taskcluster}
ZK_VERSION=$(tr -d '[:space:]' <"$REPO/zookeeper/VERSION")
ZK_HOME=${TASKCLUSTER_ZOOKEEPER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/taskcluster/zookeeper-$ZK_VERSION}
WORK=$(mktemp -d /tmp/taskcluster-operator-bench.XXXXXX)
ETCD_PORT=23799 API_PORT=16443 METRICS=127.0.0.1:18977
# The operator reaches every cluster's ZooKeeper on the client port; the bench's server takes it.
ZK_PORT=2181

[[ -x ${KUBE_BIN}kube-apiserver ]] || { echo "no kube-apiserver under $CACHE/bin: run e2e/cluster/build.sh" >&2; exit 1; }
[[ -x $ETCD ]] || { echo "no etcd under $CACHE/bin: run e2e/cluster/build.sh" >&2; exit 1; }
[[ -x $OPERATOR ]] || { echo "no operator at $OPERATOR: cargo build --release -p taskcluster-operator" >&2; exit 1; }
[[ -x $NODE ]] || { echo "no taskcluster at $NODE: cargo build --release -p taskcluster" >&2; exit 1; }
[[ -f $ZK_HOME/lib/zookeeper-$ZK_VERSION.jar ]] || { echo "no ZooKeeper in $ZK_HOME: bash zookeeper/install.sh" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "run as root: the operator gets a hosts file of its own (a mount namespace)" >&2; exit 1; }
if (: <"/dev/tcp/127.0.0.1/$ZK_PORT") 2>/dev/null; then
	echo "127.0.0.1:$ZK_PORT is taken; the bench's ZooKeeper needs it" >&2
	exit 1
fi

PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
K() { "${KUBE_BIN}kubectl" --kubeconfig "$WORK/admin.kubeconfig" "$@"; }
kubeconfig() { # user token
	cat <<EOK
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}}]
users: [{name: $1, user: {token: $2}}]
contexts: [{name: bench, context: {cluster: bench, user: $1}}]
current-context: bench
EOK
}
metric() { curl -s "http://$METRICS/metrics" | awk -v m="$1" '$1 ~ m {s += $2} END {print s + 0}'; }

cd "$WORK"
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=bench 2>/dev/null
echo "admintoken,admin,admin,system:masters" > tokens.csv
kubeconfig admin admintoken > admin.kubeconfig

"$ETCD" --data-dir etcd --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls http://127.0.0.1:23800 >etcd.log 2>&1 &
PIDS+=($!)
"${KUBE_BIN}kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --secure-port "$API_PORT" \
	--bind-address 127.0.0.1 --cert-dir certs --token-auth-file tokens.csv --authorization-mode RBAC \
	--service-account-issuer https://kubernetes.default.svc --service-account-key-file sa.pub \
	--service-account-signing-key-file sa.key --service-cluster-ip-range 10.197.0.0/16 \
	--client-ca-file ca.crt >apiserver.log 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do K get --raw /readyz >/dev/null 2>&1 && break; sleep 1; done
# Without the StatefulSet controller: the bench writes the ensembles' status itself.
"${KUBE_BIN}kube-controller-manager" --kubeconfig admin.kubeconfig --service-account-private-key-file sa.key \
	--root-ca-file ca.crt --leader-elect=false --secure-port 0 --controllers='*,-statefulset' >kcm.log 2>&1 &
PIDS+=($!)

# The operator runs with exactly the chart's permissions.
K apply -f "$REPO/crds/taskcluster.yaml" >/dev/null
K wait --for condition=established crd/taskclusters.taskcluster.dev >/dev/null
K create namespace taskcluster-system >/dev/null
K -n taskcluster-system create serviceaccount taskcluster-operator >/dev/null
"$HELM" template taskcluster-operator "$REPO/charts/taskcluster-operator" --namespace taskcluster-system \
	--show-only templates/rbac.yaml | K apply -f - >/dev/null
kubeconfig operator "$(K -n taskcluster-system create token taskcluster-operator --duration 2h)" > operator.kubeconfig
# Every cluster's client Service name resolves to the bench's ZooKeeper, for the operator only.
cp /etc/hosts hosts
for i in $(seq -w 1 "$N"); do echo "127.0.0.1 tc-$i-zookeeper.bench.svc.cluster.local"; done >>hosts
KUBECONFIG=$WORK/operator.kubeconfig POD_NAMESPACE=taskcluster-system LISTEN=$METRICS MALLOC_ARENA_MAX=2 \
	RUST_LOG=info unshare --mount --propagation private \
	sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$WORK/hosts" "$OPERATOR" >operator.log 2>&1 &
OPERATOR_PID=$!
PIDS+=($OPERATOR_PID)
for _ in $(seq 30); do curl -sf "http://$METRICS/readyz" >/dev/null && break; sleep 1; done

K create namespace bench >/dev/null
for i in $(seq -w 1 "$N"); do
	printf -- '---\napiVersion: taskcluster.dev/v1alpha1\nkind: TaskCluster\nmetadata: {name: tc-%s, namespace: bench}\nspec: {workers: 2, zookeeper: {storage: {ephemeral: true}}}\n' "$i"
done | K apply -f - >/dev/null
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo); $N TaskClusters"
for _ in $(seq 120); do
	[[ $(K get deployments -n bench --no-headers 2>/dev/null | wc -l) -ge $((2 * N)) ]] && break
	sleep 1
done
# Settled: Deployment and StatefulSet status (pods Pending) stop moving, and with them ours.
settle_start=$SECONDS
last=-1
while ((SECONDS - settle_start < 300)); do
	now=$(metric '^taskcluster_operator_api_writes_total')
	[[ $now == "$last" ]] && break
	last=$now
	sleep 15
done
echo "settled after $((SECONDS - settle_start)) s"

buckets() { curl -s "http://$METRICS/metrics" | grep '^taskcluster_operator_reconcile_duration_seconds_bucket'; }
writes0=$(metric '^taskcluster_operator_api_writes_total'); before=$(buckets)
sleep 30
writes1=$(metric '^taskcluster_operator_api_writes_total'); after=$(buckets)
echo "resident memory: $(($(awk '/VmRSS/ {print $2}' /proc/$OPERATOR_PID/status) / 1024)) MiB"
echo "writes in a 30 s quiet window: $((writes1 - writes0))"
[[ $((writes1 - writes0)) == 0 ]] || curl -s "http://$METRICS/metrics" | grep '^taskcluster_operator_api_writes_total' 
paste <(echo "$before") <(echo "$after") | awk '
	{ split($1, a, "\""); le = a[2]; n = $4 - $2; les[++k] = le; cnt[k] = n; total = n }
	END { for (i = 1; i <= k; i++) if (cnt[i] >= 0.99 * total) { printf "reconciles in the window: %d, p99 <= %s s\n", total, les[i]; exit } }'

# --- ZooKeeper answers, and its counters move -------------------------------------------
cat >zoo.cfg <<EOZ
tickTime=2000
dataDir=$WORK/zk
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=0
EOZ
java -Xmx512m -cp "$ZK_HOME/conf:$ZK_HOME/lib/*" org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg >zk.log 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do (: <"/dev/tcp/127.0.0.1/$ZK_PORT") 2>/dev/null && break; sleep 1; done
ZK=127.0.0.1:$ZK_PORT
"$NODE" master --zk "$ZK" --id bench-master >master.log 2>&1 &
PIDS+=($!)
"$NODE" worker --zk "$ZK" --id bench-worker --exec 'sleep 0.2' >worker.log 2>&1 &
PIDS+=($!)
# With --wait, at most 2 tasks are unanswered: once the client stops, the counters stop.
"$NODE" submit --zk "$ZK" --count 1000000 --inflight 2 --wait >submit.log 2>&1 &
SUBMIT_PID=$!
PIDS+=($SUBMIT_PID)
# The StatefulSet controller's part: every ensemble ready.
for i in $(seq -w 1 "$N"); do
	replicas=$(K -n bench get statefulset "tc-$i-zookeeper" -o jsonpath='{.spec.replicas}')
	K -n bench patch statefulset "tc-$i-zookeeper" --subresource=status --type=merge -p \
		"{\"status\": {\"replicas\": $replicas, \"readyReplicas\": $replicas, \"availableReplicas\": $replicas, \"currentReplicas\": $replicas, \"updatedReplicas\": $replicas}}" >/dev/null
done
leading() { K -n bench get taskclusters -o jsonpath='{range .items[*]}{.status.leader}{"\n"}{end}' | grep -c '^bench-master$' || true; }
for _ in $(seq 120); do [[ $(leading) -ge $N ]] && break; sleep 1; done
echo "with ZooKeeper answering: $(leading) of $N TaskClusters show the leader"
sleep 20
sample() { # writes reconciles sessions-opened
	echo "$(metric '^taskcluster_operator_api_writes_total') $(metric '^taskcluster_operator_reconciliations_total') $(metric '^taskcluster_operator_zookeeper_sessions_opened_total')"
}
read -r w0 r0 s0 < <(sample)
status0=$(metric 'writes_total.kind="TaskCluster/status"')
sleep 60
read -r w1 r1 s1 < <(sample)
status1=$(metric 'writes_total.kind="TaskCluster/status"')
completed=$("$NODE" status --zk "$ZK" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["completed"])')
python3 -c "
n, w, st, r, s = $N, $w1 - $w0, $status1 - $status0, $r1 - $r0, $s1 - $s0
print('counters moving (60 s, %s tasks completed so far): %d API writes (%d status) = %.2f per cluster per 15 s; %.1f reconciles/s; %d ZooKeeper sessions opened' % ('$completed', w, st, w / n / 4, r / 60, s))"
echo "resident memory with ZooKeeper answering: $(($(awk '/VmRSS/ {print $2}' /proc/$OPERATOR_PID/status) / 1024)) MiB"
kill "$SUBMIT_PID" 2>/dev/null || true
# The last tasks finish, the leader publishes, the operator writes that once (counters period).
sleep 25
writes0=$(metric '^taskcluster_operator_api_writes_total')
K -n bench get taskcluster tc-001 -o json >status0.json
sleep 30
writes1=$(metric '^taskcluster_operator_api_writes_total')
K -n bench get taskcluster tc-001 -o json >status1.json
echo "writes in a 30 s window once the counters stopped: $((writes1 - writes0))"
if [[ $writes1 != "$writes0" ]]; then # what still moves, on one cluster
	curl -s "http://$METRICS/metrics" | grep '^taskcluster_operator_api_writes_total'
	python3 -c '
import json, sys
a, b = (json.load(open(f))["status"] for f in sys.argv[1:])
for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k): print("  status.%s: %s -> %s" % (k, json.dumps(a.get(k)), json.dumps(b.get(k))))' status0.json status1.json
fi

t0=$(date +%s.%N)
K -n bench scale taskcluster tc-001 --replicas=50 >/dev/null
for _ in $(seq 100); do grep -q 'scaled workers from 2 to 50' operator.log && break; sleep 0.05; done
patched=$(sed 's/\x1b\[[0-9;]*m//g' operator.log | grep 'scaled workers from 2 to 50' | head -1 | cut -d' ' -f1)
python3 -c "
from datetime import datetime, timezone
t = datetime.strptime('$patched'[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=timezone.utc).timestamp()
print('kubectl scale 2 -> 50 to worker Deployment patched: %.0f ms (kubectl start-up included)' % ((t - $t0) * 1000))"
