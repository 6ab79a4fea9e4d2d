//! Reconcile against a mocked API server: each test scripts the exact requests it expects,
//! in order, and fails on any other or on one that never comes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, StatefulSet, StatefulSetStatus};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{json, Value};
use taskcluster::{ClusterStatus, LeaderInfo};

use crate::apply::annotate;
use crate::autoscale::cost::{WorkerState, ANNOTATION, BUSY_COST, IDLE_COST};
use crate::build::{build, Children, Settings};
use crate::controller::{reconcile, ChildStores, Context, REFRESH};
use crate::crd::TaskCluster;
use crate::ensemble::{Members, Step};
use crate::fixtures;
use crate::metrics::Metrics;
use crate::status::{compute, Observation, ZkReading};
use crate::validate::{validate, Observed};
use crate::zk::{ReconfigError, StatusSource, ZkStatusError};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What the fake ZooKeeper answers.
#[derive(Clone)]
enum FakeReply {
    Status(ClusterStatus),
    Unreachable,
}

struct FakeZk {
    reply: Mutex<FakeReply>,
    reads: Mutex<Vec<String>>,
    /// What `/workers` holds; `None`: that read fails.
    workers: Mutex<Option<Vec<(String, WorkerState)>>>,
    worker_reads: Mutex<u32>,
}

impl StatusSource for FakeZk {
    /// Never read here: the operator goes by the ConfigMap's members, as while ZooKeeper is
    /// unreadable.
    fn members<'a>(&'a self, _key: &'a str, _connect: &'a str) -> BoxFuture<'a, Result<Members, ZkStatusError>> {
        Box::pin(async { Err(ZkStatusError::BackingOff { reason: "NotRead", message: "not read".into() }) })
    }

    fn reconfigure<'a>(
        &'a self,
        _connect: &'a str,
        _password: &'a str,
        _step: &'a Step,
        _version: i64,
        _address: &'a (dyn Fn(i32) -> String + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ReconfigError>> {
        Box::pin(async { Err(ReconfigError::Failed("reconfiguration is not part of these tests".into())) })
    }

    fn read<'a>(&'a self, _key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<ClusterStatus, ZkStatusError>> {
        if let Ok(mut reads) = self.reads.lock() {
            reads.push(connect.to_string());
        }
        let reply = self.reply.lock().unwrap().clone();
        Box::pin(async move {
            match reply {
                FakeReply::Status(status) => Ok(status),
                FakeReply::Unreachable => {
                    Err(ZkStatusError::Timeout { connect: connect.to_string(), timeout: Duration::from_millis(1500) })
                },
            }
        })
    }

    fn workers<'a>(
        &'a self,
        _key: &'a str,
        connect: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, WorkerState)>, ZkStatusError>> {
        *self.worker_reads.lock().unwrap() += 1;
        let workers = self.workers.lock().unwrap().clone();
        Box::pin(async move {
            workers.ok_or_else(|| ZkStatusError::Timeout {
                connect: connect.to_string(),
                timeout: Duration::from_millis(1500),
            })
        })
    }

    fn forget(&self, _key: &str) {}
}

fn leader(id: &str, epoch: u64) -> ClusterStatus {
    ClusterStatus {
        leader: Some(LeaderInfo { id: id.into(), since_ms: 1_700_000_000_000 }),
        epoch,
        backlog: 4,
        running: 2,
        workers_registered: 3,
        workers_busy: 2,
        completed: 10,
        masters: 2,
        counters_fresh: true,
        ..ClusterStatus::default()
    }
}

/// Children as the API server holds them: applied by us, with their pods ready.
struct World {
    services: Vec<k8s_openapi::api::core::v1::Service>,
    config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    stateful_sets: Vec<StatefulSet>,
    pdbs: Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
    deployments: Vec<Deployment>,
}

