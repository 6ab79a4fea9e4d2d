//! The `TaskCluster` custom resource: what users write and what the operator reports back.
//!
//! Doc comments on fields become the `kubectl explain` text; schema bounds and CEL rules let
//! the API server reject a bad spec with a message before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::build::labels::{self, Component};

/// Release of this operator; the default node image carries the same tag. The crate's
/// version unless the build stamps another (`TASKCLUSTER_RELEASE=1.2.3-rc.1 cargo build`),
/// as a packager does for a release candidate and the e2e suite for its upgrade scenario.
pub const OPERATOR_VERSION: &str = match option_env!("TASKCLUSTER_RELEASE") {
    Some(release) if !release.is_empty() => release,
    _ => env!("CARGO_PKG_VERSION"),
};
/// Image repository of the master/worker binary.
pub const NODE_IMAGE_REPOSITORY: &str = "taskcluster/node";
/// Image repository of the ZooKeeper servers.
pub const ZOOKEEPER_IMAGE_REPOSITORY: &str = "taskcluster/zookeeper";
/// The ZooKeeper release the project pins in `zookeeper/VERSION`: the default ZooKeeper
/// image's tag.
pub const ZOOKEEPER_VERSION: &str = include_str!("../../zookeeper/VERSION").trim_ascii();

/// The ZooKeeper image used when the spec names none.
pub fn default_zookeeper_image() -> String {
    format!("{ZOOKEEPER_IMAGE_REPOSITORY}:{ZOOKEEPER_VERSION}")
}

fn zookeeper_image_description() -> String {
    format!(
        "ZooKeeper image. Defaults to `{}`. Another image must start the server the same way \
         and carry ZooKeeper's Prometheus metrics provider, which the configuration enables.",
        default_zookeeper_image()
    )
}

/// A master/worker task-processing cluster coordinated by its own ZooKeeper ensemble.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "taskcluster.dev",
    version = "v1alpha1",
    kind = "TaskCluster",
    plural = "taskclusters",
    shortname = "tc",
    namespaced,
    status = "TaskClusterStatus",
    derive = "PartialEq",
    doc = "A master/worker task-processing cluster coordinated by its own ZooKeeper ensemble",
    scale(
        spec_replicas_path = ".spec.workers",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Masters", type_ = "integer", json_path = ".spec.masters", description = "Desired masters"),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".spec.workers", description = "Desired workers"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the cluster processes tasks"
    ),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader", description = "Leading master pod"),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.backlog", description = "Tasks waiting for a worker"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message(
        "metadata.name must be at most 40 characters: it prefixes the names of the Services and pods the operator creates"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TaskClusterSpec {
    /// Master replicas. One leads and assigns tasks, the others stand by to take over.
    #[serde(default = "default_masters")]
    #[schemars(range(min = 1, max = 9))]
    pub masters: i32,

    /// Worker replicas. Also the target of `kubectl scale` and of autoscalers; with
    /// `autoscaling` set the operator writes it and overwrites other changes at its next
    /// decision.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 0, max = 1000))]
    pub workers: i32,

    /// Image of the master/worker binary. Defaults to `taskcluster/node:<operator version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the master/worker and ZooKeeper images.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// CPU and memory requests and limits of each master container. Unset: requests of 50m CPU
    /// and 32Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_resources: Option<ResourceRequirements>,

    /// CPU and memory requests and limits of each worker container. Unset: requests of 50m CPU
    /// and 32Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_resources: Option<ResourceRequirements>,

    /// Shell command each worker runs per task (`sh -c`): the payload on stdin, stdout is the
    /// result, a non-zero exit is a failure. Without it workers use the built-in handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub exec: Option<String>,

    /// Retry, timeout and backlog settings of the masters.
    #[serde(default)]
    pub tasks: TaskSettings,

    /// ZooKeeper session timeout of masters and workers: how long a silent process keeps its
    /// leadership or registration. A duration such as `10s`; between 4s and 40s (the range the
    /// ensemble grants).
    #[serde(default = "default_session_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('4s') && duration(self) <= duration('40s'))")
        .message("sessionTimeout must be between 4s and 40s"))]
    pub session_timeout: String,

    /// The ZooKeeper ensemble that coordinates this cluster.
    #[serde(default)]
    pub zookeeper: ZooKeeperSpec,

    /// Built-in autoscaling of the workers from the backlog. When set, the operator owns
    /// `workers`: it writes its decision there through the scale subresource. Leave it unset
    /// to scale by hand or with an HPA or KEDA instead; never combine both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Where the pods of each role are scheduled, and the labels and annotations they carry
    /// besides the operator's own.
    #[serde(default, skip_serializing_if = "PodsSpec::is_empty")]
    pub pods: PodsSpec,
}

