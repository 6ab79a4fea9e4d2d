//! The leader's pure core: the board plus every decision the leader loop makes around it. Events,
//! replies and ticks go in as plain data; what to send to ZooKeeper comes out as [`Effect`]s, in
//! the order the requests must be sent. No I/O: `leader.rs` turns ZooKeeper's events and replies
//! into calls here and carries out the effects, and the property tests (`board_properties`) drive
//! this same core against a model of ZooKeeper.
//!
//! The order of requests matters (ZooKeeper serves a session's requests in order, and a read asked
//! after an event must be answered after it): a driver carries out the effects of each call before
//! it hands the core anything else.
//!
//! One rule the driver keeps, since only it sees its watches: every event already delivered is
//! applied before [`Core::assign`], and again after a rebuild (what changed while the view was
//! rebuilt reached the new watches meanwhile; a plan made before applying it would assign a task
//! already finished or collected).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zookeeper_client::{Error as ZkError, SessionState};

use super::board::{Action, Assignment, Board, Resolution, ReturnReason, TaskState};
use super::writes::WriteError;
use crate::records::{self, StatusRecord, TaskSettings};
use crate::telemetry::http::Probes;
use crate::telemetry::metrics::MasterMetrics;

/// Status and housekeeping: the least time between two status writes.
const STATUS_PERIOD: Duration = Duration::from_millis(500);
/// How often the leader checks that it still hears of every change (see [`Heard`]).
const VIEW_CHECK_PERIOD: Duration = Duration::from_secs(2);

/// Why leading ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeadEnd {
    Shutdown,
    /// The session expired or closed: rejoin with a new one.
    SessionLost,
    /// Our election znode vanished or a write was fenced: step down.
    LeadershipLost,
}

/// How a failed ZooKeeper request ends leading, when it does.
pub fn end_for(error: &ZkError) -> LeadEnd {
    match error {
        ZkError::SessionExpired | ZkError::ClientClosed | ZkError::AuthFailed => LeadEnd::SessionLost,
        _ => LeadEnd::LeadershipLost,
    }
}

/// A request the core asks the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Read a worker's znode, leaving a one-shot data watch if `watch`, and look for its
    /// registration's inbox unless `known` names the incarnation read (and its inbox). Answered
    /// with [`Core::worker_read`].
    ReadWorker { generation: u64, wid: String, watch: bool, known: Option<(i64, Option<String>)> },
    /// List `/workers`; answered with [`Core::workers_listed`].
    ListWorkers { generation: u64 },
    /// One fenced multi of assignments; answered with [`Core::assigned`].
    Assign { generation: u64, batch: Vec<Assignment> },
    /// Retry, revoke or dead-letter a task; answered with [`Core::resolved`].
    Resolve { generation: u64, task: String, reason: ReturnReason },
    /// Delete a task's extension records (and the task itself, with `with_task`: retention);
    /// answered with [`Core::cleaned`].
    Cleanup { task: String, with_task: bool },
    /// Remove the inboxes of departed workers; answered with [`Core::inboxes_swept`].
    SweepInboxes,
    /// Read the child versions of `/tasks` and `/workers`; answered with [`Core::view_checked`].
    CheckView { generation: u64 },
    /// Write the status record; answered with [`Core::status_written`].
    Publish(StatusRecord),
}

/// A change under `/tasks` that a watch reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskChange {
    Created,
    /// Data written: a result (or a dead letter).
    Written,
    Deleted,
}

/// A worker's znode as read, with its registration's inbox when it was looked for (None: could
/// not look; the worker gets plain assignments, which work for every worker, until a later read).
#[derive(Clone, Debug)]
pub struct WorkerRead {
    pub data: Vec<u8>,
    pub version: i32,
    /// The registration's creation zxid.
    pub created: i64,
    pub inbox: Option<Option<String>>,
}

impl WorkerRead {
    /// Feeds the read to the board: the znode's state, then the inbox when it was looked for.
    fn apply(self, board: &mut Board, wid: &str) -> Option<Action> {
        let action = board.worker_read(wid, &self.data, self.version, self.created);
        if let Some(inbox) = self.inbox {
            board.set_inbox(wid, self.created, inbox);
        }
        action
    }
}

