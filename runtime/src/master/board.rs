//! The leader's view of tasks and workers, kept up to date incrementally from ZooKeeper events.
//! Pure logic: no I/O. The leader loop feeds it events and read results and carries out the
//! actions it returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::paths;

/// Why a running task came back without a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnReason {
    /// The worker cleared its znode without a result: it recorded a failure itself.
    Returned,
    /// A shutting-down worker handed the task back (its znode says draining): no attempt spent.
    GivenBack,
    /// The worker's znode vanished: process or session died. Counts as a failed attempt,
    /// unless the attempts record says this registration (`inbox`) gave the task back.
    WorkerDied { worker: String, inbox: Option<String> },
    /// The task ran past the timeout; revoke it from `worker` at `version` (and remove its
    /// entry from the worker's inbox, if it has one).
    TimedOut { worker: String, version: i32, inbox: Option<String> },
}

/// What became of a task that came back from a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Attempts recorded for the task after this resolution.
    pub attempts: u32,
    /// This resolution recorded a failed attempt.
    pub counted_failure: bool,
    pub dead_lettered: bool,
    /// For a timeout: the revoked worker's new znode version.
    pub revoked: Option<(String, i32)>,
    /// The task already has a result (or is gone): nothing to retry, its event follows.
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a worker.
    Pending,
    /// An assignment write is in flight or done.
    Assigned { worker: String, since: Instant },
    /// Back from a worker; the attempts record decides between retry and dead letter.
    Resolving,
    /// Revoked from `worker` (its znode holds the withdrawal mark) and to be retried, but its
    /// run there may not have stopped yet: no other worker gets it until this one lets go.
    Withdrawing { worker: String },
    /// A result is present; kept until the client collects it or retention expires.
    Done,
}

#[derive(Clone, Debug)]
struct Task {
    state: TaskState,
    /// An attempts or dead-letter record may exist and must be removed with the task.
    has_records: bool,
    /// Which task of this id it is: an id can be used again once collected, and the
    /// retention entry of an earlier one must not touch a later one.
    incarnation: u64,
}

/// What a worker's znode said at its last known version.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holding {
    Free,
    /// Holds a task id (ours or anything a foreign client wrote).
    Task(String),
    /// An assignment write is in flight.
    Assigning(String),
    /// A revocation write is in flight.
    Revoking,
    /// The withdrawal mark of this task: revoked, and the worker has not let go yet.
    Withdrawn(String),
    /// A write to it was rejected: busy until re-read.
    Unknown,
}

#[derive(Clone, Debug)]
struct Worker {
    /// The znode's version as the board takes it: possibly assumed ahead of what ZooKeeper
    /// showed (a result means the worker cleared, see `free_after_completion`).
    version: i32,
    /// The newest version ZooKeeper showed (a read, or the reply to a write of ours): a read
    /// older than that is out of date, whatever was assumed since.
    observed: i32,
    holding: Holding,
    /// The znode's creation zxid: a worker that registered again is a new incarnation.
    created: i64,
    /// This incarnation's inbox, where assignments are announced (None: a worker without one).
    inbox: Option<String>,
    /// Whether `inbox` was learnt for this incarnation (a failed look is repeated).
    inbox_known: bool,
    /// A write to it failed or its outcome is unknown: `holding` is the last thing known, and
    /// a read must confirm it before anything else is planned for this worker.
    stale: bool,
}

/// One planned assignment: write `task` into the worker's znode at `version`, and announce it
/// in the worker's inbox if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub task: String,
    pub worker: String,
    pub version: i32,
    pub inbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the attempts record of `task` and retry or dead-letter it.
    Resolve { task: String, reason: ReturnReason },
    /// Delete the extension records of a task the client collected.
    DeleteRecords { task: String },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub backlog: u64,
    pub running: u64,
    pub workers_busy: u64,
}

#[derive(Debug, Default)]
pub struct Board {
    tasks: HashMap<String, Task>,
    /// FIFO of pending task ids; entries are checked against `tasks` when popped.
    pending: VecDeque<String>,
    pending_count: u64,
    running_count: u64,
    workers: HashMap<String, Worker>,
    /// Free worker ids; entries are checked against `workers` when popped.
    free: VecDeque<String>,
    /// Completion order for retention: (completed at, task, its incarnation). Entries of
    /// collected tasks are dropped in bulk once they outnumber the tasks known.
    done: VecDeque<(Instant, String, u64)>,
    incarnations: u64,
    pub completed: u64,
}

/// Retention entries of collected tasks tolerated beyond twice the tasks known.
const RETENTION_SLACK: usize = 1024;

impl Board {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn task_state(&self, task: &str) -> Option<&TaskState> {
        self.tasks.get(task).map(|t| &t.state)
    }

    pub fn counts(&self) -> Counts {
        let running = self.running_count;
        let workers_busy = self.workers.values().filter(|w| w.holding != Holding::Free).count() as u64;
        Counts { backlog: self.pending_count, running, workers_busy }
    }

