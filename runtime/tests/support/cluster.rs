//! A test's own corner of ZooKeeper (a chroot) and the processes it runs there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::inspect::Inspector;
use super::metrics::{http_get, Metrics};
use super::poll::eventually;
use super::process::Proc;
use super::proxy::Proxy;
use super::zk_server::{free_port, shared_standalone, ZkCluster};
use super::{LONG, SESSION_TIMEOUT, SHORT};

/// Flags of `taskcluster master` that tests vary.
#[derive(Clone, Debug)]
pub struct MasterOpts {
    pub max_attempts: u32,
    pub task_timeout: String,
    pub retention: String,
    pub session_timeout: String,
    pub backlog_cap: Option<u64>,
}

impl Default for MasterOpts {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            task_timeout: "60s".into(),
            retention: "10m".into(),
            session_timeout: SESSION_TIMEOUT.into(),
            backlog_cap: None,
        }
    }
}

/// Flags and environment of `taskcluster worker`.
#[derive(Clone, Debug)]
pub struct WorkerOpts {
    pub handler: String,
    pub exec: Option<String>,
    pub grace_period: String,
    pub session_timeout: String,
    pub env: Vec<(String, String)>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        Self {
            handler: "seed".into(),
            exec: None,
            grace_period: "10s".into(),
            session_timeout: SESSION_TIMEOUT.into(),
            env: Vec::new(),
        }
    }
}

impl WorkerOpts {
    pub fn handler(handler: &str) -> Self {
        Self { handler: handler.into(), ..Self::default() }
    }

    /// Runs `exec` per task with `TC_DELAY` seconds of work (see the journal script).
    pub fn exec(exec: String, delay: &str) -> Self {
        Self { exec: Some(exec), env: vec![("TC_DELAY".into(), delay.into())], ..Self::default() }
    }
}

pub struct TestCluster {
    pub name: String,
    /// `host:port,...` without the chroot.
    pub hosts: String,
    /// This test's root, e.g. `/scenario_1_1_1-3f2a`.
    pub chroot: String,
    dir: Option<tempfile::TempDir>,
    counter: AtomicU32,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if super::zk_server::keep_files() {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept the files of test {} in {}", self.name, dir.keep().display());
            }
        }
    }
}

impl TestCluster {
    /// A fresh chroot on the test binary's shared standalone server.
    pub async fn new(name: &str) -> TestCluster {
        let hosts = tokio::task::spawn_blocking(|| shared_standalone().connect_string())
            .await
            .expect("start the shared ZooKeeper");
        Self::with_hosts(name, hosts).await
    }

    /// A fresh chroot on a server or ensemble of the test's own.
    pub async fn on(zk: &ZkCluster, name: &str) -> TestCluster {
        Self::with_hosts(name, zk.connect_string()).await
    }

