//! Backing off from an ensemble that fails to answer: after a failed read, a cluster's next
//! attempt waits 1 s, doubling up to 30 s, and the failure is reported unchanged
//! meanwhile. A troubled ensemble gets no storm of new sessions from the operator, and the
//! conditions built from the failure do not flap with each attempt's error text.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(30);

/// What a failed attempt said, repeated until the next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug)]
struct Failing {
    failures: u32,
    retry_at: Instant,
    last: Failure,
}

/// Failing clusters by key.
#[derive(Debug, Default)]
pub struct Backoffs {
    failing: HashMap<String, Failing>,
}

/// How long to wait after `failures` failures in a row.
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(LONGEST)
}

impl Backoffs {
    /// The failure to report instead of trying, while `key` is still waiting at `now`.
    pub fn waiting(&self, key: &str, now: Instant) -> Option<(Failure, Duration)> {
        let failing = self.failing.get(key)?;
        let left = failing.retry_at.checked_duration_since(now)?;
        (!left.is_zero()).then(|| (failing.last.clone(), left))
    }

    /// Records a failed attempt at `now`; returns how long the next one waits.
    pub fn failed(&mut self, key: &str, failure: Failure, now: Instant) -> Duration {
        let failures = self.failing.get(key).map_or(0, |f| f.failures).saturating_add(1);
        let wait = delay(failures);
        self.failing.insert(key.to_string(), Failing { failures, retry_at: now + wait, last: failure });
        wait
    }

    pub fn succeeded(&mut self, key: &str) {
        self.failing.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> Failure {
        Failure { reason: "ZooKeeperUnreachable", message: "connection refused".into() }
    }

    #[test]
    fn the_wait_doubles_from_a_second_to_half_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30, 30]);
        assert_eq!(delay(u32::MAX), LONGEST);
    }

    #[test]
    fn a_failing_cluster_repeats_its_failure_until_the_wait_is_over() {
        let mut backoffs = Backoffs::default();
        let t0 = Instant::now();
        assert!(backoffs.waiting("a", t0).is_none(), "nothing failed yet");
        assert_eq!(backoffs.failed("a", unreachable(), t0), Duration::from_secs(1));
        let (failure, left) = backoffs.waiting("a", t0 + Duration::from_millis(400)).expect("still waiting");
        assert_eq!(failure, unreachable());
        assert_eq!(left, Duration::from_millis(600));
        assert!(backoffs.waiting("b", t0).is_none(), "per cluster");
        assert!(backoffs.waiting("a", t0 + Duration::from_secs(1)).is_none(), "its turn again");
        assert_eq!(backoffs.failed("a", unreachable(), t0 + Duration::from_secs(1)), Duration::from_secs(2));
        backoffs.succeeded("a");
        assert!(backoffs.waiting("a", t0 + Duration::from_secs(1)).is_none());
        assert_eq!(backoffs.failed("a", unreachable(), t0 + Duration::from_secs(2)), Duration::from_secs(1), "reset");
    }
}
