//! Interoperability with seed-style clients and workers written in Python with Kazoo
//! (`tests/kazoo/`), which know only the seed layout of docs/protocol.md.
//!
//! These tests need Kazoo (`bash scripts/deps.sh` installs it); they fail,
//! not skip, when either is missing.

mod support;

use std::path::{Path, PathBuf};

use support::{
    assert_exactly_one_ok_result_each, assert_tree_drained, payloads, seed_results, wait_ready, wait_single_leader,
    Proc, ResultLine, TestCluster, LONG,
};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kazoo").join(name)
}

fn require_kazoo() {
    support::python::require_kazoo("the interop tests");
}

fn python(tc: &TestCluster, name: &str, script_name: &str, args: &[String]) -> Proc {
    let mut all = vec!["-u".to_string(), script(script_name).display().to_string()];
    all.extend_from_slice(args);
    Proc::spawn_program(&support::python::python(), tc.dir(), name, &all, None, None, &[])
}

fn kazoo_worker(tc: &TestCluster, id: &str) -> Proc {
    python(tc, &format!("kazoo-worker-{id}"), "seed_worker.py", &["--zk".into(), tc.zk(), "--id".into(), id.into()])
}

fn kazoo_client(tc: &TestCluster, name: &str, payloads: &[String]) -> Proc {
    let mut args = vec!["--zk".to_string(), tc.zk(), "--timeout".into(), "60".into()];
    args.extend_from_slice(payloads);
    python(tc, name, "seed_client.py", &args)
}

async fn wait_registered(tc: &TestCluster, worker: &mut Proc, id: &str) {
    let zk = tc.inspector().await;
    let path = format!("/workers/{id}");
    let deadline = tokio::time::Instant::now() + LONG;
    while !zk.exists(&path).await {
        assert!(worker.is_running(), "{} exited\n{}", worker.name, worker.describe());
        assert!(tokio::time::Instant::now() < deadline, "{id} did not register\n{}", worker.describe());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Our master assigns to a Kazoo worker; our client submits and gets the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_master_and_client_with_a_kazoo_worker() {
    require_kazoo();
    let tc = TestCluster::new("kazoo-worker").await;
    let master = tc.master("m1");
    wait_single_leader(&[&master], LONG).await;
    let mut worker = kazoo_worker(&tc, "kw1");
    wait_registered(&tc, &mut worker, "kw1").await;

    let tasks = payloads("kazoo worker", 12);
    let mut client = tc.submit_wait("client", &tasks);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 0, "{}\n{}", client.describe(), worker.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_exactly_one_ok_result_each("client", &lines, &seed_results(&tasks));
    assert_eq!(support::scrape(&master).get("taskcluster_tasks_completed_total"), Some(12.0));
    assert_tree_drained(&tc).await;
    assert!(worker.is_running(), "the Kazoo worker died\n{}", worker.describe());
    master.assert_no_panic();
    client.assert_no_panic();
}

/// A Kazoo client submits to our master and worker, and reads our results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_client_with_our_master_and_worker() {
    require_kazoo();
    let tc = TestCluster::new("kazoo-client").await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;

    let tasks = payloads("kazoo client", 12);
    let mut client = kazoo_client(&tc, "kazoo-client", &tasks);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 0, "{}", client.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_exactly_one_ok_result_each("kazoo client", &lines, &seed_results(&tasks));
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// Our failure results are recognisable by a client that knows only the documented prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_client_recognises_our_failures() {
    require_kazoo();
    let tc = TestCluster::new("kazoo-failure").await;
    let master = tc.master_with("m1", &support::MasterOpts { max_attempts: 2, ..Default::default() });
    let mut worker = tc.worker("w1", "fail");
    wait_ready(&mut worker).await;

    let mut client = kazoo_client(&tc, "kazoo-client", &["fail for kazoo".to_string(), "echo for kazoo".to_string()]);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 1, "one failed task\n{}", client.describe());
    let mut lines = ResultLine::parse_all(&client.stdout());
    lines.sort_by_key(|l| l.ok);
    assert_eq!(lines.len(), 2, "{}", client.describe());
    assert!(!lines[0].ok && lines[0].text.contains("payload asked to fail"), "{lines:?}");
    assert!(lines[1].ok && lines[1].text == "echo for kazoo", "{lines:?}");
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// Seed-style Kazoo client and worker, with our master in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_client_and_worker_with_our_master() {
    require_kazoo();
    let tc = TestCluster::new("kazoo-both").await;
    let master = tc.master("m1");
    wait_single_leader(&[&master], LONG).await;
    let mut worker = kazoo_worker(&tc, "kw1");
    wait_registered(&tc, &mut worker, "kw1").await;

    let tasks = payloads("all kazoo", 8);
    let mut client = kazoo_client(&tc, "kazoo-client", &tasks);
    let code = client.exit_code(LONG).await;
    assert_eq!(code, 0, "{}\n{}", client.describe(), worker.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_exactly_one_ok_result_each("kazoo client", &lines, &seed_results(&tasks));
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
}
