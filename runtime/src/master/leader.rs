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

use std::collections::HashSet;
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

use super::board::{Action, Assignment, Board, Resolution, ReturnReason, TaskState};
use super::writes::{self, WriteError};
use super::MasterContext;
use crate::paths;
use crate::records::{self, LeaderRecord, StatusRecord};

/// Why leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LeadEnd {
    Shutdown,
    /// The session expired or closed: rejoin with a new one.
    SessionLost,
    /// Our election znode vanished or a write was fenced: step down.
    LeadershipLost,
}

/// Assignments per multi: large enough to amortise, small enough to stay far below 1 MB.
const BATCH: usize = 128;
/// Status and housekeeping period.
const TICK: Duration = Duration::from_millis(250);
const STATUS_PERIOD: Duration = Duration::from_millis(500);
/// Reads in flight while rebuilding.
const REBUILD_WINDOW: usize = 2_000;
/// How often the leader checks that it still hears of every change (see [`Heard`]).
const VIEW_CHECK_PERIOD: Duration = Duration::from_secs(2);

enum Completion {
    /// `watched`: a read that was to leave a watch (`watcher`, when it succeeded).
    WorkerRead {
        generation: u64,
        wid: String,
        result: Result<WorkerState, ZkError>,
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
        result: Result<i32, WriteError>,
    },
    InboxesSwept {
        result: Result<usize, WriteError>,
    },
    /// The stats of `/tasks` and `/workers`, read to check that no change went unheard.
    ViewChecked {
        generation: u64,
        result: Result<(Option<Stat>, Option<Stat>), ZkError>,
    },
}

/// The child changes of `/tasks` and `/workers` the leader heard of, as the child version
/// (`cversion`) each brings its parent to: the rebuild's listing sets the version, and each
/// creation or deletion heard afterwards adds one. ZooKeeper delivers a notification before
/// the reply of any later read, and the loop applies notifications before replies, so a read
/// showing a higher child version than heard means notifications were missed: the watches are
/// gone. A change heard that the listing already held (its zxid says so, where the server
/// reports it) is not counted twice.
#[derive(Clone, Copy, Debug, Default)]
struct Heard {
    tasks: Children,
    workers: Children,
}

#[derive(Clone, Copy, Debug, Default)]
struct Children {
    version: i32,
    /// The last child change the listing held (its parent's pzxid).
    listed: i64,
}

impl Children {
    fn listed(stat: &Stat) -> Self {
        Children { version: stat.cversion, listed: stat.pzxid }
    }

    /// A child change heard of; `zxid` is the change's (not positive: not reported).
    fn heard(&mut self, zxid: i64) {
        if zxid <= 0 || zxid > self.listed {
            self.version = self.version.wrapping_add(1);
        }
    }

    /// Whether `stat`, read after everything heard so far, shows changes never heard of.
    fn missed(&self, stat: Option<&Stat>) -> bool {
        stat.is_some_and(|stat| stat.cversion.wrapping_sub(self.version) > 0)
    }
}

/// A worker's znode as read, with its registration's inbox if it has one (None: could not
/// look; the worker gets plain assignments, which work for every worker, until a later read).
struct WorkerState {
    data: Vec<u8>,
    stat: Stat,
    inbox: Option<Option<String>>,
}

impl WorkerState {
    /// Feeds the read to the board: the znode's state, then the inbox when it was looked for.
    fn apply(self, board: &mut Board, wid: &str) -> Option<Action> {
        let action = board.worker_read(wid, &self.data, self.stat.version, self.stat.czxid);
        if let Some(inbox) = self.inbox {
            board.set_inbox(wid, self.stat.czxid, inbox);
        }
        action
    }
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
) -> WorkerState {
    if let Some((_, inbox)) = known.filter(|(created, _)| *created == stat.czxid) {
        return WorkerState { data, stat, inbox: Some(inbox) };
    }
    let dir = paths::inbox(wid, stat.ephemeral_owner);
    let inbox = match client.check_stat(&dir).await {
        Ok(found) => Some(found.map(|_| dir)),
        Err(error) => {
            tracing::debug!(%error, %wid, "cannot look for the worker's inbox; looking again later");
            None
        },
    };
    WorkerState { data, stat, inbox }
}

type Pending<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = Completion> + Send + 'a>>>;