    fn set_state(&mut self, task: &str, state: TaskState) {
        let Some(entry) = self.tasks.get_mut(task) else { return };
        let was = std::mem::replace(&mut entry.state, state);
        let is = &entry.state;
        let running = |s: &TaskState| matches!(s, TaskState::Assigned { .. } | TaskState::Withdrawing { .. });
        match (was == TaskState::Pending, *is == TaskState::Pending) {
            (false, true) => {
                self.pending_count += 1;
                self.pending.push_back(task.to_string());
            },
            (true, false) => self.pending_count -= 1,
            _ => {},
        }
        match (running(&was), running(is)) {
            (false, true) => self.running_count += 1,
            (true, false) => self.running_count -= 1,
            _ => {},
        }
    }

    /// `/tasks/<id>` exists with empty data (event or rebuild).
    pub fn task_created(&mut self, task: &str) {
        if self.tasks.contains_key(task) {
            return;
        }
        self.insert_task(task);
        self.set_state(task, TaskState::Pending);
    }

    /// `/tasks/<id>` holds a result. `at` is when it completed (rebuild passes its age).
    pub fn task_completed(&mut self, task: &str, at: Instant) {
        match self.tasks.get(task).map(|t| t.state.clone()) {
            Some(TaskState::Done) => return,
            Some(TaskState::Assigned { worker, .. }) => {
                self.set_state(task, TaskState::Done);
                self.free_after_completion(&worker, task);
            },
            Some(_) => self.set_state(task, TaskState::Done),
            None => self.insert_task(task),
        }
        self.completed += 1;
        self.retain_until(task, at);
    }

    fn insert_task(&mut self, task: &str) {
        self.incarnations += 1;
        let entry = Task { state: TaskState::Done, has_records: false, incarnation: self.incarnations };
        self.tasks.insert(task.to_string(), entry);
    }

    /// Queues `task` for deletion after the retention period, counted from `at`. The queue
    /// holds an entry per completion, including those the clients collected since: when such
    /// entries make up most of it, they are dropped in one pass (amortised O(1) per task), so
    /// it stays within twice the tasks known.
    fn retain_until(&mut self, task: &str, at: Instant) {
        let Some(incarnation) = self.tasks.get(task).map(|t| t.incarnation) else { return };
        self.done.push_back((at, task.to_string(), incarnation));
        if self.done.len() > 2 * self.tasks.len() + RETENTION_SLACK {
            let tasks = &self.tasks;
            self.done.retain(|(_, id, inc)| tasks.get(id).is_some_and(|t| t.incarnation == *inc));
        }
    }

    /// Our workers write the result and clear their znode in one multi, so a result means the
    /// worker is free one version later. Assuming it now saves a read on the critical path; a
    /// worker that clears separately (seed style) just rejects the next assignment's version
    /// guard until it has cleared, and is re-read.
    fn free_after_completion(&mut self, wid: &str, task: &str) {
        let Some(worker) = self.workers.get_mut(wid) else { return };
        let cleared_version = match &worker.holding {
            Holding::Task(t) if t == task => worker.version + 1,
            // Our assignment write's reply is not processed yet: assignment plus clear.
            Holding::Assigning(t) if t == task => worker.version + 2,
            _ => return,
        };
        worker.version = cleared_version;
        worker.holding = Holding::Free;
        self.free.push_back(wid.to_string());
    }

    /// The worker `task` is assigned to, while it runs.
    pub fn holder_of(&self, task: &str) -> Option<&str> {
        match self.tasks.get(task).map(|t| &t.state) {
            Some(TaskState::Assigned { worker, .. }) => Some(worker),
            _ => None,
        }
    }

    /// Whether the next change of this worker's znode cannot be inferred, so it must be
    /// watched: it holds something that is not a task running there (a collected or foreign
    /// task, the draining or a withdrawal mark, garbage). Running tasks end with a result or an attempts
    /// record, which the leader watches anyway.
    pub fn needs_watch(&self, wid: &str) -> bool {
        match self.workers.get(wid).map(|w| &w.holding) {
            Some(Holding::Task(task)) => self.holder_of(task) != Some(wid),
            // Only the worker's clear of the mark says that its revoked run has stopped.
            Some(Holding::Withdrawn(_)) => true,
            _ => false,
        }
    }

    pub fn workers_needing_watch(&self) -> Vec<String> {
        self.workers.keys().filter(|wid| self.needs_watch(wid)).cloned().collect()
    }

    /// Known workers missing from a listing of `/workers`.
    pub fn workers_not_in(&self, listed: &HashSet<&str>) -> Vec<String> {
        self.workers.keys().filter(|wid| !listed.contains(wid.as_str())).cloned().collect()
    }

    /// The task is finished by us (dead letter written): done without counting a completion.
    pub fn task_dead_lettered(&mut self, task: &str, at: Instant) {
        if let Some(entry) = self.tasks.get_mut(task) {
            entry.has_records = true;
        }
        if self.tasks.get(task).is_some_and(|t| t.state != TaskState::Done) {
            self.set_state(task, TaskState::Done);
            self.retain_until(task, at);
        }
    }

    /// `/tasks/<id>` was deleted (collected by its client, or by retention).
    pub fn task_deleted(&mut self, task: &str) -> Option<Action> {
        let entry = self.tasks.get(task)?;
        let has_records = entry.has_records;
        self.set_state(task, TaskState::Done);
        self.tasks.remove(task);
        has_records.then(|| Action::DeleteRecords { task: task.to_string() })
    }

    pub fn mark_records(&mut self, task: &str) {
        if let Some(entry) = self.tasks.get_mut(task) {
            entry.has_records = true;
        }
    }

