//! Resizing a running ZooKeeper ensemble (pure): what the servers' committed configuration
//! says, how many pods and which initial members follow from it, and the next reconfig.
//!
//! The order is what keeps it safe. Growing: the StatefulSet gets the new pods first; each
//! starts knowing only the committed members plus itself, so it follows the leader without a
//! vote and joiners can never elect each other; then one `reconfig` adds them all. Shrinking:
//! one `reconfig` removes the highest ids while their pods still run, and only once that is
//! committed does the StatefulSet lose them. ZooKeeper commits a change only when a majority of
//! the new membership is in sync, so a joiner that is not up yet fails the step and it is tried
//! again.

use std::collections::BTreeSet;

/// The membership of the ensemble, as `/zookeeper/config` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The configuration's version; a reconfig names it so that it applies to this one only.
    pub version: i64,
    /// Server ids (ordinal + 1) of the voting members.
    pub voters: BTreeSet<i32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("/zookeeper/config has no version line")]
    NoVersion,
    #[error("/zookeeper/config has an unreadable line: {0:?}")]
    Line(String),
}

impl Members {
    /// Reads `server.N=host:peer:election[:role];client` lines and `version=<hex>`; observers
    /// do not vote and are not members here.
    pub fn parse(config: &[u8]) -> Result<Self, ParseError> {
        let text = String::from_utf8_lossy(config);
        let mut version = None;
        let mut voters = BTreeSet::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let bad = || ParseError::Line(line.chars().take(200).collect());
            let (key, value) = line.split_once('=').ok_or_else(bad)?;
            if key == "version" {
                version = Some(i64::from_str_radix(value.trim(), 16).map_err(|_| bad())?);
            } else if let Some(id) = key.strip_prefix("server.") {
                let id: i32 = id.parse().map_err(|_| bad())?;
                let address = value.split(';').next().unwrap_or_default();
                if address.split(':').nth(3) != Some("observer") {
                    voters.insert(id);
                }
            }
        }
        Ok(Self { version: version.ok_or(ParseError::NoVersion)?, voters })
    }
}

/// What the ensemble's children must say while it is being resized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// Pods of the StatefulSet.
    pub replicas: i32,
    /// The members a server starts from when it has no configuration of its own: never a
    /// server that is not a committed member (two such servers could elect each other).
    pub members: BTreeSet<i32>,
}

/// What is known of a running ensemble.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Running {
    /// Pods of the StatefulSet, if it exists.
    pub replicas: Option<i32>,
    /// The committed membership, read from the servers this reconcile.
    pub members: Option<Members>,
    /// The members the last reconcile wrote to the ConfigMap (its annotation).
    pub last_members: Option<BTreeSet<i32>>,
}

/// The pods and initial members for a desired size of `desired` servers.
pub fn sizing(desired: i32, running: &Running) -> Sizing {
    let members = match (&running.members, &running.last_members, running.replicas) {
        (Some(read), _, _) => read.voters.clone(),
        // Unreadable now: the last members written are still the safest known.
        (None, Some(last), _) => last.clone(),
        // Written by a release before dynamic membership: every server was a member.
        (None, None, Some(replicas)) => (1..=replicas).collect(),
        (None, None, None) => (1..=desired).collect(),
    };
    let replicas = match (&running.members, running.replicas) {
        // Removed servers keep their pods until the removal is committed.
        (Some(read), _) => desired.max(read.voters.last().copied().unwrap_or(0)),
        // Nothing to go by: the size stays as it is.
        (None, Some(replicas)) => replicas,
        (None, None) => desired,
    };
    Sizing { replicas, members }
}

/// The next reconfig towards `desired` servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Steady,
    /// Add these ids (their pods run or are starting).
    Add(Vec<i32>),
    /// Remove these ids (their pods still run).
    Remove(Vec<i32>),
}

pub fn next_step(desired: i32, members: &Members) -> Step {
    let wanted: BTreeSet<i32> = (1..=desired).collect();
    let leaving: Vec<i32> = members.voters.difference(&wanted).copied().collect();
    let joining: Vec<i32> = wanted.difference(&members.voters).copied().collect();
    // An ensemble cannot lose its last voter: then the joiners go first.
    if !leaving.is_empty() && leaving.len() < members.voters.len() {
        Step::Remove(leaving)
    } else if !joining.is_empty() {
        Step::Add(joining)
    } else {
        Step::Steady
    }
}

