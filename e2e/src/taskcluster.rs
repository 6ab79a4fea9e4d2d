//! The TaskCluster resource, the operator's installation and per-test namespaces.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::core::ObjectMeta;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::env::E2e;
use crate::error::{Error, KubeContext, Result};

pub const GROUP: &str = "taskcluster.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "TaskCluster";
pub const PLURAL: &str = "taskclusters";
pub const CRD_NAME: &str = "taskclusters.taskcluster.dev";

/// Where the suite installs the operator with the Helm chart.
pub const OPERATOR_NAMESPACE: &str = "taskcluster-system";
pub const OPERATOR_RELEASE: &str = "taskcluster-operator";
/// Where masters and workers serve /metrics and the probes (operator/src/build/nodes.rs).
pub const NODE_HTTP_PORT: u16 = 9090;

/// A three-server ensemble starts its JVMs one after another on a 2-core node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(420);

/// Label on every namespace the suite creates, so a human can find and delete leftovers.
pub const E2E_LABEL: &str = "taskcluster.dev/e2e";

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

pub fn api(e2e: &E2e, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(e2e.client.clone(), namespace, &resource())
}

/// `.status` of a TaskCluster, `Null` before the operator wrote one.
pub fn status(object: &DynamicObject) -> &Value {
    object.data.get("status").unwrap_or(&Value::Null)
}

/// The status of condition `kind` (`"True"`, `"False"`, ...), if present.
pub fn condition(object: &DynamicObject, kind: &str) -> Option<String> {
    status(object)
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .map(String::from)
}

pub fn status_i64(object: &DynamicObject, field: &str) -> i64 {
    status(object).get(field).and_then(Value::as_i64).unwrap_or(0)
}

pub fn leader(object: &DynamicObject) -> Option<String> {
    status(object).get("leader").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from)
}

/// Label selector of the operator pods of the chart release `release`.
pub fn operator_selector(release: &str) -> String {
    format!("app.kubernetes.io/name=taskcluster-operator,app.kubernetes.io/instance={release}")
}

/// Label selector of one component's pods, as the operator labels them.
pub fn component_selector(instance: &str, component: &str) -> String {
    format!(
        "app.kubernetes.io/name=taskcluster,app.kubernetes.io/instance={instance},app.kubernetes.io/component={component}"
    )
}

/// The ZooKeeper client address of a TaskCluster, as its masters and workers use it.
pub fn zookeeper_client(instance: &str, namespace: &str) -> String {
    format!("{instance}-zookeeper.{namespace}.svc:2181")
}

/// `spec.exec` of tasks that take 0.2 s each: work that outlasts a disruption.
pub const SLOW_TASKS: &str = r#"read -r p; sleep 0.2; echo "$p""#;

/// A TaskCluster with the given shape, as YAML for `kubectl apply`.
pub fn manifest(e2e: &E2e, namespace: &str, name: &str, masters: i64, workers: i64, zk: i64) -> String {
    serde_yaml::to_string(&object(e2e, namespace, name, masters, workers, zk)).unwrap_or_default()
}

/// A TaskCluster with the given shape, to be changed (its `spec.exec`, say) before [`apply`].
pub fn object(e2e: &E2e, namespace: &str, name: &str, masters: i64, workers: i64, zk: i64) -> Value {
    let mut storage = json!({"size": "1Gi"});
    if e2e.ephemeral_storage {
        storage = json!({"ephemeral": true});
    }
    json!({
        "apiVersion": format!("{}/{}", GROUP, VERSION),
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "masters": masters,
            "workers": workers,
            "imagePullPolicy": "IfNotPresent",
            "zookeeper": {"replicas": zk, "heap": "128m", "storage": storage},
        },
    })
}

/// `kubectl apply` of `object`, as a user would.
pub async fn apply(e2e: &E2e, object: &Value) -> Result<()> {
    let manifest = serde_yaml::to_string(object)
        .map_err(|e| Error::Invalid { context: "the TaskCluster manifest".into(), message: e.to_string() })?;
    e2e.tools.kubectl_stdin(&["apply", "-f", "-"], &manifest).await?;
    Ok(())
}

/// The TaskCluster `name`, as the API server has it now.
pub async fn get(e2e: &E2e, namespace: &str, name: &str) -> Result<DynamicObject> {
    api(e2e, namespace).get(name).await.context(|| format!("reading TaskCluster {namespace}/{name}"))
}

/// One line of what the status says, for a wait's "last seen".
pub fn summary(object: &DynamicObject) -> String {
    let s = status(object);
    format!(
        "Ready={:?} leader={:?} backlog={} zookeeper={} masters={} workers={}",
        condition(object, "Ready"),
        leader(object),
        status_i64(object, "backlog"),
        s.get("zookeeper").cloned().unwrap_or(Value::Null),
        s.get("masters").cloned().unwrap_or(Value::Null),
        s.get("workers").cloned().unwrap_or(Value::Null),
    )
}