    /// A resolve of `task` came back (see `writes::resolve`): the revoked worker holds the
    /// withdrawal mark (a worker with an inbox) or is free, and the task is done (dead letter)
    /// or back in the queue, or waits for the worker to let go. Nothing more when a result
    /// landed meanwhile: its event follows.
    pub fn resolved(&mut self, task: &str, reason: &ReturnReason, resolution: &Resolution, now: Instant) {
        if let Some((worker, version)) = &resolution.revoked {
            let marked = matches!(reason, ReturnReason::TimedOut { inbox: Some(_), .. });
            self.revoked(worker, *version, marked.then_some(task));
        }
        if resolution.finished {
            return;
        }
        if resolution.counted_failure || matches!(reason, ReturnReason::Returned) && resolution.attempts > 0 {
            self.mark_records(task);
        }
        if resolution.dead_lettered {
            self.task_dead_lettered(task, now);
        } else {
            self.requeue(task);
        }
    }

    /// The outcome of a resolve: back to the queue, or, while a worker still holds the task's
    /// withdrawal mark, to wait for that worker to let go.
    pub fn requeue(&mut self, task: &str) {
        if self.tasks.get(task).is_some_and(|t| t.state == TaskState::Resolving) {
            let withdrawing = self.workers.iter().find(|(_, w)| w.holding == Holding::Withdrawn(task.to_string()));
            let state = match withdrawing {
                Some((wid, _)) => TaskState::Withdrawing { worker: wid.clone() },
                None => TaskState::Pending,
            };
            self.set_state(task, state);
        }
    }

    /// `wid` no longer holds the withdrawal mark of `task` (cleared, or the worker is gone): the
    /// run there has stopped, so the task may run elsewhere.
    fn let_go(&mut self, task: &str, wid: &str) {
        if matches!(self.tasks.get(task).map(|t| &t.state), Some(TaskState::Withdrawing { worker }) if worker == wid) {
            self.set_state(task, TaskState::Pending);
        }
    }

    /// The current data, version and creation zxid of `/workers/<wid>` (a read or the rebuild).
    /// Reads older than what we know are ignored, so out-of-order completions are harmless. A
    /// later creation zxid means the worker we knew died and registered again; an earlier one
    /// is a late read of a previous incarnation.
    pub fn worker_read(&mut self, wid: &str, data: &[u8], version: i32, created: i64) -> Option<Action> {
        match self.workers.get(wid).map(|w| w.created) {
            Some(known) if created < known => return None,
            Some(known) if created > known => {
                let died = self.worker_deleted(wid);
                self.worker_read(wid, data, version, created);
                // The new registration holds what the old one was assigned: the assignment,
                // planned for the old one at version 0, landed on the new one (same name,
                // version 0 again). The task runs there, so it stays there.
                if let Some(Action::Resolve { task, .. }) = &died {
                    if data == task.as_bytes() {
                        let since = Instant::now();
                        self.set_state(task, TaskState::Assigned { worker: wid.to_string(), since });
                        return None;
                    }
                }
                return died;
            },
            _ => {},
        }
        let holding = match paths::withdrawn_task(data) {
            _ if data.is_empty() => Holding::Free,
            Some(task) => Holding::Withdrawn(task.to_string()),
            None => Holding::Task(String::from_utf8_lossy(data).into_owned()),
        };
        let previous = match self.workers.get(wid) {
            Some(w) if version < w.observed => return None,
            // Older than assumed: out of date, unless a write at the assumed version was
            // rejected, which proves the assumption wrong.
            Some(w) if version < w.version && w.holding != Holding::Unknown => return None,
            Some(w) if version == w.version && w.holding != Holding::Unknown && !w.stale => return None,
            Some(w) => Some(w.holding.clone()),
            None => None,
        };
        let (inbox, inbox_known) = self.workers.get(wid).map(|w| (w.inbox.clone(), w.inbox_known)).unwrap_or_default();
        self.workers.insert(
            wid.to_string(),
            Worker { version, observed: version, holding: holding.clone(), created, inbox, inbox_known, stale: false },
        );
        if holding == Holding::Free {
            self.free.push_back(wid.to_string());
        }
        // Learnt from ZooKeeper (rebuild): the task runs there, or its revoked run may.
        let learnt = match &holding {
            Holding::Task(task) => Some((task, TaskState::Assigned { worker: wid.to_string(), since: Instant::now() })),
            Holding::Withdrawn(task) => Some((task, TaskState::Withdrawing { worker: wid.to_string() })),
            _ => None,
        };
        if let Some((task, state)) = learnt {
            if self.tasks.get(task).is_some_and(|t| t.state == TaskState::Pending) {
                self.set_state(task, state);
            }
        }
        match previous {
            Some(Holding::Withdrawn(old)) if holding != Holding::Withdrawn(old.clone()) => {
                self.let_go(&old, wid);
                None
            },
            Some(Holding::Task(old) | Holding::Assigning(old)) if holding != Holding::Task(old.clone()) => {
                let reason = if data == paths::DRAINING { ReturnReason::GivenBack } else { ReturnReason::Returned };
                self.returned(&old, wid, reason)
            },
            _ => None,
        }
    }

    /// The known incarnation of `wid`: its creation zxid and inbox, once learnt.
    pub fn incarnation(&self, wid: &str) -> Option<(i64, Option<String>)> {
        self.workers.get(wid).filter(|w| w.inbox_known).map(|w| (w.created, w.inbox.clone()))
    }

