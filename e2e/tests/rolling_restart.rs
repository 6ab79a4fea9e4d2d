//! A rolling restart of a 3-server ZooKeeper ensemble while tasks flow (docs/e2e.md), with the
//! first restarted server kept from rejoining: `kubectl rollout restart` replaces the servers one
//! at a time, highest ordinal first, and goes on to the next only once the replacement is Ready.
//! Ready must mean "serving in the quorum", not "the process answers": while the replacement of
//! server 3 is partitioned off its peers it runs and answers `ruok`, and the roll must wait for
//! it (servers 1 and 2 keep the quorum, untouched) instead of taking a second server down. Once
//! the partition heals the roll completes with never two servers down at once (`srvr` sampled
//! on each), and every task streamed across it succeeds.

use std::cell::Cell;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use taskcluster_e2e::env::E2e;
use taskcluster_e2e::error::KubeContext;
use taskcluster_e2e::jobs::{all_succeeded, job_outcome, stream_tasks};
use taskcluster_e2e::partition::Partition;
use taskcluster_e2e::pods::ready;
use taskcluster_e2e::taskcluster::{self, status_i64, summary, wait_ready, READY_TIMEOUT};
use taskcluster_e2e::wait::{self, Poll, POLL};
use taskcluster_e2e::{ensure, scenario, Error, Result};

const SERVERS: usize = 3;
const TASKS: usize = 1500;
/// How long the roll is watched while the replacement of server 3 cannot rejoin. A roll that
/// goes by `ruok` would take the next server after the readiness probe's first passes (5 s
/// initial delay, 5 s period).
const HOLD: Duration = Duration::from_secs(30);
const SAMPLE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_rolling_restart_waits_for_each_server_to_rejoin_and_loses_no_task() {
    scenario("rolling-restart", |e2e, ns| async move {
        let name = "rolled";
        let mut object = taskcluster::object(&e2e, &ns, name, 2, 2, SERVERS as i64);
        // Slow tasks, so that the work outlasts the roll.
        object["spec"]["exec"] = json!(taskcluster::SLOW_TASKS);
        taskcluster::apply(&e2e, &object).await?;
        wait_ready(&e2e, &ns, name).await?;
        stream_tasks(&e2e, &ns, name, "roll-submit", TASKS).await?;

        let pods = Api::<Pod>::namespaced(e2e.client.clone(), &ns);
        let servers: Vec<String> = (0..SERVERS).map(|i| format!("{name}-zookeeper-{i}")).collect();
        let mut before = Vec::new();
        for server in &servers {
            before.push(identity(&pods, server).await?.ok_or_else(|| invalid(format!("{server} has no address")))?);
        }
        let [first, second, last] = [&servers[0], &servers[1], &servers[2]];

        // Only the servers running now may reach a peer port: the replacement of the last one,
        // whatever its address, runs cut off from its peers.
        let addresses: Vec<String> = before.iter().map(|(_, address)| address.clone()).collect();
        let partition = Partition::isolate_all_but(&addresses)?;
        e2e.tools.kubectl(&["rollout", "restart", "-n", &ns, &format!("statefulset/{name}-zookeeper")]).await?;
        let replaced_address = wait::until(&format!("{last} to be replaced and run"), READY_TIMEOUT, POLL, || async {
            Ok(match identity(&pods, last).await? {
                Some((uid, address)) if uid != before[2].0 => match probe(&e2e, &ns, last).await {
                    Server::Down(why) => Poll::NotYet(format!("replaced, its server does not answer: {why}")),
                    _ => Poll::Done(address),
                },
                _ => Poll::NotYet("not replaced yet".into()),
            })
        })
        .await?;
        ensure(!addresses.contains(&replaced_address), || {
            format!("the replacement of {last} has an old server's address {replaced_address}: it is not cut off")
        })?;

        // The hold: the replacement runs out of the quorum; the other two serve and stay.
        let start = Instant::now();
        let mut said = String::new();
        while start.elapsed() < HOLD {
            let [a, b, c]: [Server; SERVERS] = probe_all(&e2e, &ns, &servers).await;
            ensure(!matches!(c, Server::Serving), || {
                format!("{last} serves while cut off from its peers: the partition does not hold")
            })?;
            if let Server::OutOfQuorum(why) = &c {
                said.clone_from(why);
            }
            // A restart of either is the cause to report; the other losing the quorum follows from it.
            let kept = [(first, &before[0], a), (second, &before[1], b)];
            for (server, (uid, _), _) in &kept {
                ensure(untouched(&pods, server, uid).await?, || {
                    format!(
                        "{server} was restarted while {last} was out of the quorum (it runs but serves nobody: \
                         {c:?}): the roll did not wait for it to rejoin"
                    )
                })?;
            }
            for (server, _, state) in &kept {
                ensure(matches!(state, Server::Serving), || {
                    format!("{server} stopped serving while {last} was out of the quorum: {state:?}")
                })?;
            }
            tokio::time::sleep(SAMPLE).await;
        }
        eprintln!("for {HOLD:?} the roll waited for {last} ({said}); {first} and {second} served");

        partition.heal();
        let samples = Cell::new(0);
        wait::until("the roll to complete", READY_TIMEOUT, SAMPLE, || async {
            let states = probe_all(&e2e, &ns, &servers).await;
            samples.set(samples.get() + 1);
            let down: Vec<&String> =
                servers.iter().zip(&states).filter(|(_, s)| matches!(s, Server::Down(_))).map(|(n, _)| n).collect();
            ensure(down.len() < 2, || format!("two servers down at once during the roll: {states:?}"))?;
            rolled(&e2e, &ns, name, &pods, &servers, &before).await
        })
        .await?;
        eprintln!("the roll completed ({} samples, never two servers down)", samples.get());
        ensure(job_outcome(&e2e, &ns, "roll-submit").await?.is_none(), || {
            "the submit Job ended before the roll did: the roll did not meet running work".into()
        })?;

        all_succeeded(&e2e, &ns, "roll-submit", TASKS, Duration::from_secs(900), "streamed across the roll").await?;
        let object = taskcluster::get(&e2e, &ns, name).await?;
        ensure(status_i64(&object, "deadLettered") == 0, || format!("tasks were dead-lettered: {}", summary(&object)))?;
        Ok(())
    })
    .await;
}

