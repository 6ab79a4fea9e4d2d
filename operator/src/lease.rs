//! Leader election between operator replicas with a `coordination.k8s.io` Lease, so more
//! than one replica can run and only one reconciles.
//!
//! Every write is conditional on the Lease's resourceVersion, so two replicas can never both
//! believe they took it. Another replica's Lease counts as expired only once this replica has
//! seen it unchanged for the whole lease duration by its own clock (client-go's rule): the
//! renew time written by another machine is never compared with this one's clock, so a clock
//! skew cannot make two replicas lead. A leader that cannot renew within `renew_deadline`
//! (shorter than the lease duration) steps down before anyone else may take over, and every
//! attempt is bounded by that deadline, so a hung API call cannot outlive it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::core::ObjectMeta;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops: shorter than `duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and the others try.
    pub retry: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "taskcluster-operator".into(),
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Who holds the Lease after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Us,
    Other(String),
}

/// The Lease as this replica last saw it, and since when (by this replica's clock): a
/// Lease that changes (any write changes its resourceVersion) is alive.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    seen: Option<(String, Instant)>,
}

impl Observed {
    /// Records the Lease's `version` at `now`; returns how long it has stayed unchanged.
    fn unchanged_for(&mut self, version: &str, now: Instant) -> Duration {
        match &self.seen {
            Some((seen, since)) if seen == version => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((version.to_string(), now));
                Duration::ZERO
            },
        }
    }
}

fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// One attempt to take or renew the Lease. `wall` is only written (acquire and renew
/// times, for people and other tools); `now` decides expiry with `observed`.
pub async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
    wall: Timestamp,
    now: Instant,
) -> Result<Holder, kube::Error> {
    let duration_seconds = i32::try_from(settings.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(settings.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Holder::Us),
            Err(err) if conflict(&err) => Ok(Holder::Other("another replica (created concurrently)".into())),
            Err(err) => Err(err),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let unchanged = observed.unchanged_for(&version, now);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != settings.identity && !holder.is_empty() {
        let valid_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(settings.duration, Duration::from_secs);
        if unchanged <= valid_for {
            return Ok(Holder::Other(holder));
        }
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(MicroTime(wall));
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(MicroTime(wall));
    // The resourceVersion read above makes this write fail if anyone wrote in between.
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Holder::Us),
        Err(err) if conflict(&err) => Ok(Holder::Other(holder)),
        Err(err) => Err(err),
    }
}

/// Why an attempt did not tell who holds the Lease.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

/// [`try_acquire`] within `limit`.
async fn attempt(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
    limit: Duration,
) -> Result<Holder, AttemptError> {
    let now = Instant::now();
    match tokio::time::timeout(limit, try_acquire(api, settings, observed, Timestamp::now(), now)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(AttemptError::TimedOut(limit)),
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: &Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let mut observed = Observed::default();
    let mut last_holder = None;
    loop {
        match attempt(&api, settings, &mut observed, settings.renew_deadline).await {
            Ok(Holder::Us) => {
                info!(lease = %settings.name, identity = %settings.identity, "leading");
                return;
            },
            Ok(Holder::Other(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(lease = %settings.name, %holder, "standing by while another replica leads");
                    last_holder = Some(holder);
                }
            },
            Err(err) => warn!(lease = %settings.name, error = %err, "cannot read or take the Lease"),
        }
        tokio::time::sleep(settings.retry).await;
    }
}

/// Renews the Lease until a renewal is overdue, then returns: the caller must stop. No
/// renewal attempt outlasts the deadline.
pub async fn hold(client: &Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let mut observed = Observed::default();
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(settings.retry).await;
        let left = settings.renew_deadline.saturating_sub(renewed.elapsed());
        match attempt(&api, settings, &mut observed, left).await {
            Ok(Holder::Us) => renewed = Instant::now(),
            Ok(Holder::Other(holder)) => {
                warn!(lease = %settings.name, %holder, "another replica took the Lease");
                return;
            },
            Err(err) => warn!(lease = %settings.name, error = %err, "cannot renew the Lease"),
        }
        if renewed.elapsed() >= settings.renew_deadline {
            warn!(lease = %settings.name, deadline = ?settings.renew_deadline, "the Lease was not renewed in time");
            return;
        }
    }
}

