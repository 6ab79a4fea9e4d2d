//! The inbox extension (docs/protocol.md): the leader announces each assignment to our workers
//! with an entry in the worker's inbox, which lives exactly as long as the registration it
//! belongs to; a master that writes no entries (seed style) is still served.

mod support;

use support::{
    assert_client_succeeded, assert_tree_drained, eventually_async, seed_result, wait_ready, Inspector, Proc,
    TestCluster, LONG,
};

const INBOX: &str = "/taskcluster/inbox";

/// The inbox of the current registration of `wid`: `<wid>@<session>`, the registration's
/// ephemeral owner. None while the worker is not registered.
async fn inbox_of(zk: &Inspector, wid: &str) -> Option<String> {
    let owner = zk.stat(&format!("/workers/{wid}")).await?.ephemeral_owner;
    Some(format!("{INBOX}/{wid}@{owner:016x}"))
}

async fn registered_inbox(zk: &Inspector, worker: &mut Proc, wid: &str) -> String {
    wait_ready(worker).await;
    let dir = inbox_of(zk, wid).await.unwrap_or_else(|| panic!("{wid} is ready but not registered"));
    assert!(zk.exists(&dir).await, "{dir} is not created with the registration of {wid}");
    dir
}

/// While a task runs, the worker's znode holds its id (the seed's assignment) and the inbox
/// holds an entry of the same name; the completion removes the entry. A registration that
/// ends leaves no inbox behind: a killed worker's is removed by the leader, a stopped one's by
/// the worker itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_are_announced_in_an_inbox_that_lives_with_the_registration() {
    let tc = TestCluster::new("inbox-lifecycle").await;
    let zk = tc.inspector().await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "sleep");
    let first = registered_inbox(&zk, &mut worker, "w1").await;

    let task = vec!["1500".to_string()];
    let mut client = tc.submit_wait("client", &task);
    let (entry, held) = eventually_async("the assignment to be announced", LONG, || async {
        let entries = zk.try_children(&first).await?;
        let held = zk.data("/workers/w1").await.filter(|d| !d.is_empty())?;
        Some((entries, String::from_utf8_lossy(&held).into_owned()))
    })
    .await;
    assert_eq!(entry, vec![held], "the inbox should announce exactly the task the znode holds");
    assert_client_succeeded(&mut client, &task).await;
    assert_eq!(zk.children(&first).await, Vec::<String>::new(), "the completion should remove the entry");

    worker.kill();
    let mut again = tc.worker("w1", "sleep");
    let second = registered_inbox(&zk, &mut again, "w1").await;
    assert_ne!(first, second, "a new registration should get a new inbox");
    eventually_async("the leader to remove the killed registration's inbox", LONG, || async {
        (!zk.exists(&first).await).then_some(())
    })
    .await;

    again.signal(libc::SIGTERM);
    assert_eq!(again.exit_code(LONG).await, 0, "the worker should stop cleanly\n{}", again.describe());
    eventually_async("the stopped worker's inbox to be removed", LONG, || async {
        zk.try_children(INBOX).await.filter(Vec::is_empty)
    })
    .await;
    master.assert_no_panic();
    again.assert_no_panic();
}

/// No master of ours: the test assigns like the seed's master, writing the task id into the
/// worker's znode and nothing into its inbox. The worker still runs the task (its idle re-read
/// finds it) and completes it the seed's way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_a_master_that_writes_no_inbox_entries() {
    let tc = TestCluster::new("inbox-seed-master").await;
    let zk = tc.inspector().await;
    let mut worker = tc.worker("w1", "seed");
    registered_inbox(&zk, &mut worker, "w1").await;

    for (id, payload) in [("t1", "hello seed master"), ("t2", "and once more")] {
        zk.put(&format!("/data/{id}"), payload.as_bytes(), false).await;
        zk.put(&format!("/tasks/{id}"), b"", false).await;
        zk.set("/workers/w1", id.as_bytes()).await;
        let result = eventually_async("the result of a seed-style assignment", LONG, || async {
            zk.data(&format!("/tasks/{id}")).await.filter(|r| !r.is_empty())
        })
        .await;
        assert_eq!(String::from_utf8_lossy(&result), seed_result(payload));
        assert_eq!(zk.data("/workers/w1").await.as_deref(), Some(b"".as_slice()), "the worker should clear its znode");
        zk.client.delete(&format!("/tasks/{id}"), None).await.expect("collect the task");
        zk.client.delete(&format!("/data/{id}"), None).await.expect("collect the payload");
    }
    assert_tree_drained(&tc).await;
    worker.assert_no_panic();
}
