//! A worker: registers under `/workers`, executes what the leader writes into its znode.

pub mod handler;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{
    AddWatchMode, Client, CreateMode, Error as ZkError, EventType, MultiWriteError, MultiWriter, OneshotWatcher,
    PersistentWatcher, SessionState, WatchedEvent,
};

use crate::connect::{self, ConnectError, ZkTarget};
use crate::paths;
use crate::records::{self, Attempts, TaskSettings};
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
        let dir = paths::inbox(&ctx.id, client.session_id().0);
        let end = match session(&client, ctx, &dir, shutdown).await {
            Ok(end) => end,
            Err(error) => {
                tracing::warn!(%error, "cannot register; retrying with a new session");
                WorkerEnd::Reregister
            },
        };
        if end == WorkerEnd::Shutdown {
            // Deregister explicitly, then close: the leader sees us leave at once. An inbox
            // still holding an entry is left to the leader, which removes departed workers'.
            deregister(&client, &ctx.id).await;
            let _ = client.delete(&dir, None).await;
            connect::close(client).await;
            break;
        }
        connect::close(client).await;
    }
    Ok(())
}

/// Deletes our registration, and only ours: a worker stopped while waiting for its id to be
/// free must not delete the registration of the session that holds it.
async fn deregister(client: &Client, id: &str) {
    let path = paths::worker(id);
    // An ephemeral znode of our live session stays ours until it is deleted, so the look
    // cannot be overtaken by another registration.
    let deleted = match client.check_stat(&path).await {
        Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => client.delete(&path, None).await,
        Ok(_) => return,
        Err(error) => Err(error),
    };
    match deleted {
        Ok(()) | Err(ZkError::NoNode) => tracing::info!("deregistered"),
        Err(error) => tracing::warn!(%error, "cannot deregister; the session close removes us"),
    }
}

/// One registration with the session of `client`, served until it ends.
async fn session(
    client: &Client,
    ctx: &WorkerContext,
    dir: &str,
    shutdown: &CancellationToken,
) -> Result<WorkerEnd, ZkError> {
    // Watch first: the inbox exists from the registration on, and nothing in it is missed.
    let watch = client.watch(dir, AddWatchMode::PersistentRecursive).await?;
    if !register(client, ctx, dir, shutdown).await? {
        return Ok(WorkerEnd::Shutdown);
    }
    ctx.probes.set_ready(true);
    ctx.metrics.registrations.inc();
    tracing::info!(id = %ctx.id, session = %client.session_id(), "registered");
    let mut inbox =
        Inbox { dir: dir.to_string(), watch, announced: VecDeque::new(), stuck_after: stuck_after(client).await };
    let end = serve(client, ctx, &mut inbox, shutdown).await;
    ctx.probes.set_ready(false);
    Ok(end)
}

/// How often a worker whose id is held by a live session tries to register again.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// Creates our ephemeral znode and, in the same multi, our inbox (see [`serve`]). A znode left
/// by our previous session (a restart within the session timeout) is waited out. Returns false
/// on shutdown.
async fn register(
    client: &Client,
    ctx: &WorkerContext,
    inbox: &str,
    shutdown: &CancellationToken,
) -> Result<bool, ZkError> {
    let path = paths::worker(&ctx.id);
    let ephemeral = CreateMode::Ephemeral.with_acls(ctx.target.acls());
    let persistent = CreateMode::Persistent.with_acls(ctx.target.acls());
    let mut warned = false;
    loop {
        let mut writer = client.new_multi_writer();
        writer.add_create(&path, b"", &ephemeral)?;
        writer.add_create(inbox, b"", &persistent)?;
        match writer.commit().await {
            Ok(_) => return Ok(true),
            Err(MultiWriteError::OperationFailed { index: 0, source: ZkError::NodeExists }) => {},
            Err(error) => return Err(error.into()),
        }
        let (stat, watcher) = client.check_and_watch_stat(&path).await?;
        match stat {
            // Our own multi went through before a connection loss hid its reply.
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => return Ok(true),
            Some(stat) => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        owner = format!("{:016x}", stat.ephemeral_owner),
                        "{path} is held by another live session: another worker runs with id {:?} (or our previous \
                         process, until its session expires); give each worker a unique --id. Waiting for it to go",
                        ctx.id
                    );
                }
                let deleted = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    event = watcher.changed() => event.event_type == EventType::NodeDeleted,
                    _ = tokio::time::sleep(ctx.target.session_timeout * 2) => false,
                };
                // The holder's assignments change its data and fire the watch too: retry at a
                // bounded rate unless it is gone.
                if !deleted {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(REGISTER_RETRY) => {},
                    }
                }
            },
            None => {},
        }
    }
}

