//! A worker: registers under `/workers`, executes what the leader writes into its znode.

pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{
    AddWatchMode, Client, CreateMode, Error as ZkError, EventType, MultiWriteError, PersistentWatcher, SessionState,
    WatchedEvent,
};

use crate::connect::{self, ConnectError, ZkTarget};
use crate::paths;
use crate::records::{self, Attempts};
use crate::retry::{is_transient, is_transient_multi, retrying};
use crate::telemetry::http::Probes;
use crate::telemetry::metrics::WorkerMetrics;
use handler::{Handler, TaskInput};

pub struct WorkerContext {
    pub id: String,
    pub target: ZkTarget,
    pub handler: Handler,
    pub grace_period: Duration,
    pub metrics: WorkerMetrics,
    pub probes: Arc<Probes>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("invalid worker id {0:?}: it must be a znode name (no '/', not empty)")]
    BadId(String),
}

#[derive(Debug, PartialEq, Eq)]
enum WorkerEnd {
    Shutdown,
    /// Session gone or our znode vanished: register again with a new session.
    Reregister,
}

/// Runs until `shutdown`, registering again whenever the session is lost.
pub async fn run(ctx: &WorkerContext, shutdown: &CancellationToken) -> Result<(), WorkerError> {
    ctx.target.validate()?;
    if !paths::is_valid_name(&ctx.id) {
        return Err(WorkerError::BadId(ctx.id.clone()));
    }
    while let Some(client) = ctx.target.connect_until_up(shutdown).await? {
        let end = match register(&client, ctx, shutdown).await {
            Ok(true) => {
                ctx.probes.set_ready(true);
                ctx.metrics.registrations.inc();
                tracing::info!(id = %ctx.id, session = %client.session_id(), "registered");
                let end = serve(&client, ctx, shutdown).await;
                ctx.probes.set_ready(false);
                end
            },
            Ok(false) => WorkerEnd::Shutdown,
            Err(error) => {
                tracing::warn!(%error, "cannot register; retrying with a new session");
                WorkerEnd::Reregister
            },
        };
        if end == WorkerEnd::Shutdown {
            // Deregister explicitly, then close: the leader sees us leave at once.
            match client.delete(&paths::worker(&ctx.id), None).await {
                Ok(()) | Err(ZkError::NoNode) => tracing::info!("deregistered"),
                Err(error) => tracing::warn!(%error, "cannot deregister; the session close removes us"),
            }
            connect::close(client).await;
            break;
        }
        connect::close(client).await;
    }
    Ok(())
}

/// Creates our ephemeral znode. A znode left by our previous session (a restart within the
/// session timeout) is waited out. Returns false on shutdown.
async fn register(client: &Client, ctx: &WorkerContext, shutdown: &CancellationToken) -> Result<bool, ZkError> {
    let path = paths::worker(&ctx.id);
    let options = CreateMode::Ephemeral.with_acls(ctx.target.acls());
    loop {
        match client.create(&path, b"", &options).await {
            Ok(_) => return Ok(true),
            Err(ZkError::NodeExists) => {},
            Err(error) => return Err(error),
        }
        let (stat, watcher) = client.check_and_watch_stat(&path).await?;
        match stat {
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => return Ok(true),
            Some(stat) => {
                tracing::warn!(owner = stat.ephemeral_owner, "{path} is held by another session; waiting for it to go");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = watcher.changed() => {},
                    _ = tokio::time::sleep(ctx.target.session_timeout * 2) => {},
                }
            },
            None => {},
        }
    }
}

/// What a change on our znode's persistent watch means to us.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// The data changed: a new assignment, or one withdrawn.
    Data,
    /// The znode or the session is gone: register again.
    Gone,
    /// Back after a disconnection: the watch must be added again.
    Reconnected,
    /// Nothing that concerns us (a disconnection in progress).
    Nothing,
}

