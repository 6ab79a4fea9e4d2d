//! The CRD in `crds/` and in the Helm chart must be exactly what the Rust types generate,
//! and carry what `kubectl explain`, `kubectl scale` and `kubectl get` rely on.

use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::Value;
use taskcluster_operator::crd::TaskCluster;

const REGENERATE: &str = "cargo run -p taskcluster-operator --bin crdgen > crds/taskcluster.yaml && \
                          cp crds/taskcluster.yaml charts/taskcluster-operator/crds/taskcluster.yaml";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn generated() -> String {
    serde_yaml::to_string(&TaskCluster::crd()).expect("the CRD serializes")
}

#[test]
fn committed_crds_match_the_rust_types() {
    let expected = generated();
    for path in ["crds/taskcluster.yaml", "charts/taskcluster-operator/crds/taskcluster.yaml"] {
        let committed = std::fs::read_to_string(repo_file(path)).unwrap_or_default();
        assert!(
            committed == expected,
            "{path} is stale or missing: the TaskCluster types changed. Regenerate it with\n\n    {REGENERATE}\n"
        );
    }
}

fn schema() -> Value {
    let crd = serde_json::to_value(TaskCluster::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every property under `schema` (ours, not the embedded Kubernetes types) has a description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else { return };
    for (name, property) in properties {
        let here = format!("{path}.{name}");
        if property["description"].as_str().is_none_or(str::is_empty) {
            out.push(here.clone());
        }
        // Resource requirements and conditions are documented upstream.
        if !name.ends_with("esources") && name != "conditions" {
            undocumented(property, &here, out);
        }
    }
}

#[test]
fn every_field_is_explained() {
    let schema = schema();
    let mut missing = Vec::new();
    undocumented(&schema["properties"]["spec"], "spec", &mut missing);
    undocumented(&schema["properties"]["status"], "status", &mut missing);
    assert!(missing.is_empty(), "fields without a doc comment (kubectl explain shows nothing): {missing:?}");
}

#[test]
fn scale_printer_columns_and_names_are_as_documented() {
    let crd = serde_json::to_value(TaskCluster::crd()).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "tc");
    assert_eq!(crd["spec"]["names"]["plural"], "taskclusters");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.workers");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Masters", "Workers", "Ready", "Leader", "Backlog", "Age"]);
}

#[test]
fn the_schema_carries_the_rules_users_hit() {
    let text = serde_json::to_string(&schema()).unwrap();
    for rule in [
        "self == 1 || self == 3 || self == 5",
        "zookeeper.storage cannot change after creation",
        "sessionTimeout must be between 4s and 40s",
        "tasks.timeout must be between 1s and 24h",
        "storageClassName cannot be combined with ephemeral",
        "size(self.metadata.name) <= 40",
        "autoscaling.minWorkers must not be greater than autoscaling.maxWorkers",
        "autoscaling.scaleUpStabilization must be between 0s and 1h",
        "autoscaling.scaleDownStabilization must be between 0s and 1h",
        "labels must not set app.kubernetes.io/component, app.kubernetes.io/instance, \
         app.kubernetes.io/managed-by, app.kubernetes.io/name: the operator sets them to identify its pods",
    ] {
        assert!(text.contains(rule), "rule {rule:?} missing from the schema");
    }
    let spec = &schema()["properties"]["spec"]["properties"];
    let replicas = serde_json::to_string(&spec["zookeeper"]["properties"]["replicas"]).unwrap();
    assert!(!replicas.contains("oldSelf"), "the ensemble may be resized: {replicas}");
    assert_eq!(spec["masters"]["minimum"], 1.0);
    assert_eq!(spec["workers"]["minimum"], 0.0);
    assert_eq!(spec["masters"]["default"], 2);
    assert_eq!(spec["workers"]["default"], 2);
    let autoscaling = &spec["autoscaling"]["properties"];
    assert_eq!(autoscaling["maxWorkers"]["maximum"], 1000.0);
    assert_eq!(autoscaling["minWorkers"]["minimum"], 0.0, "scale to zero is allowed");
    assert_eq!(autoscaling["scaleUpStabilization"]["default"], "0s");
    assert_eq!(autoscaling["scaleDownStabilization"]["default"], "300s");
}

#[test]
fn each_role_takes_the_pod_placement_fields_as_kubernetes_spells_them() {
    let pods = &schema()["properties"]["spec"]["properties"]["pods"]["properties"];
    for role in ["masters", "workers", "zookeeper"] {
        let fields = pods[role]["properties"].as_object().unwrap_or_else(|| panic!("spec.pods.{role} missing"));
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        let expected = [
            "affinity",
            "annotations",
            "labels",
            "nodeSelector",
            "priorityClassName",
            "tolerations",
            "topologySpreadConstraints",
        ];
        assert_eq!(names, expected, "spec.pods.{role}");
        // The embedded Kubernetes types, inlined: a structural schema has no references.
        let anti = &fields["affinity"]["properties"]["podAntiAffinity"]["properties"];
        assert!(anti["preferredDuringSchedulingIgnoredDuringExecution"]["items"].is_object(), "{role}");
        assert_eq!(fields["tolerations"]["items"]["properties"]["effect"]["type"], "string");
    }
    assert!(!serde_json::to_string(&schema()).unwrap().contains("$ref"), "no $ref in a CRD schema");
}
