//! The world the leader's core lives in, modelled for the properties: ZooKeeper's truth, and the
//! session between it and the leader, whose loop (`leader.rs`) is played here around the same
//! [`Core`]: events and replies go in as the driver hands them over, effects come out as the
//! requests it sends. See the parent module for what is modelled and why.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use zookeeper_client::{Error as ZkError, SessionState};

use crate::master::board::{Assignment, Counts, Resolution, ReturnReason, TaskState};
use crate::master::core::{Core, Effect, ListedTask, Snapshot, TaskChange, WorkerRead};
use crate::master::writes::WriteError;
use crate::paths;
use crate::records::{StatusRecord, TaskSettings};
use crate::telemetry::http::Probes;
use crate::telemetry::metrics::MasterMetrics;

/// Task ids in use: few, so that ids are used again once collected.
pub(super) const TASK_IDS: u8 = 5;
/// Worker names: few, so that a name registers again after its worker died.
pub(super) const WORKER_NAMES: u8 = 3;
/// The leader's `max_attempts` (low, so that dead letters happen).
const MAX_ATTEMPTS: u32 = 2;
/// Timeout and retention period; expiry and retention are asked at a cutoff plus this.
pub(super) const PERIOD: Duration = Duration::from_secs(3600);
/// Rounds of plan, deliver and complete that must drain every task once faults healed.
const DRAIN_ROUNDS: usize = 40;
/// Rounds of delivering everything in flight before the model must be quiescent.
const QUIESCE_ROUNDS: usize = 60;

fn task_id(id: u8) -> String {
    format!("t{}", id % TASK_IDS)
}

fn worker_name(name: u8) -> String {
    format!("w{}", name % WORKER_NAMES)
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper's truth

/// What a worker's znode holds. A task is named with its incarnation (which task of that id), so
/// that a run of a collected task is not confused with a later task of the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holds {
    Nothing,
    Task(String, u64),
    /// The withdrawal mark: the run of this task may not have stopped yet.
    Mark(String, u64),
    Draining,
}

