//! The leader loop: watch `/tasks`, the membership of `/workers` and the attempts records,
//! keep the board current, assign, resolve returned tasks, enforce timeouts and retention,
//! publish status. Every write is fenced.
//!
//! Workers' znodes are not watched for data: the leader knows its own assignments, infers
//! a worker's clear from its task's result (our workers write both in one multi), and learns
//! a failure or a give-back from the attempts record the worker writes with its clear. Only
//! a worker holding something else (a collected or foreign task, the draining mark) gets a
//! one-shot watch. Per task the leader is notified three times: created, completed, collected.
//!
//! zookeeper-client 0.11 restores no persistent watch when it reconnects, and its state watcher
//! keeps only the latest state (a disconnection and the reconnection after it can read as one
//! `SyncConnected`). The leader therefore follows the session through the ordered session events
//! of its persistent watches: each disconnection pauses it, and the first connected state after
//! one adds the watches again and rebuilds the view. A periodic check of the child versions of
//! `/tasks` and `/workers` against the changes it heard of catches anything missed.

//!
//! Every decision is the core's (`core.rs`); this file is its I/O: it turns watch events and
//! replies into calls of the core and the core's effects into ZooKeeper requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{
    AddWatchMode, Client, Error as ZkError, EventType, OneshotWatcher, OwnedLockClient, PersistentWatcher,
    SessionState, Stat, WatchedEvent,
};

use super::board::{Assignment, Resolution, ReturnReason};
pub use super::core::LeadEnd;
use super::core::{end_for, Children, Core, Effect, ListedTask, Snapshot, TaskChange, WorkerRead};
use super::writes::{self, WriteError};
use super::MasterContext;
use crate::paths;
use crate::records::{self, LeaderRecord, StatusRecord};

/// Assignments per multi: large enough to amortise, small enough to stay far below 1 MB.
const BATCH: usize = 128;
/// Housekeeping period.
const TICK: Duration = Duration::from_millis(250);
/// Reads in flight while rebuilding.
const REBUILD_WINDOW: usize = 2_000;

/// A request's completion, carried back to the core.
enum Completion {
    /// `watched`: a read that was to leave a watch (`watcher`, when it succeeded).
    WorkerRead {
        generation: u64,
        wid: String,
        result: Result<WorkerRead, ZkError>,
        watched: bool,
        watcher: Option<OneshotWatcher>,
    },
    /// A watched worker's znode changed.
    WorkerChanged {
        generation: u64,
        wid: String,
    },
    WorkersListed {
        generation: u64,
        result: Result<Vec<String>, ZkError>,
    },
    Assigned {
        generation: u64,
        batch: Vec<Assignment>,
        result: Result<Vec<(i32, i64)>, WriteError>,
    },
    Resolved {
        generation: u64,
        task: String,
        reason: ReturnReason,
        result: Result<Resolution, WriteError>,
    },
    Cleaned {
        result: Result<(), WriteError>,
        expired: bool,
    },
    StatusWritten {
        result: Result<(), WriteError>,
    },
    InboxesSwept {
        result: Result<usize, WriteError>,
    },
    ViewChecked {
        generation: u64,
        result: Result<(Option<i32>, Option<i32>), ZkError>,
    },
}

/// Completes a read of a worker's znode with its inbox: ours is created with the registration,
/// so it exists by the time the znode can be read; a worker without one (seed style) gets
/// plain assignments. `known`: the incarnation (creation zxid) and inbox the board knows,
/// which need no second look; the read's completion then is not delayed behind events that
/// came after it.
async fn with_inbox(
    client: &Client,
    wid: &str,
    data: Vec<u8>,
    stat: Stat,
    known: Option<(i64, Option<String>)>,
) -> WorkerRead {
    let (version, created) = (stat.version, stat.czxid);
    if let Some((_, inbox)) = known.filter(|(known, _)| *known == created) {
        return WorkerRead { data, version, created, inbox: Some(inbox) };
    }
    let dir = paths::inbox(wid, stat.ephemeral_owner);
    let inbox = match client.check_stat(&dir).await {
        Ok(found) => Some(found.map(|_| dir)),
        Err(error) => {
            tracing::debug!(%error, %wid, "cannot look for the worker's inbox; looking again later");
            None
        },
    };
    WorkerRead { data, version, created, inbox }
}

