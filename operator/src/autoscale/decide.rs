//! The autoscaler's decision: a pure function of the policy, the current worker count, what
//! ZooKeeper says about the load, the time, and the recommendations made before.
//!
//! Stabilization follows the HPA: each decision records the count the load asks for right
//! now; a scale-up takes the lowest of those within the scale-up window, a scale-down the
//! highest within the scale-down window. A burst is therefore met at once (window 0s), and a
//! lull must last the whole scale-down window before a worker is removed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The spec's autoscaling settings, with durations parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub min_workers: i32,
    pub max_workers: i32,
    pub tasks_per_worker: i32,
    pub scale_up_window: Duration,
    pub scale_down_window: Duration,
}

/// The load as ZooKeeper reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub backlog: u64,
    pub running: u64,
    pub busy: u64,
    /// Published by the current leader. After a takeover the counters read 0 until the new
    /// leader publishes: a false zero that must never shed workers.
    pub fresh: bool,
}

/// Why the count is what it is. `as_str` is the status reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    ScaledUp,
    ScaledDown,
    /// The load asks for the current count.
    AtTarget,
    /// The load asks for another count, but not for long enough.
    Stabilizing,
    /// The load would remove workers that are executing a task.
    BusyWorkers,
    /// ZooKeeper cannot be read.
    NoReading,
    /// The counters are not yet published by the current leader.
    CountersNotFresh,
    /// A scale-in was due but which workers are busy could not be read; set by the caller.
    WorkersUnknown,
    /// The TaskCluster changed after the decision was made, so it was not written; set by
    /// the caller. The next decision follows at once.
    Superseded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaledUp => "ScaledUp",
            Reason::ScaledDown => "ScaledDown",
            Reason::AtTarget => "AtTarget",
            Reason::Stabilizing => "Stabilizing",
            Reason::BusyWorkers => "BusyWorkers",
            Reason::NoReading => "NoReading",
            Reason::CountersNotFresh => "CountersNotFresh",
            Reason::WorkersUnknown => "WorkersUnknown",
            Reason::Superseded => "Superseded",
        }
    }
}

/// The worker count to ask for, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: i32,
    pub reason: Reason,
    /// The decision with the numbers behind it, for the status and the Event.
    pub message: String,
}

/// The counts the load asked for lately, oldest first: the per-cluster state that the
/// stabilization windows look back over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recommendations {
    history: VecDeque<(Instant, i32)>,
}

impl Recommendations {
    /// The state of a cluster first seen at `now` running `current` workers: as if the load
    /// had just asked for `current`, so an operator restart does not skip the scale-down
    /// window that was running before it.
    pub fn starting(now: Instant, current: i32) -> Self {
        Self { history: VecDeque::from([(now, current)]) }
    }

    /// Recommendations remembered.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Decides the worker count for `current` workers and `load` (`None`: ZooKeeper could
    /// not be read), recording what the load asks for.
    pub fn decide(&mut self, policy: &Policy, current: i32, load: Option<&Load>, now: Instant) -> Decision {
        let (min, max) = (policy.min_workers, policy.max_workers.max(policy.min_workers));
        let load = match load {
            Some(load) if load.fresh => *load,
            // Without trustworthy numbers nothing is removed; only the minimum is enforced,
            // which adds workers and so cannot interrupt a task.
            unknown => {
                let (reason, why) = match unknown {
                    None => (Reason::NoReading, "ZooKeeper cannot be read"),
                    Some(_) => (Reason::CountersNotFresh, "the current leader has not published its counters yet"),
                };
                if current < min {
                    let message = format!("{why}; scaling from {current} to minWorkers {min}");
                    return Decision { desired: min, reason: Reason::ScaledUp, message };
                }
                return Decision { desired: current, reason, message: format!("{why}; holding {current} workers") };
            },
        };

        let wanted = target(policy, &load).clamp(min, max);
        self.history.push_back((now, wanted));
        let keep = policy.scale_up_window.max(policy.scale_down_window);
        while self.history.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > keep) {
            self.history.pop_front();
        }
        let (mut up, mut down) = (wanted, wanted);
        for &(at, recommended) in &self.history {
            let age = now.saturating_duration_since(at);
            if age < policy.scale_up_window {
                up = up.min(recommended);
            }
            if age < policy.scale_down_window {
                down = down.max(recommended);
            }
        }
        let mut desired = current.max(up).min(down).clamp(min, max);
        // A worker executing a task keeps it: never fewer than the busy ones.
        let busy = i32::try_from(load.busy).unwrap_or(i32::MAX).min(current);
        let busy_floor = desired < current && desired < busy;
        if busy_floor {
            desired = busy;
        }

