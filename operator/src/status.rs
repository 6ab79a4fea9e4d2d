//! The pure status step: what the child objects and ZooKeeper say, folded into the
//! TaskCluster status with standard conditions.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use taskcluster::ClusterStatus;

use crate::autoscale::Reason;
use crate::build::labels::{self, Component};
use crate::build::zookeeper::quorum;
use crate::crd::{MastersStatus, TaskCluster, TaskClusterStatus, WorkersStatus, ZooKeeperStatus};
use crate::ensemble::Members;
use crate::validate::SpecError;
use crate::zk::ZkStatusError;

pub const READY: &str = "Ready";
pub const ZOOKEEPER_READY: &str = "ZooKeeperReady";
pub const LEADER_ELECTED: &str = "LeaderElected";
pub const DEGRADED: &str = "Degraded";
pub const RECONCILED: &str = "Reconciled";
/// Longest condition message written: API server messages can be long, the status is not
/// the place for all of it (events and the operator's log carry the rest).
const MAX_MESSAGE: usize = 4096;

/// A change of the task counters alone is written at most this often: they move with every
/// task, and a busy cluster would otherwise cost one status write per refresh.
pub const COUNTERS_PERIOD: Duration = Duration::from_secs(15);

/// What ZooKeeper said this time.
#[derive(Debug)]
pub enum ZkReading {
    /// Not asked: the ensemble has no quorum, or the spec is invalid.
    Skipped,
    Read(ClusterStatus),
    Failed(ZkStatusError),
}

impl ZkReading {
    /// What ZooKeeper said, when it was asked and answered.
    pub fn cluster(&self) -> Option<&ClusterStatus> {
        match self {
            ZkReading::Read(cluster) => Some(cluster),
            ZkReading::Skipped | ZkReading::Failed(_) => None,
        }
    }
}

/// Everything the status is computed from.
#[derive(Debug)]
pub struct Observation<'a> {
    pub spec_error: Option<&'a SpecError>,
    pub masters: Option<&'a Deployment>,
    pub workers: Option<&'a Deployment>,
    pub zookeeper: Option<&'a StatefulSet>,
    pub reading: &'a ZkReading,
    /// Why children could not be applied this time (empty when all were, or none was tried).
    pub apply_failures: &'a [String],
    /// The ensemble's committed membership, when it could be read.
    pub members: Option<&'a Members>,
}

fn deployment_counts(d: Option<&Deployment>) -> (i32, i32) {
    let status = d.and_then(|d| d.status.as_ref());
    (status.and_then(|s| s.replicas).unwrap_or(0), status.and_then(|s| s.ready_replicas).unwrap_or(0))
}

/// Whole seconds: the API server stores times at that precision, and a finer one would make
/// every reconcile see a change.
fn millis_to_time(ms: u64) -> Option<Time> {
    let seconds = i64::try_from(ms / 1000).ok()?;
    Timestamp::from_second(seconds).ok().map(Time)
}

