//! Where pods go: replicas that stand in for one another (ZooKeeper servers, masters) prefer
//! different nodes, so losing one node takes at most one of them when there are nodes enough.
//! Preferred, not required: a single-node cluster still runs them all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

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