        let numbers = format!(
            "backlog {}, running {}, {} busy: the load asks for {wanted} (at {} tasks per worker, {min} to {max} workers)",
            load.backlog, load.running, load.busy, policy.tasks_per_worker
        );
        let (reason, message) = match desired.cmp(&current) {
            std::cmp::Ordering::Greater => {
                (Reason::ScaledUp, format!("{numbers}; scaling from {current} to {desired}"))
            },
            std::cmp::Ordering::Less if busy_floor => (
                Reason::ScaledDown,
                format!("{numbers}; scaling from {current} to {desired}, keeping every busy worker"),
            ),
            std::cmp::Ordering::Less => (Reason::ScaledDown, format!("{numbers}; scaling from {current} to {desired}")),
            std::cmp::Ordering::Equal if busy_floor => {
                (Reason::BusyWorkers, format!("{numbers}; holding {current}: every worker is busy"))
            },
            std::cmp::Ordering::Equal if wanted != current => {
                let window = if wanted > current { policy.scale_up_window } else { policy.scale_down_window };
                (
                    Reason::Stabilizing,
                    format!("{numbers}; holding {current} within the {window:?} stabilization window"),
                )
            },
            std::cmp::Ordering::Equal => (Reason::AtTarget, format!("{numbers}; holding {current}")),
        };
        Decision { desired, reason, message }
    }
}

