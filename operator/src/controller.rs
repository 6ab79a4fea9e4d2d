//! The reconcile loop: validate (pure) → build (pure) → apply (server-side apply) → status.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{predicates, watcher, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, field, info, info_span, warn, Instrument, Span};

use crate::apply::{self, Applied, Applier, ApplyError, ApplyFailures, Ledger, FIELD_MANAGER};
use crate::autoscale::{cost, Decision, Load, Policy, Reason, Recommendations};
use crate::build::labels::{Names, MANAGED_BY};
use crate::build::{self, security, zookeeper, BuildError, Settings};
use crate::crd::{AutoscalingStatus, TaskCluster, TaskClusterStatus};
use crate::ensemble;
use crate::metrics::{Metrics, ReasonLabel};
use crate::scope::Scope;
use crate::status::{self, Observation, ZkReading};
use crate::validate::{self, Observed, ValidSpec};
use crate::zk::{ReconfigError, StatusSource};

/// How often a running cluster's status is refreshed from ZooKeeper: leader and backlog are
/// then at most this plus the leader's 500 ms publishing period stale.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Between reconfig steps: a joining server takes seconds to start and sync.
const RESIZE_STEP: Duration = Duration::from_secs(3);
/// How often a cluster without a ZooKeeper quorum is looked at, besides child changes.
const WAIT: Duration = Duration::from_secs(10);
/// Every child is rewritten this often, whatever the hashes say, to undo drift the cheap
/// checks cannot see (a hand edit of a ConfigMap or Service).
const RESYNC: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// The API server refuses Events whose note is longer.
const EVENT_NOTE_MAX: usize = 1024;

/// Delay before the next attempt after `failures` consecutive failures.
fn retry_delay(failures: u32) -> Duration {
    RETRY.saturating_mul(1 << failures.min(6)).min(MAX_RETRY)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Apply(#[from] ApplyFailures),
    #[error("cannot write the status of TaskCluster {namespace}/{name}: {source}")]
    Status { namespace: String, name: String, source: kube::Error },
    #[error("cannot set the workers of TaskCluster {namespace}/{name} to {replicas} through its scale subresource: {source}; check that the operator's ClusterRole (or Role) may patch taskclusters/scale")]
    Scale { namespace: String, name: String, replicas: i32, source: kube::Error },
}

impl Error {
    /// Stable label for metrics and Warning events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Build(_) => "BuildFailed",
            Error::Apply(failures) if failures.only_credentials() => "CredentialsFailed",
            Error::Apply(_) => "ApplyFailed",
            Error::Status { .. } => "StatusWriteFailed",
            Error::Scale { .. } => "ScaleFailed",
        }
    }
}

/// Caches of the children, filled by the watches that also trigger reconciles.
#[derive(Clone)]
pub struct ChildStores {
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub stateful_sets: Store<StatefulSet>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub deployments: Store<Deployment>,
    /// Set once all caches have been filled. `Store::wait_until_ready` wakes only one of
    /// several concurrent waiters, so reconciles wait here instead, where one waits for the
    /// stores and the others for it.
    filled: Arc<tokio::sync::OnceCell<()>>,
}

impl ChildStores {
    pub fn new(
        services: Store<Service>,
        config_maps: Store<ConfigMap>,
        stateful_sets: Store<StatefulSet>,
        disruption_budgets: Store<PodDisruptionBudget>,
        network_policies: Store<NetworkPolicy>,
        deployments: Store<Deployment>,
    ) -> Self {
        Self {
            services,
            config_maps,
            stateful_sets,
            disruption_budgets,
            network_policies,
            deployments,
            filled: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    async fn wait_until_ready(&self) {
        // Without this, the first reconciles after a start would rewrite every child.
        self.filled
            .get_or_init(|| async {
                let all = async {
                    let _ = self.services.wait_until_ready().await;
                    let _ = self.config_maps.wait_until_ready().await;
                    let _ = self.stateful_sets.wait_until_ready().await;
                    let _ = self.disruption_budgets.wait_until_ready().await;
                    let _ = self.network_policies.wait_until_ready().await;
                    let _ = self.deployments.wait_until_ready().await;
                };
                if tokio::time::timeout(Duration::from_secs(30), all).await.is_err() {
                    warn!("the caches of child objects are not filled after 30 s; check the operator's RBAC");
                }
            })
            .await;
    }
}

/// Everything a reconcile needs; no globals.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pub zookeeper: Arc<dyn StatusSource>,
    pub stores: ChildStores,
    pub ledger: Ledger,
    /// When each TaskCluster's children were last applied unconditionally.
    last_resync: Mutex<HashMap<String, Instant>>,
    /// TaskClusters (by `uid/retained`) whose credentials Secret is known to exist as the
    /// retention asks.
    credentials: Mutex<HashSet<String>>,
    /// Consecutive failed reconciles per TaskCluster, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each TaskCluster's status was last written for a change of its task counters
    /// alone.
    counters_written: Mutex<HashMap<String, Instant>>,
    /// The autoscaler's recent recommendations per TaskCluster, for its stabilization
    /// windows.
    autoscalers: Mutex<HashMap<String, Recommendations>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        zookeeper: Arc<dyn StatusSource>,
        stores: ChildStores,
    ) -> Self {
        let reporter = Reporter { controller: MANAGED_BY.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            zookeeper,
            stores,
            ledger: Ledger::default(),
            last_resync: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
            counters_written: Mutex::new(HashMap::new()),
            autoscalers: Mutex::new(HashMap::new()),
        }
    }