impl World {
    fn empty() -> Self {
        Self {
            services: vec![],
            config_maps: vec![],
            stateful_sets: vec![],
            pdbs: vec![],
            policies: vec![],
            deployments: vec![],
        }
    }

    /// What a previous reconcile of `tc` left behind, all replicas ready.
    fn running(tc: &TaskCluster) -> Self {
        let valid = validate(tc, Observed::default()).unwrap();
        let Children {
            mut headless_service,
            mut client_service,
            mut config_map,
            mut stateful_set,
            mut disruption_budget,
            mut network_policy,
            mut masters,
            mut master_disruption_budget,
            mut workers,
        } = build(tc, &valid, &Settings::default()).unwrap();
        annotate(&mut headless_service).unwrap();
        annotate(&mut client_service).unwrap();
        annotate(&mut config_map).unwrap();
        annotate(&mut stateful_set).unwrap();
        annotate(&mut disruption_budget).unwrap();
        annotate(&mut network_policy).unwrap();
        annotate(&mut masters).unwrap();
        annotate(&mut master_disruption_budget).unwrap();
        annotate(&mut workers).unwrap();
        let zk = tc.spec.zookeeper.replicas;
        stateful_set.status = Some(StatefulSetStatus { replicas: zk, ready_replicas: Some(zk), ..Default::default() });
        for (d, n) in [(&mut masters, tc.spec.masters), (&mut workers, tc.spec.workers)] {
            d.metadata.generation = Some(1);
            d.status = Some(DeploymentStatus { replicas: Some(n), ready_replicas: Some(n), ..Default::default() });
        }
        Self {
            services: vec![headless_service, client_service],
            config_maps: vec![config_map],
            stateful_sets: vec![stateful_set],
            pdbs: vec![disruption_budget, master_disruption_budget],
            policies: vec![network_policy],
            deployments: vec![masters, workers],
        }
    }

    fn stores(&self) -> ChildStores {
        ChildStores::new(
            filled(&self.services),
            filled(&self.config_maps),
            filled(&self.stateful_sets),
            filled(&self.pdbs),
            filled(&self.policies),
            filled(&self.deployments),
        )
    }
}

fn filled<K>(objects: &[K]) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

struct Harness {
    ctx: Arc<Context>,
    zk: Arc<FakeZk>,
    server: ApiServer,
}

/// Runs one reconcile of `tc` against the harness; its requests come to `h.server`.
fn start(h: &Harness, tc: TaskCluster) -> tokio::task::JoinHandle<Result<Action, crate::controller::Error>> {
    let ctx = h.ctx.clone();
    tokio::spawn(async move { reconcile(Arc::new(DeserializeGuard(Ok(tc))), ctx).await })
}

fn harness(world: &World, reply: FakeReply) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let zk = Arc::new(FakeZk {
        reply: Mutex::new(reply),
        reads: Mutex::new(vec![]),
        workers: Mutex::new(Some(vec![])),
        worker_reads: Mutex::new(0),
    });
    let ctx = Context::new(client, Arc::new(Metrics::default()), Settings::default(), zk.clone(), world.stores());
    Harness { ctx: Arc::new(ctx), zk, server: ApiServer(handle) }
}