/// What a change in our inbox means to us.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// An entry appeared: the leader assigned us this task.
    Assigned(String),
    /// An entry went: we finished the task, or the leader withdrew it.
    Withdrawn(String),
    /// The inbox or the session is gone: register again.
    Gone,
    /// Back after a disconnection: the watch must be added again.
    Reconnected,
    /// The connection is lost; the session may live on (or expire unheard).
    Disconnected,
    /// Nothing that concerns us (the inbox's own creation, a disconnection in progress).
    Nothing,
}

fn classify(inbox: &str, event: &WatchedEvent) -> Change {
    let entry = || paths::child_of(inbox, &event.path).map(str::to_string);
    match event.event_type {
        EventType::NodeCreated => entry().map_or(Change::Nothing, Change::Assigned),
        EventType::NodeDeleted if event.path == inbox => Change::Gone,
        EventType::NodeDeleted => entry().map_or(Change::Nothing, Change::Withdrawn),
        EventType::Session if event.session_state.is_terminated() => Change::Gone,
        EventType::Session if event.session_state == SessionState::SyncConnected => Change::Reconnected,
        EventType::Session if event.session_state == SessionState::Disconnected => Change::Disconnected,
        _ => Change::Nothing,
    }
}

/// How we know an assignment, which decides what guards our writes that end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Announced by an inbox entry, which exists exactly while the leader assigns us the task.
    Inbox,
    /// Read from our znode at this version (a leader that writes no inbox entries).
    Version(i32),
}

/// Our view of the inbox: the watch on it and the assignments announced but not yet started.
struct Inbox {
    dir: String,
    watch: PersistentWatcher,
    announced: VecDeque<String>,
    /// How long a run may last before we call it stuck (see [`stuck_after`]).
    stuck_after: Duration,
}

/// Twice the leader's task timeout, as published in `/taskcluster/config` when we registered:
/// our leader revokes a run at its timeout, and we stop a revoked run at once, so a run still
/// going at twice the timeout is stuck (or no leader has been there to revoke it). `/healthz`
/// then answers 503, and Kubernetes restarts us.
async fn stuck_after(client: &Client) -> Duration {
    let settings = match client.get_data(paths::CONFIG).await {
        Ok((data, _)) => records::decode::<TaskSettings>(paths::CONFIG, &data).unwrap_or_default(),
        Err(_) => TaskSettings::default(),
    };
    Duration::from_millis(settings.task_timeout_ms.saturating_mul(2))
}

impl Inbox {
    /// Applies one event. Err: register again.
    async fn apply(&mut self, client: &Client, event: WatchedEvent) -> Result<Change, WorkerEnd> {
        let change = classify(&self.dir, &event);
        match &change {
            Change::Assigned(task) => self.announced.push_back(task.clone()),
            Change::Withdrawn(task) => self.announced.retain(|t| t != task),
            Change::Gone => return Err(WorkerEnd::Reregister),
            Change::Reconnected => self.watch = watch_inbox(client, &self.dir).await.ok_or(WorkerEnd::Reregister)?,
            Change::Disconnected | Change::Nothing => {},
        }
        Ok(change)
    }

    /// Applies the events already delivered. Returns whether the session reconnected.
    async fn catch_up(&mut self, client: &Client) -> Result<bool, WorkerEnd> {
        let mut reconnected = false;
        while let Some(event) = self.watch.changed().now_or_never() {
            reconnected |= self.apply(client, event).await? == Change::Reconnected;
        }
        Ok(reconnected)
    }
}