/// Scheduling and extra metadata of the masters', workers' and ZooKeeper servers' pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodsSpec {
    /// The master pods.
    #[serde(default, skip_serializing_if = "PodPlacement::is_empty")]
    pub masters: PodPlacement,

    /// The worker pods.
    #[serde(default, skip_serializing_if = "PodPlacement::is_empty")]
    pub workers: PodPlacement,

    /// The ZooKeeper server pods.
    #[serde(default, skip_serializing_if = "PodPlacement::is_empty")]
    pub zookeeper: PodPlacement,
}

impl PodsSpec {
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty() && self.workers.is_empty() && self.zookeeper.is_empty()
    }
}

/// Where one role's pods may run and what they carry. Each field is the Pod field of the same
/// name (labels and annotations: of its metadata); changing any of them rolls that role's pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPlacement {
    /// Only nodes carrying all these labels run the pods, e.g. a dedicated node pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate, e.g. those of dedicated or spot nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node affinity, pod affinity and pod anti-affinity. `podAntiAffinity` terms are added to
    /// the operator's own preference that masters, and ZooKeeper servers, run on distinct
    /// nodes, which stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the pods spread over topology domains such as zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of the pods: which pods the scheduler preempts first when nodes are full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Extra labels of the pods, e.g. for cost allocation or policy engines. The operator's own
    /// keys (`app.kubernetes.io/name`, `instance`, `component`, `managed-by`) identify its pods
    /// (Services and selectors rely on them) and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = own_labels_rule())]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations of the pods. The operator's own (`taskcluster.dev/config-hash`,
    /// `prometheus.io/scrape`, `prometheus.io/port`) take precedence over these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl PodPlacement {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The label keys the operator sets on every pod (the same for each role): a user's pod label
/// may not name them.
fn own_label_keys() -> Vec<String> {
    labels::stable_labels("", Component::Worker).into_keys().collect()
}

/// Refuses a `labels` map naming one of [`own_label_keys`] (a constant-cost check per key).
fn own_labels_rule() -> Rule {
    let rule = own_label_keys().iter().map(|key| format!("!('{key}' in self)")).collect::<Vec<_>>().join(" && ");
    let message =
        format!("labels must not set {}: the operator sets them to identify its pods", own_label_keys().join(", "));
    Rule::new(rule).message(Message::Message(message))
}

/// Workers that follow the backlog: the target is (backlog + running) / tasksPerWorker,
/// rounded up, between minWorkers and maxWorkers, smoothed over stabilization windows.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minWorkers <= self.maxWorkers")
    .message("autoscaling.minWorkers must not be greater than autoscaling.maxWorkers"))]
pub struct AutoscalingSpec {
    /// Fewest workers. 0 lets the cluster scale to zero once no task is waiting or running;
    /// the first waiting task brings a worker back.
    #[serde(default = "default_min_workers")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_workers: i32,

    /// Most workers; at most 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub max_workers: i32,

    /// Waiting plus running tasks one worker is meant to take.
    #[serde(default = "default_tasks_per_worker")]
    #[schemars(range(min = 1, max = 100_000))]
    pub tasks_per_worker: i32,

    /// How long the load must ask for more workers before they are added: the lowest target
    /// within this window wins. `0s` (the default) adds workers at once. Between 0s and 1h.
    #[serde(default = "default_scale_up_stabilization")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('1h')")
        .message("autoscaling.scaleUpStabilization must be between 0s and 1h"))]
    pub scale_up_stabilization: String,

    /// How long the load must stay low before workers are removed: the highest target
    /// within this window wins, so a short lull does not shed workers. Defaults to `300s`.
    /// Between 0s and 1h.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('1h')")
        .message("autoscaling.scaleDownStabilization must be between 0s and 1h"))]
    pub scale_down_stabilization: String,
}

