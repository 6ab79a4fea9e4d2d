//! Prometheus metrics of the operator, all prefixed `taskcluster_operator_`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub writes: Family<KindLabel, Counter>,
    pub zookeeper_reads: Counter,
    pub zookeeper_failures: Family<ReasonLabel, Counter>,
    pub invalid_objects: Counter,
    pub zookeeper_sessions: Gauge,
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
        Self {
            reconciliations,
            failures,
            duration,
            writes,
            zookeeper_reads,
            zookeeper_failures,
            invalid_objects,
            zookeeper_sessions,
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

    /// The text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
