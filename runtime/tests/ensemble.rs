//! A three-server ensemble under our master, workers and clients: losing one server is
//! invisible, losing two stalls everything, restoring them resumes with nothing lost.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{
    assert_client_succeeded, eventually, payloads, settle, wait_ready, wait_single_leader, Journal, TestCluster,
    WorkerOpts, ZkCluster, LONG,
};

async fn wait_quorum(zk: &ZkCluster) {
    let running: Vec<u16> = zk.nodes.iter().filter(|n| n.is_running()).map(|n| n.client_port).collect();
    eventually("the running servers to form a quorum", LONG, || {
        running
            .iter()
            .all(|port| {
                let reply = support::zk_server::four_letter_word(*port, "srvr").unwrap_or_default();
                reply.contains("Mode: leader") || reply.contains("Mode: follower")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_survives_one_loss_stalls_without_quorum_and_resumes() {
    let zk = tokio::task::spawn_blocking(|| ZkCluster::ensemble(3)).await.expect("start the ensemble");
    let tc = TestCluster::on(&zk, "ensemble").await;
    let journal = Journal::new(tc.dir());
    let master = tc.master("m1");
    let exec = WorkerOpts::exec(journal.exec_command(), "0.2");
    let mut w1 = tc.worker_with("w1", &exec);
    let mut w2 = tc.worker_with("w2", &exec);
    wait_ready(&mut w1).await;
    wait_ready(&mut w2).await;
    wait_single_leader(&[&master], LONG).await;

    let before = payloads("healthy", 6);
    assert_client_succeeded(&mut tc.submit_wait("healthy", &before), &before).await;

    // One server down (the ensemble's leader, the hardest one to lose): work continues.
    let first = zk.leader().myid;
    zk.node(first).kill();
    wait_quorum(&zk).await;
    let degraded = payloads("degraded", 6);
    assert_client_succeeded(&mut tc.submit_wait("degraded", &degraded), &degraded).await;

    // Two servers down: no quorum, no progress.
    let stalled = payloads("stalled", 40);
    let mut client = tc.submit_wait("stalled", &stalled);
    eventually("results before the second loss", LONG, || (client.stdout_lines().len() >= 3).then_some(())).await;
    let second = zk.nodes.iter().find(|n| n.is_running()).map(|n| n.myid).expect("a running server");
    zk.node(second).kill();
    settle(Duration::from_secs(1)).await;
    let frozen = client.stdout_lines().len();
    settle(Duration::from_secs(4)).await;
    let later = client.stdout_lines().len();
    assert_eq!(frozen, later, "results kept arriving without a quorum");
    assert!(later < stalled.len(), "all tasks finished before the quorum was lost: the stall was not exercised");

    // Restore both: everything resumes and nothing is lost.
    zk.node(first).restart();
    zk.node(second).restart();
    tokio::task::spawn_blocking({
        let ports: Vec<u16> = zk.nodes.iter().map(|n| n.client_port).collect();
        move || {
            let deadline = std::time::Instant::now() + LONG;
            for port in ports {
                loop {
                    let reply = support::zk_server::four_letter_word(port, "srvr").unwrap_or_default();
                    if reply.contains("Mode: leader") || reply.contains("Mode: follower") {
                        break;
                    }
                    assert!(std::time::Instant::now() < deadline, "server on port {port} did not rejoin");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
    .await
    .expect("wait for the ensemble");
    assert_client_succeeded(&mut client, &stalled).await;
    let after = payloads("restored", 6);
    assert_client_succeeded(&mut tc.submit_wait("restored", &after), &after).await;

    // A run in flight when the quorum went may be abandoned: its worker, cut off past the limit,
    // kills the command (which then writes no end line) before its session could expire.
    journal.assert_no_concurrent_runs_stopped(&HashMap::new(), &support::journal::abandonments(&[&w1, &w2]));
    support::assert_tree_drained(&tc).await;
    for p in [&master, &w1, &w2] {
        p.assert_no_panic();
    }
}
