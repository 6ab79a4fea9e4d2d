//! Digest credentials of one TaskCluster and the NetworkPolicy around its ZooKeeper.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use rand::distr::{Alphanumeric, SampleString};

use super::labels::{self, Component, Names, CLIENT_LABEL};
use super::nodes::DIGEST_KEY;
use super::zookeeper::{CLIENT_PORT, ELECTION_PORT, METRICS_PORT, PEER_PORT};
use super::{Owner, Settings};

/// ZooKeeper digest user of every TaskCluster; the password is what differs.
pub const DIGEST_USER: &str = "taskcluster";

/// A fresh password; 32 alphanumerics carry about 190 bits.
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// The Secret masters and workers read `TASKCLUSTER_ZK_DIGEST` from. Immutable: the ACLs on
/// the task tree name this identity, so it must never change under a running cluster. With
/// `retained` data it has no owner: it must outlive the TaskCluster as the claims do.
pub fn credentials(owner: &Owner, names: &Names, password: &str, retained: bool) -> Secret {
    let mut metadata = owner.meta(&names.credentials, Component::ZooKeeper);
    if retained {
        metadata.owner_references = None;
    }
    Secret {
        metadata,
        immutable: Some(true),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DIGEST_KEY.to_string(),
            ByteString(format!("{DIGEST_USER}:{password}").into_bytes()),
        )])),
        ..Default::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(port)), protocol: Some("TCP".into()), ..Default::default() }
}

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(labels), ..Default::default() }),
        ..Default::default()
    }
}

/// ZooKeeper accepts clients only from this cluster's pods, pods labelled as its clients,
/// and the operator; peers only from its own servers. Its metrics port is open to any
/// scraper, like the masters' and workers' `/metrics`: read-only counters, wherever
/// Prometheus runs.
pub fn network_policy(owner: &Owner, names: &Names, settings: &Settings) -> NetworkPolicy {
    let mut clients = vec![
        pods(labels::instance_selector(&names.instance)),
        pods(BTreeMap::from([(CLIENT_LABEL.to_string(), names.instance.clone())])),
    ];
    if let Some(namespace) = &settings.operator_namespace {
        clients.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_string(), namespace.clone())])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_string(),
                    labels::MANAGED_BY.to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    NetworkPolicy {
        metadata: owner.meta(&names.zookeeper, Component::ZooKeeper),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&names.instance, Component::ZooKeeper)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(clients), ports: Some(vec![tcp(CLIENT_PORT)]) },
                NetworkPolicyIngressRule {
                    from: Some(vec![pods(labels::selector(&names.instance, Component::ZooKeeper))]),
                    ports: Some(vec![tcp(PEER_PORT), tcp(ELECTION_PORT)]),
                },
                NetworkPolicyIngressRule { from: None, ports: Some(vec![tcp(METRICS_PORT)]) },
            ]),
            ..Default::default()
        }),
    }
}