    /// True at most once per RESYNC per cluster; the first reconcile after a start only
    /// starts the clock, since the caches already tell what exists.
    fn resync_due(&self, key: &str) -> bool {
        let Ok(mut last) = self.last_resync.lock() else { return false };
        let now = Instant::now();
        match last.get(key) {
            Some(at) if now.duration_since(*at) < RESYNC => false,
            Some(_) => {
                last.insert(key.to_string(), now);
                true
            },
            None => {
                last.insert(key.to_string(), now);
                false
            },
        }
    }

    fn credentials_known(&self, key: &str) -> bool {
        self.credentials.lock().map(|known| known.contains(key)).unwrap_or(false)
    }

    fn remember_credentials(&self, key: &str) {
        if let Ok(mut known) = self.credentials.lock() {
            known.insert(key.to_string());
        }
    }

    /// Drops what is kept in memory for a TaskCluster that is going away.
    pub fn forget<K: Resource>(&self, tc: &K) {
        let namespace = tc.namespace().unwrap_or_default();
        let name = tc.name_any();
        let key = format!("{namespace}/{name}");
        self.zookeeper.forget(&key);
        self.metrics.forget_cluster(&namespace, &name);
        self.ledger.forget_instance(&namespace, &name);
        if let Ok(mut last) = self.last_resync.lock() {
            last.remove(&key);
        }
        if let (Ok(mut known), Some(uid)) = (self.credentials.lock(), tc.uid()) {
            known.retain(|k| k.split('/').next() != Some(uid.as_str()));
        }
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&key);
        }
        if let Ok(mut written) = self.counters_written.lock() {
            written.remove(&key);
        }
        self.forget_autoscaler(&key);
    }

    fn forget_autoscaler(&self, key: &str) {
        if let Ok(mut autoscalers) = self.autoscalers.lock() {
            autoscalers.remove(key);
        }
    }

    /// The autoscaler's decision for cluster `key`, its history started at the first call.
    fn decide(&self, key: &str, policy: &Policy, current: i32, load: Option<&Load>, now: Instant) -> Decision {
        let hold = || Decision {
            desired: current,
            reason: Reason::NoReading,
            message: "the autoscaler's state is unavailable; holding".into(),
        };
        let Ok(mut autoscalers) = self.autoscalers.lock() else { return hold() };
        let history = autoscalers.entry(key.to_string()).or_insert_with(|| Recommendations::starting(now, current));
        history.decide(policy, current, load, now)
    }

    fn since_counters_written(&self, key: &str) -> Option<Duration> {
        self.counters_written.lock().ok()?.get(key).map(Instant::elapsed)
    }

    fn counters_written(&self, key: &str) {
        if let Ok(mut written) = self.counters_written.lock() {
            written.insert(key.to_string(), Instant::now());
        }
    }

    /// The delay before retrying a failed reconcile: 5 s, doubling per consecutive
    /// failure up to 5 minutes, so a lasting error does not hammer the API server.
    fn retry_after_failure(&self, key: &str) -> Duration {
        let Ok(mut failures) = self.failures.lock() else { return RETRY };
        let count = failures.entry(key.to_string()).or_insert(0);
        let delay = retry_delay(*count);
        *count = count.saturating_add(1);
        delay
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }

    async fn publish(&self, reference: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let note = status::clip(note, EVENT_NOTE_MAX);
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(err) = self.recorder.publish(&event, reference).await {
            warn!(reason, error = %err, "cannot publish event");
        } else {
            self.metrics.wrote("Event");
        }
    }
}

/// Entry point of the controller: one span and one timer per reconcile.
pub async fn reconcile(object: Arc<DeserializeGuard<TaskCluster>>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let result = match &object.0 {
        Ok(tc) => {
            let span = info_span!("reconcile", cluster = %format!("{}/{}", tc.namespace().unwrap_or_default(), tc.name_any()), writes = field::Empty);
            reconcile_cluster(tc, &ctx).instrument(span).await
        },
        Err(invalid) => Ok(reject_invalid(invalid, &ctx).await),
    };
    ctx.metrics.observe(started.elapsed());
    result
}

