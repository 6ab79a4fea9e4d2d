//! The client side of the protocol: submit a task, wait for its result, collect it.
//!
//! Tasks are persistent znodes, so a client outlives its ZooKeeper sessions: requests that
//! fail with connection loss are retried, and an expired session is replaced by a new one.
//! Under load, submissions and collections are group-committed (see `batch`), and the reads
//! of results are grouped too (see `results`).

mod batch;
mod results;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use zookeeper_client::{Client, Error as ZkError, EventType};

use crate::connect::{ConnectError, ZkTarget};
use crate::paths::{self, MAX_PAYLOAD_BYTES};
use crate::records::{self, TaskOutcome, TaskSettings};
use crate::retry::{is_transient, retrying};
use batch::Write;
use session::{CallError, Session};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("payload of {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit of a ZooKeeper znode; store large inputs elsewhere and submit a reference")]
    PayloadTooLarge { size: usize },
    #[error("backlog full: {tasks} tasks in the system, cap {cap}; retry later or raise the masters' --backlog-cap")]
    BacklogFull { tasks: u64, cap: u64 },
    #[error("task {id} vanished before its result arrived (deleted by another client or by retention)")]
    Vanished { id: String },
    #[error("ZooKeeper {op} failed: {source}")]
    Zk { op: &'static str, source: ZkError },
}

impl SubmitError {
    fn from_call(op: &'static str) -> impl FnOnce(CallError) -> SubmitError {
        move |error| match error {
            CallError::Connect(error) => SubmitError::Connect(error),
            CallError::Zk(source) => SubmitError::Zk { op, source },
        }
    }
}

/// How long a reading of `/tasks`' size stands in for the cap check.
const CAP_READ_TTL: Duration = Duration::from_millis(100);

/// The soft backlog cap: one `exists` on `/tasks` per TTL, plus our own submissions since.
struct CapGate {
    cap: u64,
    last: Mutex<Option<(Instant, u64)>>,
}

impl CapGate {
    fn admit_cached(&self) -> Option<bool> {
        let mut last = self.last.lock().ok()?;
        let (at, count) = last.as_mut()?;
        if at.elapsed() > CAP_READ_TTL {
            return None;
        }
        *count += 1;
        Some(*count <= self.cap)
    }

    fn record(&self, count: u64) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), count));
        }
    }
}

pub struct Submitter {
    session: Arc<Session>,
    writes: mpsc::UnboundedSender<Write>,
    reads: mpsc::UnboundedSender<results::Read>,
    /// The session our ids are named after (see `paths::task_id`).
    id_session: u64,
    counter: AtomicU64,
    gate: CapGate,
}

impl Submitter {
    pub async fn connect(target: &ZkTarget) -> Result<Self, SubmitError> {
        let client = target.connect_with_roots().await?;
        Self::new(client, target).await
    }

    pub async fn new(client: Client, target: &ZkTarget) -> Result<Self, SubmitError> {
        // A connection lost right after the session opened is ridden out like any other.
        let settings = match retrying(&client, is_transient, || client.get_data(paths::CONFIG)).await {
            Ok((data, _)) => records::decode::<TaskSettings>(paths::CONFIG, &data).unwrap_or_default(),
            Err(ZkError::NoNode) => TaskSettings::default(),
            Err(source) => return Err(SubmitError::Zk { op: "read of the task settings", source }),
        };
        // Session ids are unique among live sessions: ids stay unique across clients.
        let id_session = client.session_id().0 as u64;
        let session = Arc::new(Session::new(target.clone(), client));
        let writes = batch::start(session.clone(), target.acls());
        let reads = results::start(session.clone());
        Ok(Self {
            session,
            writes,
            reads,
            id_session,
            counter: AtomicU64::new(0),
            gate: CapGate { cap: settings.backlog_cap, last: Mutex::new(None) },
        })
    }

    /// The current session.
    pub fn client(&self) -> Client {
        self.session.client()
    }

