#!/usr/bin/env bash
# The operator's experience on this machine: a local single-node Kubernetes built from
# upstream components (e2e/cluster/local.sh; root, no Docker), the project's images on its
# node, the operator installed from charts/, examples/taskcluster.yaml applied, tasks
# submitted from a pod, the leader's pod deleted and the failover shown.
#
#   bash scripts/demo.sh operator          (runs this script)
#   bash scripts/operator-demo.sh down     stop the cluster and remove what it made
#
# The first run builds Kubernetes, etcd and CoreDNS from the Go module proxy (10-20 minutes
# on 2 cores; progress below), later runs reuse /var/cache/taskcluster-e2e. The cluster stays
# up afterwards for kubectl (the KUBECONFIG line is printed at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=e2e/cluster

step_number=0
step() {
	step_number=$((step_number + 1))
	printf '\n==> [%d] %s\n' "$step_number" "$*"
}
fail() {
	printf 'operator-demo: %s\n' "$*" >&2
	exit 1
}

if [[ ${1:-} == down ]]; then
	exec bash "$CLUSTER/local.sh" down
fi
[[ $# == 0 ]] || fail "usage: operator-demo.sh [down]"
[[ $(id -u) == 0 ]] || fail "the local cluster runs as root (containerd, kubelet); run this script as root"
# The e2e runs (e2e/cluster/ci.sh) use the same cluster: never both at once.
mkdir -p /run/lock
exec 9>/run/lock/taskcluster-e2e-ci.lock
flock -w 1200 9 || fail "an e2e run holds /run/lock/taskcluster-e2e-ci.lock"

step "Kubernetes from source, once (cached in /var/cache/taskcluster-e2e)"
bash "$CLUSTER/build.sh"

step "the release binaries and the node, operator and ZooKeeper images"
bash scripts/deps.sh
cargo build --release --locked -p taskcluster -p taskcluster-operator
bash images/build.sh node operator zookeeper

step "the local cluster (images imported onto its node; nothing is ever pulled)"
bash "$CLUSTER/local.sh" up
eval "$(bash "$CLUSTER/build.sh" paths)"
# shellcheck source=../e2e/cluster/lib/common.sh
. "$CLUSTER/lib/common.sh"
export KUBECONFIG=$KUBECONFIG_OUT
kubectl=("$KUBERNETES_BIN/kubectl")
helm=("$HELM_BIN/helm")

step "the operator, from charts/taskcluster-operator"
"${kubectl[@]}" apply --server-side --force-conflicts -f crds/taskcluster.yaml >/dev/null
# `kubectl wait` fails outright while the new CRD has no conditions yet: poll.
for _ in $(seq 1 120); do
	established=$("${kubectl[@]}" get crd taskclusters.taskcluster.dev \
		-o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null || true)
	[[ $established == True ]] && break
	sleep 0.5
done
[[ $established == True ]] || fail "the TaskCluster CRD did not become established"
"${helm[@]}" upgrade --install taskcluster-operator charts/taskcluster-operator \
	--namespace taskcluster-system --create-namespace --set image.pullPolicy=Never --wait --timeout 5m

step "kubectl apply -f examples/taskcluster.yaml"
"${kubectl[@]}" apply -f examples/taskcluster.yaml
started=$SECONDS
"${kubectl[@]}" wait --for=condition=Ready taskcluster/demo --timeout=10m
echo "Ready in $((SECONDS - started)) s"
"${kubectl[@]}" get taskclusters

# A client pod: labelled as the cluster's client (the NetworkPolicy admits it to ZooKeeper)
# and given the cluster's credentials from its Secret.
submit() {
	local job=$1
	shift
	local args="" arg
	for arg in "$@"; do args+="\"$arg\", "; done
	"${kubectl[@]}" delete job "$job" --ignore-not-found >/dev/null
	"${kubectl[@]}" apply -f - >/dev/null <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: $job, namespace: default}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {taskcluster.dev/client: demo}
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
        - name: submit
          image: $image
          imagePullPolicy: Never
          args: [submit, --zk, "demo-zookeeper.default.svc:2181", ${args%, }]
          env:
            - name: TASKCLUSTER_ZK_DIGEST
              valueFrom: {secretKeyRef: {name: demo-zookeeper-credentials, key: digest}}
EOF
}
image=$("${kubectl[@]}" get deployment demo-master -o jsonpath='{.spec.template.spec.containers[0].image}')

step "tasks submitted from a pod (a Job running taskcluster submit --wait)"
submit demo-hello --wait "hello world" "tasks come back reversed" "by the seed handler"
"${kubectl[@]}" wait --for=condition=Complete job/demo-hello --timeout=5m >/dev/null ||
	fail "the submit Job did not complete: $("${kubectl[@]}" logs job/demo-hello 2>&1 | tail -5)"
"${kubectl[@]}" logs job/demo-hello

step "the leader's pod deleted while 3,000 tasks flow"
submit demo-load --count 3000 --inflight 32 --wait
for _ in $(seq 1 240); do
	[[ $("${kubectl[@]}" get job demo-load -o jsonpath='{.status.ready}' 2>/dev/null) == 1 ]] && break
	sleep 0.5
done
leader=$("${kubectl[@]}" get taskcluster demo -o jsonpath='{.status.leader}')
[[ -n $leader ]] || fail "status.leader is empty"
echo "leader: $leader; deleting its pod"
"${kubectl[@]}" delete pod "$leader" --wait=false
deleted_ms=$(date +%s%3N)
new=$leader
for _ in $(seq 1 300); do
	new=$("${kubectl[@]}" get taskcluster demo -o jsonpath='{.status.leader}')
	[[ -n $new && $new != "$leader" ]] && break
	sleep 0.1
done
[[ $new != "$leader" && -n $new ]] || fail "no other master took over within 30 s"
echo "new leader: $new, seen in status $(($(date +%s%3N) - deleted_ms)) ms after the deletion"
"${kubectl[@]}" wait --for=condition=Complete job/demo-load --timeout=10m >/dev/null ||
	fail "the load Job did not complete: $("${kubectl[@]}" logs job/demo-load 2>&1 | tail -5)"
"${kubectl[@]}" logs job/demo-load | tail -2
"${kubectl[@]}" get taskclusters

cat <<EOF

The cluster stays up. Try:
    export KUBECONFIG=$KUBECONFIG
    export PATH=$KUBERNETES_BIN:\$PATH
    kubectl get taskclusters -w
    kubectl scale taskcluster demo --replicas=5
    kubectl delete pod \$(kubectl get taskcluster demo -o jsonpath='{.status.leader}')
Tear it down with:
    bash $REPO_ROOT/scripts/operator-demo.sh down
EOF
