//! What the autoscaler reads from a real ZooKeeper: each worker's state from its znode
//! before a scale-in, and whether the counters come from the current leader.
//!
//! Needs a JRE and the pinned ZooKeeper that `zookeeper/install.sh` installs (as the runtime's
//! tests do).

use std::time::{Duration, Instant};

use taskcluster::localzk::LocalZk;
use taskcluster::master::{self, MasterContext};
use taskcluster::records::{self, LeaderRecord, TaskSettings};
use taskcluster::telemetry::http::Probes;
use taskcluster::telemetry::metrics::MasterMetrics;
use taskcluster::{paths, ZkTarget};
use taskcluster_operator::autoscale::cost::WorkerState;
use taskcluster_operator::zk::{StatusSource, ZkStatusReader};
use tokio_util::sync::CancellationToken;
use zookeeper_client::CreateMode;

const KEY: &str = "default/demo";

fn target(connect: &str) -> ZkTarget {
    ZkTarget::new(connect).with_digest(Some("taskcluster:s3cret".into())).with_session_timeout(Duration::from_secs(4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_states_come_from_their_znodes_and_counters_from_the_leader() {
    let zk = LocalZk::start().unwrap_or_else(|e| panic!("{e}"));
    let connect = zk.connect_string();
    let target = target(&connect);
    let client = target.connect_with_roots().await.expect("connects and creates the tree");
    let ephemeral = CreateMode::Ephemeral.with_acls(target.acls());
    let withdrawal = paths::withdrawal("t1f-2~aGk");
    let registered: [(&str, &[u8]); 4] = [
        ("demo-worker-5f7c-aaaaa", b""),
        ("demo-worker-5f7c-bbbbb", b"t1f-1~aGk"),
        ("demo-worker-5f7c-ccccc", paths::DRAINING),
        ("demo-worker-5f7c-ddddd", &withdrawal),
    ];
    for (id, data) in registered {
        client.create(&paths::worker(id), data, &ephemeral).await.expect("registers");
    }

    // Read-only and without credentials, like the status.
    let reader = ZkStatusReader::new(Duration::from_millis(1500));
    let mut workers = reader.workers(KEY, &connect).await.expect("reads /workers");
    workers.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [
        ("demo-worker-5f7c-aaaaa", WorkerState::Idle),
        ("demo-worker-5f7c-bbbbb", WorkerState::Busy),
        ("demo-worker-5f7c-ccccc", WorkerState::Draining),
        ("demo-worker-5f7c-ddddd", WorkerState::Busy),
    ];
    let workers: Vec<(&str, WorkerState)> = workers.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    assert_eq!(workers, expected);

    let before = reader.read(KEY, &connect).await.expect("reads the status");
    assert!(before.leader.is_none() && !before.counters_fresh, "no leader has published: {before:?}");

    let ctx = MasterContext {
        id: "demo-master-a".into(),
        target: target.clone(),
        settings: TaskSettings::default(),
        metrics: MasterMetrics::default(),
        probes: Probes::new(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let master = tokio::spawn(async move { master::run(&ctx, &token).await.expect("master runs") });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = reader.read(KEY, &connect).await;
        match &status {
            Ok(s) if s.leader.is_some() && s.counters_fresh => break,
            _ if Instant::now() > deadline => panic!("the leader's counters never became fresh: {status:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(reader.sessions(), 1, "the worker read shares the status session");

    shutdown.cancel();
    master.await.expect("master stops");

    // A takeover as the reader can meet it: a newer leader record, its counters not yet
    // published. They read as 0 and say so.
    let (data, _) = client.get_data(paths::LEADER).await.expect("the leader record");
    let old: LeaderRecord = records::decode(paths::LEADER, &data).expect("a leader record");
    let newer =
        LeaderRecord { id: "demo-master-b".into(), epoch: old.epoch + 1, since_ms: 0, contender: String::new() };
    client.set_data(paths::LEADER, &records::encode(&newer), None).await.expect("writes the leader record");
    let taken_over = reader.read(KEY, &connect).await.expect("reads the status");
    assert_eq!(taken_over.epoch, old.epoch + 1);
    assert!(!taken_over.counters_fresh, "counters of the previous epoch: {taken_over:?}");
    assert_eq!((taken_over.backlog, taken_over.running, taken_over.workers_busy), (0, 0, 0));
    drop(client);
    drop(zk);
    let err = reader.workers(KEY, &connect).await.expect_err("the ensemble is gone");
    assert!(matches!(err.reason(), "ZooKeeperUnreachable" | "ZooKeeperReadFailed"), "{err}");
    assert_eq!(reader.sessions(), 1, "the session is kept: its client reconnects by itself");
    let again = reader.workers(KEY, &connect).await.expect_err("backing off");
    assert_eq!(again.to_string(), err.to_string(), "the same failure while backing off");
    let read = reader.read(KEY, &connect).await.expect_err("the ensemble is gone");
    assert!(matches!(read.reason(), "ZooKeeperUnreachable" | "ZooKeeperReadFailed"), "{read}");
}
