//! Waiting for a condition with a deadline. Deadlines are only failure timeouts: a test never
//! asserts how long something took.

use std::future::Future;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Like [`eventually`] for checks that talk to ZooKeeper.
pub async fn eventually_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Lets the system run for a while, e.g. before checking that something did NOT happen.
pub async fn settle(duration: Duration) {
    tokio::time::sleep(duration).await;
}