struct Leader<'a> {
    lock: &'a OwnedLockClient,
    ctx: &'a MasterContext,
    board: Board,
    /// Bumped at every rebuild; completions of older generations are dropped.
    generation: u64,
    epoch: u64,
    since_ms: u64,
    /// No assignment while disconnected or until the view is rebuilt after it.
    paused: bool,
    /// The session state last heard of: from the ordered session events of our persistent
    /// watches, and from the state watcher as a backstop.
    connected: bool,
    /// The watches must be added again and the view rebuilt, once connected.
    resync_due: bool,
    heard: Heard,
    checking: bool,
    last_check: Instant,
    counters: StatusRecord,
    last_published: Option<StatusRecord>,
    last_status_at: Instant,
    status_in_flight: bool,
    pending: Pending<'a>,
    /// Workers with a one-shot watch in place (see `Board::needs_watch`).
    watched: HashSet<String>,
    /// A listing of `/workers` is in flight; `relist`: another change came meanwhile.
    listing: bool,
    relist: bool,
    /// Inboxes of departed workers may be left: sweep at the next tick (unless one runs).
    sweep_due: bool,
    sweeping: bool,
    end: Option<LeadEnd>,
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

    let mut leader = Leader {
        lock,
        ctx,
        board: Board::new(),
        generation: 0,
        epoch: 0,
        since_ms: records::now_ms(),
        paused: false,
        connected: true,
        resync_due: false,
        heard: Heard::default(),
        checking: false,
        last_check: Instant::now(),
        counters: StatusRecord::default(),
        last_published: None,
        last_status_at: Instant::now(),
        status_in_flight: false,
        pending: FuturesUnordered::new(),
        watched: HashSet::new(),
        listing: false,
        relist: false,
        sweep_due: false,
        sweeping: false,
        end: None,
    };
    if let Err(end) = leader.take_over().await {
        return end;
    }
    if let Err(error) = leader.rebuild().await {
        return end_for(&error);
    }
    ctx.metrics.is_leader.set(1);
    ctx.metrics.takeovers.inc();
    tracing::info!(epoch = leader.epoch, id = %ctx.id, "leading");

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The loop turns at least every tick; a much longer gap means this process was stalled
    // (GC-like pause, SIGSTOP, starved CPU) and may have lost leadership meanwhile.
    let stall = (ctx.target.session_timeout / 3).max(Duration::from_secs(1));
    loop {
        let waiting_since = Instant::now();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => leader.end = Some(LeadEnd::Shutdown),
            event = &mut lock_gone => {
                if event.event_type != EventType::Session || event.session_state.is_terminated() {
                    leader.end = Some(LeadEnd::LeadershipLost);
                }
            },
            event = watches.tasks.changed() => leader.on_task_event(event),
            event = watches.workers.changed() => leader.on_membership_event(event),
            event = watches.attempts.changed() => leader.on_attempts_event(event),
            Some(done) = leader.pending.next() => leader.on_completion(done),
            // A backstop: the watches' own session events come first, in order, and this
            // watcher may have folded a disconnection and the reconnection into one state.
            session = state.changed() => leader.on_session(session),
            _ = tick.tick() => leader.on_tick(),
        }
        // Probe even when the wake-up already told us the session or the znode is gone: a
        // stalled leader must see a write of its own rejected, whatever it noticed first.
        let waited = waiting_since.elapsed();
        if waited > stall && leader.end != Some(LeadEnd::Shutdown) {
            leader.verify_leadership(waited).await;
        }
        leader.apply_delivered(&mut watches);
        if leader.end.is_none() && leader.resync_due && leader.connected {
            leader.resync(&mut watches).await;
            // What changed while the view was rebuilt reached the new watches meanwhile: a
            // plan made before applying it would assign a task already finished or collected.
            leader.apply_delivered(&mut watches);
        }
        if let Some(end) = leader.end.take() {
            if end == LeadEnd::Shutdown {
                leader.flush_status().await;
            }
            ctx.metrics.is_leader.set(0);
            ctx.probes.healthy.store(true, Ordering::Relaxed);
            tracing::info!(?end, epoch = leader.epoch, "no longer leading");
            return end;
        }
        leader.assign();
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

fn end_for(error: &ZkError) -> LeadEnd {
    match error {
        ZkError::SessionExpired | ZkError::ClientClosed | ZkError::AuthFailed => LeadEnd::SessionLost,
        _ => LeadEnd::LeadershipLost,
    }
}