/// What a server says of itself.
#[derive(Debug)]
enum Server {
    /// In the quorum (`srvr` mode leader or follower).
    Serving,
    /// The process answers `ruok` but serves nobody (looking for a leader), with `srvr`'s reason.
    OutOfQuorum(String),
    /// Nothing answers (the pod is gone, starting, or its server stopped).
    Down(String),
}

async fn probe(e2e: &E2e, ns: &str, pod: &str) -> Server {
    let script = "if why=$(zookeeper-ready --serving); then echo serving; elif zookeeper-ready >/dev/null; then \
                  echo \"out $why\"; else echo down; fi";
    let args = ["exec", "-n", ns, pod, "--", "bash", "-c", script];
    let exec = e2e.tools.kubectl(&args);
    match tokio::time::timeout(Duration::from_secs(10), exec).await {
        Ok(Ok(out)) if out.trim() == "serving" => Server::Serving,
        Ok(Ok(out)) if out.starts_with("out ") => Server::OutOfQuorum(out[4..].trim().to_string()),
        Ok(Ok(out)) => Server::Down(out.trim().to_string()),
        Ok(Err(error)) => Server::Down(error.to_string()),
        Err(_) => Server::Down("kubectl exec did not return within 10 s".into()),
    }
}

/// Every server's state, asked at once.
async fn probe_all(e2e: &E2e, ns: &str, servers: &[String]) -> [Server; SERVERS] {
    let (a, b, c) = tokio::join!(probe(e2e, ns, &servers[0]), probe(e2e, ns, &servers[1]), probe(e2e, ns, &servers[2]));
    [a, b, c]
}

/// The pod's uid and address, None while it has no address (or does not exist).
async fn identity(pods: &Api<Pod>, name: &str) -> Result<Option<(String, String)>> {
    let pod = pods.get_opt(name).await.context(|| format!("reading pod {name}"))?;
    Ok(pod.and_then(|pod| Some((pod.metadata.uid?, pod.status?.pod_ip?))))
}

/// Whether the pod `name` is still the one with `uid`, and not on its way out (a deleted pod
/// keeps its uid while its server shuts down).
async fn untouched(pods: &Api<Pod>, name: &str, uid: &str) -> Result<bool> {
    let pod = pods.get_opt(name).await.context(|| format!("reading pod {name}"))?;
    Ok(pod.is_some_and(|pod| pod.metadata.uid.as_deref() == Some(uid) && pod.metadata.deletion_timestamp.is_none()))
}

/// Done once the StatefulSet's update is complete, every server was replaced and is Ready.
async fn rolled(
    e2e: &E2e,
    ns: &str,
    name: &str,
    pods: &Api<Pod>,
    servers: &[String],
    before: &[(String, String)],
) -> Result<Poll<()>> {
    let sts = Api::<StatefulSet>::namespaced(e2e.client.clone(), ns)
        .get(&format!("{name}-zookeeper"))
        .await
        .context(|| "reading the ZooKeeper StatefulSet".into())?;
    let status = sts.status.unwrap_or_default();
    if status.update_revision.is_none()
        || status.update_revision != status.current_revision
        || status.updated_replicas != Some(SERVERS as i32)
    {
        return Ok(Poll::NotYet(format!(
            "{} of {SERVERS} updated (revision {:?}, current {:?})",
            status.updated_replicas.unwrap_or(0),
            status.update_revision,
            status.current_revision
        )));
    }
    for (server, (uid, _)) in servers.iter().zip(before) {
        let pod = pods.get(server).await.context(|| format!("reading pod {server}"))?;
        if pod.metadata.uid.as_ref() == Some(uid) || !ready(&pod) {
            return Ok(Poll::NotYet(format!("{server} not yet replaced and Ready")));
        }
    }
    Ok(Poll::Done(()))
}

fn invalid(message: String) -> Error {
    Error::Invalid { context: "the ZooKeeper pods".into(), message }
}
