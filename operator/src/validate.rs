//! The pure validation step: turns a spec that passed the API server's schema into settings
//! the build step can use, or explains why it cannot be honoured.
//!
//! The schema already rejects most mistakes; this catches what it cannot (objects stored
//! before a rule existed, a CRD installed without CEL support, changes to fields that are
//! fixed after creation) so they become a condition instead of a crash loop.

use std::time::Duration;

use crate::autoscale::Policy;
use crate::build::labels::{self, Component};
use crate::crd::{PodPlacement, TaskCluster, TaskClusterSpec};
use crate::duration;
use crate::ensemble::{self, Running, Sizing};
use crate::quantity;

/// Longest TaskCluster name: `<name>-zookeeper-headless` must stay a 63-character DNS label.
pub const MAX_NAME_LEN: usize = 40;

/// A spec the operator can honour, with durations parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub spec: TaskClusterSpec,
    pub session_timeout: Duration,
    pub task_timeout: Duration,
    /// The autoscaling settings, when the operator owns the worker count.
    pub autoscaling: Option<Policy>,
    /// The ensemble's pods and initial members on the way to `spec.zookeeper.replicas`.
    pub ensemble: Sizing,
}

/// Why a spec cannot be honoured. `reason()` is the condition reason, `Display` the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("metadata.name {name:?} is {len} characters; at most {MAX_NAME_LEN} are allowed because it prefixes Service and pod names. Recreate the TaskCluster with a shorter name")]
    NameTooLong { name: String, len: usize },
    #[error("{field} {value:?} is not a duration such as 10s, 1m30s or 500ms")]
    BadDuration { field: &'static str, value: String },
    #[error("{field} is {value:?}; it must be between {min:?} and {max:?}")]
    DurationOutOfRange { field: &'static str, value: String, min: Duration, max: Duration },
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange { field: &'static str, value: i64, min: i64, max: i64 },
    #[error("zookeeper.replicas is {0}; it must be 1, 3 or 5")]
    EnsembleSize(i32),
    #[error("zookeeper.storage.storageClassName cannot be combined with ephemeral: true")]
    EphemeralWithClass,
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error(
        "autoscaling.minWorkers is {min}, above autoscaling.maxWorkers {max}; lower minWorkers or raise maxWorkers"
    )]
    MinAboveMax { min: i32, max: i32 },
    #[error("{field} is {value:?}; it must be a size such as 256m or 1g")]
    BadSize { field: &'static str, value: String },
    #[error("zookeeper.heap {heap} is more than {MAX_HEAP_PERCENT}% of the memory limit {limit}: the JVM needs memory beyond its heap and would be killed; lower zookeeper.heap or raise zookeeper.resources.limits.memory")]
    HeapAboveLimit { heap: String, limit: String },
    #[error("{field} sets {key:?}, a label the operator sets itself to identify the pods; remove it (extra labels may use any other key)")]
    OwnLabel { field: &'static str, key: String },
}

impl SpecError {
    /// Stable reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::NameTooLong { .. } => "NameTooLong",
            SpecError::BadDuration { .. } | SpecError::DurationOutOfRange { .. } => "InvalidDuration",
            SpecError::OutOfRange { .. } => "OutOfRange",
            SpecError::EnsembleSize(_) => "InvalidEnsembleSize",
            SpecError::EphemeralWithClass => "InvalidStorage",
            SpecError::Empty { .. } => "EmptyField",
            SpecError::MinAboveMax { .. } => "InvalidAutoscaling",
            SpecError::OwnLabel { .. } => "InvalidPodLabels",
            SpecError::BadSize { .. } => "InvalidSize",
            SpecError::HeapAboveLimit { .. } => "HeapAboveMemoryLimit",
        }
    }
}

/// What the cluster already runs that shapes the children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The ZooKeeper ensemble: its pods and membership.
    pub ensemble: Running,
}

fn duration_in(field: &'static str, value: &str, min: Duration, max: Duration) -> Result<Duration, SpecError> {
    let parsed = duration::parse(value).ok_or_else(|| SpecError::BadDuration { field, value: value.to_string() })?;
    if parsed < min || parsed > max {
        return Err(SpecError::DurationOutOfRange { field, value: value.to_string(), min, max });
    }
    Ok(parsed)
}

