//! The ZooKeeper image's probe script, `images/zookeeper/zookeeper-ready`, against real
//! servers of the pinned release: ready (`--serving`) only while the server serves clients,
//! alive (no argument) while it answers at all, quorum or not.
//!
//! Needs a JRE and the pinned ZooKeeper that `zookeeper/install.sh` installs (as the runtime's
//! tests do).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, Ports};
use taskcluster::localzk::{java, zookeeper_classpath, MAIN_CLASS};

const SERVING: &[&str] = &["--serving"];
const ALIVE: &[&str] = &[];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/zookeeper/zookeeper-ready")
}

/// The script's exit code against the server that `conf` describes.
fn probe(conf: &Path, args: &[&str]) -> i32 {
    let status = Command::new("bash")
        .arg(script())
        .args(args)
        .env("ZK_CONF", conf)
        .stdin(Stdio::null())
        .status()
        .expect("bash runs the script");
    status.code().unwrap_or(-1)
}

/// Waits until the probe gives `want`; panics with the server's log after 60 s.
fn await_probe(server: &Server, args: &[&str], want: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe(&server.conf, args) != want {
        if Instant::now() > deadline {
            panic!("zookeeper-ready {args:?} never exited {want}; server log:\n{}", server.log_tail());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One server process of an ensemble described by `members`; stopped and its directory
/// removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    conf: PathBuf,
}

impl Server {
    /// Starts member `id` (1-based) of `members`, configured the way the operator's `zoo.cfg`
    /// configures the image: the same four-letter words, a `server.N` line per member.
    fn start(test: &str, members: &[Ports], id: usize) -> Self {
        let classpath = zookeeper_classpath().unwrap_or_else(|e| panic!("{e}"));
        let own = members[id - 1];
        let dir = std::env::temp_dir().join(format!("taskcluster-ready-{test}-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("a data directory");
        std::fs::write(dir.join("data/myid"), format!("{id}\n")).expect("myid");
        let mut cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n4lw.commands.whitelist=ruok,srvr,mntr\nadmin.enableServer=false\n\
             reconfigEnabled=false\n",
            dir.join("data").display(),
            own.client,
        );
        for (n, ports) in members.iter().enumerate() {
            cfg.push_str(&format!("server.{}=127.0.0.1:{}:{}\n", n + 1, ports.peer, ports.election));
        }
        let conf = dir.join("zoo.cfg");
        std::fs::write(&conf, cfg).expect("zoo.cfg");
        let log = std::fs::File::create(dir.join("zookeeper.log")).expect("a log file");
        let child = Command::new(java())
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp", &classpath, MAIN_CLASS])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java starts");
        Self { child, dir, conf }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test shows every server's log, not only the one it waited for.
        if std::thread::panicking() {
            eprintln!("---- {} (last lines):\n{}", self.dir.display(), self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_standalone_server_is_ready_and_no_server_is_neither() {
    let server = Server::start("standalone", &[Ports::new()], 1);
    await_probe(&server, ALIVE, 0);
    // `ruok` answers as soon as the port is open, before the database is loaded.
    await_probe(&server, SERVING, 0);
    assert_eq!(probe(&server.conf, ALIVE), 0);

    drop(server);
    let gone = std::env::temp_dir().join(format!("taskcluster-ready-gone-{}.cfg", std::process::id()));
    std::fs::write(&gone, format!("clientPort={}\n", free_port())).expect("a config");
    assert_ne!(probe(&gone, ALIVE), 0, "nothing listens: not alive");
    assert_ne!(probe(&gone, SERVING), 0, "nothing listens: not ready");
    let _ = std::fs::remove_file(gone);
}

#[test]
fn a_server_without_a_quorum_is_alive_but_not_ready_until_a_majority_runs() {
    let members = [Ports::new(), Ports::new(), Ports::new()];
    let first = Server::start("ensemble", &members, 1);
    // Up and answering, but alone of three it only looks for a leader.
    await_probe(&first, ALIVE, 0);
    for _ in 0..10 {
        assert_eq!(probe(&first.conf, SERVING), 1, "one of three serves nobody");
        assert_eq!(probe(&first.conf, ALIVE), 0, "but its JVM is fine: no restart");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A second server makes a majority: both serve, one leads and one follows.
    let second = Server::start("ensemble", &members, 2);
    await_probe(&first, SERVING, 0);
    await_probe(&second, SERVING, 0);
    assert_eq!(probe(&second.conf, ALIVE), 0);

    // The majority lost again: the survivor stops serving, and stays alive.
    drop(second);
    await_probe(&first, SERVING, 1);
    assert_eq!(probe(&first.conf, ALIVE), 0);
}

#[test]
fn an_unknown_argument_is_refused() {
    let conf = std::env::temp_dir().join(format!("taskcluster-ready-usage-{}.cfg", std::process::id()));
    std::fs::write(&conf, format!("clientPort={}\n", free_port())).expect("a config");
    assert_eq!(probe(&conf, &["--bogus"]), 2);
    let _ = std::fs::remove_file(conf);
}
