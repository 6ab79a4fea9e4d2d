//! The pure build step: every object a TaskCluster owns, rendered from a validated spec.
//! No I/O here, so each object can be checked against fixtures.

pub mod labels;
pub mod nodes;
pub mod placement;
pub mod resources;
pub mod security;
pub mod zookeeper;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, EnvVar, EnvVarSource, LocalObjectReference, ObjectFieldSelector, PodSecurityContext,
    SeccompProfile, SecretKeySelector, SecurityContext, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::{TaskCluster, OPERATOR_VERSION};
use crate::validate::ValidSpec;
use labels::{Component, Names};

/// Operator-wide settings that shape the children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// DNS suffix of the cluster, for the peers' stable names in `zoo.cfg`.
    pub cluster_domain: String,
    /// Namespace the operator runs in; the NetworkPolicy admits it to ZooKeeper.
    pub operator_namespace: Option<String>,
    /// Pull secrets added to every pod.
    pub image_pull_secrets: Vec<String>,
    /// The operator's release: the `app.kubernetes.io/version` label of every child and the
    /// tag of the default node image.
    pub operator_version: String,
    /// The key each cluster's ZooKeeper administrator password is derived from; without it
    /// the ensembles keep the size they were created with.
    pub admin_key: Option<AdminKey>,
}

/// A secret key that never shows in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey(pub Vec<u8>);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(..)")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            operator_namespace: None,
            image_pull_secrets: Vec::new(),
            operator_version: OPERATOR_VERSION.into(),
            admin_key: None,
        }
    }
}