fn range(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), SpecError> {
    if value < min || value > max {
        return Err(SpecError::OutOfRange { field, value, min, max });
    }
    Ok(())
}

/// The JVM needs memory beyond its heap (metaspace, threads, network buffers): at most this
/// share of a ZooKeeper container's memory limit may be heap.
pub const MAX_HEAP_PERCENT: u128 = 75;

/// Refuses a heap the memory limit (when one is set) cannot hold with the JVM's own memory.
fn heap_fits(zk: &crate::crd::ZooKeeperSpec) -> Result<(), SpecError> {
    let heap = quantity::jvm_bytes(&zk.heap)
        .ok_or_else(|| SpecError::BadSize { field: "zookeeper.heap", value: zk.heap.clone() })?;
    let limit = zk.resources.as_ref().and_then(|r| r.limits.as_ref()?.get("memory"));
    // The API server has checked the quantity; one this check cannot read is left to it.
    let Some((limit, bytes)) = limit.and_then(|l| Some((l, quantity::quantity_bytes(&l.0)?))) else {
        return Ok(());
    };
    if heap.saturating_mul(100) > bytes.saturating_mul(MAX_HEAP_PERCENT) {
        return Err(SpecError::HeapAboveLimit { heap: zk.heap.clone(), limit: limit.0.clone() });
    }
    Ok(())
}

fn not_empty(field: &'static str, value: Option<&String>) -> Result<(), SpecError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(SpecError::Empty { field }),
        _ => Ok(()),
    }
}

/// Refuses extra pod labels that would replace the operator's own labels of `component`'s pods.
fn no_own_labels(
    field: &'static str,
    placement: &PodPlacement,
    instance: &str,
    component: Component,
) -> Result<(), SpecError> {
    let own = labels::stable_labels(instance, component);
    match placement.labels.keys().find(|key| own.contains_key(*key)) {
        Some(key) => Err(SpecError::OwnLabel { field, key: key.clone() }),
        None => Ok(()),
    }
}

/// Checks the spec against the rules of the schema and against what already runs.
pub fn validate(tc: &TaskCluster, observed: Observed) -> Result<ValidSpec, SpecError> {
    let name = tc.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_NAME_LEN {
        return Err(SpecError::NameTooLong { len: name.len(), name });
    }
    let spec = &tc.spec;
    range("masters", spec.masters.into(), 1, 9)?;
    range("workers", spec.workers.into(), 0, 1000)?;
    range("tasks.maxAttempts", spec.tasks.max_attempts.into(), 1, 100)?;
    range("tasks.backlogCap", spec.tasks.backlog_cap, 1, 1_000_000)?;
    not_empty("image", spec.image.as_ref())?;
    not_empty("exec", spec.exec.as_ref())?;
    not_empty("zookeeper.image", spec.zookeeper.image.as_ref())?;
    let session_timeout =
        duration_in("sessionTimeout", &spec.session_timeout, Duration::from_secs(4), Duration::from_secs(40))?;
    let task_timeout =
        duration_in("tasks.timeout", &spec.tasks.timeout, Duration::from_secs(1), Duration::from_secs(24 * 3600))?;
    let replicas = spec.zookeeper.replicas;
    if ![1, 3, 5].contains(&replicas) {
        return Err(SpecError::EnsembleSize(replicas));
    }
    if spec.zookeeper.storage.ephemeral && spec.zookeeper.storage.storage_class_name.is_some() {
        return Err(SpecError::EphemeralWithClass);
    }
    heap_fits(&spec.zookeeper)?;
    no_own_labels("pods.masters.labels", &spec.pods.masters, &name, Component::Master)?;
    no_own_labels("pods.workers.labels", &spec.pods.workers, &name, Component::Worker)?;
    no_own_labels("pods.zookeeper.labels", &spec.pods.zookeeper, &name, Component::ZooKeeper)?;
    let autoscaling = spec.autoscaling.as_ref().map(autoscaling_policy).transpose()?;
    let ensemble = ensemble::sizing(replicas, &observed.ensemble);
    Ok(ValidSpec { spec: spec.clone(), session_timeout, task_timeout, autoscaling, ensemble })
}

