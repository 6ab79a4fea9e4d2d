//! The cluster's state in one call: what `taskcluster status` prints and the operator
//! copies into the TaskCluster status.

use serde::{Deserialize, Serialize};
use zookeeper_client::{Client, Error as ZkError};

use crate::paths;
use crate::records::{self, ContenderRecord, LeaderRecord, StatusRecord};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leading master, if any contender exists.
    pub leader: Option<LeaderInfo>,
    /// Rises by one per takeover.
    pub epoch: u64,
    /// Tasks waiting for a worker.
    pub backlog: u64,
    /// Tasks assigned to a worker and not finished.
    pub running: u64,
    pub workers_registered: u64,
    /// Busy workers; like `backlog` and `running`, 0 unless `counters_fresh`.
    pub workers_busy: u64,
    /// Whether `backlog`, `running` and `workers_busy` were published by the current leader.
    /// Right after a takeover they are not yet, and read as 0: not a sign of an idle
    /// cluster, so nothing may be decided from them (the operator's autoscaler holds).
    #[serde(default)]
    pub counters_fresh: bool,
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Children of `/tasks`: pending, running, and results not yet collected.
    pub tasks_in_tree: u64,
    /// Masters contending (leader included).
    pub masters: u64,
    /// When the leader last published its counters (ms since the Unix epoch); 0 if never.
    pub updated_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The master's id (its pod name in Kubernetes).
    pub id: String,
    /// When it took over (ms since the Unix epoch); 0 until it has published it.
    pub since_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "the task tree is missing ({0} does not exist): no master or worker has run against this ZooKeeper root yet"
    )]
    NotInitialised(&'static str),
    #[error("cannot read {path} from ZooKeeper: {source}")]
    Read { path: &'static str, source: ZkError },
}

fn read_err(path: &'static str) -> impl FnOnce(ZkError) -> StatusError {
    move |source| StatusError::Read { path, source }
}

async fn optional_data(client: &Client, path: &'static str) -> Result<Option<Vec<u8>>, StatusError> {
    match client.get_data(path).await {
        Ok((data, _)) => Ok(Some(data)),
        Err(ZkError::NoNode) => Ok(None),
        Err(source) => Err(StatusError::Read { path, source }),
    }
}

/// Reads leader, backlog and counters. Garbage in a record degrades that field to its
/// default rather than failing the whole call.
pub async fn read_status(client: &Client) -> Result<ClusterStatus, StatusError> {
    let (contenders, tasks, workers, leader_record, status_record) = tokio::join!(
        client.list_children(paths::MASTER),
        client.check_stat(paths::TASKS),
        client.check_stat(paths::WORKERS),
        optional_data(client, paths::LEADER),
        optional_data(client, paths::STATUS),
    );
    let mut contenders = match contenders {
        Err(ZkError::NoNode) => return Err(StatusError::NotInitialised(paths::MASTER)),
        other => other.map_err(read_err(paths::MASTER))?,
    };
    let tasks = tasks.map_err(read_err(paths::TASKS))?.ok_or(StatusError::NotInitialised(paths::TASKS))?;
    let workers = workers.map_err(read_err(paths::WORKERS))?.ok_or(StatusError::NotInitialised(paths::WORKERS))?;
    let leader_record: Option<LeaderRecord> =
        leader_record?.and_then(|data| records::decode(paths::LEADER, &data).ok());
    let counters: StatusRecord =
        status_record?.and_then(|data| records::decode(paths::STATUS, &data).ok()).unwrap_or_default();

    // A leader that leaves between the listing and the read of its znode: list again, so the
    // answer names its successor, not a znode that is gone.
    let mut leader = None;
    for attempt in 1..=3 {
        let Some(contender) = paths::lowest_contender(contenders.iter().map(String::as_str)) else { break };
        let id = contender_id(client, contender).await?;
        if id.is_none() && attempt < 3 {
            contenders = client.list_children(paths::MASTER).await.map_err(read_err(paths::MASTER))?;
            continue;
        }
        let since_ms = leader_record.as_ref().filter(|r| r.contender == contender).map_or(0, |r| r.since_ms);
        leader = Some(LeaderInfo { id: id.unwrap_or_else(|| contender.to_string()), since_ms });
        break;
    }
    // Counters describe the epoch that published them; a newer leader has not yet spoken.
    let fresh = leader_record.as_ref().is_some_and(|l| l.epoch == counters.epoch);
    Ok(ClusterStatus {
        epoch: leader_record.as_ref().map_or(0, |l| l.epoch),
        leader,
        backlog: if fresh { counters.backlog } else { 0 },
        running: if fresh { counters.running } else { 0 },
        workers_registered: workers.num_children as u64,
        workers_busy: if fresh { counters.workers_busy } else { 0 },
        counters_fresh: fresh,
        completed: counters.completed,
        failed: counters.failed,
        dead_lettered: counters.dead_lettered,
        tasks_in_tree: tasks.num_children as u64,
        masters: contenders.iter().filter(|c| paths::is_contender(c)).count() as u64,
        updated_ms: counters.updated_ms,
    })
}

/// The master id a contender znode holds (its name if the record is unreadable), or None if
/// the znode is gone.
async fn contender_id(client: &Client, contender: &str) -> Result<Option<String>, StatusError> {
    let path = format!("{}/{contender}", paths::MASTER);
    match client.get_data(&path).await {
        Ok((data, _)) => Ok(Some(
            records::decode::<ContenderRecord>(&path, &data).map(|c| c.id).unwrap_or_else(|_| contender.to_string()),
        )),
        Err(ZkError::NoNode) => Ok(None),
        Err(source) => Err(StatusError::Read { path: paths::MASTER, source }),
    }
}
