#!/usr/bin/env bash
# Operator benchmark against a real API server without nodes: etcd, kube-apiserver and
# kube-controller-manager (Deployments, StatefulSets, garbage collection), the operator
# running under the chart's ClusterRole, N TaskClusters. Pods stay Pending (no kubelet),
# which is all the operator's own costs need. Prints:
#   - operator resident memory with N TaskClusters,
#   - API writes during a quiet window (expected 0) and the reconcile latency p99 there,
#   - delay from `kubectl scale` to the operator's patch of the worker Deployment (0→50).
#
#   operator/bench/control-plane.sh [N]       (default 100)
#
# Uses the Kubernetes, etcd and Helm binaries e2e/cluster/build.sh caches, and the operator's
# release build (`cargo build --release -p taskcluster-operator`).
set -euo pipefail

N=${1:-100}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TASKCLUSTER_E2E_CACHE:-/var/cache/taskcluster-e2e}
KUBE_BIN=${KUBE_BIN:-$(ls -d "$CACHE"/bin/kubernetes-*/ 2>/dev/null | head -1)}
ETCD=${ETCD:-$(ls "$CACHE"/bin/etcd-*/etcd 2>/dev/null | head -1)}
HELM=${HELM:-$(ls "$CACHE"/bin/helm-*/helm 2>/dev/null | head -1)}
OPERATOR=${OPERATOR:-${CARGO_TARGET_DIR:-$REPO/target}/release/taskcluster-operator}
WORK=$(mktemp -d /tmp/taskcluster-operator-bench.XXXXXX)
ETCD_PORT=23799 API_PORT=16443 METRICS=127.0.0.1:18977

[[ -x ${KUBE_BIN}kube-apiserver ]] || { echo "no kube-apiserver under $CACHE/bin: run e2e/cluster/build.sh" >&2; exit 1; }
[[ -x $ETCD ]] || { echo "no etcd under $CACHE/bin: run e2e/cluster/build.sh" >&2; exit 1; }
[[ -x $OPERATOR ]] || { echo "no operator at $OPERATOR: cargo build --release -p taskcluster-operator" >&2; exit 1; }

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
"${KUBE_BIN}kube-controller-manager" --kubeconfig admin.kubeconfig --service-account-private-key-file sa.key \
	--root-ca-file ca.crt --leader-elect=false --secure-port 0 >kcm.log 2>&1 &
PIDS+=($!)

# The operator runs with exactly the chart's permissions.
K apply -f "$REPO/crds/taskcluster.yaml" >/dev/null
K wait --for condition=established crd/taskclusters.taskcluster.dev >/dev/null
K create namespace taskcluster-system >/dev/null
K -n taskcluster-system create serviceaccount taskcluster-operator >/dev/null
"$HELM" template taskcluster-operator "$REPO/charts/taskcluster-operator" --namespace taskcluster-system \
	--show-only templates/rbac.yaml | K apply -f - >/dev/null
kubeconfig operator "$(K -n taskcluster-system create token taskcluster-operator --duration 2h)" > operator.kubeconfig
KUBECONFIG=$WORK/operator.kubeconfig POD_NAMESPACE=taskcluster-system LISTEN=$METRICS MALLOC_ARENA_MAX=2 \
	RUST_LOG=info "$OPERATOR" >operator.log 2>&1 &
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

t0=$(date +%s.%N)
K -n bench scale taskcluster tc-001 --replicas=50 >/dev/null
for _ in $(seq 100); do grep -q 'scaled workers from 2 to 50' operator.log && break; sleep 0.05; done
patched=$(sed 's/\x1b\[[0-9;]*m//g' operator.log | grep 'scaled workers from 2 to 50' | head -1 | cut -d' ' -f1)
python3 -c "
from datetime import datetime, timezone
t = datetime.strptime('$patched'[:26], '%Y-%m-%dT%H:%M:%S.%f').replace(tzinfo=timezone.utc).timestamp()
print('kubectl scale 2 -> 50 to worker Deployment patched: %.0f ms (kubectl start-up included)' % ((t - $t0) * 1000))"