type Pending<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = Completion> + Send + 'a>>>;

struct Leader<'a> {
    lock: &'a OwnedLockClient,
    ctx: &'a MasterContext,
    core: Core,
    pending: Pending<'a>,
}

/// The leader's persistent watches.
struct Watches {
    /// Recursive on `/tasks`: creations, results, collections.
    tasks: PersistentWatcher,
    /// On `/workers` itself: registrations and departures.
    workers: PersistentWatcher,
    /// Recursive on the attempts records: failures and give-backs written by workers.
    attempts: PersistentWatcher,
}

pub async fn lead(lock: &OwnedLockClient, ctx: &MasterContext, shutdown: &CancellationToken) -> LeadEnd {
    let client = lock.client();
    let mut state = client.state_watcher();
    // Watches first, reads second: nothing that changes in between is missed.
    let watches = tokio::try_join!(watch_tree(client), client.check_and_watch_stat(lock.lock_path()));
    let (mut watches, lock_watch) = match watches {
        Ok((tree, (Some(_), l))) => (tree, l),
        Ok((_, (None, _))) => return LeadEnd::LeadershipLost,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the task tree; stepping down");
            return end_for(&error);
        },
    };
    let mut lock_gone = Box::pin(lock_watch.changed());

    let counters = match take_over(lock, ctx).await {
        Ok(counters) => counters,
        Err(end) => return end,
    };
    let core = Core::new(&ctx.settings, counters, ctx.metrics.clone(), ctx.probes.clone());
    let mut leader = Leader { lock, ctx, core, pending: FuturesUnordered::new() };
    if let Err(error) = leader.rebuild().await {
        return end_for(&error);
    }
    ctx.metrics.is_leader.set(1);
    ctx.metrics.takeovers.inc();
    tracing::info!(epoch = leader.core.epoch(), id = %ctx.id, "leading");

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The loop turns at least every tick; a much longer gap means this process was stalled
    // (GC-like pause, SIGSTOP, starved CPU) and may have lost leadership meanwhile.
    let stall = (ctx.target.session_timeout / 3).max(Duration::from_secs(1));
    loop {
        let waiting_since = Instant::now();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => leader.core.end_with(LeadEnd::Shutdown),
            event = &mut lock_gone => {
                if event.event_type != EventType::Session || event.session_state.is_terminated() {
                    leader.core.end_with(LeadEnd::LeadershipLost);
                }
            },
            event = watches.tasks.changed() => leader.on_task_event(event),
            event = watches.workers.changed() => leader.on_membership_event(event),
            event = watches.attempts.changed() => leader.on_attempts_event(event),
            Some(done) = leader.pending.next() => leader.on_completion(done),
            // A backstop: the watches' own session events come first, in order, and this
            // watcher may have folded a disconnection and the reconnection into one state.
            session = state.changed() => leader.core.session(session),
            _ = tick.tick() => {
                let connected = matches!(client.state(), SessionState::SyncConnected | SessionState::ConnectedReadOnly);
                leader.core.tick(Instant::now(), connected);
            },
        }
        leader.carry_out();
        // Probe even when the wake-up already told us the session or the znode is gone: a
        // stalled leader must see a write of its own rejected, whatever it noticed first.
        let waited = waiting_since.elapsed();
        if waited > stall && leader.core.end() != Some(LeadEnd::Shutdown) {
            leader.verify_leadership(waited).await;
        }
        leader.apply_delivered(&mut watches);
        if leader.core.resync_wanted() {
            leader.resync(&mut watches).await;
            // What changed while the view was rebuilt reached the new watches meanwhile: a
            // plan made before applying it would assign a task already finished or collected.
            leader.apply_delivered(&mut watches);
        }
        if let Some(end) = leader.core.take_end() {
            if end == LeadEnd::Shutdown {
                leader.flush_status().await;
            }
            ctx.metrics.is_leader.set(0);
            ctx.probes.healthy.store(true, Ordering::Relaxed);
            tracing::info!(?end, epoch = leader.core.epoch(), "no longer leading");
            return end;
        }
        leader.core.assign(BATCH);
        leader.carry_out();
    }
}

