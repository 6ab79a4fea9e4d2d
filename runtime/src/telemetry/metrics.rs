//! Metric families, prefixed `taskcluster_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default)]
pub struct MasterMetrics {
    pub is_leader: Gauge,
    pub assignments: Counter,
    pub fenced_writes: Counter,
    pub takeovers: Counter,
    pub completed: Counter,
    pub failed_attempts: Counter,
    pub dead_lettered: Counter,
    pub expired_results: Counter,
    pub backlog: Gauge,
    pub running: Gauge,
}

impl MasterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("taskcluster");
        r.register("master_is_leader", "1 while this master leads", self.is_leader.clone());
        r.register("master_assignments", "Tasks assigned to workers by this master", self.assignments.clone());
        r.register(
            "master_fenced_writes",
            "Writes rejected because this master no longer held leadership",
            self.fenced_writes.clone(),
        );
        r.register("master_takeovers", "Times this master became leader", self.takeovers.clone());
        r.register("tasks_completed", "Results observed by this master while leading", self.completed.clone());
        r.register(
            "tasks_failed_attempts",
            "Failed attempts (handler error, worker death, timeout)",
            self.failed_attempts.clone(),
        );
        r.register("tasks_dead_lettered", "Tasks given up after the last attempt", self.dead_lettered.clone());
        r.register(
            "tasks_expired_results",
            "Uncollected results removed after retention",
            self.expired_results.clone(),
        );
        r.register("backlog", "Tasks waiting for a worker", self.backlog.clone());
        r.register("running", "Tasks running on workers", self.running.clone());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct WorkerMetrics {
    pub tasks: Family<OutcomeLabel, Counter>,
    pub busy: Gauge,
    pub registrations: Counter,
}

impl WorkerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("taskcluster");
        r.register("worker_tasks", "Tasks handled by this worker, by outcome", self.tasks.clone());
        r.register("worker_busy", "1 while executing a task", self.busy.clone());
        r.register("worker_registrations", "Times this worker registered (new sessions)", self.registrations.clone());
    }

    pub fn count(&self, outcome: &'static str) {
        self.tasks.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