impl Holds {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Holds::Nothing => Vec::new(),
            Holds::Task(task, _) => task.as_bytes().to_vec(),
            Holds::Mark(task, _) => paths::withdrawal(task),
            Holds::Draining => paths::DRAINING.to_vec(),
        }
    }

    /// The task whose run this worker may be in: assigned, or revoked and not let go.
    fn run(&self) -> Option<(&str, u64)> {
        match self {
            Holds::Task(task, incarnation) | Holds::Mark(task, incarnation) => Some((task, *incarnation)),
            Holds::Nothing | Holds::Draining => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Registration {
    created: i64,
    version: i32,
    holds: Holds,
    /// Ours: registered with an inbox (seed-style workers have none).
    inbox: bool,
}

impl Registration {
    fn inbox_path(&self, wid: &str) -> Option<String> {
        self.inbox.then(|| paths::inbox(wid, self.created))
    }

    fn read(&self, wid: &str) -> ZnodeRead {
        ZnodeRead {
            data: self.holds.bytes(),
            version: self.version,
            created: self.created,
            inbox: self.inbox_path(wid),
        }
    }
}

#[derive(Clone, Debug)]
struct ZkTask {
    incarnation: u64,
    /// When its result was written (its mtime).
    result_at: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
struct AttemptsRecord {
    attempts: u32,
    /// The registration (its inbox's name) that gave the task back.
    given_back_by: String,
}

#[derive(Debug, Default)]
struct Zk {
    zxid: i64,
    incarnations: u64,
    tasks: BTreeMap<String, ZkTask>,
    workers: BTreeMap<String, Registration>,
    attempts: BTreeMap<String, AttemptsRecord>,
}

impl Zk {
    /// The live incarnation running (or not yet let go of) the current task of this id, other
    /// than `except`.
    fn runner_of(&self, task: &str, except: Option<&str>) -> Option<(&str, &Holds)> {
        let incarnation = self.tasks.get(task)?.incarnation;
        self.workers
            .iter()
            .filter(|(wid, _)| Some(wid.as_str()) != except)
            .find(|(_, reg)| reg.holds.run() == Some((task, incarnation)))
            .map(|(wid, reg)| (wid.as_str(), &reg.holds))
    }
}

// ---------------------------------------------------------------------------------------------
// Between ZooKeeper and the leader

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Channel {
    Tasks,
    Workers,
    Attempts,
}

/// A notification of one of the leader's persistent watches.
#[derive(Clone, Debug)]
enum Note {
    TaskCreated(String),
    TaskCompleted(String),
    TaskDeleted(String),
    Membership,
    Attempts(String),
}

impl Note {
    fn channel(&self) -> Channel {
        match self {
            Note::TaskCreated(_) | Note::TaskCompleted(_) | Note::TaskDeleted(_) => Channel::Tasks,
            Note::Membership => Channel::Workers,
            Note::Attempts(_) => Channel::Attempts,
        }
    }
}

/// A worker's znode as a read returned it, with the inbox its registration has.
#[derive(Clone, Debug)]
struct ZnodeRead {
    data: Vec<u8>,
    version: i32,
    created: i64,
    inbox: Option<String>,
}

/// What a read returns: the znode and its registration's inbox (`None`: the look failed), or
/// `None` for a znode that does not exist; `Err`: the connection was lost.
type ReadResult = Result<Option<(ZnodeRead, Option<Option<String>>)>, ()>;

#[derive(Clone, Debug)]
enum Request {
    Assign(Vec<Assignment>),
    Resolve {
        task: String,
        reason: ReturnReason,
    },
    /// `watch`: a read that leaves a one-shot data watch. `known`: the incarnation the board
    /// knew when asking, which spares the inbox look.
    Read {
        wid: String,
        watch: bool,
        known: Option<(i64, Option<String>)>,
    },
    /// The second round trip of a read: whether the registration's inbox exists.
    InboxLook {
        wid: String,
        watch: bool,
        read: ZnodeRead,
    },
    List,
    Cleanup {
        task: String,
        with_task: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteFailure {
    /// A guard failed or the server refused: nothing was applied.
    Rejected,
    /// The connection dropped: applied or not, nobody knows.
    Lost,
}

impl WriteFailure {
    /// The error the leader's writes report for it.
    fn error(self) -> WriteError {
        match self {
            WriteFailure::Rejected => WriteError::Conflict { index: 0, source: ZkError::BadVersion },
            WriteFailure::Lost => WriteError::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
enum Reply {
    Assigned {
        batch: Vec<Assignment>,
        /// Per assignment: the znode's new version and creation zxid.
        result: Result<Vec<(i32, i64)>, WriteFailure>,
    },
    Resolved {
        task: String,
        reason: ReturnReason,
        result: Result<Resolution, WriteFailure>,
    },
    /// The first round trip of a read that still has to look for the inbox.
    ReadHalf {
        wid: String,
        watch: bool,
        read: ZnodeRead,
    },
    /// A completed read: `Ok(None)` the znode does not exist, `Err` the connection was lost.
    /// The inbox is `None` when its look failed. `looked`: it came from the second round trip.
    Read {
        wid: String,
        watch: bool,
        looked: bool,
        result: ReadResult,
    },
    Listed(Result<Vec<String>, ()>),
    /// A kept one-shot watch fired.
    WorkerChanged(String),
    Cleaned,
}

impl Reply {
    /// What the leader gets instead when the reply never arrives: the request fails (a read
    /// whose inbox look fails still completes, without the inbox). None: a watch event, which
    /// the client delivers again after reconnecting, to a generation that ignores it.
    fn lost(self) -> Option<Reply> {
        Some(match self {
            Reply::Assigned { batch, .. } => Reply::Assigned { batch, result: Err(WriteFailure::Lost) },
            Reply::Resolved { task, reason, .. } => Reply::Resolved { task, reason, result: Err(WriteFailure::Lost) },
            Reply::ReadHalf { wid, watch, .. } => Reply::Read { wid, watch, looked: false, result: Err(()) },
            Reply::Read { wid, watch, looked: true, result: Ok(Some((read, _))) } => {
                Reply::Read { wid, watch, looked: true, result: Ok(Some((read, None))) }
            },
            Reply::Read { wid, watch, looked, .. } => Reply::Read { wid, watch, looked, result: Err(()) },
            Reply::Listed(_) => Reply::Listed(Err(())),
            Reply::WorkerChanged(_) => return None,
            Reply::Cleaned => Reply::Cleaned,
        })
    }
}

impl Request {
    /// The reply of a request that failed unserved.
    fn failed(self) -> Reply {
        match self {
            Request::Assign(batch) => Reply::Assigned { batch, result: Err(WriteFailure::Lost) },
            Request::Resolve { task, reason } => Reply::Resolved { task, reason, result: Err(WriteFailure::Lost) },
            Request::Read { wid, watch, .. } => Reply::Read { wid, watch, looked: false, result: Err(()) },
            Request::InboxLook { wid, watch, read } => {
                Reply::Read { wid, watch, looked: true, result: Ok(Some((read, None))) }
            },
            Request::List => Reply::Listed(Err(())),
            Request::Cleanup { .. } => Reply::Cleaned,
        }
    }
}

#[derive(Clone, Debug)]
enum Message {
    Note(Note),
    Reply { generation: u64, reply: Reply },
}

/// A one-shot data watch on a worker's znode, set by a watched read.
#[derive(Clone, Copy, Debug)]
struct Armed {
    generation: u64,
    fired: bool,
    /// The leader handled the read and keeps waiting on the watch.
    kept: bool,
}

#[derive(Clone, Debug)]
enum Link {
    Connected,
    /// Paused; requests asked now go out once connected.
    Disconnected,
    /// The rebuild listed these tasks (id, result's time) and has yet to read the workers; the
    /// leader's loop waits for it.
    Rebuilding(Vec<(String, Option<Instant>)>),
}

// ---------------------------------------------------------------------------------------------
// Steps

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    /// The write is refused, or the inbox look fails.
    Reject,
}

#[derive(Clone, Debug)]
pub(super) enum Step {
    /// A client creates a task (if no task of that id exists).
    Submit { id: u8 },
    /// A client reads a result and deletes the task. Worker steps and this one fall to the
    /// next name (in order) that can act when the one named cannot.
    Collect { id: u8 },
    /// A worker registers (a new incarnation if the name was used before).
    Register { name: u8, inbox: bool },
    /// The worker's session ends: its znode goes.
    Die { name: u8 },
    /// Result and clear in one multi (a result already there: the worker just frees itself).
    Complete { name: u8 },
    /// Attempts record and clear in one multi.
    Fail { name: u8 },
    /// A worker with an inbox shuts down: draining mark (and give-back of its task).
    Drain { name: u8 },
    /// A worker whose revoked run stopped clears the withdrawal mark.
    LetGo { name: u8 },
    /// The leader plans, in batches of at most `batch`, and sends each as one multi.
    Plan { batch: u8 },
    /// The leader's tick; `expire` and `retention` name the cutoff as steps ago.
    Tick { expire: Option<u8>, retention: Option<u8> },
    /// The leader reads a worker (any membership change has it read every worker).
    Read { name: u8 },
    /// The server handles the leader's oldest request.
    Serve { fault: Fault },
    /// The leader handles the next message; `overtake`: the oldest event of a watch instead,
    /// ahead of replies that came before it.
    Deliver { overtake: Option<Channel> },
    /// A smooth spell: every request in flight is served, every message handled in order, and
    /// the leader plans.
    Settle,
    /// The connection drops: the server handled `applied` of the requests in flight, the next
    /// `failed` fail, the rest wait; the leader had received `received` messages.
    ConnectionLoss { applied: u8, failed: u8, received: u8 },
    /// Connected again: the rebuild lists the tasks; the next one reads the workers and ends it.
    Reconnect,
}

// ---------------------------------------------------------------------------------------------
// The world: ZooKeeper, the session, and the leader loop around the core

pub(super) struct World {
    zk: Zk,
    core: Core,
    link: Link,
    /// Sent, not yet served, in the session's order.
    requests: VecDeque<(u64, Request)>,
    /// Asked while disconnected: sent once connected again, before the rebuild's own.
    queued: VecDeque<(u64, Request)>,
    /// Sent by the server, not yet handled by the leader, in the server's order.
    wire: VecDeque<Message>,
    armed: BTreeMap<String, Armed>,
    /// When each step started: strictly after everything the step before did, so that "since"
    /// instants the board takes during a step fall between its start and the next one's.
    started: Vec<Instant>,
    /// Tasks deleted whose deletion the current board has not heard of.
    deletions_unheard: usize,
    /// Broken invariants noticed while acting (checked after each step).
    violations: Vec<String>,
}

impl World {
    pub(super) fn new() -> Self {
        let period = PERIOD.as_millis() as u64;
        let settings = TaskSettings {
            max_attempts: MAX_ATTEMPTS,
            task_timeout_ms: period,
            retention_ms: period,
            ..TaskSettings::default()
        };
        World {
            zk: Zk::default(),
            core: Core::new(&settings, StatusRecord::default(), MasterMetrics::default(), Probes::new()),
            link: Link::Connected,
            requests: VecDeque::new(),
            queued: VecDeque::new(),
            wire: VecDeque::new(),
            armed: BTreeMap::new(),
            started: Vec::new(),
            deletions_unheard: 0,
            violations: Vec::new(),
        }
    }

    fn connected(&self) -> bool {
        matches!(self.link, Link::Connected)
    }

    fn rebuilding(&self) -> bool {
        matches!(self.link, Link::Rebuilding(_))
    }

    /// An instant later than `after`.
    fn later_than(after: Option<Instant>) -> Instant {
        loop {
            let now = Instant::now();
            if after.is_none_or(|after| now > after) {
                return now;
            }
        }
    }

    /// A fresh instant within the current step.
    fn now(&self) -> Instant {
        Self::later_than(self.started.last().copied())
    }

    /// The first of `count` names, starting at `index` and wrapping, that `fits`: a step that
    /// names one that cannot act falls to the next that can, so few steps are wasted.
    fn first_from(
        &self,
        index: u8,
        count: u8,
        name: fn(u8) -> String,
        fits: impl Fn(&Zk, &str) -> bool,
    ) -> Option<String> {
        (0..count).map(|offset| name((index + offset) % count)).find(|n| fits(&self.zk, n))
    }

    fn worker_from(&self, name: u8, holding: impl Fn(&Holds) -> bool) -> Option<String> {
        self.first_from(name, WORKER_NAMES, worker_name, |zk, wid| {
            zk.workers.get(wid).is_some_and(|r| holding(&r.holds))
        })
    }

    fn cutoff(&self, steps_ago: u8) -> Instant {
        let index = self.started.len().saturating_sub(1 + steps_ago as usize);
        self.started[index]
    }

    pub(super) fn step(&mut self, step: &Step) {
        let start = Self::later_than(Some(Instant::now()));
        self.started.push(start);
        match *step {
            Step::Submit { id } => self.submit(&task_id(id)),
            Step::Collect { id } => {
                let done = |t: &ZkTask| t.result_at.is_some();
                if let Some(task) = self.first_from(id, TASK_IDS, task_id, |zk, id| zk.tasks.get(id).is_some_and(done))
                {
                    self.collect(&task);
                }
            },
            Step::Register { name, inbox } => self.register(&worker_name(name), inbox),
            Step::Die { name } => self.die(&worker_name(name)),
            Step::Complete { name } => {
                if let Some(wid) = self.worker_from(name, |holds| matches!(holds, Holds::Task(..))) {
                    self.complete(&wid);
                }
            },
            Step::Fail { name } => {
                if let Some(wid) = self.worker_from(name, |holds| matches!(holds, Holds::Task(..))) {
                    self.fail(&wid);
                }
            },
            Step::Drain { name } => self.shut_down(&worker_name(name)),
            Step::LetGo { name } => {
                if let Some(wid) = self.worker_from(name, |holds| matches!(holds, Holds::Mark(..))) {
                    self.let_go(&wid);
                }
            },
            Step::Plan { batch } => self.plan(batch as usize),
            Step::Tick { expire, retention } => {
                let (expire, retention) = (expire.map(|a| self.cutoff(a)), retention.map(|a| self.cutoff(a)));
                self.tick(expire, retention);
            },
            Step::Read { name } => {
                if !self.rebuilding() {
                    self.read_worker(&worker_name(name));
                }
            },
            Step::Serve { fault } => self.serve_next(fault),
            Step::Deliver { overtake } => self.deliver(overtake),
            Step::Settle => self.settle(),
            Step::ConnectionLoss { applied, failed, received } => {
                self.lose_connection(applied as usize, failed as usize, received as usize)
            },
            Step::Reconnect => self.reconnect(),
        }
    }

    // --- ZooKeeper: changes and what they notify -----------------------------------------------

    fn notify(&mut self, note: Note) {
        if matches!(note, Note::TaskDeleted(_)) {
            self.deletions_unheard += 1;
        }
        // While disconnected the leader has no watches to hear it; the rebuild reads the truth.
        if !matches!(self.link, Link::Disconnected) {
            self.wire.push_back(Message::Note(note));
        }
    }

    /// A worker's znode changed or went: a one-shot watch on it fires.
    fn touch_worker(&mut self, wid: &str) {
        let connected = self.connected();
        let Some(armed) = self.armed.get_mut(wid) else { return };
        armed.fired = true;
        if armed.kept {
            let generation = armed.generation;
            self.armed.remove(wid);
            if connected {
                self.wire.push_back(Message::Reply { generation, reply: Reply::WorkerChanged(wid.to_string()) });
            }
        }
    }

    fn submit(&mut self, task: &str) {
        if self.zk.tasks.contains_key(task) {
            return;
        }
        self.zk.incarnations += 1;
        let entry = ZkTask { incarnation: self.zk.incarnations, result_at: None };
        self.zk.tasks.insert(task.to_string(), entry);
        self.notify(Note::TaskCreated(task.to_string()));
    }

    fn collect(&mut self, task: &str) {
        if self.zk.tasks.get(task).is_some_and(|t| t.result_at.is_some()) {
            self.zk.tasks.remove(task);
            self.notify(Note::TaskDeleted(task.to_string()));
        }
    }

    fn register(&mut self, wid: &str, inbox: bool) {
        if self.zk.workers.contains_key(wid) {
            return;
        }
        self.zk.zxid += 1;
        let registration = Registration { created: self.zk.zxid, version: 0, holds: Holds::Nothing, inbox };
        self.zk.workers.insert(wid.to_string(), registration);
        self.notify(Note::Membership);
    }

    fn die(&mut self, wid: &str) {
        if self.zk.workers.remove(wid).is_some() {
            self.touch_worker(wid);
            self.notify(Note::Membership);
        }
    }

    fn set_worker(&mut self, wid: &str, holds: Holds) -> i32 {
        let registration = self.zk.workers.get_mut(wid).expect("worker exists");
        registration.holds = holds;
        registration.version += 1;
        let version = registration.version;
        self.touch_worker(wid);
        version
    }

    fn holds(&self, wid: &str) -> Option<&Holds> {
        self.zk.workers.get(wid).map(|r| &r.holds)
    }

    fn complete(&mut self, wid: &str) {
        let Some(Holds::Task(task, _)) = self.holds(wid).cloned() else { return };
        // Written at the version the worker expects the task to have: only into one without a
        // result (a later task of the same id included: ids carry no incarnation).
        let now = self.now();
        if let Some(entry) = self.zk.tasks.get_mut(&task).filter(|t| t.result_at.is_none()) {
            entry.result_at = Some(now);
            self.notify(Note::TaskCompleted(task));
        }
        self.set_worker(wid, Holds::Nothing);
    }

    fn fail(&mut self, wid: &str) {
        let Some(Holds::Task(task, _)) = self.holds(wid).cloned() else { return };
        self.zk.attempts.entry(task.clone()).or_default().attempts += 1;
        self.notify(Note::Attempts(task));
        self.set_worker(wid, Holds::Nothing);
    }

    fn shut_down(&mut self, wid: &str) {
        let Some(registration) = self.zk.workers.get(wid).filter(|r| r.inbox) else { return };
        let inbox = registration.inbox_path(wid).expect("a worker with an inbox");
        match registration.holds.clone() {
            Holds::Nothing => {},
            Holds::Task(task, _) => {
                let by = paths::child_of(paths::INBOX, &inbox).expect("an inbox path").to_string();
                self.zk.attempts.entry(task.clone()).or_default().given_back_by = by;
                self.notify(Note::Attempts(task));
            },
            Holds::Mark(..) | Holds::Draining => return,
        }
        self.set_worker(wid, Holds::Draining);
    }

    fn let_go(&mut self, wid: &str) {
        if matches!(self.holds(wid), Some(Holds::Mark(..))) {
            self.set_worker(wid, Holds::Nothing);
        }
    }

    // --- the server handles a request ----------------------------------------------------------

    fn serve_next(&mut self, fault: Fault) {
        if !self.connected() {
            return;
        }
        if let Some((generation, request)) = self.requests.pop_front() {
            let reply = self.serve(generation, request, fault);
            self.wire.push_back(Message::Reply { generation, reply });
        }
    }

    fn serve(&mut self, generation: u64, request: Request, fault: Fault) -> Reply {
        match request {
            Request::Assign(batch) => {
                let result = match fault {
                    Fault::Reject => Err(WriteFailure::Rejected),
                    Fault::None => self.write_assignments(&batch),
                };
                Reply::Assigned { batch, result }
            },
            Request::Resolve { task, reason } => {
                let result = match fault {
                    Fault::Reject => Err(WriteFailure::Rejected),
                    Fault::None => self.write_resolution(&task, &reason),
                };
                Reply::Resolved { task, reason, result }
            },
            Request::Read { wid, watch, known } => {
                let Some(registration) = self.zk.workers.get(&wid) else {
                    return Reply::Read { wid, watch, looked: false, result: Ok(None) };
                };
                let read = registration.read(&wid);
                if watch {
                    self.armed.insert(wid.clone(), Armed { generation, fired: false, kept: false });
                }
                match known {
                    Some((created, inbox)) if created == read.created => {
                        Reply::Read { wid, watch, looked: false, result: Ok(Some((read, Some(inbox)))) }
                    },
                    _ => Reply::ReadHalf { wid, watch, read },
                }
            },
            Request::InboxLook { wid, watch, read } => {
                let inbox = match fault {
                    Fault::Reject => None,
                    Fault::None => Some(read.inbox.clone()),
                };
                Reply::Read { wid, watch, looked: true, result: Ok(Some((read, inbox))) }
            },
            Request::List => Reply::Listed(Ok(self.zk.workers.keys().cloned().collect())),
            Request::Cleanup { task, with_task } => {
                if with_task && self.zk.tasks.remove(&task).is_some() {
                    self.notify(Note::TaskDeleted(task.clone()));
                }
                self.zk.attempts.remove(&task);
                Reply::Cleaned
            },
        }
    }

    /// One multi: per assignment, `/tasks/<id>` must exist and the worker's znode be at the
    /// planned version. Invariant 2 is checked here: a guard that passes must find the worker
    /// free, or the board let a write clobber a busy worker.
    fn write_assignments(&mut self, batch: &[Assignment]) -> Result<Vec<(i32, i64)>, WriteFailure> {
        let mut workers = self.zk.workers.clone();
        let mut versions = Vec::new();
        for a in batch {
            let Some(task) = self.zk.tasks.get(&a.task) else { return Err(WriteFailure::Rejected) };
            let Some(registration) = workers.get_mut(&a.worker).filter(|r| r.version == a.version) else {
                return Err(WriteFailure::Rejected);
            };
            if registration.holds != Holds::Nothing {
                self.violations.push(format!(
                    "invariant 2: the assignment of {} to {} at version {} was accepted, but the worker holds {:?}",
                    a.task, a.worker, a.version, registration.holds
                ));
            }
            registration.holds = Holds::Task(a.task.clone(), task.incarnation);
            registration.version += 1;
            versions.push((registration.version, registration.created));
        }
        self.zk.workers = workers;
        for a in batch {
            self.touch_worker(&a.worker);
        }
        Ok(versions)
    }

    /// `writes::resolve`: count a failed attempt unless the worker could (or gave it back),
    /// revoke a timed-out assignment at its version (the withdrawal mark for a worker with an
    /// inbox), write the dead letter after the last attempt; all in one multi.
    fn write_resolution(&mut self, task: &str, reason: &ReturnReason) -> Result<Resolution, WriteFailure> {
        let record = self.zk.attempts.get(task).cloned().unwrap_or_default();
        let given_back_by = |inbox: &Option<String>| {
            inbox.as_deref().and_then(|dir| paths::child_of(paths::INBOX, dir)) == Some(record.given_back_by.as_str())
        };
        let counted = match reason {
            ReturnReason::Returned | ReturnReason::GivenBack => false,
            ReturnReason::WorkerDied { inbox, .. } => !given_back_by(inbox),
            ReturnReason::TimedOut { .. } => true,
        };
        let attempts = record.attempts + u32::from(counted);
        let mut dead = attempts >= MAX_ATTEMPTS;
        let mut finished = false;
        let unfinished = self.zk.tasks.get(task).is_some_and(|t| t.result_at.is_none());
        if dead && !unfinished {
            (dead, finished) = (false, true);
        }
        if let ReturnReason::TimedOut { worker, version, .. } = reason {
            if self.zk.workers.get(worker).is_none_or(|r| r.version != *version) {
                return Err(WriteFailure::Rejected);
            }
        }
        if counted {
            self.zk.attempts.entry(task.to_string()).or_default().attempts = attempts;
            self.notify(Note::Attempts(task.to_string()));
        }
        let mut revoked = None;
        if let ReturnReason::TimedOut { worker, inbox, .. } = reason {
            let incarnation = match self.holds(worker) {
                Some(Holds::Task(held, incarnation)) if held == task => *incarnation,
                _ => self.zk.tasks.get(task).map_or(0, |t| t.incarnation),
            };
            let holds = if inbox.is_some() { Holds::Mark(task.to_string(), incarnation) } else { Holds::Nothing };
            revoked = Some((worker.clone(), self.set_worker(worker, holds)));
        }
        if dead {
            let at = self.now();
            self.zk.tasks.get_mut(task).expect("checked above").result_at = Some(at);
            self.notify(Note::TaskCompleted(task.to_string()));
        }
        Ok(Resolution { attempts, counted_failure: counted, dead_lettered: dead, revoked, finished })
    }

    // --- the connection ------------------------------------------------------------------------

    fn lose_connection(&mut self, applied: usize, failed: usize, received: usize) {
        if matches!(self.link, Link::Disconnected) {
            return;
        }
        // A rebuild under way is abandoned; the old board stays until the next one.
        self.link = Link::Disconnected;
        self.core.session(SessionState::Disconnected);
        let in_transit = self.wire.split_off(received.min(self.wire.len()));
        let mut errors: Vec<(u64, Reply)> = Vec::new();
        for message in in_transit {
            if let Message::Reply { generation, reply } = message {
                errors.extend(reply.lost().map(|reply| (generation, reply)));
            }
        }
        let applied = applied.min(self.requests.len());
        for (generation, request) in self.requests.drain(..applied).collect::<Vec<_>>() {
            // Handled by the server; the notifications and the reply are lost with the link.
            let reply = self.serve(generation, request, Fault::None);
            errors.extend(reply.lost().map(|reply| (generation, reply)));
        }
        let failed = failed.min(self.requests.len());
        for (generation, request) in self.requests.drain(..failed) {
            errors.push((generation, request.failed()));
        }
        // Not sent yet: they go out once connected.
        self.queued = std::mem::take(&mut self.requests);
        for (generation, reply) in errors {
            self.wire.push_back(Message::Reply { generation, reply });
        }
    }

    fn reconnect(&mut self) {
        match std::mem::replace(&mut self.link, Link::Connected) {
            Link::Connected => {},
            Link::Disconnected => {
                self.link = Link::Disconnected;
                // The loop applies the events already received before it resyncs.
                for message in std::mem::take(&mut self.wire) {
                    match message {
                        Message::Note(note) => self.on_note(note),
                        reply => self.wire.push_back(reply),
                    }
                }
                // What waited in the client goes out first; no watch of ours hears it.
                while let Some((generation, request)) = self.queued.pop_front() {
                    let reply = self.serve(generation, request, Fault::None);
                    self.wire.push_back(Message::Reply { generation, reply });
                }
                // Connected: the core wants its resync. New watches, then the listing of the tasks.
                self.core.session(SessionState::SyncConnected);
                assert!(self.core.resync_wanted(), "a reconnection after a disconnection resyncs");
                self.core.resync_started();
                self.armed.clear();
                self.deletions_unheard = 0;
                let tasks = self.zk.tasks.iter().map(|(id, t)| (id.clone(), t.result_at)).collect();
                self.link = Link::Rebuilding(tasks);
            },
            Link::Rebuilding(tasks) => self.finish_rebuild(tasks),
        }
    }

    /// `Leader::resync`: a snapshot of the tasks listed at the start and the workers read now,
    /// then the records, for the core's rebuild.
    fn finish_rebuild(&mut self, tasks: Vec<(String, Option<Instant>)>) {
        let tasks = tasks.into_iter().map(|(id, at)| ListedTask { id, finished: at.map(|at| (at, 0)) }).collect();
        let workers = self
            .zk
            .workers
            .iter()
            .map(|(wid, registration)| {
                let read = registration.read(wid);
                let read = WorkerRead {
                    data: read.data,
                    version: read.version,
                    created: read.created,
                    inbox: Some(read.inbox),
                };
                (wid.clone(), read)
            })
            .collect();
        let records = self.zk.attempts.keys().cloned().collect();
        self.link = Link::Connected;
        self.core.rebuilt(Snapshot { tasks, workers, records, ..Snapshot::default() });
        self.carry_out();
        // `Leader::apply_delivered` after the rebuild: the notifications of its window precede
        // its last reply, so all have arrived, and they are applied before anything is planned.
        while let Some(index) = self.wire.iter().position(|m| matches!(m, Message::Note(_))) {
            if let Some(Message::Note(note)) = self.wire.remove(index) {
                self.on_note(note);
            }
        }
    }

    // --- the leader loop -----------------------------------------------------------------------

    /// `Leader::carry_out`: the core's effects become requests, in order. What the model leaves
    /// out (the inbox sweep, the view check, the status record) is answered at once.
    fn carry_out(&mut self) {
        loop {
            let effects = self.core.take_effects();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::ReadWorker { generation, wid, watch, known } => {
                        self.send_as(generation, Request::Read { wid, watch, known })
                    },
                    Effect::ListWorkers { generation } => self.send_as(generation, Request::List),
                    Effect::Assign { generation, batch } => {
                        self.check_plan(&batch);
                        self.send_as(generation, Request::Assign(batch));
                    },
                    Effect::Resolve { generation, task, reason } => {
                        self.send_as(generation, Request::Resolve { task, reason })
                    },
                    Effect::Cleanup { task, with_task } => {
                        self.send_as(self.core.generation(), Request::Cleanup { task, with_task })
                    },
                    Effect::SweepInboxes => self.core.inboxes_swept(Ok(0)),
                    Effect::CheckView { generation } => self.core.view_checked(generation, Ok((None, None))),
                    Effect::Publish(_) => self.core.status_written(Ok(())),
                }
            }
        }
    }

    fn send_as(&mut self, generation: u64, request: Request) {
        match self.link {
            Link::Connected => self.requests.push_back((generation, request)),
            Link::Disconnected => self.queued.push_back((generation, request)),
            Link::Rebuilding(_) => unreachable!("the leader waits for its rebuild"),
        }
    }

    fn read_worker(&mut self, wid: &str) {
        self.core.read_worker(wid.to_string());
        self.carry_out();
    }

    fn plan(&mut self, limit: usize) {
        self.core.assign(limit);
        self.carry_out();
    }

    /// Invariants 1 and 2 at planning: no planned task runs anywhere (assigned, or withdrawn
    /// and not let go), and a batch names each worker and task once.
    fn check_plan(&mut self, batch: &[Assignment]) {
        let workers: BTreeSet<&str> = batch.iter().map(|a| a.worker.as_str()).collect();
        let tasks: BTreeSet<&str> = batch.iter().map(|a| a.task.as_str()).collect();
        if workers.len() < batch.len() || tasks.len() < batch.len() {
            self.violations.push(format!("invariant 2: a batch names a worker or a task twice: {batch:?}"));
        }
        for a in batch {
            if let Some((runner, holds)) = self.zk.runner_of(&a.task, None) {
                self.violations.push(format!(
                    "invariant 1: planned {} for {} while {runner} still holds {holds:?}",
                    a.task, a.worker
                ));
            }
        }
    }

    /// The leader's tick, with the cutoffs of expiry and retention named (each optional).
    fn tick(&mut self, expire: Option<Instant>, retention: Option<Instant>) {
        if let Some(cutoff) = expire {
            self.core.expire(cutoff + PERIOD);
        }
        if let Some(cutoff) = retention {
            self.core.retire(cutoff + PERIOD);
        }
        self.core.housekeep(self.now());
        self.carry_out();
    }

    fn settle(&mut self) {
        if !self.connected() {
            return;
        }
        while let Some((generation, request)) = self.requests.pop_front() {
            let reply = self.serve(generation, request, Fault::None);
            self.wire.push_back(Message::Reply { generation, reply });
        }
        for _ in 0..self.wire.len() {
            self.deliver(None);
        }
        // The loop plans after handling what came in.
        self.plan(usize::MAX);
    }

    fn deliver(&mut self, overtake: Option<Channel>) {
        if self.rebuilding() {
            return;
        }
        let first_of_channel =
            |channel| self.wire.iter().position(|m| matches!(m, Message::Note(note) if note.channel() == channel));
        let index = overtake.and_then(first_of_channel).unwrap_or(0);
        let Some(message) = self.wire.remove(index) else { return };
        match message {
            Message::Note(note) => self.on_note(note),
            Message::Reply { generation, reply } => self.on_reply(generation, reply),
        }
    }

    /// `Leader::on_task_event` and its siblings. The model reports no zxids.
    fn on_note(&mut self, note: Note) {
        match note {
            Note::TaskCreated(task) => self.core.task_changed(&task, TaskChange::Created, 0),
            Note::TaskCompleted(task) => self.core.task_changed(&task, TaskChange::Written, 0),
            Note::TaskDeleted(task) => {
                self.deletions_unheard = self.deletions_unheard.saturating_sub(1);
                self.core.task_changed(&task, TaskChange::Deleted, 0);
            },
            Note::Membership => self.core.membership_changed(0),
            Note::Attempts(task) => self.core.attempts_written(&task),
        }
        self.carry_out();
    }

    /// `Leader::on_completion`.
    fn on_reply(&mut self, generation: u64, reply: Reply) {
        let current = generation == self.core.generation();
        match reply {
            // The read's future sends its inbox look whatever the generation.
            Reply::ReadHalf { wid, watch, read } => self.send_as(generation, Request::InboxLook { wid, watch, read }),
            Reply::Read { wid, watch, result, .. } => {
                let found = matches!(result, Ok(Some(_)));
                let result = match result {
                    Ok(Some((read, inbox))) => {
                        Ok(WorkerRead { data: read.data, version: read.version, created: read.created, inbox })
                    },
                    Ok(None) => Err(ZkError::NoNode),
                    Err(()) => Err(ZkError::ConnectionLoss),
                };
                let keep = self.core.worker_read(generation, &wid, result, watch);
                if keep {
                    self.keep_watch(&wid);
                } else if current && watch && found {
                    // A watch no longer needed fires once, unheeded.
                    self.armed.remove(&wid);
                }
            },
            Reply::WorkerChanged(wid) => self.core.worker_changed(generation, &wid),
            Reply::Listed(result) => self.core.workers_listed(generation, result.map_err(|()| ZkError::ConnectionLoss)),
            Reply::Assigned { batch, result } => {
                self.core.assigned(generation, &batch, result.map_err(WriteFailure::error))
            },
            Reply::Resolved { task, reason, result } => {
                self.core.resolved(generation, &task, &reason, result.map_err(WriteFailure::error))
            },
            Reply::Cleaned => self.core.cleaned(Ok(()), false),
        }
        self.carry_out();
    }

    fn keep_watch(&mut self, wid: &str) {
        let Some(armed) = self.armed.get_mut(wid) else { return };
        if armed.fired {
            let generation = armed.generation;
            self.armed.remove(wid);
            self.wire.push_back(Message::Reply { generation, reply: Reply::WorkerChanged(wid.to_string()) });
        } else {
            armed.kept = true;
        }
    }

    // --- healing and quiescence ----------------------------------------------------------------

    /// Everything in flight is served and handled, workers let go of withdrawn tasks (and of
    /// tasks finished elsewhere), draining workers leave, and the tick's reads are done, until
    /// nothing is left: the model is quiescent. Nothing is planned, nothing expires.
    pub(super) fn quiesce(&mut self) -> Result<(), String> {
        for _ in 0..QUIESCE_ROUNDS {
            if !self.connected() {
                self.reconnect();
                continue;
            }
            let mut busy = false;
            while let Some((generation, request)) = self.requests.pop_front() {
                let reply = self.serve(generation, request, Fault::None);
                self.wire.push_back(Message::Reply { generation, reply });
                busy = true;
            }
            while let Some(message) = self.wire.pop_front() {
                match message {
                    Message::Note(note) => self.on_note(note),
                    Message::Reply { generation, reply } => self.on_reply(generation, reply),
                }
                busy = true;
            }
            // Workers let go of withdrawn tasks, drop runs of tasks that got a result meanwhile
            // (or are gone), as ours do when such a run ends, and draining workers leave (an
            // idle worker's draining mark is not watched: its departure tells).
            let moot = |holds: &Holds| match holds {
                Holds::Mark(..) | Holds::Draining => true,
                Holds::Task(task, _) => self.zk.tasks.get(task).is_none_or(|t| t.result_at.is_some()),
                Holds::Nothing => false,
            };
            let finishing: Vec<String> =
                self.zk.workers.iter().filter(|(_, r)| moot(&r.holds)).map(|(wid, _)| wid.clone()).collect();
            for wid in &finishing {
                match self.holds(wid) {
                    Some(Holds::Draining) => self.die(wid),
                    Some(Holds::Mark(..)) => self.let_go(wid),
                    _ => self.complete(wid),
                }
            }
            self.tick(None, None);
            if !busy && finishing.is_empty() && self.requests.is_empty() && self.wire.is_empty() {
                return Ok(());
            }
        }
        Err(format!("no quiescence after {QUIESCE_ROUNDS} rounds: {}", self.describe()))
    }

    /// Invariant 3: with faults healed, plan, deliver and let every worker complete its task,
    /// round after round, until every task has a result. A worker that can take tasks is
    /// registered if none is left.
    pub(super) fn drain_all(&mut self) -> Result<(), String> {
        self.quiesce()?;
        for _ in 0..DRAIN_ROUNDS {
            if self.zk.tasks.values().all(|t| t.result_at.is_some()) {
                return Ok(());
            }
            if self.zk.workers.is_empty() {
                self.register(&worker_name(0), true);
                self.quiesce()?;
            }
            self.plan(usize::MAX);
            self.quiesce()?;
            let running: Vec<String> = self
                .zk
                .workers
                .iter()
                .filter(|(_, r)| matches!(r.holds, Holds::Task(..)))
                .map(|(wid, _)| wid.clone())
                .collect();
            for wid in &running {
                self.complete(wid);
            }
            self.quiesce()?;
        }
        let stuck: Vec<&String> =
            self.zk.tasks.iter().filter(|(_, t)| t.result_at.is_none()).map(|(id, _)| id).collect();
        Err(format!("invariant 3: tasks {stuck:?} never got a result: {}", self.describe()))
    }

    // --- checks --------------------------------------------------------------------------------

    /// Invariants 1 and 2, after every step.
    pub(super) fn check_safety(&mut self) -> Result<(), String> {
        if let Some(violation) = self.violations.first() {
            return Err(violation.clone());
        }
        let mut runs: BTreeMap<(&str, u64), Vec<&str>> = BTreeMap::new();
        for (wid, registration) in &self.zk.workers {
            if let Some(run) = registration.holds.run() {
                runs.entry(run).or_default().push(wid);
            }
        }
        match runs.iter().find(|(_, holders)| holders.len() > 1) {
            Some(((task, incarnation), holders)) => {
                Err(format!("invariant 1: task {task} (incarnation {incarnation}) is held by {holders:?}"))
            },
            None => Ok(()),
        }
    }

    fn board_tasks(&self) -> BTreeSet<String> {
        (0..TASK_IDS).map(task_id).filter(|id| self.core.board().task_state(id).is_some()).collect()
    }

    /// Invariant 4 between steps: the board knows no task beyond those in ZooKeeper and those
    /// whose deletion it has yet to hear of.
    pub(super) fn check_memory(&self) -> Result<(), String> {
        if !self.connected() {
            return Ok(());
        }
        let known = self.board_tasks().len();
        let bound = self.zk.tasks.len() + self.deletions_unheard;
        if known > bound {
            return Err(format!(
                "invariant 4: the board knows {known} tasks, ZooKeeper has {} and {} deletions are unheard",
                self.zk.tasks.len(),
                self.deletions_unheard
            ));
        }
        Ok(())
    }

    /// Invariants 4 and 5 at quiescence: the board knows exactly the tasks and workers that
    /// exist, each task's state is the truth's, and the counts follow.
    pub(super) fn check_view(&self) -> Result<(), String> {
        let tasks: BTreeSet<String> = self.zk.tasks.keys().cloned().collect();
        if self.board_tasks() != tasks {
            return Err(format!(
                "invariant 4: the board knows tasks {:?}, ZooKeeper has {tasks:?}",
                self.board_tasks()
            ));
        }
        let workers: BTreeSet<String> = self.core.board().workers_not_in(&HashSet::new()).into_iter().collect();
        let live: BTreeSet<String> = self.zk.workers.keys().cloned().collect();
        // A read sent before a worker left can complete after the listing that showed it gone
        // (its inbox look delays it): the board then knows a departed worker, free, until a
        // plan for it is rejected and the re-read finds no znode. Bounded by the names in use.
        if !workers.is_superset(&live) {
            return Err(format!("invariant 4: the board knows workers {workers:?}, ZooKeeper has {live:?}"));
        }
        let mut expected = Counts::default();
        for (id, task) in &self.zk.tasks {
            let runner = self.zk.runner_of(id, None);
            let state = self.core.board().task_state(id);
            let agrees = match (task.result_at, runner) {
                (Some(_), _) => state == Some(&TaskState::Done),
                (None, Some((wid, Holds::Task(..)))) => {
                    expected.running += 1;
                    matches!(state, Some(TaskState::Assigned { worker, .. }) if worker == wid)
                },
                (None, Some((wid, _))) => {
                    expected.running += 1;
                    state == Some(&TaskState::Withdrawing { worker: wid.to_string() })
                },
                (None, None) => {
                    expected.backlog += 1;
                    state == Some(&TaskState::Pending)
                },
            };
            if !agrees {
                return Err(format!(
                    "invariant 5: task {id} is {state:?} on the board; in ZooKeeper: result {}, run by {runner:?}",
                    task.result_at.is_some()
                ));
            }
        }
        expected.workers_busy = self.zk.workers.values().filter(|r| r.holds != Holds::Nothing).count() as u64;
        if self.core.board().counts() != expected {
            return Err(format!("invariant 5: counts {:?}, expected {expected:?}", self.core.board().counts()));
        }
        Ok(())
    }

    /// Every result not collected is queued for retention exactly once (each task's retention
    /// entry names its incarnation, so a collected task's entry never stands for a later one).
    pub(super) fn check_retention(&mut self) -> Result<(), String> {
        let mut retained = self.core.board_mut().past_retention(Duration::ZERO, Instant::now() + PERIOD);
        retained.sort();
        let results: Vec<String> =
            self.zk.tasks.iter().filter(|(_, t)| t.result_at.is_some()).map(|(id, _)| id.clone()).collect();
        if retained != results {
            return Err(format!("invariant 4: retention would remove {retained:?}; the results are {results:?}"));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let tasks: Vec<String> = self
            .zk
            .tasks
            .iter()
            .map(|(id, t)| {
                let result = if t.result_at.is_some() { "done" } else { "pending" };
                format!("{id}#{} {result} board={:?}", t.incarnation, self.core.board().task_state(id))
            })
            .collect();
        let workers: Vec<String> = self
            .zk
            .workers
            .iter()
            .map(|(wid, r)| format!("{wid}@{} v{} {:?} inbox={}", r.created, r.version, r.holds, r.inbox))
            .collect();
        format!(
            "tasks [{}]; workers [{}]; board workers {:?}; counts {:?}; attempts {:?}",
            tasks.join(", "),
            workers.join(", "),
            self.core.board().workers_not_in(&HashSet::new()),
            self.core.board().counts(),
            self.zk.attempts.iter().map(|(t, r)| (t, r.attempts)).collect::<Vec<_>>()
        )
    }
}
