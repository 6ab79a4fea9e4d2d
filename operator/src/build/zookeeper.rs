//! The ZooKeeper ensemble: peer and client Services, `zoo.cfg`, StatefulSet, disruption budget.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component, Names, CONFIG_HASH};
use super::{
    container_security, placement, pod_name_env, pod_security, resources, secret_env, security, Owner, Settings,
};
use crate::ensemble;
use crate::validate::ValidSpec;

pub const CLIENT_PORT: i32 = 2181;
pub const PEER_PORT: i32 = 2888;
pub const ELECTION_PORT: i32 = 3888;
/// ZooKeeper's own Prometheus endpoint (`/metrics`), served by its metrics provider.
pub const METRICS_PORT: i32 = 7000;
/// The metrics provider the image carries (ZooKeeper's `zookeeper-prometheus-metrics`).
const METRICS_PROVIDER: &str = "org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider";
/// Bounds the servers grant to sessions; the CRD's sessionTimeout range matches them.
const TICK_MS: u32 = 2000;
const ZOOKEEPER_UID: i64 = 1000;

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::Int(number)),
        ..Default::default()
    }
}

/// Stable network identities for the peers; published before readiness so an ensemble
/// that has no quorum yet can still find itself, and a server without a quorum is still
/// scraped (its `metrics` port, for a ServiceMonitor).
pub fn headless_service(owner: &Owner, names: &Names) -> Service {
    Service {
        metadata: owner.meta(&names.zookeeper_headless, Component::ZooKeeper),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels::selector(&names.instance, Component::ZooKeeper)),
            ports: Some(vec![
                port("client", CLIENT_PORT),
                port("peer", PEER_PORT),
                port("election", ELECTION_PORT),
                port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What masters, workers and the operator connect to: ready servers only.
pub fn client_service(owner: &Owner, names: &Names) -> Service {
    Service {
        metadata: owner.meta(&names.zookeeper, Component::ZooKeeper),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(&names.instance, Component::ZooKeeper)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The static part of `zoo.cfg`: everything but the members, which are dynamic (ZooKeeper's
/// reconfig; the image keeps the configuration ZooKeeper rewrites in the data directory).
/// `standaloneEnabled=false` runs even one server as an ensemble, so it can grow. Four-letter
/// words: `ruok` for the liveness probe, `srvr` for the readiness probe (and people), `mntr`
/// for people. The admin server stays off (the metrics provider's Jetty would otherwise start
/// it on 8080).
pub fn zoo_cfg() -> String {
    format!(
        "tickTime={TICK_MS}\n\
         initLimit=10\n\
         syncLimit=5\n\
         dataDir=/data\n\
         clientPort={CLIENT_PORT}\n\
         maxClientCnxns=0\n\
         minSessionTimeout={}\n\
         maxSessionTimeout={}\n\
         autopurge.snapRetainCount=3\n\
         autopurge.purgeInterval=1\n\
         4lw.commands.whitelist=ruok,srvr,mntr,conf\n\
         admin.enableServer=false\n\
         reconfigEnabled=true\n\
         standaloneEnabled=false\n\
         quorumListenOnAllIPs=true\n\
         metricsProvider.className={METRICS_PROVIDER}\n\
         metricsProvider.httpHost=0.0.0.0\n\
         metricsProvider.httpPort={METRICS_PORT}\n\
         metricsProvider.exportJvmInfo=true\n",
        TICK_MS * 2,
        TICK_MS * 20,
    )
}

/// Server `id`'s address in the members list, after `server.<id>=`: its stable DNS name
/// (server ids are ordinal + 1, which the image writes to /data/myid from the host name).
pub fn server_address(names: &Names, namespace: &str, cluster_domain: &str, id: i32) -> String {
    format!(
        "{sts}-{ordinal}.{headless}.{namespace}.svc.{cluster_domain}:{PEER_PORT}:{ELECTION_PORT}:participant;{CLIENT_PORT}",
        sts = names.zookeeper,
        ordinal = id - 1,
        headless = names.zookeeper_headless,
    )
}

/// The members a server without a configuration of its own starts from (`zoo.cfg.dynamic`).
pub fn members_cfg(names: &Names, namespace: &str, cluster_domain: &str, members: &BTreeSet<i32>) -> String {
    members
        .iter()
        .map(|id| format!("server.{id}={}\n", server_address(names, namespace, cluster_domain, *id)))
        .collect()
}

/// Annotation of the ConfigMap: the members it lists, read back when the servers cannot be.
pub const MEMBERS_ANNOTATION: &str = "taskcluster.dev/zookeeper-members";

pub fn config_map(owner: &Owner, names: &Names, cfg: &str, members: &BTreeSet<i32>, cluster_domain: &str) -> ConfigMap {
    let mut metadata = owner.meta(&names.zookeeper_config, Component::ZooKeeper);
    metadata.annotations = Some(BTreeMap::from([(MEMBERS_ANNOTATION.to_string(), ensemble::format_ids(members))]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([
            ("zoo.cfg".to_string(), cfg.to_string()),
            ("zoo.cfg.dynamic".to_string(), members_cfg(names, &owner.namespace, cluster_domain, members)),
        ])),
        ..Default::default()
    }
}

const PROBE: &str = "/usr/local/bin/zookeeper-ready";

/// The image's probe script with `args`: none asks `ruok` (the server runs), `--serving` asks
/// `srvr` for its mode (it serves clients: leader, follower or standalone).
fn probe(args: &[&str], initial_delay: i32, period: i32, failures: i32) -> Probe {
    let command = std::iter::once(PROBE).chain(args.iter().copied()).map(String::from).collect();
    Probe {
        exec: Some(ExecAction { command: Some(command) }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

pub fn stateful_set(owner: &Owner, names: &Names, valid: &ValidSpec, settings: &Settings, cfg: &str) -> StatefulSet {
    let zk = &valid.spec.zookeeper;
    let selector = labels::selector(&names.instance, Component::ZooKeeper);
    let mut volumes = vec![
        Volume {
            name: "conf".into(),
            config_map: Some(ConfigMapVolumeSource { name: names.zookeeper_config.clone(), ..Default::default() }),
            ..Default::default()
        },
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    let claims = if zk.storage.ephemeral {
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        None
    } else {
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(labels::stable_labels(&names.instance, Component::ZooKeeper)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: zk.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(zk.storage.size.clone()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }])
    };
    let container = Container {
        name: "zookeeper".into(),
        image: Some(valid.spec.zookeeper_image()),
        image_pull_policy: Some(valid.spec.image_pull_policy.as_str().into()),
        env: Some(vec![
            EnvVar { name: "ZK_HEAP".into(), value: Some(zk.heap.clone()), ..Default::default() },
            pod_name_env(),
            // How a server that is not a member yet adds itself to the members it starts from.
            EnvVar {
                name: "ZK_SERVER".into(),
                value: Some(format!(
                    "$(POD_NAME).{}.{}.svc.{}:{PEER_PORT}:{ELECTION_PORT}:participant;{CLIENT_PORT}",
                    names.zookeeper_headless, owner.namespace, settings.cluster_domain
                )),
                ..Default::default()
            },
            // The administrator that may reconfigure: the operator. Optional, so a cluster
            // whose operator has no administrator key still runs (at a fixed size).
            secret_env("ZK_SUPER_DIGEST", &names.admin, security::SUPER_DIGEST_KEY, true),
        ]),
        ports: Some(vec![
            ContainerPort { name: Some("client".into()), container_port: CLIENT_PORT, ..Default::default() },
            ContainerPort { name: Some("peer".into()), container_port: PEER_PORT, ..Default::default() },
            ContainerPort { name: Some("election".into()), container_port: ELECTION_PORT, ..Default::default() },
            ContainerPort { name: Some("metrics".into()), container_port: METRICS_PORT, ..Default::default() },
        ]),
        // Ready only in a quorum (or standalone): the client Service then sends clients only
        // to servers that can answer them, `readyReplicas` counts the servers that serve, and
        // a rolling update replaces the next server only once the last one has rejoined.
        readiness_probe: Some(probe(&["--serving"], 5, 5, 3)),
        // `ruok` answers while the server runs, quorum or not: restarts only a hung JVM.
        liveness_probe: Some(probe(&[], 30, 10, 6)),
        resources: Some(resources::zookeeper(zk.resources.as_ref(), &zk.heap)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "conf".into(),
                mount_path: "/conf".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        ..Default::default()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::stable_labels(&names.instance, Component::ZooKeeper)),
            // Scraped like the masters and workers (nodes.rs).
            annotations: Some(BTreeMap::from([
                (CONFIG_HASH.to_string(), labels::stable_hash(cfg.as_bytes())),
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                ("prometheus.io/port".to_string(), METRICS_PORT.to_string()),
            ])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(pod_security(ZOOKEEPER_UID)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            affinity: Some(placement::spread_across_nodes(selector.clone())),
            image_pull_secrets: settings.image_pull_secrets(),
            ..Default::default()
        }),
    };
    // The pods only: the claim templates keep the operator's labels (they are immutable).
    placement::apply(&mut template, &valid.spec.pods.zookeeper);
    StatefulSet {
        metadata: owner.meta(&names.zookeeper, Component::ZooKeeper),
        spec: Some(StatefulSetSpec {
            replicas: Some(valid.ensemble.replicas),
            service_name: Some(names.zookeeper_headless.clone()),
            // All servers must start for a quorum to form; ordered start would deadlock readiness.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(zk.storage.when_deleted.as_str().into()),
                // A server leaves the membership before its pod goes: its data is of no use,
                // and a stale copy must not come back when the ensemble grows again.
                when_scaled: Some("Delete".into()),
            }),
            template,
            volume_claim_templates: claims,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Gives each volume claim template of `desired` the labels of the same template in the
/// `running` StatefulSet. Claim templates are fixed at creation: an apply that changes them
/// is rejected, and ensembles created by releases that labelled them with their version
/// must keep those labels.
pub fn keep_claim_labels(desired: &mut StatefulSet, running: Option<&StatefulSet>) {
    let Some(running) = running.and_then(|s| s.spec.as_ref()?.volume_claim_templates.as_ref()) else { return };
    let Some(claims) = desired.spec.as_mut().and_then(|s| s.volume_claim_templates.as_mut()) else { return };
    for claim in claims {
        let same = running.iter().find(|r| r.metadata.name == claim.metadata.name);
        if let Some(labels) = same.map(|r| r.metadata.labels.clone()) {
            claim.metadata.labels = labels;
        }
    }
}

/// Voluntary disruptions (evictions by a node drain) take one server at a time, whatever
/// the size: three or five keep their majority, and a single server may still be evicted,
/// so a drain never hangs on it (its ensemble is down until the server runs again elsewhere).
pub fn disruption_budget(owner: &Owner, names: &Names) -> PodDisruptionBudget {
    placement::one_at_a_time(owner, &names.zookeeper, &names.instance, Component::ZooKeeper)
}

/// Servers needed for a majority.
pub fn quorum(replicas: i32) -> i32 {
    replicas / 2 + 1
}
