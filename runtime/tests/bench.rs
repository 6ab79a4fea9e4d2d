//! `taskcluster bench` keeps its contract: one JSON line whose numbers agree with one another,
//! every task completed, and a clear refusal of a bad flag.

mod support;

use support::{TestCluster, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ends_with_one_consistent_json_line() {
    let tc = TestCluster::new("bench").await;
    let zk = tc.zk();
    let args = [
        "bench",
        "--zk",
        &zk,
        "--workers",
        "2",
        "--clients",
        "2",
        "--inflight",
        "4",
        "--tasks",
        "300",
        "--raw-creates",
        "300",
        "--raw-window",
        "16",
    ];
    let mut bench = tc.run("bench", &args);
    assert_eq!(bench.exit_code(LONG).await, 0, "{}", bench.describe());
    bench.assert_no_panic();
    let lines = bench.stdout_lines();
    let last = lines.last().unwrap_or_else(|| panic!("no output\n{}", bench.describe()));
    let report: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let number = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {report}"));

    assert_eq!((number("tasks"), number("failed")), (300.0, 0.0), "{report}");
    assert!(number("tasks_per_s") > 0.0 && number("idle_p50_ms") > 0.0, "{report}");
    assert!(number("p50_ms") <= number("p99_ms"), "{report}");
    let (before, after, raw) = (number("raw_before_per_s"), number("raw_after_per_s"), number("raw_zk_creates_per_s"));
    assert!(before > 0.0 && after > 0.0, "{report}");
    assert!((raw - (before + after) / 2.0).abs() < 1e-6 * raw, "the raw rate is the mean of both: {report}");
    assert!((number("ratio_to_raw") - number("tasks_per_s") / raw).abs() < 1e-9, "{report}");

    // The bench works in a scratch znode of its own and removes it.
    let left = tc.inspector().await.children("/").await;
    assert!(left.is_empty(), "the bench left {left:?} behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_window_of_zero_is_refused() {
    let tc = TestCluster::new("bench-flags").await;
    let zk = tc.zk();
    let mut bench = tc.run("bench", &["bench", "--zk", &zk, "--raw-window", "0"]);
    assert_eq!(bench.exit_code(LONG).await, 2, "{}", bench.describe());
    assert!(bench.stderr().contains("--raw-window"), "the error names the flag\n{}", bench.describe());
    bench.assert_no_panic();
}