/// A task found by a rebuild's listing.
#[derive(Clone, Debug)]
pub struct ListedTask {
    pub id: String,
    /// With a result: when it was written, and the write's zxid.
    pub finished: Option<(Instant, i64)>,
}

/// What a rebuild read from ZooKeeper: the tasks listed first (so that a worker's task is known),
/// then the workers, then the names of the extension records.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub tasks: Vec<ListedTask>,
    pub tasks_listed: Children,
    pub workers: Vec<(String, WorkerRead)>,
    pub workers_listed: Children,
    /// Task names under the attempts and dead-letter records.
    pub records: Vec<String>,
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

/// A parent's child version as heard of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Children {
    version: i32,
    /// The last child change the listing held (its parent's pzxid).
    listed: i64,
}

impl Children {
    /// As a listing found them: the parent's `cversion` and `pzxid`.
    pub fn listed(cversion: i32, pzxid: i64) -> Self {
        Children { version: cversion, listed: pzxid }
    }

    /// A child change heard of; `zxid` is the change's (not positive: not reported).
    fn heard(&mut self, zxid: i64) {
        if zxid <= 0 || zxid > self.listed {
            self.version = self.version.wrapping_add(1);
        }
    }

    /// Whether a parent at child version `cversion` (None: gone), read after everything heard
    /// so far, shows changes never heard of.
    fn missed(&self, cversion: Option<i32>) -> bool {
        cversion.is_some_and(|cversion| cversion.wrapping_sub(self.version) > 0)
    }
}

pub struct Core {
    board: Board,
    task_timeout: Duration,
    retention: Duration,
    metrics: MasterMetrics,
    probes: Arc<Probes>,
    /// Bumped at every rebuild; replies of older generations are dropped.
    generation: u64,
    /// No assignment while disconnected or until the view is rebuilt after it.
    paused: bool,
    /// The session state last heard of: from the ordered session events of our persistent
    /// watches, and from the client's state as a backstop.
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
    /// Workers with a one-shot watch in place (see `Board::needs_watch`).
    watched: HashSet<String>,
    /// A listing of `/workers` is in flight; `relist`: another change came meanwhile.
    listing: bool,
    relist: bool,
    /// Inboxes of departed workers may be left: sweep at the next tick (unless one runs).
    sweep_due: bool,
    sweeping: bool,
    end: Option<LeadEnd>,
    effects: Vec<Effect>,
}

