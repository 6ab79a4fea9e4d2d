//! Names and labels of the objects a TaskCluster owns.
//!
//! `app.kubernetes.io/version` names the operator release that wrote an object, so it sits
//! only on the objects' own metadata. Selectors and claim templates are immutable (an apply
//! that changes them is rejected) and a pod template that changes restarts its pods, so these
//! carry [`stable_labels`]: an operator upgrade alone changes none of them.

use std::collections::BTreeMap;

pub const APP_NAME: &str = "taskcluster";
pub const MANAGED_BY: &str = "taskcluster-operator";
/// Pods carrying `taskcluster.dev/client: <cluster name>` may reach that cluster's ZooKeeper.
pub const CLIENT_LABEL: &str = "taskcluster.dev/client";
/// Hash of the desired object, to skip writes when nothing changed.
pub const APPLIED_HASH: &str = "taskcluster.dev/applied-hash";
/// Hash of the rendered configuration in a pod template, so a change rolls the pods.
pub const CONFIG_HASH: &str = "taskcluster.dev/config-hash";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    ZooKeeper,
    Master,
    Worker,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::ZooKeeper => "zookeeper",
            Component::Master => "master",
            Component::Worker => "worker",
        }
    }
}

/// Labels that identify every object of one TaskCluster.
pub fn instance_selector(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
    ])
}

/// Labels that select the pods of one component; stable across operator versions.
pub fn selector(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = instance_selector(instance);
    labels.insert("app.kubernetes.io/component".into(), component.as_str().into());
    labels
}

/// Every recommended label but the version: for pod templates and volume claim templates.
pub fn stable_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector(instance, component);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

/// All recommended labels of an object written by operator release `version`.
pub fn labels(instance: &str, component: Component, version: &str) -> BTreeMap<String, String> {
    let mut labels = stable_labels(instance, component);
    labels.insert("app.kubernetes.io/version".into(), version.into());
    labels
}

/// `k=v,k=v` form of a selector, as `status.selector` and `kubectl -l` take it.
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Object names derived from the TaskCluster name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub instance: String,
    pub zookeeper: String,
    pub zookeeper_headless: String,
    pub zookeeper_config: String,
    pub credentials: String,
    /// The ZooKeeper administrator's digest (reconfiguration).
    pub admin: String,
    pub masters: String,
    pub workers: String,
}

impl Names {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_string(),
            zookeeper: format!("{instance}-zookeeper"),
            zookeeper_headless: format!("{instance}-zookeeper-headless"),
            zookeeper_config: format!("{instance}-zookeeper-config"),
            credentials: format!("{instance}-zookeeper-credentials"),
            admin: format!("{instance}-zookeeper-admin"),
            masters: format!("{instance}-master"),
            workers: format!("{instance}-worker"),
        }
    }

    /// The client address masters, workers and the operator connect to.
    pub fn zookeeper_client(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc:2181", self.zookeeper)
    }
}

/// FNV-1a: a stable 64-bit hash (unlike std's, which may change between releases), so the
/// hashes written into objects do not change with the compiler.
pub fn stable_hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