fn autoscaling_policy(a: &crate::crd::AutoscalingSpec) -> Result<Policy, SpecError> {
    range("autoscaling.minWorkers", a.min_workers.into(), 0, 1000)?;
    range("autoscaling.maxWorkers", a.max_workers.into(), 1, 1000)?;
    range("autoscaling.tasksPerWorker", a.tasks_per_worker.into(), 1, 100_000)?;
    if a.min_workers > a.max_workers {
        return Err(SpecError::MinAboveMax { min: a.min_workers, max: a.max_workers });
    }
    let hour = Duration::from_secs(3600);
    Ok(Policy {
        min_workers: a.min_workers,
        max_workers: a.max_workers,
        tasks_per_worker: a.tasks_per_worker,
        scale_up_window: duration_in(
            "autoscaling.scaleUpStabilization",
            &a.scale_up_stabilization,
            Duration::ZERO,
            hour,
        )?,
        scale_down_window: duration_in(
            "autoscaling.scaleDownStabilization",
            &a.scale_down_stabilization,
            Duration::ZERO,
            hour,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn memory_limit(tc: &mut TaskCluster, heap: &str, limit: &str) {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        tc.spec.zookeeper.heap = heap.into();
        let limits = [("memory".to_string(), Quantity(limit.into()))].into();
        tc.spec.zookeeper.resources = Some(ResourceRequirements { limits: Some(limits), ..Default::default() });
    }

    #[test]
    fn a_heap_within_three_quarters_of_the_memory_limit_or_without_one_is_valid() {
        for (heap, limit) in [("384m", Some("512Mi")), ("256m", Some("512Mi")), ("1g", Some("2G")), ("4g", None)] {
            let mut tc = fixtures::example();
            match limit {
                Some(limit) => memory_limit(&mut tc, heap, limit),
                None => {
                    tc.spec.zookeeper.heap = heap.into();
                    tc.spec.zookeeper.resources = None;
                },
            }
            assert!(validate(&tc, Observed::default()).is_ok(), "{heap} within {limit:?}");
        }
        let mut tc = fixtures::example();
        memory_limit(&mut tc, "512m", "512Mi");
        let message = validate(&tc, Observed::default()).unwrap_err().to_string();
        assert!(message.contains("512m") && message.contains("512Mi") && message.contains("75%"), "{message}");
    }

    #[test]
    fn the_example_is_valid() {
        let tc = fixtures::example();
        let valid = validate(&tc, Observed::default()).unwrap();
        assert_eq!(valid.session_timeout, Duration::from_secs(10));
        assert_eq!(valid.task_timeout, Duration::from_secs(60));
    }

    #[test]
    fn defaults_are_valid() {
        let tc: TaskCluster = fixtures::from_yaml(
            "apiVersion: taskcluster.dev/v1alpha1\nkind: TaskCluster\nmetadata: {name: minimal, namespace: default}\nspec: {}\n",
        );
        assert_eq!(tc.spec.masters, 2);
        assert_eq!(tc.spec.workers, 2);
        assert_eq!(tc.spec.zookeeper.replicas, 3);
        assert!(validate(&tc, Observed::default()).is_ok());
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        type Mutation = fn(&mut TaskCluster);
        let cases: Vec<(Mutation, &str)> = vec![
            (|tc| tc.spec.masters = 0, "OutOfRange"),
            (|tc| tc.spec.workers = -1, "OutOfRange"),
            (|tc| tc.spec.session_timeout = "10".into(), "InvalidDuration"),
            (|tc| tc.spec.session_timeout = "2s".into(), "InvalidDuration"),
            (|tc| tc.spec.tasks.timeout = "1x".into(), "InvalidDuration"),
            (|tc| tc.spec.zookeeper.replicas = 2, "InvalidEnsembleSize"),
            (|tc| tc.spec.exec = Some("  ".into()), "EmptyField"),
            (|tc| tc.metadata.name = Some("x".repeat(41)), "NameTooLong"),
            (|tc| tc.spec.autoscaling = Some(autoscaling("maxWorkers: 0")), "OutOfRange"),
            (|tc| tc.spec.autoscaling = Some(autoscaling("minWorkers: 5\nmaxWorkers: 3")), "InvalidAutoscaling"),
            (|tc| tc.spec.autoscaling = Some(autoscaling("maxWorkers: 1001")), "OutOfRange"),
            (
                |tc| tc.spec.autoscaling = Some(autoscaling("maxWorkers: 3\nscaleDownStabilization: 2h")),
                "InvalidDuration",
            ),
            (
                |tc| tc.spec.autoscaling = Some(autoscaling("maxWorkers: 3\nscaleUpStabilization: soon")),
                "InvalidDuration",
            ),
            (
                |tc| {
                    tc.spec.zookeeper.storage.ephemeral = true;
                    tc.spec.zookeeper.storage.storage_class_name = Some("fast".into());
                },
                "InvalidStorage",
            ),
            (|tc| own_label(&mut tc.spec.pods.masters, "app.kubernetes.io/component"), "InvalidPodLabels"),
            (|tc| own_label(&mut tc.spec.pods.workers, "app.kubernetes.io/instance"), "InvalidPodLabels"),
            (|tc| own_label(&mut tc.spec.pods.zookeeper, "app.kubernetes.io/managed-by"), "InvalidPodLabels"),
            (|tc| own_label(&mut tc.spec.pods.workers, "app.kubernetes.io/name"), "InvalidPodLabels"),
            (|tc| tc.spec.zookeeper.heap = "lots".into(), "InvalidSize"),
            (|tc| memory_limit(tc, "512m", "512Mi"), "HeapAboveMemoryLimit"),
            (|tc| memory_limit(tc, "400m", "512Mi"), "HeapAboveMemoryLimit"),
        ];
        for (mutate, reason) in cases {
            let mut tc = fixtures::example();
            mutate(&mut tc);
            let err = validate(&tc, Observed::default()).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
        }
    }

    fn own_label(placement: &mut PodPlacement, key: &str) {
        placement.labels.insert(key.into(), "mine".into());
    }

    #[test]
    fn extra_pod_labels_may_not_replace_the_operators() {
        let mut tc = fixtures::example();
        tc.spec.pods.workers.labels.insert("team".into(), "batch".into());
        tc.spec.pods.workers.labels.insert("app.kubernetes.io/part-of".into(), "platform".into());
        assert!(validate(&tc, Observed::default()).is_ok(), "other keys, app.kubernetes.io/ ones too, are fine");

        tc.spec.pods.zookeeper.labels.insert("app.kubernetes.io/component".into(), "db".into());
        let err = validate(&tc, Observed::default()).unwrap_err();
        assert_eq!(
            err,
            SpecError::OwnLabel { field: "pods.zookeeper.labels", key: "app.kubernetes.io/component".into() }
        );
        assert!(err.to_string().contains("pods.zookeeper.labels sets \"app.kubernetes.io/component\""), "{err}");
    }

    fn autoscaling(yaml: &str) -> crate::crd::AutoscalingSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn autoscaling_defaults_follow_the_hpa() {
        let mut tc = fixtures::example();
        tc.spec.autoscaling = Some(serde_yaml::from_str("maxWorkers: 10").unwrap());
        let policy = validate(&tc, Observed::default()).unwrap().autoscaling.unwrap();
        assert_eq!((policy.min_workers, policy.max_workers, policy.tasks_per_worker), (1, 10, 1));
        assert_eq!((policy.scale_up_window, policy.scale_down_window), (Duration::ZERO, Duration::from_secs(300)));
    }

    #[test]
    fn the_examples_autoscaling_block_is_valid_once_uncommented() {
        let uncommented: String = fixtures::EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix("  # ") {
                Some(rest) if rest.starts_with("autoscaling:") || rest.starts_with("  ") => format!("  {rest}"),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let tc = fixtures::from_yaml(&uncommented).test();
        let policy = validate(&tc, Observed::default()).unwrap().autoscaling.expect("the block is read");
        assert_eq!((policy.min_workers, policy.max_workers), (0, 20));
        assert_eq!(policy.scale_down_window, Duration::from_secs(300));
    }

    #[test]
    fn a_resize_keeps_the_members_pods_until_the_servers_leave() {
        let mut tc = fixtures::example();
        tc.spec.zookeeper.replicas = 1;
        let members = crate::ensemble::Members { version: 1, voters: [1, 2, 3].into() };
        let running = Running { replicas: Some(3), members: Some(members), last_members: None };
        let valid = validate(&tc, Observed { ensemble: running }).unwrap();
        assert_eq!(valid.ensemble, Sizing { replicas: 3, members: [1, 2, 3].into() });
    }
}
