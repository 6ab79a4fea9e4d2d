//! The election under `/master` shared with foreign contenders: every ephemeral sequential
//! znode there is a proposal (the seed's `n_…`, Curator's `_c_…-latch-…`, ours), the lowest
//! sequence number leads, and a persistent leftover that can never go away blocks nobody.

mod support;

use std::time::Duration;

use support::{eventually, eventually_async, is_leader, settle, wait_http_ok, TestCluster, LONG};
use zookeeper_client::{Acls, CreateMode};

async fn propose(zk: &support::Inspector, name: &str, mode: CreateMode) -> String {
    let options = mode.with_acls(Acls::anyone_all());
    let (_, sequence) = zk.client.create(&format!("/master/{name}"), b"{}", &options).await.expect("create a proposal");
    format!("{name}{sequence}")
}

/// A seed-style master's proposal (`/master/n_…`, ephemeral) with the lowest sequence number
/// leads: our master waits behind it instead of leading beside it, and takes over when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_master_ahead_in_the_election_leads_alone() {
    let tc = TestCluster::new("election-seed").await;
    let zk = tc.inspector().await;
    zk.put("/master", b"", false).await;
    let seed = propose(&zk, "n_", CreateMode::EphemeralSequential).await;

    let mut ours = tc.master("m1");
    wait_http_ok(&mut ours, "/readyz", LONG).await;
    eventually_async("our master to propose itself", LONG, || async {
        (zk.children("/master").await.len() == 2).then_some(())
    })
    .await;
    // Our master has its proposal in place; leading now would mean two leaders.
    settle(Duration::from_secs(2)).await;
    assert_eq!(is_leader(&ours), Some(false), "our master leads beside the seed master {seed}");
    let status = tc.status().await;
    assert_ne!(status["leader"]["id"], "m1", "status names the wrong leader: {status}");

    zk.client.delete(&format!("/master/{seed}"), None).await.expect("the seed master leaves");
    eventually("our master to take over", LONG, || (is_leader(&ours) == Some(true)).then_some(())).await;
    ours.assert_no_panic();
}

/// A persistent znode with a sequence number under `/master` (a tool's leftover) has no owner
/// that could ever leave: it must not stop our masters from electing a leader that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_leftover_in_the_election_blocks_nobody() {
    let tc = TestCluster::new("election-leftover").await;
    let zk = tc.inspector().await;
    zk.put("/master", b"", false).await;
    let leftover = propose(&zk, "x-latch-", CreateMode::PersistentSequential).await;

    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "seed");
    support::wait_ready(&mut worker).await;
    eventually("a leader despite the leftover", LONG, || (is_leader(&master) == Some(true)).then_some(())).await;
    let payloads = vec!["still served".to_string()];
    let mut client = tc.submit_wait("client", &payloads);
    support::assert_client_succeeded(&mut client, &payloads).await;
    assert!(!zk.exists(&format!("/master/{leftover}")).await, "the leftover {leftover} should be removed");
    master.assert_no_panic();
}