impl<'a> Leader<'a> {
    /// Applies every event already delivered before planning, so the plan sees a consistent
    /// picture (a completion's events arrive before later reads).
    fn apply_delivered(&mut self, watches: &mut Watches) {
        while self.end.is_none() {
            let mut progressed = false;
            while self.end.is_none() {
                let Some(event) = watches.tasks.changed().now_or_never() else { break };
                self.on_task_event(event);
                progressed = true;
            }
            while self.end.is_none() {
                let Some(event) = watches.workers.changed().now_or_never() else { break };
                self.on_membership_event(event);
                progressed = true;
            }
            while self.end.is_none() {
                let Some(event) = watches.attempts.changed().now_or_never() else { break };
                self.on_attempts_event(event);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn client(&self) -> &'a Client {
        self.lock.client()
    }

    fn fenced(&mut self, error: &WriteError) {
        self.ctx.metrics.fenced_writes.inc();
        tracing::warn!(%error, "write rejected: leadership lost");
        self.end = Some(LeadEnd::LeadershipLost);
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
                self.end.get_or_insert(LeadEnd::LeadershipLost);
            },
        }
    }

    /// Publishes who leads (raising the epoch) and the task settings; loads the counters.
    async fn take_over(&mut self) -> Result<(), LeadEnd> {
        let client = self.client();
        let acls = self.ctx.target.acls();
        let previous = match client.get_data(paths::LEADER).await {
            Ok((_, stat)) => Some(stat.version),
            Err(ZkError::NoNode) => None,
            Err(error) => return Err(end_for(&error)),
        };
        if let Ok((data, _)) = client.get_data(paths::STATUS).await {
            if let Ok(record) = records::decode::<StatusRecord>(paths::STATUS, &data) {
                self.counters = record;
            }
        }
        self.epoch = previous.map_or(1, |v| v as u64 + 2);
        let contender = self.lock.lock_path().rsplit('/').next().unwrap_or_default().to_string();
        let record = LeaderRecord { id: self.ctx.id.clone(), since_ms: self.since_ms, epoch: self.epoch, contender };
        let steps = [
            (paths::LEADER, records::encode(&record), previous),
            (paths::CONFIG, records::encode(&self.ctx.settings), None),
        ];
        for (path, data, version) in steps {
            if let Err(error) = writes::put_record(self.lock, acls, path, &data, version).await {
                if error.is_fenced() {
                    self.ctx.metrics.fenced_writes.inc();
                }
                tracing::warn!(%error, path, "cannot publish leadership");
                return Err(LeadEnd::LeadershipLost);
            }
        }
        self.counters.leader = self.ctx.id.clone();
        self.counters.epoch = self.epoch;
        Ok(())
    }

