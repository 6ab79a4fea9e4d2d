//! Scenarios of the operator on a real cluster (docs/e2e.md). Each runs in a namespace
//! of its own and checks invariants of the objects and of the status, not just that
//! nothing failed. Without TASKCLUSTER_E2E they skip; with it they fail loudly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{json, Value};
use taskcluster_e2e::env::UPGRADE_FROM_VAR;
use taskcluster_e2e::error::KubeContext;
use taskcluster_e2e::jobs::{
    all_succeeded, job_logs, job_outcome, job_status, job_succeeded, outcome, running, submit_job, wait_running,
};
use taskcluster_e2e::pods::{pod_once_running, running_pod};
use taskcluster_e2e::taskcluster::{
    self, component_selector, condition, get, leader, status, status_i64, summary, wait_ready, READY_TIMEOUT,
};
use taskcluster_e2e::wait::{self, Poll, POLL};
use taskcluster_e2e::{ensure, scenario, E2e, Error, Result};

fn failover_bound() -> Duration {
    let seconds = std::env::var("TASKCLUSTER_E2E_FAILOVER_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    Duration::from_secs(seconds)
}

/// examples/taskcluster.yaml in `namespace`, with ephemeral ZooKeeper storage on
/// clusters without a storage provisioner.
fn example_manifest(e2e: &E2e, namespace: &str) -> Result<(String, String)> {
    let path = e2e.repo_root.join("examples/taskcluster.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| Error::Invalid { context: format!("reading {}", path.display()), message: err.to_string() })?;
    let mut object: Value = serde_yaml::from_str(&text)
        .map_err(|err| Error::Invalid { context: format!("parsing {}", path.display()), message: err.to_string() })?;
    object["metadata"]["namespace"] = json!(namespace);
    if e2e.ephemeral_storage {
        object["spec"]["zookeeper"]["storage"] = json!({"ephemeral": true});
    }
    let name = object["metadata"]["name"].as_str().unwrap_or("demo").to_string();
    let yaml = serde_yaml::to_string(&object)
        .map_err(|err| Error::Invalid { context: "rendering the example".into(), message: err.to_string() })?;
    Ok((name, yaml))
}

/// Names of the pods of `selector` that are Ready and not being deleted, as the kubelet
/// reports them now (the TaskCluster's status counts them a reconcile later).
async fn ready_pod_names(e2e: &E2e, namespace: &str, selector: &str) -> Result<Vec<String>> {
    let ready = |pod: &Pod| {
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    Ok(pods(e2e, namespace, selector)
        .await?
        .iter()
        .filter(|p| ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect())
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

async fn pods(e2e: &E2e, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
    let list = Api::<Pod>::namespaced(e2e.client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .context(|| format!("listing pods {selector}"))?;
    Ok(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

/// Waits until the ensemble's PodDisruptionBudget, with every server healthy, lets exactly
/// one be evicted: at every size, so a node drain neither hangs on a single server nor takes
/// two of five at once.
async fn one_eviction_allowed(e2e: &E2e, namespace: &str, name: &str) -> Result<()> {
    let api = Api::<PodDisruptionBudget>::namespaced(e2e.client.clone(), namespace);
    let budget = format!("{name}-zookeeper");
    wait::until("the ZooKeeper disruption budget to allow one eviction", READY_TIMEOUT, POLL, || async {
        let pdb = api.get(&budget).await.context(|| format!("reading PodDisruptionBudget {budget}"))?;
        let max_unavailable = pdb.spec.and_then(|s| s.max_unavailable);
        let s = pdb.status.unwrap_or_default();
        let settled = s.expected_pods > 0 && s.current_healthy == s.expected_pods;
        Ok(if settled && s.disruptions_allowed == 1 {
            Poll::Done(())
        } else {
            Poll::NotYet(format!(
                "maxUnavailable {max_unavailable:?}: {} of {} servers healthy, {} evictions allowed",
                s.current_healthy, s.expected_pods, s.disruptions_allowed
            ))
        })
    })
    .await
}

/// `kubectl patch --type=merge` of a TaskCluster's spec.
async fn patch_spec(e2e: &E2e, namespace: &str, name: &str, spec: Value) -> Result<()> {
    let patch = json!({ "spec": spec }).to_string();
    e2e.tools
        .kubectl(&["patch", "-n", namespace, &format!("taskcluster/{name}"), "--type=merge", "-p", &patch])
        .await?;
    Ok(())
}

// Scenario 1: the example becomes Ready, `kubectl get taskclusters` shows the printer
// columns, and status.leader names a running master pod.
#[tokio::test]
async fn example_becomes_ready_and_its_leader_is_a_running_master() {
    scenario("example", |e2e, ns| async move {
        let (name, manifest) = example_manifest(&e2e, &ns)?;
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &manifest).await?;
        let object = wait_ready(&e2e, &ns, &name).await?;

        let table = e2e.tools.kubectl(&["get", "taskclusters", "-n", &ns]).await?;
        let mut lines = table.lines();
        let header = lines.next().unwrap_or_default();
        for column in ["NAME", "MASTERS", "WORKERS", "READY", "LEADER"] {
            ensure(header.split_whitespace().any(|c| c == column), || {
                format!("`kubectl get taskclusters` has no {column} column:\n{table}")
            })?;
        }
        let leader_name = leader(&object).unwrap_or_default();
        let row = lines.find(|l| l.split_whitespace().next() == Some(name.as_str())).unwrap_or_default();
        ensure(row.contains("True") && row.contains(&leader_name), || {
            format!("the row of {name} does not show Ready=True and leader {leader_name}:\n{table}")
        })?;

        let pod = running_pod(&e2e, &ns, &leader_name).await?;
        ensure(label(&pod, "app.kubernetes.io/component") == Some("master"), || {
            format!("leader {leader_name} is not a master pod: labels {:?}", pod.metadata.labels)
        })?;
        ensure(label(&pod, "app.kubernetes.io/instance") == Some(name.as_str()), || {
            format!("leader {leader_name} belongs to another TaskCluster: labels {:?}", pod.metadata.labels)
        })?;

        // Each ZooKeeper server's own Prometheus metrics, read from another pod through the
        // headless Service's stable name. Ready needs a quorum only, so a server may still be
        // joining: it serves znode_count once it has the data tree.
        let servers = object.data["spec"]["zookeeper"]["replicas"].as_i64().unwrap_or(3);
        for ordinal in 0..servers {
            let url = format!("http://{name}-zookeeper-{ordinal}.{name}-zookeeper-headless.{ns}.svc:7000/metrics");
            let what = format!("{url} to serve znode_count");
            wait::until(&what, READY_TIMEOUT, POLL, || async {
                let fetched =
                    e2e.tools.kubectl(&["exec", "-n", &ns, &leader_name, "--", "wget", "-q", "-O", "-", &url]).await;
                Ok(match fetched {
                    Ok(metrics) if metrics.lines().any(|l| l.starts_with("znode_count ")) => Poll::Done(()),
                    Ok(metrics) => Poll::NotYet(metrics.lines().take(20).collect::<Vec<_>>().join("\n")),
                    Err(e) => Poll::NotYet(e.to_string()),
                })
            })
            .await?;
        }
        Ok(())
    })
    .await;
}

// Scenario 2: 1,000 tasks from a Job all come back; the backlog rises and drains to 0. The
// workers come only once the status shows every task queued: the counters are written at most
// every 15 s, and 1,000 tasks of the built-in handler can all be done in less.
#[tokio::test]
async fn thousand_tasks_all_complete_and_the_backlog_drains() {
    scenario("thousand-tasks", |e2e, ns| async move {
        let name = "load";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 2, 0, 1)).await?;
        let before = status_i64(&wait_ready(&e2e, &ns, name).await?, "completed");

        submit_job(&e2e, &ns, name, "submit", &["--count", "1000", "--inflight", "1000", "--wait"]).await?;
        wait::until("status.backlog to show 1,000 queued tasks", READY_TIMEOUT, POLL, || async {
            let object = get(&e2e, &ns, name).await?;
            Ok(match status_i64(&object, "backlog") {
                1000 => Poll::Done(()),
                _ => Poll::NotYet(summary(&object)),
            })
        })
        .await?;
        patch_spec(&e2e, &ns, name, json!({"workers": 3})).await?;
        let succeeded = job_succeeded(&e2e, &ns, "submit", Duration::from_secs(600)).await?;
        ensure(succeeded, || "`taskcluster submit --wait` failed: not every result came back".into())?;

        let object = wait::until("the backlog to drain", Duration::from_secs(120), POLL, || async {
            let object = get(&e2e, &ns, name).await?;
            let done = status_i64(&object, "completed") - before;
            if status_i64(&object, "backlog") == 0 && done >= 1000 {
                Ok(Poll::Done(object))
            } else {
                Ok(Poll::NotYet(format!("{done} completed since the start; {}", summary(&object))))
            }
        })
        .await?;
        ensure(status_i64(&object, "deadLettered") == 0, || format!("tasks were dead-lettered: {}", summary(&object)))?;
        let logs = job_logs(&e2e, &ns, "submit").await;
        eprintln!("submit Job output (tail):\n{logs}");
        Ok(())
    })
    .await;
}

// Scenario 3: deleting the leader's pod while tasks flow moves status.leader to the other
// master within the bound, ten times in a row, and every task completes. Each deletion waits
// for a running submit Job (a new one starts when the last has finished), so every failover
// happens with tasks in flight.
#[tokio::test]
async fn leader_moves_within_the_bound_when_its_pod_is_deleted() {
    scenario("leader-failover", |e2e, ns| async move {
        let name = "failover";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 2, 2, 1)).await?;
        wait_ready(&e2e, &ns, name).await?;
        const SUBMIT: &[&str] = &["--count", "3000", "--inflight", "32", "--wait"];
        submit_job(&e2e, &ns, name, "submit", SUBMIT).await?;
        let mut jobs = vec!["submit".to_string()];

        let pods_api = Api::<Pod>::namespaced(e2e.client.clone(), &ns);
        let masters = component_selector(name, "master");
        for round in 1..=10 {
            // Both masters up, so there is another one to take over: seen on the pods, since
            // the status's count may still include the leader deleted a moment ago.
            let old =
                wait::until(&format!("round {round}: two ready masters and a leader"), READY_TIMEOUT, POLL, || async {
                    let object = get(&e2e, &ns, name).await?;
                    let ready = ready_pod_names(&e2e, &ns, &masters).await?;
                    match leader(&object) {
                        Some(leader) if ready.len() >= 2 && ready.contains(&leader) => Ok(Poll::Done(leader)),
                        leader => Ok(Poll::NotYet(format!("ready masters {ready:?}, leader {leader:?}"))),
                    }
                })
                .await?;
            // A Job that ends before its pod is seen running is followed by another: the
            // deletion waits for one whose tasks are in flight.
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let current = jobs.last().cloned().unwrap_or_default();
                let status = job_status(&e2e, &ns, &current).await?;
                if running(&status) {
                    break;
                }
                ensure(Instant::now() < deadline, || format!("round {round}: no submit Job running (last {current})"))?;
                if outcome(&status).is_some() {
                    let job = format!("submit-{}", jobs.len());
                    submit_job(&e2e, &ns, name, &job, SUBMIT).await?;
                    jobs.push(job);
                } else {
                    tokio::time::sleep(POLL).await;
                }
            }
            pods_api.delete(&old, &DeleteParams::default()).await.context(|| format!("deleting leader pod {old}"))?;
            let deleted_at = Instant::now();
            let new = wait::until(
                &format!("round {round}: a new leader after deleting {old}"),
                failover_bound(),
                Duration::from_millis(200),
                || async {
                    let object = get(&e2e, &ns, name).await?;
                    Ok(match leader(&object) {
                        Some(new) if new != old => Poll::Done(new),
                        other => Poll::NotYet(format!("leader {other:?}")),
                    })
                },
            )
            .await?;
            let pod = pod_once_running(&e2e, &ns, &new).await?;
            ensure(label(&pod, "app.kubernetes.io/component") == Some("master"), || {
                format!("new leader {new} is not a master")
            })?;
            eprintln!("round {round}: leader {old} -> {new} in {:?}", deleted_at.elapsed());
        }

        eprintln!("{} submit Jobs ran across the ten failovers", jobs.len());
        for job in &jobs {
            let succeeded = job_succeeded(&e2e, &ns, job, Duration::from_secs(900)).await?;
            ensure(succeeded, || format!("Job {job}: some task did not complete across the leader failovers"))?;
        }
        Ok(())
    })
    .await;
}

// Scenario 5b: an exec command set on a running TaskCluster rolls out to the workers, and
// the tasks run through it (`sh -c` in the node image): the seed handler would reverse the
// words, `tr a-z A-Z` keeps their order.
#[tokio::test]
async fn an_exec_change_rolls_out_and_tasks_run_through_it() {
    scenario("exec", |e2e, ns| async move {
        let name = "exec";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 1, 1, 1)).await?;
        wait_ready(&e2e, &ns, name).await?;
        patch_spec(&e2e, &ns, name, json!({"exec": "tr a-z A-Z"})).await?;
        // Until the new worker pods serve, a task may still meet the seed handler: submit
        // again until one comes back through the command.
        let mut attempt = 0;
        let logs = wait::until("a task to run through the exec command", READY_TIMEOUT, POLL, || {
            attempt += 1;
            let (e2e, ns) = (&e2e, &ns);
            let job = format!("exec-{attempt}");
            async move {
                submit_job(e2e, ns, name, &job, &["--wait", "--timeout", "60s", "rolled out"]).await?;
                let outcome = job_succeeded(e2e, ns, &job, Duration::from_secs(180)).await?;
                let logs = job_logs(e2e, ns, &job).await;
                Ok(if outcome && logs.contains("\tok\tROLLED OUT") {
                    Poll::Done(logs)
                } else {
                    Poll::NotYet(format!("job {job}: succeeded={outcome}, output {logs:?}"))
                })
            }
        })
        .await?;
        ensure(logs.contains("\tok\tROLLED OUT"), || format!("no task ran through the command: {logs}"))?;
        // Once the rollout is over (one worker pod, of the new template), every task runs
        // through the command: none meets the seed handler any more.
        follow(&e2e, &ns, name, "workers", 1).await?;
        let payloads = ["after one", "after two", "after three"];
        let mut args = vec!["--wait", "--timeout", "120s"];
        args.extend(payloads);
        submit_job(&e2e, &ns, name, "exec-after", &args).await?;
        let succeeded = job_succeeded(&e2e, &ns, "exec-after", Duration::from_secs(240)).await?;
        let logs = job_logs(&e2e, &ns, "exec-after").await;
        ensure(succeeded, || format!("tasks submitted after the rollout failed: {logs}"))?;
        for payload in payloads {
            let through_command = format!("\tok\t{}", payload.to_uppercase());
            ensure(logs.contains(&through_command), || {
                format!("{payload:?} did not run through the command after the rollout: {logs}")
            })?;
        }
        Ok(())
    })
    .await;
}