/// Waits until the TaskCluster is Ready and has a leader.
pub async fn wait_ready(e2e: &E2e, namespace: &str, name: &str) -> Result<DynamicObject> {
    crate::wait::until(&format!("TaskCluster {name} to be Ready"), READY_TIMEOUT, crate::wait::POLL, || async {
        let object = get(e2e, namespace, name).await?;
        if condition(&object, "Ready").as_deref() == Some("True") && leader(&object).is_some() {
            Ok(crate::wait::Poll::Done(object))
        } else {
            Ok(crate::wait::Poll::NotYet(summary(&object)))
        }
    })
    .await
}

static OPERATOR_INSTALLED: OnceCell<()> = OnceCell::const_new();

impl E2e {
    /// Installs (or upgrades) the operator from charts/taskcluster-operator with Helm,
    /// once per test binary, and waits for it to be available.
    pub async fn install_operator(&self) -> Result<()> {
        OPERATOR_INSTALLED.get_or_try_init(|| self.install_operator_now()).await.map(|_| ())
    }

    async fn install_operator_now(&self) -> Result<()> {
        // Helm installs a chart's crds/ only on first install; apply the CRD every time so
        // a changed schema reaches a long-lived cluster too.
        let crd = self.repo_root.join("crds/taskcluster.yaml");
        self.tools.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path_str(&crd)?]).await?;
        // Polled rather than `kubectl wait`, which fails outright while the new CRD has no
        // conditions yet (a large schema takes the API server a moment).
        let crds = Api::<CustomResourceDefinition>::all(self.client.clone());
        crate::wait::until(
            "the CRD to be established",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || async {
                let crd = crds.get(CRD_NAME).await.context(|| format!("reading crd/{CRD_NAME}"))?;
                let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                Ok(match conditions.iter().find(|c| c.type_ == "Established") {
                    Some(c) if c.status == "True" => crate::wait::Poll::Done(()),
                    other => crate::wait::Poll::NotYet(format!("Established: {:?}", other.map(|c| &c.status))),
                })
            },
        )
        .await?;
        self.install_operator_release(None).await
    }

    /// `helm upgrade --install` of the suite's operator, with the operator image of `release`
    /// (the chart's appVersion when `None`), waiting until the new operator pod is available.
    pub async fn install_operator_release(&self, release: Option<&str>) -> Result<()> {
        let tag = format!("image.tag={}", release.unwrap_or_default());
        self.install_chart(OPERATOR_RELEASE, OPERATOR_NAMESPACE, &[&tag], "5m").await
    }

    /// `helm upgrade --install` of charts/taskcluster-operator as `release` in `namespace`
    /// with extra `--set` values, waiting up to `timeout` for it to be available.
    pub async fn install_chart(&self, release: &str, namespace: &str, sets: &[&str], timeout: &str) -> Result<()> {
        let chart = self.repo_root.join("charts/taskcluster-operator");
        let chart = path_str(&chart)?;
        let mut args = vec!["upgrade", "--install", release, &chart, "--namespace", namespace, "--create-namespace"];
        // Both providers put the images on the node; nothing is ever pulled.
        args.extend(["--set", "image.pullPolicy=Never"]);
        for set in sets {
            args.extend(["--set", set]);
        }
        args.extend(["--wait", "--timeout", timeout]);
        self.tools.helm(&args).await?;
        Ok(())
    }

    /// Creates a fresh namespace for one test.
    pub async fn create_namespace(&self, test: &str) -> Result<String> {
        let suffix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() % 1_000_000).unwrap_or(0);
        let base: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let name = format!("e2e-{}-{suffix}", base.chars().take(40).collect::<String>().trim_matches('-'));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(E2E_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Deletes a test's namespace and waits until it is gone, so the next test starts on
    /// an idle node.
    pub async fn delete_namespace(&self, name: &str) -> Result<()> {
        let api = Api::<Namespace>::all(self.client.clone());
        match api.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {},
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(source) => return Err(Error::Kube { context: format!("deleting namespace {name}"), source }),
        }
        crate::wait::until(
            &format!("namespace {name} to be deleted"),
            Duration::from_secs(180),
            Duration::from_secs(2),
            || async {
                match api.get_opt(name).await.context(|| format!("reading namespace {name}"))? {
                    None => Ok(crate::wait::Poll::Done(())),
                    Some(ns) => Ok(crate::wait::Poll::NotYet(format!("phase {:?}", ns.status.and_then(|s| s.phase)))),
                }
            },
        )
        .await
    }
}

fn path_str(path: &std::path::Path) -> Result<String> {
    path.to_str().map(String::from).ok_or_else(|| Error::Invalid {
        context: "repository path".into(),
        message: format!("{} is not valid UTF-8", path.display()),
    })
}
