//! Reading leader and backlog from each TaskCluster's ZooKeeper, with one cached session
//! per cluster and hard time limits so an unreachable ensemble never holds up a reconcile.
//! A session is kept through failed reads (the client reconnects it by itself) and replaced
//! only once ZooKeeper ended it; after a failure the cluster backs off (`backoff`).

mod backoff;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use taskcluster::{paths, ClusterStatus, ConnectError, StatusError, ZkTarget};
use zookeeper_client::{Client, Error as ZkError, SessionState};

use self::backoff::{Backoffs, Failure};
use crate::autoscale::cost::WorkerState;
use crate::ensemble::{Members, Step};

#[derive(Debug, thiserror::Error)]
pub enum ZkStatusError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Read(#[from] StatusError),
    #[error("ZooKeeper at {connect} did not answer within {timeout:?}")]
    Timeout { connect: String, timeout: Duration },
    /// The last failure, repeated while the next attempt waits.
    #[error("{message}")]
    BackingOff { reason: &'static str, message: String },
}

impl ZkStatusError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ZkStatusError::Read(StatusError::NotInitialised(_)) => "TaskTreeMissing",
            ZkStatusError::Connect(ConnectError::Auth { .. }) => "ZooKeeperAuthFailed",
            ZkStatusError::Connect(_) | ZkStatusError::Timeout { .. } => "ZooKeeperUnreachable",
            ZkStatusError::Read(_) => "ZooKeeperReadFailed",
            ZkStatusError::BackingOff { reason, .. } => reason,
        }
    }
}

/// Why a reconfig did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigError {
    /// ZooKeeper commits a membership only when a majority of it is in sync: a joining
    /// server is still starting, or another change is under way. Tried again shortly.
    #[error("ZooKeeper is not ready for it yet ({0})")]
    NotYet(String),
    #[error("ZooKeeper refused the operator's administrator credentials")]
    NotAuthorized,
    #[error("{0}")]
    Failed(String),
}

/// Where the cluster status comes from; a trait so reconcile tests need no ZooKeeper.
pub trait StatusSource: Send + Sync {
    /// Reads the status of the cluster `key` (`namespace/name`) from `connect`.
    fn read<'a>(&'a self, key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<ClusterStatus, ZkStatusError>>;
    /// What each registered worker of the cluster `key` is doing, by worker id (its pod
    /// name): one getChildren of `/workers` and one getData per worker, so it is asked only
    /// before a scale-in.
    fn workers<'a>(
        &'a self,
        key: &'a str,
        connect: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, WorkerState)>, ZkStatusError>>;
    /// The ensemble's committed membership (`/zookeeper/config`, world-readable).
    fn members<'a>(&'a self, key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<Members, ZkStatusError>>;
    /// Carries out `step` on the membership at `version` as ZooKeeper's super user
    /// (`password`); `address(id)` is a joining server's entry.
    fn reconfigure<'a>(
        &'a self,
        connect: &'a str,
        password: &'a str,
        step: &'a Step,
        version: i64,
        address: &'a (dyn Fn(i32) -> String + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ReconfigError>>;
    /// Drops whatever is kept for `key` (the TaskCluster is gone).
    fn forget(&self, key: &str);
    /// Sessions currently open.
    fn sessions(&self) -> usize {
        0
    }
}

struct Cached {
    connect: String,
    client: Client,
    last_used: Instant,
}

/// One ZooKeeper session per TaskCluster, reopened once ZooKeeper ended it.
pub struct ZkStatusReader {
    sessions: Mutex<HashMap<String, Cached>>,
    backoffs: Mutex<Backoffs>,
    /// Limit for connecting and for one status read each.
    timeout: Duration,
    /// Sessions unused this long are closed (their TaskCluster was probably deleted).
    idle: Duration,
    /// Counts every session opened: churn shows as a rate.
    opened: Counter,
}

