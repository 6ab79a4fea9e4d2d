//! Faults past the seed: a lagging (paused) master is fenced, a killed worker's task is retried,
//! a poison task is dead-lettered, a dead client's results are cleaned up, and SIGTERM shuts
//! masters and workers down gracefully.

mod support;

use std::collections::HashMap;

use support::{
    assert_client_succeeded, assert_tree_drained, eventually, eventually_async, is_leader, payloads, scrape,
    seed_result, wait_ready, wait_single_leader, Journal, MasterOpts, ResultLine, TestCluster, WorkerOpts, LONG,
};

const ASSIGNMENTS: &str = "taskcluster_master_assignments_total";
const FENCED: &str = "taskcluster_master_fenced_writes_total";

/// The leader is paused (SIGSTOP) past its session timeout while tasks arrive; the standby
/// takes over. Resumed, the old leader has writes rejected (fenced) and none accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_master_is_fenced_and_work_goes_on_under_the_new_leader() {
    let tc = TestCluster::new("lagging").await;
    let journal = Journal::new(tc.dir());
    let old = tc.master("m1");
    wait_single_leader(&[&old], LONG).await;
    let new = tc.master("m2");
    let exec = WorkerOpts::exec(journal.exec_command(), "0.05");
    let mut w1 = tc.worker_with("w1", &exec);
    let mut w2 = tc.worker_with("w2", &exec);
    wait_ready(&mut w1).await;
    wait_ready(&mut w2).await;
    assert_eq!(wait_single_leader(&[&old, &new], LONG).await, 0, "the first master should lead");

    // Warm-up under the old leader, then a quiet system so its counters are final.
    let warm = payloads("warm", 6);
    assert_client_succeeded(&mut tc.submit_wait("warm-up", &warm), &warm).await;
    let before = scrape(&old);
    let assigned_before = before.counter(ASSIGNMENTS);
    let fenced_before = before.counter(FENCED);
    assert!(assigned_before >= 1.0, "the leader assigned nothing during the warm-up: {:?}", before.keys());
    assert!(before.has_family(FENCED), "the master does not export {FENCED}: {:?}", before.keys());

    // Pause it; tasks arrive while it is paused, so it has work it believes it must assign.
    old.pause();
    let during = payloads("during", 20);
    let mut client = tc.submit_wait("during-pause", &during);
    eventually("the standby to lead", LONG, || (is_leader(&new) == Some(true)).then_some(())).await;
    assert_client_succeeded(&mut client, &during).await;

    old.resume();
    let fenced = eventually("the resumed master to have a write rejected", LONG, || {
        let m = support::Metrics::scrape(old.listen.as_deref()?)?;
        (m.counter(FENCED) > fenced_before).then_some(m)
    })
    .await;
    assert_eq!(
        fenced.counter(ASSIGNMENTS),
        assigned_before,
        "the fenced master must not have an assignment accepted after its pause"
    );
    eventually("the resumed master to know it does not lead", LONG, || (is_leader(&old) == Some(false)).then_some(()))
        .await;
    assert_eq!(is_leader(&new), Some(true), "the new leader should still lead");

    // Work goes on under the new leader, and the old one still assigns nothing.
    let after = payloads("after", 10);
    assert_client_succeeded(&mut tc.submit_wait("after-resume", &after), &after).await;
    assert_eq!(support::scrape(&old).counter(ASSIGNMENTS), assigned_before, "the old leader assigned again");
    let starts = journal.starts();
    assert_eq!(starts.len(), 36, "every task runs exactly once: {} runs for 36 tasks", starts.len());
    journal.assert_no_concurrent_runs(&HashMap::new());
    assert_tree_drained(&tc).await;
    for p in [&old, &new, &w1, &w2] {
        p.assert_no_panic();
    }
}

