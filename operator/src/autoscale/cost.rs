//! Which worker pods a scale-in should take: the `controller.kubernetes.io/pod-deletion-cost`
//! annotation, from what each worker's znode says it is doing.
//!
//! The ReplicaSet controller removes not-ready pods first, then those with the lowest cost.
//! Busy workers get a high cost and idle ones a low one, so lowering the replica count takes
//! idle workers. A ready pod with no annotation (one not registered in ZooKeeper when the
//! costs were set) costs 0, below the idle ones: it is doing nothing the cluster knows of.

use std::collections::BTreeMap;

use taskcluster::paths;

pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Cost of a worker executing, or being revoked from, a task.
pub const BUSY_COST: &str = "10000";
/// Cost of an idle or draining worker.
pub const IDLE_COST: &str = "100";

/// What a worker's znode (`/workers/<pod name>`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Idle,
    /// Holds a task id, or a withdrawal mark: its run has not stopped yet.
    Busy,
    /// Shutting down; it has handed its assignment back.
    Draining,
}

impl WorkerState {
    pub fn of(data: &[u8]) -> Self {
        if data.is_empty() {
            WorkerState::Idle
        } else if data == paths::DRAINING {
            WorkerState::Draining
        } else {
            WorkerState::Busy
        }
    }

    pub fn cost(self) -> &'static str {
        match self {
            WorkerState::Busy => BUSY_COST,
            WorkerState::Idle | WorkerState::Draining => IDLE_COST,
        }
    }
}

/// The deletion cost of each worker pod of a cluster, by pod name. Registrations whose name
/// is not one of the cluster's worker pods (`<workers Deployment>-…`) are left out, so a
/// foreign worker's id can never make the operator annotate some other pod.
pub fn costs<'a>(
    workers_deployment: &str,
    workers: impl IntoIterator<Item = (&'a str, WorkerState)>,
) -> BTreeMap<String, &'static str> {
    let prefix = format!("{workers_deployment}-");
    workers
        .into_iter()
        .filter(|(id, _)| id.starts_with(&prefix) && paths::is_valid_name(id))
        .map(|(id, state)| (id.to_string(), state.cost()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_znode_tells_busy_from_idle() {
        assert_eq!(WorkerState::of(b""), WorkerState::Idle);
        assert_eq!(WorkerState::of(b"t1f-3~aGk"), WorkerState::Busy);
        assert_eq!(WorkerState::of(&paths::withdrawal("t1f-3")), WorkerState::Busy);
        assert_eq!(WorkerState::of(paths::DRAINING), WorkerState::Draining);
    }

    #[test]
    fn busy_workers_cost_more_than_idle_ones_and_foreign_ids_are_skipped() {
        let costs = costs(
            "demo-worker",
            [
                ("demo-worker-7d9f-abcde", WorkerState::Busy),
                ("demo-worker-7d9f-fghij", WorkerState::Idle),
                ("demo-worker-7d9f-klmno", WorkerState::Draining),
                ("demo-master-7d9f-pqrst", WorkerState::Idle),
                ("laptop", WorkerState::Busy),
            ],
        );
        let busy: i64 = BUSY_COST.parse().unwrap();
        let idle: i64 = IDLE_COST.parse().unwrap();
        assert!(busy > idle && idle > 0, "unannotated pods (cost 0) go first, then idle, busy last");
        assert_eq!(costs.len(), 3);
        assert_eq!(costs["demo-worker-7d9f-abcde"], BUSY_COST);
        assert_eq!(costs["demo-worker-7d9f-fghij"], IDLE_COST);
        assert_eq!(costs["demo-worker-7d9f-klmno"], IDLE_COST);
    }
}