/// A TaskCluster that does not even decode (e.g. stored before a schema change): say so on
/// the object and carry on with the others.
async fn reject_invalid(invalid: &InvalidObject, ctx: &Context) -> Action {
    ctx.metrics.invalid_objects.inc();
    let meta = &invalid.metadata;
    warn!(namespace = ?meta.namespace, name = ?meta.name, error = %invalid.error, "TaskCluster cannot be decoded; fix or delete it");
    let reference = ObjectReference {
        api_version: Some(TaskCluster::api_version(&()).into()),
        kind: Some(TaskCluster::kind(&()).into()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    };
    let note =
        format!("the spec cannot be read: {}; fix it with kubectl edit, or delete and re-apply it", invalid.error);
    ctx.publish(&reference, EventType::Warning, "InvalidSpec", note).await;
    Action::await_change()
}

fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

async fn reconcile_cluster(tc: &TaskCluster, ctx: &Context) -> Result<Action, Error> {
    let namespace = tc.namespace().unwrap_or_default();
    let name = tc.name_any();
    let key = format!("{namespace}/{name}");
    if tc.meta().deletion_timestamp.is_some() {
        // Owner references make the garbage collector delete the children.
        ctx.forget(tc);
        return Ok(Action::await_change());
    }
    ctx.stores.wait_until_ready().await;
    let names = Names::new(&name);
    let reference = tc.object_ref(&());

    // Validate (pure), against what already runs: the ensemble's size follows its membership.
    let ensemble = cached(&ctx.stores.stateful_sets, &namespace, &names.zookeeper);
    let members = read_members(tc, &names, ensemble.as_deref(), &key, ctx).await;
    let config = cached(&ctx.stores.config_maps, &namespace, &names.zookeeper_config);
    let last_members = config.as_ref().and_then(|c| c.annotations().get(zookeeper::MEMBERS_ANNOTATION).cloned());
    let running = ensemble::Running {
        replicas: ensemble.as_ref().and_then(|s| s.spec.as_ref()?.replicas),
        members: members.clone(),
        last_members: last_members.as_deref().and_then(ensemble::parse_ids),
    };
    let valid = validate::validate(tc, Observed { ensemble: running });

    // Build (pure) and apply; an invalid spec leaves the running cluster as it is. A child
    // that cannot be applied does not keep the others from it, nor the status from saying so.
    let applied = match &valid {
        Ok(valid) => apply_children(tc, valid, &names, &reference, ctx).await?,
        Err(_) => ChildrenApplied::default(),
    };
    let mut writes = applied.writes;
    let mut apply_failures: Vec<String> = applied.failures.iter().map(ToString::to_string).collect();

    // Resize the ensemble one reconfig at a time; the children follow at the next reconcile.
    let resizing = match (&valid, &members) {
        (Ok(valid), Some(members)) => resize_ensemble(tc, valid, members, &names, &reference, ctx).await,
        _ => Ok(false),
    };
    let resizing = resizing.unwrap_or_else(|failure| {
        apply_failures.push(failure);
        true
    });

    // Status, from the cached children and ZooKeeper.
    let zookeeper = cached(&ctx.stores.stateful_sets, &namespace, &names.zookeeper);
    let reading = read_cluster(tc, &names, zookeeper.as_deref(), &key, ctx).await;
    ctx.metrics.cluster_read(&namespace, &name, reading.cluster());
    let policy = valid.as_ref().ok().and_then(|v| v.autoscaling);
    let autoscaled = match &policy {
        Some(policy) => Some(autoscale_workers(tc, policy, &reading, &names, &reference, &key, ctx).await?),
        None => {
            // Turned off: a later spec.autoscaling starts from a clean history.
            ctx.forget_autoscaler(&key);
            None
        },
    };
    writes += autoscaled.as_ref().map_or(0, |a| a.writes);
    let masters = cached(&ctx.stores.deployments, &namespace, &names.masters);
    let workers = cached(&ctx.stores.deployments, &namespace, &names.workers);
    let observation = Observation {
        spec_error: valid.as_ref().err(),
        masters: masters.as_deref(),
        workers: workers.as_deref(),
        zookeeper: zookeeper.as_deref(),
        reading: &reading,
        apply_failures: &apply_failures,
        members: members.as_ref(),
    };
    let previous = tc.status.as_ref();
    let now = Timestamp::now();
    let mut next = status::compute(tc, previous, &observation, now);
    if valid.is_ok() {
        let last_scale = previous.and_then(|p| p.autoscaling.as_ref()).and_then(|a| a.last_scale_time.clone());
        next.autoscaling = autoscaled.map(|a| AutoscalingStatus {
            desired: a.decision.desired,
            reason: a.decision.reason.as_str().into(),
            message: status::clip(a.decision.message, EVENT_NOTE_MAX),
            last_scale_time: if a.scaled {
                Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)))
            } else {
                last_scale
            },
        });
    }
    // A busy cluster's counters change at every refresh: alone, they are written at most
    // every COUNTERS_PERIOD.
    let change = status::Change::between(previous, &next);
    if change.due(ctx.since_counters_written(&key)) {
        write_status(ctx, &namespace, &name, &next).await?;
        if change == status::Change::Counters {
            ctx.counters_written(&key);
        }
        writes += 1;
        transition_events(ctx, &reference, previous, &next).await;
    }

    Span::current().record("writes", writes);
    if writes > 0 {
        debug!(writes, "reconciled");
    }
    ctx.metrics.zookeeper_sessions.set(i64::try_from(ctx.zookeeper.sessions()).unwrap_or(i64::MAX));
    if !applied.failures.is_empty() {
        // The retry backoff of error_policy applies.
        return Err(Error::Apply(ApplyFailures(applied.failures)));
    }
    ctx.succeeded(&key);
    Ok(match reading {
        _ if resizing => Action::requeue(RESIZE_STEP),
        ZkReading::Skipped => Action::requeue(WAIT),
        _ => Action::requeue(REFRESH),
    })
}

