//! The test harness itself: real ZooKeeper servers start, serve, replicate and stop.

mod support;

use std::time::Duration;

use support::{shared_standalone, Inspector, TestCluster, ZkCluster, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server_serves_and_chroots_isolate_tests() {
    let zk = tokio::task::spawn_blocking(shared_standalone).await.unwrap();
    assert_eq!(zk.nodes.len(), 1);
    assert_eq!(zk.nodes[0].mode().as_deref(), Some("standalone"));

    let a = TestCluster::new("smoke-a").await;
    let b = TestCluster::new("smoke-b").await;
    assert_ne!(a.chroot, b.chroot);
    let ia = a.inspector().await;
    let ib = b.inspector().await;
    ia.put("/tasks/x", b"payload", false).await;
    assert_eq!(ia.data("/tasks/x").await.as_deref(), Some(&b"payload"[..]));
    assert_eq!(ib.data("/tasks/x").await, None, "chroots must not see each other's znodes");

    let root = Inspector::connect(&a.hosts, LONG).await;
    assert_eq!(root.data(&format!("{}/tasks/x", a.chroot)).await.as_deref(), Some(&b"payload"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_replicates_and_survives_the_loss_of_one_server() {
    let zk = tokio::task::spawn_blocking(|| ZkCluster::ensemble(3)).await.unwrap();
    let modes: Vec<String> = zk.nodes.iter().filter_map(|n| n.mode()).collect();
    assert_eq!(modes.iter().filter(|m| *m == "leader").count(), 1, "modes: {modes:?}");
    assert_eq!(modes.iter().filter(|m| *m == "follower").count(), 2, "modes: {modes:?}");

    // A write through one member is readable through each other member.
    let one = Inspector::connect(&zk.node(1).address(), LONG).await;
    one.put("/smoke", b"written on server 1", false).await;
    for myid in [2, 3] {
        let other = Inspector::connect(&zk.node(myid).address(), LONG).await;
        other.sync("/smoke").await;
        assert_eq!(other.data("/smoke").await.as_deref(), Some(&b"written on server 1"[..]), "server {myid}");
    }

    // Kill the leader: the two others elect a new one and still accept writes.
    let leader = zk.leader().myid;
    zk.node(leader).kill();
    assert!(!zk.node(leader).is_running());
    let survivor = if leader == 1 { 2 } else { 1 };
    tokio::task::spawn_blocking({
        let deadline = std::time::Instant::now() + LONG;
        let port = zk.node(survivor).client_port;
        move || loop {
            let mode = support::zk_server::four_letter_word(port, "srvr")
                .and_then(|r| r.lines().find_map(|l| l.strip_prefix("Mode: ").map(str::to_string)));
            if matches!(mode.as_deref(), Some("leader" | "follower")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no new quorum after killing the leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let s = Inspector::connect(&zk.node(survivor).address(), LONG).await;
    s.put("/after-failover", b"ok", false).await;

    // Restart it: it rejoins and catches up.
    zk.node(leader).restart();
    tokio::task::spawn_blocking({
        let deadline = std::time::Instant::now() + LONG;
        let port = zk.node(leader).client_port;
        move || loop {
            let mode = support::zk_server::four_letter_word(port, "srvr")
                .and_then(|r| r.lines().find_map(|l| l.strip_prefix("Mode: ").map(str::to_string)));
            if matches!(mode.as_deref(), Some("leader" | "follower")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "restarted server did not rejoin");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let back = Inspector::connect(&zk.node(leader).address(), LONG).await;
    back.sync("/after-failover").await;
    assert_eq!(back.data("/after-failover").await.as_deref(), Some(&b"ok"[..]));
}
