//! The masters and workers Deployments, running the `taskcluster` binary.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component, Names, CONFIG_HASH};
use super::{container_security, placement, pod_name_env, pod_security, resources, secret_env, Owner, Settings};
use crate::crd::PodPlacement;
use crate::validate::ValidSpec;

pub const BINARY: &str = "/usr/local/bin/taskcluster";
pub const HTTP_PORT: i32 = 9090;
/// Key of the `user:password` digest in the credentials Secret.
pub const DIGEST_KEY: &str = "digest";
const NODE_UID: i64 = 65532;
/// How long a worker may finish its task on SIGTERM before giving it back.
pub const WORKER_GRACE: Duration = Duration::from_secs(20);
/// Results nobody collected are deleted this long after completion.
const RETENTION: &str = "10m";

/// Renders a duration the way the runtime's humantime parser reads it.
fn humantime(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

pub fn master_args(names: &Names, namespace: &str, valid: &ValidSpec) -> Vec<String> {
    let tasks = &valid.spec.tasks;
    vec![
        "master".into(),
        "--zk".into(),
        names.zookeeper_client(namespace),
        "--id".into(),
        "$(POD_NAME)".into(),
        "--listen".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--max-attempts".into(),
        tasks.max_attempts.to_string(),
        "--task-timeout".into(),
        humantime(valid.task_timeout),
        "--backlog-cap".into(),
        tasks.backlog_cap.to_string(),
        "--retention".into(),
        RETENTION.into(),
        "--session-timeout".into(),
        humantime(valid.session_timeout),
    ]
}

pub fn worker_args(names: &Names, namespace: &str, valid: &ValidSpec) -> Vec<String> {
    let mut args = vec![
        "worker".into(),
        "--zk".into(),
        names.zookeeper_client(namespace),
        "--id".into(),
        "$(POD_NAME)".into(),
        "--listen".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
    ];
    if let Some(exec) = &valid.spec.exec {
        args.push("--exec".into());
        args.push(exec.clone());
    }
    args.extend([
        "--grace-period".into(),
        humantime(WORKER_GRACE),
        "--session-timeout".into(),
        humantime(valid.session_timeout),
    ]);
    args
}

fn http_probe(path: &str, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn env(names: &Names) -> Vec<EnvVar> {
    vec![
        // A pod's log is read by collectors: one JSON object per line.
        EnvVar { name: "TASKCLUSTER_LOG_FORMAT".into(), value: Some("json".into()), ..Default::default() },
        pod_name_env(),
        secret_env("TASKCLUSTER_ZK_DIGEST", &names.credentials, DIGEST_KEY, false),
    ]
}

struct Role<'a> {
    component: Component,
    name: String,
    replicas: i32,
    args: Vec<String>,
    grace_seconds: i64,
    strategy: DeploymentStrategy,
    resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// Replicas prefer distinct nodes (the masters: a node's loss takes one, the standby
    /// takes over).
    spread: bool,
    /// The user's `spec.pods` entry of the role.
    placement: &'a PodPlacement,
}

fn deployment(owner: &Owner, names: &Names, valid: &ValidSpec, settings: &Settings, role: Role) -> Deployment {
    let container = Container {
        name: role.component.as_str().into(),
        image: Some(valid.spec.node_image(&settings.operator_version)),
        image_pull_policy: Some(valid.spec.image_pull_policy.as_str().into()),
        command: Some(vec![BINARY.into()]),
        args: Some(role.args),
        env: Some(env(names)),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() }]),
        readiness_probe: Some(http_probe("/readyz", 2, 5, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 10, 3)),
        resources: Some(role.resources),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() }]),
        ..Default::default()
    };
    // The pod template changes with any setting anyway; the hash makes the cause visible.
    let config_hash = serde_json::to_vec(&container).map(|bytes| labels::stable_hash(&bytes)).unwrap_or_default();
    let mut annotations = BTreeMap::from([(CONFIG_HASH.to_string(), config_hash)]);
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), HTTP_PORT.to_string());
    let selector = labels::selector(&names.instance, role.component);
    let affinity = role.spread.then(|| placement::spread_across_nodes(selector.clone()));
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::stable_labels(&names.instance, role.component)),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            security_context: Some(pod_security(NODE_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(role.grace_seconds),
            image_pull_secrets: settings.image_pull_secrets(),
            affinity,
            ..Default::default()
        }),
    };
    placement::apply(&mut template, role.placement);
    Deployment {
        metadata: owner.meta(&role.name, role.component),
        spec: Some(DeploymentSpec {
            replicas: Some(role.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            strategy: Some(role.strategy),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn masters(owner: &Owner, names: &Names, valid: &ValidSpec, settings: &Settings) -> Deployment {
    let role = Role {
        component: Component::Master,
        name: names.masters.clone(),
        replicas: valid.spec.masters,
        args: master_args(names, &owner.namespace, valid),
        // A master closes its session at once on SIGTERM.
        grace_seconds: 10,
        // Bring the new master up before stopping an old one, so a standby always exists.
        strategy: DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
        resources: resources::node(valid.spec.master_resources.as_ref()),
        spread: true,
        placement: &valid.spec.pods.masters,
    };
    deployment(owner, names, valid, settings, role)
}

/// A drain takes one master at a time, and only while the others are ready: a standby is
/// ready to take over whenever the leader is evicted (with one master, it may go; the
/// cluster assigns nothing until it runs again elsewhere).
pub fn master_disruption_budget(owner: &Owner, names: &Names) -> PodDisruptionBudget {
    placement::one_at_a_time(owner, &names.masters, &names.instance, Component::Master)
}

pub fn workers(owner: &Owner, names: &Names, valid: &ValidSpec, settings: &Settings) -> Deployment {
    let role = Role {
        component: Component::Worker,
        name: names.workers.clone(),
        replicas: valid.spec.workers,
        args: worker_args(names, &owner.namespace, valid),
        grace_seconds: WORKER_GRACE.as_secs() as i64 + 10,
        strategy: DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::String("25%".into())),
                max_unavailable: Some(IntOrString::String("25%".into())),
            }),
        },
        resources: resources::node(valid.spec.worker_resources.as_ref()),
        // Workers are interchangeable and many: the scheduler's own spreading is enough.
        spread: false,
        placement: &valid.spec.pods.workers,
    };
    deployment(owner, names, valid, settings, role)
}
