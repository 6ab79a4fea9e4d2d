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

/// ZooKeeper's super user, the only one that may reconfigure the ensemble.
pub const SUPER_USER: &str = "super";
/// Key of the administrator Secret: `super:<digest>`, what the servers compare against.
pub const SUPER_DIGEST_KEY: &str = "superDigest";

/// The operator's ZooKeeper administrator password for one TaskCluster: derived from the
/// operator's key and the TaskCluster's uid, so it is the same after every restart of the
/// operator without the operator reading any Secret, and differs for every cluster.
pub fn admin_password(key: &[u8], uid: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"taskcluster zookeeper admin\0");
    mac.update(uid.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `user:base64(sha1(user:password))`, ZooKeeper's digest form.
pub fn digest(user: &str, password: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let hash = sha1::Sha1::digest(format!("{user}:{password}").as_bytes());
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

/// The Secret the servers read their super user's digest from (never the password). Owned by
/// the TaskCluster: it can be derived again whenever it is needed.
pub fn admin_credentials(owner: &Owner, names: &Names, password: &str) -> Secret {
    Secret {
        metadata: owner.meta(&names.admin, Component::ZooKeeper),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SUPER_DIGEST_KEY.to_string(),
            ByteString(digest(SUPER_USER, password).into_bytes()),
        )])),
        ..Default::default()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_zookeepers() {
        // What a server started with this superDigest accepted for `super:secret`.
        assert_eq!(digest("super", "secret"), "super:lK75jTNcA+U9vtVEw5vB51mj/w4=");
    }

    #[test]
    fn admin_passwords_differ_per_cluster_and_key_and_repeat_otherwise() {
        let a = admin_password(b"key", "uid-1");
        assert_eq!(a, admin_password(b"key", "uid-1"));
        assert_ne!(a, admin_password(b"key", "uid-2"));
        assert_ne!(a, admin_password(b"other", "uid-1"));
        assert_eq!(a.len(), 64);
    }
}