/// Safety net under the watch: an idle worker re-reads its znode this often anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The leader announces each assignment with an entry `<inbox>/<task>`, created in the multi
/// that writes the task id into our znode (the seed's assignment). The persistent recursive
/// watch on the inbox thus tells us the task id with the notification, so we go straight to
/// the payload: one round trip per task fewer than reading our znode first. Our znode is still
/// read at the start, after a reconnection and when idle, which also serves a leader that
/// writes no inbox entries.
async fn serve(client: &Client, ctx: &WorkerContext, inbox: &mut Inbox, shutdown: &CancellationToken) -> WorkerEnd {
    let mut check = true;
    loop {
        if shutdown.is_cancelled() {
            drain(client, ctx, inbox).await;
            return WorkerEnd::Shutdown;
        }
        match inbox.catch_up(client).await {
            Ok(reconnected) => check |= reconnected,
            Err(end) => return end,
        }
        let next = match inbox.announced.pop_front() {
            Some(task) => Some((task, Guard::Inbox)),
            None if check => {
                check = false;
                match read_assignment(client, ctx, inbox).await {
                    Ok(Some(next)) => Some(next),
                    Ok(None) => continue,
                    Err(end) => return end,
                }
            },
            None => None,
        };
        if let Some((task, guard)) = next {
            match run_task(client, ctx, &task, guard, inbox, shutdown).await {
                TaskEnd::Cleared => {},
                TaskEnd::Unknown => check = true,
                TaskEnd::Stop(end) => return end,
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => continue,
            event = inbox.watch.changed() => match inbox.apply(client, event).await {
                Ok(Change::Reconnected) => check = true,
                Ok(_) => {},
                Err(end) => return end,
            },
            _ = tokio::time::sleep(IDLE_RECHECK) => check = true,
        }
    }
}

/// How long a stopping worker spends at most handing back what it holds.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// Told to stop between tasks: marks us draining, so that no assignment comes after, or, when
/// one came that we never started (announced, or written into our znode by a master that
/// writes no inbox entries), hands it back: no attempt is spent on a task we never ran.
async fn drain(client: &Client, ctx: &WorkerContext, inbox: &mut Inbox) {
    let me = paths::worker(&ctx.id);
    let handing_back = async {
        loop {
            let _ = inbox.catch_up(client).await;
            let (data, stat) = retrying(client, is_transient, || client.get_data(&me)).await?;
            if data.is_empty() {
                match client.set_data(&me, paths::DRAINING, Some(stat.version)).await {
                    // An assignment landed meanwhile: look again.
                    Err(ZkError::BadVersion) => continue,
                    other => return other.map(drop),
                }
            }
            let Some(task) = std::str::from_utf8(&data).ok().filter(|task| paths::is_valid_name(task)) else {
                // Draining already, or the withdrawal mark of a run that stopped: nothing is ours.
                return Ok(());
            };
            let guard = guard_for(client, &inbox.dir, task, stat.version).await?;
            let held = Held { me: me.clone(), entry: paths::inbox_entry(&inbox.dir, task), guard };
            give_back(client, ctx, task, &held, &inbox.dir, "never started").await;
            return Ok(());
        }
    };
    match tokio::time::timeout(DRAIN_LIMIT, handing_back).await {
        Ok(Ok(())) => {},
        Ok(Err(error)) => tracing::warn!(%error, "cannot mark us draining; the leader sees us leave"),
        Err(_) => tracing::warn!("ZooKeeper did not answer while we were draining; the leader sees us leave"),
    }
}

/// What a write about `task`, read from our znode at `version`, must be guarded by: its inbox
/// entry when the leader announced it there, else the znode's version (a master that writes
/// no inbox entries).
async fn guard_for(client: &Client, inbox: &str, task: &str, version: i32) -> Result<Guard, ZkError> {
    Ok(match client.check_stat(&paths::inbox_entry(inbox, task)).await? {
        Some(_) => Guard::Inbox,
        None => Guard::Version(version),
    })
}

/// Reads our znode. Ok(None): nothing to run now (free, draining, or already announced).
async fn read_assignment(
    client: &Client,
    ctx: &WorkerContext,
    inbox: &mut Inbox,
) -> Result<Option<(String, Guard)>, WorkerEnd> {
    let me = paths::worker(&ctx.id);
    let (data, stat) = match client.get_data(&me).await {
        Ok(read) => read,
        Err(ZkError::NoNode) => {
            tracing::warn!("our registration vanished; registering again");
            return Err(WorkerEnd::Reregister);
        },
        Err(error) if client.state().is_terminated() => {
            tracing::warn!(%error, "session ended");
            return Err(WorkerEnd::Reregister);
        },
        Err(error) => {
            tracing::warn!(%error, "cannot read our assignment");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(None);
        },
    };
    // Events delivered before the read's reply are reflected in it: an entry announcing what
    // the read shows is already queued.
    inbox.catch_up(client).await?;
    if data.is_empty() || data == paths::DRAINING {
        return Ok(None);
    }
    if let Some(task) = paths::withdrawn_task(&data) {
        // The leader revoked it; our run of it, if any, has stopped by now (we only read when
        // no task runs): clearing the mark lets the task run elsewhere.
        match client.set_data(&me, b"", Some(stat.version)).await {
            Ok(_) => tracing::info!(%task, "let go of a revoked task"),
            Err(error) => tracing::warn!(%error, %task, "cannot clear the withdrawal mark; looking again"),
        }
        return Ok(None);
    }
    match String::from_utf8(data) {
        Ok(task) if paths::is_valid_name(&task) => {
            if inbox.announced.contains(&task) {
                return Ok(None);
            }
            let guard = match guard_for(client, &inbox.dir, &task, stat.version).await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::warn!(%error, "cannot look into our inbox");
                    return Ok(None);
                },
            };
            Ok(Some((task, guard)))
        },
        _ => {
            tracing::warn!("ignoring an assignment that is not a task id; clearing it");
            let _ = client.set_data(&me, b"", Some(stat.version)).await;
            Ok(None)
        },
    }
}

