//! The exec journal: workers run `--exec "sh <script>"`, and the script appends
//! `start|end <task> <worker> <attempt> <ns>` lines (one write each) around a seed-handler
//! computation. From the journal the tests check that no task ran on two live workers at once.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

const SCRIPT: &str = r#"#!/bin/sh
# Exec handler for tests: journals start and end, sleeps $TC_DELAY seconds, and returns the
# seed result (the payload's words reversed and upper-cased, one space apart).
journal='@JOURNAL@'
echo "start $TASKCLUSTER_TASK_ID $TASKCLUSTER_WORKER_ID $TASKCLUSTER_ATTEMPT $(date +%s%N)" >> "$journal"
payload=$(cat)
sleep "${TC_DELAY:-0.05}"
result=$(printf '%s' "$payload" | awk '{ for (i = NF; i > 0; i--) { printf "%s", toupper($i); if (i > 1) printf " " } }')
echo "end $TASKCLUSTER_TASK_ID $TASKCLUSTER_WORKER_ID $TASKCLUSTER_ATTEMPT $(date +%s%N)" >> "$journal"
printf '%s' "$result"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Start,
    End,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub mark: Mark,
    pub task: String,
    pub worker: String,
    pub attempt: String,
    pub ns: u128,
}

/// One execution of a task on a worker: from its start to its end, or to the worker's death.
#[derive(Clone, Debug)]
pub struct Run {
    pub task: String,
    pub worker: String,
    pub attempt: String,
    pub start: u128,
    /// None: still running on a live worker.
    pub end: Option<u128>,
}

pub struct Journal {
    pub path: PathBuf,
    script: PathBuf,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        let path = dir.join("exec-journal.log");
        let script = dir.join("journal-exec.sh");
        fs::write(&path, "").expect("create the journal");
        fs::write(&script, SCRIPT.replace("@JOURNAL@", &path.display().to_string())).expect("write the exec script");
        Journal { path, script }
    }

    /// The `--exec` argument.
    pub fn exec_command(&self) -> String {
        format!("sh {}", self.script.display())
    }

    pub fn entries(&self) -> Vec<Entry> {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 5, "malformed journal line {line:?}");
                Entry {
                    mark: if f[0] == "start" { Mark::Start } else { Mark::End },
                    task: f[1].to_string(),
                    worker: f[2].to_string(),
                    attempt: f[3].to_string(),
                    ns: f[4].parse().unwrap_or_else(|_| panic!("bad timestamp in journal line {line:?}")),
                }
            })
            .collect()
    }

    pub fn starts(&self) -> Vec<Entry> {
        self.entries().into_iter().filter(|e| e.mark == Mark::Start).collect()
    }

    /// Runs, each ended by its end line or by its worker's death (`deaths`: worker id to the
    /// time the test killed it), whichever came first.
    pub fn runs(&self, deaths: &HashMap<String, u128>) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut open: HashMap<(String, String), usize> = HashMap::new();
        for e in self.entries() {
            let key = (e.task.clone(), e.worker.clone());
            match e.mark {
                Mark::Start => {
                    open.insert(key, runs.len());
                    runs.push(Run { task: e.task, worker: e.worker, attempt: e.attempt, start: e.ns, end: None });
                },
                Mark::End => {
                    if let Some(i) = open.remove(&key) {
                        runs[i].end = Some(e.ns);
                    }
                },
            }
        }
        for run in &mut runs {
            if let Some(&death) = deaths.get(&run.worker) {
                run.end = Some(run.end.map_or(death, |end| end.min(death)));
            }
        }
        runs
    }

    /// The invariant: no task runs on two live workers at once (nor twice at once on one).
    pub fn assert_no_concurrent_runs(&self, deaths: &HashMap<String, u128>) {
        let runs = self.runs(deaths);
        let mut by_task: HashMap<&str, Vec<&Run>> = HashMap::new();
        for run in &runs {
            by_task.entry(run.task.as_str()).or_default().push(run);
        }
        for (task, runs) in by_task {
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    let a_end = a.end.unwrap_or(u128::MAX);
                    let b_end = b.end.unwrap_or(u128::MAX);
                    assert!(
                        !(a.start < b_end && b.start < a_end),
                        "task {task} ran on two live workers at once: {a:?} and {b:?}"
                    );
                }
            }
        }
    }

    /// The run `worker` has started and not ended, if any.
    pub fn open_run(&self, worker: &str) -> Option<Run> {
        self.runs(&HashMap::new()).into_iter().rev().find(|r| r.worker == worker && r.end.is_none())
    }

    /// Workers that started at least one run.
    pub fn workers_used(&self) -> Vec<String> {
        let mut workers: Vec<String> = self.starts().into_iter().map(|e| e.worker).collect();
        workers.sort();
        workers.dedup();
        workers
    }
}