async fn watch_tree(client: &Client) -> Result<Watches, ZkError> {
    let (tasks, workers, attempts) = tokio::try_join!(
        client.watch(paths::TASKS, AddWatchMode::PersistentRecursive),
        client.watch(paths::WORKERS, AddWatchMode::Persistent),
        client.watch(paths::ATTEMPTS, AddWatchMode::PersistentRecursive),
    )?;
    Ok(Watches { tasks, workers, attempts })
}

/// Publishes who leads (raising the epoch) and the task settings; returns the counters to
/// continue from, naming this leader and its epoch.
async fn take_over(lock: &OwnedLockClient, ctx: &MasterContext) -> Result<StatusRecord, LeadEnd> {
    let client = lock.client();
    let acls = ctx.target.acls();
    let previous = match client.get_data(paths::LEADER).await {
        Ok((_, stat)) => Some(stat.version),
        Err(ZkError::NoNode) => None,
        Err(error) => return Err(end_for(&error)),
    };
    let mut counters = StatusRecord::default();
    if let Ok((data, _)) = client.get_data(paths::STATUS).await {
        if let Ok(record) = records::decode::<StatusRecord>(paths::STATUS, &data) {
            counters = record;
        }
    }
    let epoch = previous.map_or(1, |v| v as u64 + 2);
    let contender = lock.lock_path().rsplit('/').next().unwrap_or_default().to_string();
    let record = LeaderRecord { id: ctx.id.clone(), since_ms: records::now_ms(), epoch, contender };
    let steps =
        [(paths::LEADER, records::encode(&record), previous), (paths::CONFIG, records::encode(&ctx.settings), None)];
    for (path, data, version) in steps {
        if let Err(error) = writes::put_record(lock, acls, path, &data, version).await {
            if error.is_fenced() {
                ctx.metrics.fenced_writes.inc();
            }
            tracing::warn!(%error, path, "cannot publish leadership");
            return Err(LeadEnd::LeadershipLost);
        }
    }
    counters.leader = ctx.id.clone();
    counters.epoch = epoch;
    Ok(counters)
}

/// Reads the view from ZooKeeper: tasks first (so a worker's task is known), then workers,
/// then the extension records.
async fn read_snapshot(client: &Client) -> Result<Snapshot, ZkError> {
    let (ids, tasks_stat) = client.get_children(paths::TASKS).await?;
    let now_ms = records::now_ms() as i64;
    let now = Instant::now();
    let mut tasks = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(REBUILD_WINDOW) {
        let stats = futures::future::join_all(chunk.iter().map(|id| client.check_stat(&paths::task(id)))).await;
        for (id, stat) in chunk.iter().zip(stats) {
            let Some(stat) = stat? else { continue };
            let finished = (stat.data_length > 0).then(|| {
                let age = Duration::from_millis(now_ms.saturating_sub(stat.mtime).max(0) as u64);
                (now.checked_sub(age).unwrap_or(now), stat.mzxid)
            });
            tasks.push(ListedTask { id: id.clone(), finished });
        }
    }

    let (names, workers_stat) = client.get_children(paths::WORKERS).await?;
    let reads = futures::future::join_all(names.iter().map(|wid| async move {
        let (data, stat) = client.get_data(&paths::worker(wid)).await?;
        Ok::<_, ZkError>(with_inbox(client, wid, data, stat, None).await)
    }))
    .await;
    let mut workers = Vec::with_capacity(names.len());
    for (wid, read) in names.into_iter().zip(reads) {
        match read {
            Ok(read) => workers.push((wid, read)),
            Err(ZkError::NoNode) => {},
            Err(error) => return Err(error),
        }
    }
    let mut records = Vec::new();
    for dir in [paths::ATTEMPTS, paths::DEADLETTER] {
        records.extend(client.list_children(dir).await.unwrap_or_default());
    }
    Ok(Snapshot {
        tasks,
        tasks_listed: Children::listed(tasks_stat.cversion, tasks_stat.pzxid),
        workers,
        workers_listed: Children::listed(workers_stat.cversion, workers_stat.pzxid),
        records,
    })
}

