//! What a worker does with a payload: a built-in handler or an external command.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::paths::MAX_PAYLOAD_BYTES;
use crate::records::{EMPTY_RESULT, FAILURE_PREFIX};

/// The built-in handlers (`--handler`; the variants' docs are its help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerKind {
    /// The seed practical's computation: the payload's words reversed, upper-cased.
    Seed,
    /// Echo the payload back.
    Echo,
    /// Sleep for the number of milliseconds the payload names, then echo it.
    Sleep,
    /// Fail every task whose payload starts with "fail" (for tests of retries).
    Fail,
}

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

/// Runs the command in a process group of its own, so that ending it (an abandoned task, a
/// shutdown, output over the limit) ends everything it started, not only its shell. Output is
/// read as it comes and never held beyond its limit: stdout up to the result limit (one byte
/// more fails the task), stderr up to the excerpt a failure carries (the rest is discarded).
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
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {command}`: {e}"))?;
    let group = ProcessGroup(child.id());
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let payload = input.payload.to_vec();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that ignores its input closes the pipe early; that is not an error.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
    };
    let result = async {
        let bytes = read_bounded(stdout, MAX_PAYLOAD_BYTES + 1, false).await;
        if bytes.len() > MAX_PAYLOAD_BYTES {
            // Over the limit: it is a failure whatever comes next, so end it now.
            group.kill();
        }
        bytes
    };
    let excerpt = read_bounded(stderr, STDERR_EXCERPT, true);
    let exited = async {
        let status = child.wait().await;
        // What it left running would keep the pipes open: it ends with the command.
        group.kill();
        status
    };
    let (status, stdout, stderr, ()) = tokio::join!(exited, result, excerpt, feed);
    let status = status.map_err(|e| format!("waiting for `{command}` failed: {e}"))?;
    if stdout.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("result exceeds the {MAX_PAYLOAD_BYTES}-byte limit"));
    }
    if status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&stderr);
        Err(format!("{status}: {}", truncate(stderr.trim(), STDERR_EXCERPT)))
    }
}

/// Reads `pipe` until it ends, keeping at most `limit` bytes: past the limit it either stops
/// reading (`drain` false) or reads on and discards, so the writer never blocks (`drain` true).
async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize, drain: bool) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                if kept.len() >= limit && !drain {
                    return kept;
                }
            },
        }
    }
}

/// The process group of a command (its shell's pid): SIGKILL to all of it, also on drop.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pgid) = self.0.and_then(|id| libc::pid_t::try_from(id).ok()) {
            // SAFETY: killpg only sends a signal; ESRCH (the group is gone) is fine.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
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

    /// `yes` never ends and never stops writing: the worker must stop reading at the limit,
    /// end the command and fail the task, not grow without bound.
    #[tokio::test]
    async fn a_command_flooding_its_output_is_stopped_at_the_limit() {
        let flood = Handler::Exec("yes".into());
        let outcome = tokio::time::timeout(Duration::from_secs(60), flood.execute(&input(b""))).await;
        let error = outcome.expect("`yes` was never stopped").unwrap_err();
        assert!(error.contains("exceeds"), "{error}");
    }

    /// Endless stderr from a child left behind: the result is what the command printed, the
    /// stderr beyond the excerpt is discarded as it comes, and the child ends with the command.
    #[tokio::test]
    async fn a_child_flooding_stderr_neither_blocks_nor_outlives_the_command() {
        let noisy = Handler::Exec("yes >&2 & sleep 1; echo done".into());
        let outcome = tokio::time::timeout(Duration::from_secs(60), noisy.execute(&input(b""))).await;
        assert_eq!(outcome.expect("the command was never reaped"), Ok(b"done\n".to_vec()));
    }

    /// A command abandoned with its task (revocation, shutdown) ends together with everything
    /// it started, not only its shell.
    #[tokio::test]
    async fn an_abandoned_command_ends_with_its_children() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("child.pid");
        let command = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let handler = Handler::Exec(command);
        let task = input(b"");
        let mut run = Box::pin(handler.execute(&task));
        let child: i32 = loop {
            tokio::select! {
                outcome = &mut run => panic!("the command ended early: {outcome:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {},
            }
            if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok()) {
                break pid;
            }
        };
        drop(run);
        // A killed process may linger as a zombie until its new parent reaps it: that is dead.
        let alive = |pid: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.is_empty() && !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while alive(child) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child), "the command's child {child} outlived its abandoned task");
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