/// The persistent recursive watch on our inbox, added before registering (so no entry is
/// missed) and again after every reconnection (zookeeper-client 0.11 does not restore it).
/// None: register again.
async fn watch_inbox(client: &Client, inbox: &str) -> Option<PersistentWatcher> {
    match client.watch(inbox, AddWatchMode::PersistentRecursive).await {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(%error, "cannot watch our inbox");
            None
        },
    }
}

/// How a task ended for us.
enum TaskEnd {
    /// We ended it ourselves (result or failure written, assignment cleared).
    Cleared,
    /// Not known: read our znode again.
    Unknown,
    Stop(WorkerEnd),
}

/// Executes one assignment and reports it.
async fn run_task(
    client: &Client,
    ctx: &WorkerContext,
    task: &str,
    guard: Guard,
    inbox: &mut Inbox,
    shutdown: &CancellationToken,
) -> TaskEnd {
    ctx.metrics.busy.set(1);
    ctx.probes.set_stuck_from(Instant::now().checked_add(inbox.stuck_after));
    let _idle = scopeguard(|| {
        ctx.metrics.busy.set(0);
        ctx.probes.set_stuck_from(None);
    });
    let held = Held { me: paths::worker(&ctx.id), entry: paths::inbox_entry(&inbox.dir, task), guard };
    let attempt = if ctx.handler.needs_attempt_number() { read_attempts(client, task).await.0.attempts + 1 } else { 1 };
    // A small payload travels in the task's name: no read.
    let mut permanent = false;
    let payload = match paths::inline_payload(task) {
        Some(payload) => Ok(payload),
        None => client.get_data(&paths::data(task)).await.map(|(payload, _)| payload),
    };
    let outcome = match payload {
        Ok(payload) => {
            // Without an inbox entry, no entry's deletion tells of a revocation: our znode does.
            let mut own = OwnWatch::default();
            if !own.arm(client, &held, task).await {
                return abandoned(ctx, task, "our znode no longer holds it");
            }
            let input = TaskInput { task, worker: &ctx.id, attempt, payload: &payload };
            let execution = ctx.handler.execute(&input);
            tokio::pin!(execution);
            // Set while cut off from ZooKeeper: when the run must stop (see [`cut_off_limit`]).
            let mut cut_off: Option<Pin<Box<tokio::time::Sleep>>> = None;
            // Set once told to stop: when the grace period for finishing the task ends.
            let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
            loop {
                tokio::select! {
                    outcome = &mut execution => break outcome,
                    event = inbox.watch.changed() => match inbox.apply(client, event).await {
                        Ok(Change::Withdrawn(gone)) if gone == task => {
                            return abandoned(ctx, task, "its inbox entry was deleted");
                        },
                        // Events while disconnected are lost (a revocation among them): look.
                        Ok(Change::Reconnected) => {
                            cut_off = None;
                            if !own.arm(client, &held, task).await || entry_gone(client, &held).await {
                                return abandoned(ctx, task, "found withdrawn after reconnecting");
                            }
                        },
                        Ok(Change::Disconnected) if cut_off.is_none() => {
                            let limit = cut_off_limit(client);
                            tracing::warn!(%task, ?limit, "connection to ZooKeeper lost; the task stops unless it is back within the limit");
                            cut_off = Some(Box::pin(tokio::time::sleep(limit)));
                        },
                        Ok(_) => {},
                        Err(end) => return TaskEnd::Stop(end),
                    },
                    _ = own.changed() => {
                        if !own.arm(client, &held, task).await {
                            return abandoned(ctx, task, "our znode no longer holds it");
                        }
                    },
                    _ = until(&mut cut_off) => {
                        return abandoned(ctx, task, "cut off from ZooKeeper: our session may expire and the task run elsewhere");
                    },
                    _ = shutdown.cancelled(), if grace.is_none() => {
                        tracing::info!(%task, grace = ?ctx.grace_period, "shutting down: finishing the current task");
                        grace = Some(Box::pin(tokio::time::sleep(ctx.grace_period)));
                    },
                    _ = until(&mut grace) => {
                        give_back(client, ctx, task, &held, &inbox.dir, "grace period over").await;
                        return TaskEnd::Stop(WorkerEnd::Shutdown);
                    },
                }
            }
        },
        Err(ZkError::NoNode) => {
            // A payload is written before its task: one that is missing will not appear.
            permanent = true;
            Err(format!("payload {} is missing", paths::data(task)))
        },
        Err(error) => Err(format!("cannot read the payload: {error}")),
    };
    let cleared = match outcome {
        Ok(result) => complete(client, ctx, task, &held, &result).await,
        Err(error) => fail(client, ctx, task, &held, &error, permanent).await,
    };
    if cleared {
        TaskEnd::Cleared
    } else {
        TaskEnd::Unknown
    }
}