    async fn check_cap(&self) -> Result<(), SubmitError> {
        if self.gate.admit_cached() == Some(true) {
            return Ok(());
        }
        let stat = self
            .session
            .call(|c, _| async move { c.check_stat(paths::TASKS).await })
            .await
            .map_err(SubmitError::from_call("size check of /tasks"))?;
        let tasks = stat.map_or(0, |s| s.num_children.max(0) as u64);
        self.gate.record(tasks);
        if tasks >= self.gate.cap {
            return Err(SubmitError::BacklogFull { tasks, cap: self.gate.cap });
        }
        Ok(())
    }

    fn next_id(&self, payload: &[u8]) -> String {
        paths::task_id(self.id_session, self.counter.fetch_add(1, Ordering::Relaxed), payload)
    }

    /// Hands a write to the group committer and waits for its outcome.
    async fn write<T>(
        &self,
        op: &'static str,
        make: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Write,
    ) -> Result<T, SubmitError> {
        let (reply, outcome) = oneshot::channel();
        let gone = || SubmitError::Zk { op, source: ZkError::ClientClosed };
        self.writes.send(make(reply)).map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?.map_err(SubmitError::from_call(op))
    }

    /// Creates `/data/<id>` and `/tasks/<id>` in one multi. Returns the task id.
    pub async fn submit(&self, payload: &[u8]) -> Result<String, SubmitError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SubmitError::PayloadTooLarge { size: payload.len() });
        }
        self.check_cap().await?;
        loop {
            let id = self.next_id(payload);
            let created = self
                .write("submission", |reply| Write::Submit { id: id.clone(), payload: payload.to_vec(), reply })
                .await?;
            if created {
                return Ok(id);
            }
            // A leftover with the same id (an earlier client with our session id): next one.
        }
    }

    /// Waits until `/tasks/<id>` holds a result.
    pub async fn wait(&self, id: &str) -> Result<TaskOutcome, SubmitError> {
        let path = paths::task(id);
        let vanished = || SubmitError::Vanished { id: id.to_string() };
        loop {
            let read = self.session.call(|c, _| {
                let path = &path;
                async move { c.get_and_watch_data(path).await }
            });
            let (data, _, watcher) = match read.await {
                Ok(read) => read,
                Err(CallError::Zk(ZkError::NoNode)) => return Err(vanished()),
                Err(error) => return Err(SubmitError::from_call("read of the result")(error)),
            };
            if !data.is_empty() {
                return Ok(TaskOutcome::from_result(data));
            }
            let event = watcher.changed().await;
            match event.event_type {
                EventType::NodeDeleted => return Err(vanished()),
                // Read without a new watch: one would only fire again when we delete the task.
                EventType::NodeDataChanged => match self.read_result(&path).await {
                    Ok(data) if !data.is_empty() => return Ok(TaskOutcome::from_result(data)),
                    Ok(_) => {},
                    Err(CallError::Zk(ZkError::NoNode)) => return Err(vanished()),
                    Err(error) => return Err(SubmitError::from_call("read of the result")(error)),
                },
                // The session ended or came back: read again (on a new session if needed).
                _ => {},
            }
        }
    }

    /// Reads a task's data through the group reader.
    async fn read_result(&self, path: &str) -> Result<Vec<u8>, CallError> {
        let (reply, outcome) = oneshot::channel();
        let gone = || CallError::Zk(ZkError::ClientClosed);
        self.reads.send(results::Read { path: path.to_string(), reply }).map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    /// Deletes `/tasks/<id>` and `/data/<id>`; already-missing nodes are fine.
    pub async fn collect(&self, id: &str) -> Result<(), SubmitError> {
        self.write("cleanup", |reply| Write::Collect { id: id.to_string(), reply }).await
    }

    /// Submit, wait, collect.
    pub async fn run(&self, payload: &[u8]) -> Result<(String, TaskOutcome), SubmitError> {
        let id = self.submit(payload).await?;
        let outcome = self.wait(&id).await?;
        self.collect(&id).await?;
        Ok((id, outcome))
    }
}