/// A worker SIGKILLed mid-task: its task is retried on another worker and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_task_its_task_is_retried() {
    let tc = TestCluster::new("worker-killed").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let mut slow = tc.worker_with("slow", &WorkerOpts::exec(journal.exec_command(), "60"));
    wait_ready(&mut slow).await;

    let task = vec!["kill me softly".to_string()];
    let mut client = tc.submit_wait("client", &task);
    let run = eventually("the slow worker to start the task", LONG, || journal.open_run("slow")).await;
    slow.kill();
    let mut fast = tc.worker_with("fast", &WorkerOpts::exec(journal.exec_command(), "0"));
    wait_ready(&mut fast).await;

    let lines = assert_client_succeeded(&mut client, &task).await;
    assert_eq!(lines[0].id, run.task);
    assert_eq!(lines[0].text, seed_result("kill me softly"));
    let retry = journal
        .starts()
        .into_iter()
        .find(|e| e.worker == "fast" && e.task == run.task)
        .unwrap_or_else(|| panic!("the task was not retried on the other worker: {:#?}", journal.entries()));
    assert_eq!(run.attempt, "1", "first attempt number");
    assert_eq!(retry.attempt, "2", "the worker's death counts as a failed attempt");
    let m = scrape(&master);
    assert_eq!(m.get("taskcluster_tasks_failed_attempts_total"), Some(1.0), "failed attempts");
    assert_eq!(m.get("taskcluster_tasks_completed_total"), Some(1.0), "completed");
    assert_eq!(m.counter("taskcluster_tasks_dead_lettered_total"), 0.0, "dead-lettered");
    journal.assert_no_concurrent_runs(&HashMap::from([("slow".to_string(), slow.killed_at_ns.unwrap())]));
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    fast.assert_no_panic();
}

