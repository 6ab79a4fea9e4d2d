//! Where pods go and how many may leave at once: replicas that stand in for one another
//! (ZooKeeper servers, masters) prefer different nodes, so losing one node takes at most one
//! of them when there are nodes enough (preferred, not required: a single-node cluster still
//! runs them all), and a drain takes them one at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::Owner;

/// The node label the spread is over.
pub const NODE_TOPOLOGY: &str = "kubernetes.io/hostname";

/// Prefer a node that runs no other pod matching `selector`.
pub fn spread_across_nodes(selector: BTreeMap<String, String>) -> Affinity {
    let term = WeightedPodAffinityTerm {
        weight: 100,
        pod_affinity_term: PodAffinityTerm {
            label_selector: Some(LabelSelector { match_labels: Some(selector), ..Default::default() }),
            topology_key: NODE_TOPOLOGY.into(),
            ..Default::default()
        },
    };
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A budget that lets voluntary disruptions (a node drain's evictions) take one pod of
/// `component` at a time, and only while the others are ready. At every size: one of a
/// single replica may go too, so a drain never hangs on it.
pub fn one_at_a_time(owner: &Owner, name: &str, instance: &str, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(instance, component)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