/// When the kubelet pulls an image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Retry, timeout and backlog settings of the masters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSettings {
    /// Attempts per task before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,

    /// A running task that takes longer counts as a failed attempt. A duration such as `60s`
    /// or `5m`; between 1s and 24h.
    #[serde(default = "default_task_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('24h'))")
        .message("tasks.timeout must be between 1s and 24h"))]
    pub timeout: String,

    /// Clients refuse to submit once this many tasks are pending, running or uncollected.
    #[serde(default = "default_backlog_cap")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub backlog_cap: i64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            timeout: default_task_timeout(),
            backlog_cap: default_backlog_cap(),
        }
    }
}

/// The ZooKeeper ensemble of one TaskCluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZooKeeperSpec {
    /// Servers in the ensemble: 1, 3 or 5. A majority must run for the cluster to work, so 3
    /// tolerates one failure and 5 two. May change while the cluster runs: the operator adds
    /// or removes servers by ZooKeeper's dynamic reconfiguration, without a restart.
    #[serde(default = "default_zookeeper_replicas")]
    #[x_kube(
        validation = Rule::new("self == 1 || self == 3 || self == 5").message("zookeeper.replicas must be 1, 3 or 5")
    )]
    pub replicas: i32,

    /// ZooKeeper image; [`default_zookeeper_image`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), description = zookeeper_image_description())]
    pub image: Option<String>,

    /// Java heap of each server, e.g. `256m` or `1g`. At most 75% of the memory limit, when one
    /// is set: the JVM needs the rest.
    #[serde(default = "default_heap")]
    #[schemars(regex(pattern = r"^[0-9]+[kmgKMG]$"))]
    pub heap: String,

    /// Where each server keeps its snapshots and transaction log. Fixed after creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "zookeeper.storage cannot change after creation (StatefulSet volume claims are immutable)"
    ))]
    pub storage: ZooKeeperStorage,

    /// CPU and memory requests and limits of each ZooKeeper container. Unset: requests of 100m
    /// CPU and the heap plus 128Mi of memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for ZooKeeperSpec {
    fn default() -> Self {
        Self {
            replicas: default_zookeeper_replicas(),
            image: None,
            heap: default_heap(),
            storage: ZooKeeperStorage::default(),
            resources: None,
        }
    }
}

/// Storage of the ZooKeeper servers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.ephemeral && has(self.storageClassName))")
    .message("zookeeper.storage: storageClassName cannot be combined with ephemeral: true"))]
pub struct ZooKeeperStorage {
    /// Keep data in an emptyDir instead of a PersistentVolumeClaim. Data is lost when a pod
    /// moves; suitable for tests only.
    #[serde(default)]
    pub ephemeral: bool,

    /// Size of each server's PersistentVolumeClaim, e.g. `1Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub size: String,

    /// StorageClass of the claims; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// What happens to the claims when the TaskCluster is deleted. `Delete` (the default)
    /// removes them, and every task with them, together with the cluster. `Retain` keeps
    /// them and the credentials Secret the tasks' ACLs name, so a TaskCluster created again
    /// under the same name in the same namespace finds its tasks (a GitOps prune or a
    /// mistaken delete loses nothing); remove the claims and the Secret by hand to free them.
    #[serde(default)]
    pub when_deleted: VolumeRetention,
}

impl Default for ZooKeeperStorage {
    fn default() -> Self {
        Self {
            ephemeral: false,
            size: default_storage_size(),
            storage_class_name: None,
            when_deleted: VolumeRetention::default(),
        }
    }
}

/// Whether the ZooKeeper data outlives its TaskCluster.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum VolumeRetention {
    #[default]
    Delete,
    Retain,
}

impl VolumeRetention {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeRetention::Delete => "Delete",
            VolumeRetention::Retain => "Retain",
        }
    }

    pub fn retains(self) -> bool {
        self == VolumeRetention::Retain
    }
}