/// How the fake API server answers one request.
enum Reply {
    /// The request body back, as if applied unchanged.
    Echo,
    NotFound,
    /// 422, as the API server rejects an invalid object, with this message.
    Invalid(&'static str),
    /// 409, as a write whose resourceVersion precondition no longer holds.
    Conflict,
    /// 409, as a create of an object that exists.
    AlreadyExists,
    Json(Value),
    /// `tc` carrying the status from the request body, as a status patch answers.
    StatusOf(Box<TaskCluster>),
}

struct ApiServer(Handle);

impl ApiServer {
    /// Waits for the next request, checks method and path, answers, returns the body.
    async fn expect(&mut self, method: Method, path: &str, reply: Reply) -> Value {
        let next = tokio::time::timeout(Duration::from_secs(5), self.0.next_request()).await;
        let (request, send) =
            next.unwrap_or_else(|_| panic!("no request came; expected {method} {path}")).expect("client alive");
        let uri = request.uri().to_string();
        assert_eq!((request.method(), uri.split('?').next().unwrap()), (&method, path), "unexpected request {uri}");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let (status, response) = match reply {
            Reply::Echo => (200, body.clone()),
            Reply::Json(value) => (200, value),
            Reply::StatusOf(tc) => {
                let mut object = serde_json::to_value(&tc).unwrap();
                object["status"] = body["status"].clone();
                (200, object)
            },
            Reply::NotFound => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
            Reply::Conflict => (
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
            ),
            Reply::AlreadyExists => (
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
            ),
            Reply::Invalid(message) => (
                422,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422, "message": message}),
            ),
        };
        let response =
            Response::builder().status(status).body(Body::from(serde_json::to_vec(&response).unwrap())).unwrap();
        send.send_response(response);
        body
    }

    /// Asserts that the reconcile made no further request.
    async fn expect_nothing_more(&mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const SECRET: &str = "/api/v1/namespaces/default/secrets/demo-zookeeper-credentials";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const STATUS: &str = "/apis/taskcluster.dev/v1alpha1/namespaces/default/taskclusters/demo/status";

fn secret_metadata() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-zookeeper-credentials", "namespace": "default"}})
}

/// The status a previous reconcile of a running cluster wrote.
fn settled(mut tc: TaskCluster, world: &World, cluster: &ClusterStatus) -> TaskCluster {
    let reading = ZkReading::Read(cluster.clone());
    let observation = Observation {
        spec_error: None,
        masters: world.deployments.first(),
        workers: world.deployments.get(1),
        zookeeper: world.stateful_sets.first(),
        reading: &reading,
        apply_failures: &[],
        members: None,
    };
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    tc.status = Some(compute(&tc, None, &observation, now));
    tc
}

#[tokio::test]
async fn a_new_cluster_gets_credentials_then_every_child_then_status() {
    let tc = fixtures::example();
    let mut h = harness(&World::empty(), FakeReply::Unreachable);
    let reconciling = start(&h, tc);
    let s = &mut h.server;
    let secret = s.expect(Method::POST, SECRETS, Reply::Echo).await;
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    let digest = secret["data"]["digest"].as_str().unwrap();
    assert!(!digest.is_empty());

    let children = [
        ("/api/v1/namespaces/default/services/demo-zookeeper-headless", "Service"),
        ("/api/v1/namespaces/default/services/demo-zookeeper", "Service"),
        ("/api/v1/namespaces/default/configmaps/demo-zookeeper-config", "ConfigMap"),
        ("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo-zookeeper", "NetworkPolicy"),
        ("/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo-zookeeper", "PodDisruptionBudget"),
        ("/apis/apps/v1/namespaces/default/statefulsets/demo-zookeeper", "StatefulSet"),
        ("/apis/apps/v1/namespaces/default/deployments/demo-master", "Deployment"),
        ("/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo-master", "PodDisruptionBudget"),
        ("/apis/apps/v1/namespaces/default/deployments/demo-worker", "Deployment"),
    ];
    for (path, kind) in children {
        let body = s.expect(Method::PATCH, path, Reply::Echo).await;
        assert_eq!(body["kind"], kind);
        assert!(body["metadata"]["annotations"]["taskcluster.dev/applied-hash"].is_string());
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "TaskCluster");
    }
    let event = s.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "Created");
    let status = s.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(
        status["status"]["selector"],
        "app.kubernetes.io/component=worker,app.kubernetes.io/instance=demo,app.kubernetes.io/name=taskcluster"
    );
    let ready =
        status["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "Creating");
    let reconciled = condition_of(&status, "Reconciled");
    assert_eq!((reconciled["status"].as_str(), reconciled["reason"].as_str()), (Some("True"), Some("Applied")));
    s.expect_nothing_more().await;

    let action = reconciling.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)), "no quorum yet: no fast polling");
    assert!(h.zk.reads.lock().unwrap().is_empty(), "ZooKeeper is not asked before it has a quorum");

    // The status write triggers the next reconcile before the watches have delivered the
    // new children: it must not write them again.
    let mut again = fixtures::example();
    again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let second = start(&h, again);
    h.server.expect_nothing_more().await;
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_settled_cluster_costs_no_writes() {
    let base = fixtures::example();
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc);
    // The credentials are made sure of once per operator start: a create that the API
    // server refuses, since they exist.
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH));
    assert_eq!(h.zk.reads.lock().unwrap().as_slice(), ["demo-zookeeper.default.svc.cluster.local:2181"]);
}