// Scenario 5c: the operator is killed in the middle of reconciling a new TaskCluster; its
// replacement converges: the cluster becomes Ready with every child and an up-to-date status.
#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_after_restart() {
    scenario("restart", |e2e, ns| async move {
        let name = "restarted";
        let operator = taskcluster::operator_selector(taskcluster::OPERATOR_RELEASE);
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 2, 2, 1)).await?;
        // Right after the first children appear, the reconcile is under way: kill it there.
        wait::until("the first child objects", Duration::from_secs(60), Duration::from_millis(200), || async {
            let count = Api::<Deployment>::namespaced(e2e.client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await
                .context(|| "listing Deployments".to_string())?
                .items
                .len();
            Ok(if count > 0 { Poll::Done(()) } else { Poll::NotYet("no Deployment yet".into()) })
        })
        .await?;
        let deleted = e2e
            .tools
            .kubectl(&[
                "delete",
                "pod",
                "-n",
                taskcluster::OPERATOR_NAMESPACE,
                "-l",
                &operator,
                "--grace-period=0",
                "--force",
            ])
            .await?;
        // `kubectl delete -l` that matches nothing succeeds: the kill must be seen.
        ensure(deleted.contains("deleted"), || format!("no operator pod was killed (selector {operator}): {deleted}"))?;
        e2e.tools
            .kubectl(&[
                "rollout",
                "status",
                "-n",
                taskcluster::OPERATOR_NAMESPACE,
                &format!("deployment/{}", taskcluster::OPERATOR_RELEASE),
                "--timeout=180s",
            ])
            .await?;
        let object = wait_ready(&e2e, &ns, name).await?;
        let generation = object.metadata.generation.unwrap_or(0);
        ensure(status_i64(&object, "observedGeneration") == generation, || {
            format!("status.observedGeneration lags generation {generation}: {}", summary(&object))
        })?;
        follow(&e2e, &ns, name, "masters", 2).await?;
        follow(&e2e, &ns, name, "workers", 2).await?;
        Ok(())
    })
    .await;
}

