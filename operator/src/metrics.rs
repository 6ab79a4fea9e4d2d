//! Prometheus metrics of the operator, all prefixed `taskcluster_operator_`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use taskcluster::ClusterStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// One TaskCluster's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub namespace: String,
    pub name: String,
}

/// One TaskCluster's tasks in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TasksLabel {
    pub namespace: String,
    pub name: String,
    pub state: &'static str,
}

/// Where one exported count comes from.
type Count = fn(&ClusterStatus) -> u64;

/// The task states exported per cluster: where each count comes from, and whether it is
/// taken only from counters the current leader published (a new leader's zeros are not true).
const TASK_STATES: [(&str, Count, bool); 5] = [
    ("backlog", |s| s.backlog, true),
    ("running", |s| s.running, true),
    ("completed", |s| s.completed, false),
    ("failed", |s| s.failed, false),
    ("dead_lettered", |s| s.dead_lettered, false),
];

pub struct Metrics {
    pub reconciliations: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub writes: Family<KindLabel, Counter>,
    pub zookeeper_reads: Counter,
    pub zookeeper_failures: Family<ReasonLabel, Counter>,
    pub invalid_objects: Counter,
    pub zookeeper_sessions: Gauge,
    pub zookeeper_sessions_opened: Counter,
    /// Per TaskCluster, refreshed at every reconcile (each second while it has a quorum):
    /// the live feed the status is not.
    cluster_tasks: Family<TasksLabel, Gauge>,
    cluster_workers_busy: Family<ClusterLabel, Gauge>,
    cluster_readable: Family<ClusterLabel, Gauge>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("taskcluster_operator");
        let reconciliations = Counter::default();
        registry.register("reconciliations", "Reconciliations started", reconciliations.clone());
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register("reconcile_failures", "Reconciliations that failed, by reason", failures.clone());
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Time spent per reconciliation", duration.clone());
        let writes = Family::<KindLabel, Counter>::default();
        registry.register("api_writes", "Writes sent to the Kubernetes API server, by kind", writes.clone());
        let zookeeper_reads = Counter::default();
        registry.register("zookeeper_reads", "Cluster status reads from ZooKeeper", zookeeper_reads.clone());
        let zookeeper_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "zookeeper_read_failures",
            "Cluster status reads that failed, by reason",
            zookeeper_failures.clone(),
        );
        let invalid_objects = Counter::default();
        registry.register("invalid_objects", "TaskClusters that could not be decoded", invalid_objects.clone());
        let zookeeper_sessions = Gauge::default();
        registry.register("zookeeper_sessions", "Open ZooKeeper sessions", zookeeper_sessions.clone());
        let zookeeper_sessions_opened = Counter::default();
        registry.register(
            "zookeeper_sessions_opened",
            "ZooKeeper sessions opened (one per TaskCluster, again only after ZooKeeper ended one)",
            zookeeper_sessions_opened.clone(),
        );
        let cluster_tasks = Family::<TasksLabel, Gauge>::default();
        registry.register(
            "cluster_tasks",
            "Tasks of a TaskCluster by state: backlog and running now, completed, failed (attempts) \
             and dead_lettered since its ensemble was created, as its leader last published them",
            cluster_tasks.clone(),
        );
        let cluster_workers_busy = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_workers_busy",
            "Workers of a TaskCluster executing a task",
            cluster_workers_busy.clone(),
        );
        let cluster_readable = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "cluster_zookeeper_readable",
            "1 when the last read of a TaskCluster's ZooKeeper succeeded, else 0 (its other series are then stale)",
            cluster_readable.clone(),
        );
        Self {
            reconciliations,
            failures,
            duration,
            writes,
            zookeeper_reads,
            zookeeper_failures,
            invalid_objects,
            zookeeper_sessions,
            zookeeper_sessions_opened,
            cluster_tasks,
            cluster_workers_busy,
            cluster_readable,
            registry,
        }
    }
}

impl Metrics {
    pub fn failed(&self, reason: &str) {
        self.failures.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// What the last reading of a TaskCluster's ZooKeeper said (`None`: it failed or was not
    /// made). Counts a new leader has not published yet are left as they were: its zeros
    /// would not be true.
    pub fn cluster_read(&self, namespace: &str, name: &str, reading: Option<&ClusterStatus>) {
        let cluster = ClusterLabel { namespace: namespace.into(), name: name.into() };
        self.cluster_readable.get_or_create(&cluster).set(i64::from(reading.is_some()));
        let Some(status) = reading else { return };
        for (state, count, fresh_only) in TASK_STATES {
            if status.counters_fresh || !fresh_only {
                let label = TasksLabel { namespace: namespace.into(), name: name.into(), state };
                self.cluster_tasks.get_or_create(&label).set(gauge_value(count(status)));
            }
        }
        if status.counters_fresh {
            self.cluster_workers_busy.get_or_create(&cluster).set(gauge_value(status.workers_busy));
        }
    }

    /// Drops a deleted TaskCluster's series.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let cluster = ClusterLabel { namespace: namespace.into(), name: name.into() };
        self.cluster_readable.remove(&cluster);
        self.cluster_workers_busy.remove(&cluster);
        for (state, _, _) in TASK_STATES {
            self.cluster_tasks.remove(&TasksLabel { namespace: namespace.into(), name: name.into(), state });
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
