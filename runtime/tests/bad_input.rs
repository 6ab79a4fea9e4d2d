//! Bad input of every kind gets a clear error and never a panic, and nothing is lost:
//! an unreachable ZooKeeper, garbage written into our znodes by a foreign client, payloads
//! over the size limit, empty payloads, and bad flags.

mod support;

use support::{
    assert_exactly_one_ok_result_each, assert_tree_drained, eventually_async, free_port, is_leader, payloads,
    wait_ready, wait_single_leader, Proc, ResultLine, TestCluster, LONG, SHORT,
};

const FAILURE_PREFIX: &[u8] = b"\0FAILED\0 ";
const MAX_PAYLOAD: usize = 1_000_000;

fn assert_clear_error(proc: &Proc, expected_code: i32, code: i32, mentions: &[&str]) {
    assert_eq!(code, expected_code, "{} should exit {expected_code}\n{}", proc.name, proc.describe());
    proc.assert_no_panic();
    let stderr = proc.stderr();
    assert!(!stderr.trim().is_empty(), "{} failed without saying why", proc.name);
    let lower = stderr.to_lowercase();
    for word in mentions {
        assert!(lower.contains(&word.to_lowercase()), "{}: the error should mention {word:?}:\n{stderr}", proc.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_zookeeper_is_a_clear_error_with_exit_3() {
    let tc = TestCluster::new("unreachable").await;
    let nowhere = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["submit", "--zk", nowhere.as_str(), "--session-timeout", "2s", "--wait", "hello"],
        vec!["submit", "--zk", nowhere.as_str(), "--session-timeout", "2s", "hello"],
    ] {
        let mut proc = tc.run("submit-unreachable", &args);
        let code = proc.exit_code(LONG).await;
        assert_clear_error(&proc, 3, code, &["zookeeper", &nowhere]);
        assert!(proc.stdout().trim().is_empty(), "nothing was submitted, so nothing is printed");
    }
    let mut status = tc.run("status-unreachable", &["status", "--zk", &nowhere, "--session-timeout", "2s", "--json"]);
    let code = status.exit_code(LONG).await;
    assert_ne!(code, 0, "status against no ZooKeeper must fail\n{}", status.describe());
    status.assert_no_panic();
    assert!(status.stderr().to_lowercase().contains("zookeeper"), "{}", status.describe());
}

/// A foreign client writes garbage where our processes read: non-UTF-8 worker assignments,
/// records and counters, a bogus contender, foreign inboxes and entries. Nothing panics and
/// work continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_our_znodes_does_not_stop_the_cluster() {
    let tc = TestCluster::new("garbage").await;
    let master = tc.master_with("m1", &support::MasterOpts { max_attempts: 2, ..Default::default() });
    wait_single_leader(&[&master], LONG).await;
    let zk = tc.inspector().await;
    let garbage: &[u8] = b"\xff\xfe\x00\xc3(not json";

    // Tasks waiting for a worker, each with a garbage attempts record.
    let mut submit = tc.submit("submit-pending", &["fail on purpose", "keep me", "me too"]);
    assert_eq!(submit.exit_code(LONG).await, 0, "submit without --wait\n{}", submit.describe());
    let ids: Vec<String> = submit.stdout_lines().into_iter().filter(|l| !l.is_empty()).collect();
    assert_eq!(ids.len(), 3, "submit prints one id per task\n{}", submit.describe());
    for id in &ids {
        zk.put(&format!("/taskcluster/attempts/{id}"), garbage, false).await;
    }
    zk.put("/taskcluster/attempts/no-such-task", garbage, false).await;
    zk.put("/workers/garbage", garbage, true).await;
    zk.put("/master/bogus", garbage, false).await;
    zk.put("/taskcluster/config", garbage, false).await;
    zk.put("/taskcluster/status", garbage, false).await;

    // status copes with all of it.
    let status = tc.status().await;
    assert_eq!(status["leader"]["id"], "m1", "a bogus /master child must not be taken for the leader: {status}");

    // In the inboxes: a name that is no inbox, the inbox of a registration that never was
    // (swept after the next registration), and an entry announcing a task that does not exist.
    zk.put("/taskcluster/inbox/not-an-inbox", garbage, false).await;
    zk.put("/taskcluster/inbox/ghost@0000000000000001", garbage, false).await;
    zk.put("/taskcluster/inbox/ghost@0000000000000001/t1", garbage, false).await;
    let mut worker = tc.worker("w1", "fail");
    wait_ready(&mut worker).await;
    let owner = zk.stat("/workers/w1").await.expect("w1 is registered").ephemeral_owner;
    zk.put(&format!("/taskcluster/inbox/w1@{owner:016x}/no-such-task"), garbage, false).await;
    let results = eventually_async("the pending tasks to get results", LONG, || async {
        let mut out = Vec::new();
        for id in &ids {
            match zk.data(&format!("/tasks/{id}")).await {
                Some(data) if !data.is_empty() => out.push(data),
                _ => return None,
            }
        }
        Some(out)
    })
    .await;
    let failures: Vec<&Vec<u8>> = results.iter().filter(|r| r.starts_with(FAILURE_PREFIX)).collect();
    assert_eq!(failures.len(), 1, "exactly the failing task's result starts with the failure prefix: {results:?}");
    let mut successes: Vec<&[u8]> =
        results.iter().filter(|r| !r.starts_with(FAILURE_PREFIX)).map(|r| r.as_slice()).collect();
    successes.sort();
    assert_eq!(successes, vec![&b"keep me"[..], &b"me too"[..]]);

    // Work continues; the garbage is still there and still ignored.
    zk.set("/taskcluster/status", garbage).await;
    let more = payloads("after garbage", 5);
    let mut client = tc.submit_wait("client", &more);
    assert_eq!(client.exit_code(LONG).await, 0, "{}", client.describe());
    let lines = ResultLine::parse_all(&client.stdout());
    assert_exactly_one_ok_result_each("client", &lines, &more);
    let status = tc.status().await;
    assert_eq!(status["leader"]["id"], "m1", "{status}");
    assert_eq!(is_leader(&master), Some(true), "the master should still lead");
    eventually_async("the leader to remove the inbox of no registration", LONG, || async {
        (!zk.exists("/taskcluster/inbox/ghost@0000000000000001").await).then_some(())
    })
    .await;
    assert!(zk.exists("/taskcluster/inbox/not-an-inbox").await, "a foreign name is left alone");
    for p in [&master, &worker, &client] {
        p.assert_no_panic();
    }
}

/// A payload over 1,000,000 bytes is refused before anything is written; one of exactly the
/// limit goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_limit_is_refused_and_nothing_is_submitted() {
    let tc = TestCluster::new("big-payload").await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "echo");
    wait_ready(&mut worker).await;

    let mut too_big = vec![b'x'; MAX_PAYLOAD + 1];
    too_big.push(b'\n');
    let mut proc = tc.submit_stdin("too-big", &["--wait"], &too_big);
    let code = proc.exit_code(LONG).await;
    assert_clear_error(&proc, 2, code, &["payload"]);
    assert!(
        proc.stderr().contains("1000000") || proc.stderr().contains("1,000,000") || proc.stderr().contains("1 MB"),
        "the error should name the limit:\n{}",
        proc.stderr()
    );
    let zk = tc.inspector().await;
    assert!(zk.children("/tasks").await.is_empty(), "a refused payload must not leave a task");
    assert!(zk.children("/data").await.is_empty(), "a refused payload must not leave data");

    let mut at_limit = vec![b'y'; MAX_PAYLOAD];
    at_limit.push(b'\n');
    let mut proc = tc.submit_stdin("at-limit", &["--wait"], &at_limit);
    let code = proc.exit_code(LONG).await;
    assert_eq!(code, 0, "a payload of exactly the limit is accepted\n{}", proc.describe());
    let lines = ResultLine::parse_all(&proc.stdout());
    assert_eq!(lines.len(), 1);
    assert!(lines[0].ok && lines[0].text.len() == MAX_PAYLOAD && lines[0].text.bytes().all(|b| b == b'y'));
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

