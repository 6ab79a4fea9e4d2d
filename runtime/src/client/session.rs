//! A client's ZooKeeper session that outlives connection loss and expiry: tasks are
//! persistent znodes, so a client can go on with a new session where the old one ended.

use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use zookeeper_client::{Client, Error as ZkError};

use crate::connect::{ConnectError, ZkTarget};
use crate::retry::is_transient;

const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub struct Session {
    target: ZkTarget,
    client: RwLock<Client>,
    /// Serialises renewal so concurrent requests open one new session, not many.
    renewal: tokio::sync::Mutex<()>,
}

/// A request that failed for good, or a session that could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Zk(ZkError),
}

impl Session {
    pub fn new(target: ZkTarget, client: Client) -> Self {
        Self { target, client: RwLock::new(client), renewal: tokio::sync::Mutex::new(()) }
    }

    /// The current session's client.
    pub fn client(&self) -> Client {
        match self.client.read() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `expired` with a new session (unless another request already did).
    async fn renew(&self, expired: &Client) -> Result<(), ConnectError> {
        let _guard = self.renewal.lock().await;
        if self.client().session_id() != expired.session_id() {
            return Ok(());
        }
        tracing::warn!("ZooKeeper session ended; opening a new one");
        let fresh = self.target.connect().await?;
        match self.client.write() {
            Ok(mut client) => *client = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Runs `request` on the current session: retried on connection loss, moved to a new
    /// session when the current one ended. `request` learns whether an earlier attempt may
    /// have been applied (its reply was lost), so a write can recognise its own success.
    pub async fn call<T, F, Fut>(&self, request: F) -> Result<T, CallError>
    where
        F: Fn(Client, bool) -> Fut,
        Fut: Future<Output = Result<T, ZkError>>,
    {
        let mut in_doubt = false;
        loop {
            let client = self.client();
            match request(client.clone(), in_doubt).await {
                Err(error) if client.state().is_terminated() || matches!(error, ZkError::SessionExpired) => {
                    in_doubt = true;
                    self.renew(&client).await?;
                },
                Err(error) if is_transient(&error) => {
                    in_doubt = true;
                    tokio::time::sleep(RETRY_PAUSE).await;
                },
                Err(error) => return Err(CallError::Zk(error)),
                Ok(value) => return Ok(value),
            }
        }
    }
}