fn classify(event: &WatchedEvent) -> Change {
    match event.event_type {
        EventType::NodeDataChanged => Change::Data,
        EventType::NodeDeleted => Change::Gone,
        EventType::Session if event.session_state.is_terminated() => Change::Gone,
        EventType::Session if event.session_state == SessionState::SyncConnected => Change::Reconnected,
        _ => Change::Nothing,
    }
}

/// Safety net under the watch: an idle worker re-reads its znode this often anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// One persistent watch on our znode (added again after every reconnection, as
/// zookeeper-client 0.11 does not restore persistent watches) tells us about assignments.
/// After our own completion we know the znode is empty, so we wait without reading: one read
/// per task fewer than re-arming a one-shot watch.
async fn serve(client: &Client, ctx: &WorkerContext, shutdown: &CancellationToken) -> WorkerEnd {
    let me = paths::worker(&ctx.id);
    let Some(mut watch) = watch_own(client, &me).await else { return WorkerEnd::Reregister };
    let mut known_free = false;
    loop {
        if shutdown.is_cancelled() {
            return WorkerEnd::Shutdown;
        }
        if !known_free {
            let (data, stat) = match client.get_data(&me).await {
                Ok(read) => read,
                Err(ZkError::NoNode) => {
                    tracing::warn!("our registration vanished; registering again");
                    return WorkerEnd::Reregister;
                },
                Err(error) if client.state().is_terminated() => {
                    tracing::warn!(%error, "session ended");
                    return WorkerEnd::Reregister;
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot read our assignment");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                },
            };
            // Changes delivered before the read's reply are reflected in it: drop them, so
            // the next event is news.
            let mut reread = false;
            while let Some(event) = watch.changed().now_or_never() {
                match classify(&event) {
                    Change::Gone => return WorkerEnd::Reregister,
                    Change::Reconnected => {
                        let Some(fresh) = watch_own(client, &me).await else { return WorkerEnd::Reregister };
                        watch = fresh;
                        reread = true;
                    },
                    Change::Data | Change::Nothing => {},
                }
            }
            if reread {
                continue;
            }
            if !data.is_empty() && data != paths::DRAINING {
                match String::from_utf8(data) {
                    Ok(task) if paths::is_valid_name(&task) => {
                        match run_task(client, ctx, &task, stat.version, &mut watch, shutdown).await {
                            TaskEnd::Cleared => known_free = true,
                            TaskEnd::Unknown => {},
                            TaskEnd::Stop(end) => return end,
                        }
                    },
                    _ => {
                        tracing::warn!("ignoring an assignment that is not a task id; clearing it");
                        let _ = client.set_data(&me, b"", Some(stat.version)).await;
                    },
                }
                continue;
            }
        }
        let change = tokio::select! {
            _ = shutdown.cancelled() => return WorkerEnd::Shutdown,
            event = watch.changed() => classify(&event),
            _ = tokio::time::sleep(IDLE_RECHECK) => Change::Data,
        };
        match change {
            Change::Data => known_free = false,
            Change::Gone => return WorkerEnd::Reregister,
            Change::Reconnected => {
                let Some(fresh) = watch_own(client, &me).await else { return WorkerEnd::Reregister };
                watch = fresh;
                known_free = false;
            },
            Change::Nothing => {},
        }
    }
}

/// The persistent watch on our znode, added at the start and again after every reconnection
/// (zookeeper-client 0.11 does not restore it). None: register again.
async fn watch_own(client: &Client, me: &str) -> Option<PersistentWatcher> {
    match client.watch(me, AddWatchMode::Persistent).await {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(%error, "cannot watch our znode");
            None
        },
    }
}

/// How a task left our znode.
enum TaskEnd {
    /// We cleared it ourselves (result or failure written) and consumed that change's event.
    Cleared,
    /// Not known: read the znode again.
    Unknown,
    Stop(WorkerEnd),
}

