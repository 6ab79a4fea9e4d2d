//! A drain of a ZooKeeper ensemble while tasks flow (docs/e2e.md): servers are evicted one by
//! one through the Eviction API, as `kubectl drain` does, retrying while the disruption budget
//! refuses. While one is out the budget refuses a second, and the next goes only once the one
//! before is back, Ready and serving in the quorum. Every task streamed across it succeeds.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use serde_json::json;
use taskcluster_e2e::error::KubeContext;
use taskcluster_e2e::jobs::{all_succeeded, job_outcome, stream_tasks};
use taskcluster_e2e::pods::ready;
use taskcluster_e2e::taskcluster::{self, status_i64, summary, wait_ready, READY_TIMEOUT};
use taskcluster_e2e::wait::{self, Poll, POLL};
use taskcluster_e2e::{ensure, scenario, Error, Result};

const SERVERS: usize = 3;
const TASKS: usize = 1500;

#[tokio::test]
async fn a_drain_evicts_zookeeper_servers_one_at_a_time_and_loses_no_task() {
    scenario("drain", |e2e, ns| async move {
        let name = "drained";
        let mut object = taskcluster::object(&e2e, &ns, name, 2, 2, SERVERS as i64);
        // Slow tasks, so that the work outlasts the drain.
        object["spec"]["exec"] = json!(taskcluster::SLOW_TASKS);
        taskcluster::apply(&e2e, &object).await?;
        wait_ready(&e2e, &ns, name).await?;
        stream_tasks(&e2e, &ns, name, "drain-submit", TASKS).await?;

        let pods = Api::<Pod>::namespaced(client_without_retries().await?, &ns);
        let servers: Vec<String> = (0..SERVERS).map(|i| format!("{name}-zookeeper-{i}")).collect();
        for (round, server) in servers.iter().enumerate() {
            let uid = pods.get(server).await.context(|| format!("reading pod {server}"))?.metadata.uid;
            wait::until(&format!("the disruption budget to let {server} go"), READY_TIMEOUT, POLL, || async {
                Ok(match evict(&pods, server).await? {
                    Evicted::Yes => Poll::Done(()),
                    Evicted::Refused(why) => Poll::NotYet(why),
                })
            })
            .await?;
            // While it is out, the budget holds every other server.
            let other = &servers[(round + 1) % SERVERS];
            ensure(matches!(evict(&pods, other).await?, Evicted::Refused(_)), || {
                format!("the disruption budget let {other} go while {server} was out: two of three servers down")
            })?;
            wait::until(&format!("{server} to be back and Ready"), READY_TIMEOUT, POLL, || async {
                let pod = pods.get_opt(server).await.context(|| format!("reading pod {server}"))?;
                Ok(match pod {
                    Some(pod) if pod.metadata.uid != uid && ready(&pod) => Poll::Done(()),
                    Some(pod) if pod.metadata.uid != uid => Poll::NotYet("recreated, not Ready".into()),
                    _ => Poll::NotYet("not recreated yet".into()),
                })
            })
            .await?;
            // Ready means serving in the quorum, not just answering: that is what lets the
            // budget release the next server.
            let serving = e2e.tools.kubectl(&["exec", "-n", &ns, server, "--", "zookeeper-ready", "--serving"]).await;
            ensure(serving.is_ok(), || format!("{server} is Ready but does not serve: {serving:?}"))?;
            eprintln!("round {round}: {server} evicted, back and serving");
        }
        ensure(job_outcome(&e2e, &ns, "drain-submit").await?.is_none(), || {
            "the submit Job ended before the drain did: the drain did not meet running work".into()
        })?;

        all_succeeded(&e2e, &ns, "drain-submit", TASKS, Duration::from_secs(900), "streamed across the drain").await?;
        let object = taskcluster::get(&e2e, &ns, name).await?;
        ensure(status_i64(&object, "deadLettered") == 0, || format!("tasks were dead-lettered: {}", summary(&object)))?;
        Ok(())
    })
    .await;
}

/// A client that reports a refusal (429) at once. kube's default client retries a 429 until the
/// budget allows it, as `kubectl drain` does: a probe of the budget with it never sees a refusal.
async fn client_without_retries() -> Result<kube::Client> {
    let invalid = |message: String| Error::Invalid { context: "a client without retries".into(), message };
    let mut config = kube::Config::infer().await.map_err(|e| invalid(e.to_string()))?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| invalid(e.to_string()))
}

enum Evicted {
    Yes,
    /// The disruption budget refused (429), with the API server's reason.
    Refused(String),
}

/// Asks the Eviction API to evict `pod`, as `kubectl drain` does.
async fn evict(pods: &Api<Pod>, pod: &str) -> Result<Evicted> {
    match pods.evict(pod, &EvictParams::default()).await {
        Ok(_) => Ok(Evicted::Yes),
        Err(kube::Error::Api(status)) if status.code == 429 => Ok(Evicted::Refused(status.message.clone())),
        Err(error) => Err(error).context(|| format!("evicting pod {pod}")),
    }
}