/// A task that always fails is dead-lettered after the maximum attempts; its client gets a
/// failure line and exits 1, while the other task of the same submission succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_task_is_dead_lettered_after_max_attempts() {
    let tc = TestCluster::new("poison").await;
    let master = tc.master_with("m1", &MasterOpts { max_attempts: 3, ..MasterOpts::default() });
    let mut worker = tc.worker("w1", "fail");
    wait_ready(&mut worker).await;

    let mut client = tc.submit_wait("client", &["fail always".to_string(), "fine one".to_string()]);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 1, "a failed task makes submit --wait exit 1\n{}", client.describe());
    client.assert_no_panic();
    let mut lines = ResultLine::parse_all(&client.stdout());
    assert_eq!(lines.len(), 2, "one line per task:\n{}", client.describe());
    lines.sort_by_key(|l| l.ok);
    assert!(!lines[0].ok && lines[1].ok, "one failure and one success expected: {lines:?}");
    assert!(
        lines[0].text.contains("payload asked to fail"),
        "the failure should carry the handler's error: {:?}",
        lines[0].text
    );
    assert_eq!(lines[1].text, "fine one", "the fail handler echoes other payloads");

    let m = scrape(&master);
    assert_eq!(m.get("taskcluster_tasks_dead_lettered_total"), Some(1.0), "dead-lettered");
    assert_eq!(m.get("taskcluster_tasks_failed_attempts_total"), Some(3.0), "one failed attempt per try");
    let w = scrape(&worker);
    assert_eq!(w.counter("taskcluster_worker_tasks_total{outcome=\"failed\"}"), 3.0, "worker failures");
    assert_eq!(w.counter("taskcluster_worker_tasks_total{outcome=\"succeeded\"}"), 1.0, "worker successes");
    let status = eventually_async("status to count the dead letter", LONG, || async {
        let s = tc.status().await;
        (s["dead_lettered"].as_u64() == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(status["leader"]["id"], "m1", "status: {status}");
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// A client killed before collecting its results: the tasks still run, and their results are
/// removed by the leader after --retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_results_are_removed_after_retention() {
    let tc = TestCluster::new("client-killed").await;
    let master = tc.master_with("m1", &MasterOpts { retention: "3s".into(), ..MasterOpts::default() });
    let mut worker = tc.worker("w1", "sleep");
    wait_ready(&mut worker).await;

    let tasks: Vec<String> = (0..8).map(|i| format!("{}", 200 + i)).collect();
    let mut client = tc.submit_wait("client", &tasks);
    eventually("the client to get a first result", LONG, || (!client.stdout().is_empty()).then_some(())).await;
    client.kill();

    let zk = tc.inspector().await;
    eventually_async("the orphaned tasks to run and their results to be removed", LONG, || async {
        let m = support::Metrics::scrape(master.listen.as_deref()?)?;
        let completed = m.counter("taskcluster_tasks_completed_total");
        let tasks = zk.children("/tasks").await;
        let data = zk.children("/data").await;
        (completed >= 8.0 && tasks.is_empty() && data.is_empty()).then_some(())
    })
    .await;
    let leftovers = zk.children("/taskcluster/attempts").await;
    assert!(leftovers.is_empty(), "attempt records left behind: {leftovers:?}");
    assert_eq!(scrape(&master).counter("taskcluster_tasks_completed_total"), 8.0, "each task completes once");
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// SIGTERM to the leader: it closes its session at once (its election znode is gone when it
/// exits), the standby takes over, and work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_over_to_the_standby() {
    let tc = TestCluster::new("term-leader").await;
    let mut masters = [tc.master("m1"), tc.master("m2")];
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;
    let leader = wait_single_leader(&[&masters[0], &masters[1]], LONG).await;
    let standby = 1 - leader;
    let zk = tc.inspector().await;
    assert_eq!(zk.children("/master").await.len(), 2, "two contenders");

    masters[leader].terminate();
    let code = masters[leader].exit_code(LONG).await;
    assert_eq!(code, 0, "SIGTERM is a clean shutdown\n{}", masters[leader].describe());
    zk.sync("/master").await;
    let contenders = zk.children("/master").await;
    assert_eq!(contenders.len(), 1, "the leader must close its session before exiting: {contenders:?}");

    eventually("the standby to lead", LONG, || (is_leader(&masters[standby]) == Some(true)).then_some(())).await;
    let tasks = payloads("handover", 5);
    assert_client_succeeded(&mut tc.submit_wait("client", &tasks), &tasks).await;
    masters[leader].assert_no_panic();
    masters[standby].assert_no_panic();
    worker.assert_no_panic();
}

/// Creates task `id` as a foreign client would: the payload first, then the task.
async fn create_task(zk: &support::Inspector, id: &str, payload: &str) {
    zk.put(&format!("/data/{id}"), payload.as_bytes(), false).await;
    zk.put(&format!("/tasks/{id}"), b"", false).await;
}

/// `completed` in the published status, once the leader `id` published it.
async fn completed_published_by(tc: &TestCluster, id: &str) -> u64 {
    eventually_async(&format!("{id} to publish its counters"), LONG, || async {
        let status = tc.status().await;
        let by = status["leader"]["id"].as_str() == Some(id) && status["counters_fresh"] == true;
        by.then(|| status["completed"].as_u64().unwrap_or_default())
    })
    .await
}

/// Results that land while no leader hears them (the leader is stopped, then killed, before it
/// published them) are counted once by the next leader, from the tree it finds; the results it
/// finds that the dead leader had published are not counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_land_between_two_leaders_are_counted_once() {
    let tc = TestCluster::new("count-between-leaders").await;
    let zk = tc.inspector().await;
    let mut m1 = tc.master("m1");
    let mut worker = tc.worker("w1", "sleep");
    wait_ready(&mut worker).await;
    wait_single_leader(&[&m1], LONG).await;
    create_task(&zk, "before", "10").await;
    eventually_async("the first result", LONG, || async { zk.data("/tasks/before").await.filter(|r| !r.is_empty()) })
        .await;
    settle_until_counted(&tc, "m1", 1).await;

    // A task that runs while its leader is stopped: its result is heard by nobody.
    create_task(&zk, "between", "1500").await;
    eventually("w1 to run the second task", LONG, || {
        (scrape(&worker).get("taskcluster_worker_busy") == Some(1.0)).then_some(())
    })
    .await;
    m1.pause();
    eventually_async("the second result", LONG, || async { zk.data("/tasks/between").await.filter(|r| !r.is_empty()) })
        .await;
    m1.kill();
    let m2 = tc.master("m2");
    wait_single_leader(&[&m2], LONG).await;
    assert_eq!(completed_published_by(&tc, "m2").await, 2, "both results, each once");

    create_task(&zk, "after", "10").await;
    settle_until_counted(&tc, "m2", 3).await;
    m2.assert_no_panic();
    worker.assert_no_panic();
}

/// Waits for leader `id` to publish `completed` = `want`, then checks it stays there.
async fn settle_until_counted(tc: &TestCluster, id: &str, want: u64) {
    eventually_async(&format!("{id} to publish completed = {want}"), LONG, || async {
        (completed_published_by(tc, id).await == want).then_some(())
    })
    .await;
    support::settle(std::time::Duration::from_millis(1_200)).await;
    assert_eq!(completed_published_by(tc, id).await, want, "completed must stay at {want}");
}

/// SIGTERM to a busy worker with a long grace period: it finishes its task, then deregisters
/// and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_busy_worker_finishes_its_task_within_the_grace_period() {
    let tc = TestCluster::new("term-worker-finish").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let opts = WorkerOpts { grace_period: "60s".into(), ..WorkerOpts::exec(journal.exec_command(), "2") };
    let mut worker = tc.worker_with("w1", &opts);
    wait_ready(&mut worker).await;

    let task = vec!["finish me".to_string()];
    let mut client = tc.submit_wait("client", &task);
    eventually("the worker to start the task", LONG, || journal.open_run("w1")).await;
    worker.terminate();
    let code = worker.exit_code(LONG).await;
    assert_eq!(code, 0, "SIGTERM is a clean shutdown\n{}", worker.describe());
    let zk = tc.inspector().await;
    zk.sync("/workers").await;
    assert!(!zk.exists("/workers/w1").await, "the worker must deregister before exiting");

    assert_client_succeeded(&mut client, &task).await;
    let starts = journal.starts();
    assert_eq!(starts.len(), 1, "the task was finished, not given back: {starts:#?}");
    assert!(journal.open_run("w1").is_none(), "the run was not completed: {:#?}", journal.entries());
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// SIGTERM to a busy worker whose task outlasts the grace period: it gives the task back and
/// exits; another worker completes it, and the client gets exactly one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_busy_worker_gives_its_task_back_after_the_grace_period() {
    let tc = TestCluster::new("term-worker-giveback").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let opts = WorkerOpts { grace_period: "1s".into(), ..WorkerOpts::exec(journal.exec_command(), "60") };
    let mut slow = tc.worker_with("slow", &opts);
    wait_ready(&mut slow).await;

    let task = vec!["give me back".to_string()];
    let mut client = tc.submit_wait("client", &task);
    let run = eventually("the slow worker to start the task", LONG, || journal.open_run("slow")).await;
    slow.terminate();
    let code = slow.exit_code(LONG).await;
    assert_eq!(code, 0, "SIGTERM is a clean shutdown\n{}", slow.describe());
    let zk = tc.inspector().await;
    zk.sync("/workers").await;
    assert!(!zk.exists("/workers/slow").await, "the worker must deregister before exiting");
    assert!(client.is_running(), "the client got a result although the task was given back\n{}", client.describe());
    let record = zk.data(&format!("/taskcluster/attempts/{}", run.task)).await.expect("the give-back is recorded");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("the attempts record is JSON");
    assert_eq!((record["attempts"].as_u64(), record["given_back"].as_u64()), (Some(0), Some(1)), "{record}");
    let by = record["given_back_by"].as_str().unwrap_or_default();
    assert!(by.starts_with("slow@"), "the record names the registration that gave it back: {record}");

    let mut fast = tc.worker_with("fast", &WorkerOpts::exec(journal.exec_command(), "0"));
    wait_ready(&mut fast).await;
    let lines = assert_client_succeeded(&mut client, &task).await;
    assert_eq!(lines[0].id, run.task);
    assert!(
        journal.starts().iter().any(|e| e.worker == "fast" && e.task == run.task),
        "the given-back task did not run on the other worker: {:#?}",
        journal.entries()
    );
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    fast.assert_no_panic();
    slow.assert_no_panic();
}

