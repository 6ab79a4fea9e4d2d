//! `taskcluster submit`: payloads from arguments, a file of lines, stdin, or generated load.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Failure, EXIT_TASK_FAILED};
use crate::cli::SubmitArgs;
use crate::client::{SubmitError, Submitter};
use crate::paths::MAX_PAYLOAD_BYTES;
use crate::records::TaskOutcome;

/// Where the payloads come from; generated ones are made on the fly.
enum Payloads {
    Given(Vec<Vec<u8>>),
    Generated(u64),
}

impl Payloads {
    fn len(&self) -> u64 {
        match self {
            Payloads::Given(p) => p.len() as u64,
            Payloads::Generated(n) => *n,
        }
    }

    fn get(&self, i: u64) -> Vec<u8> {
        match self {
            Payloads::Given(p) => p[i as usize].clone(),
            Payloads::Generated(_) => format!("task-{i}").into_bytes(),
        }
    }
}

fn read_lines(reader: impl BufRead, source: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let mut out = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let mut line = line.map_err(|e| Failure::usage(format!("cannot read {source}: {e}")))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_PAYLOAD_BYTES {
            return Err(Failure::usage(format!(
                "{source} line {}: payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit; nothing was submitted",
                n + 1,
                line.len()
            )));
        }
        out.push(line);
    }
    Ok(out)
}

fn collect_payloads(args: &SubmitArgs) -> Result<Payloads, Failure> {
    let sources = [!args.payloads.is_empty(), args.file.is_some(), args.count.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(Failure::usage("give payloads as arguments, --file or --count, not several"));
    }
    if let Some(n) = args.count {
        return Ok(Payloads::Generated(n));
    }
    let payloads = if let Some(path) = &args.file {
        if path.as_os_str() == "-" {
            read_lines(std::io::stdin().lock(), "stdin")?
        } else {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::usage(format!("cannot open {}: {e}", path.display())))?;
            read_lines(std::io::BufReader::new(file), &path.display().to_string())?
        }
    } else if !args.payloads.is_empty() {
        let payloads: Vec<Vec<u8>> = args.payloads.iter().map(|p| p.clone().into_bytes()).collect();
        if let Some(p) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD_BYTES) {
            return Err(Failure::usage(format!(
                "payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit; nothing was submitted",
                p.len()
            )));
        }
        payloads
    } else if !std::io::stdin().is_terminal() {
        read_lines(std::io::stdin().lock(), "stdin")?
    } else {
        return Err(Failure::usage(
            "no payloads: give them as arguments, with --file FILE (- for stdin), or --count N",
        ));
    };
    Ok(Payloads::Given(payloads))
}

/// Result text on one line: backslash, tab and newline escaped.
pub fn escape(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

enum Line {
    Submitted(String),
    Finished(String, TaskOutcome),
}

pub async fn run(args: SubmitArgs) -> Result<(), Failure> {
    let payloads = collect_payloads(&args)?;
    let total = payloads.len();
    if total == 0 {
        return Err(Failure::usage("no payloads to submit (the input was empty)"));
    }
    let target = args.zk.target();
    target.validate()?;
    let submitter = Arc::new(match Submitter::connect(&target).await {
        Ok(s) => s,
        Err(SubmitError::Connect(e)) => return Err(e.into()),
        Err(e) => return Err(Failure::zookeeper(e)),
    });
    let progress = if args.count.is_some() && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} tasks {per_sec} eta {eta}") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let wait = args.wait;
    let timeout = args.timeout;
    let mut next = 0u64;
    let mut inflight = FuturesUnordered::new();
    let (mut succeeded, mut failed) = (0u64, 0u64);
    let mut first_error: Option<SubmitError> = None;
    let stdout = std::io::stdout();
    loop {
        while first_error.is_none() && next < total && inflight.len() < args.inflight as usize {
            let payload = payloads.get(next);
            next += 1;
            let submitter = submitter.clone();
            inflight.push(async move { one(&submitter, &payload, wait, timeout).await });
        }
        let Some(done) = inflight.next().await else { break };
        progress.inc(1);
        let mut out = stdout.lock();
        let written = match done {
            Ok(Line::Submitted(id)) => writeln!(out, "{id}"),
            Ok(Line::Finished(id, TaskOutcome::Succeeded(result))) => {
                succeeded += 1;
                writeln!(out, "{id}\tok\t{}", escape(&result))
            },
            Ok(Line::Finished(id, TaskOutcome::Failed(message))) => {
                failed += 1;
                writeln!(out, "{id}\tfailed\t{}", escape(message.as_bytes()))
            },
            Err(error) => {
                if first_error.is_none() {
                    first_error = Some(error);
                }
                Ok(())
            },
        };
        if written.is_err() {
            return Err(Failure::usage("cannot write to stdout"));
        }
    }
    progress.finish_and_clear();
    if let Some(error) = first_error {
        let code = match error {
            SubmitError::PayloadTooLarge { .. } => super::EXIT_USAGE,
            SubmitError::BacklogFull { .. } | SubmitError::Vanished { .. } => EXIT_TASK_FAILED,
            _ => super::EXIT_ZOOKEEPER,
        };
        let hint = match &error {
            SubmitError::Zk { source: zookeeper_client::Error::NoAuth, .. } => {
                "; this task tree is protected: give its credentials with --zk-digest USER:PASSWORD"
            },
            _ => "",
        };
        return Err(Failure { code, message: format!("{error}{hint} ({next} of {total} tasks started)") });
    }
    if wait {
        eprintln!("{total} submitted, {succeeded} succeeded, {failed} failed");
        if failed > 0 {
            return Err(Failure { code: EXIT_TASK_FAILED, message: format!("{failed} of {total} tasks failed") });
        }
    }
    Ok(())
}

async fn one(submitter: &Submitter, payload: &[u8], wait: bool, timeout: Duration) -> Result<Line, SubmitError> {
    let id = submitter.submit(payload).await?;
    if !wait {
        return Ok(Line::Submitted(id));
    }
    let outcome = match tokio::time::timeout(timeout, submitter.wait(&id)).await {
        // This task is lost to us, not the run: report it and go on with the others.
        Ok(Err(error @ SubmitError::Vanished { .. })) => {
            return Ok(Line::Finished(id, TaskOutcome::Failed(error.to_string())))
        },
        Ok(outcome) => outcome?,
        // Leave the task in place: a worker may still finish it, retention cleans it.
        Err(_) => return Ok(Line::Finished(id, TaskOutcome::Failed(format!("no result within {timeout:?}")))),
    };
    submitter.collect(&id).await?;
    Ok(Line::Finished(id, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_stay_on_one_line() {
        assert_eq!(escape(b"a\tb\nc\\d"), "a\\tb\\nc\\\\d");
        assert_eq!(escape(b"\xff"), "\u{fffd}");
    }

    #[test]
    fn lines_are_split_and_oversized_lines_refused() {
        let lines = read_lines(&b"one\r\ntwo\n\nthree"[..], "test").unwrap();
        assert_eq!(lines, vec![b"one".to_vec(), b"two".to_vec(), b"".to_vec(), b"three".to_vec()]);
        let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        let err = read_lines(&big[..], "big").unwrap_err();
        assert_eq!(err.code, crate::commands::EXIT_USAGE);
        assert!(err.message.contains("nothing was submitted"));
    }
}
