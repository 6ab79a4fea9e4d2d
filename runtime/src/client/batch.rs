//! Group commit of a client's writes: submissions (create `/data/<id>` and `/tasks/<id>`) and
//! collections (delete both) that queue up while one multi is in flight go out together in
//! the next multi — one ZooKeeper transaction for many tasks under load, no added latency
//! when idle. A multi that fails is replayed op by op, so one bad op never fails the others.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::session::{CallError, Session};
use crate::paths;
use crate::retry::is_transient;

/// Writes per multi, and payload bytes per multi (a request must stay below 1 MB).
const MAX_TASKS: usize = 64;
const MAX_BYTES: usize = 512 * 1024;

pub enum Write {
    /// Create the task; replies whether it was created (false: the id was taken).
    Submit { id: String, payload: Vec<u8>, reply: oneshot::Sender<Result<bool, CallError>> },
    /// Delete the task's znodes; missing ones are fine.
    Collect { id: String, reply: oneshot::Sender<Result<(), CallError>> },
}

impl Write {
    fn bytes(&self) -> usize {
        match self {
            Write::Submit { payload, .. } => payload.len() + 128,
            Write::Collect { .. } => 128,
        }
    }
}

/// Starts the committer; it ends when every sender is dropped.
pub fn start(session: Arc<Session>, acls: Acls<'static>) -> mpsc::UnboundedSender<Write> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(commit_loop(session, acls, receiver));
    sender
}

async fn commit_loop(session: Arc<Session>, acls: Acls<'static>, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut carried = None;
    while let Some(batch) = gather(&mut queue, &mut carried, MAX_TASKS, MAX_BYTES, Write::bytes).await {
        commit(&session, acls, batch).await;
    }
}

/// The next group: the first item to arrive (or the one carried over), then whatever is
/// already queued, up to `max_items` and `max_bytes`; an item that would overflow is carried
/// into the next group. None when every sender is gone.
pub(super) async fn gather<T>(
    queue: &mut mpsc::UnboundedReceiver<T>,
    carried: &mut Option<T>,
    max_items: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = match carried.take() {
        Some(item) => item,
        None => queue.recv().await?,
    };
    let mut total = bytes(&first);
    let mut group = vec![first];
    while group.len() < max_items {
        let Ok(item) = queue.try_recv() else { break };
        if total + bytes(&item) > max_bytes {
            *carried = Some(item);
            break;
        }
        total += bytes(&item);
        group.push(item);
    }
    Some(group)
}

async fn commit(session: &Session, acls: Acls<'static>, batch: Vec<Write>) {
    let options = CreateMode::Persistent.with_acls(acls);
    if batch.len() > 1 {
        let client = session.client();
        match multi(&client, &options, &batch).await {
            Ok(()) => {
                for write in batch {
                    match write {
                        Write::Submit { reply, .. } => drop(reply.send(Ok(true))),
                        Write::Collect { reply, .. } => drop(reply.send(Ok(()))),
                    }
                }
                return;
            },
            // Replay op by op; after a lost reply the multi may have gone through.
            Err(error) => {
                let in_doubt = is_transient(&error) || client.state().is_terminated();
                replay(session, &options, batch, in_doubt).await;
                return;
            },
        }
    }
    replay(session, &options, batch, false).await;
}

async fn multi(client: &Client, options: &zookeeper_client::CreateOptions<'_>, batch: &[Write]) -> Result<(), ZkError> {
    let mut writer = client.new_multi_writer();
    for write in batch {
        match write {
            Write::Submit { id, payload, .. } => {
                writer.add_create(&paths::data(id), payload, options)?;
                writer.add_create(&paths::task(id), b"", options)?;
            },
            Write::Collect { id, .. } => {
                writer.add_delete(&paths::task(id), None)?;
                writer.add_delete(&paths::data(id), None)?;
            },
        }
    }
    writer.commit().await.map(|_| ()).map_err(ZkError::from)
}

async fn replay(session: &Session, options: &zookeeper_client::CreateOptions<'_>, batch: Vec<Write>, in_doubt: bool) {
    let singles = batch.into_iter().map(|write| async move {
        match write {
            Write::Submit { id, payload, reply } => {
                let _ = reply.send(create_one(session, options, &id, &payload, in_doubt).await);
            },
            Write::Collect { id, reply } => {
                let _ = reply.send(delete_one(session, &id).await);
            },
        }
    });
    futures::future::join_all(singles).await;
}

/// Creates one task. NodeExists after an attempt whose reply was lost is our own success if
/// the task znode is there.
async fn create_one(
    session: &Session,
    options: &zookeeper_client::CreateOptions<'_>,
    id: &str,
    payload: &[u8],
    in_doubt: bool,
) -> Result<bool, CallError> {
    let (data_path, task_path) = (paths::data(id), paths::task(id));
    session
        .call(|client, retried| {
            let (data_path, task_path) = (&data_path, &task_path);
            async move {
                let mut writer = client.new_multi_writer();
                writer.add_create(data_path, payload, options)?;
                writer.add_create(task_path, b"", options)?;
                match writer.commit().await.map_err(ZkError::from) {
                    Ok(_) => Ok(true),
                    Err(ZkError::NodeExists) if retried || in_doubt => {
                        Ok(client.check_stat(task_path).await?.is_some())
                    },
                    Err(ZkError::NodeExists) => Ok(false),
                    Err(other) => Err(other),
                }
            }
        })
        .await
}

/// Deletes `/tasks/<id>` and `/data/<id>`; what is already gone is fine.
async fn delete_one(session: &Session, id: &str) -> Result<(), CallError> {
    let (task, data) = (paths::task(id), paths::data(id));
    session
        .call(|client, _| {
            let (task, data) = (&task, &data);
            async move {
                let mut writer = client.new_multi_writer();
                writer.add_delete(task, None)?;
                writer.add_delete(data, None)?;
                match writer.commit().await.map_err(ZkError::from) {
                    Ok(_) => Ok(()),
                    // One is gone already (a foreign layout, or a retry): delete what is left.
                    Err(ZkError::NoNode) => {
                        for path in [task, data] {
                            match client.delete(path, None).await {
                                Ok(()) | Err(ZkError::NoNode) => {},
                                Err(other) => return Err(other),
                            }
                        }
                        Ok(())
                    },
                    Err(other) => Err(other),
                }
            }
        })
        .await
}
