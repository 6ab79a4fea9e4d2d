//! The seed practical's four fault scenarios (clients/workers/masters), each checking the
//! invariants: no submitted task is lost, each client gets exactly one result per task, and no
//! task runs on two live workers at once (from the exec journal).

mod support;

use std::collections::{HashMap, HashSet};

use support::{
    all_tasks_have_results, assert_client_succeeded, assert_exactly_one_ok_result_each, assert_tree_drained,
    eventually, eventually_async, payloads, scrape, seed_result, wait_ready, wait_single_leader, Journal, Proc,
    ResultLine, TestCluster, WorkerOpts, LONG,
};

/// Seconds of work per task in the exec script: long enough that kills land mid-task.
const DELAY: &str = "0.1";

fn exec_worker(tc: &TestCluster, journal: &Journal, id: &str) -> Proc {
    tc.worker_with(id, &WorkerOpts::exec(journal.exec_command(), DELAY))
}

/// Workers w1 and w2 on the journalling exec script, both registered.
async fn two_ready_exec_workers(tc: &TestCluster, journal: &Journal) -> (Proc, Proc) {
    let mut w1 = exec_worker(tc, journal, "w1");
    let mut w2 = exec_worker(tc, journal, "w2");
    wait_ready(&mut w1).await;
    wait_ready(&mut w2).await;
    (w1, w2)
}

async fn wait_lines(client: &mut Proc, at_least: usize) {
    let what = format!("{} to print {at_least} results", client.name);
    eventually(&what, LONG, || {
        assert!(
            client.is_running() || client.stdout_lines().len() >= at_least,
            "{} exited early\n{}",
            client.name,
            client.describe()
        );
        (client.stdout_lines().len() >= at_least).then_some(())
    })
    .await;
}

/// Waits for the client to exit 0 and checks it got exactly one ok result per payload.
fn deaths(procs: &[&Proc]) -> HashMap<String, u128> {
    procs.iter().filter_map(|p| p.killed_at_ns.map(|t| (worker_id(&p.name), t))).collect()
}

/// `worker-w1.3` (the process name) to `w1` (the worker id).
fn worker_id(proc_name: &str) -> String {
    proc_name.trim_start_matches("worker-").rsplit_once('.').map_or(proc_name, |(id, _)| id).to_string()
}

/// 1 client, 1 worker, 1 master: first the worker fails mid-task and a new one takes over, then
/// a client fails mid-way and the system keeps serving others and finishes its tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_1_1_a_worker_or_a_client_fails() {
    let tc = TestCluster::new("s111").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let mut w1 = exec_worker(&tc, &journal, "w1");
    wait_ready(&mut w1).await;

    // The worker fails mid-task.
    let first = payloads("first", 30);
    let mut c1 = tc.submit_wait("client1", &first);
    wait_lines(&mut c1, 5).await;
    eventually("w1 to be mid-task", LONG, || journal.open_run("w1")).await;
    w1.kill();
    let mut w2 = exec_worker(&tc, &journal, "w2");
    wait_ready(&mut w2).await;
    assert_client_succeeded(&mut c1, &first).await;

    // A client fails mid-way: a later client is served, and the dead one's tasks all run.
    let second = payloads("second", 30);
    let mut c2 = tc.submit_wait("client2", &second);
    wait_lines(&mut c2, 3).await;
    c2.kill();
    let third = payloads("third", 10);
    let mut c3 = tc.submit_wait("client3", &third);
    assert_client_succeeded(&mut c3, &third).await;
    let zk = tc.inspector().await;
    eventually_async("every task of the killed client to get its result", LONG, || async {
        all_tasks_have_results(&zk).await.then_some(())
    })
    .await;

    journal.assert_no_concurrent_runs(&deaths(&[&w1, &w2]));
    let w1_runs: Vec<_> = journal.starts().into_iter().filter(|e| e.worker == "w1").collect();
    assert!(!w1_runs.is_empty(), "w1 ran nothing before it was killed");
    master.assert_no_panic();
    w2.assert_no_panic();
}

/// 1 client, 2 workers, 1 master: one worker fails mid-task; the other finishes everything,
/// including the task the dead one was running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_2_1_a_worker_fails() {
    let tc = TestCluster::new("s121").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let (mut w1, w2) = two_ready_exec_workers(&tc, &journal).await;

    let tasks = payloads("pair", 40);
    let mut client = tc.submit_wait("client", &tasks);
    wait_lines(&mut client, 5).await;
    let interrupted = eventually("w1 to be mid-task", LONG, || journal.open_run("w1")).await;
    w1.kill();
    let lines = assert_client_succeeded(&mut client, &tasks).await;

    assert!(
        lines.iter().any(|l| l.id == interrupted.task),
        "the task w1 was running ({}) is not among the client's results",
        interrupted.task
    );
    let killed_at = w1.killed_at_ns.expect("w1 was killed");
    assert!(
        journal.starts().iter().any(|e| e.task == interrupted.task && e.worker == "w2" && e.ns >= killed_at),
        "the task w1 was running ({}) was not retried on w2; journal: {:#?}",
        interrupted.task,
        journal.entries()
    );
    journal.assert_no_concurrent_runs(&deaths(&[&w1, &w2]));
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    w2.assert_no_panic();
}

