//! A worker: registers under `/workers`, executes what the leader writes into its znode.

pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client::{Client, CreateMode, Error as ZkError, EventType, MultiWriteError, OneshotWatcher};

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

async fn serve(client: &Client, ctx: &WorkerContext, shutdown: &CancellationToken) -> WorkerEnd {
    let me = paths::worker(&ctx.id);
    loop {
        if shutdown.is_cancelled() {
            return WorkerEnd::Shutdown;
        }
        let (data, stat, watcher) = match client.get_and_watch_data(&me).await {
            Ok(read) => read,
            Err(ZkError::NoNode) => {
                tracing::warn!("our registration vanished; registering again");
                return WorkerEnd::Reregister;
            },
            Err(error) => {
                tracing::warn!(%error, "cannot read our assignment");
                if matches!(error, ZkError::SessionExpired | ZkError::ClientClosed) {
                    return WorkerEnd::Reregister;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            },
        };
        if data.is_empty() || data == paths::DRAINING {
            tokio::select! {
                _ = shutdown.cancelled() => return WorkerEnd::Shutdown,
                event = watcher.changed() => {
                    if event.event_type == EventType::Session && event.session_state.is_terminated() {
                        return WorkerEnd::Reregister;
                    }
                },
            }
            continue;
        }
        let task = match String::from_utf8(data) {
            Ok(task) if paths::is_valid_name(&task) => task,
            _ => {
                tracing::warn!("ignoring an assignment that is not a task id; clearing it");
                let _ = client.set_data(&me, b"", Some(stat.version)).await;
                continue;
            },
        };
        if let Some(end) = run_task(client, ctx, &task, stat.version, watcher, shutdown).await {
            return end;
        }
    }
}

/// Executes one assignment and reports it. Returns Some when the worker must stop serving.
async fn run_task(
    client: &Client,
    ctx: &WorkerContext,
    task: &str,
    version: i32,
    assignment_changed: OneshotWatcher,
    shutdown: &CancellationToken,
) -> Option<WorkerEnd> {
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
            let revoked = assignment_changed.changed();
            tokio::pin!(revoked);
            tokio::select! {
                outcome = &mut execution => outcome,
                event = &mut revoked => {
                    ctx.metrics.count("abandoned");
                    tracing::warn!(%task, ?event.event_type, "assignment withdrawn while running; abandoned");
                    return (event.event_type == EventType::Session).then_some(WorkerEnd::Reregister);
                },
                _ = shutdown.cancelled() => {
                    tracing::info!(%task, grace = ?ctx.grace_period, "shutting down: finishing the current task");
                    tokio::select! {
                        outcome = &mut execution => outcome,
                        _ = tokio::time::sleep(ctx.grace_period) => {
                            give_back(client, ctx, task, version).await;
                            return Some(WorkerEnd::Shutdown);
                        },
                    }
                },
            }
        },
        Err(ZkError::NoNode) => Err(format!("payload {} is missing", paths::data(task))),
        Err(error) => Err(format!("cannot read the payload: {error}")),
    };
    match outcome {
        Ok(result) => complete(client, ctx, task, version, &result).await,
        Err(error) => fail(client, ctx, task, version, &error).await,
    }
    None
}

/// The seed's multi: the result into `/tasks/<id>` and our znode cleared, guarded by the
/// assignment's version so a revoked assignment cannot complete.
async fn complete(client: &Client, ctx: &WorkerContext, task: &str, version: i32, result: &[u8]) {
    let me = paths::worker(&ctx.id);
    let mut retried = false;
    loop {
        let mut writer = client.new_multi_writer();
        let added = writer
            .add_set_data(&paths::task(task), result, None)
            .and_then(|_| writer.add_set_data(&me, b"", Some(version)));
        if let Err(error) = added {
            tracing::error!(%error, %task, "cannot build the completion");
            return;
        }
        match writer.commit().await {
            Ok(_) => {
                ctx.metrics.count("succeeded");
                tracing::debug!(%task, "completed");
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
                let _ = client.set_data(&me, b"", Some(version)).await;
            },
            Err(error) if retried && result_present(client, task).await => {
                // The attempt before the connection dropped went through.
                tracing::debug!(%error, %task, "completed (confirmed after reconnecting)");
                ctx.metrics.count("succeeded");
            },
            Err(error) => {
                ctx.metrics.count("abandoned");
                tracing::warn!(%error, %task, "result not accepted (assignment withdrawn or session lost)");
            },
        }
        return;
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

/// Records a failed attempt and frees us in one multi; the leader then retries or
/// dead-letters the task.
async fn fail(client: &Client, ctx: &WorkerContext, task: &str, version: i32, error: &str) {
    ctx.metrics.count("failed");
    tracing::warn!(%task, %error, "task failed");
    let me = paths::worker(&ctx.id);
    let path = paths::attempts(task);
    let options = CreateMode::Persistent.with_acls(ctx.target.acls());
    for _ in 0..5 {
        let (mut record, record_version) = read_attempts(client, task).await;
        record.attempts += 1;
        record.last_error = format!("worker {}: {error}", ctx.id);
        let data = records::encode(&record);
        let mut writer = client.new_multi_writer();
        let added = match record_version {
            Some(v) => writer.add_set_data(&path, &data, Some(v)),
            None => writer.add_create(&path, &data, &options),
        }
        .and_then(|_| writer.add_set_data(&me, b"", Some(version)));
        if added.is_err() {
            break;
        }
        match writer.commit().await {
            Ok(_) => return,
            Err(error) if is_transient_multi(&error) && !client.state().is_terminated() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            // Someone else wrote the record meanwhile: read it again.
            Err(MultiWriteError::OperationFailed { index: 0, .. }) => continue,
            Err(error) => {
                tracing::warn!(%error, %task, "cannot record the failure (assignment withdrawn or session lost)");
                return;
            },
        }
    }
}

/// Hands the task back without counting an attempt: our znode says "draining", which the
/// leader reads as "this worker no longer holds the task and takes no new one".
async fn give_back(client: &Client, ctx: &WorkerContext, task: &str, version: i32) {
    match client.set_data(&paths::worker(&ctx.id), paths::DRAINING, Some(version)).await {
        Ok(_) => {
            ctx.metrics.count("given_back");
            tracing::info!(%task, "grace period over: task given back");
        },
        Err(error) => tracing::warn!(%error, %task, "cannot give the task back; the leader retries it when we leave"),
    }
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
