//! Observers for the chaos soak (`tests/soak.rs`), where workers are killed, stopped and
//! restarted under their own names and revoked runs are abandoned:
//!
//! - [`RunJournal`], an exec journal like [`super::journal`] that also sees the runs that never
//!   finish. Each line names the worker process's incarnation (a restarted worker keeps its
//!   `--id`) and the run's own pid, and a run whose process group is killed (the worker
//!   abandoned a revoked task, or ended it at shutdown) gets an `abandon` line at that moment,
//!   written by a watcher that lives in a session of its own and sees its pipe close.
//!   A run's end is also bounded by what its worker logged: a worker that abandons a task logs
//!   it just before it kills the command, so the watcher's line (written once the killed
//!   processes are gone and the watcher is scheduled) can only be later.
//! - [`ResultWrites`], a persistent watch on `/tasks` that counts the writes of each task's
//!   data: a result is written once, so a second change of the same task is a violation.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zookeeper_client::{AddWatchMode, EventType, SessionState};

use super::inspect::Inspector;

/// Needs bash (coproc, `$EPOCHREALTIME`: a timestamp without a fork). The watcher's pipe has
/// this run as its only writer; end of file without "done" means the run was killed.
const SCRIPT: &str = r#"#!/bin/bash
# Exec handler of the chaos soak: journals the run's start and end, sleeps $TC_DELAY seconds and
# returns the seed result (the payload's words reversed and upper-cased, one space apart). A
# watcher in a session of its own journals the moment the run is killed instead of finishing.
journal='@JOURNAL@'
run="$TASKCLUSTER_TASK_ID $TASKCLUSTER_WORKER_ID ${SOAK_INCARNATION:-none} $TASKCLUSTER_ATTEMPT $$"
stamp() { local t=$EPOCHREALTIME; ns="${t%.*}${t#*.}000"; }
coproc WATCH { exec setsid bash -c 'read -r word; t=$EPOCHREALTIME; [ "$word" = done ] || echo "abandon $1 ${t%.*}${t#*.}000" >> "$0"' "$journal" "$run" > /dev/null 2>&1; }
stamp; echo "start $run $ns" >> "$journal"
payload=$(cat)
sleep "${TC_DELAY:-0.05}"
result=$(printf '%s' "$payload" | awk '{ for (i = NF; i > 0; i--) { printf "%s", toupper($i); if (i > 1) printf " " } }')
stamp; echo "end $run $ns" >> "$journal"
echo done >&"${WATCH[1]}"
printf '%s' "$result"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Start,
    End,
    Abandon,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub mark: Mark,
    pub task: String,
    pub worker: String,
    pub incarnation: String,
    pub attempt: String,
    pub pid: u32,
    pub ns: u128,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The command finished (its result may still have been dropped).
    Finished,
    /// Its process group was killed: the worker abandoned it.
    Abandoned,
    /// The worker process that ran it was SIGKILLed first; its orphaned command is not a live
    /// worker's run any more.
    WorkerKilled,
    /// No end at all.
    Open,
}

/// One execution of a task by one worker incarnation.
#[derive(Clone, Debug)]
pub struct Run {
    pub task: String,
    pub worker: String,
    pub incarnation: String,
    pub attempt: String,
    pub pid: u32,
    pub start: u128,
    /// None: still running.
    pub end: Option<u128>,
    pub how: RunEnd,
}

impl Run {
    fn overlaps(&self, other: &Run) -> bool {
        let end = |r: &Run| r.end.unwrap_or(u128::MAX);
        self.start < end(other) && other.start < end(self)
    }
}

pub struct RunJournal {
    pub path: PathBuf,
    script: PathBuf,
}

impl RunJournal {
    pub fn new(dir: &Path) -> RunJournal {
        let path = dir.join("run-journal.log");
        let script = dir.join("run-journal-exec.sh");
        fs::write(&path, "").expect("create the run journal");
        fs::write(&script, SCRIPT.replace("@JOURNAL@", &path.display().to_string())).expect("write the exec script");
        RunJournal { path, script }
    }

    /// The `--exec` argument; the worker's environment names its incarnation in
    /// `SOAK_INCARNATION`.
    pub fn exec_command(&self) -> String {
        format!("bash {}", self.script.display())
    }

