//! The client side of the protocol: submit a task, wait for its result, collect it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zookeeper_client::{Client, CreateMode, Error as ZkError, EventType, MultiWriteError};

use crate::connect::{ConnectError, ZkTarget};
use crate::paths::{self, MAX_PAYLOAD_BYTES};
use crate::records::{self, TaskOutcome, TaskSettings};

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
    fn zk(op: &'static str) -> impl FnOnce(ZkError) -> SubmitError {
        move |source| SubmitError::Zk { op, source }
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
    client: Client,
    prefix: String,
    counter: AtomicU64,
    gate: CapGate,
    acls: zookeeper_client::Acls<'static>,
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
        let prefix = format!("t{:x}-", client.session_id().0 as u64);
        let gate = CapGate { cap: settings.backlog_cap, last: Mutex::new(None) };
        Ok(Self { client, prefix, counter: AtomicU64::new(0), gate, acls: target.acls() })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn check_cap(&self) -> Result<(), SubmitError> {
        match self.gate.admit_cached() {
            Some(true) => return Ok(()),
            Some(false) | None => {},
        }
        let stat = self.client.check_stat(paths::TASKS).await.map_err(SubmitError::zk("size check of /tasks"))?;
        let tasks = stat.map_or(0, |s| s.num_children.max(0) as u64);
        self.gate.record(tasks);
        if tasks >= self.gate.cap {
            return Err(SubmitError::BacklogFull { tasks, cap: self.gate.cap });
        }
        Ok(())
    }

    /// Creates `/data/<id>` and `/tasks/<id>` in one multi. Returns the task id.
    pub async fn submit(&self, payload: &[u8]) -> Result<String, SubmitError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(SubmitError::PayloadTooLarge { size: payload.len() });
        }
        self.check_cap().await?;
        let options = CreateMode::Persistent.with_acls(self.acls);
        loop {
            let id = format!("{}{}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed));
            let mut writer = self.client.new_multi_writer();
            writer
                .add_create(&paths::data(&id), payload, &options)
                .and_then(|_| writer.add_create(&paths::task(&id), b"", &options))
                .map_err(SubmitError::zk("submission"))?;
            match writer.commit().await {
                Ok(_) => return Ok(id),
                // A leftover of an earlier session with the same id: take the next one.
                Err(MultiWriteError::OperationFailed { source: ZkError::NodeExists, .. }) => continue,
                Err(error) => return Err(SubmitError::Zk { op: "submission", source: error.into() }),
            }
        }
    }

    /// Waits until `/tasks/<id>` holds a result.
    pub async fn wait(&self, id: &str) -> Result<TaskOutcome, SubmitError> {
        let path = paths::task(id);
        loop {
            let (data, _, watcher) = match self.client.get_and_watch_data(&path).await {
                Ok(read) => read,
                Err(ZkError::NoNode) => return Err(SubmitError::Vanished { id: id.to_string() }),
                Err(source) => return Err(SubmitError::Zk { op: "read of the result", source }),
            };
            if !data.is_empty() {
                return Ok(TaskOutcome::from_result(data));
            }
            let event = watcher.changed().await;
            match event.event_type {
                EventType::NodeDataChanged => match self.client.get_data(&path).await {
                    Ok((data, _)) if !data.is_empty() => return Ok(TaskOutcome::from_result(data)),
                    Ok(_) => continue,
                    Err(ZkError::NoNode) => return Err(SubmitError::Vanished { id: id.to_string() }),
                    Err(source) => return Err(SubmitError::Zk { op: "read of the result", source }),
                },
                EventType::NodeDeleted => return Err(SubmitError::Vanished { id: id.to_string() }),
                EventType::Session if event.session_state.is_terminated() => {
                    return Err(SubmitError::Zk { op: "wait for the result", source: ZkError::SessionExpired })
                },
                _ => continue,
            }
        }
    }

    /// Deletes `/tasks/<id>` and `/data/<id>`; already-missing nodes are fine.
    pub async fn collect(&self, id: &str) -> Result<(), SubmitError> {
        let (task, data) = (paths::task(id), paths::data(id));
        let mut writer = self.client.new_multi_writer();
        writer
            .add_delete(&task, None)
            .and_then(|_| writer.add_delete(&data, None))
            .map_err(SubmitError::zk("cleanup"))?;
        match writer.commit().await {
            Ok(_) => Ok(()),
            Err(MultiWriteError::OperationFailed { source: ZkError::NoNode, .. }) => {
                for path in [task, data] {
                    match self.client.delete(&path, None).await {
                        Ok(()) | Err(ZkError::NoNode) => {},
                        Err(source) => return Err(SubmitError::Zk { op: "cleanup", source }),
                    }
                }
                Ok(())
            },
            Err(error) => Err(SubmitError::Zk { op: "cleanup", source: error.into() }),
        }
    }

    /// Submit, wait, collect.
    pub async fn run(&self, payload: &[u8]) -> Result<(String, TaskOutcome), SubmitError> {
        let id = self.submit(payload).await?;
        let outcome = self.wait(&id).await?;
        self.collect(&id).await?;
        Ok((id, outcome))
    }
}