/// What the operator observed, from the child objects and from ZooKeeper.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pod name of the leading master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,

    /// When the current leader took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since: Option<Time>,

    /// Leadership term: rises by one per takeover.
    #[serde(default)]
    pub epoch: i64,

    /// Tasks waiting for a worker.
    #[serde(default)]
    pub backlog: i64,

    /// Tasks assigned to a worker and not finished.
    #[serde(default)]
    pub running: i64,

    /// Tasks completed successfully since the ensemble was created.
    #[serde(default)]
    pub completed: i64,

    /// Failed attempts since the ensemble was created.
    #[serde(default)]
    pub failed: i64,

    /// Tasks given up after their last attempt.
    #[serde(default)]
    pub dead_lettered: i64,

    /// Set while ZooKeeper cannot be read: the counters above are the last ones read, as of
    /// about this time (when the reads began to fail), and the leader is unknown. Absent
    /// while the counters are current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_as_of: Option<Time>,

    /// Worker pods that exist (the scale subresource's current replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Label selector of the worker pods, for the scale subresource and autoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Masters: desired, ready, contending in the election.
    #[serde(default)]
    pub masters: MastersStatus,

    /// Workers: desired, ready, registered in ZooKeeper, busy.
    #[serde(default)]
    pub workers: WorkersStatus,

    /// The ZooKeeper ensemble.
    #[serde(default)]
    pub zookeeper: ZooKeeperStatus,

    /// The built-in autoscaler's last decision, while `spec.autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,

    /// `Ready`, `ZooKeeperReady`, `LeaderElected`, `Degraded` and `Reconciled` (every child
    /// applied as the spec asks), one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The built-in autoscaler's last decision.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Workers the autoscaler asks for.
    pub desired: i32,
    /// `ScaledUp`, `ScaledDown`, or why the count was held: `AtTarget`, `Stabilizing`,
    /// `BusyWorkers` (every remaining worker executes a task), `NoReading` (ZooKeeper cannot
    /// be read), `CountersNotFresh` (a new leader has not published yet), `WorkersUnknown`
    /// (which workers are busy cannot be read, so no scale-in yet), `Superseded` (the
    /// TaskCluster changed while deciding; the next decision follows).
    pub reason: String,
    /// The decision with the numbers behind it.
    pub message: String,
    /// When the autoscaler last changed the worker count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// Masters of the cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MastersStatus {
    /// Replicas asked for in the spec.
    pub desired: i32,
    /// Pods that pass their readiness probe.
    pub ready: i32,
    /// Masters registered in the election, leader included.
    pub contending: i64,
}

/// Workers of the cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersStatus {
    /// Replicas asked for in the spec.
    pub desired: i32,
    /// Pods that pass their readiness probe.
    pub ready: i32,
    /// Workers registered in ZooKeeper.
    pub registered: i64,
    /// Workers executing a task.
    pub busy: i64,
}

/// The ZooKeeper ensemble.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZooKeeperStatus {
    /// Servers asked for.
    pub replicas: i32,
    /// Servers that serve clients: in a quorum (leader or follower), or standalone.
    pub ready_replicas: i32,
    /// Whether a majority of the servers is ready, so the ensemble can serve.
    pub quorum: bool,
    /// Voting members of the ensemble's committed configuration, as last read; differs from
    /// `replicas` while the ensemble is being resized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
}

fn default_masters() -> i32 {
    2
}
fn default_workers() -> i32 {
    2
}
fn default_session_timeout() -> String {
    "10s".into()
}
fn default_min_workers() -> i32 {
    1
}
fn default_tasks_per_worker() -> i32 {
    1
}
/// The HPA's defaults: add at once, remove after five minutes of lower load.
fn default_scale_up_stabilization() -> String {
    "0s".into()
}
fn default_scale_down_stabilization() -> String {
    "300s".into()
}
fn default_max_attempts() -> i32 {
    3
}
fn default_task_timeout() -> String {
    "60s".into()
}
fn default_backlog_cap() -> i64 {
    200_000
}
fn default_zookeeper_replicas() -> i32 {
    3
}
fn default_heap() -> String {
    "256m".into()
}
fn default_storage_size() -> String {
    "1Gi".into()
}

impl TaskClusterSpec {
    /// The master/worker image, defaulting to the release `operator_version` of the operator.
    pub fn node_image(&self, operator_version: &str) -> String {
        self.image.clone().unwrap_or_else(|| format!("{NODE_IMAGE_REPOSITORY}:{operator_version}"))
    }

    pub fn zookeeper_image(&self) -> String {
        self.zookeeper.image.clone().unwrap_or_else(default_zookeeper_image)
    }
}
