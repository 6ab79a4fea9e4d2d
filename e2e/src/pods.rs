//! Pods of a scenario, as the kubelet reports them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::env::E2e;
use crate::error::KubeContext;
use crate::wait::{self, Poll};
use crate::{ensure, Result};

/// The pod `name`, failing unless it is Running.
pub async fn running_pod(e2e: &E2e, namespace: &str, name: &str) -> Result<Pod> {
    let pod = Api::<Pod>::namespaced(e2e.client.clone(), namespace)
        .get(name)
        .await
        .context(|| format!("reading pod {name}"))?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    ensure(phase == "Running", || format!("pod {name} is {phase}, not Running"))?;
    Ok(pod)
}

/// The pod `name` once the kubelet reports it Running: a process can win an election before
/// the kubelet's next look at its containers moves the pod's phase from Pending.
pub async fn pod_once_running(e2e: &E2e, namespace: &str, name: &str) -> Result<Pod> {
    wait::until(&format!("pod {name} to be Running"), Duration::from_secs(30), Duration::from_millis(500), || async {
        Ok(match running_pod(e2e, namespace, name).await {
            Ok(pod) => Poll::Done(pod),
            Err(error) => Poll::NotYet(error.to_string()),
        })
    })
    .await
}

/// Whether `pod` is Ready and not on its way out.
pub fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    pod.metadata.deletion_timestamp.is_none()
        && conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