/// Executes one assignment and reports it.
async fn run_task(
    client: &Client,
    ctx: &WorkerContext,
    task: &str,
    version: i32,
    watch: &mut PersistentWatcher,
    shutdown: &CancellationToken,
) -> TaskEnd {
    ctx.metrics.busy.set(1);
    let _idle = scopeguard(|| {
        ctx.metrics.busy.set(0);
    });
    let attempt = if ctx.handler.needs_attempt_number() { read_attempts(client, task).await.0.attempts + 1 } else { 1 };
    let outcome = match client.get_data(&paths::data(task)).await {
        Ok((payload, _)) => {
            let input = TaskInput { task, worker: &ctx.id, attempt, payload: &payload };
            let execution = ctx.handler.execute(&input);
            tokio::pin!(execution);
            loop {
                tokio::select! {
                    outcome = &mut execution => break outcome,
                    event = watch.changed() => match classify(&event) {
                        // Nobody but the leader writes our znode while we run: a withdrawal.
                        Change::Data | Change::Gone => {
                            ctx.metrics.count("abandoned");
                            tracing::warn!(%task, ?event.event_type, "assignment withdrawn while running; abandoned");
                            return if classify(&event) == Change::Gone { TaskEnd::Stop(WorkerEnd::Reregister) } else { TaskEnd::Unknown };
                        },
                        Change::Reconnected => match watch_own(client, &paths::worker(&ctx.id)).await {
                            Some(fresh) => *watch = fresh,
                            None => return TaskEnd::Stop(WorkerEnd::Reregister),
                        },
                        Change::Nothing => {},
                    },
                    _ = shutdown.cancelled() => {
                        tracing::info!(%task, grace = ?ctx.grace_period, "shutting down: finishing the current task");
                        tokio::select! {
                            outcome = &mut execution => break outcome,
                            _ = tokio::time::sleep(ctx.grace_period) => {
                                give_back(client, ctx, task, version).await;
                                return TaskEnd::Stop(WorkerEnd::Shutdown);
                            },
                        }
                    },
                }
            }
        },
        Err(ZkError::NoNode) => Err(format!("payload {} is missing", paths::data(task))),
        Err(error) => Err(format!("cannot read the payload: {error}")),
    };
    let cleared = match outcome {
        Ok(result) => complete(client, ctx, task, version, &result).await,
        Err(error) => fail(client, ctx, task, version, &error).await,
    };
    if !cleared {
        return TaskEnd::Unknown;
    }
    // The change our own write made was delivered before its reply: consume it, so that the
    // next event is news. Anything else, or nothing, means we read again.
    match watch.changed().now_or_never() {
        Some(event) if classify(&event) == Change::Data => TaskEnd::Cleared,
        Some(event) if classify(&event) == Change::Gone => TaskEnd::Stop(WorkerEnd::Reregister),
        other => {
            tracing::debug!(?other, "echo of our own write not queued; reading again");
            TaskEnd::Unknown
        },
    }
}

/// The seed's multi: the result into `/tasks/<id>` and our znode cleared, guarded by the
/// assignment's version so a revoked assignment cannot complete. True when our znode was
/// cleared by a write whose reply came back on the first try (its change event is queued).
async fn complete(client: &Client, ctx: &WorkerContext, task: &str, version: i32, result: &[u8]) -> bool {
    let me = paths::worker(&ctx.id);
    let mut retried = false;
    loop {
        let mut writer = client.new_multi_writer();
        let added = writer
            .add_set_data(&paths::task(task), result, None)
            .and_then(|_| writer.add_set_data(&me, b"", Some(version)));
        if let Err(error) = added {
            tracing::error!(%error, %task, "cannot build the completion");
            return false;
        }
        return match writer.commit().await {
            Ok(_) => {
                ctx.metrics.count("succeeded");
                tracing::debug!(%task, "completed");
                !retried
            },
            Err(error) if is_transient_multi(&error) && !client.state().is_terminated() => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            },
            Err(MultiWriteError::OperationFailed { index: 0, source: ZkError::NoNode }) => {
                // The client gave up on the task (or retention removed it): just free ourselves.
                ctx.metrics.count("abandoned");
                tracing::warn!(%task, "task vanished before its result was written");
                client.set_data(&me, b"", Some(version)).await.is_ok() && !retried
            },
            Err(error) if retried && result_present(client, task).await => {
                // The attempt before the connection dropped went through.
                tracing::debug!(%error, %task, "completed (confirmed after reconnecting)");
                ctx.metrics.count("succeeded");
                false
            },
            Err(error) => {
                ctx.metrics.count("abandoned");
                tracing::warn!(%error, %task, "result not accepted (assignment withdrawn or session lost)");
                false
            },
        };
    }
}