/// The committed membership of the ensemble, once any of its servers serves.
async fn read_members(
    tc: &TaskCluster,
    names: &Names,
    ensemble: Option<&StatefulSet>,
    key: &str,
    ctx: &Context,
) -> Option<ensemble::Members> {
    let ready_servers = ensemble.and_then(|s| s.status.as_ref()?.ready_replicas).unwrap_or(0);
    if ready_servers < 1 {
        return None;
    }
    let connect = connect_string(tc, names, ctx);
    match ctx.zookeeper.members(key, &connect).await {
        Ok(members) => Some(members),
        Err(err) => {
            debug!(error = %err, "cannot read the ensemble's membership");
            None
        },
    }
}

/// Takes the next reconfig step towards `spec.zookeeper.replicas`. True while the ensemble
/// is not at its size yet (the next reconcile comes sooner); a failure is a message for the
/// status.
async fn resize_ensemble(
    tc: &TaskCluster,
    valid: &ValidSpec,
    members: &ensemble::Members,
    names: &Names,
    reference: &ObjectReference,
    ctx: &Context,
) -> Result<bool, String> {
    let desired = valid.spec.zookeeper.replicas;
    let step = ensemble::next_step(desired, members);
    if step == ensemble::Step::Steady {
        return Ok(valid.ensemble.replicas != desired);
    }
    let current = ensemble::format_ids(&members.voters);
    let Some(admin_key) = &ctx.settings.admin_key else {
        return Err(format!(
            "cannot resize the ZooKeeper ensemble from {} to {desired} servers: the operator has no administrator key (ZOOKEEPER_ADMIN_KEY, set by the Helm chart)",
            members.voters.len()
        ));
    };
    let password = security::admin_password(&admin_key.0, &tc.uid().unwrap_or_default());
    let namespace = tc.namespace().unwrap_or_default();
    let domain = ctx.settings.cluster_domain.clone();
    let address = move |id| zookeeper::server_address(names, &namespace, &domain, id);
    let connect = connect_string(tc, names, ctx);
    match ctx.zookeeper.reconfigure(&connect, &password, &step, members.version, &address).await {
        Ok(()) => {
            let note = match &step {
                ensemble::Step::Add(ids) => format!("added ZooKeeper servers {ids:?} to the ensemble of {current}"),
                ensemble::Step::Remove(ids) => {
                    format!("removed ZooKeeper servers {ids:?} from the ensemble of {current}")
                },
                ensemble::Step::Steady => unreachable!("returned above"),
            };
            info!("{note}");
            ctx.publish(reference, EventType::Normal, "Reconfigured", note).await;
            Ok(true)
        },
        Err(ReconfigError::NotYet(why)) => {
            debug!(?step, why, "the ensemble is not ready for the next reconfig");
            Ok(true)
        },
        Err(err @ ReconfigError::NotAuthorized) => {
            Err(format!(
                "{err}: the servers' {} Secret no longer matches the operator's key (a reinstalled operator?); delete that Secret and restart the ZooKeeper pods one at a time",
                names.admin
            ))
        },
        Err(err) => Err(format!("cannot resize the ZooKeeper ensemble: {err}")),
    }
}

/// What applying the children did: writes made, and the children that could not be applied.
#[derive(Debug, Default)]
struct ChildrenApplied {
    writes: u32,
    failures: Vec<ApplyError>,
}