impl ZkStatusReader {
    pub fn new(timeout: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            backoffs: Mutex::new(Backoffs::default()),
            timeout,
            idle: Duration::from_secs(120),
            opened: Counter::default(),
        }
    }

    /// Counts the sessions it opens in `opened` (a metric's counter).
    pub fn counting_sessions_in(mut self, opened: Counter) -> Self {
        self.opened = opened;
        self
    }

    /// Runs `attempt` for `key` unless the cluster is backing off from its last failure, and
    /// records the outcome.
    async fn attempt<T>(
        &self,
        key: &str,
        attempt: impl std::future::Future<Output = Result<T, ZkStatusError>>,
    ) -> Result<T, ZkStatusError> {
        let waiting = self.backoffs.lock().ok().and_then(|b| b.waiting(key, Instant::now()));
        if let Some((failure, _)) = waiting {
            return Err(ZkStatusError::BackingOff { reason: failure.reason, message: failure.message });
        }
        let result = attempt.await;
        if let Ok(mut backoffs) = self.backoffs.lock() {
            match &result {
                Ok(_) => backoffs.succeeded(key),
                // Not a failure of the ensemble: the tree is created by the first master.
                Err(ZkStatusError::Read(StatusError::NotInitialised(_))) => backoffs.succeeded(key),
                Err(err) => {
                    let failure = Failure { reason: err.reason(), message: err.to_string() };
                    let wait = backoffs.failed(key, failure, Instant::now());
                    tracing::debug!(cluster = key, error = %err, ?wait, "backing off from ZooKeeper");
                },
            }
        }
        result
    }

    fn cached(&self, key: &str, connect: &str) -> Option<Client> {
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        sessions.retain(|k, c| k == key || now.duration_since(c.last_used) < self.idle);
        let entry = sessions.get_mut(key)?;
        let usable = entry.connect == connect
            && !matches!(entry.client.state(), SessionState::Expired | SessionState::Closed | SessionState::AuthFailed);
        if !usable {
            sessions.remove(key);
            return None;
        }
        entry.last_used = now;
        Some(entry.client.clone())
    }

    fn store(&self, key: &str, connect: &str, client: Client) {
        if let Ok(mut sessions) = self.sessions.lock() {
            let cached = Cached { connect: connect.to_string(), client, last_used: Instant::now() };
            sessions.insert(key.to_string(), cached);
        }
    }

    async fn session(&self, key: &str, connect: &str) -> Result<Client, ZkStatusError> {
        if let Some(client) = self.cached(key, connect) {
            return Ok(client);
        }
        // Read-only: the task tree is world-readable, so no credentials are needed.
        let target = ZkTarget::new(connect).with_session_timeout(Duration::from_secs(10));
        let client = tokio::time::timeout(self.timeout, target.connect())
            .await
            .map_err(|_| ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout })??;
        self.opened.inc();
        self.store(key, connect, client.clone());
        Ok(client)
    }

    async fn workers_inner(&self, key: &str, connect: &str) -> Result<Vec<(String, WorkerState)>, ZkStatusError> {
        let client = self.session(key, connect).await?;
        let read = async {
            let read_err = |source| ZkStatusError::Read(StatusError::Read { path: paths::WORKERS, source });
            let ids = client.list_children(paths::WORKERS).await.map_err(read_err)?;
            let mut workers = Vec::with_capacity(ids.len());
            for id in ids {
                match client.get_data(&paths::worker(&id)).await {
                    Ok((data, _)) => workers.push((id, WorkerState::of(&data))),
                    // Left between the listing and the read: nothing to protect.
                    Err(ZkError::NoNode) => {},
                    Err(source) => return Err(read_err(source)),
                }
            }
            Ok(workers)
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout }),
        }
    }

    async fn read_inner(&self, key: &str, connect: &str) -> Result<ClusterStatus, ZkStatusError> {
        let timeout = || ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout };
        let client = self.session(key, connect).await?;
        match tokio::time::timeout(self.timeout, taskcluster::read_status(&client)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(timeout()),
        }
    }

    async fn members_inner(&self, key: &str, connect: &str) -> Result<Members, ZkStatusError> {
        let client = self.session(key, connect).await?;
        let read_err = |source| ZkStatusError::Read(StatusError::Read { path: "/zookeeper/config", source });
        let (data, _) = match tokio::time::timeout(self.timeout, client.get_config()).await {
            Ok(result) => result.map_err(read_err)?,
            Err(_) => return Err(ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout }),
        };
        Members::parse(&data)
            .map_err(|err| ZkStatusError::BackingOff { reason: "BadEnsembleConfig", message: err.to_string() })
    }
}

fn workers_key(key: &str) -> String {
    format!("{key} workers")
}

impl StatusSource for ZkStatusReader {
    fn read<'a>(&'a self, key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<ClusterStatus, ZkStatusError>> {
        Box::pin(self.attempt(key, self.read_inner(key, connect)))
    }