/// 2 clients, 2 workers, 1 master: the workers compete for the tasks of both clients; each
/// client gets exactly its own results, and every task runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_2_1_workers_compete() {
    let tc = TestCluster::new("s221").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let (w1, w2) = two_ready_exec_workers(&tc, &journal).await;

    let a = payloads("alpha", 25);
    let b = payloads("bravo", 25);
    let mut ca = tc.submit_wait("client-a", &a);
    let mut cb = tc.submit_wait("client-b", &b);
    let la = assert_client_succeeded(&mut ca, &a).await;
    let lb = assert_client_succeeded(&mut cb, &b).await;

    let ids_a: HashSet<&str> = la.iter().map(|l| l.id.as_str()).collect();
    assert!(lb.iter().all(|l| !ids_a.contains(l.id.as_str())), "the clients share task ids");
    assert_eq!(journal.workers_used(), vec!["w1".to_string(), "w2".to_string()], "both workers should get work");
    let starts = journal.starts();
    let distinct: HashSet<&str> = starts.iter().map(|e| e.task.as_str()).collect();
    assert_eq!(distinct.len(), 50, "every task should run: {} distinct tasks ran", distinct.len());
    assert_eq!(starts.len(), 50, "without failures no task runs twice: {} runs for 50 tasks", starts.len());
    journal.assert_no_concurrent_runs(&HashMap::new());
    assert_tree_drained(&tc).await;

    let metrics = scrape(&master);
    assert_eq!(metrics.get("taskcluster_tasks_completed_total"), Some(50.0), "completed counter");
    for w in [&w1, &w2] {
        let ok = scrape(w).counter("taskcluster_worker_tasks_total{outcome=\"succeeded\"}");
        assert!(ok >= 1.0, "{} reports {ok} succeeded tasks", w.name);
        w.assert_no_panic();
    }
    master.assert_no_panic();
}

/// 2 clients, 2 workers, 2 masters: the leader is killed mid-way and the backup takes over;
/// nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_2_2_the_backup_master_takes_over() {
    let tc = TestCluster::new("s222").await;
    let journal = Journal::new(tc.dir());
    let mut masters = [tc.master("m1"), tc.master("m2")];
    let (_w1, _w2) = two_ready_exec_workers(&tc, &journal).await;
    let leader = wait_single_leader(&[&masters[0], &masters[1]], LONG).await;
    let standby = 1 - leader;
    let epoch_before = tc.status().await["epoch"].as_u64().expect("status has an epoch");

    let a = payloads("alpha", 30);
    let b = payloads("bravo", 30);
    let mut ca = tc.submit_wait("client-a", &a);
    let mut cb = tc.submit_wait("client-b", &b);
    wait_lines(&mut ca, 5).await;
    masters[leader].kill();
    eventually("the standby to lead", LONG, || (support::is_leader(&masters[standby]) == Some(true)).then_some(()))
        .await;
    assert_client_succeeded(&mut ca, &a).await;
    assert_client_succeeded(&mut cb, &b).await;

    let starts = journal.starts();
    let distinct: HashSet<&str> = starts.iter().map(|e| e.task.as_str()).collect();
    assert_eq!(distinct.len(), 60, "every task should run once: {} distinct tasks ran", distinct.len());
    assert_eq!(starts.len(), 60, "a failover must not run a task twice: {} runs for 60 tasks", starts.len());
    journal.assert_no_concurrent_runs(&HashMap::new());
    assert_tree_drained(&tc).await;

    let standby_id = if standby == 0 { "m1" } else { "m2" };
    let status = eventually_async("the dead leader's contender znode to expire", LONG, || async {
        let s = tc.status().await;
        (s["masters"].as_u64() == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(status["leader"]["id"], standby_id, "status: {status}");
    assert_eq!(status["workers_registered"].as_u64(), Some(2), "status: {status}");
    assert!(status["epoch"].as_u64().unwrap_or(0) > epoch_before, "the epoch should rise on takeover: {status}");
    let m = scrape(&masters[standby]);
    assert!(m.counter("taskcluster_master_assignments_total") >= 1.0, "the new leader assigned nothing");
    masters[standby].assert_no_panic();
    let _ = masters[leader].try_status();
}

/// Load through `--count` and `--inflight`: two clients with many tasks in flight each, two
/// workers; every task gets exactly one result and the tree is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_in_flight_from_two_clients() {
    let tc = TestCluster::new("load").await;
    let master = tc.master("m1");
    let mut w1 = tc.worker("w1", "seed");
    let mut w2 = tc.worker("w2", "seed");
    wait_ready(&mut w1).await;
    wait_ready(&mut w2).await;

    let mut clients = [
        tc.submit("count-a", &["--count", "300", "--inflight", "32", "--wait"]),
        tc.submit("count-b", &["--count", "300", "--inflight", "7", "--wait"]),
    ];
    let expected: Vec<String> = (0..300).map(|n| seed_result(&format!("task-{n}"))).collect();
    let mut all_ids = HashSet::new();
    for client in &mut clients {
        let code = client.exit_code(LONG).await;
        assert_eq!(code, 0, "{}", client.describe());
        client.assert_no_panic();
        let lines = ResultLine::parse_all(&client.stdout());
        assert_exactly_one_ok_result_each(&client.name, &lines, &expected);
        for line in &lines {
            assert!(all_ids.insert(line.id.clone()), "task id {} was given to both clients", line.id);
        }
    }
    assert_tree_drained(&tc).await;
    let completed = scrape(&master).get("taskcluster_tasks_completed_total");
    assert_eq!(completed, Some(600.0), "completed counter");
    let executed: f64 =
        [&w1, &w2].iter().map(|w| scrape(w).counter("taskcluster_worker_tasks_total{outcome=\"succeeded\"}")).sum();
    assert_eq!(executed, 600.0, "without failures every task executes exactly once");
    master.assert_no_panic();
}
