//! Connection faults injected through a loopback proxy in front of ZooKeeper (support/proxy.rs):
//! connections reset, frozen (a silent network) or refused on command, at the moment the test
//! chooses, so each test reaches its interleaving by construction rather than by luck.

mod support;

use std::time::Duration;

use support::{
    eventually_async, seed_result, settle, wait_ready, wait_single_leader, MasterOpts, Proxy, TestCluster, LONG,
};

/// Creates task `id` as a foreign client would: the payload first, then the task.
async fn create_task(zk: &support::Inspector, id: &str, payload: &str) {
    zk.put(&format!("/data/{id}"), payload.as_bytes(), false).await;
    zk.put(&format!("/tasks/{id}"), b"", false).await;
}

/// Waits for the result of task `id`, then collects it (task and payload deleted).
async fn collect(zk: &support::Inspector, id: &str, what: &str) -> Vec<u8> {
    let path = format!("/tasks/{id}");
    let result = eventually_async(what, LONG, || async { zk.data(&path).await.filter(|r| !r.is_empty()) }).await;
    zk.client.delete(&path, None).await.expect("collect the task");
    zk.client.delete(&format!("/data/{id}"), None).await.expect("collect the payload");
    result
}

/// Every reconnection was followed by the watches' own session events, never only found out
/// by the leader's periodic check for unheard changes (the backstop).
fn assert_heard_every_reconnection(master: &support::Proc) {
    let log = master.stderr();
    assert!(
        !log.contains("changes went unheard"),
        "the leader missed a reconnection and needed its periodic check to notice\n{}",
        master.describe()
    );
}

/// The leader's connection is reset a hundred times while tasks keep coming; after every reset
/// the leader still hears of a new task and has it run. zookeeper-client restores no persistent
/// watch on reconnection, so each reconnection must lead to watches added again and a rebuild,
/// however the session's state changes reach the leader's loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reset_a_hundred_times_still_hears_of_every_new_task() {
    let tc = TestCluster::new("leader-resets").await;
    let zk = tc.inspector().await;
    let proxy = Proxy::start(&tc.hosts).await;
    let master = tc.master_at(&tc.zk_via(&proxy), "m1", &MasterOpts::default());
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;
    wait_single_leader(&[&master], LONG).await;

    for round in 0..100 {
        let id = format!("r{round}");
        let payload = format!("after reset {round}");
        let accepted = proxy.accepted();
        // Every other round the reset lands while the leader is busy with the new task.
        if round % 2 == 1 {
            create_task(&zk, &id, &payload).await;
        }
        proxy.reset().await;
        eventually_async("the master to reconnect through the proxy", LONG, || async {
            (proxy.accepted() > accepted && proxy.connections() > 0).then_some(())
        })
        .await;
        if round % 2 == 0 {
            create_task(&zk, &id, &payload).await;
        }
        let result = collect(&zk, &id, &format!("task {id} to get its result after reset {round}")).await;
        assert_eq!(String::from_utf8_lossy(&result), seed_result(&payload), "result of task {id}");
    }
    assert_heard_every_reconnection(&master);
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// The reconnection lands while the leader's loop is busy: the leader is stopped (SIGSTOP) past
/// its stall threshold while its connection is reset and new connections are refused, so on
/// resuming it first proves its leadership with a write that can only go out once the session
/// is back. Disconnected and SyncConnected both happen during that write; a leader that reads
/// only the latest session state sees SyncConnected alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_connection_comes_back_while_it_is_busy_still_hears_of_new_tasks() {
    let tc = TestCluster::new("leader-busy-reset").await;
    let zk = tc.inspector().await;
    let proxy = Proxy::start(&tc.hosts).await;
    let master = tc.master_at(&tc.zk_via(&proxy), "m1", &MasterOpts::default());
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;
    wait_single_leader(&[&master], LONG).await;

    for round in 0..5 {
        let id = format!("b{round}");
        let payload = format!("after busy reset {round}");
        proxy.refuse(true);
        master.pause();
        proxy.reset().await;
        // Past the stall threshold (a third of the 4 s session timeout), within the session.
        settle(Duration::from_millis(1_600)).await;
        master.resume();
        settle(Duration::from_millis(300)).await;
        let accepted = proxy.accepted();
        proxy.refuse(false);
        eventually_async("the master to reconnect through the proxy", LONG, || async {
            (proxy.accepted() > accepted && proxy.connections() > 0).then_some(())
        })
        .await;
        create_task(&zk, &id, &payload).await;
        let result = collect(&zk, &id, &format!("task {id} to get its result after busy reset {round}")).await;
        assert_eq!(String::from_utf8_lossy(&result), seed_result(&payload), "result of task {id}");
    }
    assert_heard_every_reconnection(&master);
    master.assert_no_panic();
    worker.assert_no_panic();
}