/// Gives the Lease up on a clean shutdown, so a standby takes over at once instead of
/// after the lease duration.
pub async fn release(client: &Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let released = tokio::time::timeout(settings.renew_deadline, release_with(&api, settings)).await;
    let error = match released {
        Ok(Ok(())) => return,
        Ok(Err(err)) => AttemptError::Api(err),
        Err(_) => AttemptError::TimedOut(settings.renew_deadline),
    };
    warn!(lease = %settings.name, %error, "cannot release the Lease; a standby takes over when it expires");
}

async fn release_with(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            info!(lease = %settings.name, "released");
            Ok(())
        },
        Err(err) if conflict(&err) => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/taskcluster-system/leases/taskcluster-operator";

    fn settings() -> LeaseSettings {
        LeaseSettings::new("taskcluster-system".into(), "operator-a".into())
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn lease(holder: &str, renewed: i64, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "taskcluster-operator", "namespace": "taskcluster-system", "resourceVersion": "7"},
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                "renewTime": format!("{}", MicroTime(at(renewed)).0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")),
            },
        })
    }

    fn not_found() -> (u16, Value) {
        (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))
    }

    /// Answers each expected request in order; returns the bodies written.
    async fn serve(mut handle: Handle, script: Vec<(Method, &'static str, (u16, Value))>) -> Vec<Value> {
        let mut bodies = Vec::new();
        for (method, path, (status, reply)) in script {
            let (request, send) = handle.next_request().await.expect("request");
            assert_eq!((request.method(), request.uri().path()), (&method, path));
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            let reply = if reply.is_null() { body.clone() } else { reply };
            bodies.push(body);
            send.send_response(
                Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
            );
        }
        bodies
    }

    /// One attempt at wall time `now`, the Lease first seen `seen_for` before it.
    async fn one_try(
        script: Vec<(Method, &'static str, (u16, Value))>,
        now: i64,
        seen_for: Option<(&str, Duration)>,
    ) -> (Holder, Vec<Value>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "taskcluster-system");
        let server = tokio::spawn(serve(handle, script));
        let local = Instant::now() + Duration::from_secs(3600);
        let mut observed = Observed::default();
        if let Some((version, ago)) = seen_for {
            observed.unchanged_for(version, local - ago);
        }
        let holder = try_acquire(&api, &settings(), &mut observed, at(now), local).await.unwrap();
        (holder, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_first_replica_creates_the_lease() {
        let collection = "/apis/coordination.k8s.io/v1/namespaces/taskcluster-system/leases";
        let (holder, bodies) =
            one_try(vec![(Method::GET, PATH, not_found()), (Method::POST, collection, (201, Value::Null))], 1000, None)
                .await;
        assert_eq!(holder, Holder::Us);
        assert_eq!(bodies[1]["spec"]["holderIdentity"], "operator-a");
        assert_eq!(bodies[1]["spec"]["leaseDurationSeconds"], 15);
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (holder, bodies) = one_try(vec![(Method::GET, PATH, (200, lease("operator-b", 995, 0)))], 1000, None).await;
        assert_eq!(holder, Holder::Other("operator-b".into()));
        assert_eq!(bodies.len(), 1, "no write");
    }

    #[tokio::test]
    async fn a_lease_seen_unchanged_for_its_duration_is_taken_over_conditionally() {
        let (holder, bodies) = one_try(
            vec![(Method::GET, PATH, (200, lease("operator-b", 980, 2))), (Method::PUT, PATH, (200, Value::Null))],
            1000,
            Some(("7", Duration::from_secs(20))),
        )
        .await;
        assert_eq!(holder, Holder::Us);
        let written = &bodies[1];
        assert_eq!(written["spec"]["holderIdentity"], "operator-a");
        assert_eq!(written["spec"]["leaseTransitions"], 3);
        assert_eq!(written["metadata"]["resourceVersion"], "7", "the write is conditional on what was read");
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let conflict = (
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
        );
        let (holder, _) = one_try(
            vec![(Method::GET, PATH, (200, lease("operator-b", 980, 2))), (Method::PUT, PATH, conflict)],
            1000,
            Some(("7", Duration::from_secs(20))),
        )
        .await;
        assert_eq!(holder, Holder::Other("operator-b".into()));
    }

    #[tokio::test]
    async fn a_released_lease_is_free_and_taken_at_once() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "taskcluster-system");
        let server = tokio::spawn(serve(
            handle,
            vec![(Method::GET, PATH, (200, lease("operator-a", 999, 1))), (Method::PUT, PATH, (200, Value::Null))],
        ));
        release_with(&api, &settings()).await.unwrap();
        let written = server.await.unwrap().pop().unwrap();
        assert!(written["spec"].get("holderIdentity").is_none_or(Value::is_null), "{written}");

        let mut released = written.clone();
        released["metadata"]["resourceVersion"] = json!("8");
        let other = LeaseSettings::new("taskcluster-system".into(), "operator-b".into());
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "taskcluster-system");
        let server = tokio::spawn(serve(
            handle,
            vec![(Method::GET, PATH, (200, released)), (Method::PUT, PATH, (200, Value::Null))],
        ));
        let mut observed = Observed::default();
        let taken = try_acquire(&api, &other, &mut observed, at(1000), Instant::now()).await.unwrap();
        assert_eq!(taken, Holder::Us, "no need to wait for expiry");
        assert_eq!(server.await.unwrap()[1]["spec"]["holderIdentity"], "operator-b");
    }

    #[tokio::test]
    async fn the_leader_renews_without_a_transition() {
        let (holder, bodies) = one_try(
            vec![(Method::GET, PATH, (200, lease("operator-a", 998, 4))), (Method::PUT, PATH, (200, Value::Null))],
            1000,
            None,
        )
        .await;
        assert_eq!(holder, Holder::Us);
        assert_eq!(bodies[1]["spec"]["leaseTransitions"], 4);
    }

    #[tokio::test]
    async fn a_renew_time_long_past_by_this_clock_is_no_expiry() {
        // The holder's clock is behind ours (or ours ahead): its renew time looks an hour
        // old, yet the Lease was just written. Only watching it stay unchanged tells.
        let (holder, bodies) =
            one_try(vec![(Method::GET, PATH, (200, lease("operator-b", -2600, 0)))], 1000, None).await;
        assert_eq!(holder, Holder::Other("operator-b".into()));
        assert_eq!(bodies.len(), 1, "no write");
    }

    #[tokio::test]
    async fn a_lease_that_changed_since_last_seen_is_alive_again() {
        // Seen 20 s ago at another resourceVersion: the holder renewed since, so the count
        // starts again.
        let (holder, bodies) = one_try(
            vec![(Method::GET, PATH, (200, lease("operator-b", 980, 2)))],
            1000,
            Some(("6", Duration::from_secs(20))),
        )
        .await;
        assert_eq!(holder, Holder::Other("operator-b".into()));
        assert_eq!(bodies.len(), 1, "no write");
    }

    #[tokio::test]
    async fn a_renewal_the_api_server_never_answers_ends_the_leadership_by_the_deadline() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mut settings = settings();
        settings.retry = Duration::from_millis(10);
        settings.renew_deadline = Duration::from_millis(300);
        // Every request is taken and never answered.
        let server = tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(request) = handle.next_request().await {
                pending.push(request);
            }
        });
        let held = tokio::time::timeout(Duration::from_secs(30), hold(&client, &settings)).await;
        server.abort();
        assert!(held.is_ok(), "hold must return once the deadline has passed, even with a request in flight");
    }
}