// Scenario 5: `kubectl scale` and spec edits are followed by the pods and the status.
#[tokio::test]
async fn scale_and_spec_edits_are_followed_by_pods_and_status() {
    scenario("scale", |e2e, ns| async move {
        let name = "scaled";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 2, 3, 1)).await?;
        wait_ready(&e2e, &ns, name).await?;
        one_eviction_allowed(&e2e, &ns, name).await?;

        e2e.tools.kubectl(&["scale", "-n", &ns, &format!("taskcluster/{name}"), "--replicas=1"]).await?;
        follow(&e2e, &ns, name, "workers", 1).await?;
        patch_spec(&e2e, &ns, name, json!({"workers": 4, "masters": 1})).await?;
        follow(&e2e, &ns, name, "workers", 4).await?;
        follow(&e2e, &ns, name, "masters", 1).await?;
        let object = wait_ready(&e2e, &ns, name).await?;
        ensure(status_i64(&object, "replicas") == 4, || format!("status.replicas is not 4: {}", summary(&object)))?;
        Ok(())
    })
    .await;
}

/// Waits until a component has exactly `want` pods and the status agrees.
async fn follow(e2e: &E2e, ns: &str, name: &str, component: &str, want: i64) -> Result<()> {
    let selector = component_selector(name, &component[..component.len() - 1]);
    wait::until(&format!("{want} {component}"), READY_TIMEOUT, POLL, || async {
        let object = get(e2e, ns, name).await?;
        let s = &status(&object)[component];
        let pods = pods(e2e, ns, &selector).await?.len() as i64;
        let desired = s["desired"].as_i64().unwrap_or(-1);
        let ready = s["ready"].as_i64().unwrap_or(-1);
        if pods == want && desired == want && ready == want {
            Ok(Poll::Done(()))
        } else {
            Ok(Poll::NotYet(format!("{pods} pods, status desired {desired} ready {ready}")))
        }
    })
    .await
}