    /// The inbox of the incarnation of `wid` created at `created` (learnt along with a read).
    pub fn set_inbox(&mut self, wid: &str, created: i64, inbox: Option<String>) {
        if let Some(worker) = self.workers.get_mut(wid).filter(|w| w.created == created) {
            worker.inbox = inbox;
            worker.inbox_known = true;
        }
    }

    /// `/workers/<wid>` is gone.
    pub fn worker_deleted(&mut self, wid: &str) -> Option<Action> {
        let worker = self.workers.remove(wid)?;
        match worker.holding {
            Holding::Task(task) | Holding::Assigning(task) => {
                let reason = ReturnReason::WorkerDied { worker: wid.to_string(), inbox: worker.inbox };
                self.returned(&task, wid, reason)
            },
            Holding::Withdrawn(task) => {
                self.let_go(&task, wid);
                None
            },
            Holding::Free | Holding::Revoking | Holding::Unknown => None,
        }
    }

    /// `task` left `wid` without a result: resolve it if it was still running there.
    fn returned(&mut self, task: &str, wid: &str, reason: ReturnReason) -> Option<Action> {
        match self.tasks.get(task).map(|t| &t.state) {
            Some(TaskState::Assigned { worker, .. }) if worker == wid => {
                // A worker's failure or give-back leaves an attempts record, and so may a
                // death after a give-back: it goes with the task.
                self.mark_records(task);
                self.set_state(task, TaskState::Resolving);
                Some(Action::Resolve { task: task.to_string(), reason })
            },
            _ => None,
        }
    }

    /// Pairs pending tasks with free workers, FIFO, at most `limit` pairs.
    pub fn plan(&mut self, limit: usize) -> Vec<Assignment> {
        let mut planned = Vec::new();
        while planned.len() < limit {
            let Some(wid) = self.pop_free_worker() else { break };
            let Some(task) = self.pop_pending_task() else {
                self.free.push_front(wid);
                break;
            };
            let worker = self.workers.get_mut(&wid).expect("popped worker exists");
            worker.holding = Holding::Assigning(task.clone());
            let (version, inbox) = (worker.version, worker.inbox.clone());
            self.set_state(&task, TaskState::Assigned { worker: wid.clone(), since: Instant::now() });
            planned.push(Assignment { task, worker: wid, version, inbox });
        }
        planned
    }

    /// A stale worker is left out (its read puts it back): what the board assumed of it, say free
    /// after a result, rests on a write whose outcome was never seen.
    fn pop_free_worker(&mut self) -> Option<String> {
        while let Some(wid) = self.free.pop_front() {
            if self.workers.get(&wid).is_some_and(|w| w.holding == Holding::Free && !w.stale) {
                return Some(wid);
            }
        }
        None
    }

