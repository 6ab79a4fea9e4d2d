//! The NetworkPolicy around a TaskCluster's ZooKeeper, enforced by the cluster's policy
//! engine (kube-router on the local provider, docs/e2e.md): its client port admits the
//! cluster's own pods and its labelled clients, and no other pod. Without TASKCLUSTER_E2E
//! the test skips; with it, it fails loudly.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use taskcluster_e2e::error::KubeContext;
use taskcluster_e2e::jobs::{all_succeeded, node_image, submit_job};
use taskcluster_e2e::pods::pod_once_running;
use taskcluster_e2e::taskcluster::{self, wait_ready};
use taskcluster_e2e::wait::{self, Poll};
use taskcluster_e2e::{ensure, scenario, E2e, Error, Result};

/// The label the operator's NetworkPolicy admits to ZooKeeper's client port, with the
/// TaskCluster's name as its value (operator/src/build/labels.rs).
const CLIENT_LABEL: &str = "taskcluster.dev/client";
const CLIENT_PORT: u16 = 2181;
/// ZooKeeper's Prometheus port, which the policy leaves open to every pod.
const METRICS_PORT: u16 = 7000;
/// How long the engine may take to program a new pod into the policy's address sets.
const ENFORCEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Probe pods the policy must shut out: one without the client label, one labelled as a
/// client of another TaskCluster.
const OUTSIDERS: [&str; 2] = ["unlabelled", "other-client"];

/// A pod of the node image that only sleeps, for `kubectl exec` of BusyBox's `nc` from it.
async fn probe_pod(e2e: &E2e, namespace: &str, image: &str, name: &str, labels: &[(&str, &str)]) -> Result<()> {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "sleep 3600"],
            }],
        },
    }))
    .map_err(|err| Error::Invalid { context: format!("building pod {name}"), message: err.to_string() })?;
    Api::<Pod>::namespaced(e2e.client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .context(|| format!("creating pod {name}"))?;
    Ok(())
}

/// What a probe pod got for `request` sent to `address:port` through BusyBox's `nc` (3 s
/// timeout): the answer, or why nothing came (refused, timed out: the command's error).
async fn ask(e2e: &E2e, namespace: &str, pod: &str, address: &str, port: u16, request: &str) -> Result<String> {
    let script = format!("printf '{request}' | nc -w 3 {address} {port}");
    e2e.tools.kubectl(&["exec", "-n", namespace, pod, "--", "sh", "-c", &script]).await
}

/// ZooKeeper's four-letter `ruok` from a probe pod: true if the server answered `imok`.
async fn opens_client_port(e2e: &E2e, namespace: &str, pod: &str, address: &str) -> bool {
    matches!(ask(e2e, namespace, pod, address, CLIENT_PORT, "ruok").await, Ok(answer) if answer.contains("imok"))
}

// A TaskCluster's ZooKeeper under an enforcing policy engine: a pod without the client label,
// and one labelled as a client of another TaskCluster, cannot open its client port, by the
// Service or by a server's own address, though they read its metrics port (so their network
// works); a pod labelled as its client can; and the masters and workers keep working: tasks
// from a labelled client Job all succeed, and the outsiders are still shut out after them.
#[tokio::test]
async fn network_policy_admits_clients_of_zookeeper_and_shuts_out_other_pods() {
    scenario("network-policy", |e2e, ns| async move {
        let name = "fenced";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 2, 1, 1)).await?;
        wait_ready(&e2e, &ns, name).await?;
        let policy = e2e.tools.kubectl(&["get", "networkpolicy", "-n", &ns, &format!("{name}-zookeeper")]).await?;
        eprintln!("{policy}");

        let image = node_image(&e2e, &ns, name).await?;
        probe_pod(&e2e, &ns, &image, "unlabelled", &[]).await?;
        probe_pod(&e2e, &ns, &image, "other-client", &[(CLIENT_LABEL, "another-taskcluster")]).await?;
        probe_pod(&e2e, &ns, &image, "client", &[(CLIENT_LABEL, name)]).await?;
        for pod in ["unlabelled", "other-client", "client"] {
            pod_once_running(&e2e, &ns, pod).await?;
        }

        // The client Service (routed through kube-proxy's DNAT) and a server's own name (pod to
        // pod on the bridge): the policy must hold on both paths.
        let service = format!("{name}-zookeeper.{ns}.svc");
        let server = format!("{name}-zookeeper-0.{name}-zookeeper-headless.{ns}.svc");
        for address in [&service, &server] {
            wait::until(
                &format!("the labelled client to open {address}:{CLIENT_PORT}"),
                ENFORCEMENT_TIMEOUT,
                wait::POLL,
                || async {
                    Ok(if opens_client_port(&e2e, &ns, "client", address).await {
                        Poll::Done(())
                    } else {
                        Poll::NotYet(format!("{:?}", ask(&e2e, &ns, "client", address, CLIENT_PORT, "ruok").await))
                    })
                },
            )
            .await?;
        }
        shut_out(&e2e, &ns, &service, &server).await?;

        submit_job(&e2e, &ns, name, "client-job", &["--count", "100", "--inflight", "16", "--wait"]).await?;
        all_succeeded(
            &e2e,
            &ns,
            "client-job",
            100,
            Duration::from_secs(300),
            "of the labelled client under the policy",
        )
        .await?;
        wait_ready(&e2e, &ns, name).await?;
        shut_out(&e2e, &ns, &service, &server).await
    })
    .await;
}

/// Each outsider pod gets an answer from the server's metrics port (its network works, `nc`
/// runs) and, once the engine has programmed it (the first refusal, within the bound), never
/// opens the client port, neither through the client Service nor at the server's address.
async fn shut_out(e2e: &E2e, ns: &str, service: &str, server: &str) -> Result<()> {
    for pod in OUTSIDERS {
        let metrics = ask(e2e, ns, pod, server, METRICS_PORT, "GET /metrics HTTP/1.0\\r\\n\\r\\n").await;
        ensure(matches!(&metrics, Ok(answer) if answer.starts_with("HTTP/1.")), || {
            format!("pod {pod} got no answer from {server}:{METRICS_PORT}, which the policy leaves open: {metrics:?}")
        })?;
        for address in [service, server] {
            let first = wait::until(
                &format!("pod {pod} to be refused at {address}:{CLIENT_PORT}"),
                ENFORCEMENT_TIMEOUT,
                wait::POLL,
                || async {
                    Ok(match ask(e2e, ns, pod, address, CLIENT_PORT, "ruok").await {
                        Ok(answer) if answer.contains("imok") => Poll::NotYet(format!(
                            "an unlabelled pod opened ZooKeeper's client port: {pod} got {answer:?} from {address}:{CLIENT_PORT}"
                        )),
                        other => Poll::Done(other),
                    })
                },
            )
            .await?;
            for _ in 0..3 {
                ensure(!opens_client_port(e2e, ns, pod, address).await, || {
                    format!(
                        "an unlabelled pod opened ZooKeeper's client port: {pod} reached {address}:{CLIENT_PORT} after \
                         being refused ({first:?})"
                    )
                })?;
            }
        }
    }
    Ok(())
}