// Scenario 6: an invalid spec is rejected with a message naming the problem, and
// deleting a TaskCluster removes every object it owns.
#[tokio::test]
async fn invalid_specs_are_rejected_and_deletion_removes_every_owned_object() {
    scenario("invalid-and-delete", |e2e, ns| async move {
        let invalid = taskcluster::manifest(&e2e, &ns, "invalid", 2, 2, 2);
        match e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &invalid).await {
            Ok(out) => {
                return Err(Error::Invalid {
                    context: "invalid spec".into(),
                    message: format!("zookeeper.replicas: 2 was accepted: {out}"),
                })
            },
            Err(Error::Command { stderr, .. }) => {
                ensure(stderr.contains("zookeeper.replicas must be 1, 3 or 5"), || {
                    format!("the rejection does not say what is wrong: {stderr}")
                })?
            },
            Err(other) => return Err(other),
        }

        let name = "doomed";
        e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(&e2e, &ns, name, 1, 1, 1)).await?;
        wait_ready(&e2e, &ns, name).await?;
        let selector = format!("app.kubernetes.io/instance={name}");
        let kinds = "statefulsets,deployments,services,configmaps,secrets,poddisruptionbudgets,networkpolicies,pods";
        let kinds = if e2e.ephemeral_storage { kinds.to_string() } else { format!("{kinds},persistentvolumeclaims") };
        let owned = e2e.tools.kubectl(&["get", &kinds, "-n", &ns, "-l", &selector, "-o", "name"]).await?;
        // Each kind the operator makes, so the deletion below is seen to remove all of them.
        let mut expected = vec![
            "statefulset.apps/",
            "deployment.apps/",
            "service/",
            "configmap/",
            "secret/",
            "poddisruptionbudget.policy/",
            "networkpolicy.networking.k8s.io/",
            "pod/",
        ];
        if !e2e.ephemeral_storage {
            expected.push("persistentvolumeclaim/");
        }
        for kind in expected {
            ensure(owned.lines().any(|l| l.starts_with(kind)), || {
                format!("no {} of the TaskCluster before its deletion; found:\n{owned}", kind.trim_end_matches('/'))
            })?;
        }

        taskcluster::api(&e2e, &ns)
            .delete(name, &DeleteParams::foreground())
            .await
            .context(|| format!("deleting {name}"))?;
        wait::until("every owned object to be deleted", Duration::from_secs(180), POLL, || async {
            let left = e2e.tools.kubectl(&["get", &kinds, "-n", &ns, "-l", &selector, "-o", "name"]).await?;
            let tc = taskcluster::api(&e2e, &ns).get_opt(name).await.context(|| format!("reading {name}"))?;
            if left.trim().is_empty() && tc.is_none() {
                Ok(Poll::Done(()))
            } else {
                Ok(Poll::NotYet(format!("left: {}", left.split_whitespace().collect::<Vec<_>>().join(" "))))
            }
        })
        .await
    })
    .await;
}

