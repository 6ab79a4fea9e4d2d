//! The leader's fenced writes: every one is a multi whose first op checks the leader's own
//! election znode, so a master that lost leadership cannot change anything.

use std::future::Future;

use zookeeper_client::{Acls, CheckWriteError, CreateMode, Error as ZkError, MultiWriteResult, OwnedLockClient};

use super::board::{Assignment, Resolution, ReturnReason};
use crate::paths;
use crate::records::{self, Attempts, DeadLetter};

/// A write that did not go through.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// This master is no longer the leader (its election znode or session is gone).
    #[error("rejected: this master no longer leads ({0})")]
    Fenced(ZkError),
    /// The connection dropped: the write may or may not have been applied.
    #[error("outcome unknown, connection lost")]
    Unknown,
    /// A guard failed (version changed, node gone) at op `index` (0 = first op after the check).
    #[error("guard failed at op {index}: {source}")]
    Conflict { index: usize, source: ZkError },
    #[error("{0}")]
    Other(ZkError),
}

impl WriteError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, WriteError::Fenced(_))
    }
}

fn classify_zk(err: ZkError) -> WriteError {
    match err {
        ZkError::SessionExpired | ZkError::ClientClosed | ZkError::RuntimeInconsistent | ZkError::AuthFailed => {
            WriteError::Fenced(err)
        },
        ZkError::ConnectionLoss => WriteError::Unknown,
        other => WriteError::Other(other),
    }
}

pub fn classify(err: CheckWriteError) -> WriteError {
    match err {
        CheckWriteError::CheckFailed { source } => WriteError::Fenced(source),
        CheckWriteError::RequestFailed { source } => classify_zk(source),
        // Index 0 is the lock check; report positions among our own ops.
        CheckWriteError::OperationFailed { index, source } => {
            WriteError::Conflict { index: index.saturating_sub(1), source }
        },
    }
}

/// Writes a batch of assignments in one multi, each announced in the worker's inbox if it has
/// one. Returns each worker znode's new version and creation zxid (which registration of that
/// name the write landed on). The request is sent at the call, not at the
/// first poll: the leader's loop polls its pending writes only after the events at hand.
pub fn assign<'a>(
    lock: &'a OwnedLockClient,
    acls: Acls<'static>,
    batch: &[Assignment],
) -> impl Future<Output = Result<Vec<(i32, i64)>, WriteError>> + Send + 'a {
    let options = CreateMode::Persistent.with_acls(acls);
    let mut writer = lock.new_check_writer();
    let built = batch.iter().try_for_each(|a| {
        // -1: the task must exist, whatever its version.
        writer.add_check_version(&paths::task(&a.task), -1)?;
        writer.add_set_data(&paths::worker(&a.worker), a.task.as_bytes(), Some(a.version))?;
        match &a.inbox {
            Some(inbox) => writer.add_create(&paths::inbox_entry(inbox, &a.task), b"", &options).map(drop),
            None => Ok(()),
        }
    });
    let commit = built.map(|()| writer.commit());
    async move {
        let results = commit.map_err(WriteError::Other)?.await.map_err(classify)?;
        Ok(results
            .into_iter()
            .filter_map(|r| match r {
                MultiWriteResult::SetData { stat } => Some((stat.version, stat.czxid)),
                _ => None,
            })
            .collect())
    }
}

