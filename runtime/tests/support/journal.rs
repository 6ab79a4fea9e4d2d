//! The exec journal: workers run `--exec "sh <script>"`, and the script appends
//! `start|end <task> <worker> <attempt> <ns>` lines (one write each) around a seed-handler
//! computation. From the journal the tests check that no task ran on two live workers at once.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::chaos::logged_tasks;
use super::process::Proc;

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

/// (worker, task) to the moments the worker logged that it abandoned a run of the task.
pub type Abandoned = HashMap<(String, String), Vec<u128>>;

/// The runs `workers` abandoned (cut off from ZooKeeper past the limit, or withdrawn), from
/// their logs: such a run is killed with its command, so the journal has no end line for it.
pub fn abandonments(workers: &[&Proc]) -> Abandoned {
    let mut abandoned = Abandoned::new();
    for worker in workers {
        for (task, at) in logged_tasks(&worker.stderr(), "assignment withdrawn while running; abandoned") {
            abandoned.entry((worker.name.clone(), task)).or_default().push(at);
        }
    }
    abandoned
}

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
        self.runs_stopped(deaths, &HashMap::new())
    }

    /// As [`Journal::runs`], and a run its worker abandoned (`abandoned`, see [`abandonments`])
    /// ends when the worker says so: its command is killed and writes no end line.
    pub fn runs_stopped(&self, deaths: &HashMap<String, u128>, abandoned: &Abandoned) -> Vec<Run> {
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
            let key = (run.worker.clone(), run.task.clone());
            let stopped = abandoned.get(&key).and_then(|times| times.iter().copied().filter(|t| *t >= run.start).min());
            if let (None, Some(stopped)) = (run.end, stopped) {
                run.end = Some(stopped);
            }
        }
        runs
    }

    /// The invariant: no task runs on two live workers at once (nor twice at once on one).
    pub fn assert_no_concurrent_runs(&self, deaths: &HashMap<String, u128>) {
        self.assert_no_concurrent_runs_stopped(deaths, &HashMap::new());
    }

    /// The invariant, counting the runs the workers abandoned as ended when they said so.
    pub fn assert_no_concurrent_runs_stopped(&self, deaths: &HashMap<String, u128>, abandoned: &Abandoned) {
        let runs = self.runs_stopped(deaths, abandoned);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The false alarm the ensemble test raised in CI: w2's run was killed when w2, cut off with
    /// the quorum, abandoned it; w1 ran the task again later. Without the abandonment the open
    /// run looks as if it still ran.
    #[test]
    fn a_run_its_worker_abandoned_ends_when_the_worker_said_so() {
        let dir = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a scratch directory");
        let journal = Journal::new(&dir);
        fs::write(&journal.path, "start t1 w2 1 100\nstart t1 w1 1 500\nend t1 w1 1 600\n").expect("write");
        let abandoned = Abandoned::from([(("w2".to_string(), "t1".to_string()), vec![150])]);
        journal.assert_no_concurrent_runs_stopped(&HashMap::new(), &abandoned);
        let unaccounted = std::panic::catch_unwind(|| journal.assert_no_concurrent_runs(&HashMap::new()));
        assert!(unaccounted.is_err(), "without the abandonment the runs overlap");
        // An abandonment logged before the run started is another run's.
        let earlier = Abandoned::from([(("w2".to_string(), "t1".to_string()), vec![50])]);
        let stale = std::panic::catch_unwind(|| journal.assert_no_concurrent_runs_stopped(&HashMap::new(), &earlier));
        assert!(stale.is_err(), "an earlier abandonment does not end this run");
        let _ = fs::remove_dir_all(&dir);
    }
}
