//! 100,000 pending tasks: ten times the size at which naive ZooKeeper queues break (a
//! `getChildren` reply past 1 MB). Submission, takeover with a full rebuild, assignment and
//! status all keep working.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{eventually_async, wait_ready, wait_single_leader, TestCluster, LONG};

const TASKS: u64 = 100_000;

async fn completed(tc: &TestCluster) -> u64 {
    tc.status().await["completed"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pending_tasks_keep_flowing_through_a_failover() {
    let tc = TestCluster::new("large-backlog").await;

    // Submit without any master or worker: everything stays pending.
    let count = TASKS.to_string();
    let mut submit = tc.submit("bulk", &["--count", &count, "--inflight", "512"]);
    let code = submit.exit_code(Duration::from_secs(600)).await;
    assert_eq!(code, 0, "bulk submission failed\n{}", submit.describe());
    let ids: HashSet<String> = submit.stdout_lines().into_iter().collect();
    assert_eq!(ids.len() as u64, TASKS, "every submission returns a distinct task id");
    let inspector = tc.inspector().await;
    let children = inspector.children("/tasks").await;
    assert_eq!(children.len() as u64, TASKS, "all tasks are in /tasks");

    // The first leader rebuilds its view from a /tasks listing far above 1 MB.
    let first = tc.master("m1");
    wait_single_leader(&[&first], Duration::from_secs(180)).await;
    let second = tc.master("m2");
    let mut workers = Vec::new();
    for i in 0..4 {
        let mut worker = tc.worker(&format!("w{i}"), "echo");
        wait_ready(&mut worker).await;
        workers.push(worker);
    }
    eventually_async("1,000 completions under the first leader", Duration::from_secs(180), || async {
        let status = tc.status().await;
        (status["completed"].as_u64().unwrap_or(0) >= 1_000 && status["backlog"].as_u64().unwrap_or(0) > 0)
            .then_some(())
    })
    .await;

    // The standby takes over, rebuilds from the same huge listing, and goes on assigning.
    first.terminate();
    let before = completed(&tc).await;
    eventually_async("the standby to lead", LONG, || async {
        let status = tc.status().await;
        (status["leader"]["id"].as_str() == Some("m2")).then_some(())
    })
    .await;
    eventually_async("1,000 more completions under the new leader", Duration::from_secs(180), || async {
        (completed(&tc).await >= before + 1_000).then_some(())
    })
    .await;

    let status = tc.status().await;
    assert_eq!(status["tasks_in_tree"].as_u64(), Some(TASKS), "no task lost: results wait for their (absent) client");
    assert!(status["backlog"].as_u64().unwrap_or(0) > 0, "the test must end with a backlog still pending");
    for p in workers.iter().chain([&first, &second]) {
        p.assert_no_panic();
    }
}