impl ChildrenApplied {
    /// Counts one apply; a failure is kept and the next child is applied regardless.
    fn count(&mut self, ctx: &Context, kind: &str, result: Result<Applied, ApplyError>) -> Option<Applied> {
        match result {
            Ok(applied) => {
                if applied != Applied::Unchanged {
                    ctx.metrics.wrote(kind);
                    self.writes += 1;
                }
                Some(applied)
            },
            Err(err) => {
                warn!(error = %err, "child not applied");
                self.failures.push(err);
                None
            },
        }
    }
}

/// Builds the children and applies every one that changed, whether or not the others could
/// be applied.
async fn apply_children(
    tc: &TaskCluster,
    valid: &ValidSpec,
    names: &Names,
    reference: &ObjectReference,
    ctx: &Context,
) -> Result<ChildrenApplied, Error> {
    let namespace = tc.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", names.instance);
    let mut children = build::build(tc, valid, &ctx.settings)?;
    let s = &ctx.stores;
    let ensemble = cached(&s.stateful_sets, &namespace, &names.zookeeper);
    build::zookeeper::keep_claim_labels(&mut children.stateful_set, ensemble.as_deref());
    let mut applied = ChildrenApplied::default();

    // Credentials first, since the pods refer to them (pods wait for a missing Secret).
    // Known per retention: a switch to Retain releases the existing Secret from its owner.
    let retained = valid.spec.zookeeper.storage.when_deleted.retains();
    let known = format!("{}/{retained}", tc.uid().unwrap_or_default());
    if !ctx.credentials_known(&known) {
        let owner = build::Owner::of(tc, &ctx.settings)?;
        let created = apply::ensure_secret(&ctx.client, &namespace, &names.credentials, || {
            security::credentials(&owner, names, &security::generate_password(), retained)
        })
        .await;
        if applied.count(ctx, "Secret", created).is_some() {
            ctx.remember_credentials(&known);
        }
    }

    // The servers' administrator digest, before the StatefulSet whose pods read it.
    if let Some(admin_key) = &ctx.settings.admin_key {
        let known = format!("{}/admin", tc.uid().unwrap_or_default());
        if !ctx.credentials_known(&known) {
            let owner = build::Owner::of(tc, &ctx.settings)?;
            let password = security::admin_password(&admin_key.0, &tc.uid().unwrap_or_default());
            let created = apply::ensure_secret(&ctx.client, &namespace, &names.admin, || {
                security::admin_credentials(&owner, names, &password)
            })
            .await;
            if applied.count(ctx, "Secret", created).is_some() {
                ctx.remember_credentials(&known);
            }
        }
    }

    let ensemble_existed = ensemble.is_some();
    let replicas = |name: &str| cached(&s.deployments, &namespace, name).and_then(|d| d.spec.as_ref()?.replicas);
    let (workers_before, masters_before) = (replicas(&names.workers), replicas(&names.masters));
    let applier = Applier { client: &ctx.client, ledger: &ctx.ledger, force: ctx.resync_due(&key) };
    applied.count(ctx, "Service", applier.apply(&s.services, children.headless_service).await);
    applied.count(ctx, "Service", applier.apply(&s.services, children.client_service).await);
    applied.count(ctx, "ConfigMap", applier.apply(&s.config_maps, children.config_map).await);
    applied.count(ctx, "NetworkPolicy", applier.apply(&s.network_policies, children.network_policy).await);
    let budget = applier.apply(&s.disruption_budgets, children.disruption_budget).await;
    applied.count(ctx, "PodDisruptionBudget", budget);
    let ensemble_applied =
        applied.count(ctx, "StatefulSet", applier.apply(&s.stateful_sets, children.stateful_set).await);
    let masters_applied = applied.count(ctx, "Deployment", applier.apply(&s.deployments, children.masters).await);
    let budget = applier.apply(&s.disruption_budgets, children.master_disruption_budget).await;
    applied.count(ctx, "PodDisruptionBudget", budget);
    let workers_applied = applied.count(ctx, "Deployment", applier.apply(&s.deployments, children.workers).await);

    if !ensemble_existed && ensemble_applied == Some(Applied::Created) {
        let note = format!(
            "created a {}-server ZooKeeper ensemble, {} masters and {} workers",
            valid.spec.zookeeper.replicas, valid.spec.masters, valid.spec.workers
        );
        info!("{note}");
        ctx.publish(reference, EventType::Normal, "Created", note).await;
    }
    for (role, before, after, written) in [
        ("workers", workers_before, valid.spec.workers, workers_applied),
        ("masters", masters_before, valid.spec.masters, masters_applied),
    ] {
        if let Some(before) = before.filter(|b| *b != after && written.is_some()) {
            let note = format!("scaled {role} from {before} to {after}");
            info!("{note}");
            ctx.publish(reference, EventType::Normal, "Scaled", note).await;
        }
    }
    Ok(applied)
}