impl Settings {
    fn image_pull_secrets(&self) -> Option<Vec<LocalObjectReference>> {
        if self.image_pull_secrets.is_empty() {
            return None;
        }
        Some(self.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the TaskCluster has no {0} yet; it is probably being created, try again")]
    MissingMetadata(&'static str),
}

/// Namespace, owner reference and operator release shared by all children.
#[derive(Clone, Debug)]
pub struct Owner {
    pub namespace: String,
    pub reference: OwnerReference,
    pub operator_version: String,
}

impl Owner {
    pub fn of(tc: &TaskCluster, settings: &Settings) -> Result<Self, BuildError> {
        let namespace = tc.namespace().ok_or(BuildError::MissingMetadata("namespace"))?;
        let reference = tc.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self { namespace, reference, operator_version: settings.operator_version.clone() })
    }

    /// Metadata of a child: name, namespace, labels, and the controller reference that makes
    /// deleting the TaskCluster garbage-collect it.
    pub fn meta(&self, name: &str, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::labels(&self.reference.name, component, &self.operator_version)),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// Non-root, no privilege escalation; the image runs as `uid`, volumes are group `uid`.
fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// `POD_NAME` from the downward API (later variables may refer to it as `$(POD_NAME)`).
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Variable `name` from key `key` of Secret `secret`.
fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(optional) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

/// Every object the operator applies for one TaskCluster (the credentials Secret is created
/// once, separately, because its content is random).
#[derive(Clone, Debug)]
pub struct Children {
    pub headless_service: Service,
    pub client_service: Service,
    pub config_map: ConfigMap,
    pub stateful_set: StatefulSet,
    pub disruption_budget: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub masters: Deployment,
    pub master_disruption_budget: PodDisruptionBudget,
    pub workers: Deployment,
}

pub fn build(tc: &TaskCluster, valid: &ValidSpec, settings: &Settings) -> Result<Children, BuildError> {
    let owner = Owner::of(tc, settings)?;
    let names = Names::new(&tc.name_any());
    let cfg = zookeeper::zoo_cfg();
    let members = &valid.ensemble.members;
    Ok(Children {
        headless_service: zookeeper::headless_service(&owner, &names),
        client_service: zookeeper::client_service(&owner, &names),
        config_map: zookeeper::config_map(&owner, &names, &cfg, members, &settings.cluster_domain),
        stateful_set: zookeeper::stateful_set(&owner, &names, valid, settings, &cfg),
        disruption_budget: zookeeper::disruption_budget(&owner, &names),
        network_policy: security::network_policy(&owner, &names, settings),
        masters: nodes::masters(&owner, &names, valid, settings),
        master_disruption_budget: nodes::master_disruption_budget(&owner, &names),
        workers: nodes::workers(&owner, &names, valid, settings),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::crd::{PodPlacement, PodsSpec};
    use crate::fixtures;
    use crate::validate::{validate, Observed};

    fn children(tc: &TaskCluster) -> Children {
        let settings = Settings { operator_namespace: Some("taskcluster-system".into()), ..Settings::default() };
        build(tc, &validate(tc, Observed::default()).unwrap(), &settings).unwrap()
    }

    fn all_meta(c: &Children) -> Vec<&ObjectMeta> {
        vec![
            &c.headless_service.metadata,
            &c.client_service.metadata,
            &c.config_map.metadata,
            &c.stateful_set.metadata,
            &c.disruption_budget.metadata,
            &c.network_policy.metadata,
            &c.masters.metadata,
            &c.master_disruption_budget.metadata,
            &c.workers.metadata,
        ]
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    /// The preferred anti-affinity of a pod spec: the selector it spreads from, and over what.
    fn spread_of(spec: &PodSpec) -> Option<(BTreeMap<String, String>, String)> {
        let anti = spec.affinity.as_ref()?.pod_anti_affinity.as_ref()?;
        let [term] = anti.preferred_during_scheduling_ignored_during_execution.as_deref()? else { return None };
        let selector = term.pod_affinity_term.label_selector.as_ref()?.match_labels.clone()?;
        Some((selector, term.pod_affinity_term.topology_key.clone()))
    }

    #[test]
    fn masters_and_zookeeper_servers_prefer_distinct_nodes_and_workers_go_anywhere() {
        let c = children(&fixtures::example());
        let zookeeper = c.stateful_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        for (spec, component) in [(pod(&c.masters), Component::Master), (zookeeper, Component::ZooKeeper)] {
            let (selector, topology) = spread_of(spec).unwrap_or_else(|| panic!("{component:?} pods do not spread"));
            assert_eq!(selector, labels::selector("demo", component), "{component:?} spread from its own pods");
            assert_eq!(topology, placement::NODE_TOPOLOGY);
        }
        assert!(pod(&c.workers).affinity.is_none(), "workers have no placement preference");
    }

    #[test]
    fn every_child_is_controlled_by_the_taskcluster_and_labelled() {
        let c = children(&fixtures::example());
        for meta in all_meta(&c) {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "TaskCluster");
            assert_eq!(owners[0].name, "demo");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("default"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "demo");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "taskcluster-operator");
            assert!(labels.contains_key("app.kubernetes.io/version"));
        }
    }

    #[test]
    fn selectors_survive_an_operator_upgrade() {
        let c = children(&fixtures::example());
        let selectors = [
            c.masters.spec.as_ref().unwrap().selector.match_labels.clone().unwrap(),
            c.workers.spec.as_ref().unwrap().selector.match_labels.clone().unwrap(),
            c.stateful_set.spec.as_ref().unwrap().selector.match_labels.clone().unwrap(),
        ];
        for selector in selectors {
            assert!(!selector.contains_key("app.kubernetes.io/version"), "{selector:?}");
            assert!(selector.contains_key("app.kubernetes.io/component"));
        }
    }

    /// What operator release `version` builds for `tc`.
    fn children_at(tc: &TaskCluster, version: &str) -> Children {
        let settings = Settings { operator_version: version.into(), ..Settings::default() };
        build(tc, &validate(tc, Observed::default()).unwrap(), &settings).unwrap()
    }

    fn spec_of(s: &StatefulSet) -> &k8s_openapi::api::apps::v1::StatefulSetSpec {
        s.spec.as_ref().unwrap()
    }

    #[test]
    fn an_operator_upgrade_changes_no_immutable_field_and_restarts_no_pod() {
        let mut tc = fixtures::example();
        tc.spec.image = Some("registry.example/taskcluster/node:pinned".into());
        let (old, new) = (children_at(&tc, "0.1.0"), children_at(&tc, "0.2.0"));
        // Immutable after creation: the API server rejects an apply that changes them.
        let (old_sts, new_sts) = (spec_of(&old.stateful_set), spec_of(&new.stateful_set));
        assert!(old_sts.volume_claim_templates.is_some());
        assert_eq!(old_sts.volume_claim_templates, new_sts.volume_claim_templates, "claim templates");
        assert_eq!(old_sts.selector, new_sts.selector);
        for (before, after) in [(&old.masters, &new.masters), (&old.workers, &new.workers)] {
            assert_eq!(before.spec.as_ref().unwrap().selector, after.spec.as_ref().unwrap().selector);
        }
        // Pod templates: a change restarts every pod.
        assert_eq!(old_sts.template, new_sts.template, "ZooKeeper pod template");
        let template = |d: &Deployment| d.spec.as_ref().unwrap().template.clone();
        assert_eq!(template(&old.masters), template(&new.masters), "master pod template");
        assert_eq!(template(&old.workers), template(&new.workers), "worker pod template");
        // The objects themselves still say which release wrote them.
        for meta in all_meta(&new) {
            assert_eq!(meta.labels.as_ref().unwrap()["app.kubernetes.io/version"], "0.2.0");
        }
    }

    #[test]
    fn a_new_default_node_image_rolls_masters_and_workers_but_not_zookeeper() {
        let tc = fixtures::example();
        let (old, new) = (children_at(&tc, "0.1.0"), children_at(&tc, "0.2.0"));
        let image = |d: &Deployment| pod(d).containers[0].image.clone().unwrap();
        assert_eq!(
            (image(&old.workers), image(&new.workers)),
            ("taskcluster/node:0.1.0".into(), "taskcluster/node:0.2.0".into())
        );
        let template = |d: &Deployment| d.spec.as_ref().unwrap().template.clone();
        assert_ne!(template(&old.masters), template(&new.masters));
        assert_ne!(template(&old.workers), template(&new.workers));
        assert_eq!(spec_of(&old.stateful_set).template, spec_of(&new.stateful_set).template);
    }

    #[test]
    fn an_ensemble_whose_claim_templates_carry_a_version_keeps_them() {
        let tc = fixtures::example();
        let mut running = children_at(&tc, "0.1.0").stateful_set;
        let claims = running.spec.as_mut().unwrap().volume_claim_templates.as_mut().unwrap();
        claims[0].metadata.labels.as_mut().unwrap().insert("app.kubernetes.io/version".into(), "0.1.0".into());
        let mut desired = children_at(&tc, "0.2.0").stateful_set;
        zookeeper::keep_claim_labels(&mut desired, Some(&running));
        assert_eq!(spec_of(&desired).volume_claim_templates, spec_of(&running).volume_claim_templates);

        let mut fresh = children_at(&tc, "0.2.0").stateful_set;
        zookeeper::keep_claim_labels(&mut fresh, None);
        let labels = spec_of(&fresh).volume_claim_templates.as_ref().unwrap()[0].metadata.labels.clone().unwrap();
        assert!(!labels.contains_key("app.kubernetes.io/version"), "a new ensemble's claims carry no version");
    }

    #[test]
    fn masters_run_with_the_agreed_flags() {
        let c = children(&fixtures::example());
        let container = &pod(&c.masters).containers[0];
        assert_eq!(container.command.as_ref().unwrap(), &vec!["/usr/local/bin/taskcluster".to_string()]);
        let expected = "master --zk demo-zookeeper.default.svc:2181 --id $(POD_NAME) --listen 0.0.0.0:9090 \
                        --max-attempts 3 --task-timeout 60s --backlog-cap 200000 --retention 10m --session-timeout 10s";
        assert_eq!(container.args.as_ref().unwrap().join(" "), expected);
        assert_eq!(container.image.as_deref(), Some("taskcluster/node:0.1.0"));
        assert_eq!(c.masters.spec.as_ref().unwrap().replicas, Some(2));
    }

    #[test]
    fn workers_get_the_exec_command_and_a_grace_period_longer_than_theirs() {
        let tc = fixtures::example().with_exec("tr a-z A-Z").with_workers(7);
        let c = children(&tc);
        let args = pod(&c.workers).containers[0].args.clone().unwrap();
        let exec = args.iter().position(|a| a == "--exec").unwrap();
        assert_eq!(args[exec + 1], "tr a-z A-Z");
        let grace = args.iter().position(|a| a == "--grace-period").unwrap();
        assert_eq!(args[grace + 1], "20s");
        assert_eq!(pod(&c.workers).termination_grace_period_seconds, Some(30));
        assert_eq!(c.workers.spec.as_ref().unwrap().replicas, Some(7));
    }

    #[test]
    fn masters_and_workers_log_json_lines() {
        let c = children(&fixtures::example());
        for d in [&c.masters, &c.workers] {
            let env = pod(d).containers[0].env.clone().unwrap();
            let format = env.iter().find(|e| e.name == "TASKCLUSTER_LOG_FORMAT").map(|e| e.value.as_deref());
            assert_eq!(format, Some(Some("json")), "{env:?}");
        }
    }

    #[test]
    fn nodes_read_their_credentials_from_the_generated_secret() {
        let c = children(&fixtures::example());
        for d in [&c.masters, &c.workers] {
            let env = pod(d).containers[0].env.clone().unwrap();
            let digest = env.iter().find(|e| e.name == "TASKCLUSTER_ZK_DIGEST").unwrap();
            let secret = digest.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
            assert_eq!(secret.name, "demo-zookeeper-credentials");
            assert_eq!(secret.key, "digest");
            assert!(digest.value.is_none(), "the password never appears in the pod spec");
        }
    }

    #[test]
    fn a_setting_change_changes_the_pod_template_hash() {
        let hash = |tc: &TaskCluster| {
            let c = children(tc);
            c.workers.spec.unwrap().template.metadata.unwrap().annotations.unwrap()[labels::CONFIG_HASH].clone()
        };
        let base = fixtures::example();
        assert_eq!(hash(&base), hash(&base.clone()));
        assert_ne!(hash(&base), hash(&base.clone().with_exec("cat")));
        assert_eq!(hash(&base), hash(&base.clone().with_workers(9)), "scaling is not a rollout");
    }

    #[test]
    fn every_pod_runs_unprivileged_with_a_read_only_root() {
        let c = children(&fixtures::example());
        let sts_pod = c.stateful_set.spec.as_ref().unwrap().template.spec.clone().unwrap();
        for (spec, uid) in [(pod(&c.masters).clone(), 65532), (pod(&c.workers).clone(), 65532), (sts_pod, 1000)] {
            let pod_sc = spec.security_context.clone().unwrap();
            assert_eq!(pod_sc.run_as_non_root, Some(true));
            assert_eq!(pod_sc.run_as_user, Some(uid));
            assert_eq!(spec.automount_service_account_token, Some(false));
            for container in &spec.containers {
                let sc = container.security_context.clone().unwrap();
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
            }
        }
    }

    #[test]
    fn the_members_name_every_server_by_ordinal_plus_one_and_the_static_config_none() {
        let c = children(&fixtures::example());
        let data = c.config_map.data.as_ref().unwrap();
        let (cfg, members) = (&data["zoo.cfg"], &data["zoo.cfg.dynamic"]);
        for (id, ordinal) in [(1, 0), (2, 1), (3, 2)] {
            let line = format!(
                "server.{id}=demo-zookeeper-{ordinal}.demo-zookeeper-headless.default.svc.cluster.local:2888:3888:participant;2181\n"
            );
            assert!(members.contains(&line), "{line} missing from\n{members}");
        }
        assert!(!members.contains("server.4") && !cfg.contains("server."), "{cfg}\n{members}");
        assert!(cfg.contains("reconfigEnabled=true\nstandaloneEnabled=false\n"), "{cfg}");
        let annotations = c.config_map.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[zookeeper::MEMBERS_ANNOTATION], "1,2,3");
        assert!(cfg.contains("4lw.commands.whitelist=ruok,srvr,mntr,conf\n"));
        assert!(cfg.contains("dataDir=/data\n"));
        assert!(cfg.contains("minSessionTimeout=4000\nmaxSessionTimeout=40000\n"));
        let sts = c.stateful_set.spec.as_ref().unwrap();
        assert_eq!(sts.service_name.as_deref(), Some("demo-zookeeper-headless"));
        assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
        let mounts = sts.template.spec.as_ref().unwrap().containers[0].volume_mounts.clone().unwrap();
        let paths: BTreeMap<_, _> = mounts.iter().map(|m| (m.mount_path.as_str(), m.name.as_str())).collect();
        assert_eq!(paths.get("/conf"), Some(&"conf"));
        assert_eq!(paths.get("/data"), Some(&"data"));
        assert_eq!(sts.template.spec.as_ref().unwrap().security_context.as_ref().unwrap().fs_group, Some(1000));
        assert!(c.headless_service.spec.as_ref().unwrap().publish_not_ready_addresses == Some(true));
    }

    #[test]
    fn zookeeper_is_ready_while_it_serves_and_alive_while_it_answers() {
        let c = children(&fixtures::example());
        let sts = c.stateful_set.spec.as_ref().unwrap();
        let container = &sts.template.spec.as_ref().unwrap().containers[0];
        let command = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe.as_ref().unwrap().exec.as_ref().unwrap().command.clone().unwrap()
        };
        assert_eq!(command(&container.readiness_probe), ["/usr/local/bin/zookeeper-ready", "--serving"]);
        assert_eq!(command(&container.liveness_probe), ["/usr/local/bin/zookeeper-ready"]);
        // The readiness probe asks `srvr`, the liveness probe `ruok`: both must be allowed, by
        // zoo.cfg and by the image's server script for a config without the setting.
        let cfg = &c.config_map.data.as_ref().unwrap()["zoo.cfg"];
        let allowed = |line: &str| line.split(['=', ',']).skip(1).map(str::trim).map(String::from).collect::<Vec<_>>();
        let in_cfg = cfg.lines().find(|l| l.starts_with("4lw.commands.whitelist=")).map(allowed).unwrap();
        let server_script = include_str!("../../../images/zookeeper/zookeeper-server");
        let flag = server_script.lines().find_map(|l| l.trim().strip_prefix("-Dzookeeper.")).unwrap();
        let in_script = allowed(flag.trim_end_matches(" \\"));
        for word in ["ruok", "srvr"] {
            assert!(in_cfg.iter().any(|w| w == word), "{word} not allowed by zoo.cfg: {in_cfg:?}");
            assert!(in_script.iter().any(|w| w == word), "{word} not allowed by zookeeper-server: {in_script:?}");
        }
    }

    #[test]
    fn zookeeper_serves_prometheus_metrics_that_scrapers_may_reach() {
        let c = children(&fixtures::example());
        let cfg = &c.config_map.data.as_ref().unwrap()["zoo.cfg"];
        for line in [
            "metricsProvider.className=org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider\n",
            "metricsProvider.httpHost=0.0.0.0\n",
            "metricsProvider.httpPort=7000\n",
            // The provider brings Jetty onto the classpath, which would start the admin server.
            "admin.enableServer=false\n",
        ] {
            assert!(cfg.contains(line), "{line} missing from\n{cfg}");
        }

        let template = &c.stateful_set.spec.as_ref().unwrap().template;
        let annotations = template.metadata.as_ref().unwrap().annotations.clone().unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "7000");
        let ports = template.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
        let metrics = ports.iter().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
        assert_eq!(metrics.container_port, 7000);

        let service_port = |s: &Service, name: &str| {
            s.spec.as_ref().unwrap().ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some(name)).cloned()
        };
        assert_eq!(service_port(&c.headless_service, "metrics").map(|p| p.port), Some(7000));
        assert!(service_port(&c.client_service, "metrics").is_none(), "clients are not sent to the metrics port");

        let rules = c.network_policy.spec.unwrap().ingress.unwrap();
        let admits = |port: i32| {
            rules
                .iter()
                .filter(move |r| r.ports.as_ref().unwrap().iter().any(|p| p.port == Some(IntOrString::Int(port))))
        };
        let metrics_rules: Vec<_> = admits(7000).collect();
        assert_eq!(metrics_rules.len(), 1);
        assert!(metrics_rules[0].from.is_none(), "any scraper reaches the metrics port");
        assert_eq!(metrics_rules[0].ports.as_ref().unwrap().len(), 1, "and nothing else through that rule");
        for port in [2181, 2888, 3888] {
            assert!(admits(port).all(|r| r.from.is_some()), "port {port} admits only named peers");
        }
    }