impl Core {
    /// A core for a leader that took over with `counters` (the last status record, naming this
    /// leader and its epoch). It leads once [`Core::rebuilt`] has given it a view.
    pub fn new(settings: &TaskSettings, counters: StatusRecord, metrics: MasterMetrics, probes: Arc<Probes>) -> Self {
        let now = Instant::now();
        Core {
            board: Board::new(),
            task_timeout: Duration::from_millis(settings.task_timeout_ms),
            retention: Duration::from_millis(settings.retention_ms),
            metrics,
            probes,
            generation: 0,
            paused: false,
            connected: true,
            resync_due: false,
            heard: Heard::default(),
            checking: false,
            last_check: now,
            counters,
            last_published: None,
            last_status_at: now,
            status_in_flight: false,
            watched: HashSet::new(),
            listing: false,
            relist: false,
            sweep_due: false,
            sweeping: false,
            end: None,
            effects: Vec::new(),
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    #[cfg(test)]
    pub fn board_mut(&mut self) -> &mut Board {
        &mut self.board
    }

    #[cfg(test)]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn epoch(&self) -> u64 {
        self.counters.epoch
    }

    /// The requests asked for since the last call, in the order they must be sent.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    /// How leading ends, once decided.
    pub fn end(&self) -> Option<LeadEnd> {
        self.end
    }

    pub fn take_end(&mut self) -> Option<LeadEnd> {
        self.end.take()
    }

    /// Leading ends for `end`, whatever was decided before.
    pub fn end_with(&mut self, end: LeadEnd) {
        self.end = Some(end);
    }

    /// Leadership could not be confirmed: step down, unless leading already ends otherwise.
    pub fn step_down(&mut self) {
        self.end.get_or_insert(LeadEnd::LeadershipLost);
    }

    /// Whether the watches must be added again and the view rebuilt now.
    pub fn resync_wanted(&self) -> bool {
        self.end.is_none() && self.resync_due && self.connected
    }

    // --- the view ------------------------------------------------------------------------------

    /// A resync begins: the driver adds the watches again and reads a [`Snapshot`].
    pub fn resync_started(&mut self) {
        self.resync_due = false;
    }

    /// A fresh board from a snapshot: results written above the counted zxid are counted, stray
    /// records removed, and every worker watched that must be.
    pub fn rebuilt(&mut self, snapshot: Snapshot) {
        let mut board = Board::new();
        let mut finished = Vec::new();
        for task in snapshot.tasks {
            match task.finished {
                Some((at, written)) => finished.push((at, task.id, written)),
                None => board.task_created(&task.id),
            }
        }
        finished.sort();
        // Results written above the counted zxid landed while no leader heard them (or this one,
        // disconnected, did not): count each once. Those already counted are at or below it.
        let counted_through = self.counters.counted_through_zxid;
        for (at, id, written) in finished {
            board.task_completed(&id, at);
            if counted_through > 0 && written > counted_through {
                self.count_result(written);
            }
        }
        board.completed = self.board.completed;
        for (wid, read) in snapshot.workers.iter().cloned() {
            read.apply(&mut board, &wid);
        }
        let mut stray = Vec::new();
        for name in snapshot.records {
            if board.task_state(&name).is_some() {
                board.mark_records(&name);
            } else {
                stray.push(name);
            }
        }
        self.board = board;
        self.heard = Heard { tasks: snapshot.tasks_listed, workers: snapshot.workers_listed };
        self.generation += 1;
        self.sweep_due = true;
        self.watched.clear();
        // Records of a task that is gone: remove them.
        for task in stray {
            self.effects.push(Effect::Cleanup { task, with_task: false });
        }
        for (wid, _) in &snapshot.workers {
            self.ensure_watched(wid);
        }
        if self.paused {
            self.paused = false;
            self.probes.healthy.store(true, Ordering::Relaxed);
            tracing::info!("view rebuilt: assignments resumed");
        }
    }

    /// A resync's rebuild failed.
    pub fn rebuild_failed(&mut self, error: &ZkError) {
        if *error == ZkError::ConnectionLoss {
            // Lost again on the way: the session events of the new disconnection tell when to
            // try again.
            tracing::warn!("connection lost while rebuilding the view; trying again once reconnected");
            self.connected = false;
            self.resync_due = true;
        } else {
            tracing::warn!(%error, "cannot rebuild the view; stepping down");
            self.end = Some(end_for(error));
        }
    }

    // --- events --------------------------------------------------------------------------------

    /// A session state heard of, from a watch's session event or the client's state. Each
    /// disconnection pauses assignments and makes a resync due, which runs as soon as a connected
    /// state is heard (they come in order from the watches).
    pub fn session(&mut self, state: SessionState) {
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

    /// A change of `/tasks/<id>`; `zxid` is its write's (not positive: not reported).
    pub fn task_changed(&mut self, id: &str, change: TaskChange, zxid: i64) {
        if matches!(change, TaskChange::Created | TaskChange::Deleted) {
            self.heard.tasks.heard(zxid);
        }
        match change {
            TaskChange::Created => self.board.task_created(id),
            TaskChange::Written if self.board.task_state(id).is_some() => {
                let before = self.board.completed;
                self.board.task_completed(id, Instant::now());
                if self.board.completed > before {
                    self.count_result(zxid);
                }
            },
            TaskChange::Written => {},
            TaskChange::Deleted => {
                let holder = self.board.holder_of(id).map(str::to_string);
                if let Some(action) = self.board.task_deleted(id) {
                    self.act(action);
                }
                // Collected while running: the worker's clear will not come with a result.
                if let Some(wid) = holder {
                    self.ensure_watched(&wid);
                }
            },
        }
    }

    /// A result counted; `zxid` is its write's (not positive: the server reports none, and the
    /// record can no longer say which results it holds).
    fn count_result(&mut self, zxid: i64) {
        self.counters.completed += 1;
        self.metrics.completed.inc();
        self.counters.counted_through_zxid = if zxid > 0 { self.counters.counted_through_zxid.max(zxid) } else { 0 };
    }

    /// A registration or departure under `/workers`: list it again.
    pub fn membership_changed(&mut self, zxid: i64) {
        self.heard.workers.heard(zxid);
        self.list_workers();
        self.sweep_due = true;
    }

    /// An attempts record written: if its task runs, the worker recorded a failure or gave the
    /// task back, and cleared its znode in the same multi. Our own records concern tasks that
    /// are no longer running, so they cost nothing here.
    pub fn attempts_written(&mut self, task: &str) {
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
        self.effects.push(Effect::ListWorkers { generation: self.generation });
    }

    /// Level-triggered: what the read returns is the worker's truth at that version.
    pub fn read_worker(&mut self, wid: String) {
        let known = self.board.incarnation(&wid);
        self.effects.push(Effect::ReadWorker { generation: self.generation, wid, watch: false, known });
    }

    /// A read that leaves a one-shot watch, for a worker whose next change cannot be inferred.
    fn ensure_watched(&mut self, wid: &str) {
        if !self.board.needs_watch(wid) || !self.watched.insert(wid.to_string()) {
            return;
        }
        let known = self.board.incarnation(wid);
        self.effects.push(Effect::ReadWorker { generation: self.generation, wid: wid.to_string(), watch: true, known });
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Resolve { task, reason } => {
                self.effects.push(Effect::Resolve { generation: self.generation, task, reason })
            },
            Action::DeleteRecords { task } => self.effects.push(Effect::Cleanup { task, with_task: false }),
        }
    }

    fn fenced(&mut self, error: &WriteError) {
        self.metrics.fenced_writes.inc();
        tracing::warn!(%error, "write rejected: leadership lost");
        self.end = Some(LeadEnd::LeadershipLost);
    }

    // --- replies -------------------------------------------------------------------------------

    /// A worker read completed (`NoNode`: the worker is gone). `watched`: it was to leave a watch.
    /// Returns whether the driver keeps waiting on that watch (only after a successful read, and
    /// only while the worker still needs one); a watch no longer needed fires once, unheeded.
    pub fn worker_read(
        &mut self,
        generation: u64,
        wid: &str,
        result: Result<WorkerRead, ZkError>,
        watched: bool,
    ) -> bool {
        if generation != self.generation {
            return false;
        }
        let found = result.is_ok();
        match result {
            Ok(read) => {
                if let Some(action) = read.apply(&mut self.board, wid) {
                    self.act(action);
                }
            },
            Err(ZkError::NoNode) => {
                if let Some(action) = self.board.worker_deleted(wid) {
                    self.act(action);
                }
            },
            Err(error) => {
                tracing::debug!(%error, %wid, "worker read failed; the next event or rebuild covers it")
            },
        }
        match (watched, found) {
            (true, true) if self.board.needs_watch(wid) => return true,
            // After a failed read the tick places the watch again, if still needed.
            (true, _) => {
                self.watched.remove(wid);
            },
            (false, _) => self.ensure_watched(wid),
        }
        false
    }

    /// A kept watch on a worker's znode fired: read it again (with a new watch if it needs one).
    pub fn worker_changed(&mut self, generation: u64, wid: &str) {
        if generation != self.generation {
            return;
        }
        self.watched.remove(wid);
        self.ensure_watched(wid);
        if !self.watched.contains(wid) {
            self.read_worker(wid.to_string());
        }
    }

    /// Departures are the names that vanished; every listed worker is read, since one may have
    /// left and registered again between two listings (its creation zxid tells).
    pub fn workers_listed(&mut self, generation: u64, result: Result<Vec<String>, ZkError>) {
        self.listing = false;
        match result {
            Ok(names) if generation == self.generation => {
                let listed: HashSet<&str> = names.iter().map(String::as_str).collect();
                for wid in sorted(self.board.workers_not_in(&listed)) {
                    if let Some(action) = self.board.worker_deleted(&wid) {
                        self.act(action);
                    }
                }
                for wid in names {
                    self.read_worker(wid);
                }
            },
            Ok(_) => {},
            Err(error) => tracing::debug!(%error, "cannot list the workers; the next change or rebuild covers it"),
        }
        if std::mem::take(&mut self.relist) {
            self.list_workers();
        }
    }

    /// An assignment multi completed: per assignment, the worker znode's new version and
    /// creation zxid (which registration of that name the write landed on).
    pub fn assigned(&mut self, generation: u64, batch: &[Assignment], result: Result<Vec<(i32, i64)>, WriteError>) {
        let current = generation == self.generation;
        match result {
            Ok(versions) => {
                self.metrics.assignments.inc_by(batch.len() as u64);
                if current {
                    for (a, (version, created)) in batch.iter().zip(versions) {
                        self.board.assigned(a, version, created);
                    }
                }
            },
            Err(error) if error.is_fenced() => self.fenced(&error),
            Err(WriteError::Unknown) => {
                tracing::warn!(size = batch.len(), "connection lost during an assignment write; pausing");
                // Whether it landed only a read can tell: the view after a connection loss is
                // rebuilt anyway (the disconnection makes it due); one of an older generation
                // was rebuilt already.
                if current {
                    self.paused = true;
                    self.resync_due = true;
                }
            },
            Err(error) => {
                tracing::debug!(%error, size = batch.len(), "assignment batch rejected; re-planning");
                if current {
                    for a in batch.iter().rev() {
                        self.board.assignment_failed(a);
                    }
                    for wid in sorted(self.board.workers_needing_read()) {
                        self.read_worker(wid);
                    }
                }
            },
        }
    }

    /// A resolution completed.
    pub fn resolved(
        &mut self,
        generation: u64,
        task: &str,
        reason: &ReturnReason,
        result: Result<Resolution, WriteError>,
    ) {
        if generation != self.generation {
            return;
        }
        match result {
            Ok(resolution) => self.apply_resolution(task, reason, resolution),
            Err(error) if error.is_fenced() => self.fenced(&error),
            Err(error) => match reason {
                // The worker may still hold the task: it stays there until a read tells.
                ReturnReason::TimedOut { worker, .. } => {
                    tracing::warn!(%error, %task, %worker, "revocation not applied; reading the worker again");
                    if let Some(action) = self.board.revocation_failed(worker, task) {
                        self.act(action);
                    }
                    self.read_worker(worker.clone());
                },
                _ => {
                    tracing::warn!(%error, %task, "cannot record the attempt; retrying the task");
                    self.board.requeue(task);
                },
            },
        }
    }

    fn apply_resolution(&mut self, task: &str, reason: &ReturnReason, resolution: Resolution) {
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
            self.metrics.failed_attempts.inc();
        }
        if resolution.dead_lettered {
            self.counters.dead_lettered += 1;
            self.metrics.dead_lettered.inc();
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

    /// A cleanup completed; `expired`: it removed a task past retention.
    pub fn cleaned(&mut self, result: Result<(), WriteError>, expired: bool) {
        match result {
            Ok(()) if expired => {
                self.metrics.expired_results.inc();
            },
            Ok(()) => {},
            Err(error) if error.is_fenced() => self.fenced(&error),
            Err(error) => tracing::debug!(%error, "cleanup failed; retention retries later"),
        }
    }

    pub fn inboxes_swept(&mut self, result: Result<usize, WriteError>) {
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
    }

    /// The child versions of `/tasks` and `/workers` (None: gone), read after everything heard.
    pub fn view_checked(&mut self, generation: u64, result: Result<(Option<i32>, Option<i32>), ZkError>) {
        self.checking = false;
        match result {
            Ok((tasks, workers)) if generation == self.generation => {
                let (tasks_missed, workers_missed) =
                    (self.heard.tasks.missed(tasks), self.heard.workers.missed(workers));
                if (tasks_missed || workers_missed) && !self.resync_due {
                    tracing::warn!(
                        tasks_missed,
                        workers_missed,
                        "changes went unheard (our watches are gone): rebuilding the view"
                    );
                    self.probes.healthy.store(false, Ordering::Relaxed);
                    self.resync_due = true;
                }
            },
            Ok(_) => {},
            Err(error) => tracing::debug!(%error, "cannot check the view; checking again later"),
        }
    }

    pub fn status_written(&mut self, result: Result<(), WriteError>) {
        self.status_in_flight = false;
        match result {
            Ok(()) => {},
            Err(error) if error.is_fenced() => self.fenced(&error),
            Err(_) => self.last_published = None,
        }
    }

    // --- the clock -----------------------------------------------------------------------------

    /// The periodic turn. `client_connected`: the client's own state, a backstop for a connected
    /// state never heard of (the watches hear of every one).
    pub fn tick(&mut self, now: Instant, client_connected: bool) {
        if !self.connected && client_connected {
            self.connected = true;
        }
        self.check_view(now);
        self.expire(now);
        self.retire(now);
        self.housekeep(now);
    }

    /// Revokes the assignments older than the task timeout.
    pub fn expire(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        let mut expired = self.board.expired(self.task_timeout, now);
        // In a stable order, so that a run can be replayed.
        expired.sort_by(|a, b| action_task(a).cmp(action_task(b)));
        for action in expired {
            self.act(action);
        }
    }

    /// Removes the results older than the retention period.
    pub fn retire(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        for task in self.board.past_retention(self.retention, now) {
            self.effects.push(Effect::Cleanup { task, with_task: true });
        }
    }

    /// Reads every worker that needs one, watches every worker that needs it, sweeps inboxes,
    /// publishes the status.
    pub fn housekeep(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        for wid in sorted(self.board.workers_needing_read()) {
            self.read_worker(wid);
        }
        for wid in sorted(self.board.workers_needing_watch()) {
            self.ensure_watched(&wid);
        }
        if self.sweep_due && !self.sweeping {
            self.sweep_due = false;
            self.sweeping = true;
            self.effects.push(Effect::SweepInboxes);
        }
        self.publish_status(now);
    }

    /// Asks for the stats of `/tasks` and `/workers` (O(1) each), to compare their child
    /// versions with the changes heard of.
    fn check_view(&mut self, now: Instant) {
        if self.paused || self.checking || now.duration_since(self.last_check) < VIEW_CHECK_PERIOD {
            return;
        }
        self.checking = true;
        self.last_check = now;
        self.effects.push(Effect::CheckView { generation: self.generation });
    }

    /// The record to publish now, or None when nothing changed since the last one.
    fn status_record(&mut self) -> Option<StatusRecord> {
        let counts = self.board.counts();
        self.metrics.backlog.set(counts.backlog as i64);
        self.metrics.running.set(counts.running as i64);
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
        self.effects.push(Effect::Publish(record));
    }

    /// On a clean shutdown: the last counters, so that the next leader continues from them.
    pub fn final_status(&mut self) -> Option<StatusRecord> {
        self.last_published = None;
        self.status_record()
    }

    // --- planning ------------------------------------------------------------------------------

    /// Plans every assignment the board can make, in multis of at most `batch`.
    pub fn assign(&mut self, batch: usize) {
        if self.paused {
            return;
        }
        loop {
            let planned = self.board.plan(batch);
            if planned.is_empty() {
                return;
            }
            self.effects.push(Effect::Assign { generation: self.generation, batch: planned });
        }
    }
}

fn action_task(action: &Action) -> &str {
    match action {
        Action::Resolve { task, .. } | Action::DeleteRecords { task } => task,
    }
}

/// The board lists workers in its maps' order, which differs from one board to the next; sorted,
/// a run (and a property test's counterexample) can be replayed.
fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(version: i32) -> WorkerRead {
        WorkerRead { data: Vec::new(), version, created: 1, inbox: Some(None) }
    }

    /// A core whose view holds the tasks `pending` and the free worker `w1`.
    fn leading(pending: &[&str]) -> Core {
        let mut core =
            Core::new(&TaskSettings::default(), StatusRecord::default(), MasterMetrics::default(), Probes::new());
        let tasks = pending.iter().map(|id| ListedTask { id: id.to_string(), finished: None }).collect();
        core.rebuilt(Snapshot { tasks, workers: vec![("w1".into(), free(0))], ..Snapshot::default() });
        core.take_effects();
        core
    }

    fn planned(core: &mut Core) -> Vec<(u64, Vec<Assignment>)> {
        core.assign(128);
        let effects = core.take_effects();
        effects
            .into_iter()
            .filter_map(|e| match e {
                Effect::Assign { generation, batch } => Some((generation, batch)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_assignment_whose_outcome_is_unknown_holds_its_task_until_a_rebuild_tells() {
        let mut core = leading(&["t1"]);
        let [(generation, batch)] = &planned(&mut core)[..] else { panic!("one batch") };
        core.assigned(*generation, batch, Err(WriteError::Unknown));
        assert!(planned(&mut core).is_empty(), "nothing is planned while the outcome is unknown");
        assert_eq!(core.board().task_state("t1").map(|s| matches!(s, TaskState::Pending)), Some(false));
        assert!(core.resync_wanted(), "only a read can tell whether the write landed");
        core.resync_started();
        // The write had landed: w1 runs t1.
        let running = WorkerRead { data: b"t1".to_vec(), version: 1, created: 1, inbox: Some(None) };
        let tasks = vec![ListedTask { id: "t1".into(), finished: None }];
        core.rebuilt(Snapshot { tasks, workers: vec![("w1".into(), running)], ..Snapshot::default() });
        assert_eq!(core.board().holder_of("t1"), Some("w1"));
        assert!(planned(&mut core).is_empty(), "t1 is not planned again");
    }

    #[test]
    fn replies_to_an_older_view_change_nothing() {
        let mut core = leading(&["t1"]);
        let [(old, batch)] = &planned(&mut core)[..] else { panic!("one batch") };
        core.session(SessionState::Disconnected);
        core.session(SessionState::SyncConnected);
        core.resync_started();
        let tasks = vec![ListedTask { id: "t1".into(), finished: None }];
        core.rebuilt(Snapshot { tasks, workers: vec![("w1".into(), free(0))], ..Snapshot::default() });
        core.take_effects();
        // The old view's write was rejected: its worker and task are the new view's business.
        core.assigned(*old, batch, Err(WriteError::Conflict { index: 0, source: ZkError::BadVersion }));
        assert!(core.take_effects().is_empty(), "no read asked for an older view's rejection");
        core.worker_read(*old, "w1", Err(ZkError::NoNode), false);
        assert!(core.board().workers_not_in(&HashSet::new()).contains(&"w1".to_string()), "w1 is not dropped");
        assert_eq!(planned(&mut core).len(), 1, "t1 is planned for w1 in the new view");
    }

    #[test]
    fn every_rebuild_watches_the_workers_that_need_it_again() {
        // w1 holds the withdrawal mark of t1: only a watch tells when it lets go.
        let marked = || WorkerRead { data: crate::paths::withdrawal("t1"), version: 3, created: 1, inbox: Some(None) };
        let view = || Snapshot {
            tasks: vec![ListedTask { id: "t1".into(), finished: None }],
            workers: vec![("w1".into(), marked())],
            ..Snapshot::default()
        };
        let watched_reads = |effects: Vec<Effect>| {
            effects.iter().filter(|e| matches!(e, Effect::ReadWorker { watch: true, wid, .. } if wid == "w1")).count()
        };
        let mut core =
            Core::new(&TaskSettings::default(), StatusRecord::default(), MasterMetrics::default(), Probes::new());
        core.rebuilt(view());
        assert_eq!(watched_reads(core.take_effects()), 1);
        // The connection drops before the watched read completes: that watch belongs to the old
        // view, whose replies are dropped, so the new view must place its own.
        core.session(SessionState::Disconnected);
        core.session(SessionState::SyncConnected);
        core.resync_started();
        core.rebuilt(view());
        assert_eq!(watched_reads(core.take_effects()), 1, "the new view watches w1");
    }

    #[test]
    fn a_child_change_is_missed_only_when_never_heard_of() {
        let mut children = Children::listed(4, 100);
        assert!(!children.missed(Some(4)), "nothing changed since the listing");
        // Heard before the listing's reply was applied: already in it, not counted twice.
        children.heard(90);
        assert!(!children.missed(Some(4)));
        children.heard(101);
        assert!(!children.missed(Some(5)), "one change, heard");
        assert!(children.missed(Some(6)), "a second change, never heard of");
        // Heard after the read that showed it: the next read agrees again.
        children.heard(102);
        assert!(!children.missed(Some(6)));
        // Changes heard beyond the read (applied before its reply) are no miss either.
        children.heard(103);
        assert!(!children.missed(Some(6)));
        assert!(!children.missed(None), "a parent that is gone says nothing");
    }

    #[test]
    fn changes_without_a_reported_zxid_are_all_counted() {
        let mut children = Children::listed(0, 100);
        children.heard(-1);
        children.heard(0);
        assert!(!children.missed(Some(2)));
        assert!(children.missed(Some(3)));
    }

    #[test]
    fn child_versions_compare_across_the_wrap() {
        let mut children = Children::listed(i32::MAX, 100);
        children.heard(101);
        assert_eq!(children.version, i32::MIN);
        assert!(!children.missed(Some(i32::MIN)));
        assert!(children.missed(Some(i32::MIN.wrapping_add(1))));
    }
}