    /// Builds the board from ZooKeeper: tasks first (so a worker's task is known), then workers,
    /// then the extension records.
    async fn rebuild(&mut self) -> Result<(), ZkError> {
        let started = Instant::now();
        let client = self.client();
        let mut board = Board::new();
        board.completed = self.board.completed;
        let (ids, tasks_stat) = client.get_children(paths::TASKS).await?;
        let now_ms = records::now_ms() as i64;
        let now = Instant::now();
        let mut finished = Vec::new();
        for chunk in ids.chunks(REBUILD_WINDOW) {
            let stats = futures::future::join_all(chunk.iter().map(|id| client.check_stat(&paths::task(id)))).await;
            for (id, stat) in chunk.iter().zip(stats) {
                match stat? {
                    Some(stat) if stat.data_length > 0 => finished.push((stat.mtime, id.clone(), stat.mzxid)),
                    Some(_) => board.task_created(id),
                    None => {},
                }
            }
        }
        finished.sort();
        // Results written above the counted zxid landed while no leader heard them (or this one,
        // disconnected, did not): count each once. Those already counted are at or below it.
        let counted_through = self.counters.counted_through_zxid;
        for (mtime, id, written) in finished {
            let age = Duration::from_millis(now_ms.saturating_sub(mtime).max(0) as u64);
            board.task_completed(&id, now.checked_sub(age).unwrap_or(now));
            if counted_through > 0 && written > counted_through {
                self.count_result(written);
            }
        }
        board.completed = self.board.completed;

        let (workers, workers_stat) = client.get_children(paths::WORKERS).await?;
        let reads = futures::future::join_all(workers.iter().map(|wid| async move {
            let (data, stat) = client.get_data(&paths::worker(wid)).await?;
            Ok::<_, ZkError>(with_inbox(client, wid, data, stat, None).await)
        }))
        .await;
        for (wid, read) in workers.iter().zip(reads) {
            match read {
                Ok(read) => {
                    read.apply(&mut board, wid);
                },
                Err(ZkError::NoNode) => {},
                Err(error) => return Err(error),
            }
        }

        for dir in [paths::ATTEMPTS, paths::DEADLETTER] {
            let names = client.list_children(dir).await.unwrap_or_default();
            for name in names {
                if board.task_state(&name).is_some() {
                    board.mark_records(&name);
                } else {
                    // Records of a task that is gone: remove them.
                    self.spawn_cleanup(name, false);
                }
            }
        }
        self.board = board;
        self.heard = Heard { tasks: Children::listed(&tasks_stat), workers: Children::listed(&workers_stat) };
        self.generation += 1;
        self.sweep_due = true;
        self.watched.clear();
        for wid in &workers {
            self.ensure_watched(wid);
        }
        let counts = self.board.counts();
        tracing::info!(
            tasks = ids.len(),
            workers = workers.len(),
            backlog = counts.backlog,
            running = counts.running,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt view from ZooKeeper"
        );
        Ok(())
    }

    /// A session state heard of, from a watch's session event or the state watcher. Each
    /// disconnection pauses assignments and makes a resync due, which the loop runs as soon as
    /// a connected state is heard (they come in order from the watches).
    fn on_session(&mut self, state: SessionState) {
        match state {
            SessionState::Disconnected => {
                // Each watch reports the disconnection: say it once.
                if !self.paused {
                    tracing::warn!("disconnected from ZooKeeper: assignments paused");
                }
                self.connected = false;
                self.paused = true;
                self.resync_due = true;
            },
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => self.connected = true,
            state if state.is_terminated() => self.end = Some(LeadEnd::SessionLost),
            _ => {},
        }
    }

    /// After a disconnection (or notifications found missing): zookeeper-client 0.11 does not
    /// restore persistent watches when it reconnects (its SetWatches omits them), and events
    /// while disconnected may be lost, so add the watches again, then rebuild before assigning.
    async fn resync(&mut self, watches: &mut Watches) {
        self.resync_due = false;
        let rebuilt = match watch_tree(self.client()).await {
            Ok(fresh) => {
                *watches = fresh;
                self.rebuild().await
            },
            Err(error) => Err(error),
        };
        match rebuilt {
            Ok(()) => {
                self.paused = false;
                self.ctx.probes.healthy.store(true, Ordering::Relaxed);
                tracing::info!("view rebuilt: assignments resumed");
            },
            // Lost again on the way: the session events of the new disconnection tell when to
            // try again.
            Err(ZkError::ConnectionLoss) => {
                tracing::warn!("connection lost while rebuilding the view; trying again once reconnected");
                self.connected = false;
                self.resync_due = true;
            },
            Err(error) => {
                tracing::warn!(%error, "cannot rebuild the view; stepping down");
                self.end = Some(end_for(&error));
            },
        }
    }

    /// The session events of our persistent watches, delivered in order with the others.
    fn on_session_event(&mut self, event: &WatchedEvent) -> bool {
        if event.event_type != EventType::Session {
            return false;
        }
        self.on_session(event.session_state);
        true
    }

    fn on_task_event(&mut self, event: WatchedEvent) {
        if self.on_session_event(&event) {
            return;
        }
        let Some(id) = paths::child_of(paths::TASKS, &event.path) else { return };
        if matches!(event.event_type, EventType::NodeCreated | EventType::NodeDeleted) {
            self.heard.tasks.heard(event.zxid);
        }
        match event.event_type {
            EventType::NodeCreated => self.board.task_created(id),
            EventType::NodeDataChanged if self.board.task_state(id).is_some() => {
                let before = self.board.completed;
                self.board.task_completed(id, Instant::now());
                if self.board.completed > before {
                    self.count_result(event.zxid);
                }
            },
            EventType::NodeDeleted => {
                let holder = self.board.holder_of(id).map(str::to_string);
                if let Some(action) = self.board.task_deleted(id) {
                    self.act(action);
                }
                // Collected while running: the worker's clear will not come with a result.
                if let Some(wid) = holder {
                    self.ensure_watched(&wid);
                }
            },
            _ => {},
        }
    }