/// An empty payload must not hang its client (an empty result means "pending" in the seed
/// protocol): the seed computation of nothing is the empty result, answered as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_payload_is_answered_never_left_hanging() {
    let tc = TestCluster::new("empty-payload").await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;

    // The client's timeout is far beyond the failure deadline: only an answer ends it in time.
    let mut proc = tc.submit("empty", &["--wait", "--timeout", "1h", ""]);
    let code = proc.exit_code(LONG).await;
    proc.assert_no_panic();
    let lines = ResultLine::parse_all(&proc.stdout());
    assert_eq!(lines.len(), 1, "an empty payload must get exactly one answer\n{}", proc.describe());
    assert!(lines[0].ok && lines[0].text.is_empty(), "expected the empty result: {:?}", lines[0]);
    assert_eq!(code, 0, "{}", proc.describe());
    assert_tree_drained(&tc).await;
    master.assert_no_panic();
    worker.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2_with_a_message() {
    let tc = TestCluster::new("bad-flags").await;
    let zk = tc.zk();
    let missing = tc.file("no-such-file.txt").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["frobnicate"],
        vec!["submit", "--zk", &zk, "--bogus-flag", "x"],
        vec!["submit", "--zk", &zk, "--inflight", "0", "x"],
        vec!["submit", "--zk", &zk, "--timeout", "soon", "x"],
        vec!["submit", "--zk", &zk, "--count", "many"],
        vec!["submit", "--zk", "no-port-here", "x"],
        vec!["submit", "--zk", &zk, "--file", &missing],
        vec!["submit", "--zk", &zk],
        vec!["submit", "x"],
        vec!["master", "--zk", &zk, "--max-attempts", "0"],
        vec!["master", "--zk", &zk, "--session-timeout", "-3s"],
        vec!["master", "--zk", &zk, "--session-timeout", "0s"],
        vec!["master", "--zk", &zk, "--task-timeout", "0s"],
        vec!["master", "--zk", &zk, "--retention", "0s"],
        vec!["submit", "--zk", &zk, "--timeout", "0s", "x"],
        vec!["worker", "--zk", &zk, "--handler", "nope"],
        vec!["status", "--zk", &zk, "--json=maybe"],
    ];
    for args in cases {
        let mut proc = tc.run("bad-flags", &args);
        let code = proc.exit_code(SHORT).await;
        assert_eq!(code, 2, "`taskcluster {}` should exit 2\n{}", args.join(" "), proc.describe());
        proc.assert_no_panic();
        assert!(!proc.stderr().trim().is_empty(), "`taskcluster {}` gave no message", args.join(" "));
    }

    // A bad --listen address is refused with a message naming the flag.
    let mut proc = tc.run("bad-listen", &["master", "--zk", &zk, "--listen", "not-an-address"]);
    let code = proc.exit_code(SHORT).await;
    assert_ne!(code, 0, "{}", proc.describe());
    proc.assert_no_panic();
    assert!(proc.stderr().contains("--listen"), "{}", proc.describe());
}