    async fn with_hosts(name: &str, hosts: String) -> TestCluster {
        let dir = tempfile::Builder::new().prefix(&format!("taskcluster-{name}-")).tempdir().expect("temp dir");
        let suffix = dir.path().file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit('-').next()).unwrap_or("x");
        let chroot = format!("/{name}-{suffix}");
        let root = Inspector::connect(&hosts, LONG).await;
        root.put(&chroot, b"", false).await;
        TestCluster { name: name.to_string(), hosts, chroot, dir: Some(dir), counter: AtomicU32::new(0) }
    }

    /// The `--zk` argument: servers plus this test's chroot.
    pub fn zk(&self) -> String {
        format!("{}{}", self.hosts, self.chroot)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("the test directory exists until drop")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn unique(&self, name: &str) -> String {
        format!("{name}.{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `taskcluster <args>` as given (nothing added).
    pub fn run(&self, name: &str, args: &[&str]) -> Proc {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Proc::spawn(self.dir(), &self.unique(name), &args, None, None, &[])
    }

    /// Runs `taskcluster <args>` with `stdin` as standard input.
    pub fn run_with_stdin(&self, name: &str, args: &[&str], stdin: &[u8]) -> Proc {
        let name = self.unique(name);
        let input = self.file(&format!("{name}.in"));
        std::fs::write(&input, stdin).expect("write stdin file");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Proc::spawn(self.dir(), &name, &args, Some(&input), None, &[])
    }

    pub fn master(&self, id: &str) -> Proc {
        self.master_with(id, &MasterOpts::default())
    }

    pub fn master_with(&self, id: &str, opts: &MasterOpts) -> Proc {
        self.master_at(&self.zk(), id, opts)
    }

    /// A master given `zk` as its `--zk` (e.g. [`TestCluster::zk_via`] a proxy).
    pub fn master_at(&self, zk: &str, id: &str, opts: &MasterOpts) -> Proc {
        let mut flags = vec![
            "--max-attempts".to_string(),
            opts.max_attempts.to_string(),
            "--task-timeout".into(),
            opts.task_timeout.clone(),
            "--retention".into(),
            opts.retention.clone(),
        ];
        if let Some(cap) = opts.backlog_cap {
            flags.extend(["--backlog-cap".into(), cap.to_string()]);
        }
        self.serve_at(zk, "master", id, &opts.session_timeout, flags, &[])
    }

    pub fn worker(&self, id: &str, handler: &str) -> Proc {
        self.worker_with(id, &WorkerOpts::handler(handler))
    }

    pub fn worker_with(&self, id: &str, opts: &WorkerOpts) -> Proc {
        self.worker_at(&self.zk(), id, opts)
    }

    /// A worker given `zk` as its `--zk` (e.g. [`TestCluster::zk_via`] a proxy).
    pub fn worker_at(&self, zk: &str, id: &str, opts: &WorkerOpts) -> Proc {
        let mut flags =
            vec!["--handler".to_string(), opts.handler.clone(), "--grace-period".into(), opts.grace_period.clone()];
        if let Some(exec) = &opts.exec {
            flags.extend(["--exec".into(), exec.clone()]);
        }
        self.serve_at(zk, "worker", id, &opts.session_timeout, flags, &opts.env)
    }

    /// The `--zk` argument for a process that reaches the server through `proxy`: the proxy's
    /// address plus this test's chroot.
    pub fn zk_via(&self, proxy: &Proxy) -> String {
        format!("{}{}", proxy.addr(), self.chroot)
    }

    /// `taskcluster <role> --zk <zk>` with a metrics port of its own, then `flags`.
    fn serve_at(
        &self,
        zk: &str,
        role: &str,
        id: &str,
        session_timeout: &str,
        flags: Vec<String>,
        env: &[(String, String)],
    ) -> Proc {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            role.to_string(),
            "--zk".into(),
            zk.to_string(),
            "--id".into(),
            id.into(),
            "--listen".into(),
            listen.clone(),
            "--session-timeout".into(),
            session_timeout.into(),
        ];
        args.extend(flags);
        Proc::spawn(self.dir(), &self.unique(&format!("{role}-{id}")), &args, None, Some(listen), env)
    }

    /// `taskcluster submit --zk <this chroot> <args>`.
    pub fn submit(&self, name: &str, args: &[&str]) -> Proc {
        let zk = self.zk();
        let mut all = vec!["submit", "--zk", zk.as_str(), "--session-timeout", SESSION_TIMEOUT];
        all.extend_from_slice(args);
        self.run(name, &all)
    }

    /// `submit --wait` with payloads as arguments.
    pub fn submit_wait(&self, name: &str, payloads: &[String]) -> Proc {
        let mut args = vec!["--wait"];
        args.extend(payloads.iter().map(String::as_str));
        self.submit(name, &args)
    }

    /// `submit --file -` with `stdin` as the payload lines.
    pub fn submit_stdin(&self, name: &str, args: &[&str], stdin: &[u8]) -> Proc {
        let zk = self.zk();
        let mut all = vec!["submit", "--zk", zk.as_str(), "--session-timeout", SESSION_TIMEOUT, "--file", "-"];
        all.extend_from_slice(args);
        self.run_with_stdin(name, &all, stdin)
    }

    /// An inspector session rooted at this test's chroot.
    pub async fn inspector(&self) -> Inspector {
        Inspector::connect(&self.zk(), LONG).await
    }

    /// `status --json`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let zk = self.zk();
        let mut proc = self.run("status", &["status", "--zk", &zk, "--session-timeout", SESSION_TIMEOUT, "--json"]);
        let code = proc.exit_code(SHORT).await;
        assert_eq!(code, 0, "status --json failed\n{}", proc.describe());
        proc.assert_no_panic();
        serde_json::from_str(proc.stdout().trim())
            .unwrap_or_else(|e| panic!("status --json printed no JSON object ({e})\n{}", proc.describe()))
    }
}