#[tokio::test]
async fn each_clusters_tasks_are_exported_as_metrics_until_it_is_deleted() {
    let base = fixtures::example();
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc.clone());
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    reconciling.await.unwrap().unwrap();
    let text = h.ctx.metrics.render().unwrap();
    let series = |state: &str| {
        format!("taskcluster_operator_cluster_tasks{{namespace=\"default\",name=\"demo\",state=\"{state}\"}}")
    };
    for (state, value) in [("backlog", 4), ("running", 2), ("completed", 10), ("dead_lettered", 0)] {
        assert!(text.contains(&format!("{} {value}\n", series(state))), "{state} = {value}:\n{text}");
    }
    assert!(
        text.contains("taskcluster_operator_cluster_workers_busy{namespace=\"default\",name=\"demo\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("taskcluster_operator_cluster_zookeeper_readable{namespace=\"default\",name=\"demo\"} 1\n"));

    h.ctx.forget(&tc);
    let text = h.ctx.metrics.render().unwrap();
    assert!(!text.contains("name=\"demo\""), "a deleted cluster's series stay:\n{text}");
}

#[tokio::test]
async fn a_new_leader_is_written_to_status_and_announced() {
    let base = fixtures::example();
    let world = World::running(&base);
    let tc = settled(base, &world, &leader("demo-master-abc", 3));
    let mut h = harness(&world, FakeReply::Status(leader("demo-master-def", 4)));
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(status["status"]["leader"], "demo-master-def");
    assert_eq!(status["status"]["epoch"], 4);
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "LeaderChanged");
    assert!(event["note"].as_str().unwrap().contains("took over from demo-master-abc"));
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn scaling_workers_rewrites_only_their_deployment() {
    let base = fixtures::example();
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster).with_workers(50).with_generation(2);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let workers =
        h.server.expect(Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/demo-worker", Reply::Echo).await;
    assert_eq!(workers["spec"]["replicas"], 50);
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "Scaled");
    assert_eq!(event["note"], "scaled workers from 3 to 50");
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(status["status"]["workers"]["desired"], 50);
    assert_eq!(status["status"]["observedGeneration"], 2);
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_spec_that_cannot_be_honoured_becomes_a_condition_not_a_crash_loop() {
    let base = fixtures::example();
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let mut tc = settled(base, &world, &cluster).with_generation(2);
    // Stored before the schema's rule existed, or on an API server without CEL.
    tc.spec.zookeeper.replicas = 2;
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc);
    // No child is touched: the running cluster keeps its last valid spec.
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidEnsembleSize");
    assert!(ready["message"].as_str().unwrap().contains("it must be 1, 3 or 5"));
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH), "status keeps refreshing");
}

