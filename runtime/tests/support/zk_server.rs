//! Real ZooKeeper servers of the pinned release (`zookeeper/VERSION`, installed by
//! `zookeeper/install.sh`), on free loopback ports.
//!
//! The servers run `QuorumPeerMain` directly; their log (logback, to stdout) lands in
//! `zk-<id>.log`.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{die_with_parent, signal_pid, spawn_from_keeper};

use taskcluster::localzk::{java, zookeeper_classpath, MAIN_CLASS};

const TICK_MS: u64 = 500;

/// A loopback port nobody in this process was handed before and nobody listens on now.
pub fn free_port() -> u16 {
    taskcluster::localzk::free_port().expect("bind an ephemeral loopback port")
}

fn classpath() -> String {
    zookeeper_classpath().unwrap_or_else(|e| panic!("{e} (and a JRE: `apt-get install -y default-jre-headless`)"))
}

/// One server of a standalone setup or an ensemble.
pub struct ZkNode {
    pub myid: u32,
    pub client_port: u16,
    cfg: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    standalone: bool,
}

impl ZkNode {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn start(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(slot.is_none(), "ZooKeeper server {} is already running", self.myid);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the server log");
        let mut command = Command::new(java());
        command
            .args(["-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"])
            .arg("-cp")
            .arg(classpath())
            .arg(MAIN_CLASS)
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicate the log handle"))
            .stderr(log);
        die_with_parent(&mut command);
        let child = spawn_from_keeper(command).unwrap_or_else(|e| {
            panic!(
                "cannot start java for ZooKeeper ({e}): install a JRE with `apt-get install -y default-jre-headless`"
            )
        });
        *slot = Some(child);
    }

    /// SIGKILL, like a crashed machine; the data directory stays for a restart.
    pub fn kill(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            signal_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data directory.
    pub fn restart(&self) {
        self.kill();
        self.start();
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = slot.as_ref().unwrap_or_else(|| panic!("ZooKeeper server {} is not running", self.myid));
        signal_pid(child.id(), sig);
    }

    pub fn is_running(&self) -> bool {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// The `Mode:` line of the `srvr` four-letter word, or None when not serving.
    pub fn mode(&self) -> Option<String> {
        let reply = four_letter_word(self.client_port, "srvr")?;
        reply.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends a four-letter word and returns the reply, or None when the server does not answer.
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// A standalone server (one node) or an ensemble, with its own temporary directory.
pub struct ZkCluster {
    pub nodes: Vec<ZkNode>,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl ZkCluster {
    /// One standalone server, serving when this returns.
    pub fn standalone() -> Self {
        let cluster = Self::configure(1);
        cluster.start_all();
        cluster
    }

    /// An ensemble of `size` servers, all serving when this returns.
    pub fn ensemble(size: usize) -> Self {
        assert!(size >= 3 && size % 2 == 1, "an ensemble has an odd number of servers, at least 3");
        let cluster = Self::configure(size);
        cluster.start_all();
        cluster
    }

    fn configure(size: usize) -> Self {
        let tempdir = tempfile::Builder::new().prefix("taskcluster-zk-").tempdir().expect("create a temp dir");
        let dir = tempdir.path().to_path_buf();
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (free_port(), free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (client_port, _, _)) in ports.iter().enumerate() {
            let myid = i as u32 + 1;
            let data_dir = dir.join(format!("data-{myid}"));
            fs::create_dir_all(&data_dir).expect("create a data dir");
            let mut cfg = format!(
                "tickTime={TICK_MS}\n\
                 initLimit=20\n\
                 syncLimit=10\n\
                 dataDir={}\n\
                 clientPort={client_port}\n\
                 clientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=srvr,stat,ruok,mntr,conf\n\
                 minSessionTimeout={}\n\
                 maxSessionTimeout={}\n\
                 autopurge.purgeInterval=0\n",
                data_dir.display(),
                2 * TICK_MS,
                20 * TICK_MS,
            );
            if size > 1 {
                fs::write(data_dir.join("myid"), format!("{myid}\n")).expect("write myid");
                for (j, (_, peer, election)) in ports.iter().enumerate() {
                    cfg.push_str(&format!("server.{}=127.0.0.1:{peer}:{election}\n", j + 1));
                }
            }
            let cfg_path = dir.join(format!("zoo-{myid}.cfg"));
            fs::write(&cfg_path, cfg).expect("write zoo.cfg");
            nodes.push(ZkNode {
                myid,
                client_port: *client_port,
                cfg: cfg_path,
                log: dir.join(format!("zk-{myid}.log")),
                child: Mutex::new(None),
                standalone: size == 1,
            });
        }
        Self { nodes, dir, _tempdir: Some(tempdir) }
    }

    fn start_all(&self) {
        for node in &self.nodes {
            node.start();
        }
        self.wait_serving(Duration::from_secs(60));
    }

    /// Blocks until every running node serves (standalone, leader or follower).
    pub fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let mode = node.mode();
                if matches!(mode.as_deref(), Some("standalone" | "leader" | "follower")) {
                    break;
                }
                if !node.is_running() || Instant::now() >= deadline {
                    panic!(
                        "ZooKeeper server {} on port {} is not serving (mode {mode:?}); its log ends with:\n{}",
                        node.myid,
                        node.client_port,
                        node.log_tail(40)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `host:port,...` of every node, for our binaries and clients.
    pub fn connect_string(&self) -> String {
        self.nodes.iter().map(ZkNode::address).collect::<Vec<_>>().join(",")
    }

    pub fn node(&self, myid: u32) -> &ZkNode {
        self.nodes.iter().find(|n| n.myid == myid).unwrap_or_else(|| panic!("no ZooKeeper server {myid}"))
    }

    /// The node currently leading the ensemble (the standalone node of a standalone setup).
    pub fn leader(&self) -> &ZkNode {
        self.nodes
            .iter()
            .find(|n| matches!(n.mode().as_deref(), Some("leader" | "standalone")))
            .expect("no ZooKeeper server leads")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stop_all(&self) {
        for node in &self.nodes {
            let _ = node.child.lock().map(|slot| {
                if let Some(child) = slot.as_ref() {
                    // A paused server only dies of SIGKILL after it is resumed by the kernel;
                    // SIGKILL works on stopped processes too, so no SIGCONT is needed.
                    signal_pid(child.id(), libc::SIGKILL);
                }
            });
            node.kill();
        }
    }

    /// Dumps the tail of every server log, for failure diagnostics.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- ZooKeeper server {} (port {}) ---\n{}", n.myid, n.client_port, n.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ZkCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(30));
        }
        self.stop_all();
        if keep_files() {
            if let Some(dir) = self._tempdir.take() {
                eprintln!("kept ZooKeeper files in {}", dir.keep().display());
            }
        }
    }
}

/// `TASKCLUSTER_TEST_KEEP=1` keeps every test's files (process output, server logs, journal)
/// for diagnosis instead of deleting them.
pub fn keep_files() -> bool {
    std::env::var_os("TASKCLUSTER_TEST_KEEP").is_some_and(|v| v == "1")
}

static SHARED: OnceLock<ZkCluster> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop_all();
        let _ = fs::remove_dir_all(&cluster.dir);
    }
}

/// One standalone server shared by all tests of a test binary; each test works in its own
/// chroot. It is stopped when the test binary exits.
pub fn shared_standalone() -> &'static ZkCluster {
    SHARED.get_or_init(|| {
        let cluster = ZkCluster::standalone();
        // SAFETY: registering a plain extern "C" function without arguments.
        unsafe {
            libc::atexit(stop_shared_at_exit);
        }
        cluster
    })
}
