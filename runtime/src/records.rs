//! The JSON records of the `/taskcluster` extensions and the failure-result encoding.
//! Every decoder tolerates garbage written by a foreign client: it returns an error or a
//! default, never panics.

use serde::{Deserialize, Serialize};

/// Prefix of a result that reports a failure (docs/protocol.md).
pub const FAILURE_PREFIX: &[u8] = b"\0FAILED\0 ";

pub fn failure_result(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(FAILURE_PREFIX.len() + message.len());
    out.extend_from_slice(FAILURE_PREFIX);
    out.extend_from_slice(message.as_bytes());
    out
}

/// What an empty result is stored as: empty data in `/tasks/<id>` means "no result yet", so an
/// empty result is the single byte NUL, which no other result is (docs/protocol.md).
pub const EMPTY_RESULT: &[u8] = b"\0";

/// The bytes that `/tasks/<id>` holds for a successful `result`.
pub fn stored_result(result: &[u8]) -> &[u8] {
    if result.is_empty() {
        EMPTY_RESULT
    } else {
        result
    }
}

/// The outcome a client reads from `/tasks/<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded(Vec<u8>),
    Failed(String),
}

impl TaskOutcome {
    pub fn from_result(data: Vec<u8>) -> Self {
        match data.strip_prefix(FAILURE_PREFIX) {
            Some(message) => TaskOutcome::Failed(String::from_utf8_lossy(message).into_owned()),
            None if data == EMPTY_RESULT => TaskOutcome::Succeeded(Vec::new()),
            None => TaskOutcome::Succeeded(data),
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, TaskOutcome::Failed(_))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    pub attempts: u32,
    #[serde(default)]
    pub last_error: String,
    /// Times a shutting-down worker handed the task back; these are not attempts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub given_back: u32,
    /// The registration that gave it back last, named as its inbox (`<wid>@<session>`): a
    /// worker that gives a task back and leaves at once may be seen gone before its give-back
    /// is read, and must not be taken for one that died.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub given_back_by: String,
    /// The last failure is one no retry can cure (the payload is missing): dead-letter now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub attempts: u32,
    pub error: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub id: String,
    pub since_ms: u64,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub contender: String,
}

/// What a contender writes into its election znode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContenderRecord {
    pub id: String,
}

/// Task settings the leader publishes so that clients and tools share them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSettings {
    pub max_attempts: u32,
    pub task_timeout_ms: u64,
    pub backlog_cap: u64,
    pub retention_ms: u64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self { max_attempts: 3, task_timeout_ms: 60_000, backlog_cap: 200_000, retention_ms: 600_000 }
    }
}

/// The leader's published counters (`/taskcluster/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub leader: String,
    pub epoch: u64,
    pub backlog: u64,
    pub running: u64,
    pub workers_busy: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub updated_ms: u64,
    /// The zxid of the newest result in `completed`: every result written at or before it is
    /// counted, so the next leader counts the results it finds above it. 0: unknown (a record
    /// from before this field, or a server that reports no zxid with its events).
    #[serde(default)]
    pub counted_through_zxid: i64,
}

/// Decodes a JSON record, naming the znode in the error.
pub fn decode<T: for<'de> Deserialize<'de>>(path: &str, data: &[u8]) -> Result<T, RecordError> {
    serde_json::from_slice(data).map_err(|e| RecordError { path: path.to_string(), reason: e.to_string() })
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail; an empty record is the safe fallback.
    serde_json::to_vec(record).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable record in {path}: {reason}")]
pub struct RecordError {
    pub path: String,
    pub reason: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_results_round_trip_and_plain_results_stay_successes() {
        let failed = TaskOutcome::from_result(failure_result("exit status 1: boom"));
        assert_eq!(failed, TaskOutcome::Failed("exit status 1: boom".into()));
        assert!(failed.is_failure());
        assert_eq!(TaskOutcome::from_result(b"42".to_vec()), TaskOutcome::Succeeded(b"42".to_vec()));
        assert_eq!(TaskOutcome::from_result(b"\0FAILED".to_vec()), TaskOutcome::Succeeded(b"\0FAILED".to_vec()));
    }

    #[test]
    fn an_empty_result_is_stored_as_data_and_read_back_empty() {
        let stored = stored_result(b"");
        assert!(!stored.is_empty(), "an empty result must not look pending");
        assert_eq!(TaskOutcome::from_result(stored.to_vec()), TaskOutcome::Succeeded(Vec::new()));
        assert_eq!(stored_result(b"x"), b"x");
        assert_eq!(TaskOutcome::from_result(b"\0\0".to_vec()), TaskOutcome::Succeeded(b"\0\0".to_vec()));
    }

    #[test]
    fn garbage_records_are_errors_not_panics() {
        let err = decode::<Attempts>("/taskcluster/attempts/x", b"\xff\xfe garbage").unwrap_err();
        assert!(err.to_string().contains("/taskcluster/attempts/x"));
        let ok: Attempts = decode("/a", br#"{"attempts":2}"#).unwrap();
        assert_eq!(ok, Attempts { attempts: 2, ..Attempts::default() });
        // Records written before `permanent` existed read as retryable; it is written only when set.
        assert!(!ok.permanent);
        assert!(!String::from_utf8_lossy(&encode(&ok)).contains("permanent"));
        let permanent = Attempts { attempts: 1, permanent: true, ..Attempts::default() };
        assert_eq!(decode::<Attempts>("/a", &encode(&permanent)).unwrap(), permanent);
    }
}
