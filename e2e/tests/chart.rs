//! The Helm chart renders what its values ask for: checked with `helm template`, no cluster
//! needed (the suite's scenarios install it). Runs with the suite (`TASKCLUSTER_E2E`).

use taskcluster_e2e::tools::Tools;

/// `helm template` of the chart with `args`; `None` when the e2e suite is not enabled.
async fn render(args: &[&str]) -> Option<Result<String, String>> {
    std::env::var_os("TASKCLUSTER_E2E").filter(|v| !v.is_empty())?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/taskcluster-operator");
    let mut all = vec!["template", "taskcluster-operator", chart, "--namespace", "taskcluster-system"];
    all.extend(args);
    Some(Tools::from_env().helm(&all).await.map_err(|e| e.to_string()))
}

/// The documents of `kind` in a rendered manifest.
fn documents<'a>(manifest: &'a str, kind: &str) -> Vec<&'a str> {
    let header = format!("\nkind: {kind}\n");
    manifest.split("\n---").filter(|d| format!("\n{d}").contains(&header)).collect()
}

/// The rule of `role` for `resource`.
fn rule<'a>(role: &'a str, resource: &str) -> Option<&'a str> {
    role.split("- apiGroups").find(|r| r.contains(&format!("resources: [\"{resource}\"]")))
}

#[tokio::test]
async fn by_default_one_cluster_role_that_never_reads_secrets() {
    let Some(rendered) = render(&[]).await else { return };
    let manifest = rendered.unwrap_or_else(|e| panic!("{e}"));
    let roles = documents(&manifest, "ClusterRole");
    assert_eq!(roles.len(), 1, "{manifest}");
    assert!(documents(&manifest, "Role").is_empty(), "no namespaced Role by default:\n{manifest}");
    let secrets = rule(roles[0], "secrets").unwrap_or_default();
    assert!(
        secrets.contains("verbs: [\"create\", \"patch\"]"),
        "Secrets are created and patched, never read: {secrets}"
    );
    assert!(!manifest.contains("WATCH_NAMESPACE"), "every namespace by default");
    assert!(documents(&manifest, "ServiceMonitor").is_empty(), "no ServiceMonitor unless asked for");
}

#[tokio::test]
async fn one_watched_namespace_gets_a_role_there_and_no_cluster_role() {
    let Some(rendered) = render(&["--set", "watchNamespace=tasks"]).await else { return };
    let manifest = rendered.unwrap_or_else(|e| panic!("{e}"));
    assert!(documents(&manifest, "ClusterRole").is_empty() && documents(&manifest, "ClusterRoleBinding").is_empty());
    let roles = documents(&manifest, "Role");
    assert_eq!(roles.len(), 1, "{manifest}");
    assert!(roles[0].contains("namespace: tasks"), "{}", roles[0]);
    let bindings = documents(&manifest, "RoleBinding");
    assert!(bindings.len() == 1 && bindings[0].contains("namespace: tasks"), "{manifest}");
    assert!(manifest.contains("- name: WATCH_NAMESPACE\n              value: \"tasks\""), "{manifest}");
}

#[tokio::test]
async fn pod_labels_annotations_priority_and_a_service_monitor_render_as_asked() {
    let args = [
        "--set",
        "podLabels.team=search",
        "--set",
        "podLabels.app\\.kubernetes\\.io/name=other",
        "--set",
        "podAnnotations.owner=ops",
        "--set",
        "priorityClassName=system-cluster-critical",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prometheus",
    ];
    let Some(rendered) = render(&args).await else { return };
    let manifest = rendered.unwrap_or_else(|e| panic!("{e}"));
    let deployment = documents(&manifest, "Deployment");
    let pod = deployment[0].split("  template:").nth(1).unwrap_or_default();
    assert!(pod.contains("team: search") && pod.contains("owner: ops"), "{pod}");
    assert!(!pod.contains("app.kubernetes.io/name: other"), "the chart's own labels win: {pod}");
    assert!(pod.contains("priorityClassName: \"system-cluster-critical\""), "{pod}");
    let monitors = documents(&manifest, "ServiceMonitor");
    assert_eq!(monitors.len(), 1, "{manifest}");
    assert!(monitors[0].contains("release: prometheus") && monitors[0].contains("port: http"), "{}", monitors[0]);
}

#[tokio::test]
async fn values_outside_the_schema_are_refused_with_their_path() {
    for (set, path) in [("replicas=0", "/replicas"), ("logFormat=xml", "/logFormat"), ("bogus=1", "bogus")] {
        let Some(rendered) = render(&["--set", set]).await else { return };
        let error = rendered.expect_err(set);
        assert!(error.contains(path), "{set}: {error}");
    }
}
