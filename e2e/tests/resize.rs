//! Resizing a ZooKeeper ensemble while tasks flow (docs/e2e.md): `zookeeper.replicas` goes
//! 1 → 3 → 5 → 3 → 1. After each change every server of the new size is a voting member of
//! one ensemble (each one's `conf` lists exactly the servers 1..N, one of them leads), no
//! server beyond it runs, and the cluster is Ready. Every task streamed across it succeeds.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use taskcluster_e2e::env::E2e;
use taskcluster_e2e::error::KubeContext;
use taskcluster_e2e::jobs::{all_succeeded, job_outcome, stream_tasks};
use taskcluster_e2e::taskcluster::{self, component_selector, status_i64, summary, wait_ready};
use taskcluster_e2e::wait::{self, Poll, POLL};
use taskcluster_e2e::{ensure, scenario, Result};

const TASKS: usize = 2500;
/// Each step adds or removes servers that must start, sync and be committed.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn the_ensemble_grows_to_five_and_shrinks_to_one_while_tasks_flow() {
    scenario("resize", |e2e, ns| async move {
        let name = "resized";
        let mut object = taskcluster::object(&e2e, &ns, name, 2, 2, 1);
        // Slow tasks, so that the work outlasts every step.
        object["spec"]["exec"] = json!(taskcluster::SLOW_TASKS);
        taskcluster::apply(&e2e, &object).await?;
        wait_ready(&e2e, &ns, name).await?;
        settled(&e2e, &ns, name, 1).await?;
        stream_tasks(&e2e, &ns, name, "resize-submit", TASKS).await?;

        for size in [3, 5, 3, 1] {
            let patch = json!({"spec": {"zookeeper": {"replicas": size}}}).to_string();
            e2e.tools.kubectl(&["patch", "taskcluster", name, "-n", &ns, "--type", "merge", "-p", &patch]).await?;
            settled(&e2e, &ns, name, size).await?;
            wait_ready(&e2e, &ns, name).await?;
            eprintln!("the ensemble serves with {size} members");
        }
        ensure(job_outcome(&e2e, &ns, "resize-submit").await?.is_none(), || {
            "the submit Job ended before the resizing did: the resizing did not meet running work".into()
        })?;

        all_succeeded(&e2e, &ns, "resize-submit", TASKS, Duration::from_secs(900), "streamed across the resizing")
            .await?;
        let object = taskcluster::get(&e2e, &ns, name).await?;
        ensure(status_i64(&object, "deadLettered") == 0, || format!("tasks were dead-lettered: {}", summary(&object)))?;
        Ok(())
    })
    .await;
}

/// Waits until exactly the servers 1..=size run, each one's membership is exactly them, and
/// one of them leads.
async fn settled(e2e: &E2e, ns: &str, name: &str, size: usize) -> Result<()> {
    let wanted: BTreeSet<usize> = (1..=size).collect();
    wait::until(&format!("the ensemble to have exactly {size} members"), STEP_TIMEOUT, POLL, || async {
        let pods = Api::<Pod>::namespaced(e2e.client.clone(), ns)
            .list(&ListParams::default().labels(&component_selector(name, "zookeeper")))
            .await
            .context(|| "listing the ZooKeeper pods".into())?;
        let running: BTreeSet<String> = pods.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let expected: BTreeSet<String> = (0..size).map(|i| format!("{name}-zookeeper-{i}")).collect();
        if running != expected {
            return Ok(Poll::NotYet(format!("pods {running:?}")));
        }
        let mut leaders = 0;
        for (ordinal, pod) in expected.iter().enumerate() {
            let Some((members, mode)) = membership(e2e, ns, pod).await else {
                return Ok(Poll::NotYet(format!("{pod} does not answer")));
            };
            if members != wanted {
                return Ok(Poll::NotYet(format!("server {} has members {members:?}", ordinal + 1)));
            }
            match mode.as_str() {
                "leader" => leaders += 1,
                "follower" => {},
                other => return Ok(Poll::NotYet(format!("server {} is {other:?}", ordinal + 1))),
            }
        }
        Ok(if leaders == 1 { Poll::Done(()) } else { Poll::NotYet(format!("{leaders} leaders")) })
    })
    .await
}

/// What server `pod` says of itself: the voting members of its configuration (`conf`) and its
/// mode (`srvr`); None while it does not answer.
async fn membership(e2e: &E2e, ns: &str, pod: &str) -> Option<(BTreeSet<usize>, String)> {
    let ask = |word: &'static str| {
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/2181 && printf {word} >&3 && timeout 2 cat <&3");
        async move { e2e.tools.kubectl(&["exec", "-n", ns, pod, "--", "bash", "-c", &script]).await.ok() }
    };
    let conf = ask("conf").await?;
    let srvr = ask("srvr").await?;
    let members = conf
        .lines()
        .filter_map(|line| line.strip_prefix("server.")?.split_once('='))
        .filter(|(_, address)| !address.contains(":observer"))
        .filter_map(|(id, _)| id.parse().ok())
        .collect();
    let mode = srvr.lines().find_map(|line| line.strip_prefix("Mode: "))?.trim().to_string();
    Some((members, mode))
}