#[tokio::test]
async fn an_unreachable_zookeeper_is_a_condition_and_keeps_the_last_counters() {
    let base = fixtures::example();
    let world = World::running(&base);
    let tc = settled(base, &world, &leader("demo-master-abc", 3));
    let mut h = harness(&world, FakeReply::Unreachable);
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let elected = conditions.iter().find(|c| c["type"] == "LeaderElected").unwrap();
    assert_eq!((elected["status"].as_str(), elected["reason"].as_str()), (Some("False"), Some("ZooKeeperUnreachable")));
    let degraded = conditions.iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(status["status"]["backlog"], 4, "last known backlog kept");
    assert!(status["status"].get("leader").is_none(), "the leader is unknown, not the last seen: {status}");
    assert!(status["status"]["countersAsOf"].is_string(), "the kept counters are dated: {status}");
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn retained_data_releases_its_credentials_from_the_taskcluster() {
    let mut base = fixtures::example();
    base.spec.zookeeper.storage.when_deleted = crate::crd::VolumeRetention::Retain;
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc.clone());
    // Created while the cluster deleted its data: it exists, owned by the TaskCluster.
    let created = h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    assert!(created["metadata"].get("ownerReferences").is_none(), "a retained Secret has no owner: {created}");
    let released = h.server.expect(Method::PATCH, SECRET, Reply::Json(secret_metadata())).await;
    assert_eq!(released, json!({"metadata": {"ownerReferences": null}}), "only the owner goes, never the data");
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH));

    // Released once per operator start, not at every reconcile.
    let reconciling = start(&h, tc);
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_hand_edited_deployment_is_put_back() {
    let base = fixtures::example();
    let mut world = World::running(&base);
    // Our last write produced generation 2; someone scaled the Deployment by hand since.
    world.deployments[1].metadata.generation = Some(3);
    world.deployments[1].spec.as_mut().unwrap().replicas = Some(9);
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let key = crate::apply::Ledger::key::<Deployment>("default", "demo-worker");
    let ours = kube::core::ObjectMeta { generation: Some(2), ..Default::default() };
    h.ctx.ledger.record(key, "hash of an older spec".into(), &ours);
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let workers =
        h.server.expect(Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/demo-worker", Reply::Echo).await;
    assert_eq!(workers["spec"]["replicas"], 3);
    // Undoing the hand edit is a scale like any other, and said so.
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["note"], "scaled workers from 9 to 3");
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_object_that_does_not_decode_is_reported_and_skipped() {
    let h = harness(&World::empty(), FakeReply::Unreachable);
    let mut server = h.server;
    let invalid = kube::core::error_boundary::InvalidObject {
        error: "spec.workers: invalid type: string \"many\", expected i32".into(),
        metadata: kube::core::ObjectMeta {
            name: Some("broken".into()),
            namespace: Some("default".into()),
            uid: Some("5b4c7d1e-0000-4000-8000-000000000002".into()),
            ..Default::default()
        },
    };
    let ctx = h.ctx.clone();
    let reconciling = tokio::spawn(async move { reconcile(Arc::new(DeserializeGuard(Err(invalid))), ctx).await });
    let event = server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    assert_eq!(event["regarding"]["name"], "broken");
    assert!(event["note"].as_str().unwrap().contains("expected i32"));
    server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::await_change(), "no retry loop on a bad object");
}