// Scenario 6b: with `zookeeper.storage.whenDeleted: Retain`, deleting a TaskCluster keeps its
// ZooKeeper claims and credentials Secret; created again under the same name it finds its
// data (the leader's counters live in ZooKeeper) and takes new tasks (the task tree's ACLs
// still match the credentials).
#[tokio::test]
async fn retained_data_survives_deleting_and_recreating_the_taskcluster() {
    scenario("retain", |e2e, ns| async move {
        if e2e.ephemeral_storage {
            eprintln!("skipped: this cluster has no volumes to retain");
            return Ok(());
        }
        let name = "kept";
        let mut object = taskcluster::object(&e2e, &ns, name, 1, 1, 1);
        object["spec"]["zookeeper"]["storage"]["whenDeleted"] = json!("Retain");
        taskcluster::apply(&e2e, &object).await?;
        wait_ready(&e2e, &ns, name).await?;
        submit_job(&e2e, &ns, name, "before", &["--count", "200", "--inflight", "16", "--wait"]).await?;
        ensure(job_succeeded(&e2e, &ns, "before", Duration::from_secs(300)).await?, || "Job before failed".into())?;
        let completed = |want: i64| {
            let (e2e, ns) = (&e2e, &ns);
            async move {
                wait::until(&format!("status.completed to reach {want}"), READY_TIMEOUT, POLL, || async {
                    let object = get(e2e, ns, name).await?;
                    Ok(if status_i64(&object, "completed") >= want {
                        Poll::Done(())
                    } else {
                        Poll::NotYet(summary(&object))
                    })
                })
                .await
            }
        };
        completed(200).await?;

        taskcluster::api(&e2e, &ns)
            .delete(name, &DeleteParams::foreground())
            .await
            .context(|| format!("deleting {name}"))?;
        let selector = format!("app.kubernetes.io/instance={name}");
        let workloads = "statefulsets,deployments,pods";
        wait::until("the TaskCluster and its workloads to be deleted", Duration::from_secs(180), POLL, || async {
            let left = e2e.tools.kubectl(&["get", workloads, "-n", &ns, "-l", &selector, "-o", "name"]).await?;
            let tc = taskcluster::api(&e2e, &ns).get_opt(name).await.context(|| format!("reading {name}"))?;
            Ok(if left.trim().is_empty() && tc.is_none() { Poll::Done(()) } else { Poll::NotYet(left) })
        })
        .await?;
        let kept = e2e
            .tools
            .kubectl(&["get", "persistentvolumeclaims,secrets", "-n", &ns, "-l", &selector, "-o", "name"])
            .await?;
        ensure(kept.lines().any(|l| l.starts_with("persistentvolumeclaim/")), || format!("the claim went: {kept}"))?;
        let secret = format!("secret/{name}-zookeeper-credentials");
        ensure(kept.lines().any(|l| l.trim() == secret), || format!("the credentials went: {kept}"))?;

        taskcluster::apply(&e2e, &object).await?;
        wait_ready(&e2e, &ns, name).await?;
        completed(200).await?;
        submit_job(&e2e, &ns, name, "after", &["--count", "50", "--inflight", "8", "--wait"]).await?;
        let succeeded = job_succeeded(&e2e, &ns, "after", Duration::from_secs(300)).await?;
        let logs = if succeeded { String::new() } else { job_logs(&e2e, &ns, "after").await };
        ensure(succeeded, || format!("the re-created cluster did not take new tasks:\n{logs}"))?;
        completed(250).await
    })
    .await;
}

// Scenario 4: deleting worker pods while they execute tasks loses nothing (their tasks are
// retried elsewhere), and deleting one ZooKeeper server of three does not stop the work.
// Each task takes 0.2 s, so the work outlasts every disruption, each victim is a worker
// that its own metrics show executing a task, and the Job must still run after the last one.
#[tokio::test]
async fn work_survives_deleted_workers_and_a_deleted_zookeeper_server() {
    scenario("disruptions", |e2e, ns| async move {
        let name = "sturdy";
        let mut object = taskcluster::object(&e2e, &ns, name, 2, 3, 3);
        object["spec"]["exec"] = json!(taskcluster::SLOW_TASKS);
        taskcluster::apply(&e2e, &object).await?;
        let before = status_i64(&wait_ready(&e2e, &ns, name).await?, "completed");
        one_eviction_allowed(&e2e, &ns, name).await?;
        const TASKS: usize = 1500;
        let count = TASKS.to_string();
        submit_job(&e2e, &ns, name, "submit", &["--count", &count, "--inflight", "64", "--wait"]).await?;

        // Two workers, each deleted while it executes a task.
        let workers = component_selector(name, "worker");
        for round in 1..=2 {
            let victim = wait::until(
                &format!("round {round}: a worker executing a task"),
                Duration::from_secs(300),
                Duration::from_millis(500),
                || async {
                    let mut idle = Vec::new();
                    for pod in ready_pod_names(&e2e, &ns, &workers).await? {
                        if pod_metric(&e2e, &ns, &pod, "taskcluster_worker_busy").await.unwrap_or(0.0) >= 1.0 {
                            return Ok(Poll::Done(pod));
                        }
                        idle.push(pod);
                    }
                    Ok(Poll::NotYet(format!("no ready worker busy: {idle:?}")))
                },
            )
            .await?;
            Api::<Pod>::namespaced(e2e.client.clone(), &ns)
                .delete(&victim, &DeleteParams::default().grace_period(0))
                .await
                .context(|| format!("deleting worker pod {victim}"))?;
            eprintln!("round {round}: deleted busy worker {victim}");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }

        // One ZooKeeper server of three: the other two keep a quorum.
        let zk_pod = format!("{name}-zookeeper-1");
        Api::<Pod>::namespaced(e2e.client.clone(), &ns)
            .delete(&zk_pod, &DeleteParams::default())
            .await
            .context(|| format!("deleting ZooKeeper pod {zk_pod}"))?;
        ensure(job_outcome(&e2e, &ns, "submit").await?.is_none(), || {
            "the submit Job ended before the last disruption: the disruptions did not meet running work".into()
        })?;

        // The client's own accounting is the proof that nothing was lost: it waited for
        // every one of its results.
        let what = "across the deleted workers and the ZooKeeper restart";
        all_succeeded(&e2e, &ns, "submit", TASKS, Duration::from_secs(900), what).await?;
        let object = wait::until("Ready again with three ZooKeeper servers", READY_TIMEOUT, POLL, || async {
            let object = get(&e2e, &ns, name).await?;
            let servers = status(&object)["zookeeper"]["readyReplicas"].as_i64().unwrap_or(0);
            if condition(&object, "Ready").as_deref() == Some("True")
                && status_i64(&object, "backlog") == 0
                && servers == 3
            {
                Ok(Poll::Done(object))
            } else {
                Ok(Poll::NotYet(summary(&object)))
            }
        })
        .await?;
        // status.completed is the leader's count of completions it observed; a result
        // written and collected while its worker pod was being killed can be missed.
        // Report a shortfall, but judge loss by the client's results above.
        let counted = status_i64(&object, "completed") - before;
        if counted < TASKS as i64 {
            eprintln!(
                "note: status.completed rose by {counted}, not {TASKS}, across the disruptions ({})",
                summary(&object)
            );
        }
        ensure(status_i64(&object, "deadLettered") == 0, || format!("tasks were dead-lettered: {}", summary(&object)))?;
        Ok(())
    })
    .await;
}

