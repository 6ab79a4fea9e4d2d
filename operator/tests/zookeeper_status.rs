//! The operator's status reader against a real ZooKeeper and real masters: it sees the
//! leader through failover, reads the credential-protected tree without credentials, and
//! fails fast, dropping its session, when the ensemble goes away.
//!
//! Needs a JRE and the pinned ZooKeeper that `zookeeper/install.sh` installs (as the runtime's
//! tests do).

use std::time::{Duration, Instant};

use taskcluster::localzk::LocalZk;
use taskcluster::master::{self, MasterContext};
use taskcluster::records::TaskSettings;
use taskcluster::telemetry::http::Probes;
use taskcluster::telemetry::metrics::MasterMetrics;
use taskcluster::{ClusterStatus, ZkTarget};
use taskcluster_operator::zk::{StatusSource, ZkStatusReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KEY: &str = "default/demo";

fn start_master(connect: &str, id: &str) -> (CancellationToken, JoinHandle<()>) {
    let ctx = MasterContext {
        id: id.into(),
        target: ZkTarget::new(connect)
            .with_digest(Some("taskcluster:s3cret".into()))
            .with_session_timeout(Duration::from_secs(4)),
        settings: TaskSettings::default(),
        metrics: MasterMetrics::default(),
        probes: Probes::new(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        master::run(&ctx, &token).await.expect("master runs");
    });
    (shutdown, handle)
}

/// Reads until `done` holds; panics with the last reading after the deadline.
async fn read_until(
    reader: &ZkStatusReader,
    connect: &str,
    what: &str,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reading = reader.read(KEY, connect).await;
        match &reading {
            Ok(status) if done(status) => return status.clone(),
            _ if Instant::now() > deadline => panic!("{what} not seen; last reading: {reading:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_real_leader_and_survives_losing_zookeeper() {
    let zk = LocalZk::start().unwrap_or_else(|e| panic!("{e}"));
    let connect = zk.connect_string();
    let opened = prometheus_client::metrics::counter::Counter::<u64>::default();
    let reader = ZkStatusReader::new(Duration::from_millis(1500)).counting_sessions_in(opened.clone());

    let err = reader.read(KEY, &connect).await.expect_err("no master has created the tree yet");
    assert_eq!(err.reason(), "TaskTreeMissing", "{err}");

    let (stop_a, master_a) = start_master(&connect, "demo-master-a");
    let first = read_until(&reader, &connect, "master a leading", |s| {
        s.leader.as_ref().is_some_and(|l| l.id == "demo-master-a")
    })
    .await;
    assert_eq!(reader.sessions(), 1, "one cached session per cluster");

    let (stop_b, master_b) = start_master(&connect, "demo-master-b");
    read_until(&reader, &connect, "two contenders", |s| s.masters == 2).await;
    // A master closes its session at once on shutdown: the standby takes over.
    stop_a.cancel();
    master_a.await.expect("master a stops");
    // The new leader shows at once; its takeover record (epoch, time) follows.
    let second = read_until(&reader, &connect, "master b leading in a new epoch", |s| {
        s.leader.as_ref().is_some_and(|l| l.id == "demo-master-b" && l.since_ms > 0) && s.epoch > first.epoch
    })
    .await;
    assert_eq!(second.masters, 1);
    assert_eq!(reader.sessions(), 1, "the same session served every read");
    assert_eq!(opened.get(), 1, "sessions opened");

    stop_b.cancel();
    master_b.await.expect("master b stops");
    drop(zk);
    let err = reader.read(KEY, &connect).await.expect_err("the ensemble is gone");
    assert!(
        matches!(err.reason(), "ZooKeeperUnreachable" | "ZooKeeperReadFailed"),
        "unexpected reason {}: {err}",
        err.reason()
    );
    assert_eq!(reader.sessions(), 1, "the session is kept: its client reconnects by itself");
    let again = reader.read(KEY, &connect).await.expect_err("still gone");
    assert_eq!((again.reason(), again.to_string()), (err.reason(), err.to_string()), "backing off, the same failure");
}