    /// A result counted; `zxid` is its write's (not positive: the server reports none, and the
    /// record can no longer say which results it holds).
    fn count_result(&mut self, zxid: i64) {
        self.counters.completed += 1;
        self.ctx.metrics.completed.inc();
        self.counters.counted_through_zxid = if zxid > 0 { self.counters.counted_through_zxid.max(zxid) } else { 0 };
    }

    /// A registration or departure under `/workers`: list it again.
    fn on_membership_event(&mut self, event: WatchedEvent) {
        if self.on_session_event(&event) {
            return;
        }
        if event.event_type == EventType::NodeChildrenChanged {
            self.heard.workers.heard(event.zxid);
            self.list_workers();
            self.sweep_due = true;
        }
    }

    /// An attempts record written: if its task runs, the worker recorded a failure or gave the
    /// task back, and cleared its znode in the same multi. Our own records concern tasks that
    /// are no longer running, so they cost nothing here.
    fn on_attempts_event(&mut self, event: WatchedEvent) {
        if self.on_session_event(&event) {
            return;
        }
        if !matches!(event.event_type, EventType::NodeCreated | EventType::NodeDataChanged) {
            return;
        }
        let Some(task) = paths::child_of(paths::ATTEMPTS, &event.path) else { return };
        if let Some(wid) = self.board.holder_of(task) {
            self.read_worker(wid.to_string());
        }
    }

    fn list_workers(&mut self) {
        if self.listing {
            self.relist = true;
            return;
        }
        self.listing = true;
        let generation = self.generation;
        let list = self.client().list_children(paths::WORKERS);
        self.pending.push(Box::pin(async move { Completion::WorkersListed { generation, result: list.await } }));
    }

    /// Departures are the names that vanished; every listed worker is read, since one may have
    /// left and registered again between two listings (its creation zxid tells).
    fn workers_listed(&mut self, names: Vec<String>) {
        let listed: HashSet<&str> = names.iter().map(String::as_str).collect();
        for wid in self.board.workers_not_in(&listed) {
            if let Some(action) = self.board.worker_deleted(&wid) {
                self.act(action);
            }
        }
        for wid in names {
            self.read_worker(wid);
        }
    }

    /// Level-triggered: what the read returns is the worker's truth at that version. The
    /// request is sent here, not at the future's first poll, so it is ordered after the event
    /// that prompted it and before any listing asked for later.
    fn read_worker(&mut self, wid: String) {
        let (client, generation, known) = (self.client(), self.generation, self.board.incarnation(&wid));
        let read = client.get_data(&paths::worker(&wid));
        self.pending.push(Box::pin(async move {
            let result = match read.await {
                Ok((data, stat)) => Ok(with_inbox(client, &wid, data, stat, known).await),
                Err(error) => Err(error),
            };
            Completion::WorkerRead { generation, wid, result, watched: false, watcher: None }
        }));
    }

