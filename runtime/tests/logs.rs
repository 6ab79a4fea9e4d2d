//! Log lines fit for collectors: written to a file (no terminal), text lines carry no colour
//! codes, and with `--log-format json` every line is one JSON object.

mod support;

use support::{eventually, wait_single_leader, TestCluster, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_carry_no_colour_codes_and_json_lines_parse() {
    let tc = TestCluster::new("logs").await;
    let text = tc.master("text");
    wait_single_leader(&[&text], LONG).await;
    let lines = text.stderr();
    assert!(lines.contains("leading"), "the leader says so\n{lines}");
    assert!(!lines.contains('\u{1b}'), "colour codes in a log file:\n{lines:?}");

    let zk = tc.zk();
    let json = tc.run("json", &["--log-format", "json", "master", "--zk", &zk, "--id", "json", "--listen", "off"]);
    let lines = eventually("the JSON master logs its candidacy", LONG, || {
        let err = json.stderr();
        err.lines().any(|l| l.contains("contending for leadership")).then_some(err)
    })
    .await;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value.is_object() && value.get("level").is_some(), "{line}");
        assert!(!line.contains('\u{1b}'), "{line:?}");
    }
}