/// A sample of the pod `pod`'s own Prometheus metrics (0 when not exported yet).
async fn pod_metric(e2e: &E2e, ns: &str, pod: &str, metric: &str) -> Result<f64> {
    let url = format!("http://127.0.0.1:{}/metrics", taskcluster::NODE_HTTP_PORT);
    let metrics = e2e.tools.kubectl(&["exec", "-n", ns, pod, "--", "wget", "-q", "-O", "-", &url]).await?;
    let value = metrics
        .lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(value)
}

/// Events of `reason` about the TaskCluster `name`.
async fn events(e2e: &E2e, ns: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let selector = format!("involvedObject.kind={},involvedObject.name={name},reason={reason}", taskcluster::KIND);
    let out = e2e
        .tools
        .kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ])
        .await?;
    Ok(out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

// Scenario 7: the built-in autoscaler follows a burst: workers rise within the bound, the
// backlog drains, and the scale-in interrupts no task: two long tasks, queued behind the
// burst so that they land on any of the workers (the ReplicaSet alone would remove the
// newest pods first), still run when the workers are scaled in to the two busy ones, then
// back to the minimum; every task was assigned exactly once and no attempt failed.
#[tokio::test]
async fn workers_follow_a_burst_and_scale_in_interrupts_no_task() {
    scenario("autoscaling", |e2e, ns| async move {
        let name = "elastic";
        let mut object = taskcluster::object(&e2e, &ns, name, 1, 1, 1);
        // Burst tasks take a second each, so the burst outlasts the scale-up; tasks named
        // `long…` take 90 s, so they run on through the scale-in after the burst.
        object["spec"]["exec"] = json!(r#"read -r p; case "$p" in long*) sleep 90;; *) sleep 1;; esac; echo "$p""#);
        object["spec"]["tasks"] = json!({"timeout": "180s"});
        object["spec"]["autoscaling"] =
            json!({"minWorkers": 1, "maxWorkers": 6, "tasksPerWorker": 4, "scaleDownStabilization": "15s"});
        taskcluster::apply(&e2e, &object).await?;
        let ready = wait_ready(&e2e, &ns, name).await?;
        follow(&e2e, &ns, name, "workers", 1).await?;
        let master = leader(&ready).unwrap_or_default();
        let assigned_before = pod_metric(&e2e, &ns, &master, "taskcluster_master_assignments_total").await?;
        let failed_before = pod_metric(&e2e, &ns, &master, "taskcluster_tasks_failed_attempts_total").await?;

        const BURST: usize = 120;
        const LONG: usize = 2;
        let count = BURST.to_string();
        submit_job(&e2e, &ns, name, "burst", &["--count", &count, "--inflight", &count, "--wait"]).await?;
        let burst = Instant::now();
        let workers = component_selector(name, "worker");
        let (first_new_ready, peak) = (std::cell::Cell::new(None), std::cell::Cell::new(0usize));
        let long_submitted = std::cell::Cell::new(false);
        let succeeded =
            wait::until("the burst Job to finish", Duration::from_secs(600), Duration::from_secs(1), || async {
                let ready = ready_pod_names(&e2e, &ns, &workers).await?.len();
                peak.set(peak.get().max(ready));
                if ready > 1 && first_new_ready.get().is_none() {
                    first_new_ready.set(Some(burst.elapsed()));
                }
                if ready >= 4 && !long_submitted.get() {
                    submit_job(&e2e, &ns, name, "long", &["--wait", "--timeout", "600s", "long one", "long two"])
                        .await?;
                    long_submitted.set(true);
                }
                Ok(match job_outcome(&e2e, &ns, "burst").await? {
                    Some(outcome) => Poll::Done(outcome),
                    None => Poll::NotYet(format!("{ready} ready workers, peak {}", peak.get())),
                })
            })
            .await?;
        let (first_new_ready, peak) = (first_new_ready.get(), peak.get());
        let drained = burst.elapsed();
        ensure(long_submitted.get(), || format!("workers peaked at {peak}: the long tasks were never submitted"))?;
        let logs = job_logs(&e2e, &ns, "burst").await;
        ensure(succeeded, || format!("the burst's tasks did not all succeed: {logs}"))?;
        let summary_line = format!("{BURST} submitted, {BURST} succeeded, 0 failed");
        ensure(logs.lines().any(|l| l.trim() == summary_line), || format!("expected {summary_line:?}: {logs}"))?;
        ensure(peak > LONG && peak <= 6, || {
            format!("workers peaked at {peak}: they should rise above {LONG} and stay within 6")
        })?;

        // The burst is over, the long tasks run: the scale-in goes down to the busy workers
        // only, and the long tasks go on where they run.
        follow(&e2e, &ns, name, "workers", LONG as i64).await?;
        ensure(job_outcome(&e2e, &ns, "long").await?.is_none(), || {
            "the long tasks ended before the scale-in: it removed no worker while tasks ran".into()
        })?;
        let long_done = job_succeeded(&e2e, &ns, "long", Duration::from_secs(300)).await?;
        let logs = job_logs(&e2e, &ns, "long").await;
        let summary_line = format!("{LONG} submitted, {LONG} succeeded, 0 failed");
        ensure(long_done && logs.lines().any(|l| l.trim() == summary_line), || {
            format!("the long tasks did not all succeed once: {logs}")
        })?;
        // Back to the minimum once the load is gone and the scale-down window has passed.
        let scaled_in = Instant::now();
        follow(&e2e, &ns, name, "workers", 1).await?;
        let fell_back = scaled_in.elapsed();

        let tasks = (BURST + LONG) as f64;
        let assigned = pod_metric(&e2e, &ns, &master, "taskcluster_master_assignments_total").await? - assigned_before;
        let failed = pod_metric(&e2e, &ns, &master, "taskcluster_tasks_failed_attempts_total").await? - failed_before;
        eprintln!(
            "autoscaling: {BURST} tasks of 1 s and {LONG} of 90 s; first new worker Ready {:?} after the burst, \
             burst drained in {drained:?}, peak {peak} workers, scaled in to the {LONG} busy workers, 1 worker \
             {fell_back:?} after the long Job ended; {assigned} assignments, {failed} failed attempts, {} interrupted",
            first_new_ready.unwrap_or_default(),
            assigned - tasks
        );
        ensure(assigned == tasks && failed == 0.0, || {
            format!("{assigned} assignments and {failed} failed attempts for {tasks} tasks: scaling interrupted a task")
        })?;
        let up = events(&e2e, &ns, name, "ScaledUp").await?;
        let down = events(&e2e, &ns, name, "ScaledDown").await?;
        ensure(!up.is_empty() && !down.is_empty(), || {
            format!("expected ScaledUp and ScaledDown events, found up {up:?}, down {down:?}")
        })?;
        let object = get(&e2e, &ns, name).await?;
        let desired = status(&object)["autoscaling"]["desired"].as_i64().unwrap_or(-1);
        ensure(desired == 1, || format!("status.autoscaling.desired is {desired}, not 1: {}", status(&object)))?;
        Ok(())
    })
    .await;
}

/// `kind/name=version` of each StatefulSet and Deployment of the TaskCluster `name`: the
/// operator release that last applied it.
async fn child_versions(e2e: &E2e, ns: &str, name: &str) -> Result<Vec<String>> {
    let selector = format!("app.kubernetes.io/instance={name}");
    let template = r#"jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.labels.app\.kubernetes\.io/version}{"\n"}{end}"#;
    let out =
        e2e.tools.kubectl(&["get", "statefulsets,deployments", "-n", ns, "-l", &selector, "-o", template]).await?;
    Ok(out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Waits until the StatefulSet and both Deployments of `name` were applied by `release`.
async fn applied_by(e2e: &E2e, ns: &str, name: &str, release: &str) -> Result<()> {
    wait::until(&format!("operator {release} to apply every child"), Duration::from_secs(240), POLL, || async {
        let versions = child_versions(e2e, ns, name).await?;
        let done = versions.len() == 3 && versions.iter().all(|v| v.ends_with(&format!("={release}")));
        Ok(if done { Poll::Done(()) } else { Poll::NotYet(format!("{versions:?}")) })
    })
    .await
}

/// Name and uid of each ZooKeeper pod of `name`.
async fn zookeeper_pod_uids(e2e: &E2e, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    Ok(pods(e2e, ns, &component_selector(name, "zookeeper"))
        .await?
        .into_iter()
        .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
        .collect())
}

// Scenario 8: an operator upgrade strands nothing. The chart is installed with an older
// release (this operator stamped with another version by e2e/cluster/ci.sh), a TaskCluster
// with volume-backed ZooKeeper runs slow tasks, and the chart is upgraded while they flow:
// the new operator applies the StatefulSet and both Deployments (an immutable field it
// changed would stop it), restarts no ZooKeeper server (their pod template does not carry
// the version), applies a later scale and spec edit, and every task succeeds once.
#[tokio::test]
async fn an_operator_upgrade_under_load_restarts_no_zookeeper_server_and_applies_later_edits() {
    scenario("upgrade", |e2e, ns| async move {
        let Some(previous) = e2e.upgrade_from.clone() else {
            eprintln!("skipped: no older operator build on the node ({UPGRADE_FROM_VAR} is unset; ci.sh sets it)");
            return Ok(());
        };
        let upgraded = upgrade_under_load(&e2e, &ns, &previous).await;
        // The suite's other scenarios expect this release's operator, whatever happened.
        let restored = e2e.install_operator_release(None).await;
        upgraded.and(restored)
    })
    .await;
}

async fn upgrade_under_load(e2e: &E2e, ns: &str, previous: &str) -> Result<()> {
    let current = env!("CARGO_PKG_VERSION");
    ensure(previous != current, || format!("{UPGRADE_FROM_VAR}={previous} is this release"))?;
    e2e.install_operator_release(Some(previous)).await?;
    let name = "upgraded";
    let mut object = taskcluster::object(e2e, ns, name, 2, 2, 3);
    object["spec"]["exec"] = json!(r#"read -r p; sleep 0.1; echo "$p""#);
    taskcluster::apply(e2e, &object).await?;
    wait_ready(e2e, ns, name).await?;
    applied_by(e2e, ns, name, previous).await?;
    let servers = zookeeper_pod_uids(e2e, ns, name).await?;

    const TASKS: usize = 2000;
    let count = TASKS.to_string();
    submit_job(e2e, ns, name, "stream", &["--count", &count, "--inflight", "32", "--wait"]).await?;
    wait_running(e2e, ns, "stream").await?;

    let upgrade = Instant::now();
    e2e.install_operator_release(None).await?;
    applied_by(e2e, ns, name, current).await?;
    eprintln!(
        "upgrade: operator {previous} -> {current}; every child applied {:?} after helm upgrade",
        upgrade.elapsed()
    );
    ensure(job_outcome(e2e, ns, "stream").await?.is_none(), || {
        "the stream Job ended before the new operator took over: the upgrade did not meet running work".into()
    })?;

    // Later edits reach the children: a scale and a task setting.
    patch_spec(e2e, ns, name, json!({"workers": 3, "tasks": {"maxAttempts": 5}})).await?;
    let deployments = Api::<Deployment>::namespaced(e2e.client.clone(), ns);
    wait::until("the scale and the edit to be applied", Duration::from_secs(180), POLL, || async {
        let workers =
            deployments.get(&format!("{name}-worker")).await.context(|| "reading the worker Deployment".into())?;
        let master =
            deployments.get(&format!("{name}-master")).await.context(|| "reading the master Deployment".into())?;
        let replicas = workers.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let args = master
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.args)
            .unwrap_or_default();
        let attempts = args.windows(2).find(|w| w[0] == "--max-attempts").map(|w| w[1].clone()).unwrap_or_default();
        Ok(if replicas == 3 && attempts == "5" {
            Poll::Done(())
        } else {
            Poll::NotYet(format!("worker replicas {replicas}, master --max-attempts {attempts:?}"))
        })
    })
    .await?;
    follow(e2e, ns, name, "workers", 3).await?;

    all_succeeded(e2e, ns, "stream", TASKS, Duration::from_secs(900), "streamed across the upgrade").await?;
    let after = zookeeper_pod_uids(e2e, ns, name).await?;
    ensure(after == servers, || {
        format!("ZooKeeper servers were restarted by the upgrade: before {servers:?}, after {after:?}")
    })?;
    let object = get(e2e, ns, name).await?;
    ensure(condition(&object, "Reconciled").as_deref() == Some("True"), || {
        format!("Reconciled is not True after the upgrade: {}", status(&object))
    })?;
    Ok(())
}

/// Scales the suite's cluster-wide operator to `replicas` and waits until exactly that many
/// of its pods exist (a terminating one still reconciles) and, above 0, the rollout is done.
async fn scale_suite_operator(e2e: &E2e, replicas: u32) -> Result<()> {
    let deployment = format!("deployment/{}", taskcluster::OPERATOR_RELEASE);
    let namespace = taskcluster::OPERATOR_NAMESPACE;
    e2e.tools.kubectl(&["scale", "-n", namespace, &deployment, &format!("--replicas={replicas}")]).await?;
    let selector = taskcluster::operator_selector(taskcluster::OPERATOR_RELEASE);
    let api = Api::<Pod>::namespaced(e2e.client.clone(), namespace);
    wait::until(&format!("{replicas} pods of the suite's operator"), Duration::from_secs(180), POLL, || async {
        let all =
            api.list(&ListParams::default().labels(&selector)).await.context(|| "listing operator pods".into())?;
        let count = all.items.len() as u32;
        Ok(if count == replicas { Poll::Done(()) } else { Poll::NotYet(format!("{count} pods")) })
    })
    .await?;
    if replicas > 0 {
        e2e.tools.kubectl(&["rollout", "status", "-n", namespace, &deployment, "--timeout=180s"]).await?;
    }
    Ok(())
}

// Scenario 9: an operator installed for one namespace (`watchNamespace`: a Role there
// instead of the ClusterRole) runs a TaskCluster in it and leaves one in another namespace
// alone. The suite's cluster-wide operator is scaled to 0 meanwhile and back to 1 whatever
// happened; it then makes the other TaskCluster Ready, so that one was valid all along.
#[tokio::test]
async fn a_namespace_scoped_operator_runs_its_namespace_only() {
    scenario("scoped", |e2e, ns| async move {
        let outside = e2e.create_namespace("scoped-outside").await?;
        let scoped = match scale_suite_operator(&e2e, 0).await {
            Ok(()) => scoped_operator_runs(&e2e, &ns, &outside).await,
            Err(err) => Err(err),
        };
        // Gone before the suite's operator returns, so the two never share a TaskCluster.
        let uninstalled = e2e.tools.helm(&["uninstall", SCOPED_RELEASE, "-n", &ns, "--wait", "--timeout", "2m"]).await;
        let restored = scale_suite_operator(&e2e, 1).await;
        let adopted = match (&scoped, &restored) {
            (Ok(()), Ok(())) => wait_ready(&e2e, &outside, "outside").await.map(|_| ()),
            _ => Ok(()),
        };
        let cleaned = e2e.delete_namespace(&outside).await;
        scoped.and(uninstalled.map(|_| ())).and(restored).and(adopted).and(cleaned)
    })
    .await;
}

const SCOPED_RELEASE: &str = "scoped";

async fn scoped_operator_runs(e2e: &E2e, ns: &str, outside: &str) -> Result<()> {
    let release = SCOPED_RELEASE;
    e2e.install_chart(release, ns, &[&format!("watchNamespace={ns}")], "3m").await?;
    let cluster_wide = e2e.tools.kubectl(&["get", "clusterrolebindings", "-o", "name"]).await?;
    ensure(!cluster_wide.contains(&format!("{release}-taskcluster-operator")), || {
        format!("the namespace-scoped release bound a ClusterRole: {cluster_wide}")
    })?;
    e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(e2e, ns, "inside", 1, 1, 1)).await?;
    e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &taskcluster::manifest(e2e, outside, "outside", 1, 1, 1)).await?;
    wait_ready(e2e, ns, "inside").await?;
    submit_job(e2e, ns, "inside", "scoped-submit", &["--count", "50", "--inflight", "8", "--wait"]).await?;
    all_succeeded(e2e, ns, "scoped-submit", 50, Duration::from_secs(300), "of the scoped operator's TaskCluster")
        .await?;

    // By now the scoped operator has had a minute or more with both objects.
    let other = get(e2e, outside, "outside").await?;
    let children = Api::<Deployment>::namespaced(e2e.client.clone(), outside)
        .list(&ListParams::default())
        .await
        .context(|| format!("listing Deployments in {outside}"))?;
    ensure(other.data.get("status").is_none_or(Value::is_null) && children.items.is_empty(), || {
        format!(
            "the namespace-scoped operator reconciled a TaskCluster in {outside}: status {}, {} Deployments",
            status(&other),
            children.items.len()
        )
    })?;
    let operator_logs =
        e2e.tools.kubectl(&["logs", "-n", ns, "-l", &taskcluster::operator_selector(release), "--tail=-1"]).await?;
    let refused: Vec<&str> = operator_logs.lines().filter(|l| l.to_lowercase().contains("forbidden")).take(5).collect();
    ensure(refused.is_empty(), || format!("its Role lacks a permission the operator uses: {refused:#?}"))?;
    Ok(())
}