fn whole_seconds(t: Timestamp) -> Option<Time> {
    Timestamp::from_second(t.as_second()).ok().map(Time)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

struct Verdict {
    type_: &'static str,
    status: bool,
    reason: String,
    message: String,
}

fn verdict(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Verdict {
    Verdict { type_, status, reason: reason.into(), message: message.into() }
}

/// Folds an observation into a new status. `previous` keeps transition times of conditions
/// that did not change, and the last known counters while ZooKeeper cannot be read, so an
/// unchanged cluster yields an identical status (and no write).
pub fn compute(
    tc: &TaskCluster,
    previous: Option<&TaskClusterStatus>,
    obs: &Observation,
    now: Timestamp,
) -> TaskClusterStatus {
    let generation = tc.metadata.generation;
    let instance = tc.metadata.name.clone().unwrap_or_default();
    let prev = previous.cloned().unwrap_or_default();

    let zk_replicas = tc.spec.zookeeper.replicas;
    let zk_ready = obs.zookeeper.and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0);
    let zk_members = obs.members.map(|m| i32::try_from(m.voters.len()).unwrap_or(i32::MAX));
    let zk_members = zk_members.or(prev.zookeeper.members);
    // While it is resized, the majority that counts is the committed membership's.
    let voters = zk_members.unwrap_or(zk_replicas);
    let has_quorum = zk_ready >= quorum(voters);
    let (_, masters_ready) = deployment_counts(obs.masters);
    let (worker_pods, workers_ready) = deployment_counts(obs.workers);

    let mut status = TaskClusterStatus {
        observed_generation: generation,
        replicas: worker_pods,
        selector: Some(labels::selector_string(&labels::selector(&instance, Component::Worker))),
        masters: MastersStatus { desired: tc.spec.masters, ready: masters_ready, contending: prev.masters.contending },
        workers: WorkersStatus {
            desired: tc.spec.workers,
            ready: workers_ready,
            registered: prev.workers.registered,
            busy: prev.workers.busy,
        },
        zookeeper: ZooKeeperStatus {
            replicas: zk_replicas,
            ready_replicas: zk_ready,
            quorum: has_quorum,
            members: zk_members,
        },
        ..prev.clone()
    };
    status.conditions = Vec::new();

    if let ZkReading::Read(cluster) = obs.reading {
        let leader = cluster.leader.as_ref().map(|l| l.id.clone());
        status.leader_since = match (&cluster.leader, &prev.leader) {
            (Some(l), _) if l.since_ms > 0 => millis_to_time(l.since_ms),
            // The new leader has not published its takeover time yet.
            (Some(l), Some(p)) if &l.id == p => prev.leader_since.clone(),
            _ => None,
        };
        status.leader = leader;
        status.epoch = as_i64(cluster.epoch);
        status.backlog = as_i64(cluster.backlog);
        status.running = as_i64(cluster.running);
        status.completed = as_i64(cluster.completed);
        status.failed = as_i64(cluster.failed);
        status.dead_lettered = as_i64(cluster.dead_lettered);
        status.masters.contending = as_i64(cluster.masters);
        status.workers.registered = as_i64(cluster.workers_registered);
        status.workers.busy = as_i64(cluster.workers_busy);
        status.counters_as_of = None;
    } else {
        // Unknown rather than the last one seen: a failover may happen meanwhile. The
        // counters stay, dated from the first reading that could not be made (written once,
        // so a lasting outage costs no writes).
        (status.leader, status.leader_since) = (None, None);
        status.counters_as_of = prev.counters_as_of.clone().or_else(|| whole_seconds(now));
    }

    let resizing = match zk_members {
        Some(members) if members != zk_replicas => format!("; resizing from {members} to {zk_replicas} members"),
        _ => String::new(),
    };
    let zookeeper_ready = if has_quorum {
        let message = format!("{zk_ready} of {zk_replicas} ZooKeeper servers ready{resizing}");
        verdict(ZOOKEEPER_READY, true, "QuorumReady", message)
    } else if obs.zookeeper.is_none() {
        verdict(ZOOKEEPER_READY, false, "Creating", "the ZooKeeper ensemble does not exist yet")
    } else {
        verdict(
            ZOOKEEPER_READY,
            false,
            "NoQuorum",
            format!(
                "{zk_ready} of {zk_replicas} ZooKeeper servers ready; {} needed for a majority{resizing}",
                quorum(voters)
            ),
        )
    };
    let leader_elected = match obs.reading {
        ZkReading::Read(ClusterStatus { leader: Some(l), .. }) => {
            verdict(LEADER_ELECTED, true, "Elected", format!("master {} leads (epoch {})", l.id, status.epoch))
        },
        ZkReading::Read(_) => verdict(LEADER_ELECTED, false, "NoLeader", "no master is contending for leadership"),
        ZkReading::Failed(err) => verdict(LEADER_ELECTED, false, err.reason(), err.to_string()),
        ZkReading::Skipped => verdict(LEADER_ELECTED, false, "ZooKeeperNotReady", "waiting for a ZooKeeper quorum"),
    };

    let mut shortfalls = Vec::new();
    if zk_ready < zk_replicas {
        shortfalls.push(format!("{zk_ready}/{zk_replicas} ZooKeeper servers ready"));
    }
    if masters_ready < tc.spec.masters {
        shortfalls.push(format!("{masters_ready}/{} masters ready", tc.spec.masters));
    }
    if workers_ready < tc.spec.workers {
        shortfalls.push(format!("{workers_ready}/{} workers ready", tc.spec.workers));
    }
    let degraded = match (obs.spec_error, obs.reading) {
        (Some(err), _) => verdict(DEGRADED, true, "InvalidSpec", err.to_string()),
        (None, ZkReading::Failed(err)) => verdict(DEGRADED, true, err.reason(), err.to_string()),
        _ if !shortfalls.is_empty() => verdict(DEGRADED, true, "ReplicasNotReady", shortfalls.join(", ")),
        _ => verdict(DEGRADED, false, "AllReplicasReady", "every replica is ready"),
    };
    let ready = if let Some(err) = obs.spec_error {
        verdict(READY, false, err.reason(), format!("{err}; the last valid spec keeps running"))
    } else if !zookeeper_ready.status {
        verdict(READY, false, zookeeper_ready.reason.clone(), zookeeper_ready.message.clone())
    } else if !leader_elected.status {
        verdict(READY, false, leader_elected.reason.clone(), leader_elected.message.clone())
    } else if tc.spec.workers > 0 && workers_ready == 0 {
        verdict(READY, false, "NoWorkers", "no worker is ready to execute tasks")
    } else {
        verdict(READY, true, "ClusterReady", "a leader assigns tasks to ready workers")
    };

    let reconciled = if let Some(err) = obs.spec_error {
        verdict(RECONCILED, false, "InvalidSpec", format!("{err}; the children keep the last valid spec"))
    } else if !obs.apply_failures.is_empty() {
        verdict(RECONCILED, false, "ApplyFailed", obs.apply_failures.join("; "))
    } else {
        verdict(RECONCILED, true, "Applied", "every child object is applied as the spec asks")
    };

    for v in [ready, zookeeper_ready, leader_elected, degraded, reconciled] {
        status.conditions.push(condition(&prev.conditions, v, generation, now));
    }
    status
}

fn condition(previous: &[Condition], v: Verdict, generation: Option<i64>, now: Timestamp) -> Condition {
    let status = if v.status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == v.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| whole_seconds(now).unwrap_or(Time(now)));
    Condition {
        type_: v.type_.into(),
        status: status.into(),
        reason: v.reason,
        message: clip(v.message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The status with the counters that move with every task set to zero.
fn without_counters(status: &TaskClusterStatus) -> TaskClusterStatus {
    let mut status = status.clone();
    (status.backlog, status.running, status.completed, status.failed, status.dead_lettered) = (0, 0, 0, 0, 0);
    status.workers.busy = 0;
    // The autoscaler's message quotes the counters, and which of its holds with good data
    // applies moves with the load just as much; a scale or a loss of data does not wait.
    if let Some(autoscaling) = status.autoscaling.as_mut() {
        autoscaling.message.clear();
        let steady = [Reason::AtTarget, Reason::Stabilizing, Reason::BusyWorkers];
        if steady.iter().any(|r| r.as_str() == autoscaling.reason) {
            autoscaling.reason.clear();
        }
    }
    status
}

/// How a new status differs from the one written before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// Only the task counters moved.
    Counters,
    /// Anything else: conditions, leader, replicas, generation.
    Other,
}

impl Change {
    pub fn between(previous: Option<&TaskClusterStatus>, next: &TaskClusterStatus) -> Self {
        match previous {
            None => Change::Other,
            Some(previous) if previous == next => Change::None,
            Some(previous) if without_counters(previous) == without_counters(next) => Change::Counters,
            Some(_) => Change::Other,
        }
    }

    /// Whether to write now, the last write for the counters' sake `since_counters_written`
    /// ago (`None`: none yet). Other changes are written at once (with the counters as they
    /// are); a change of the counters alone after a quiet spell too, else once
    /// `COUNTERS_PERIOD` has passed since the last such write.
    pub fn due(self, since_counters_written: Option<Duration>) -> bool {
        match self {
            Change::None => false,
            Change::Other => true,
            Change::Counters => since_counters_written.is_none_or(|age| age >= COUNTERS_PERIOD),
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), an ellipsis marking the cut.
pub fn clip(mut text: String, max: usize) -> String {
    const ELLIPSIS: char = '…';
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(ELLIPSIS.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(ELLIPSIS);
    text
}

/// The condition of `type_`, if set.
pub fn find<'a>(status: Option<&'a TaskClusterStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};
    use taskcluster::LeaderInfo;

    use super::*;
    use crate::crd::AutoscalingStatus;
    use crate::fixtures;

    fn sts(ready: i32) -> StatefulSet {
        StatefulSet {
            status: Some(StatefulSetStatus { replicas: 3, ready_replicas: Some(ready), ..Default::default() }),
            ..Default::default()
        }
    }

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn led_by(id: &str) -> ZkReading {
        ZkReading::Read(ClusterStatus {
            leader: Some(LeaderInfo { id: id.into(), since_ms: 1_700_000_000_123 }),
            epoch: 2,
            backlog: 7,
            workers_registered: 3,
            ..ClusterStatus::default()
        })
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn cond<'a>(s: &'a TaskClusterStatus, type_: &str) -> &'a Condition {
        find(Some(s), type_).unwrap()
    }

    #[test]
    fn a_healthy_cluster_is_ready_with_its_leader_and_backlog() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 2), deployment(3, 3), sts(3), led_by("demo-master-x"));
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let s = compute(&tc, None, &obs, at(100));
        assert_eq!(s.leader.as_deref(), Some("demo-master-x"));
        assert_eq!(s.leader_since, Some(Time(at(1_700_000_000))), "whole seconds, as the API server stores them");
        assert_eq!((s.backlog, s.epoch, s.replicas), (7, 2, 3));
        assert_eq!(s.workers, WorkersStatus { desired: 3, ready: 3, registered: 3, busy: 0 });
        assert_eq!(s.zookeeper, ZooKeeperStatus { replicas: 3, ready_replicas: 3, quorum: true, members: None });
        for (type_, expected) in
            [(READY, "True"), (ZOOKEEPER_READY, "True"), (LEADER_ELECTED, "True"), (DEGRADED, "False")]
        {
            assert_eq!(cond(&s, type_).status, expected, "{type_}");
            assert_eq!(cond(&s, type_).observed_generation, Some(1));
        }
    }

    #[test]
    fn while_zookeeper_cannot_be_read_the_leader_is_unknown_and_the_counters_dated() {
        let tc = fixtures::example();
        let (m, w, z, elected) = (deployment(2, 2), deployment(3, 3), sts(3), led_by("demo-master-x"));
        let failed = ZkReading::Failed(ZkStatusError::Timeout {
            connect: "demo-zookeeper:2181".into(),
            timeout: Duration::from_secs(2),
        });
        let observe = |reading| Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading,
            apply_failures: &[],
            members: None,
        };
        let read = compute(&tc, None, &observe(&elected), at(100));
        assert_eq!(read.counters_as_of, None, "current counters carry no date");

        let stale = compute(&tc, Some(&read), &observe(&failed), at(130));
        assert_eq!((stale.leader.as_deref(), stale.leader_since.as_ref()), (None, None), "unknown, not the last seen");
        assert_eq!(stale.backlog, 7, "the last counters stay on display");
        assert_eq!(stale.counters_as_of, Some(Time(at(130))));
        assert_eq!(compute(&tc, Some(&stale), &observe(&failed), at(160)), stale, "no write while it stays so");

        let back = compute(&tc, Some(&stale), &observe(&elected), at(190));
        assert_eq!((back.leader.as_deref(), back.counters_as_of.as_ref()), (Some("demo-master-x"), None));

        let skipped = ZkReading::Skipped;
        let no_quorum = compute(&tc, Some(&read), &observe(&skipped), at(200));
        assert_eq!((no_quorum.leader.as_deref(), no_quorum.counters_as_of.clone()), (None, Some(Time(at(200)))));
    }

    #[test]
    fn the_same_observation_gives_the_same_status() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 2), deployment(3, 3), sts(3), led_by("demo-master-x"));
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let first = compute(&tc, None, &obs, at(100));
        let again = compute(&tc, Some(&first), &obs, at(200));
        assert_eq!(first, again, "nothing changed, so nothing is written");
    }

    #[test]
    fn a_minority_lost_is_degraded_but_ready() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 1), deployment(3, 3), sts(2), led_by("demo-master-x"));
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let s = compute(&tc, None, &obs, at(100));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, ZOOKEEPER_READY).status, "True");
        let degraded = cond(&s, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ReplicasNotReady"));
        assert_eq!(degraded.message, "2/3 ZooKeeper servers ready, 1/2 masters ready");
    }

    #[test]
    fn without_quorum_zookeeper_is_not_asked_and_the_cluster_is_not_ready() {
        let tc = fixtures::example();
        let (z, reading) = (sts(1), ZkReading::Skipped);
        let obs = Observation {
            spec_error: None,
            masters: None,
            workers: None,
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let s = compute(&tc, None, &obs, at(100));
        let ready = cond(&s, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoQuorum"));
        assert!(ready.message.contains("1 of 3 ZooKeeper servers ready; 2 needed"), "{}", ready.message);
        assert_eq!(cond(&s, LEADER_ELECTED).reason, "ZooKeeperNotReady");
    }

    #[test]
    fn transition_times_move_only_on_transitions() {
        let tc = fixtures::example();
        let (m, w, z) = (deployment(2, 2), deployment(3, 3), sts(3));
        let elected = led_by("demo-master-x");
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &elected,
            apply_failures: &[],
            members: None,
        };
        let first = compute(&tc, None, &obs, at(100));
        let none = ZkReading::Read(ClusterStatus::default());
        let obs = Observation { reading: &none, ..obs };
        let second = compute(&tc, Some(&first), &obs, at(200));
        assert_eq!(cond(&second, LEADER_ELECTED).status, "False");
        assert_eq!(cond(&second, LEADER_ELECTED).last_transition_time, Time(at(200)));
        assert_eq!(cond(&second, ZOOKEEPER_READY).last_transition_time, Time(at(100)));
        assert_eq!(second.leader, None);
    }

    #[test]
    fn a_new_leader_without_a_takeover_time_keeps_none() {
        let tc = fixtures::example();
        let (m, w, z) = (deployment(2, 2), deployment(3, 3), sts(3));
        let reading = ZkReading::Read(ClusterStatus {
            leader: Some(LeaderInfo { id: "demo-master-y".into(), since_ms: 0 }),
            ..ClusterStatus::default()
        });
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let s = compute(&tc, None, &obs, at(100));
        assert_eq!(s.leader.as_deref(), Some("demo-master-y"));
        assert_eq!(s.leader_since, None);
    }

    #[test]
    fn children_the_api_server_refused_are_a_condition_until_they_are_applied() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 2), deployment(3, 3), sts(3), led_by("demo-master-x"));
        let refused = ["cannot apply StatefulSet default/demo-zookeeper: spec: Forbidden (422 Invalid)".to_string()];
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &refused,
            members: None,
        };
        let failing = compute(&tc, None, &obs, at(100));
        let reconciled = cond(&failing, RECONCILED);
        assert_eq!((reconciled.status.as_str(), reconciled.reason.as_str()), ("False", "ApplyFailed"));
        assert_eq!(reconciled.message, refused[0]);
        assert_eq!(cond(&failing, READY).status, "True", "what runs still works");

        let still = compute(&tc, Some(&failing), &obs, at(200));
        assert_eq!(still, failing, "the same refusal writes nothing new");

        let obs = Observation { apply_failures: &[], ..obs };
        let applied = compute(&tc, Some(&failing), &obs, at(300));
        let reconciled = cond(&applied, RECONCILED);
        assert_eq!((reconciled.status.as_str(), reconciled.reason.as_str()), ("True", "Applied"));
        assert_eq!(reconciled.last_transition_time, Time(at(300)));
        assert_eq!(cond(&applied, READY).last_transition_time, Time(at(100)), "only the transition moves");
        let types: Vec<_> = applied.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, ZOOKEEPER_READY, LEADER_ELECTED, DEGRADED, RECONCILED], "one entry per type");
    }

    #[test]
    fn counters_alone_wait_for_their_period_and_everything_else_is_written_at_once() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 2), deployment(3, 3), sts(3), led_by("demo-master-x"));
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let written = compute(&tc, None, &obs, at(100));
        let soon = Some(Duration::from_secs(1));
        assert_eq!(Change::between(None, &written), Change::Other, "no status yet");
        assert_eq!(Change::between(Some(&written), &written), Change::None);
        assert!(!Change::None.due(None));
        assert!(Change::Other.due(soon));

        let mut busier = written.clone();
        (busier.backlog, busier.running, busier.completed, busier.failed, busier.dead_lettered) = (9, 3, 50, 2, 1);
        busier.workers.busy = 3;
        let counters = Change::between(Some(&written), &busier);
        assert_eq!(counters, Change::Counters);
        assert!(!counters.due(soon));
        assert!(counters.due(Some(COUNTERS_PERIOD)));
        assert!(counters.due(None), "the first change after a quiet spell");

        for change in [
            |s: &mut TaskClusterStatus| s.leader = Some("demo-master-y".into()),
            |s: &mut TaskClusterStatus| s.epoch += 1,
            |s: &mut TaskClusterStatus| s.workers.ready -= 1,
            |s: &mut TaskClusterStatus| s.workers.registered -= 1,
            |s: &mut TaskClusterStatus| s.observed_generation = Some(2),
            |s: &mut TaskClusterStatus| s.conditions[0].status = "False".into(),
        ] {
            let mut other = busier.clone();
            change(&mut other);
            assert_eq!(Change::between(Some(&written), &other), Change::Other, "{other:?}");
        }
    }

    #[test]
    fn the_autoscalers_holds_wait_like_counters_but_its_scales_do_not() {
        let held = |reason: &str, desired: i32| TaskClusterStatus {
            autoscaling: Some(AutoscalingStatus {
                desired,
                reason: reason.into(),
                message: format!("backlog {desired}"),
                last_scale_time: None,
            }),
            ..TaskClusterStatus::default()
        };
        let at_target = held("AtTarget", 4);
        assert_eq!(Change::between(Some(&at_target), &held("Stabilizing", 4)), Change::Counters);
        assert_eq!(Change::between(Some(&at_target), &held("BusyWorkers", 4)), Change::Counters);
        for other in [held("ScaledUp", 5), held("NoReading", 4), held("CountersNotFresh", 4), held("AtTarget", 5)] {
            assert_eq!(Change::between(Some(&at_target), &other), Change::Other, "{other:?}");
        }
    }

    #[test]
    fn long_messages_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        let clipped = clip("é".repeat(10), 8);
        assert!(clipped.len() <= 8, "{clipped}");
        assert_eq!(clipped, "éé…");
    }

    #[test]
    fn an_invalid_spec_says_why_and_that_the_old_one_keeps_running() {
        let tc = fixtures::example();
        let err = SpecError::EnsembleSize(2);
        let reading = ZkReading::Skipped;
        let obs = Observation {
            spec_error: Some(&err),
            masters: None,
            workers: None,
            zookeeper: None,
            reading: &reading,
            apply_failures: &[],
            members: None,
        };
        let s = compute(&tc, None, &obs, at(100));
        let ready = cond(&s, READY);
        assert_eq!(ready.reason, "InvalidEnsembleSize");
        assert!(ready.message.ends_with("the last valid spec keeps running"));
        assert_eq!(cond(&s, DEGRADED).reason, "InvalidSpec");
    }

    #[test]
    fn while_the_ensemble_grows_its_majority_is_the_committed_ones() {
        let tc = fixtures::example();
        let (m, w, z, reading) = (deployment(2, 2), deployment(3, 3), sts(1), led_by("demo-master-x"));
        let members = Members { version: 1, voters: [1].into() };
        let obs = Observation {
            spec_error: None,
            masters: Some(&m),
            workers: Some(&w),
            zookeeper: Some(&z),
            reading: &reading,
            apply_failures: &[],
            members: Some(&members),
        };
        let s = compute(&tc, None, &obs, at(100));
        assert_eq!(s.zookeeper, ZooKeeperStatus { replicas: 3, ready_replicas: 1, quorum: true, members: Some(1) });
        let ready = cond(&s, ZOOKEEPER_READY);
        assert_eq!(ready.status, "True", "one of one member serves: {}", ready.message);
        assert!(ready.message.ends_with("resizing from 1 to 3 members"), "{}", ready.message);
        // Unread at the next reconcile: the last membership stays.
        let unread = Observation { members: None, ..obs };
        assert_eq!(compute(&tc, Some(&s), &unread, at(101)).zookeeper.members, Some(1));
    }
}