async fn result_present(client: &Client, task: &str) -> bool {
    let read = retrying(client, is_transient, || client.get_data(&paths::task(task))).await;
    matches!(read, Ok((data, _)) if !data.is_empty())
}

async fn read_attempts(client: &Client, task: &str) -> (Attempts, Option<i32>) {
    let path = paths::attempts(task);
    match client.get_data(&path).await {
        Ok((data, stat)) => (records::decode(&path, &data).unwrap_or_default(), Some(stat.version)),
        Err(_) => (Attempts::default(), None),
    }
}

/// Records a failed attempt and frees us in one multi; the leader, watching the attempts
/// records, then retries or dead-letters the task. True as for [`complete`].
async fn fail(client: &Client, ctx: &WorkerContext, task: &str, version: i32, error: &str) -> bool {
    ctx.metrics.count("failed");
    tracing::warn!(%task, %error, "task failed");
    let note = |record: &mut Attempts| {
        record.attempts += 1;
        record.last_error = format!("worker {}: {error}", ctx.id);
    };
    match release(client, ctx, task, version, b"", note).await {
        Ok(retried) => !retried,
        Err(error) => {
            tracing::warn!(%error, %task, "cannot record the failure (assignment withdrawn or session lost)");
            false
        },
    }
}

/// Hands the task back without spending an attempt: our znode says "draining", which the
/// leader reads as "this worker no longer holds the task and takes no new one"; the attempts
/// record notes the give-back, which is how the leader hears of it.
async fn give_back(client: &Client, ctx: &WorkerContext, task: &str, version: i32) {
    match release(client, ctx, task, version, paths::DRAINING, |record| record.given_back += 1).await {
        Ok(_) => {
            ctx.metrics.count("given_back");
            tracing::info!(%task, "grace period over: task given back");
        },
        Err(error) => tracing::warn!(%error, %task, "cannot give the task back; the leader retries it when we leave"),
    }
}

/// In one multi: updates the task's attempts record with `note` and sets our znode to
/// `mark` at the assignment's version. Returns whether a connection loss made it retry.
async fn release(
    client: &Client,
    ctx: &WorkerContext,
    task: &str,
    version: i32,
    mark: &[u8],
    note: impl Fn(&mut Attempts),
) -> Result<bool, String> {
    let me = paths::worker(&ctx.id);
    let path = paths::attempts(task);
    let options = CreateMode::Persistent.with_acls(ctx.target.acls());
    let mut retried = false;
    for _ in 0..5 {
        let (mut record, record_version) = read_attempts(client, task).await;
        note(&mut record);
        let data = records::encode(&record);
        let mut writer = client.new_multi_writer();
        match record_version {
            Some(v) => writer.add_set_data(&path, &data, Some(v)),
            None => writer.add_create(&path, &data, &options),
        }
        .and_then(|_| writer.add_set_data(&me, mark, Some(version)))
        .map_err(|error| error.to_string())?;
        match writer.commit().await {
            Ok(_) => return Ok(retried),
            Err(error) if is_transient_multi(&error) && !client.state().is_terminated() => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            // Someone else wrote the record meanwhile: read it again.
            Err(MultiWriteError::OperationFailed { index: 0, .. }) => continue,
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("the attempts record kept changing".to_string())
}

/// Runs `f` when dropped.
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}
