//! Jobs that submit tasks to a TaskCluster, as a user's client would.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::env::E2e;
use crate::error::KubeContext;
use crate::taskcluster;
use crate::wait::{self, Poll};
use crate::{Error, Result};

/// The node image the TaskCluster's masters run: its `taskcluster` binary is the client, its
/// BusyBox has `sh` and `nc`.
pub async fn node_image(e2e: &E2e, namespace: &str, instance: &str) -> Result<String> {
    Ok(Api::<Deployment>::namespaced(e2e.client.clone(), namespace)
        .get(&format!("{instance}-master"))
        .await
        .context(|| format!("reading Deployment {instance}-master"))?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_else(|| "taskcluster/node:0.1.0".into()))
}

/// A Job that runs `taskcluster submit` against the cluster's ZooKeeper, with the
/// credentials and the client label the operator's NetworkPolicy admits.
pub async fn submit_job(e2e: &E2e, namespace: &str, instance: &str, job: &str, args: &[&str]) -> Result<()> {
    let image = node_image(e2e, namespace, instance).await?;
    let mut command = vec!["submit".to_string(), "--zk".into(), taskcluster::zookeeper_client(instance, namespace)];
    command.extend(args.iter().map(|s| s.to_string()));
    let job_object: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"taskcluster.dev/client": instance, "taskcluster.dev/e2e-job": job}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                    "containers": [{
                        "name": "submit",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": command,
                        "env": [{
                            "name": "TASKCLUSTER_ZK_DIGEST",
                            "valueFrom": {"secretKeyRef": {"name": format!("{instance}-zookeeper-credentials"), "key": "digest"}},
                        }],
                    }],
                },
            },
        },
    }))
    .map_err(|err| Error::Invalid { context: "building the submit Job".into(), message: err.to_string() })?;
    Api::<Job>::namespaced(e2e.client.clone(), namespace)
        .create(&PostParams::default(), &job_object)
        .await
        .context(|| format!("creating Job {job}"))?;
    Ok(())
}

/// `Some(true)` once the Job succeeded, `Some(false)` once it failed.
pub async fn job_status(e2e: &E2e, namespace: &str, job: &str) -> Result<JobStatus> {
    let job = Api::<Job>::namespaced(e2e.client.clone(), namespace)
        .get(job)
        .await
        .context(|| format!("reading Job {job}"))?;
    Ok(job.status.unwrap_or_default())
}

/// Whether the Job succeeded, failed, or neither yet.
pub fn outcome(status: &JobStatus) -> Option<bool> {
    if status.succeeded.unwrap_or(0) > 0 {
        Some(true)
    } else if status.failed.unwrap_or(0) > 0 {
        Some(false)
    } else {
        None
    }
}

pub async fn job_outcome(e2e: &E2e, namespace: &str, job: &str) -> Result<Option<bool>> {
    Ok(outcome(&job_status(e2e, namespace, job).await?))
}

/// Whether the Job's pod runs (ready; a submit container has no probe): a submit Job with
/// `--wait` runs until its last result arrives, so its tasks are in flight.
pub fn running(status: &JobStatus) -> bool {
    status.ready.unwrap_or(0) > 0 && outcome(status).is_none()
}

pub async fn job_logs(e2e: &E2e, namespace: &str, job: &str) -> String {
    e2e.tools
        .kubectl(&["logs", "-n", namespace, &format!("job/{job}"), "--tail=40"])
        .await
        .unwrap_or_else(|e| e.to_string())
}

/// Waits until the Job finished; true when it succeeded.
pub async fn job_succeeded(e2e: &E2e, namespace: &str, job: &str, timeout: Duration) -> Result<bool> {
    wait::until(&format!("Job {job} to finish"), timeout, wait::POLL, || async {
        Ok(match job_outcome(e2e, namespace, job).await? {
            Some(outcome) => Poll::Done(outcome),
            None => Poll::NotYet("running".into()),
        })
    })
    .await
}

/// A Job streaming `tasks` tasks into the TaskCluster, 32 in flight, once it runs: the load a
/// disruption scenario puts its disruption under.
pub async fn stream_tasks(e2e: &E2e, namespace: &str, instance: &str, job: &str, tasks: usize) -> Result<()> {
    let count = tasks.to_string();
    submit_job(e2e, namespace, instance, job, &["--count", &count, "--inflight", "32", "--wait"]).await?;
    wait_running(e2e, namespace, job).await
}

/// Waits until the Job's pod runs (it submits from then on).
pub async fn wait_running(e2e: &E2e, namespace: &str, job: &str) -> Result<()> {
    wait::until(&format!("Job {job} to run"), Duration::from_secs(120), Duration::from_millis(500), || async {
        let status = job_status(e2e, namespace, job).await?;
        Ok(if running(&status) { Poll::Done(()) } else { Poll::NotYet(format!("{status:?}")) })
    })
    .await
}

/// Waits until the Job finished and fails unless it succeeded with every one of its `tasks`
/// (`N submitted, N succeeded, 0 failed` is the client's last line); `what` says what the
/// tasks went through, for the message.
pub async fn all_succeeded(
    e2e: &E2e,
    namespace: &str,
    job: &str,
    tasks: usize,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let succeeded = job_succeeded(e2e, namespace, job, timeout).await?;
    let logs = job_logs(e2e, namespace, job).await;
    let summary = format!("{tasks} submitted, {tasks} succeeded, 0 failed");
    crate::ensure(succeeded && logs.lines().any(|l| l.trim() == summary), || {
        format!("the tasks {what} did not all succeed ({summary:?} expected):\n{logs}")
    })
}
