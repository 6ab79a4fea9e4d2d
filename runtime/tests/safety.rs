//! Safety under interleavings that a user meets: a revocation that must not leave a task on two
//! live workers, an empty result that is still an answer, and defaults that let several
//! masters and workers share one machine. Each test forces its interleaving by construction.

mod support;

use std::time::Duration;

use support::{
    eventually_async, scrape, settle, wait_ready, Journal, MasterOpts, ResultLine, TestCluster, WorkerOpts, LONG,
};

/// A worker runs a task that a seed-style master assigned (task id in its znode, no inbox
/// entry), then our leader takes over with a short task timeout and revokes it. The revocation
/// must free the worker before the task goes to another one: at no moment may two live
/// workers hold the task, and the dead letter is the task's only result (written once, never
/// overwritten by the revoked worker's late success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_task_assigned_without_an_inbox_entry_is_never_held_twice() {
    let tc = TestCluster::new("revoke-no-entry").await;
    let zk = tc.inspector().await;
    let journal = Journal::new(tc.dir());
    let mut w1 = tc.worker_with("w1", &WorkerOpts::exec(journal.exec_command(), "5"));
    wait_ready(&mut w1).await;

    zk.put("/data/t", b"slow task", false).await;
    zk.put("/tasks/t", b"", false).await;
    zk.set("/workers/w1", b"t").await;
    eventually_async("w1 to start the seed-style assignment", LONG, || async { journal.open_run("w1") }).await;

    let opts = MasterOpts { task_timeout: "2s".into(), max_attempts: 3, ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    let mut w2 = tc.worker_with("w2", &WorkerOpts::exec(journal.exec_command(), "5"));
    wait_ready(&mut w2).await;

    // Sample both registrations until the task has its result.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (a, b) = (zk.data("/workers/w1").await, zk.data("/workers/w2").await);
        assert!(
            !(a.as_deref() == Some(b"t".as_slice()) && b.as_deref() == Some(b"t".as_slice())),
            "task t is held by w1 and w2 at once\n{}",
            master.describe()
        );
        if zk.data("/tasks/t").await.is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "task t got no result\n{}", master.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both workers idle again: whatever they ran has ended, and nothing may have overwritten
    // the result.
    eventually_async("both workers to be idle", LONG, || async {
        let idle = |p: &support::Proc| scrape(p).get("taskcluster_worker_busy") == Some(0.0);
        (idle(&w1) && idle(&w2)).then_some(())
    })
    .await;
    settle(Duration::from_secs(1)).await;
    let result = zk.data("/tasks/t").await.unwrap_or_default();
    assert!(result.starts_with(b"\0FAILED\0 "), "expected the dead letter, got {:?}", String::from_utf8_lossy(&result));
    let stat = zk.stat("/tasks/t").await.expect("the task is still there");
    assert_eq!(stat.version, 1, "the result was written {} times", stat.version);
    master.assert_no_panic();
    w1.assert_no_panic();
    w2.assert_no_panic();
}

/// A result is written once: a worker whose task got a result elsewhere while it ran (here a
/// foreign client's write) drops its own instead of overwriting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_is_never_overwritten_by_a_late_worker() {
    let tc = TestCluster::new("result-once").await;
    let zk = tc.inspector().await;
    let journal = Journal::new(tc.dir());
    let _master = tc.master("m1");
    let mut worker = tc.worker_with("w1", &WorkerOpts::exec(journal.exec_command(), "2"));
    wait_ready(&mut worker).await;

    zk.put("/data/t", b"late worker", false).await;
    zk.put("/tasks/t", b"", false).await;
    eventually_async("w1 to start the task", LONG, || async { journal.open_run("w1") }).await;
    zk.set("/tasks/t", b"the first result").await;
    eventually_async("w1 to finish its run", LONG, || async { journal.open_run("w1").is_none().then_some(()) }).await;
    eventually_async("w1 to be idle", LONG, || async {
        (scrape(&worker).get("taskcluster_worker_busy") == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(zk.data("/tasks/t").await.as_deref(), Some(b"the first result".as_slice()));
    assert_eq!(zk.stat("/tasks/t").await.map(|s| s.version), Some(1), "the result was overwritten");
    worker.assert_no_panic();
}

/// A task that vanishes while its client waits (another client or a tool deleted it) is
/// reported as failed; the client goes on waiting for the others and exits non-zero at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_task_fails_alone_and_the_client_waits_for_the_rest() {
    let tc = TestCluster::new("vanished").await;
    let zk = tc.inspector().await;
    let _master = tc.master("m1");
    let payloads: Vec<String> = (0..5).map(|i| format!("waits for a worker {i}")).collect();
    let mut client = tc.submit_wait("client", &payloads);
    // No worker yet: every task stays pending until one of them is deleted.
    let victim = eventually_async("the client's tasks to be submitted", LONG, || async {
        let tasks = zk.children("/tasks").await;
        (tasks.len() == payloads.len()).then(|| tasks[0].clone())
    })
    .await;
    zk.client.delete(&format!("/tasks/{victim}"), None).await.expect("delete one task");
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;

    let code = client.exit_code(LONG).await;
    assert_eq!(code, 1, "one task failed\n{}", client.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_eq!(lines.len(), payloads.len(), "one line per task\n{}", client.describe());
    for line in &lines {
        if line.id == victim {
            assert!(!line.ok && line.text.contains("vanished"), "the deleted task: {line:?}");
        } else {
            assert!(line.ok, "the other tasks succeed: {line:?}");
        }
    }
    client.assert_no_panic();
}

/// An empty payload echoed back, a blank line in a file, a command that prints nothing: each is
/// a result, and the client reports it as one instead of waiting for its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_result_is_an_answer() {
    let tc = TestCluster::new("empty-result").await;
    let _master = tc.master("m1");
    let mut echo = tc.worker("echo", "echo");
    wait_ready(&mut echo).await;

    let mut client = tc.submit("client", &["--wait", "--timeout", "60s", "", "not empty"]);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 0, "the client should get both results\n{}", client.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_eq!(lines.len(), 2, "one line per task\n{}", client.describe());
    let mut results: Vec<(bool, String)> = lines.into_iter().map(|l| (l.ok, l.text)).collect();
    results.sort();
    assert_eq!(results, vec![(true, "".into()), (true, "not empty".into())]);
    client.assert_no_panic();
}

/// A second worker started with a live worker's id waits for the id to be free, says once how
/// to fix it, and, stopped while waiting, leaves the live worker's registration alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_id_is_taken_waits_and_leaves_the_holder_alone() {
    let tc = TestCluster::new("duplicate-id").await;
    let zk = tc.inspector().await;
    let _master = tc.master("m1");
    let mut holder = tc.worker("dup", "seed");
    wait_ready(&mut holder).await;
    let owner = zk.stat("/workers/dup").await.expect("registered").ephemeral_owner;

    let mut second = tc.worker("dup", "seed");
    // Assignments to the holder change its znode, which the waiting worker watches.
    let payloads: Vec<String> = (0..20).map(|i| format!("busy holder {i}")).collect();
    let mut client = tc.submit_wait("client", &payloads);
    support::assert_client_succeeded(&mut client, &payloads).await;
    let hint = "give each worker a unique --id";
    eventually_async("the waiting worker to say how to fix it", LONG, || async {
        second.stderr().contains(hint).then_some(())
    })
    .await;
    assert_eq!(second.stderr().matches(hint).count(), 1, "the hint is logged once\n{}", second.describe());

    second.signal(libc::SIGTERM);
    assert_eq!(second.exit_code(LONG).await, 0, "the waiting worker should stop cleanly\n{}", second.describe());
    let now = zk.stat("/workers/dup").await.map(|s| s.ephemeral_owner);
    assert_eq!(now, Some(owner), "the holder's registration must survive the other worker's stop");
    holder.assert_no_panic();
    second.assert_no_panic();
}