/// What the autoscaler decided, and the writes it made to carry it out.
struct Autoscaled {
    decision: Decision,
    writes: u32,
    /// Whether the worker count was changed.
    scaled: bool,
}

/// Decides the worker count from the load and writes it through the scale subresource, as
/// an HPA would. Before a scale-in the worker pods get their deletion costs, so the
/// ReplicaSet controller removes idle workers and leaves busy ones to finish their task.
async fn autoscale_workers(
    tc: &TaskCluster,
    policy: &Policy,
    reading: &ZkReading,
    names: &Names,
    reference: &ObjectReference,
    key: &str,
    ctx: &Context,
) -> Result<Autoscaled, Error> {
    let load = reading.cluster().map(|cluster| Load {
        backlog: cluster.backlog,
        running: cluster.running,
        busy: cluster.workers_busy,
        // Without a leader nobody assigns tasks, and the counters describe a past term.
        fresh: cluster.counters_fresh && cluster.leader.is_some(),
    });
    let current = tc.spec.workers;
    let mut decision = ctx.decide(key, policy, current, load.as_ref(), Instant::now());
    if decision.desired == current {
        return Ok(Autoscaled { decision, writes: 0, scaled: false });
    }
    let mut writes = 0;
    if decision.desired < current {
        match protect_busy_workers(tc, names, key, ctx).await {
            Ok(patched) => writes += patched,
            Err(why) => {
                warn!(error = %why, "scale-in postponed: which workers are busy is unknown");
                decision = Decision {
                    desired: current,
                    reason: Reason::WorkersUnknown,
                    message: format!("{}; postponed: {why}", decision.message),
                };
                return Ok(Autoscaled { decision, writes, scaled: false });
            },
        }
    }
    let namespace = tc.namespace().unwrap_or_default();
    let name = tc.name_any();
    let api: Api<TaskCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    // Guarded by the resourceVersion the decision was made from: a `kubectl scale` or spec
    // edit in between makes it fail instead of being overwritten by a stale decision.
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": tc.resource_version() },
        "spec": { "replicas": decision.desired },
    });
    match api.patch_scale(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {},
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // The watch brings the newer object, and with it the next decision, at once.
            debug!("the TaskCluster changed since the autoscaler's decision");
            let message =
                format!("{}; superseded: the TaskCluster changed meanwhile, deciding again", decision.message);
            let decision = Decision { desired: current, reason: Reason::Superseded, message };
            return Ok(Autoscaled { decision, writes, scaled: false });
        },
        Err(source) => {
            return Err(Error::Scale { namespace, name, replicas: decision.desired, source });
        },
    }
    ctx.metrics.wrote("TaskCluster/scale");
    writes += 1;
    info!(from = current, to = decision.desired, reason = decision.reason.as_str(), "{}", decision.message);
    ctx.publish(reference, EventType::Normal, decision.reason.as_str(), decision.message.clone()).await;
    Ok(Autoscaled { decision, writes, scaled: true })
}

/// Sets `controller.kubernetes.io/pod-deletion-cost` on every registered worker pod from what
/// its znode says: busy high, idle low. Returns the pods patched; an error (ZooKeeper or the
/// API server) means the costs are not all in place and the scale-in must wait.
async fn protect_busy_workers(tc: &TaskCluster, names: &Names, key: &str, ctx: &Context) -> Result<u32, String> {
    let connect = connect_string(tc, names, ctx);
    let workers = ctx.zookeeper.workers(key, &connect).await.map_err(|err| err.to_string())?;
    let costs = cost::costs(&names.workers, workers.iter().map(|(id, state)| (id.as_str(), *state)));
    let namespace = tc.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let mut patched = 0;
    for (pod, value) in costs {
        let patch = serde_json::json!({ "metadata": { "annotations": { cost::ANNOTATION: value } } });
        match pods.patch(&pod, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                ctx.metrics.wrote("Pod");
                patched += 1;
            },
            // Gone since it registered: nothing left to protect.
            Err(kube::Error::Api(status)) if status.code == 404 => {},
            Err(err) => {
                return Err(format!(
                    "cannot annotate worker pod {namespace}/{pod}: {err}; check that the operator's ClusterRole (or Role) may patch pods"
                ))
            },
        }
    }
    Ok(patched)
}

fn connect_string(tc: &TaskCluster, names: &Names, ctx: &Context) -> String {
    let namespace = tc.namespace().unwrap_or_default();
    format!("{}.{namespace}.svc.{}:2181", names.zookeeper, ctx.settings.cluster_domain)
}

