//! Digest credentials (`--zk-digest`, as the operator configures per TaskCluster): the task
//! tree is created writable by that identity only, so a client without them cannot submit
//! or tamper, while one with them works normally.

mod support;

use support::{seed_results, wait_ready, TestCluster, WorkerOpts, LONG, SESSION_TIMEOUT};
use zookeeper_client::{Acls, CreateMode, Error as ZkError};

const DIGEST: &str = "taskcluster:s3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_credentials_can_write_the_task_tree() {
    let tc = TestCluster::new("credentials").await;
    let zk = tc.zk();
    let master = tc.run(
        "master",
        &[
            "master",
            "--zk",
            &zk,
            "--zk-digest",
            DIGEST,
            "--id",
            "m1",
            "--listen",
            "off",
            "--session-timeout",
            SESSION_TIMEOUT,
        ],
    );
    let opts = WorkerOpts { env: vec![("TASKCLUSTER_ZK_DIGEST".into(), DIGEST.into())], ..WorkerOpts::handler("seed") };
    let mut worker = tc.worker_with("w1", &opts);
    wait_ready(&mut worker).await;

    let payloads = vec!["protected words".to_string()];
    let mut client = tc.run("client", &["submit", "--zk", &zk, "--zk-digest", DIGEST, "--wait", &payloads[0]]);
    assert_eq!(client.exit_code(LONG).await, 0, "{}", client.describe());
    let expected = seed_results(&payloads);
    assert!(client.stdout().contains(&format!("\tok\t{}", expected[0])), "{}", client.describe());

    // A foreign session without credentials: may read, may not write.
    let foreign = tc.inspector().await;
    assert!(!foreign.children("/workers").await.is_empty(), "reading stays open");
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    for path in ["/tasks/intruder", "/data/intruder", "/workers/intruder"] {
        let created = foreign.client.create(path, b"x", &options).await;
        assert_eq!(created.err(), Some(ZkError::NoAuth), "{path} must refuse a client without credentials");
    }
    let overwrite = foreign.client.set_data("/taskcluster/config", b"garbage", None).await;
    assert_eq!(overwrite.err(), Some(ZkError::NoAuth), "records must refuse a client without credentials");

    // Our own client without the credentials gets a clear error, not a hang or a panic.
    let mut stranger = tc.run("stranger", &["submit", "--zk", &zk, "--wait", "no credentials"]);
    assert_ne!(stranger.exit_code(LONG).await, 0, "{}", stranger.describe());
    assert!(stranger.stderr().contains("--zk-digest"), "the error says what to do\n{}", stranger.describe());
    for p in [&master, &worker, &client, &stranger] {
        p.assert_no_panic();
    }
}