#[tokio::test]
async fn a_hand_edited_service_is_put_back_but_not_one_nobody_touched() {
    let base = fixtures::example();
    let mut world = World::running(&base);
    // Services have no generation: the resourceVersion tells another writer apart.
    world.services[0].metadata.resource_version = Some("501".into());
    world.services[1].metadata.resource_version = Some("400".into());
    let cluster = leader("demo-master-abc", 3);
    let tc = settled(base, &world, &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    for (name, rv) in [("demo-zookeeper-headless", "500"), ("demo-zookeeper", "400")] {
        let key = crate::apply::Ledger::key::<k8s_openapi::api::core::v1::Service>("default", name);
        let ours = kube::core::ObjectMeta { resource_version: Some(rv.into()), ..Default::default() };
        h.ctx.ledger.record(key, "an older hash".into(), &ours);
    }
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    h.server.expect(Method::PATCH, "/api/v1/namespaces/default/services/demo-zookeeper-headless", Reply::Echo).await;
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

/// What the API server says when an apply changes an immutable part of a StatefulSet.
const FORBIDDEN: &str = "StatefulSet.apps \"demo-zookeeper\" is invalid: spec: Forbidden: updates to statefulset spec \
                         for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', \
                         'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

fn condition_of(status: &Value, type_: &str) -> Value {
    let conditions = status["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.into_iter().find(|c| c["type"] == type_).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_rejected_child_does_not_stop_the_others_and_is_reported() {
    let base = fixtures::example();
    let world = World::running(&base);
    let cluster = leader("demo-master-abc", 3);
    let mut tc = settled(base, &world, &cluster).with_generation(2);
    // Changes the pod templates of all three workloads.
    tc.spec.image_pull_policy = crate::crd::PullPolicy::Always;
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc.clone());
    let s = &mut h.server;
    s.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    s.expect(Method::PATCH, "/apis/apps/v1/namespaces/default/statefulsets/demo-zookeeper", Reply::Invalid(FORBIDDEN))
        .await;
    for name in ["demo-master", "demo-worker"] {
        let path = format!("/apis/apps/v1/namespaces/default/deployments/{name}");
        let body = s.expect(Method::PATCH, &path, Reply::Echo).await;
        assert_eq!(body["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }
    let status = s.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let reconciled = condition_of(&status, "Reconciled");
    assert_eq!((reconciled["status"].as_str(), reconciled["reason"].as_str()), (Some("False"), Some("ApplyFailed")));
    let message = reconciled["message"].as_str().unwrap_or_default();
    assert!(message.contains("StatefulSet default/demo-zookeeper") && message.contains("spec: Forbidden"), "{message}");
    assert_eq!(reconciled["observedGeneration"], 2);
    assert_eq!(condition_of(&status, "Ready")["status"], "True", "the cluster itself still runs");
    let event = s.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ApplyFailed")));
    assert!(event["note"].as_str().unwrap_or_default().contains("spec: Forbidden"), "{event}");
    s.expect_nothing_more().await;
    let error = reconciling.await.unwrap().expect_err("the reconcile reports the failure, for the retry backoff");
    assert_eq!(error.reason(), "ApplyFailed");

    // The retry tries the StatefulSet again; the rest is in place and the status says the
    // same, so nothing else is written and nothing announced twice.
    let mut again = tc;
    again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let retry = start(&h, again);
    h.server
        .expect(
            Method::PATCH,
            "/apis/apps/v1/namespaces/default/statefulsets/demo-zookeeper",
            Reply::Invalid(FORBIDDEN),
        )
        .await;
    h.server.expect_nothing_more().await;
    assert_eq!(retry.await.unwrap().expect_err("still failing").reason(), "ApplyFailed");
}

#[tokio::test]
async fn a_busy_cluster_writes_its_counters_at_most_every_few_seconds() {
    let base = fixtures::example();
    let world = World::running(&base);
    let tc = settled(base.clone(), &world, &leader("demo-master-abc", 3));
    let busy = |leader_id: &str, epoch: u64, backlog: u64| ClusterStatus { backlog, ..leader(leader_id, epoch) };
    let mut h = harness(&world, FakeReply::Status(busy("demo-master-abc", 3, 40)));

    // The first change after a quiet spell is written at once.
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(status["status"]["backlog"], 40);
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
    let written = |status: &Value| {
        let mut tc = base.clone();
        tc.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
        tc
    };

    // A second later only the counters moved again: they wait.
    *h.zk.reply.lock().unwrap() = FakeReply::Status(busy("demo-master-abc", 3, 41));
    let reconciling = start(&h, written(&status));
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH), "and are looked at again soon");

    // Anything else is written at once, with the latest counters.
    *h.zk.reply.lock().unwrap() = FakeReply::Status(busy("demo-master-def", 4, 42));
    let reconciling = start(&h, written(&status));
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(
        (status["status"]["leader"].as_str(), status["status"]["backlog"].as_i64()),
        (Some("demo-master-def"), Some(42))
    );
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "LeaderChanged");
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

const SCALE: &str = "/apis/taskcluster.dev/v1alpha1/namespaces/default/taskclusters/demo/scale";

fn scale_reply(replicas: i64) -> Reply {
    Reply::Json(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"replicas": replicas}, "status": {"replicas": 3}
    }))
}

