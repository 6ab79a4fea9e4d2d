//! Reading leader and backlog from each TaskCluster's ZooKeeper, with one cached session
//! per cluster and hard time limits so an unreachable ensemble never holds up a reconcile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use taskcluster::{paths, ClusterStatus, ConnectError, StatusError, ZkTarget};
use zookeeper_client::{Client, Error as ZkError, SessionState};

use crate::autoscale::cost::WorkerState;

#[derive(Debug, thiserror::Error)]
pub enum ZkStatusError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Read(#[from] StatusError),
    #[error("ZooKeeper at {connect} did not answer within {timeout:?}")]
    Timeout { connect: String, timeout: Duration },
}

impl ZkStatusError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ZkStatusError::Read(StatusError::NotInitialised(_)) => "TaskTreeMissing",
            ZkStatusError::Connect(ConnectError::Auth { .. }) => "ZooKeeperAuthFailed",
            ZkStatusError::Connect(_) | ZkStatusError::Timeout { .. } => "ZooKeeperUnreachable",
            ZkStatusError::Read(_) => "ZooKeeperReadFailed",
        }
    }
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

/// One ZooKeeper session per TaskCluster, reopened after any error.
pub struct ZkStatusReader {
    sessions: Mutex<HashMap<String, Cached>>,
    /// Limit for connecting and for one status read each.
    timeout: Duration,
    /// Sessions unused this long are closed (their TaskCluster was probably deleted).
    idle: Duration,
}

impl ZkStatusReader {
    pub fn new(timeout: Duration) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), timeout, idle: Duration::from_secs(120) }
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
            Ok(Ok(workers)) => Ok(workers),
            Ok(Err(err)) => {
                self.forget(key);
                Err(err)
            },
            Err(_) => {
                self.forget(key);
                Err(ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout })
            },
        }
    }

    async fn read_inner(&self, key: &str, connect: &str) -> Result<ClusterStatus, ZkStatusError> {
        let timeout = || ZkStatusError::Timeout { connect: connect.to_string(), timeout: self.timeout };
        let client = self.session(key, connect).await?;
        let result = tokio::time::timeout(self.timeout, taskcluster::read_status(&client)).await;
        match result {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(err @ StatusError::NotInitialised(_))) => Err(err.into()),
            Ok(Err(err)) => {
                self.forget(key);
                Err(err.into())
            },
            Err(_) => {
                self.forget(key);
                Err(timeout())
            },
        }
    }
}

impl StatusSource for ZkStatusReader {
    fn read<'a>(&'a self, key: &'a str, connect: &'a str) -> BoxFuture<'a, Result<ClusterStatus, ZkStatusError>> {
        Box::pin(self.read_inner(key, connect))
    }

    fn workers<'a>(
        &'a self,
        key: &'a str,
        connect: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, WorkerState)>, ZkStatusError>> {
        Box::pin(self.workers_inner(key, connect))
    }

    fn forget(&self, key: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(key);
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
}
