//! Where pods go and how many may leave at once: replicas that stand in for one another
//! (ZooKeeper servers, masters) prefer different nodes, so losing one node takes at most one
//! of them when there are nodes enough (preferred, not required: a single-node cluster still
//! runs them all), and a drain takes them one at a time. The user's `spec.pods` placement of
//! each role is merged into the pod template here, on top of the operator's own choices.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, PodTemplateSpec, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{self, Component};
use super::Owner;
use crate::crd::PodPlacement;

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

/// Merges the user's `placement` into a pod `template` the operator built. The user's node
/// selector, tolerations, spread constraints, priority class, node affinity and pod affinity
/// go in as given (the operator sets none of them); pod anti-affinity terms are appended to
/// the operator's (its spread preference stays); extra labels and annotations are added, and
/// where a key is the operator's, the operator's value stays. An empty placement changes
/// nothing, so the template, and with it every running pod, is the same as without one.
pub fn apply(template: &mut PodTemplateSpec, placement: &PodPlacement) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    add_missing(&mut meta.labels, &placement.labels);
    add_missing(&mut meta.annotations, &placement.annotations);
    let pod = template.spec.get_or_insert_with(Default::default);
    add_missing(&mut pod.node_selector, &placement.node_selector);
    append(&mut pod.tolerations, &placement.tolerations);
    append(&mut pod.topology_spread_constraints, &placement.topology_spread_constraints);
    if pod.priority_class_name.is_none() {
        pod.priority_class_name.clone_from(&placement.priority_class_name);
    }
    if let Some(user) = &placement.affinity {
        merge_affinity(pod.affinity.get_or_insert_with(Default::default), user);
    }
}

/// Adds the entries of `extra` whose key `map` lacks; an empty `extra` leaves `map` as it is.
fn add_missing(map: &mut Option<BTreeMap<String, String>>, extra: &BTreeMap<String, String>) {
    if extra.is_empty() {
        return;
    }
    let map = map.get_or_insert_with(Default::default);
    for (key, value) in extra {
        map.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// Appends `extra` to `list`; an empty `extra` leaves `list` as it is.
fn append<T: Clone>(list: &mut Option<Vec<T>>, extra: &[T]) {
    if !extra.is_empty() {
        list.get_or_insert_with(Vec::new).extend_from_slice(extra);
    }
}

fn merge_affinity(ours: &mut Affinity, user: &Affinity) {
    if ours.node_affinity.is_none() {
        ours.node_affinity.clone_from(&user.node_affinity);
    }
    if ours.pod_affinity.is_none() {
        ours.pod_affinity.clone_from(&user.pod_affinity);
    }
    let Some(user_anti) = &user.pod_anti_affinity else { return };
    let anti = ours.pod_anti_affinity.get_or_insert_with(Default::default);
    append(
        &mut anti.preferred_during_scheduling_ignored_during_execution,
        user_anti.preferred_during_scheduling_ignored_during_execution.as_deref().unwrap_or_default(),
    );
    append(
        &mut anti.required_during_scheduling_ignored_during_execution,
        user_anti.required_during_scheduling_ignored_during_execution.as_deref().unwrap_or_default(),
    );
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
