//! Faults a task meets on its way, each reached by construction rather than by luck: connection
//! faults injected through a loopback proxy in front of ZooKeeper (support/proxy.rs; connections
//! reset, frozen or refused at the moment the test chooses), revocations a busy worker must
//! notice, and a payload that is missing.

mod support;

use std::time::Duration;

use support::{
    assert_client_succeeded, eventually_async, scrape, seed_result, settle, wait_ready, wait_single_leader, MasterOpts,
    Proxy, TestCluster, LONG,
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

/// The proxy itself: it relays, holds replies (the request is applied, its reply waits), freezes
/// both directions, holds requests from a chosen one on, resets (the client reconnects through it) and refuses on command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_relays_holds_freezes_resets_and_refuses_on_command() {
    let tc = TestCluster::new("proxy").await;
    let direct = tc.inspector().await;
    let proxy = Proxy::start(&tc.hosts).await;
    let via = support::Inspector::connect(&tc.zk_via(&proxy), LONG).await;
    assert_eq!((proxy.accepted(), proxy.connections()), (1, 1), "one session, one relayed connection");
    let quiet = Duration::from_millis(500);

    proxy.hold_replies();
    let create = via.client.create(
        "/held",
        b"",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    );
    let held = tokio::time::timeout(quiet, create).await;
    assert!(held.is_err(), "the reply should be held: {held:?}");
    eventually_async("the held create to be applied anyway", LONG, || async {
        direct.exists("/held").await.then_some(())
    })
    .await;
    assert_eq!(proxy.reset().await, 1, "the held connection is reset");
    proxy.thaw();
    eventually_async("the client to reconnect through the proxy", LONG, || async {
        (proxy.accepted() == 2 && via.client.check_stat("/held").await.is_ok_and(|s| s.is_some())).then_some(())
    })
    .await;

    proxy.freeze();
    let frozen = tokio::time::timeout(quiet, via.client.check_stat("/held")).await;
    assert!(frozen.is_err(), "nothing moves while frozen: {frozen:?}");
    proxy.thaw();
    assert!(via.client.check_stat("/held").await.is_ok_and(|s| s.is_some()), "reads go through after the thaw");

    // A trap on a path: the read of it and everything after wait unsent, earlier ones pass.
    proxy.hold_requests_from(format!("{}/trapped", tc.chroot).as_bytes());
    assert!(via.client.check_stat("/held").await.is_ok_and(|s| s.is_some()), "other requests pass");
    let create = via.client.create(
        "/trapped",
        b"",
        &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
    );
    tokio::pin!(create);
    assert!(tokio::time::timeout(quiet, &mut create).await.is_err(), "the trapped create should wait");
    assert!(proxy.trapped() && !direct.exists("/trapped").await, "the trapped create must not reach the server");
    proxy.thaw();
    assert!(create.await.is_ok(), "the trapped create goes through after the thaw");

    proxy.refuse(true);
    proxy.reset().await;
    eventually_async("the client's new connections to be refused", LONG, || async {
        (proxy.accepted() >= 4 && proxy.connections() == 0).then_some(())
    })
    .await;
    proxy.refuse(false);
    eventually_async("the client to reconnect once accepted again", LONG, || async {
        via.client.check_stat("/held").await.is_ok_and(|s| s.is_some()).then_some(())
    })
    .await;
    assert_eq!(proxy.connections(), 1);
}

/// A client's connection is reset right after its session opened, while its first check of the
/// roots waits for a reply that will never come: the session lives on, so `submit` must
/// reconnect within it, create or find the roots and run its task, not exit 3 as if ZooKeeper
/// were unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_connection_is_reset_during_the_root_checks_reconnects_and_succeeds() {
    // The session opens (connect response, ping reply); the first root check waits.
    submit_reset_after_replies("roots-reset", 2).await;
}

