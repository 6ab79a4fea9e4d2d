//! Riding out connection loss: ZooKeeper requests that fail because the connection dropped
//! are retried until the session is back, or until it expires.

use std::future::Future;
use std::time::Duration;

use zookeeper_client::{Client, Error as ZkError, MultiWriteError};

/// Failures of the connection rather than of the request: the request may be retried (its
/// outcome is unknown, so retried writes must be guarded or idempotent).
pub fn is_transient(error: &ZkError) -> bool {
    matches!(
        error,
        ZkError::ConnectionLoss
            | ZkError::Timeout
            | ZkError::Throttled
            | ZkError::Custom(_)
            | ZkError::UnexpectedError(_)
    )
}

pub fn is_transient_multi(error: &MultiWriteError) -> bool {
    matches!(error, MultiWriteError::RequestFailed { source } if is_transient(source))
}

const PAUSE: Duration = Duration::from_millis(100);

/// Runs `attempt` until it succeeds, fails for a reason other than the connection, or the
/// session ends. `transient` tells which errors to retry.
pub async fn retrying<T, E, F, Fut>(client: &Client, transient: fn(&E) -> bool, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Err(error) if transient(&error) && !client.state().is_terminated() => {
                tracing::debug!("connection trouble; retrying");
                tokio::time::sleep(PAUSE).await;
            },
            other => return other,
        }
    }
}
