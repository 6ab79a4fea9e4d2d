//! Our `taskcluster` binary as a child process: output captured to files, signals, and a
//! drop that kills it (and whatever it spawned) so no test leaves processes behind.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::poll::eventually;
use super::zk_server::tail;

pub const BINARY: &str = env!("CARGO_BIN_EXE_taskcluster");

/// Asks the kernel to SIGKILL the child when the thread that spawned it ends: the safety net
/// for a test binary that is itself killed.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Spawns `command` from one thread that lives as long as the test binary. The parent-death
/// signal fires when the *thread* that forked the child ends, so children forked from
/// short-lived threads (tokio's blocking pool, a finished test) would be killed early.
pub fn spawn_from_keeper(command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("child-keeper".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: this loop ends only with the process.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the child-keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper.lock().unwrap_or_else(|e| e.into_inner()).send((command, tx)).expect("child-keeper thread is alive");
    rx.recv().expect("child-keeper thread answers")
}

pub fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Nanoseconds since the Unix epoch: the clock of the exec journal (`date +%s%N`).
pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A running (or finished) `taskcluster` process.
pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
    /// The `--listen` address of a master or worker.
    pub listen: Option<String>,
    /// When the test SIGKILLed it (journal clock), so its orphaned children can be told apart.
    pub killed_at_ns: Option<u128>,
}

impl Proc {
    /// Spawns `taskcluster <args>` in its own process group, with stdin from `stdin` (a file)
    /// or /dev/null, and stdout/stderr into `<dir>/<name>.out` and `<dir>/<name>.err`.
    pub fn spawn(
        dir: &Path,
        name: &str,
        args: &[String],
        stdin: Option<&Path>,
        listen: Option<String>,
        env: &[(String, String)],
    ) -> Proc {
        Self::spawn_program(Path::new(BINARY), dir, name, args, stdin, listen, env)
    }

    /// Like [`Proc::spawn`] for another program (e.g. the Kazoo scripts under python3).
    pub fn spawn_program(
        program: &Path,
        dir: &Path,
        name: &str,
        args: &[String],
        stdin: Option<&Path>,
        listen: Option<String>,
        env: &[(String, String)],
    ) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("TASKCLUSTER_ZK")
            .env_remove("TASKCLUSTER_ID")
            .env_remove("TASKCLUSTER_LISTEN")
            .env_remove("TASKCLUSTER_EXEC")
            .env_remove("TASKCLUSTER_HANDLER")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"))
            .process_group(0);
        match stdin {
            Some(path) => command.stdin(fs::File::open(path).expect("open stdin file")),
            None => command.stdin(Stdio::null()),
        };
        die_with_parent(&mut command);
        let child = spawn_from_keeper(command).unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc { name: name.to_string(), child, status: None, stdout, stderr, listen, killed_at_ns: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            signal_pid(self.pid(), sig);
        }
    }

    /// SIGKILL and reap; records the time for the journal's liveness checks.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            self.killed_at_ns = Some(now_ns());
            signal_pid(self.pid(), libc::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for the process to exit, panicking with its output after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        let status = eventually(&what, timeout, || self.try_status()).await;
        status
    }

    /// Waits for exit and returns the exit code, failing on a death by signal.
    pub async fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout).await;
        status.code().unwrap_or_else(|| panic!("{} died of a signal: {status:?}\n{}", self.name, self.describe()))
    }

    pub fn stdout(&self) -> String {
        fs::read(&self.stdout).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read(&self.stderr).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_string).collect()
    }

    /// Panics if the process ever panicked: no input, fault or signal may make it panic.
    pub fn assert_no_panic(&self) {
        let stderr = self.stderr();
        assert!(!stderr.contains("panicked"), "{} panicked; stderr:\n{stderr}", self.name);
    }

    /// Name, status and the tail of both outputs, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "=== {} (pid {}, status {:?}) ===\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.name,
            self.child.id(),
            self.status,
            tail(&self.stdout, 20),
            tail(&self.stderr, 40)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.try_status();
            eprintln!("{}", self.describe());
        }
        // The whole group: the process and any `--exec` children it left running.
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        if self.status.is_none() {
            signal_pid(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        // No input, fault or signal may make any of our processes panic, whether or not the
        // test looked at its output.
        if !std::thread::panicking() && self.stderr().contains("panicked") {
            panic!("{} panicked:\n{}", self.name, self.describe());
        }
    }
}