/// The seed practical runs two masters and two workers on one machine. Without --id and
/// --listen, each process must still get an identity and endpoints of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_let_two_masters_and_two_workers_share_a_machine() {
    let tc = TestCluster::new("defaults").await;
    let zk = tc.inspector().await;
    let zk_arg = tc.zk();
    let base = ["--zk", zk_arg.as_str(), "--session-timeout", "4s"];
    let spawn = |name: &str, role: &str| {
        let mut args = vec![role];
        args.extend_from_slice(&base);
        tc.run(name, &args)
    };
    let mut masters = [spawn("m-a", "master"), spawn("m-b", "master")];
    let mut workers = [spawn("w-a", "worker"), spawn("w-b", "worker")];

    eventually_async("two masters contending and two workers registered", LONG, || async {
        let contenders = zk.children("/master").await.len();
        let registered = zk.children("/workers").await.len();
        (contenders == 2 && registered == 2).then_some(())
    })
    .await;
    for proc in masters.iter_mut().chain(workers.iter_mut()) {
        assert!(proc.is_running(), "{} exited\n{}", proc.name, proc.describe());
    }
    let payloads: Vec<String> = (0..6).map(|i| format!("shared machine {i}")).collect();
    let mut client = tc.submit_wait("client", &payloads);
    support::assert_client_succeeded(&mut client, &payloads).await;
    for proc in masters.iter().chain(workers.iter()) {
        proc.assert_no_panic();
    }
}

/// A worker whose run goes on far past the task timeout, with no leader to revoke it, reports
/// itself unhealthy (`/healthz` 503) so that Kubernetes restarts it, and healthy again once the
/// run has ended. A run our leader revokes ends at the timeout; one that does not is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_run_goes_far_past_the_task_timeout_is_unhealthy() {
    let tc = TestCluster::new("stuck-worker").await;
    let zk = tc.inspector().await;
    // The settings a leader publishes, with a 1 s timeout; no leader runs.
    zk.put("/taskcluster", b"", false).await;
    let settings = br#"{"max_attempts":3,"task_timeout_ms":1000,"backlog_cap":1000,"retention_ms":600000}"#;
    zk.put("/taskcluster/config", settings, false).await;
    let journal = Journal::new(tc.dir());
    let mut worker = tc.worker_with("w1", &WorkerOpts::exec(journal.exec_command(), "6"));
    wait_ready(&mut worker).await;
    let addr = worker.listen.clone().expect("the worker has a --listen address");
    assert_eq!(support::metrics::http_get(&addr, "/healthz").map(|(code, _)| code), Some(200), "idle is healthy");

    zk.put("/data/t", b"a run nobody revokes", false).await;
    zk.put("/tasks/t", b"", false).await;
    zk.set("/workers/w1", b"t").await;
    eventually_async("w1 to start the task", LONG, || async { journal.open_run("w1") }).await;
    eventually_async("w1 to report itself unhealthy", LONG, || async {
        (support::metrics::http_get(&addr, "/healthz").map(|(code, _)| code) == Some(503)).then_some(())
    })
    .await;
    assert!(journal.open_run("w1").is_some(), "unhealthy while the run goes on, not after");
    eventually_async("w1 to be healthy once the run ended", LONG, || async {
        (journal.open_run("w1").is_none()
            && support::metrics::http_get(&addr, "/healthz").map(|(code, _)| code) == Some(200))
        .then_some(())
    })
    .await;
}