/// Asks ZooKeeper for leader and counters, once a majority of its servers is ready.
async fn read_cluster(
    tc: &TaskCluster,
    names: &Names,
    ensemble: Option<&StatefulSet>,
    key: &str,
    ctx: &Context,
) -> ZkReading {
    let ready_servers = ensemble.and_then(|s| s.status.as_ref()?.ready_replicas).unwrap_or(0);
    // While it grows, the smaller size is the one whose majority serves.
    let size = ensemble.and_then(|s| s.spec.as_ref()?.replicas).unwrap_or(i32::MAX).min(tc.spec.zookeeper.replicas);
    if ready_servers < build::zookeeper::quorum(size) {
        return ZkReading::Skipped;
    }
    ctx.metrics.zookeeper_reads.inc();
    let connect = connect_string(tc, names, ctx);
    match ctx.zookeeper.read(key, &connect).await {
        Ok(cluster) => ZkReading::Read(cluster),
        Err(err) => {
            ctx.metrics.zookeeper_failures.get_or_create(&ReasonLabel { reason: err.reason().into() }).inc();
            debug!(error = %err, "cannot read the cluster status from ZooKeeper");
            ZkReading::Failed(err)
        },
    }
}

async fn write_status(ctx: &Context, namespace: &str, name: &str, status: &TaskClusterStatus) -> Result<(), Error> {
    let api: Api<TaskCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": TaskCluster::api_version(&()),
        "kind": TaskCluster::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch)).await.map_err(|source| Error::Status {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    ctx.metrics.wrote("TaskCluster/status");
    Ok(())
}

/// Events for what a user wants to hear about: a new leader, a spec that cannot be honoured,
/// children the API server refused (again when the reason changes).
async fn transition_events(
    ctx: &Context,
    reference: &ObjectReference,
    previous: Option<&TaskClusterStatus>,
    next: &TaskClusterStatus,
) {
    let before = previous.and_then(|p| p.leader.clone());
    if let Some(leader) = &next.leader {
        if before.as_ref() != Some(leader) {
            let note = match &before {
                Some(old) => format!("master {leader} took over from {old}"),
                None => format!("master {leader} leads"),
            };
            info!("{note}");
            ctx.publish(reference, EventType::Normal, "LeaderChanged", note).await;
        }
    }
    let was = status::find(previous, status::DEGRADED).map(|c| c.reason.clone());
    if let Some(degraded) = status::find(Some(next), status::DEGRADED) {
        if degraded.reason == "InvalidSpec" && was.as_deref() != Some("InvalidSpec") {
            warn!(message = %degraded.message, "spec cannot be honoured");
            ctx.publish(reference, EventType::Warning, "InvalidSpec", degraded.message.clone()).await;
        }
    }
    let before = status::find(previous, status::RECONCILED);
    if let Some(reconciled) = status::find(Some(next), status::RECONCILED) {
        let repeated = before.is_some_and(|b| b.reason == reconciled.reason && b.message == reconciled.message);
        if reconciled.reason == "ApplyFailed" && !repeated {
            warn!(message = %reconciled.message, "children not applied");
            ctx.publish(reference, EventType::Warning, "ApplyFailed", reconciled.message.clone()).await;
        }
    }
}

pub fn error_policy(object: Arc<DeserializeGuard<TaskCluster>>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
    let retry_in = ctx.retry_after_failure(&key);
    warn!(cluster = %key, reason = error.reason(), error = %error, ?retry_in, "reconcile failed");
    ctx.metrics.failed(error.reason());
    Action::requeue(retry_in)
}

/// Drops what the caches never read, so memory grows with the number of objects, not with
/// the size of their specs: only metadata (labels, annotations, generation), replica
/// counts and status are looked at.
pub trait Slim {
    fn slim(&mut self);
}

impl Slim for Deployment {
    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Slim for StatefulSet {
    /// Keeps the names and labels of the volume claim templates, which later applies must
    /// repeat unchanged.
    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
            for claim in spec.volume_claim_templates.iter_mut().flatten() {
                let metadata = ObjectMeta {
                    name: claim.metadata.name.take(),
                    labels: claim.metadata.labels.take(),
                    ..Default::default()
                };
                *claim = PersistentVolumeClaim { metadata, ..Default::default() };
            }
        }
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Slim for ConfigMap {
    fn slim(&mut self) {
        self.data = None;
        self.binary_data = None;
    }
}

impl Slim for PodDisruptionBudget {
    fn slim(&mut self) {
        self.spec = None;
        self.status = None;
    }
}

impl Slim for NetworkPolicy {
    fn slim(&mut self) {
        self.spec = None;
    }
}

fn child_stream<K>(
    client: &Client,
    scope: &Scope,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Slim
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let stream = watcher(scope.api::<K>(client.clone()), config)
        .default_backoff()
        .modify(|object: &mut K| {
            object.managed_fields_mut().clear();
            object.slim();
        })
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// Reconciles at once: enough for ZooKeeper reads of many clusters to overlap (each is bounded
/// by its timeout), few enough that a burst of changes cannot swamp the API server.
const CONCURRENT_RECONCILES: u16 = 16;

/// The TaskClusters whose generation changed (spec edits, scale writes, new objects). The
/// operator's own status writes change none and trigger no reconcile: every cluster is
/// re-read on its own schedule (the requeue after each reconcile) anyway.
fn spec_changes<S, K>(objects: S) -> impl futures::Stream<Item = Result<K, watcher::Error>>
where
    S: futures::Stream<Item = Result<K, watcher::Error>>,
    K: Resource + 'static,
{
    objects.predicate_filter(predicates::generation, PredicateConfig::default())
}

/// Runs the controller over the TaskClusters of `scope` until SIGTERM or SIGINT.
pub async fn run(
    client: Client,
    scope: Scope,
    settings: Settings,
    metrics: Arc<Metrics>,
    zookeeper: Arc<dyn StatusSource>,
) {
    let (services, services_stream) = child_stream::<Service>(&client, &scope);
    let (config_maps, config_maps_stream) = child_stream::<ConfigMap>(&client, &scope);
    let (stateful_sets, stateful_sets_stream) = child_stream::<StatefulSet>(&client, &scope);
    let (disruption_budgets, disruption_budgets_stream) = child_stream::<PodDisruptionBudget>(&client, &scope);
    let (network_policies, network_policies_stream) = child_stream::<NetworkPolicy>(&client, &scope);
    let (deployments, deployments_stream) = child_stream::<Deployment>(&client, &scope);
    let stores =
        ChildStores::new(services, config_maps, stateful_sets, disruption_budgets, network_policies, deployments);
    let ctx = Arc::new(Context::new(client.clone(), metrics, settings, zookeeper, stores));
    let (clusters, writer) = reflector::store();
    let on_delete = ctx.clone();
    let cluster_stream =
        watcher(scope.api::<DeserializeGuard<TaskCluster>>(client), watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|object: &mut DeserializeGuard<TaskCluster>| object.managed_fields_mut().clear())
            .inspect_ok(move |event| {
                // Deletions never reach reconcile (there is nothing to do: owner references
                // let the garbage collector remove the children), but the caches must go.
                if let watcher::Event::Delete(gone) = event {
                    on_delete.forget(gone);
                }
            })
            .reflect(writer)
            .applied_objects();
    Controller::for_stream(spec_changes(cluster_stream), clusters)
        .with_config(ControllerConfig::default().concurrency(CONCURRENT_RECONCILES))
        .owns_stream(services_stream)
        .owns_stream(config_maps_stream)
        .owns_stream(stateful_sets_stream)
        .owns_stream(disruption_budgets_stream)
        .owns_stream(network_policies_stream)
        .owns_stream(deployments_stream)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(cluster = %object, "reconciled"),
                Err(err) => debug!(error = %err, "reconcile did not complete"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_names_and_labels_of_claim_templates_only() {
        use crate::build::{build, Settings};
        use crate::validate::{validate, Observed};
        let tc = crate::fixtures::example();
        let built = build(&tc, &validate(&tc, Observed::default()).unwrap(), &Settings::default()).unwrap();
        let mut cached = built.stateful_set.clone();
        cached.slim();
        let claims = cached.spec.as_ref().unwrap().volume_claim_templates.clone().unwrap();
        let original = &built.stateful_set.spec.as_ref().unwrap().volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert_eq!(claims[0].metadata.labels, original.metadata.labels);
        assert!(claims[0].spec.is_none());
        assert_eq!(cached.spec.unwrap().template, Default::default());
    }

    #[tokio::test]
    async fn status_writes_trigger_no_reconcile_and_spec_changes_do() {
        let at = |generation: i64, version: &str| {
            let mut tc = crate::fixtures::example();
            tc.metadata.generation = Some(generation);
            tc.metadata.resource_version = Some(version.into());
            Ok::<_, watcher::Error>(tc)
        };
        // Seen, its status written twice, its spec edited, its status written.
        let events = futures::stream::iter([at(1, "10"), at(1, "11"), at(1, "12"), at(2, "13"), at(2, "14")]);
        let passed: Vec<_> = spec_changes(events).map(|tc| tc.unwrap().metadata.resource_version).collect().await;
        assert_eq!(passed, [Some("10".to_string()), Some("13".to_string())]);
    }

    #[test]
    fn retries_back_off_up_to_five_minutes() {
        let delays: Vec<u64> = (0..9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