/// Reads the attempts record, counts a failed attempt when the worker could not, revokes a
/// timed-out assignment, and writes the dead letter after the last attempt; all in one multi.
pub async fn resolve(
    lock: &OwnedLockClient,
    acls: Acls<'static>,
    task: &str,
    reason: &ReturnReason,
    max_attempts: u32,
) -> Result<Resolution, WriteError> {
    let client = lock.client();
    let path = paths::attempts(task);
    let (mut record, version) = match client.get_data(&path).await {
        Ok((data, stat)) => {
            let record = records::decode::<Attempts>(&path, &data).unwrap_or_else(|error| {
                tracing::warn!(%error, "replacing unreadable attempts record");
                Attempts::default()
            });
            (record, Some(stat.version))
        },
        Err(ZkError::NoNode) => (Attempts::default(), None),
        Err(err) => return Err(classify_zk(err)),
    };
    let counts_failure = charge(reason, &mut record);
    if counts_failure {
        record.attempts += 1;
    }
    // A failure the worker recorded as permanent is not retried, whatever attempts are left.
    let mut dead = record.attempts >= max_attempts || record.permanent && record.attempts > 0;
    // The dead letter is written only into a task without a result, at the version read here,
    // so a result that landed meanwhile (a late worker's) is never overwritten.
    let (mut unfinished_at, mut finished, mut letter_at) = (None, false, None);
    if dead {
        match client.get_data(&paths::task(task)).await {
            Ok((data, stat)) if data.is_empty() => unfinished_at = Some(stat.version),
            Ok(_) | Err(ZkError::NoNode) => (dead, finished) = (false, true),
            Err(err) => return Err(classify_zk(err)),
        }
        // A dead letter left by an earlier task of the same id is replaced, not a conflict.
        letter_at = client.check_stat(&paths::deadletter(task)).await.map_err(classify_zk)?.map(|stat| stat.version);
    }
    let options = CreateMode::Persistent.with_acls(acls);
    let mut writer = lock.new_check_writer();
    let mut ops = 0;
    if counts_failure {
        let data = records::encode(&record);
        match version {
            Some(v) => writer.add_set_data(&path, &data, Some(v)),
            None => writer.add_create(&path, &data, &options),
        }
        .map_err(WriteError::Other)?;
        ops += 1;
    }
    let mut revoked_at = None;
    if let ReturnReason::TimedOut { worker, version, inbox } = reason {
        // Our worker (it has an inbox) is told with the withdrawal mark and clears it once its
        // run has stopped; a seed worker is just cleared.
        let cleared = if inbox.is_some() { paths::withdrawal(task) } else { Vec::new() };
        writer.add_set_data(&paths::worker(worker), &cleared, Some(*version)).map_err(WriteError::Other)?;
        revoked_at = Some((ops, worker.clone()));
        ops += 1;
        // An assignment that came without an entry (a seed-style master's, or one adopted at
        // a rebuild) has none to delete. The entry cannot go between this look and the multi
        // without the worker's znode changing too, which the version check above catches.
        if let Some(entry) = inbox.as_deref().map(|inbox| paths::inbox_entry(inbox, task)) {
            if client.check_stat(&entry).await.map_err(classify_zk)?.is_some() {
                writer.add_delete(&entry, None).map_err(WriteError::Other)?;
                ops += 1;
            }
        }
    }
    if let Some(task_version) = unfinished_at {
        let not_retried = if record.permanent { " (not retried: no retry can succeed)" } else { "" };
        let message = format!("dead-lettered after {} attempts{not_retried}: {}", record.attempts, record.last_error);
        writer
            .add_set_data(&paths::task(task), &records::failure_result(&message), Some(task_version))
            .map_err(WriteError::Other)?;
        let letter =
            DeadLetter { attempts: record.attempts, error: record.last_error.clone(), at_ms: records::now_ms() };
        let letter = records::encode(&letter);
        match letter_at {
            Some(version) => writer.add_set_data(&paths::deadletter(task), &letter, Some(version)),
            None => writer.add_create(&paths::deadletter(task), &letter, &options).map(drop),
        }
        .map_err(WriteError::Other)?;
        ops += 2;
    }
    let mut revoked = None;
    if ops > 0 {
        let results = writer.commit().await.map_err(classify)?;
        if let Some((index, worker)) = revoked_at {
            if let Some(MultiWriteResult::SetData { stat }) = results.get(index) {
                revoked = Some((worker, stat.version));
            }
        }
    }
    Ok(Resolution {
        attempts: record.attempts,
        counted_failure: counts_failure,
        dead_lettered: dead,
        revoked,
        finished,
    })
}

/// Whether `reason` costs the task an attempt; notes the error in the record when it does.
fn charge(reason: &ReturnReason, record: &mut Attempts) -> bool {
    let counted = charged(reason, record);
    if counted {
        // This failure, not an earlier one, decides whether a retry can help.
        record.permanent = false;
    }
    counted
}

fn charged(reason: &ReturnReason, record: &mut Attempts) -> bool {
    match reason {
        ReturnReason::Returned | ReturnReason::GivenBack => false,
        ReturnReason::WorkerDied { inbox, .. }
            if inbox.as_deref().and_then(|dir| paths::child_of(paths::INBOX, dir))
                == Some(record.given_back_by.as_str()) =>
        {
            // It gave the task back and left before the leader read the give-back.
            false
        },
        ReturnReason::WorkerDied { worker, .. } => {
            record.last_error = format!("worker {worker} died while running the task");
            true
        },
        ReturnReason::TimedOut { worker, .. } => {
            record.last_error = format!("timed out on worker {worker}");
            true
        },
    }
}