/// `1,2,3`: the ConfigMap annotation's form.
pub fn format_ids(ids: &BTreeSet<i32>) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub fn parse_ids(text: &str) -> Option<BTreeSet<i32>> {
    let ids: Option<BTreeSet<i32>> = text.split(',').map(|id| id.trim().parse().ok().filter(|id| *id > 0)).collect();
    ids.filter(|ids| !ids.is_empty())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn members(ids: &[i32]) -> Members {
        Members { version: 0x1_0000_0003, voters: ids.iter().copied().collect() }
    }

    #[test]
    fn reads_what_zookeeper_writes() {
        let config = b"server.1=demo-zookeeper-0.h.ns.svc.cluster.local:2888:3888:participant;0.0.0.0:2181\n\
                       server.2=demo-zookeeper-1.h.ns.svc.cluster.local:2888:3888:participant;0.0.0.0:2181\n\
                       server.4=x:2888:3888:observer;2181\n\
                       version=100000003";
        assert_eq!(Members::parse(config), Ok(members(&[1, 2])));
        assert_eq!(Members::parse(b"server.1=x:1:2"), Err(ParseError::NoVersion));
        assert!(matches!(Members::parse(b"server.x=y\nversion=0"), Err(ParseError::Line(_))));
        assert!(matches!(Members::parse(b"garbage\nversion=0"), Err(ParseError::Line(_))));
    }

    #[test]
    fn growing_adds_pods_first_and_starts_them_from_the_committed_members() {
        let running = Running { replicas: Some(1), members: Some(members(&[1])), last_members: None };
        let sizing = sizing(3, &running);
        assert_eq!(sizing, Sizing { replicas: 3, members: [1].into() });
        assert_eq!(next_step(3, running.members.as_ref().unwrap()), Step::Add(vec![2, 3]));
    }

    #[test]
    fn shrinking_removes_members_first_and_pods_only_once_committed() {
        let before = Running { replicas: Some(5), members: Some(members(&[1, 2, 3, 4, 5])), last_members: None };
        assert_eq!(sizing(3, &before).replicas, 5, "the pods stay while their servers are members");
        assert_eq!(next_step(3, before.members.as_ref().unwrap()), Step::Remove(vec![4, 5]));
        let after = Running { replicas: Some(5), members: Some(members(&[1, 2, 3])), ..before };
        assert_eq!(sizing(3, &after), Sizing { replicas: 3, members: [1, 2, 3].into() });
        assert_eq!(next_step(3, after.members.as_ref().unwrap()), Step::Steady);
    }

    #[test]
    fn an_unreadable_ensemble_keeps_its_size_and_its_last_members() {
        let running = Running { replicas: Some(3), members: None, last_members: Some([1].into()) };
        assert_eq!(sizing(5, &running), Sizing { replicas: 3, members: [1].into() });
        let older = Running { replicas: Some(3), members: None, last_members: None };
        assert_eq!(sizing(1, &older), Sizing { replicas: 3, members: [1, 2, 3].into() });
        assert_eq!(sizing(3, &Running::default()), Sizing { replicas: 3, members: [1, 2, 3].into() });
    }

    #[test]
    fn ids_round_trip_and_garbage_reads_as_unknown() {
        assert_eq!(parse_ids(&format_ids(&[1, 2, 3].into())), Some([1, 2, 3].into()));
        for bad in ["", "a", "1,,2", "0", "-1"] {
            assert_eq!(parse_ids(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Whatever the membership and the size asked for: a server that is to be removed
        /// keeps its pod, every member has a pod, the initial members are committed ones, and
        /// following the steps reaches the size asked for.
        #[test]
        fn steps_reach_the_size_and_never_drop_a_members_pod(
            voters in proptest::collection::btree_set(1..=5i32, 1..=5),
            desired in prop_oneof![Just(1), Just(3), Just(5)],
        ) {
            let mut current = Members { version: 1, voters };
            for _ in 0..3 {
                let running = Running { replicas: Some(5), members: Some(current.clone()), last_members: None };
                let sizing = sizing(desired, &running);
                prop_assert!(current.voters.iter().all(|id| *id <= sizing.replicas), "a member without a pod");
                prop_assert_eq!(&sizing.members, &current.voters);
                match next_step(desired, &current) {
                    Step::Steady => break,
                    Step::Add(ids) => {
                        prop_assert!(ids.iter().all(|id| *id <= sizing.replicas), "a joiner without a pod");
                        current.voters.extend(ids);
                    },
                    Step::Remove(ids) => current.voters.retain(|id| !ids.contains(id)),
                }
                current.version += 1;
            }
            prop_assert_eq!(current.voters, (1..=desired).collect::<BTreeSet<_>>());
        }
    }
}