impl<'a> Leader<'a> {
    fn client(&self) -> &'a Client {
        self.lock.client()
    }

    /// Sends what the core asked for, in its order. Each request is sent here, not at its
    /// future's first poll (except the resolutions, which read first), so that it is ordered
    /// after the event that prompted it and before anything asked later.
    fn carry_out(&mut self) {
        for effect in self.core.take_effects() {
            self.start(effect);
        }
    }

    fn start(&mut self, effect: Effect) {
        let (lock, client, acls) = (self.lock, self.client(), self.ctx.target.acls());
        let future: Pin<Box<dyn Future<Output = Completion> + Send + 'a>> = match effect {
            Effect::ReadWorker { generation, wid, watch: false, known } => {
                let read = client.get_data(&paths::worker(&wid));
                Box::pin(async move {
                    let result = match read.await {
                        Ok((data, stat)) => Ok(with_inbox(client, &wid, data, stat, known).await),
                        Err(error) => Err(error),
                    };
                    Completion::WorkerRead { generation, wid, result, watched: false, watcher: None }
                })
            },
            Effect::ReadWorker { generation, wid, watch: true, known } => {
                let read = client.get_and_watch_data(&paths::worker(&wid));
                Box::pin(async move {
                    match read.await {
                        Ok((data, stat, watcher)) => {
                            let read = with_inbox(client, &wid, data, stat, known).await;
                            Completion::WorkerRead {
                                generation,
                                wid,
                                result: Ok(read),
                                watched: true,
                                watcher: Some(watcher),
                            }
                        },
                        Err(error) => {
                            Completion::WorkerRead { generation, wid, result: Err(error), watched: true, watcher: None }
                        },
                    }
                })
            },
            Effect::ListWorkers { generation } => {
                let list = client.list_children(paths::WORKERS);
                Box::pin(async move { Completion::WorkersListed { generation, result: list.await } })
            },
            Effect::Assign { generation, batch } => {
                let write = writes::assign(lock, acls, &batch);
                Box::pin(async move {
                    let result = write.await;
                    Completion::Assigned { generation, batch, result }
                })
            },
            Effect::Resolve { generation, task, reason } => {
                let max = self.ctx.settings.max_attempts;
                Box::pin(async move {
                    let result = writes::resolve(lock, acls, &task, &reason, max).await;
                    Completion::Resolved { generation, task, reason, result }
                })
            },
            Effect::Cleanup { task, with_task } => Box::pin(async move {
                Completion::Cleaned {
                    result: writes::delete_task_nodes(lock, &task, with_task).await,
                    expired: with_task,
                }
            }),
            Effect::SweepInboxes => {
                Box::pin(async move { Completion::InboxesSwept { result: writes::sweep_inboxes(lock).await } })
            },
            Effect::CheckView { generation } => {
                let reads =
                    futures::future::try_join(client.check_stat(paths::TASKS), client.check_stat(paths::WORKERS));
                Box::pin(async move {
                    let result = reads
                        .await
                        .map(|(tasks, workers)| (tasks.map(|stat| stat.cversion), workers.map(|stat| stat.cversion)));
                    Completion::ViewChecked { generation, result }
                })
            },
            Effect::Publish(record) => Box::pin(async move {
                let result = writes::put_record(lock, acls, paths::STATUS, &records::encode(&record), None).await;
                Completion::StatusWritten { result: result.map(drop) }
            }),
        };
        self.pending.push(future);
    }

    /// Applies every event already delivered before planning, so the plan sees a consistent
    /// picture (a completion's events arrive before later reads).
    fn apply_delivered(&mut self, watches: &mut Watches) {
        while !self.core.ended() {
            let mut progressed = false;
            while !self.core.ended() {
                let Some(event) = watches.tasks.changed().now_or_never() else { break };
                self.on_task_event(event);
                progressed = true;
            }
            while !self.core.ended() {
                let Some(event) = watches.workers.changed().now_or_never() else { break };
                self.on_membership_event(event);
                progressed = true;
            }
            while !self.core.ended() {
                let Some(event) = watches.attempts.changed().now_or_never() else { break };
                self.on_attempts_event(event);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.carry_out();
    }

    /// After a stall, a fenced no-op write proves we still lead before anything else is
    /// written; if it does not go through, step down.
    async fn verify_leadership(&mut self, stalled: Duration) {
        match self.lock.new_check_writer().commit().await {
            Ok(_) => tracing::warn!(?stalled, "stalled; leadership confirmed"),
            Err(error) => {
                let error = writes::classify(error);
                self.ctx.metrics.fenced_writes.inc();
                tracing::warn!(?stalled, %error, "stalled; leadership not confirmed, stepping down");
                self.core.step_down();
            },
        }
    }

    /// After a disconnection (or notifications found missing): zookeeper-client 0.11 does not
    /// restore persistent watches when it reconnects (its SetWatches omits them), and events
    /// while disconnected may be lost, so add the watches again, then rebuild before assigning.
    async fn resync(&mut self, watches: &mut Watches) {
        self.core.resync_started();
        let rebuilt = match watch_tree(self.client()).await {
            Ok(fresh) => {
                *watches = fresh;
                self.rebuild().await
            },
            Err(error) => Err(error),
        };
        if let Err(error) = rebuilt {
            self.core.rebuild_failed(&error);
        }
    }

    /// Gives the core a fresh view, read from ZooKeeper.
    async fn rebuild(&mut self) -> Result<(), ZkError> {
        let started = Instant::now();
        let snapshot = read_snapshot(self.client()).await?;
        let (tasks, workers) = (snapshot.tasks.len(), snapshot.workers.len());
        self.core.rebuilt(snapshot);
        self.carry_out();
        let counts = self.core.board().counts();
        tracing::info!(
            tasks,
            workers,
            backlog = counts.backlog,
            running = counts.running,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt view from ZooKeeper"
        );
        Ok(())
    }

    /// The session events of our persistent watches, delivered in order with the others.
    fn on_session_event(&mut self, event: &WatchedEvent) -> bool {
        if event.event_type != EventType::Session {
            return false;
        }
        self.core.session(event.session_state);
        true
    }

    fn on_task_event(&mut self, event: WatchedEvent) {
        if self.on_session_event(&event) {
            return;
        }
        let Some(id) = paths::child_of(paths::TASKS, &event.path) else { return };
        let change = match event.event_type {
            EventType::NodeCreated => TaskChange::Created,
            EventType::NodeDataChanged => TaskChange::Written,
            EventType::NodeDeleted => TaskChange::Deleted,
            _ => return,
        };
        self.core.task_changed(id, change, event.zxid);
    }

    fn on_membership_event(&mut self, event: WatchedEvent) {
        if !self.on_session_event(&event) && event.event_type == EventType::NodeChildrenChanged {
            self.core.membership_changed(event.zxid);
        }
    }

    fn on_attempts_event(&mut self, event: WatchedEvent) {
        if self.on_session_event(&event)
            || !matches!(event.event_type, EventType::NodeCreated | EventType::NodeDataChanged)
        {
            return;
        }
        if let Some(task) = paths::child_of(paths::ATTEMPTS, &event.path) {
            self.core.attempts_written(task);
        }
    }

    fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::WorkerRead { generation, wid, result, watched, watcher } => {
                let keep = self.core.worker_read(generation, &wid, result, watched);
                if let Some(watcher) = watcher.filter(|_| keep) {
                    self.pending.push(Box::pin(async move {
                        watcher.changed().await;
                        Completion::WorkerChanged { generation, wid }
                    }));
                }
            },
            Completion::WorkerChanged { generation, wid } => self.core.worker_changed(generation, &wid),
            Completion::WorkersListed { generation, result } => self.core.workers_listed(generation, result),
            Completion::Assigned { generation, batch, result } => self.core.assigned(generation, &batch, result),
            Completion::Resolved { generation, task, reason, result } => {
                self.core.resolved(generation, &task, &reason, result)
            },
            Completion::Cleaned { result, expired } => self.core.cleaned(result, expired),
            Completion::InboxesSwept { result } => self.core.inboxes_swept(result),
            Completion::ViewChecked { generation, result } => self.core.view_checked(generation, result),
            Completion::StatusWritten { result } => self.core.status_written(result),
        }
    }

    /// On a clean shutdown: publish the last counters so the next leader continues from them.
    async fn flush_status(&mut self) {
        let Some(record) = self.core.final_status() else { return };
        let data = records::encode(&record);
        let write = writes::put_record(self.lock, self.ctx.target.acls(), paths::STATUS, &data, None);
        let _ = tokio::time::timeout(Duration::from_millis(500), write).await;
    }
}