    #[test]
    fn the_default_zookeeper_image_is_the_pinned_release() {
        let pinned = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../zookeeper/VERSION")).unwrap();
        let c = children(&fixtures::example());
        let container = &c.stateful_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image, Some(format!("taskcluster/zookeeper:{}", pinned.trim())));

        let mut tc = fixtures::example();
        tc.spec.zookeeper.image = Some("registry.example/zookeeper:custom".into());
        let c = children(&tc);
        let container = &c.stateful_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("registry.example/zookeeper:custom"));
    }

    #[test]
    fn storage_follows_the_spec() {
        let c = children(&fixtures::example());
        let claims = c.stateful_set.spec.as_ref().unwrap().volume_claim_templates.clone().unwrap();
        let requests = claims[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!(requests["storage"].0, "1Gi");

        let mut tc = fixtures::example();
        tc.spec.zookeeper.storage.ephemeral = true;
        let c = children(&tc);
        let sts = c.stateful_set.spec.unwrap();
        assert!(sts.volume_claim_templates.is_none());
        let volumes = sts.template.spec.unwrap().volumes.unwrap();
        assert!(volumes.iter().any(|v| v.name == "data" && v.empty_dir.is_some()));
    }

    #[test]
    fn the_disruption_budget_lets_one_server_go_at_a_time() {
        // One server of one may go too (a node drain must not hang), never two of five.
        for replicas in [1, 3, 5] {
            let mut tc = fixtures::example();
            tc.spec.zookeeper.replicas = replicas;
            let pdb = children(&tc).disruption_budget.spec.unwrap();
            assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{replicas} servers");
            assert_eq!(pdb.min_available, None, "{replicas} servers: the API server takes only one of the two");
            let selector = pdb.selector.unwrap().match_labels.unwrap();
            assert_eq!(selector, labels::selector("demo", Component::ZooKeeper));
        }
    }

    #[test]
    fn a_drain_takes_one_master_at_a_time() {
        // With two or more, a standby stays ready while the other moves; one may go as well.
        for masters in [1, 2, 5] {
            let mut tc = fixtures::example();
            tc.spec.masters = masters;
            let c = children(&tc);
            assert_eq!(c.master_disruption_budget.metadata.name.as_deref(), Some("demo-master"));
            let pdb = c.master_disruption_budget.spec.unwrap();
            assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{masters} masters");
            let selector = pdb.selector.unwrap().match_labels.unwrap();
            assert_eq!(selector, labels::selector("demo", Component::Master), "{masters} masters");
        }
    }

    #[test]
    fn only_the_cluster_and_the_operator_reach_zookeeper() {
        let policy = children(&fixtures::example()).network_policy.spec.unwrap();
        let rules = policy.ingress.unwrap();
        let client_rule = &rules[0];
        assert_eq!(client_rule.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(2181)));
        let from = client_rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 3);
        let operator = from[2].namespace_selector.as_ref().unwrap().match_labels.clone().unwrap();
        assert_eq!(operator["kubernetes.io/metadata.name"], "taskcluster-system");
        let peer_rule = &rules[1];
        let peer_from = peer_rule.from.as_ref().unwrap()[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(peer_from["app.kubernetes.io/component"], "zookeeper");
        assert_eq!(peer_rule.ports.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn credentials_are_immutable_and_shaped_as_user_colon_password() {
        let tc = fixtures::example();
        let owner = Owner::of(&tc, &Settings::default()).unwrap();
        let password = security::generate_password();
        assert_eq!(password.len(), 32);
        assert_ne!(password, security::generate_password());
        let secret = security::credentials(&owner, &Names::new("demo"), &password, false);
        assert_eq!(secret.immutable, Some(true));
        let digest = String::from_utf8(secret.data.unwrap()["digest"].0.clone()).unwrap();
        assert_eq!(digest, format!("taskcluster:{password}"));
    }

    /// A placement using every field, each value naming `role`.
    fn placement_for(role: &str) -> PodPlacement {
        serde_yaml::from_str(&format!(
            "nodeSelector: {{pool: {role}}}
tolerations: [{{key: dedicated, operator: Equal, value: {role}, effect: NoSchedule}}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{{matchExpressions: [{{key: class, operator: In, values: [{role}]}}]}}]
  podAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 10
      podAffinityTerm: {{topologyKey: topology.kubernetes.io/zone, labelSelector: {{matchLabels: {{near: {role}}}}}}}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 50
      podAffinityTerm: {{topologyKey: topology.kubernetes.io/zone, labelSelector: {{matchLabels: {{avoid: {role}}}}}}}
    requiredDuringSchedulingIgnoredDuringExecution:
    - {{topologyKey: kubernetes.io/hostname, labelSelector: {{matchLabels: {{never-with: {role}}}}}}}
topologySpreadConstraints:
- {{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {{matchLabels: {{spread: {role}}}}}}}
priorityClassName: {role}-critical
labels: {{team: {role}}}
annotations: {{note: {role}}}
"
        ))
        .expect("placement fixture")
    }

    /// The example with a distinct placement for each role.
    fn placed() -> TaskCluster {
        let mut tc = fixtures::example();
        tc.spec.pods = PodsSpec {
            masters: placement_for("master"),
            workers: placement_for("worker"),
            zookeeper: placement_for("zookeeper"),
        };
        tc
    }

    /// The pod template of each role.
    fn templates(c: &Children) -> [(Component, &PodTemplateSpec); 3] {
        [
            (Component::Master, &c.masters.spec.as_ref().unwrap().template),
            (Component::Worker, &c.workers.spec.as_ref().unwrap().template),
            (Component::ZooKeeper, &spec_of(&c.stateful_set).template),
        ]
    }

    #[test]
    fn each_placement_field_reaches_its_roles_pods() {
        let c = children(&placed());
        for (component, template) in templates(&c) {
            // Built from the role's own entry: every value names the role.
            let placement = placement_for(component.as_str());
            let spec = template.spec.as_ref().unwrap();
            assert_eq!(spec.node_selector.as_ref(), Some(&placement.node_selector), "{component:?}");
            assert_eq!(spec.tolerations.as_ref(), Some(&placement.tolerations), "{component:?}");
            let spread = spec.topology_spread_constraints.as_ref();
            assert_eq!(spread, Some(&placement.topology_spread_constraints), "{component:?}");
            assert_eq!(spec.priority_class_name, placement.priority_class_name, "{component:?}");
            let (affinity, wanted) = (spec.affinity.as_ref().unwrap(), placement.affinity.as_ref().unwrap());
            assert_eq!(affinity.node_affinity, wanted.node_affinity, "{component:?}");
            assert_eq!(affinity.pod_affinity, wanted.pod_affinity, "{component:?}");
            let meta = template.metadata.as_ref().unwrap();
            assert_eq!(meta.labels.as_ref().unwrap().get("team"), Some(&component.as_str().to_string()));
            assert_eq!(meta.annotations.as_ref().unwrap().get("note"), Some(&component.as_str().to_string()));
        }
    }

    #[test]
    fn a_users_pod_anti_affinity_joins_the_operators_spread_preference() {
        let c = children(&placed());
        for (component, template) in templates(&c) {
            let anti = template.spec.as_ref().unwrap().affinity.as_ref().unwrap().pod_anti_affinity.clone().unwrap();
            let user = placement_for(component.as_str()).affinity.unwrap().pod_anti_affinity.unwrap();
            let preferred = anti.preferred_during_scheduling_ignored_during_execution.unwrap();
            let users = user.preferred_during_scheduling_ignored_during_execution.unwrap();
            if component == Component::Worker {
                assert_eq!(preferred, users, "workers have no preference of their own");
            } else {
                let ours = placement::spread_across_nodes(labels::selector("demo", component)).pod_anti_affinity;
                let ours = ours.unwrap().preferred_during_scheduling_ignored_during_execution.unwrap();
                assert_eq!(preferred, [ours, users].concat(), "{component:?}: the operator's term, then the user's");
            }
            let required = anti.required_during_scheduling_ignored_during_execution;
            assert_eq!(required, user.required_during_scheduling_ignored_during_execution, "{component:?}");
        }
    }

    #[test]
    fn the_operators_pod_labels_and_annotations_win() {
        // Validation refuses such labels; the build keeps the operator's values regardless.
        let tc = fixtures::example();
        let mut valid = validate(&tc, Observed::default()).unwrap();
        let pods = &mut valid.spec.pods;
        for placement in [&mut pods.masters, &mut pods.workers, &mut pods.zookeeper] {
            placement.labels.insert("app.kubernetes.io/component".into(), "other".into());
            placement.labels.insert("app.kubernetes.io/instance".into(), "other".into());
            placement.labels.insert("team".into(), "batch".into());
            for key in [labels::CONFIG_HASH, "prometheus.io/scrape", "prometheus.io/port"] {
                placement.annotations.insert(key.into(), "users".into());
            }
            placement.annotations.insert("prometheus.io/path".into(), "/metrics".into());
        }
        let (placed, plain) = (build(&tc, &valid, &Settings::default()).unwrap(), children(&tc));
        for ((component, template), (_, before)) in templates(&placed).into_iter().zip(templates(&plain)) {
            let meta = template.metadata.as_ref().unwrap();
            let mut expected = labels::stable_labels("demo", component);
            expected.insert("team".into(), "batch".into());
            assert_eq!(meta.labels.as_ref(), Some(&expected), "{component:?}: the selector still matches");
            let mut expected = before.metadata.as_ref().unwrap().annotations.clone().unwrap();
            expected.insert("prometheus.io/path".into(), "/metrics".into());
            assert_eq!(meta.annotations.as_ref(), Some(&expected), "{component:?}");
        }
    }

    #[test]
    fn user_pod_labels_never_reach_the_zookeeper_claim_templates() {
        let (placed, plain) = (children(&placed()), children(&fixtures::example()));
        let claims = spec_of(&placed.stateful_set).volume_claim_templates.clone();
        assert!(claims.is_some());
        assert_eq!(claims, spec_of(&plain.stateful_set).volume_claim_templates, "claim templates are immutable");
    }

    #[test]
    fn an_empty_placement_changes_no_pod_template() {
        // What the operator built before `spec.pods` existed, field by field: an upgrade to a
        // release with placement restarts no pod.
        let tc = fixtures::example();
        assert!(tc.spec.pods.is_empty());
        let c = children(&tc);
        for (component, template) in templates(&c) {
            let meta = template.metadata.as_ref().unwrap();
            assert_eq!(meta.labels, Some(labels::stable_labels("demo", component)), "{component:?}");
            let annotations: Vec<_> = meta.annotations.as_ref().unwrap().keys().map(String::as_str).collect();
            assert_eq!(annotations, ["prometheus.io/port", "prometheus.io/scrape", labels::CONFIG_HASH]);
            let spec = serde_json::to_value(template.spec.as_ref().unwrap()).unwrap();
            for field in ["nodeSelector", "tolerations", "topologySpreadConstraints", "priorityClassName"] {
                assert!(spec.get(field).is_none(), "{component:?} pods got {field}: {}", spec[field]);
            }
            let spread = (component != Component::Worker)
                .then(|| placement::spread_across_nodes(labels::selector("demo", component)));
            assert_eq!(template.spec.as_ref().unwrap().affinity, spread, "{component:?}");
            // Applying an empty placement once more is a no-op, and so is `pods: {}` in YAML.
            let mut again = template.clone();
            placement::apply(&mut again, &PodPlacement::default());
            assert_eq!(&again, template, "{component:?}");
        }
        let written: TaskCluster =
            fixtures::from_yaml(&fixtures::EXAMPLE.replace(
                "spec:\n",
                "spec:\n  pods: {masters: {}, workers: {labels: {}}, zookeeper: {tolerations: []}}\n",
            ));
        let with_empty = children(&written.test());
        for ((component, a), (_, b)) in templates(&with_empty).into_iter().zip(templates(&c)) {
            assert_eq!(a, b, "{component:?}");
        }
        assert!(serde_json::to_value(&tc.spec).unwrap().get("pods").is_none(), "the stored spec gains no field");
    }

    #[test]
    fn retained_data_outlives_the_taskcluster_with_the_credentials_its_acls_name() {
        let mut tc = fixtures::example();
        let owner = Owner::of(&tc, &Settings::default()).unwrap();
        let policy = |tc: &TaskCluster| {
            let policy = spec_of(&children(tc).stateful_set).persistent_volume_claim_retention_policy.clone().unwrap();
            (policy.when_deleted.unwrap(), policy.when_scaled.unwrap())
        };
        // A server removed from the ensemble has nothing the others lack: its claim goes.
        assert_eq!(policy(&tc), ("Delete".to_string(), "Delete".to_string()), "the default");
        assert!(security::credentials(&owner, &Names::new("demo"), "p", false).metadata.owner_references.is_some());

        tc.spec.zookeeper.storage.when_deleted = crate::crd::VolumeRetention::Retain;
        assert_eq!(policy(&tc), ("Retain".to_string(), "Delete".to_string()));
        let secret = security::credentials(&owner, &Names::new("demo"), "p", true);
        assert!(secret.metadata.owner_references.is_none(), "garbage collection would take it with the cluster");
    }

    #[test]
    fn pods_without_resources_get_requests_and_no_limits_and_given_ones_are_kept() {
        let mut tc = fixtures::example();
        (tc.spec.master_resources, tc.spec.worker_resources, tc.spec.zookeeper.resources) = (None, None, None);
        tc.spec.zookeeper.heap = "512m".into();
        let c = children(&tc);
        let requested = |resources: &Option<k8s_openapi::api::core::v1::ResourceRequirements>| {
            let r = resources.clone().expect("requests by default");
            assert!(r.limits.is_none(), "no limit by default: {r:?}");
            let requests = r.requests.unwrap();
            (requests["cpu"].0.clone(), requests["memory"].0.clone())
        };
        for d in [&c.masters, &c.workers] {
            assert_eq!(requested(&pod(d).containers[0].resources), ("50m".to_string(), "32Mi".to_string()));
        }
        let zookeeper = &spec_of(&c.stateful_set).template.spec.as_ref().unwrap().containers[0];
        assert_eq!(requested(&zookeeper.resources), ("100m".to_string(), "640Mi".to_string()), "heap + 128Mi");

        let given = children(&fixtures::example());
        let example = fixtures::example();
        assert_eq!(pod(&given.workers).containers[0].resources, example.spec.worker_resources);
        let zookeeper = &spec_of(&given.stateful_set).template.spec.as_ref().unwrap().containers[0];
        assert_eq!(zookeeper.resources, example.spec.zookeeper.resources);
    }

    #[test]
    fn a_taskcluster_without_uid_is_not_built() {
        let mut tc = fixtures::example();
        tc.metadata.uid = None;
        let valid = validate(&tc, Observed::default()).unwrap();
        assert!(matches!(build(&tc, &valid, &Settings::default()), Err(BuildError::MissingMetadata("uid"))));
    }
}