/// A task running past --task-timeout is revoked and counts as a failed attempt; after the
/// last attempt it is dead-lettered and its client gets a failure. Other work is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_timeout_counts_as_a_failed_attempt() {
    let tc = TestCluster::new("task-timeout").await;
    let opts = MasterOpts { max_attempts: 2, task_timeout: "1s".into(), ..MasterOpts::default() };
    let master = tc.master_with("m1", &opts);
    let mut worker = tc.worker("w1", "sleep");
    wait_ready(&mut worker).await;

    let mut client = tc.submit_wait("client", &["30000".to_string(), "10".to_string()]);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 1, "the timed-out task fails the submission\n{}", client.describe());
    client.assert_no_panic();
    let mut lines = ResultLine::parse_all(&client.stdout());
    assert_eq!(lines.len(), 2, "one line per task\n{}", client.describe());
    lines.sort_by_key(|l| l.ok);
    assert!(!lines[0].ok && !lines[0].text.is_empty(), "the slow task fails with a message: {lines:?}");
    assert!(lines[1].ok && lines[1].text == "10", "the quick task succeeds: {lines:?}");

    let m = scrape(&master);
    assert_eq!(m.get("taskcluster_tasks_failed_attempts_total"), Some(2.0), "two timed-out attempts");
    assert_eq!(m.get("taskcluster_tasks_dead_lettered_total"), Some(1.0), "dead-lettered");
    let abandoned = scrape(&worker).counter("taskcluster_worker_tasks_total{outcome=\"abandoned\"}");
    assert!(abandoned >= 1.0, "the worker should abandon revoked tasks (abandoned = {abandoned})");
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// Submissions beyond --backlog-cap are refused with a clear error; nothing of them is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_beyond_the_backlog_cap_are_refused() {
    let tc = TestCluster::new("backlog-cap").await;
    let master = tc.master_with("m1", &MasterOpts { backlog_cap: Some(5), ..MasterOpts::default() });
    wait_single_leader(&[&master], LONG).await;
    let zk = tc.inspector().await;
    eventually_async("the leader to publish its config", LONG, || async { zk.data("/taskcluster/config").await }).await;

    let first: Vec<String> = payloads("capped", 5);
    let args: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut fill = tc.submit("fill", &args);
    assert_eq!(fill.exit_code(LONG).await, 0, "{}", fill.describe());
    assert_eq!(zk.children("/tasks").await.len(), 5);

    let mut over = tc.submit("over", &["one too many"]);
    let code = over.exit_code(LONG).await;
    assert_ne!(code, 0, "a submission beyond the cap must fail\n{}", over.describe());
    over.assert_no_panic();
    assert!(over.stderr().to_lowercase().contains("backlog"), "the error should name the backlog:\n{}", over.stderr());
    assert!(over.stdout().trim().is_empty(), "a refused task has no id: {}", over.stdout());
    assert_eq!(zk.children("/tasks").await.len(), 5, "the refused task must not be written");
    assert_eq!(zk.children("/data").await.len(), 5, "the refused payload must not be written");

    // Results count against the cap until collected: once a worker has run the tasks and a
    // client has collected them, submissions are accepted again.
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;
    eventually_async("the backlog to be run", LONG, || async {
        support::all_tasks_have_results(&zk).await.then_some(())
    })
    .await;
    for id in zk.children("/tasks").await {
        zk.client.delete(&format!("/tasks/{id}"), None).await.expect("collect a result");
        zk.client.delete(&format!("/data/{id}"), None).await.expect("collect a payload");
    }
    let mut client = tc.submit_wait("after-drain", &["accepted again".to_string()]);
    assert_eq!(client.exit_code(LONG).await, 0, "{}", client.describe());
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// A foreign client deletes its task while it runs: the worker's clear comes without a result,
/// which the leader follows with a watch on that worker, so the worker gets the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_collected_while_it_runs_frees_its_worker_for_the_next() {
    let tc = TestCluster::new("collected-running").await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "sleep");
    wait_ready(&mut worker).await;

    let zk = tc.inspector().await;
    zk.put("/data/foreign", b"1500", false).await;
    zk.put("/tasks/foreign", b"", false).await;
    eventually_async("the foreign task to be assigned", LONG, || async {
        (zk.data("/workers/w1").await.as_deref() == Some(b"foreign".as_slice())).then_some(())
    })
    .await;
    for path in ["/tasks/foreign", "/data/foreign"] {
        zk.client.delete(path, None).await.unwrap_or_else(|e| panic!("delete {path}: {e}"));
    }

    let next = vec!["100".to_string()];
    assert_client_succeeded(&mut tc.submit_wait("client", &next), &next).await;
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// SIGTERM to a worker that holds an assignment it has not started yet (written into its znode
/// by a master that writes no inbox entries, just before the signal; our leader's next
/// assignment right after a completion is the same case): the worker hands it back, and no
/// attempt is spent on a task it never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_worker_with_an_unstarted_assignment_gives_it_back() {
    let tc = TestCluster::new("term-worker-unstarted").await;
    let journal = Journal::new(tc.dir());
    // A run it did start would be given back at once too: only one it never started is at stake.
    let opts = WorkerOpts { grace_period: "1ms".into(), ..WorkerOpts::exec(journal.exec_command(), "60") };
    let mut worker = tc.worker_with("w1", &opts);
    wait_ready(&mut worker).await;
    let zk = tc.inspector().await;
    zk.put("/data/t", b"never started", false).await;
    zk.put("/tasks/t", b"", false).await;
    // Read by an idle worker within a second; the signal comes first.
    zk.set("/workers/w1", b"t").await;
    worker.terminate();
    let code = worker.exit_code(LONG).await;
    assert_eq!(code, 0, "SIGTERM is a clean shutdown\n{}", worker.describe());
    zk.sync("/workers").await;
    assert!(!zk.exists("/workers/w1").await, "the worker must deregister before exiting");
    let record = zk.data("/taskcluster/attempts/t").await;
    let record: serde_json::Value = record.and_then(|r| serde_json::from_slice(&r).ok()).unwrap_or_default();
    assert_eq!(
        (record["attempts"].as_u64(), record["given_back"].as_u64()),
        (Some(0), Some(1)),
        "the unstarted task must be given back (runs: {:?})\n{}",
        journal.entries(),
        worker.describe()
    );
}