/// How long a task may run on while we are cut off from ZooKeeper. The client notices a silent
/// connection at most 3/5 of the session timeout after its last reply, and the server expires
/// the session a full timeout after it last heard from us: stopping a quarter of the timeout
/// after the notice leaves the run stopped before the leader can hand the task on.
fn cut_off_limit(client: &Client) -> Duration {
    client.session_timeout() / 4
}

/// Resolves when `timer` is set and has fired; never while it is unset.
async fn until(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer.as_mut() {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// Our run of a task whose assignment was withdrawn: stop it (dropping the execution kills an
/// external command) and read our znode again.
fn abandoned(ctx: &WorkerContext, task: &str, why: &str) -> TaskEnd {
    ctx.metrics.count("abandoned");
    tracing::warn!(%task, why, "assignment withdrawn while running; abandoned");
    TaskEnd::Unknown
}

/// Whether an announced assignment was withdrawn, looked up after a reconnection: it stands
/// while its inbox entry exists (the leader deletes it with a revocation). A failed look says
/// no; the next reconnection looks again. One that came without an entry is [`OwnWatch`]'s.
async fn entry_gone(client: &Client, held: &Held) -> bool {
    held.guard == Guard::Inbox && matches!(client.check_stat(&held.entry).await, Ok(None))
}

/// For an assignment that came without an inbox entry: a data watch on our znode while the task
/// runs. Nothing but a revocation changes it before we end the assignment ourselves.
#[derive(Default)]
struct OwnWatch {
    changed: Option<Pin<Box<dyn Future<Output = WatchedEvent> + Send>>>,
}

impl OwnWatch {
    /// Reads our znode and watches it again. False when the assignment no longer stands (our
    /// znode moved on from the version we read, or is gone). A read that fails leaves no watch;
    /// the reconnection that follows arms it again.
    async fn arm(&mut self, client: &Client, held: &Held, task: &str) -> bool {
        let Guard::Version(version) = held.guard else { return true };
        self.changed = None;
        match client.get_and_watch_data(&held.me).await {
            Ok((data, stat, watcher)) => {
                self.changed = Some(Box::pin(OneshotWatcher::changed(watcher)));
                data == task.as_bytes() && stat.version == version
            },
            Err(ZkError::NoNode) => false,
            Err(error) => {
                tracing::debug!(%error, %task, "cannot watch our assignment; looking again after reconnecting");
                true
            },
        }
    }

    /// Fires once when our znode changed; never without a watch.
    async fn changed(&mut self) {
        match self.changed.as_mut() {
            Some(changed) => {
                changed.await;
                self.changed = None;
            },
            None => std::future::pending().await,
        }
    }
}

/// The assignment we hold: our znode, its inbox entry, and what guards ending it.
struct Held {
    me: String,
    entry: String,
    guard: Guard,
}

impl Held {
    /// Adds the ops that end our hold: our znode set to `mark` and, for an announced
    /// assignment, its entry deleted. The entry's existence guards the multi: it exists
    /// exactly while the leader assigns us the task, so our znode needs no version check.
    fn add_release(&self, writer: &mut MultiWriter<'_>, mark: &[u8]) -> Result<(), ZkError> {
        match self.guard {
            Guard::Inbox => {
                writer.add_delete(&self.entry, None)?;
                writer.add_set_data(&self.me, mark, None)
            },
            Guard::Version(version) => writer.add_set_data(&self.me, mark, Some(version)),
        }
    }

    /// Frees us without a result (the task vanished). True when it went through.
    async fn clear(&self, client: &Client) -> bool {
        let mut writer = client.new_multi_writer();
        self.add_release(&mut writer, b"").is_ok() && writer.commit().await.is_ok()
    }
}

/// The seed's multi: the result into `/tasks/<id>` and our znode cleared, guarded by the
/// assignment (see [`Held`]) so a withdrawn assignment cannot complete. True when it was
/// cleared by a write whose reply came back on the first try.
async fn complete(client: &Client, ctx: &WorkerContext, task: &str, held: &Held, result: &[u8]) -> bool {
    let result = records::stored_result(result);
    let mut retried = false;
    // A task is created empty, at version 0; the result goes only into a task that has none,
    // so a revoked run finishing late never overwrites the result of another (or the dead letter).
    let mut unfinished_at = 0;
    loop {
        let mut writer = client.new_multi_writer();
        let added = writer
            .add_set_data(&paths::task(task), result, Some(unfinished_at))
            .and_then(|_| held.add_release(&mut writer, b""));
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
            Err(MultiWriteError::OperationFailed { index: 0, source: ZkError::BadVersion }) => {
                match retrying(client, is_transient, || client.get_data(&paths::task(task))).await {
                    // Written once by a foreign client and emptied again: still unfinished.
                    Ok((data, stat)) if data.is_empty() && stat.version != unfinished_at => {
                        unfinished_at = stat.version;
                        continue;
                    },
                    // Confirming our own write that a connection loss hid.
                    Ok((data, _)) if retried && data == result => {
                        ctx.metrics.count("succeeded");
                        false
                    },
                    _ => {
                        ctx.metrics.count("abandoned");
                        tracing::warn!(%task, "the task already has a result; ours is dropped");
                        held.clear(client).await && !retried
                    },
                }
            },
            Err(MultiWriteError::OperationFailed { index: 0, source: ZkError::NoNode }) => {
                // The client gave up on the task (or retention removed it): just free ourselves.
                ctx.metrics.count("abandoned");
                tracing::warn!(%task, "task vanished before its result was written");
                held.clear(client).await && !retried
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
/// records, then retries or dead-letters the task (at once when `permanent`: no retry can
/// succeed). True as for [`complete`].
async fn fail(client: &Client, ctx: &WorkerContext, task: &str, held: &Held, error: &str, permanent: bool) -> bool {
    ctx.metrics.count("failed");
    tracing::warn!(%task, %error, "task failed");
    let note = |record: &mut Attempts| {
        record.attempts += 1;
        record.last_error = format!("worker {}: {error}", ctx.id);
        record.permanent = permanent;
    };
    match release(client, ctx, task, held, b"", note).await {
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
async fn give_back(client: &Client, ctx: &WorkerContext, task: &str, held: &Held, inbox: &str, why: &str) {
    // Our registration, named as our inbox.
    let by = paths::child_of(paths::INBOX, inbox).unwrap_or_default().to_string();
    let note = |record: &mut Attempts| {
        record.given_back += 1;
        record.given_back_by = by.clone();
    };
    match release(client, ctx, task, held, paths::DRAINING, note).await {
        Ok(_) => {
            ctx.metrics.count("given_back");
            tracing::info!(%task, why, "task given back");
        },
        Err(error) => tracing::warn!(%error, %task, "cannot give the task back; the leader retries it when we leave"),
    }
}

/// In one multi: updates the task's attempts record with `note` and ends our hold on the
/// assignment with `mark`. Returns whether a connection loss made it retry.
async fn release(
    client: &Client,
    ctx: &WorkerContext,
    task: &str,
    held: &Held,
    mark: &[u8],
    note: impl Fn(&mut Attempts),
) -> Result<bool, String> {
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
        .and_then(|_| held.add_release(&mut writer, mark))
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