/// Workers the load asks for: (backlog + running) / tasksPerWorker, rounded up.
fn target(policy: &Policy, load: &Load) -> i32 {
    let demand = load.backlog.saturating_add(load.running);
    let per_worker = u64::try_from(policy.tasks_per_worker.max(1)).unwrap_or(1);
    i32::try_from(demand.div_ceil(per_worker)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_workers: 0,
            max_workers: 20,
            tasks_per_worker: 2,
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(60),
        }
    }

    fn load(backlog: u64, running: u64, busy: u64) -> Load {
        Load { backlog, running, busy, fresh: true }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_burst_is_met_at_once() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 1);
        let d = history.decide(&policy(), 1, Some(&load(9, 1, 1)), t0 + secs(1));
        assert_eq!((d.desired, d.reason), (5, Reason::ScaledUp), "{}", d.message);
        assert!(d.message.contains("backlog 9, running 1"), "{}", d.message);
    }

    #[test]
    fn the_target_rounds_up() {
        let t0 = Instant::now();
        let mut history = Recommendations::default();
        assert_eq!(history.decide(&policy(), 0, Some(&load(3, 0, 0)), t0).desired, 2);
        let one_each = Policy { tasks_per_worker: 1, ..policy() };
        assert_eq!(Recommendations::default().decide(&one_each, 0, Some(&load(3, 4, 4)), t0).desired, 7);
    }

    #[test]
    fn a_scale_up_window_takes_the_lowest_recommendation() {
        let slow_up = Policy { scale_up_window: secs(30), ..policy() };
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 2);
        // The spike asks for 10, but 30 s ago the load asked for 2.
        let d = history.decide(&slow_up, 2, Some(&load(20, 0, 0)), t0 + secs(5));
        assert_eq!((d.desired, d.reason), (2, Reason::Stabilizing), "{}", d.message);
        let d = history.decide(&slow_up, 2, Some(&load(20, 0, 0)), t0 + secs(31));
        assert_eq!((d.desired, d.reason), (10, Reason::ScaledUp), "{}", d.message);
    }

    #[test]
    fn a_lull_must_last_the_scale_down_window() {
        let t0 = Instant::now();
        let mut history = Recommendations::default();
        assert_eq!(history.decide(&policy(), 0, Some(&load(16, 0, 0)), t0).desired, 8);
        for s in [1, 20, 59] {
            let d = history.decide(&policy(), 8, Some(&load(2, 0, 0)), t0 + secs(s));
            assert_eq!((d.desired, d.reason), (8, Reason::Stabilizing), "at {s}s: {}", d.message);
        }
        // 61 s after the peak only the lull's recommendations remain.
        let d = history.decide(&policy(), 8, Some(&load(2, 0, 0)), t0 + secs(61));
        assert_eq!((d.desired, d.reason), (1, Reason::ScaledDown), "{}", d.message);
    }

    #[test]
    fn flapping_load_keeps_the_peak() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 6);
        let mut workers = 6;
        for s in 1..=120 {
            let backlog = if s % 2 == 0 { 12 } else { 0 };
            let d = history.decide(&policy(), workers, Some(&load(backlog, 0, 0)), t0 + secs(s));
            assert!(d.desired >= 6, "at {s}s the count dropped to {}: {}", d.desired, d.message);
            workers = d.desired;
        }
        assert_eq!(workers, 6);
    }

    #[test]
    fn steady_load_holds_at_target() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 4);
        for s in 1..=200 {
            let d = history.decide(&policy(), 4, Some(&load(5, 3, 3)), t0 + secs(s));
            assert_eq!((d.desired, d.reason), (4, Reason::AtTarget), "{}", d.message);
        }
        assert!(history.len() <= 62, "history is pruned to the longest window: {}", history.len());
    }

    #[test]
    fn takeover_zeros_never_shed_workers() {
        let t0 = Instant::now();
        let mut history = Recommendations::default();
        // Long after any peak, a new leader's unpublished counters read 0.
        let stale = Load { fresh: false, ..Load::default() };
        let d = history.decide(&policy(), 5, Some(&stale), t0 + secs(600));
        assert_eq!((d.desired, d.reason), (5, Reason::CountersNotFresh), "{}", d.message);
        assert!(history.is_empty(), "a false zero is not remembered as a recommendation");
    }

    #[test]
    fn missing_data_holds_the_count_but_honours_the_minimum() {
        let t0 = Instant::now();
        let mut history = Recommendations::default();
        let d = history.decide(&policy(), 5, None, t0);
        assert_eq!((d.desired, d.reason), (5, Reason::NoReading));
        let at_least_three = Policy { min_workers: 3, ..policy() };
        let d = history.decide(&at_least_three, 1, None, t0);
        assert_eq!((d.desired, d.reason), (3, Reason::ScaledUp), "{}", d.message);
        let d = history.decide(&at_least_three, 0, Some(&Load::default()), t0);
        assert_eq!(d.desired, 3, "never to zero without fresh counters");
    }

    #[test]
    fn counts_stay_within_min_and_max() {
        let bounded = Policy { min_workers: 2, max_workers: 5, ..policy() };
        let t0 = Instant::now();
        let d = Recommendations::default().decide(&bounded, 3, Some(&load(1000, 0, 0)), t0);
        assert_eq!((d.desired, d.reason), (5, Reason::ScaledUp));
        let d = Recommendations::default().decide(&bounded, 3, Some(&load(0, 0, 0)), t0);
        assert_eq!((d.desired, d.reason), (2, Reason::ScaledDown));
        // Above a lowered maximum: back within it.
        let d = Recommendations::default().decide(&bounded, 9, Some(&load(1000, 0, 0)), t0);
        assert_eq!(d.desired, 5);
        // Below a raised minimum: up to it.
        let d = Recommendations::default().decide(&bounded, 0, Some(&load(0, 0, 0)), t0);
        assert_eq!(d.desired, 2);
    }

    #[test]
    fn scale_in_never_drops_below_the_busy_workers() {
        let t0 = Instant::now();
        let one_each = Policy { tasks_per_worker: 10, ..policy() };
        // Ten tasks running on ten workers ask for one worker at ten tasks each.
        let d = Recommendations::default().decide(&one_each, 12, Some(&load(0, 10, 10)), t0);
        assert_eq!((d.desired, d.reason), (10, Reason::ScaledDown), "{}", d.message);
        let d = Recommendations::default().decide(&one_each, 10, Some(&load(0, 10, 10)), t0);
        assert_eq!((d.desired, d.reason), (10, Reason::BusyWorkers), "{}", d.message);
        // Even a maximum lowered below the busy workers waits for them.
        let lowered = Policy { max_workers: 4, ..one_each };
        let d = Recommendations::default().decide(&lowered, 8, Some(&load(0, 8, 8)), t0);
        assert_eq!(d.desired, 8, "{}", d.message);
    }

    #[test]
    fn scales_to_zero_when_idle_and_back_when_work_arrives() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 3);
        let d = history.decide(&policy(), 3, Some(&load(0, 1, 1)), t0 + secs(61));
        assert_eq!(d.desired, 1, "one task still runs: {}", d.message);
        let d = history.decide(&policy(), 1, Some(&load(0, 0, 0)), t0 + secs(62));
        assert_eq!((d.desired, d.reason), (1, Reason::Stabilizing), "the window remembers the running task");
        let d = history.decide(&policy(), 1, Some(&load(0, 0, 0)), t0 + secs(122));
        assert_eq!((d.desired, d.reason), (0, Reason::ScaledDown), "{}", d.message);
        let d = history.decide(&policy(), 0, Some(&load(1, 0, 0)), t0 + secs(123));
        assert_eq!((d.desired, d.reason), (1, Reason::ScaledUp), "{}", d.message);
    }

    #[test]
    fn a_manual_scale_is_overwritten_at_the_next_decision() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 3);
        for s in 1..=10 {
            assert_eq!(history.decide(&policy(), 3, Some(&load(6, 0, 0)), t0 + secs(s)).desired, 3);
        }
        // `kubectl scale --replicas=9`: the load asked for 3 all along, so back to 3 at once.
        let d = history.decide(&policy(), 9, Some(&load(6, 0, 0)), t0 + secs(11));
        assert_eq!((d.desired, d.reason), (3, Reason::ScaledDown), "{}", d.message);
        // `kubectl scale --replicas=1`: below what the load asks for, back up at once.
        let d = history.decide(&policy(), 1, Some(&load(6, 0, 0)), t0 + secs(12));
        assert_eq!((d.desired, d.reason), (3, Reason::ScaledUp), "{}", d.message);
    }

    #[test]
    fn a_restart_does_not_skip_the_scale_down_window() {
        let t0 = Instant::now();
        let mut history = Recommendations::starting(t0, 8);
        let d = history.decide(&policy(), 8, Some(&load(0, 0, 0)), t0 + secs(1));
        assert_eq!((d.desired, d.reason), (8, Reason::Stabilizing));
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let d =
            Recommendations::default().decide(&policy(), 1, Some(&load(u64::MAX, u64::MAX, u64::MAX)), Instant::now());
        assert_eq!(d.desired, 20);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One reconcile: seconds since the last, and what ZooKeeper said (None: nothing).
        fn step() -> impl Strategy<Value = (u64, Option<Load>)> {
            let load = (0u64..60, 0u64..30, 0u64..30, proptest::bool::weighted(0.8))
                .prop_map(|(backlog, running, busy, fresh)| Load { backlog, running, busy: busy.min(running), fresh });
            (0u64..20, proptest::option::weighted(0.9, load))
        }

        fn any_policy() -> impl Strategy<Value = Policy> {
            (0i32..5, 1i32..30, 1i32..5, 0u64..40, 0u64..120).prop_map(|(min, extra, per, up, down)| Policy {
                min_workers: min,
                max_workers: min + extra,
                tasks_per_worker: per,
                scale_up_window: secs(up),
                scale_down_window: secs(down),
            })
        }

        proptest! {
            #[test]
            fn invariants_hold_after_every_decision(
                policy in any_policy(),
                start in 0i32..40,
                steps in proptest::collection::vec(step(), 1..80),
            ) {
                let t0 = Instant::now();
                let mut history = Recommendations::starting(t0, start);
                let (mut now, mut workers) = (t0, start);
                for (elapsed, load) in steps {
                    now += secs(elapsed);
                    let d = history.decide(&policy, workers, load.as_ref(), now);
                    let trusted = load.filter(|l| l.fresh);
                    prop_assert!(d.desired >= policy.min_workers, "below minWorkers: {d:?}");
                    if d.desired < workers {
                        let l = trusted.expect("a scale-in without fresh counters");
                        prop_assert!(d.desired as u64 >= l.busy.min(workers as u64), "a busy worker removed: {d:?} {l:?}");
                        prop_assert_eq!(d.reason, Reason::ScaledDown);
                    }
                    if d.desired > workers {
                        prop_assert!(d.desired <= policy.max_workers, "above maxWorkers: {d:?}");
                        prop_assert_eq!(d.reason, Reason::ScaledUp);
                    }
                    if d.desired == 0 && workers > 0 {
                        let l = trusted.expect("scaled to zero without fresh counters");
                        prop_assert!(l.backlog == 0 && l.running == 0, "scaled to zero under load: {l:?}");
                    }
                    if let Some(l) = trusted {
                        // With no scale-up window a burst is met at once.
                        let wanted = i32::try_from((l.backlog + l.running).div_ceil(policy.tasks_per_worker as u64)).unwrap();
                        if policy.scale_up_window.is_zero() {
                            prop_assert!(d.desired >= wanted.clamp(policy.min_workers, policy.max_workers), "{d:?}");
                        }
                    }
                    workers = d.desired;
                }
            }
        }
    }
}