/// A running cluster of 3 workers that scales itself.
fn autoscaled(autoscaling: &str, cluster: &ClusterStatus) -> (TaskCluster, World) {
    let base = fixtures::example().with_autoscaling(autoscaling);
    let world = World::running(&base);
    (settled(base, &world, cluster), world)
}

fn load(backlog: u64, running: u64, busy: u64) -> ClusterStatus {
    ClusterStatus { backlog, running, workers_busy: busy, ..leader("demo-master-abc", 3) }
}

#[tokio::test]
async fn a_burst_scales_the_workers_up_through_the_scale_subresource() {
    let cluster = load(9, 2, 2);
    let (tc, world) = autoscaled("{maxWorkers: 10, tasksPerWorker: 2}", &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let scale = h.server.expect(Method::PATCH, SCALE, scale_reply(6)).await;
    assert_eq!(scale["spec"]["replicas"], 6, "(9 + 2) / 2 rounded up");
    assert_eq!(scale["metadata"]["resourceVersion"], "100", "guarded by the object decided from");
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Normal"), Some("ScaledUp")));
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.contains("backlog 9, running 2") && note.contains("from 3 to 6"), "{note}");
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let autoscaling = &status["status"]["autoscaling"];
    assert_eq!((autoscaling["desired"].as_i64(), autoscaling["reason"].as_str()), (Some(6), Some("ScaledUp")));
    assert!(autoscaling["lastScaleTime"].is_string(), "{autoscaling}");
    h.server.expect_nothing_more().await;
    assert_eq!(
        reconciling.await.unwrap().unwrap(),
        Action::requeue(REFRESH),
        "the next decision comes within a second"
    );
    assert_eq!(*h.zk.worker_reads.lock().unwrap(), 0, "a scale-up reads no worker znodes");
}

#[tokio::test]
async fn an_unreachable_zookeeper_or_a_new_leaders_zeros_scale_nothing() {
    let idle = load(0, 0, 0);
    let (tc, world) = autoscaled("{minWorkers: 0, maxWorkers: 10, scaleDownStabilization: 0s}", &idle);
    let takeover = ClusterStatus { counters_fresh: false, ..leader("demo-master-def", 4) };
    let takeover = ClusterStatus { backlog: 0, running: 0, workers_busy: 0, ..takeover };
    for (reply, reason) in [(FakeReply::Unreachable, "NoReading"), (FakeReply::Status(takeover), "CountersNotFresh")] {
        let mut h = harness(&world, reply);
        let reconciling = start(&h, tc.clone());
        h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
        // No scale, no pod annotated: the status (and a LeaderChanged event) only.
        let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
        let autoscaling = &status["status"]["autoscaling"];
        assert_eq!((autoscaling["desired"].as_i64(), autoscaling["reason"].as_str()), (Some(3), Some(reason)));
        if reason == "CountersNotFresh" {
            let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
            assert_eq!(event["reason"], "LeaderChanged");
        }
        h.server.expect_nothing_more().await;
        reconciling.await.unwrap().unwrap();
        assert_eq!(*h.zk.worker_reads.lock().unwrap(), 0);
    }
}