/// Deletes a task's znodes and records (retention, or records of a collected task). Missing
/// nodes are fine: the client may be collecting at the same time.
pub async fn delete_task_nodes(lock: &OwnedLockClient, task: &str, with_task: bool) -> Result<(), WriteError> {
    let mut paths_to_delete = Vec::with_capacity(4);
    if with_task {
        paths_to_delete.push(paths::task(task));
        paths_to_delete.push(paths::data(task));
    }
    paths_to_delete.push(paths::attempts(task));
    paths_to_delete.push(paths::deadletter(task));
    for path in paths_to_delete {
        delete_if_present(lock, &path).await?;
    }
    Ok(())
}

/// A fenced delete of `path`; a node already gone is fine.
async fn delete_if_present(lock: &OwnedLockClient, path: &str) -> Result<(), WriteError> {
    match lock.delete(path, None).await {
        Ok(()) | Err(ZkError::NoNode) => Ok(()),
        Err(err) => Err(classify_zk(err)),
    }
}

/// Removes the inboxes of registrations that are gone (a worker's inbox is named after its
/// session, which never registers again), entries first. Returns how many were removed.
pub async fn sweep_inboxes(lock: &OwnedLockClient) -> Result<usize, WriteError> {
    let client = lock.client();
    let mut removed = 0;
    for name in client.list_children(paths::INBOX).await.map_err(classify_zk)? {
        let Some((wid, session)) = paths::inbox_owner(&name) else { continue };
        match client.check_stat(&paths::worker(wid)).await.map_err(classify_zk)? {
            Some(stat) if stat.ephemeral_owner == session => continue,
            _ => {},
        }
        let dir = format!("{}/{name}", paths::INBOX);
        let entries = match client.list_children(&dir).await {
            Ok(entries) => entries,
            Err(ZkError::NoNode) => continue,
            Err(err) => return Err(classify_zk(err)),
        };
        for entry in entries {
            delete_if_present(lock, &paths::inbox_entry(&dir, &entry)).await?;
        }
        match lock.delete(&dir, None).await {
            Ok(()) => removed += 1,
            Err(ZkError::NoNode | ZkError::NotEmpty) => {},
            Err(err) => return Err(classify_zk(err)),
        }
    }
    Ok(removed)
}

/// Sets a record znode, creating it when missing. Returns the new version.
pub async fn put_record(
    lock: &OwnedLockClient,
    acls: Acls<'static>,
    path: &str,
    data: &[u8],
    expected_version: Option<i32>,
) -> Result<i32, WriteError> {
    match lock.set_data(path, data, expected_version).await {
        Ok(stat) => Ok(stat.version),
        Err(ZkError::NoNode) => {
            let options = CreateMode::Persistent.with_acls(acls);
            match lock.create(path, data, &options).await {
                Ok((stat, _)) => Ok(stat.version.max(0)),
                Err(err) => Err(classify_zk(err)),
            }
        },
        Err(err) => Err(classify_zk(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_seen_gone_after_giving_its_task_back_costs_no_attempt() {
        let died = |inbox: Option<&str>| ReturnReason::WorkerDied { worker: "w1".into(), inbox: inbox.map(Into::into) };
        let mut record = Attempts { given_back: 1, given_back_by: "w1@00000000000000aa".into(), ..Attempts::default() };
        assert!(!charge(&died(Some("/taskcluster/inbox/w1@00000000000000aa")), &mut record));
        assert_eq!(record.last_error, "");
        // Another registration of the same worker, or one without an inbox, died holding it.
        assert!(charge(&died(Some("/taskcluster/inbox/w1@00000000000000bb")), &mut record));
        assert!(record.last_error.contains("died"), "{record:?}");
        assert!(charge(&died(None), &mut Attempts::default()));
        assert!(!charge(&ReturnReason::GivenBack, &mut Attempts::default()));
        let timed_out = ReturnReason::TimedOut { worker: "w1".into(), version: 3, inbox: None };
        assert!(charge(&timed_out, &mut Attempts::default()));
    }
}
