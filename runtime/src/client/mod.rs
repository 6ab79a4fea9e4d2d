//! The client side of the protocol: submit a task, wait for its result, collect it.
//!
//! Tasks are persistent znodes, so a client outlives its ZooKeeper sessions: requests that
//! fail with connection loss are retried, and an expired session is replaced by a new one.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, EventType};

use crate::connect::{ConnectError, ZkTarget};
use crate::paths::{self, MAX_PAYLOAD_BYTES};
use crate::records::{self, TaskOutcome, TaskSettings};
use crate::retry::is_transient;

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

/// How long a reading of `/tasks`' size stands in for the cap check.
const CAP_READ_TTL: Duration = Duration::from_millis(100);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

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
    target: ZkTarget,
    client: RwLock<Client>,
    /// Serialises session renewal so concurrent requests open one new session, not many.
    renewal: tokio::sync::Mutex<()>,
    prefix: String,
    counter: AtomicU64,
    gate: CapGate,
    acls: Acls<'static>,
}

impl Submitter {
    pub async fn connect(target: &ZkTarget) -> Result<Self, SubmitError> {
        let client = target.connect_with_roots().await?;
        Self::new(client, target).await
    }

    pub async fn new(client: Client, target: &ZkTarget) -> Result<Self, SubmitError> {
        let settings = match client.get_data(paths::CONFIG).await {
            Ok((data, _)) => records::decode::<TaskSettings>(paths::CONFIG, &data).unwrap_or_default(),
            Err(ZkError::NoNode) => TaskSettings::default(),
            Err(source) => return Err(SubmitError::Zk { op: "read of the task settings", source }),
        };
        // Session ids are unique among live sessions: ids stay unique across clients.
        let prefix = format!("t{:x}-", client.session_id().0 as u64);
        Ok(Self {
            target: target.clone(),
            client: RwLock::new(client),
            renewal: tokio::sync::Mutex::new(()),
            prefix,
            counter: AtomicU64::new(0),
            gate: CapGate { cap: settings.backlog_cap, last: Mutex::new(None) },
            acls: target.acls(),
        })
    }

    /// The current session.
    pub fn client(&self) -> Client {
        match self.client.read() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `expired` with a new session (unless another request already did).
    async fn renew(&self, expired: &Client) -> Result<(), SubmitError> {
        let _guard = self.renewal.lock().await;
        if self.client().session_id() != expired.session_id() {
            return Ok(());
        }
        tracing::warn!("ZooKeeper session ended; opening a new one");
        let fresh = self.target.connect().await?;
        match self.client.write() {
            Ok(mut client) => *client = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Runs `request` on the current session: retried on connection loss, moved to a new
    /// session when the current one ended. Retried writes must tolerate their own success.
    async fn call<T, F, Fut>(&self, op: &'static str, request: F) -> Result<T, SubmitError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ZkError>>,
    {
        loop {
            let client = self.client();
            match request(client.clone()).await {
                Err(error) if client.state().is_terminated() || matches!(error, ZkError::SessionExpired) => {
                    self.renew(&client).await?;
                },
                Err(error) if is_transient(&error) => tokio::time::sleep(RETRY_PAUSE).await,
                Err(source) => return Err(SubmitError::Zk { op, source }),
                Ok(value) => return Ok(value),
            }
        }
    }

    async fn check_cap(&self) -> Result<(), SubmitError> {
        if self.gate.admit_cached() == Some(true) {
            return Ok(());
        }
        let stat = self.call("size check of /tasks", |c| async move { c.check_stat(paths::TASKS).await }).await?;
        let tasks = stat.map_or(0, |s| s.num_children.max(0) as u64);
        self.gate.record(tasks);
        if tasks >= self.gate.cap {
            return Err(SubmitError::BacklogFull { tasks, cap: self.gate.cap });
        }
        Ok(())
    }

    fn next_id(&self) -> String {
        format!("{}{}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates `/data/<id>` and `/tasks/<id>` in one multi. Returns the task id.
    pub async fn submit(&self, payload: &[u8]) -> Result<String, SubmitError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SubmitError::PayloadTooLarge { size: payload.len() });
        }
        self.check_cap().await?;
        let options = CreateMode::Persistent.with_acls(self.acls);
        loop {
            let id = self.next_id();
            let (data_path, task_path) = (paths::data(&id), paths::task(&id));
            let attempts = AtomicU64::new(0);
            let created = self
                .call("submission", |client| {
                    let retry = attempts.fetch_add(1, Ordering::Relaxed) > 0;
                    let (data_path, task_path, options) = (&data_path, &task_path, &options);
                    async move {
                        let mut writer = client.new_multi_writer();
                        writer.add_create(data_path, payload, options)?;
                        writer.add_create(task_path, b"", options)?;
                        match writer.commit().await {
                            Ok(_) => Ok(true),
                            // After a lost reply, NodeExists may be our own earlier attempt.
                            Err(error) => match ZkError::from(error) {
                                ZkError::NodeExists if retry => Ok(client.check_stat(task_path).await?.is_some()),
                                ZkError::NodeExists => Ok(false),
                                other => Err(other),
                            },
                        }
                    }
                })
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
        loop {
            let read = self.call("read of the result", |c| {
                let path = &path;
                async move { c.get_and_watch_data(path).await }
            });
            let (data, _, watcher) = match read.await {
                Ok(read) => read,
                Err(SubmitError::Zk { source: ZkError::NoNode, .. }) => {
                    return Err(SubmitError::Vanished { id: id.to_string() })
                },
                Err(error) => return Err(error),
            };
            if !data.is_empty() {
                return Ok(TaskOutcome::from_result(data));
            }
            let event = watcher.changed().await;
            if event.event_type == EventType::NodeDeleted {
                return Err(SubmitError::Vanished { id: id.to_string() });
            }
            // Data changed, or the session ended: read again (on a new session if needed).
        }
    }

    /// Deletes `/tasks/<id>` and `/data/<id>`; already-missing nodes are fine.
    pub async fn collect(&self, id: &str) -> Result<(), SubmitError> {
        let (task, data) = (paths::task(id), paths::data(id));
        self.call("cleanup", |client| {
            let (task, data) = (&task, &data);
            async move {
                let mut writer = client.new_multi_writer();
                writer.add_delete(task, None)?;
                writer.add_delete(data, None)?;
                match writer.commit().await {
                    Ok(_) => Ok(()),
                    Err(error) => match ZkError::from(error) {
                        // One is gone already (a foreign layout, or a retry): delete what is left.
                        ZkError::NoNode => {
                            for path in [task, data] {
                                match client.delete(path, None).await {
                                    Ok(()) | Err(ZkError::NoNode) => {},
                                    Err(other) => return Err(other),
                                }
                            }
                            Ok(())
                        },
                        other => Err(other),
                    },
                }
            }
        })
        .await
    }

    /// Submit, wait, collect.
    pub async fn run(&self, payload: &[u8]) -> Result<(String, TaskOutcome), SubmitError> {
        let id = self.submit(payload).await?;
        let outcome = self.wait(&id).await?;
        self.collect(&id).await?;
        Ok((id, outcome))
    }
}
