//! Polling for a condition with a deadline, reporting the last thing seen.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often the scenarios look at the cluster while they wait.
pub const POLL: Duration = Duration::from_secs(2);

/// What one look at the cluster found: done with a value, or not yet and why.
pub enum Poll<T> {
    Done(T),
    NotYet(String),
}

/// Looks every `interval` until `check` is done or `timeout` has passed. Errors from
/// `check` end the wait at once.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, interval: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let start = Instant::now();
    loop {
        match check().await? {
            Poll::Done(value) => return Ok(value),
            Poll::NotYet(last) => {
                if start.elapsed() >= timeout {
                    return Err(Error::Timeout { what: what.to_string(), waited: start.elapsed(), last });
                }
            },
        }
        tokio::time::sleep(interval).await;
    }
}