#[tokio::test]
async fn a_scale_in_marks_busy_workers_costly_before_lowering_the_count() {
    let cluster = load(0, 1, 1);
    let (tc, world) = autoscaled("{minWorkers: 0, maxWorkers: 10, scaleDownStabilization: 0s}", &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    *h.zk.workers.lock().unwrap() = Some(vec![
        ("demo-worker-5f7c-aaaaa".into(), WorkerState::Idle),
        ("demo-worker-5f7c-bbbbb".into(), WorkerState::Busy),
        ("demo-worker-5f7c-ccccc".into(), WorkerState::Draining),
        ("somebody-elses-worker".into(), WorkerState::Busy),
    ]);
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    for (pod, cost) in [("aaaaa", IDLE_COST), ("bbbbb", BUSY_COST), ("ccccc", IDLE_COST)] {
        let path = format!("/api/v1/namespaces/default/pods/demo-worker-5f7c-{pod}");
        let reply = if pod == "ccccc" { Reply::NotFound } else { Reply::Echo };
        let body = h.server.expect(Method::PATCH, &path, reply).await;
        assert_eq!(body["metadata"]["annotations"][ANNOTATION], cost, "{pod}");
    }
    let scale = h.server.expect(Method::PATCH, SCALE, scale_reply(1)).await;
    assert_eq!(scale["spec"]["replicas"], 1, "the busy worker stays");
    let event = h.server.expect(Method::POST, EVENTS, Reply::Echo).await;
    assert_eq!(event["reason"], "ScaledDown");
    assert!(event["note"].as_str().unwrap_or_default().contains("running 1"), "{event}");
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    assert_eq!(status["status"]["autoscaling"]["reason"], "ScaledDown");
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_scale_in_waits_while_the_busy_workers_cannot_be_told() {
    let cluster = load(0, 0, 0);
    let (tc, world) = autoscaled("{minWorkers: 0, maxWorkers: 10, scaleDownStabilization: 0s}", &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    *h.zk.workers.lock().unwrap() = None;
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let autoscaling = &status["status"]["autoscaling"];
    assert_eq!((autoscaling["desired"].as_i64(), autoscaling["reason"].as_str()), (Some(3), Some("WorkersUnknown")));
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();
    assert_eq!(*h.zk.worker_reads.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_settled_autoscaled_cluster_costs_no_writes() {
    // 3 workers for 3 tasks: the load asks for what runs.
    let cluster = load(1, 2, 2);
    let (tc, world) = autoscaled("{maxWorkers: 10}", &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc.clone());
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let autoscaling = &status["status"]["autoscaling"];
    assert_eq!((autoscaling["desired"].as_i64(), autoscaling["reason"].as_str()), (Some(3), Some("AtTarget")));
    assert!(autoscaling.get("lastScaleTime").is_none(), "{autoscaling}");
    h.server.expect_nothing_more().await;
    reconciling.await.unwrap().unwrap();

    let mut again = tc;
    again.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let reconciling = start(&h, again);
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH));
}

#[tokio::test]
async fn a_decision_made_from_an_older_object_is_not_written() {
    let cluster = load(9, 2, 2);
    let (tc, world) = autoscaled("{maxWorkers: 10}", &cluster);
    let mut h = harness(&world, FakeReply::Status(cluster));
    let reconciling = start(&h, tc);
    h.server.expect(Method::POST, SECRETS, Reply::AlreadyExists).await;
    // Somebody ran `kubectl scale` after the object was read.
    h.server.expect(Method::PATCH, SCALE, Reply::Conflict).await;
    let status = h.server.expect(Method::PATCH, STATUS, Reply::StatusOf(Box::new(fixtures::example()))).await;
    let autoscaling = &status["status"]["autoscaling"];
    assert_eq!((autoscaling["desired"].as_i64(), autoscaling["reason"].as_str()), (Some(3), Some("Superseded")));
    h.server.expect_nothing_more().await;
    assert_eq!(reconciling.await.unwrap().unwrap(), Action::requeue(REFRESH), "not a failure");
}
