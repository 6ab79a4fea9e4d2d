//! What a worker does with a payload: a built-in handler or an external command.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::cli::HandlerKind;
use crate::paths::MAX_PAYLOAD_BYTES;
use crate::records::{EMPTY_RESULT, FAILURE_PREFIX};

#[derive(Clone, Debug)]
pub enum Handler {
    Builtin(HandlerKind),
    /// `sh -c CMD`: payload on stdin, stdout is the result, non-zero exit is a failure.
    Exec(String),
}

/// One execution's inputs.
#[derive(Clone, Debug)]
pub struct TaskInput<'a> {
    pub task: &'a str,
    pub worker: &'a str,
    pub attempt: u32,
    pub payload: &'a [u8],
}

/// Largest stderr excerpt carried in a failure message.
const STDERR_EXCERPT: usize = 2_000;

impl Handler {
    pub fn needs_attempt_number(&self) -> bool {
        matches!(self, Handler::Exec(_))
    }

    /// Runs the task. Cancel-safe: dropping the future kills an external command.
    pub async fn execute(&self, input: &TaskInput<'_>) -> Result<Vec<u8>, String> {
        let result = match self {
            Handler::Builtin(kind) => builtin(*kind, input.payload).await,
            Handler::Exec(command) => exec(command, input).await,
        }?;
        if result.len() > MAX_PAYLOAD_BYTES {
            return Err(format!("result of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit", result.len()));
        }
        if result.starts_with(FAILURE_PREFIX) {
            return Err("result starts with the failure marker and cannot be stored as a success".into());
        }
        if result == EMPTY_RESULT {
            return Err("result is the single byte NUL, which stands for the empty result".into());
        }
        Ok(result)
    }
}

/// The seed computation: words in reverse order, upper-cased, joined by one space.
pub fn seed(payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let words: Vec<String> = text.split_whitespace().rev().map(str::to_uppercase).collect();
    words.join(" ").into_bytes()
}

async fn builtin(kind: HandlerKind, payload: &[u8]) -> Result<Vec<u8>, String> {
    match kind {
        HandlerKind::Seed => Ok(seed(payload)),
        HandlerKind::Echo => Ok(payload.to_vec()),
        HandlerKind::Sleep => {
            let text = String::from_utf8_lossy(payload);
            let millis: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("sleep handler needs a number of milliseconds, got {:?}", truncate(&text, 80)))?;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(payload.to_vec())
        },
        HandlerKind::Fail => {
            if payload.starts_with(b"fail") {
                Err("payload asked to fail".into())
            } else {
                Ok(payload.to_vec())
            }
        },
    }
}

async fn exec(command: &str, input: &TaskInput<'_>) -> Result<Vec<u8>, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("TASKCLUSTER_TASK_ID", input.task)
        .env("TASKCLUSTER_WORKER_ID", input.worker)
        .env("TASKCLUSTER_ATTEMPT", input.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {command}`: {e}"))?;
    let mut stdin = child.stdin.take();
    let payload = input.payload.to_vec();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that ignores its input closes the pipe early; that is not an error.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let (_, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.map_err(|e| format!("waiting for `{command}` failed: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{}: {}", output.status, truncate(stderr.trim(), STDERR_EXCERPT)))
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &[u8]) -> TaskInput<'_> {
        TaskInput { task: "t1", worker: "w1", attempt: 2, payload }
    }

    #[test]
    fn seed_reverses_words_and_upper_cases() {
        assert_eq!(seed(b"hello  big\tworld"), b"WORLD BIG HELLO".to_vec());
        assert_eq!(seed(b""), b"".to_vec());
    }

    #[tokio::test]
    async fn exec_passes_payload_and_environment() {
        let handler = Handler::Exec("printf '%s:%s:' \"$TASKCLUSTER_TASK_ID\" \"$TASKCLUSTER_ATTEMPT\"; cat".into());
        assert_eq!(handler.execute(&input(b"abc")).await, Ok(b"t1:2:abc".to_vec()));
    }

    #[tokio::test]
    async fn exec_failure_carries_stderr() {
        let handler = Handler::Exec("echo boom >&2; exit 3".into());
        let err = handler.execute(&input(b"")).await.unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("boom"), "{err}");
    }

    #[tokio::test]
    async fn oversized_and_marker_results_are_failures() {
        let big = Handler::Exec("head -c 1000001 /dev/zero | tr '\\0' x".into());
        assert!(big.execute(&input(b"")).await.unwrap_err().contains("exceeds"));
        let marker = Handler::Exec("printf '\\000FAILED\\000 x'".into());
        assert!(marker.execute(&input(b"")).await.unwrap_err().contains("failure marker"));
    }

    #[tokio::test]
    async fn builtins_behave_as_documented() {
        let fail = Handler::Builtin(HandlerKind::Fail);
        assert_eq!(fail.execute(&input(b"fail me")).await, Err("payload asked to fail".into()));
        assert_eq!(fail.execute(&input(b"ok")).await, Ok(b"ok".to_vec()));
        let sleep = Handler::Builtin(HandlerKind::Sleep);
        assert!(sleep.execute(&input(b"soon")).await.unwrap_err().contains("milliseconds"));
        assert_eq!(sleep.execute(&input(b"1")).await, Ok(b"1".to_vec()));
    }
}