/// Waits until `GET <path>` on the process's listen address answers 200.
pub async fn wait_http_ok(proc: &mut Proc, path: &str, timeout: Duration) {
    let addr = proc.listen.clone().expect("process has a --listen address");
    let what = format!("{} to answer 200 on {path}", proc.name);
    eventually(&what, timeout, || {
        assert!(proc.is_running(), "{} exited while waiting for {path}\n{}", proc.name, proc.describe());
        matches!(http_get(&addr, path), Some((200, _))).then_some(())
    })
    .await;
}

/// Waits until a worker is registered (`/readyz` is 200).
pub async fn wait_ready(proc: &mut Proc) {
    wait_http_ok(proc, "/readyz", LONG).await;
}

/// A metrics scrape that must succeed.
pub fn scrape(proc: &Proc) -> Metrics {
    let addr = proc.listen.as_deref().expect("process has a --listen address");
    Metrics::scrape(addr)
        .unwrap_or_else(|| panic!("{} does not serve /metrics on {addr}\n{}", proc.name, proc.describe()))
}

/// Whether this master says it leads (None when it does not answer, e.g. while stopped).
pub fn is_leader(proc: &Proc) -> Option<bool> {
    let addr = proc.listen.as_deref()?;
    Metrics::scrape(addr)?.get("taskcluster_master_is_leader").map(|v| v == 1.0)
}

/// Waits until exactly one of `masters` says it leads and returns its index.
pub async fn wait_single_leader(masters: &[&Proc], timeout: Duration) -> usize {
    eventually("exactly one master to lead", timeout, || {
        let leading: Vec<usize> = (0..masters.len()).filter(|&i| is_leader(masters[i]) == Some(true)).collect();
        (leading.len() == 1).then(|| leading[0])
    })
    .await
}

/// After every client has exited: no task and no payload is left in the tree.
pub async fn assert_tree_drained(tc: &TestCluster) {
    let zk = tc.inspector().await;
    zk.sync("/tasks").await;
    let tasks = zk.children("/tasks").await;
    let data = zk.children("/data").await;
    assert!(tasks.is_empty() && data.is_empty(), "clients left tasks {tasks:?} and payloads {data:?} behind");
    // What belongs to collected tasks under /taskcluster is the leader's to delete, shortly
    // after the collection: attempts records, dead letters, inbox entries.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let attempts = zk.children("/taskcluster/attempts").await;
        let letters = zk.children("/taskcluster/deadletter").await;
        let mut entries = Vec::new();
        for inbox in zk.children("/taskcluster/inbox").await {
            entries.extend(zk.children(&format!("/taskcluster/inbox/{inbox}")).await);
        }
        if attempts.is_empty() && letters.is_empty() && entries.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "collected tasks left attempts records {attempts:?}, dead letters {letters:?}, inbox entries {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every task in the tree has a result (nothing pending forever), as seen by ZooKeeper.
pub async fn all_tasks_have_results(zk: &Inspector) -> bool {
    for id in zk.children("/tasks").await {
        match zk.stat(&format!("/tasks/{id}")).await {
            Some(stat) if stat.data_length > 0 => {},
            Some(_) => return false,
            None => {},
        }
    }
    true
}