    fn workers<'a>(
        &'a self,
        key: &'a str,
        connect: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, WorkerState)>, ZkStatusError>> {
        // Backs off on its own: a failed look at the workers (asked only before a scale-in)
        // must not make the next status read report a failure it did not have.
        Box::pin(async move { self.attempt(&workers_key(key), self.workers_inner(key, connect)).await })
    }

    fn members<'a>(&'a self, key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<Members, ZkStatusError>> {
        Box::pin(async move {
            let members_key = format!("{key} members");
            self.attempt(&members_key, self.members_inner(key, connect)).await
        })
    }

    fn reconfigure<'a>(
        &'a self,
        connect: &'a str,
        password: &'a str,
        step: &'a Step,
        version: i64,
        address: &'a (dyn Fn(i32) -> String + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ReconfigError>> {
        Box::pin(async move {
            let digest = format!("{}:{password}", crate::build::security::SUPER_USER);
            let target = ZkTarget::new(connect).with_session_timeout(Duration::from_secs(10)).with_digest(Some(digest));
            let client = match tokio::time::timeout(self.timeout, target.connect()).await {
                Ok(Ok(client)) => client,
                Ok(Err(err)) => return Err(ReconfigError::NotYet(err.to_string())),
                Err(_) => return Err(ReconfigError::NotYet(format!("no session within {:?}", self.timeout))),
            };
            let (joining, leaving): (Vec<String>, Vec<String>) = match step {
                Step::Steady => return Ok(()),
                Step::Add(ids) => (ids.iter().map(|id| format!("server.{id}={}", address(*id))).collect(), vec![]),
                Step::Remove(ids) => (vec![], ids.iter().map(ToString::to_string).collect()),
            };
            let update = zookeeper_client::EnsembleUpdate::Incremental {
                joinings: joining.iter().map(String::as_str),
                leavings: leaving.iter().map(String::as_str),
            };
            // A reconfig waits for the new membership to commit: longer than a read.
            let result = tokio::time::timeout(self.timeout * 3, client.update_ensemble(update, Some(version))).await;
            taskcluster::connect::close(client).await;
            match result {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(ZkError::NoAuth | ZkError::AuthFailed)) => Err(ReconfigError::NotAuthorized),
                // -13 NewConfigNoQuorum, -14 ReconfigInProgress; a changed version: read again.
                Ok(Err(
                    err @ (ZkError::UnexpectedErrorCode(-13 | -14) | ZkError::BadVersion | ZkError::ConnectionLoss),
                )) => Err(ReconfigError::NotYet(err.to_string())),
                Ok(Err(err)) => Err(ReconfigError::Failed(format!("reconfig refused: {err}"))),
                Err(_) => Err(ReconfigError::NotYet(format!("no answer within {:?}", self.timeout * 3))),
            }
        })
    }

    fn forget(&self, key: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(key);
        }
        if let Ok(mut backoffs) = self.backoffs.lock() {
            backoffs.succeeded(key);
            backoffs.succeeded(&workers_key(key));
        }
    }

    fn sessions(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_ensemble_fails_within_the_limit() {
        // A port nobody listens on: the connection is refused or times out, never hangs.
        let reader = ZkStatusReader::new(Duration::from_millis(500));
        let err = reader.read("default/demo", "127.0.0.1:1").await.unwrap_err();
        assert_eq!(err.reason(), "ZooKeeperUnreachable", "{err}");
        assert_eq!(reader.sessions(), 0);
    }

    /// Accepts connections, counts them and closes them at once: a ZooKeeper that never
    /// answers.
    async fn silent_ensemble() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_failing_ensemble_is_not_reconnected_at_every_reconcile() {
        let (addr, accepted) = silent_ensemble().await;
        let reader = ZkStatusReader::new(Duration::from_millis(300));
        let first = reader.read("default/demo", &addr).await.unwrap_err();
        let after_first = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(after_first > 0, "the first read tried");
        // Reconciles every second or faster: none of these may open a connection.
        for _ in 0..5 {
            let again = reader.read("default/demo", &addr).await.unwrap_err();
            assert_eq!((again.reason(), again.to_string()), (first.reason(), first.to_string()), "no flapping");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), after_first, "connections while backing off");
    }

    #[tokio::test]
    async fn a_failed_look_at_the_workers_does_not_hold_back_the_status_read() {
        let (addr, accepted) = silent_ensemble().await;
        let reader = ZkStatusReader::new(Duration::from_millis(300));
        reader.workers("default/demo", &addr).await.unwrap_err();
        let after_workers = accepted.load(std::sync::atomic::Ordering::SeqCst);
        reader.read("default/demo", &addr).await.unwrap_err();
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) > after_workers, "the status read was not tried");
    }
}