/// The same once the roots are checked, while the client reads the task settings
/// (`/taskcluster/config`): replies to the connect, the ping and the eight root checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_connection_is_reset_while_reading_the_settings_reconnects_and_succeeds() {
    submit_reset_after_replies("config-reset", 2 + paths_checked_at_start()).await;
}

/// The roots a client checks one after the other when it starts (docs/protocol.md).
fn paths_checked_at_start() -> u64 {
    [
        "/master",
        "/tasks",
        "/data",
        "/workers",
        "/taskcluster",
        "/taskcluster/attempts",
        "/taskcluster/deadletter",
        "/taskcluster/inbox",
    ]
    .len() as u64
}

/// `submit --wait` through a proxy that lets `replies` replies through, holds the next, then
/// resets the connection: the client must ride it out within its session.
async fn submit_reset_after_replies(name: &str, replies: u64) {
    let tc = TestCluster::new(name).await;
    let _master = tc.master("m1");
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;
    let proxy = Proxy::start(&tc.hosts).await;
    proxy.hold_replies_after(replies);

    let zk = tc.zk_via(&proxy);
    let payload = [format!("after a reset once {replies} replies came")];
    let args = ["submit", "--zk", &zk, "--session-timeout", support::SESSION_TIMEOUT, "--wait", &payload[0]];
    let mut client = tc.run("client", &args);
    eventually_async("the client to connect through the proxy", LONG, || async {
        (proxy.connections() > 0).then_some(())
    })
    .await;
    // The request after the last reply let through has reached the server; its reply is held.
    // Well within the 4 s session timeout and the client's patience with a silent connection.
    settle(Duration::from_millis(500)).await;
    assert!(client.is_running(), "the client must wait for the held reply\n{}", client.describe());
    assert_eq!(proxy.reset().await, 1, "the client's connection is reset");
    proxy.thaw();

    assert_client_succeeded(&mut client, &payload).await;
    assert!(proxy.accepted() >= 2, "the client should have reconnected through the proxy");
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

/// The request that lists `/workers` (getChildren2, opcode 12, then the path) as it goes on
/// the wire from a client whose root is `chroot`.
fn list_workers_request(chroot: &str) -> Vec<u8> {
    let path = format!("{chroot}/workers");
    let mut bytes = 12i32.to_be_bytes().to_vec();
    bytes.extend((path.len() as i32).to_be_bytes());
    bytes.extend(path.as_bytes());
    bytes
}

/// Which of `workers` hold `task` in their znode, and their znodes' versions.
async fn holders(zk: &support::Inspector, workers: &[&str], task: &str) -> (Vec<String>, Vec<i32>) {
    let mut held = Vec::new();
    let mut versions = Vec::new();
    for wid in workers {
        let path = format!("/workers/{wid}");
        if zk.data(&path).await.as_deref() == Some(task.as_bytes()) {
            held.push(wid.to_string());
        }
        versions.push(zk.stat(&path).await.map_or(-1, |s| s.version));
    }
    (held, versions)
}

/// A task finishes, is collected and is submitted again under the same id while the leader
/// rebuilds its view, between its read of the tasks and its read of the workers: the rebuild
/// sees the old task unfinished and its worker already free, and the task's three events wait
/// in the watches. A leader that plans before applying them assigns the new task, then takes
/// the old task's result and deletion for the new one's and assigns it again. The rebuild is
/// stopped there by holding its listing of `/workers` at the proxy; the workers are seed-style
/// ones that this test plays (task id in the znode), so nothing but the leader writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_and_resubmitted_during_a_rebuild_is_assigned_once() {
    let tc = TestCluster::new("rebuild-window").await;
    let zk = tc.inspector().await;
    let proxy = Proxy::start(&tc.hosts).await;
    let master = tc.master_at(&tc.zk_via(&proxy), "m1", &MasterOpts::default());
    wait_single_leader(&[&master], LONG).await;
    let workers = ["w1", "w2"];
    for wid in workers {
        zk.put(&format!("/workers/{wid}"), b"", true).await;
    }
    create_task(&zk, "t", "first run").await;
    let first = eventually_async("the first run of t to be assigned", LONG, || async {
        let (held, _) = holders(&zk, &workers, "t").await;
        (held.len() == 1).then(|| held[0].clone())
    })
    .await;

    proxy.hold_requests_from(&list_workers_request(&tc.chroot));
    let accepted = proxy.accepted();
    proxy.reset().await;
    eventually_async("the leader's rebuild to reach its listing of /workers", LONG, || async {
        (proxy.accepted() > accepted && proxy.trapped()).then_some(())
    })
    .await;
    // Within the leader's session timeout (it sends no ping meanwhile): the first run ends as a
    // seed worker ends it, the client collects it and submits t again.
    zk.set("/tasks/t", b"first result").await;
    zk.set(&format!("/workers/{first}"), b"").await;
    zk.client.delete("/tasks/t", None).await.expect("collect t");
    zk.client.delete("/data/t", None).await.expect("collect t's payload");
    create_task(&zk, "t", "second run").await;
    let (_, before) = holders(&zk, &workers, "t").await;
    proxy.thaw();

    eventually_async("the second run of t to be assigned", LONG, || async {
        (!holders(&zk, &workers, "t").await.0.is_empty()).then_some(())
    })
    .await;
    // Long enough for a second assignment to follow the first (the leader turns every 100 ms).
    for _ in 0..20 {
        let (held, versions) = holders(&zk, &workers, "t").await;
        let writes: i32 = versions.iter().zip(&before).map(|(after, before)| after - before).sum();
        assert!(held.len() <= 1, "the second run of t is held by {held:?} at once");
        assert_eq!(writes, 1, "one assignment of the second run, not {writes} (versions {before:?} -> {versions:?})");
        settle(Duration::from_millis(100)).await;
    }
    master.assert_no_panic();
}