    pub fn entries(&self) -> Vec<Entry> {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 7, "malformed run journal line {line:?}");
                let mark = match f[0] {
                    "start" => Mark::Start,
                    "end" => Mark::End,
                    "abandon" => Mark::Abandon,
                    other => panic!("unknown mark {other:?} in run journal line {line:?}"),
                };
                Entry {
                    mark,
                    task: f[1].to_string(),
                    worker: f[2].to_string(),
                    incarnation: f[3].to_string(),
                    attempt: f[4].to_string(),
                    pid: f[5].parse().unwrap_or_else(|_| panic!("bad pid in run journal line {line:?}")),
                    ns: f[6].parse().unwrap_or_else(|_| panic!("bad timestamp in run journal line {line:?}")),
                }
            })
            .collect()
    }

    /// Every run, ended by its first end or abandon line, by its worker's logged abandonment of
    /// its task, or by the SIGKILL of its worker incarnation, whichever came first.
    pub fn runs(&self, stops: &Stops) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut open: HashMap<(String, String, u32), usize> = HashMap::new();
        for e in self.entries() {
            let key = (e.task.clone(), e.incarnation.clone(), e.pid);
            match e.mark {
                Mark::Start => {
                    open.insert(key, runs.len());
                    runs.push(Run {
                        task: e.task,
                        worker: e.worker,
                        incarnation: e.incarnation,
                        attempt: e.attempt,
                        pid: e.pid,
                        start: e.ns,
                        end: None,
                        how: RunEnd::Open,
                    });
                },
                Mark::End | Mark::Abandon => {
                    if let Some(i) = open.remove(&key) {
                        runs[i].end = Some(e.ns);
                        runs[i].how = if e.mark == Mark::End { RunEnd::Finished } else { RunEnd::Abandoned };
                    }
                },
            }
        }
        for run in &mut runs {
            let key = (run.incarnation.clone(), run.task.clone());
            let logged =
                stops.abandoned.get(&key).and_then(|times| times.iter().copied().filter(|t| *t >= run.start).min());
            if let Some(at) = logged {
                if run.end.is_none_or(|end| at < end) {
                    run.end = Some(at);
                    run.how = RunEnd::Abandoned;
                }
            }
            if let Some(&death) = stops.killed.get(&run.incarnation) {
                if run.end.is_none_or(|end| death < end) {
                    run.end = Some(death);
                    run.how = RunEnd::WorkerKilled;
                }
            }
        }
        runs
    }

    /// Pairs of runs of one task that overlapped in time on live workers, the earlier start
    /// first.
    pub fn concurrent_runs(&self, stops: &Stops) -> Vec<(Run, Run)> {
        let mut by_task: HashMap<String, Vec<Run>> = HashMap::new();
        for run in self.runs(stops) {
            by_task.entry(run.task.clone()).or_default().push(run);
        }
        let mut pairs = Vec::new();
        for runs in by_task.values() {
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    if a.overlaps(b) {
                        let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
                        pairs.push((first.clone(), second.clone()));
                    }
                }
            }
        }
        pairs.sort_by_key(|(a, _)| a.start);
        pairs
    }
}

/// What ended runs outside the journal.
#[derive(Debug, Default)]
pub struct Stops {
    /// Worker incarnation to the moment the test SIGKILLed it (its orphaned commands run on,
    /// but no longer for a live worker).
    pub killed: HashMap<String, u128>,
    /// (worker incarnation, task) to the moments the worker logged that it abandoned the task.
    pub abandoned: HashMap<(String, String), Vec<u128>>,
}

/// Removes the colour codes of our text log format.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Nanoseconds since the Unix epoch of a log line's leading UTC timestamp, as our text log
/// format writes it (`2026-01-31T23:59:59.123456Z`); None for a line without one.
pub fn log_line_ns(line: &str) -> Option<u128> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|n| n.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = clock.split(':').map(|n| n.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u128 = digits.parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(u128::try_from(seconds).ok()? * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (task, time) of every line of `log` that contains `message`, the task from its `task=`
/// field.
pub fn logged_tasks(log: &str, message: &str) -> Vec<(String, u128)> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let line = strip_ansi(l);
            let task = line.split_whitespace().find_map(|f| f.strip_prefix("task="))?.to_string();
            Some((task, log_line_ns(&line)?))
        })
        .collect()
}

/// Counts, per task id, the changes of `/tasks/<id>`'s data seen through a persistent recursive
/// watch, re-added after every reconnection (changes made while disconnected go unseen, so
/// the count can only be too low, never too high).
pub struct ResultWrites {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResultWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResultWrites {
    /// Watches `/tasks` under `connect` (servers and chroot).
    pub async fn start(connect: &str) -> ResultWrites {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        // Ends with the test: the task is aborted on drop.
        let zk = Inspector::connect(connect, super::LONG).await;
        let task = tokio::spawn(watch_tasks(connect.to_string(), zk, counts.clone()));
        ResultWrites { counts, task }
    }

    /// Task id to the number of data changes seen.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn watch_tasks(connect: String, mut zk: Inspector, counts: Arc<Mutex<HashMap<String, u32>>>) {
    loop {
        let mut watcher = match zk.client.watch("/tasks", AddWatchMode::PersistentRecursive).await {
            Ok(watcher) => watcher,
            Err(_) => {
                // No quorum, or the session is gone: try again shortly, on a new session if need be.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if zk.client.state().is_terminated() {
                    zk = Inspector::connect(&connect, super::LONG).await;
                }
                continue;
            },
        };
        loop {
            let event = watcher.changed().await;
            match event.event_type {
                EventType::NodeDataChanged => {
                    if let Some(id) = event.path.strip_prefix("/tasks/") {
                        *counts.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_string()).or_default() += 1;
                    }
                },
                EventType::Session if event.session_state == SessionState::SyncConnected => break,
                EventType::Session if event.session_state.is_terminated() => {
                    zk = Inspector::connect(&connect, super::LONG).await;
                    break;
                },
                _ => {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_log_lines() {
        let line = "\x1b[2m2026-12-01T22:29:13.073139Z\x1b[0m \x1b[33m WARN\x1b[0m taskcluster::worker: assignment withdrawn while running; abandoned \x1b[3mtask\x1b[0m\x1b[2m=\x1b[0mt1-15 why=\"x\"";
        assert_eq!(log_line_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(log_line_ns("2000-03-01T00:00:00Z"), Some(951_868_800_000_000_000));
        let found = logged_tasks(line, "abandoned");
        assert_eq!(found, vec![("t1-15".to_string(), log_line_ns("2026-12-01T22:29:13.073139Z").unwrap())]);
    }
}