    /// A read that leaves a one-shot watch, for a worker whose next change cannot be inferred.
    fn ensure_watched(&mut self, wid: &str) {
        if !self.board.needs_watch(wid) || !self.watched.insert(wid.to_string()) {
            return;
        }
        let (client, generation, wid) = (self.client(), self.generation, wid.to_string());
        let known = self.board.incarnation(&wid);
        let read = client.get_and_watch_data(&paths::worker(&wid));
        self.pending.push(Box::pin(async move {
            match read.await {
                Ok((data, stat, watcher)) => {
                    let read = with_inbox(client, &wid, data, stat, known).await;
                    Completion::WorkerRead { generation, wid, result: Ok(read), watched: true, watcher: Some(watcher) }
                },
                Err(error) => {
                    Completion::WorkerRead { generation, wid, result: Err(error), watched: true, watcher: None }
                },
            }
        }));
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Resolve { task, reason } => {
                let (lock, generation) = (self.lock, self.generation);
                let acls = self.ctx.target.acls();
                let max = self.ctx.settings.max_attempts;
                self.pending.push(Box::pin(async move {
                    let result = writes::resolve(lock, acls, &task, &reason, max).await;
                    Completion::Resolved { generation, task, reason, result }
                }));
            },
            Action::DeleteRecords { task } => self.spawn_cleanup(task, false),
        }
    }

    fn spawn_cleanup(&mut self, task: String, with_task: bool) {
        let lock = self.lock;
        self.pending.push(Box::pin(async move {
            Completion::Cleaned { result: writes::delete_task_nodes(lock, &task, with_task).await, expired: with_task }
        }));
    }

    fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::WorkerRead { generation, wid, result, watched, watcher } => {
                if generation != self.generation {
                    return;
                }
                match result {
                    Ok(read) => {
                        if let Some(action) = read.apply(&mut self.board, &wid) {
                            self.act(action);
                        }
                    },
                    Err(ZkError::NoNode) => {
                        if let Some(action) = self.board.worker_deleted(&wid) {
                            self.act(action);
                        }
                    },
                    Err(error) => {
                        tracing::debug!(%error, %wid, "worker read failed; the next event or rebuild covers it")
                    },
                }
                match watcher {
                    Some(watcher) if self.board.needs_watch(&wid) => self.pending.push(Box::pin(async move {
                        watcher.changed().await;
                        Completion::WorkerChanged { generation, wid }
                    })),
                    // A watch no longer needed fires once, unheeded. After a failed read the tick
                    // places the watch again, if still needed.
                    Some(_) => {
                        self.watched.remove(&wid);
                    },
                    None if watched => {
                        self.watched.remove(&wid);
                    },
                    None => self.ensure_watched(&wid),
                }
            },
            Completion::WorkerChanged { generation, wid } => {
                if generation == self.generation {
                    self.watched.remove(&wid);
                    self.ensure_watched(&wid);
                    if !self.watched.contains(&wid) {
                        self.read_worker(wid);
                    }
                }
            },
            Completion::WorkersListed { generation, result } => {
                self.listing = false;
                match result {
                    Ok(names) if generation == self.generation => self.workers_listed(names),
                    Ok(_) => {},
                    Err(error) => {
                        tracing::debug!(%error, "cannot list the workers; the next change or rebuild covers it")
                    },
                }
                if std::mem::take(&mut self.relist) {
                    self.list_workers();
                }
            },
            Completion::Assigned { generation, batch, result } => match result {
                Ok(versions) => {
                    self.ctx.metrics.assignments.inc_by(batch.len() as u64);
                    if generation == self.generation {
                        for (a, (version, created)) in batch.iter().zip(versions) {
                            self.board.assigned(a, version, created);
                        }
                    }
                },
                Err(error) if error.is_fenced() => self.fenced(&error),
                Err(WriteError::Unknown) => {
                    tracing::warn!(size = batch.len(), "connection lost during an assignment write; pausing");
                    // The view after a connection loss is rebuilt anyway (the disconnection
                    // makes it due); one of an older generation was rebuilt already.
                    if generation == self.generation {
                        self.paused = true;
                        self.resync_due = true;
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, size = batch.len(), "assignment batch rejected; re-planning");
                    if generation == self.generation {
                        for a in batch.iter().rev() {
                            self.board.assignment_failed(a);
                        }
                        for wid in self.board.workers_needing_read() {
                            self.read_worker(wid);
                        }
                    }
                },
            },
            Completion::Resolved { generation, task, reason, result } => {
                if generation != self.generation {
                    return;
                }
                match result {
                    Ok(resolution) => self.resolved(&task, &reason, resolution),
                    Err(error) if error.is_fenced() => self.fenced(&error),
                    Err(error) => match &reason {
                        // The worker may still hold the task: it stays there until a read tells.
                        ReturnReason::TimedOut { worker, .. } => {
                            tracing::warn!(%error, %task, %worker, "revocation not applied; reading the worker again");
                            if let Some(action) = self.board.revocation_failed(worker, &task) {
                                self.act(action);
                            }
                            self.read_worker(worker.clone());
                        },
                        _ => {
                            tracing::warn!(%error, %task, "cannot record the attempt; retrying the task");
                            self.board.requeue(&task);
                        },
                    },
                }
            },
            Completion::Cleaned { result, expired } => match result {
                Ok(()) if expired => {
                    self.ctx.metrics.expired_results.inc();
                },
                Ok(()) => {},
                Err(error) if error.is_fenced() => self.fenced(&error),
                Err(error) => tracing::debug!(%error, "cleanup failed; retention retries later"),
            },
            Completion::InboxesSwept { result } => {
                self.sweeping = false;
                match result {
                    Ok(0) => {},
                    Ok(removed) => tracing::debug!(removed, "removed inboxes of departed workers"),
                    Err(error) if error.is_fenced() => self.fenced(&error),
                    Err(error) => {
                        tracing::debug!(%error, "cannot sweep inboxes; retrying at the next tick");
                        self.sweep_due = true;
                    },
                }
            },
            Completion::ViewChecked { generation, result } => {
                self.checking = false;
                match result {
                    Ok((tasks, workers)) if generation == self.generation => {
                        let (tasks_missed, workers_missed) =
                            (self.heard.tasks.missed(tasks.as_ref()), self.heard.workers.missed(workers.as_ref()));
                        if (tasks_missed || workers_missed) && !self.resync_due {
                            tracing::warn!(
                                tasks_missed,
                                workers_missed,
                                "changes went unheard (our watches are gone): rebuilding the view"
                            );
                            self.ctx.probes.healthy.store(false, Ordering::Relaxed);
                            self.resync_due = true;
                        }
                    },
                    Ok(_) => {},
                    Err(error) => tracing::debug!(%error, "cannot check the view; checking again later"),
                }
            },
            Completion::StatusWritten { result } => {
                self.status_in_flight = false;
                if let Err(error) = result {
                    if error.is_fenced() {
                        self.fenced(&error);
                    } else {
                        self.last_published = None;
                    }
                }
            },
        }
    }

    fn resolved(&mut self, task: &str, reason: &ReturnReason, resolution: Resolution) {
        self.board.resolved(task, reason, &resolution, Instant::now());
        if let Some((worker, _)) = &resolution.revoked {
            // Holding the withdrawal mark, its clear is what frees the task.
            self.ensure_watched(worker);
        }
        if resolution.finished {
            // A result landed meanwhile; its event marks the task done.
            return;
        }
        if resolution.counted_failure || matches!(reason, ReturnReason::Returned) && resolution.attempts > 0 {
            // Counted by us, or recorded by the worker itself.
            self.counters.failed += 1;
            self.ctx.metrics.failed_attempts.inc();
        }
        if resolution.dead_lettered {
            self.counters.dead_lettered += 1;
            self.ctx.metrics.dead_lettered.inc();
            tracing::warn!(%task, attempts = resolution.attempts, "task dead-lettered");
            return;
        }
        match self.board.task_state(task) {
            Some(TaskState::Withdrawing { worker }) => {
                tracing::info!(%task, %worker, attempts = resolution.attempts, "revoked; retried once the worker has let go")
            },
            _ => tracing::info!(%task, attempts = resolution.attempts, ?reason, "task back in the queue"),
        }
    }

    fn on_tick(&mut self) {
        // A backstop for a connected state never heard of (the watches hear of every one).
        if !self.connected
            && matches!(self.client().state(), SessionState::SyncConnected | SessionState::ConnectedReadOnly)
        {
            self.connected = true;
        }
        if self.paused {
            return;
        }
        let now = Instant::now();
        if !self.checking && now.duration_since(self.last_check) >= VIEW_CHECK_PERIOD {
            self.check_view(now);
        }
        let timeout = Duration::from_millis(self.ctx.settings.task_timeout_ms);
        for action in self.board.expired(timeout, now) {
            self.act(action);
        }
        let retention = Duration::from_millis(self.ctx.settings.retention_ms);
        for task in self.board.past_retention(retention, now) {
            self.spawn_cleanup(task, true);
        }
        for wid in self.board.workers_needing_read() {
            self.read_worker(wid);
        }
        for wid in self.board.workers_needing_watch() {
            self.ensure_watched(&wid);
        }
        if self.sweep_due && !self.sweeping {
            self.sweep_due = false;
            self.sweeping = true;
            let lock = self.lock;
            self.pending
                .push(Box::pin(async move { Completion::InboxesSwept { result: writes::sweep_inboxes(lock).await } }));
        }
        self.publish_status(now);
    }

    /// Reads the stats of `/tasks` and `/workers` (O(1) each) to compare their child versions
    /// with the changes heard of.
    fn check_view(&mut self, now: Instant) {
        self.checking = true;
        self.last_check = now;
        let (client, generation) = (self.client(), self.generation);
        let reads = futures::future::try_join(client.check_stat(paths::TASKS), client.check_stat(paths::WORKERS));
        self.pending.push(Box::pin(async move { Completion::ViewChecked { generation, result: reads.await } }));
    }

    /// The record to publish now, or None when nothing changed since the last one.
    fn status_record(&mut self) -> Option<StatusRecord> {
        let counts = self.board.counts();
        self.ctx.metrics.backlog.set(counts.backlog as i64);
        self.ctx.metrics.running.set(counts.running as i64);
        let mut record = self.counters.clone();
        record.backlog = counts.backlog;
        record.running = counts.running;
        record.workers_busy = counts.workers_busy;
        record.updated_ms = 0;
        if self.last_published.as_ref() == Some(&record) {
            return None;
        }
        self.last_published = Some(record.clone());
        record.updated_ms = records::now_ms();
        Some(record)
    }

    fn publish_status(&mut self, now: Instant) {
        if self.status_in_flight || now.duration_since(self.last_status_at) < STATUS_PERIOD {
            return;
        }
        let Some(record) = self.status_record() else { return };
        self.last_status_at = now;
        self.status_in_flight = true;
        let (lock, acls) = (self.lock, self.ctx.target.acls());
        self.pending.push(Box::pin(async move {
            let result = writes::put_record(lock, acls, paths::STATUS, &records::encode(&record), None).await;
            Completion::StatusWritten { result }
        }));
    }

    /// On a clean shutdown: publish the last counters so the next leader continues from them.
    async fn flush_status(&mut self) {
        self.last_published = None;
        let Some(record) = self.status_record() else { return };
        let data = records::encode(&record);
        let write = writes::put_record(self.lock, self.ctx.target.acls(), paths::STATUS, &data, None);
        let _ = tokio::time::timeout(Duration::from_millis(500), write).await;
    }

    fn assign(&mut self) {
        if self.paused {
            return;
        }
        loop {
            let batch = self.board.plan(BATCH);
            if batch.is_empty() {
                return;
            }
            let generation = self.generation;
            let write = writes::assign(self.lock, self.ctx.target.acls(), &batch);
            self.pending.push(Box::pin(async move {
                let result = write.await;
                Completion::Assigned { generation, batch, result }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(cversion: i32, pzxid: i64) -> Stat {
        Stat {
            czxid: 1,
            mzxid: 1,
            pzxid,
            ctime: 0,
            mtime: 0,
            version: 0,
            cversion,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 0,
            num_children: 0,
        }
    }

    #[test]
    fn a_child_change_is_missed_only_when_never_heard_of() {
        let mut children = Children::listed(&stat(4, 100));
        assert!(!children.missed(Some(&stat(4, 100))), "nothing changed since the listing");
        // Heard before the listing's reply was applied: already in it, not counted twice.
        children.heard(90);
        assert!(!children.missed(Some(&stat(4, 100))));
        children.heard(101);
        assert!(!children.missed(Some(&stat(5, 101))), "one change, heard");
        assert!(children.missed(Some(&stat(6, 102))), "a second change, never heard of");
        // Heard after the read that showed it: the next read agrees again.
        children.heard(102);
        assert!(!children.missed(Some(&stat(6, 102))));
        // Changes heard beyond the read (applied before its reply) are no miss either.
        children.heard(103);
        assert!(!children.missed(Some(&stat(6, 102))));
        assert!(!children.missed(None), "a parent that is gone says nothing");
    }

    #[test]
    fn changes_without_a_reported_zxid_are_all_counted() {
        let mut children = Children::listed(&stat(0, 100));
        children.heard(-1);
        children.heard(0);
        assert!(!children.missed(Some(&stat(2, 120))));
        assert!(children.missed(Some(&stat(3, 130))));
    }

    #[test]
    fn child_versions_compare_across_the_wrap() {
        let mut children = Children::listed(&stat(i32::MAX, 100));
        children.heard(101);
        assert_eq!(children.version, i32::MIN);
        assert!(!children.missed(Some(&stat(i32::MIN, 101))));
        assert!(children.missed(Some(&stat(i32::MIN.wrapping_add(1), 102))));
    }
}