const ABANDONED: &str = "taskcluster_worker_tasks_total{outcome=\"abandoned\"}";

/// Waits until the task has its result and returns it, without collecting it.
async fn result_of(zk: &support::Inspector, id: &str, what: &str) -> Vec<u8> {
    let path = format!("/tasks/{id}");
    eventually_async(what, LONG, || async { zk.data(&path).await.filter(|r| !r.is_empty()) }).await
}

/// A busy worker's connection goes silent (frozen, shorter than its session timeout) while the
/// leader revokes its task for running too long. The revocation's notification is lost with
/// the connection, so after reconnecting the worker must look again: it abandons the revoked
/// task instead of running it to its end, and the next task assigned to it runs at once
/// rather than timing out behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_revoked_while_disconnected_abandons_the_task_and_takes_the_next() {
    let tc = TestCluster::new("zombie-worker").await;
    let zk = tc.inspector().await;
    let proxy = Proxy::start(&tc.hosts).await;
    let opts = MasterOpts { task_timeout: "2s".into(), max_attempts: 1, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    // A long session: the freeze outlasts the client's patience with a silent connection
    // (it tries a new one), never the session.
    let opts = support::WorkerOpts { session_timeout: "8s".into(), ..support::WorkerOpts::handler("sleep") };
    let mut worker = tc.worker_at(&tc.zk_via(&proxy), "w1", &opts);
    wait_ready(&mut worker).await;
    wait_single_leader(&[&master], LONG).await;
    let session = zk.stat("/workers/w1").await.expect("w1 registered").ephemeral_owner;

    // A task that would run for a minute.
    create_task(&zk, "long", "60000").await;
    eventually_async("w1 to run the long task", LONG, || async {
        (scrape(&worker).get("taskcluster_worker_busy") == Some(1.0)).then_some(())
    })
    .await;
    let accepted = proxy.accepted();
    proxy.freeze();
    // The leader revokes it (dead letter: one attempt only) while w1 hears nothing, and w1's
    // client gives up on the silent connection and tries a new one (held too).
    let letter = result_of(&zk, "long", "the leader to revoke the long task").await;
    assert!(letter.starts_with(b"\0FAILED\0 "), "expected the dead letter, got {:?}", String::from_utf8_lossy(&letter));
    eventually_async("w1 to try a new connection", LONG, || async { (proxy.accepted() > accepted).then_some(()) })
        .await;
    proxy.thaw();

    create_task(&zk, "next", "100").await;
    let result = result_of(&zk, "next", "the next task to get its result").await;
    assert_eq!(String::from_utf8_lossy(&result), "100", "the next task must run, not time out behind the revoked one");
    let w = scrape(&worker);
    assert!(w.counter(ABANDONED) >= 1.0, "w1 should have abandoned the revoked task: {:?}", w.keys());
    assert_eq!(
        zk.stat("/workers/w1").await.map(|s| s.ephemeral_owner),
        Some(session),
        "w1 must have kept its session (a reconnection, not an expiry)"
    );
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// A worker runs a task that a seed-style master assigned (task id in its znode, no inbox
/// entry); our leader then revokes it for running too long. No entry's deletion tells the
/// worker, so it must notice from its own znode: it abandons the task and is free for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_notices_the_revocation_of_a_task_that_came_without_an_entry() {
    let tc = TestCluster::new("revoke-version-guard").await;
    let zk = tc.inspector().await;
    let mut worker = tc.worker("w1", "sleep");
    wait_ready(&mut worker).await;
    create_task(&zk, "long", "60000").await;
    zk.set("/workers/w1", b"long").await;
    eventually_async("w1 to run the seed-style assignment", LONG, || async {
        (scrape(&worker).get("taskcluster_worker_busy") == Some(1.0)).then_some(())
    })
    .await;

    let opts = MasterOpts { task_timeout: "2s".into(), max_attempts: 1, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    let letter = result_of(&zk, "long", "the leader to revoke the long task").await;
    assert!(letter.starts_with(b"\0FAILED\0 "), "expected the dead letter, got {:?}", String::from_utf8_lossy(&letter));
    create_task(&zk, "next", "100").await;
    let result = result_of(&zk, "next", "the next task to get its result").await;
    assert_eq!(String::from_utf8_lossy(&result), "100", "the next task must run, not time out behind the revoked one");
    let w = scrape(&worker);
    assert!(w.counter(ABANDONED) >= 1.0, "w1 should have abandoned the revoked task: {:?}", w.keys());
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// A task whose payload is missing (a foreign client created `/tasks/<id>` without
/// `/data/<id>`, or deleted the payload) fails once, with a message that says so: the payload
/// is written before its task and will not appear, so retries cannot help, however many
/// attempts the master allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_payload_is_missing_fails_once_and_says_why() {
    let tc = TestCluster::new("missing-payload").await;
    let zk = tc.inspector().await;
    let master = tc.master_with("m1", &MasterOpts { max_attempts: 20, ..MasterOpts::default() });
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;

    // Not of the form that carries its payload in the name: the worker must read /data.
    zk.put("/tasks/no-payload", b"", false).await;
    let result = result_of(&zk, "no-payload", "the task without a payload to get a result").await;
    let text = String::from_utf8_lossy(&result);
    assert!(text.starts_with("\0FAILED\0 "), "expected a failure, got {text:?}");
    assert!(text.contains("/data/no-payload is missing"), "the failure should name the missing payload: {text:?}");
    assert!(text.contains("not retried"), "the failure should say it was not retried: {text:?}");
    let letter = zk.data("/taskcluster/deadletter/no-payload").await.expect("the dead letter is recorded");
    let letter: serde_json::Value = serde_json::from_slice(&letter).expect("the dead letter is JSON");
    assert_eq!(letter["attempts"], 1, "a missing payload is not retried: {letter}");
    let w = scrape(&worker);
    assert_eq!(w.counter("taskcluster_worker_tasks_total{outcome=\"failed\"}"), 1.0, "runs of the task");
    master.assert_no_panic();
    worker.assert_no_panic();
}