    fn pop_pending_task(&mut self) -> Option<String> {
        while let Some(task) = self.pending.pop_front() {
            if self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Pending) {
                return Some(task);
            }
        }
        None
    }

    /// The assignment write succeeded: the znode of the registration created at `created` is at
    /// `version` holding the task. That may be a new registration of the worker's name (the old
    /// one died and the name registered again before the write, whose version starts at 0 too):
    /// the task runs there, whatever the board concluded from the old one's departure meanwhile.
    pub fn assigned(&mut self, a: &Assignment, version: i32, created: i64) {
        let known = self.workers.get(&a.worker).map(|w| (w.created, w.version));
        let landed_elsewhere = match known {
            Some((known, _)) if created < known => return,
            Some((known, _)) => created > known,
            None => true,
        };
        if landed_elsewhere {
            let worker = Worker {
                version,
                observed: version,
                holding: Holding::Task(a.task.clone()),
                created,
                inbox: None,
                inbox_known: false,
                stale: false,
            };
            self.workers.insert(a.worker.clone(), worker);
        } else if let Some(worker) = self.workers.get_mut(&a.worker) {
            worker.observed = worker.observed.max(version);
            if version <= worker.version {
                return;
            }
            let ours = worker.holding == Holding::Assigning(a.task.clone());
            worker.version = version;
            worker.holding = Holding::Task(a.task.clone());
            if ours {
                return;
            }
        }
        // The task was taken for lost (the old registration's departure, or a read of the new
        // one from before the write): it runs on this registration, so it stays there.
        if matches!(self.tasks.get(&a.task).map(|t| &t.state), Some(TaskState::Pending | TaskState::Resolving)) {
            self.set_state(&a.task, TaskState::Assigned { worker: a.worker.clone(), since: Instant::now() });
        }
    }

    /// The assignment write was rejected (worker or task changed meanwhile): undo it. The
    /// caller re-reads the worker, whose read brings it back to the pool.
    pub fn assignment_failed(&mut self, a: &Assignment) {
        if let Some(worker) = self.workers.get_mut(&a.worker) {
            if worker.holding == Holding::Assigning(a.task.clone()) {
                // Not free, so it is not planned until re-read.
                worker.holding = Holding::Unknown;
            }
        }
        if matches!(self.tasks.get(&a.task).map(|t| &t.state), Some(TaskState::Assigned { worker, .. }) if *worker == a.worker)
        {
            self.set_state(&a.task, TaskState::Pending);
            // Keep its place at the head of the queue.
            if let Some(last) = self.pending.pop_back() {
                self.pending.push_front(last);
            }
        }
    }

    /// Running tasks older than `timeout`: marked resolving, to be revoked by the caller.
    /// Walks the workers, not the tasks: O(workers) per call.
    pub fn expired(&mut self, timeout: Duration, now: Instant) -> Vec<Action> {
        let mut expired = Vec::new();
        for (wid, worker) in &self.workers {
            let Holding::Task(task) = &worker.holding else { continue };
            if let Some(TaskState::Assigned { worker: holder, since }) = self.tasks.get(task).map(|t| &t.state) {
                if holder == wid && now.duration_since(*since) >= timeout {
                    expired.push((task.clone(), wid.clone(), worker.version, worker.inbox.clone()));
                }
            }
        }
        let mut actions = Vec::new();
        for (task, wid, version, inbox) in expired {
            if let Some(worker) = self.workers.get_mut(&wid) {
                worker.holding = Holding::Revoking;
            }
            self.set_state(&task, TaskState::Resolving);
            actions.push(Action::Resolve { task, reason: ReturnReason::TimedOut { worker: wid, version, inbox } });
        }
        actions
    }

    /// A revocation succeeded: the worker's znode is at `version`, holding the withdrawal mark
    /// of `marked` (a worker with an inbox) or empty (a seed worker: free).
    pub fn revoked(&mut self, wid: &str, version: i32, marked: Option<&str>) {
        if let Some(worker) = self.workers.get_mut(wid) {
            worker.observed = worker.observed.max(version);
            if version > worker.version {
                worker.version = version;
                match marked {
                    Some(task) => worker.holding = Holding::Withdrawn(task.to_string()),
                    None => {
                        worker.holding = Holding::Free;
                        self.free.push_back(wid.to_string());
                    },
                }
            }
        }
    }

    /// A revocation was rejected: the worker changed meanwhile; re-read it.
    /// A revocation of `task` from `wid` was rejected or its outcome is unknown. The worker may
    /// still run the task, so it stays assigned there (its timeout starts again) until a read
    /// of the worker shows what became of it; it is never handed to another worker before.
    ///
    /// A read that came back meanwhile and showed the worker moved on (free, or holding
    /// something else: it failed or gave the task back just as it timed out) means the task
    /// left it without our revocation: it is resolved as returned.
    pub fn revocation_failed(&mut self, wid: &str, task: &str) -> Option<Action> {
        let Some(worker) = self.workers.get_mut(wid) else {
            // The worker is gone: its death was seen meanwhile and resolves the task.
            self.requeue(task);
            return None;
        };
        let resolving = self.tasks.get(task).is_some_and(|t| t.state == TaskState::Resolving);
        if worker.holding != Holding::Revoking {
            self.mark_records(task);
            return resolving.then(|| Action::Resolve { task: task.to_string(), reason: ReturnReason::Returned });
        }
        worker.holding = Holding::Task(task.to_string());
        worker.stale = true;
        if resolving {
            self.set_state(task, TaskState::Assigned { worker: wid.to_string(), since: Instant::now() });
        }
        None
    }

    /// Completed tasks older than `retention`, removed from the retention queue.
    pub fn past_retention(&mut self, retention: Duration, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((at, _, _)) = self.done.front() {
            if now.duration_since(*at) < retention {
                break;
            }
            let Some((_, task, incarnation)) = self.done.pop_front() else { break };
            if self.tasks.get(&task).is_some_and(|t| t.state == TaskState::Done && t.incarnation == incarnation) {
                out.push(task);
            }
        }
        out
    }

    /// Workers whose state must be re-read: after a rejected write, or to learn their inbox.
    pub fn workers_needing_read(&self) -> Vec<String> {
        let needed = |w: &Worker| w.holding == Holding::Unknown || w.stale || !w.inbox_known;
        self.workers.iter().filter(|(_, w)| needed(w)).map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_with(tasks: &[&str], workers: &[&str]) -> Board {
        let mut b = Board::new();
        for w in workers {
            b.worker_read(w, b"", 0, 1);
            b.set_inbox(w, 1, None);
        }
        for t in tasks {
            b.task_created(t);
        }
        b
    }

    #[test]
    fn plans_fifo_and_never_gives_one_worker_two_tasks() {
        let mut b = board_with(&["t1", "t2", "t3"], &["w1", "w2"]);
        let plan = b.plan(100);
        assert_eq!(
            plan,
            vec![
                Assignment { task: "t1".into(), worker: "w1".into(), version: 0, inbox: None },
                Assignment { task: "t2".into(), worker: "w2".into(), version: 0, inbox: None },
            ]
        );
        assert!(b.plan(100).is_empty(), "no free worker left");
        assert_eq!(b.counts(), Counts { backlog: 1, running: 2, workers_busy: 2 });
    }

    #[test]
    fn duplicate_events_are_idempotent() {
        let mut b = board_with(&["t1", "t1"], &["w1"]);
        b.worker_read("w1", b"", 0, 1);
        assert_eq!(b.plan(100).len(), 1);
        assert!(b.plan(100).is_empty());
        assert_eq!(b.counts().backlog, 0);
    }

    #[test]
    fn completion_then_worker_clear_frees_the_worker_without_resolving() {
        let mut b = board_with(&["t1", "t2"], &["w1"]);
        let a = b.plan(100).remove(0);
        b.assigned(&a, 1, 1);
        b.task_completed("t1", Instant::now());
        assert_eq!(b.worker_read("w1", b"", 2, 1), None, "a completed task is not resolved");
        assert_eq!(b.plan(100)[0].task, "t2");
        assert_eq!(b.completed, 1);
    }

    #[test]
    fn a_result_frees_its_worker_at_the_next_version() {
        let mut b = board_with(&["t1", "t2"], &["w1"]);
        let a = b.plan(100).remove(0);
        b.task_completed("t1", Instant::now()); // before our write's reply
        b.assigned(&a, 1, 1);
        let next = b.plan(100);
        assert_eq!(next, vec![Assignment { task: "t2".into(), worker: "w1".into(), version: 2, inbox: None }]);
        assert_eq!(b.worker_read("w1", b"", 2, 1), None, "the clear we assumed is no news");
    }

    #[test]
    fn only_workers_holding_something_unexpected_are_watched() {
        let mut b = board_with(&["t1"], &["w1"]);
        assert!(!b.needs_watch("w1"), "free");
        let a = b.plan(10).remove(0);
        b.assigned(&a, 1, 1);
        assert!(!b.needs_watch("w1"), "its task ends with a result or an attempts record");
        assert_eq!(b.holder_of("t1"), Some("w1"));
        assert_eq!(b.task_deleted("t1"), None);
        assert!(b.needs_watch("w1"), "the client collected the task before the worker cleared");
        b.worker_read("w2", b"\0draining", 4, 1);
        assert!(b.needs_watch("w2"), "draining until it leaves");
        assert!(!b.needs_watch("w9"), "unknown workers are read, not watched");
    }

    #[test]
    fn a_worker_that_registered_again_lost_its_task() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(10).remove(0);
        b.assigned(&a, 1, 1);
        let died = b.worker_read("w1", b"", 0, 2);
        assert_eq!(
            died,
            Some(Action::Resolve {
                task: "t1".into(),
                reason: ReturnReason::WorkerDied { worker: "w1".into(), inbox: None }
            })
        );
        b.requeue("t1");
        assert_eq!(b.worker_read("w1", b"t1", 1, 1), None, "a late read of the old incarnation is ignored");
        assert_eq!(b.plan(10), vec![Assignment { task: "t1".into(), worker: "w1".into(), version: 0, inbox: None }]);
    }

    /// ABA across incarnations: an assignment planned for a registration at version 0 lands on
    /// a new registration of the same name (version 0 again). The task runs there, so it stays
    /// there: it is neither resolved as lost nor given to another worker.
    #[test]
    fn an_assignment_that_landed_on_a_new_incarnation_stays_there() {
        let mut b = board_with(&["t1"], &["w1", "w2"]);
        let a = b.plan(1).remove(0);
        assert_eq!(a.worker, "w1");
        // w1 registered again (creation zxid 2) before the write, which then applied to it.
        b.assigned(&a, 1, 1);
        assert_eq!(b.worker_read("w1", b"t1", 1, 2), None, "the task is not lost: the new incarnation runs it");
        assert_eq!(b.holder_of("t1"), Some("w1"));
        assert!(b.plan(10).is_empty(), "t1 must not go to w2 as well");
    }

    #[test]
    fn a_draining_worker_gives_its_task_back() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(10).remove(0);
        b.assigned(&a, 1, 1);
        let action = b.worker_read("w1", b"\0draining", 2, 1);
        assert_eq!(action, Some(Action::Resolve { task: "t1".into(), reason: ReturnReason::GivenBack }));
        let listed: HashSet<&str> = HashSet::new();
        assert_eq!(b.workers_not_in(&listed), vec!["w1".to_string()]);
        assert_eq!(b.worker_deleted("w1"), None, "nothing left to return");
    }

    #[test]
    fn a_worker_clearing_without_result_returns_the_task() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(100).remove(0);
        b.assigned(&a, 1, 1);
        let action = b.worker_read("w1", b"", 2, 1);
        assert_eq!(action, Some(Action::Resolve { task: "t1".into(), reason: ReturnReason::Returned }));
        assert_eq!(b.task_state("t1"), Some(&TaskState::Resolving));
        assert!(b.plan(100).is_empty(), "resolving tasks are not planned");
        b.requeue("t1");
        assert_eq!(b.plan(100)[0].task, "t1");
    }

    #[test]
    fn stale_reads_are_ignored() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(100).remove(0);
        b.worker_read("w1", b"", 2, 1); // worker already cleared (version 2)
        b.assigned(&a, 1, 1); // late completion of our own write
        assert_eq!(b.worker_read("w1", b"t1", 1, 1), None, "older version ignored");
        assert_eq!(b.counts().workers_busy, 0);
    }

    #[test]
    fn a_dead_worker_returns_its_task_as_a_failure() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(100).remove(0);
        b.assigned(&a, 1, 1);
        assert_eq!(
            b.worker_deleted("w1"),
            Some(Action::Resolve {
                task: "t1".into(),
                reason: ReturnReason::WorkerDied { worker: "w1".into(), inbox: None }
            })
        );
        assert_eq!(b.worker_deleted("w1"), None);
    }

    #[test]
    fn a_rejected_assignment_puts_the_task_back_first() {
        let mut b = board_with(&["t1", "t2"], &["w1", "w2"]);
        let plan = b.plan(1);
        b.assignment_failed(&plan[0]);
        assert_eq!(b.workers_needing_read(), vec!["w1".to_string()]);
        assert_eq!(b.plan(100)[0].task, "t1", "t1 keeps its place");
    }

    #[test]
    fn rebuild_learns_running_tasks_from_worker_data() {
        let mut b = Board::new();
        b.task_created("t1");
        b.task_created("t2");
        b.worker_read("w1", b"t1", 5, 1);
        let counts = b.counts();
        assert_eq!(counts, Counts { backlog: 1, running: 1, workers_busy: 1 });
    }

    #[test]
    fn garbage_in_a_worker_znode_makes_it_busy_not_a_crash() {
        let mut b = board_with(&["t1"], &[]);
        b.worker_read("w1", b"\xff\xfe", 3, 1);
        assert!(b.plan(10).is_empty());
        b.worker_read("w1", b"", 4, 1);
        assert_eq!(b.plan(10).len(), 1);
    }

    #[test]
    fn timeouts_revoke_only_settled_assignments() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(10).remove(0);
        let later = Instant::now() + Duration::from_secs(5);
        assert!(b.expired(Duration::from_secs(1), later).is_empty(), "write still in flight");
        b.assigned(&a, 1, 1);
        let actions = b.expired(Duration::from_secs(1), later);
        assert_eq!(
            actions,
            vec![Action::Resolve {
                task: "t1".into(),
                reason: ReturnReason::TimedOut { worker: "w1".into(), version: 1, inbox: None }
            }]
        );
        // A seed worker (no inbox) is cleared: the task is retried at once.
        b.revoked("w1", 2, None);
        b.requeue("t1");
        assert_eq!(b.plan(10)[0].task, "t1");
    }

    /// w1 (with an inbox) holds t1 past its timeout; the revocation leaves its mark at version 2.
    fn withdrawn_from_w1() -> Board {
        let mut b = board_with(&["t1"], &["w1", "w2"]);
        b.set_inbox("w1", 1, Some("/i/w1@1".into()));
        b.set_inbox("w2", 1, Some("/i/w2@1".into()));
        let a = b.plan(1).remove(0);
        assert_eq!(a.worker, "w1");
        b.assigned(&a, 1, 1);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(b.expired(Duration::from_secs(1), later).len(), 1);
        b.revoked("w1", 2, Some("t1"));
        b.requeue("t1");
        b
    }

    #[test]
    fn a_revoked_task_goes_nowhere_until_its_worker_lets_go() {
        let mut b = withdrawn_from_w1();
        assert!(b.plan(10).is_empty(), "w1 may still run t1, and w2 must not start it");
        assert_eq!(b.task_state("t1"), Some(&TaskState::Withdrawing { worker: "w1".into() }));
        assert!(b.needs_watch("w1"), "only w1's clear tells that its run stopped");
        assert_eq!(b.counts(), Counts { backlog: 0, running: 1, workers_busy: 1 });
        // A read of the mark itself changes nothing.
        assert_eq!(b.worker_read("w1", &paths::withdrawal("t1"), 2, 1), None);
        assert!(b.plan(10).is_empty());
        // w1 clears the mark: t1 is pending again, and both workers are free.
        assert_eq!(b.worker_read("w1", b"", 3, 1), None, "no second attempt is charged");
        assert_eq!(b.task_state("t1"), Some(&TaskState::Pending));
        assert!(!b.needs_watch("w1"));
        assert_eq!(b.plan(10).len(), 1);
    }

    #[test]
    fn a_revoked_task_is_free_when_its_worker_is_gone() {
        let mut b = withdrawn_from_w1();
        assert_eq!(b.worker_deleted("w1"), None, "the timeout already charged the attempt");
        assert_eq!(b.plan(10).iter().map(|a| (a.task.as_str(), a.worker.as_str())).collect::<Vec<_>>(), [("t1", "w2")]);
    }

    #[test]
    fn a_worker_that_let_go_before_the_revocation_reply_frees_the_task_at_once() {
        let mut b = board_with(&["t1"], &["w1"]);
        b.set_inbox("w1", 1, Some("/i/w1@1".into()));
        let a = b.plan(1).remove(0);
        b.assigned(&a, 1, 1);
        assert_eq!(b.expired(Duration::from_secs(1), Instant::now() + Duration::from_secs(5)).len(), 1);
        // The worker saw the mark and cleared it before the reply of our revocation came back.
        b.worker_read("w1", b"", 3, 1);
        b.revoked("w1", 2, Some("t1"));
        b.requeue("t1");
        assert_eq!(b.task_state("t1"), Some(&TaskState::Pending));
        assert_eq!(b.plan(10).len(), 1);
    }

    #[test]
    fn a_new_leader_waits_for_a_mark_it_finds_at_its_rebuild() {
        let mut b = board_with(&["t1"], &[]);
        b.worker_read("w1", &paths::withdrawal("t1"), 2, 1);
        b.worker_read("w2", b"", 0, 1);
        assert!(b.plan(10).is_empty(), "w1's revoked run may still go on");
        assert_eq!(b.task_state("t1"), Some(&TaskState::Withdrawing { worker: "w1".into() }));
        b.worker_read("w1", b"", 3, 1);
        assert_eq!(b.plan(10).len(), 1);
    }

    #[test]
    fn retention_of_a_collected_task_spares_a_later_task_of_the_same_id() {
        let mut b = board_with(&["t"], &[]);
        let start = Instant::now();
        b.task_completed("t", start);
        b.task_deleted("t");
        b.task_created("t");
        b.task_completed("t", start + Duration::from_secs(60));
        let retention = Duration::from_secs(100);
        assert!(b.past_retention(retention, start + retention).is_empty(), "the later task is not due yet");
        assert_eq!(b.past_retention(retention, start + Duration::from_secs(160)), vec!["t".to_string()]);
    }

    #[test]
    fn the_retention_queue_stays_within_the_tasks_known() {
        let mut b = Board::new();
        let now = Instant::now();
        for i in 0..100_000 {
            let id = format!("t{i}");
            b.task_created(&id);
            b.task_completed(&id, now);
            b.task_deleted(&id);
        }
        assert!(b.done.len() <= 2 * b.tasks.len() + RETENTION_SLACK, "{} entries for no task", b.done.len());
        b.task_created("kept");
        b.task_completed("kept", now);
        assert_eq!(b.past_retention(Duration::ZERO, now), vec!["kept".to_string()]);
    }

    #[test]
    fn a_given_back_task_takes_its_attempts_record_along_when_collected() {
        let mut b = board_with(&["t1"], &["w1"]);
        let a = b.plan(10).remove(0);
        b.assigned(&a, 1, 1);
        let back = b.worker_read("w1", paths::DRAINING, 2, 1);
        assert_eq!(back, Some(Action::Resolve { task: "t1".into(), reason: ReturnReason::GivenBack }));
        b.requeue("t1");
        b.task_completed("t1", Instant::now());
        assert_eq!(b.task_deleted("t1"), Some(Action::DeleteRecords { task: "t1".into() }));
    }

    #[test]
    fn a_failed_revocation_leaves_the_task_with_its_worker_until_a_read_tells() {
        let mut b = board_with(&["t1"], &["w1", "w2"]);
        // Adopted at a rebuild: w1 holds t1 (no assignment of ours).
        b.worker_read("w1", b"t1", 3, 1);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(b.expired(Duration::from_secs(1), later).len(), 1);
        assert_eq!(b.revocation_failed("w1", "t1"), None, "w1 may still run it");
        assert!(b.plan(10).is_empty(), "t1 must not go to w2 while w1 may still run it");
        assert_eq!(b.holder_of("t1"), Some("w1"));
        assert_eq!(b.workers_needing_read(), vec!["w1".to_string()]);
        // The read shows w1 still holding it: nothing changes, the timeout applies again.
        assert_eq!(b.worker_read("w1", b"t1", 3, 1), None);
        assert!(b.workers_needing_read().is_empty());
        assert!(b.plan(10).is_empty());
        // Or it shows w1 free again without a result: the task came back.
        let action = b.worker_read("w1", b"", 4, 1);
        assert_eq!(action, Some(Action::Resolve { task: "t1".into(), reason: ReturnReason::Returned }));
    }

    #[test]
    fn assignments_and_revocations_name_the_incarnations_inbox() {
        let mut b = board_with(&["t1", "t2"], &["w1"]);
        b.set_inbox("w1", 1, Some("/i/w1@1".into()));
        b.set_inbox("w1", 7, Some("/i/w1@7".into()));
        let a = b.plan(10).remove(0);
        assert_eq!(a.inbox.as_deref(), Some("/i/w1@1"), "an inbox of another incarnation is not taken");
        b.assigned(&a, 1, 1);
        let later = Instant::now() + Duration::from_secs(5);
        let Action::Resolve { reason, .. } = b.expired(Duration::from_secs(1), later).remove(0) else { panic!() };
        assert_eq!(reason, ReturnReason::TimedOut { worker: "w1".into(), version: 1, inbox: Some("/i/w1@1".into()) });
        // Registered again: the new incarnation has no inbox until one is learnt, and is read
        // again until it is.
        b.worker_read("w1", b"", 0, 2);
        assert_eq!(b.incarnation("w1"), None);
        assert_eq!(b.workers_needing_read(), vec!["w1".to_string()]);
        assert_eq!(b.plan(10)[0].inbox, None);
        b.set_inbox("w1", 2, Some("/i/w1@2".into()));
        assert_eq!(b.incarnation("w1"), Some((2, Some("/i/w1@2".into()))));
    }

    #[test]
    fn retention_returns_only_old_uncollected_results() {
        let mut b = board_with(&["t1", "t2"], &[]);
        let start = Instant::now();
        b.task_completed("t1", start);
        b.task_completed("t2", start);
        assert_eq!(b.task_deleted("t2"), None);
        assert!(b.past_retention(Duration::from_secs(60), start).is_empty());
        assert_eq!(b.past_retention(Duration::from_secs(60), start + Duration::from_secs(61)), vec!["t1".to_string()]);
    }

    #[test]
    fn collected_tasks_with_records_ask_for_their_removal() {
        let mut b = board_with(&["t1"], &[]);
        b.mark_records("t1");
        assert_eq!(b.task_deleted("t1"), Some(Action::DeleteRecords { task: "t1".into() }));
        assert_eq!(b.counts().backlog, 0);
    }
}
