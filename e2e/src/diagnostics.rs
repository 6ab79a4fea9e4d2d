//! What a failed test prints: the objects, events and logs that explain it.

use crate::env::E2e;
use crate::taskcluster::OPERATOR_NAMESPACE;

/// Prints the state of `namespace` and the operator to stderr. Never fails: a broken
/// diagnostic must not hide the test's own error.
pub async fn dump(e2e: &E2e, namespace: &str) {
    eprintln!("==== diagnostics for namespace {namespace}");
    // The last lines of every container of the pods with this label.
    let labelled_logs =
        |selector: &str| args(&["logs", "-n", namespace, "--all-containers", "--prefix", "--tail=60", "-l", selector]);
    let sections: Vec<(String, Vec<String>)> = vec![
        ("TaskClusters".into(), args(&["get", "taskclusters", "-n", namespace, "-o", "yaml"])),
        (
            "objects".into(),
            args(&["get", "all,configmaps,secrets,pvc,pdb,networkpolicies", "-n", namespace, "-o", "wide"]),
        ),
        ("events".into(), args(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])),
        ("pod logs".into(), labelled_logs("app.kubernetes.io/name=taskcluster")),
        ("job logs".into(), labelled_logs("taskcluster.dev/e2e-job")),
        ("operator pods".into(), args(&["get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"])),
        (
            "operator logs".into(),
            args(&["logs", "-n", OPERATOR_NAMESPACE, "deployment/taskcluster-operator", "--tail=200"]),
        ),
        ("nodes".into(), args(&["describe", "nodes"])),
    ];
    for (title, argv) in sections {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        eprintln!("---- {title}: kubectl {}", argv.join(" "));
        match e2e.tools.kubectl(&argv).await {
            Ok(out) => eprintln!("{out}"),
            Err(err) => eprintln!("(unavailable: {err})"),
        }
    }
    eprintln!("==== end of diagnostics for {namespace}");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
