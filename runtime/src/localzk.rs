//! A standalone ZooKeeper for the demo and the operator's tests: the pinned release that
//! `zookeeper/install.sh` installs (the version in `zookeeper/VERSION`), run directly
//! (`QuorumPeerMain`) on a free loopback port, in a temporary directory.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
const VERSION_FILE: &str = include_str!("../../zookeeper/VERSION");

/// The ZooKeeper release every local server runs (tests, demo, benchmarks, image).
pub fn zookeeper_version() -> &'static str {
    VERSION_FILE.trim()
}

/// Where `zookeeper/install.sh` puts the server: `$TASKCLUSTER_ZOOKEEPER_HOME`, else
/// `${XDG_CACHE_HOME:-~/.cache}/taskcluster/zookeeper-<version>`.
pub fn zookeeper_home() -> PathBuf {
    if let Some(home) = std::env::var_os("TASKCLUSTER_ZOOKEEPER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("taskcluster").join(format!("zookeeper-{}", zookeeper_version()))
}

/// The server's classpath (its logging configuration first, then every jar), or why there
/// is none.
pub fn zookeeper_classpath() -> Result<String, LocalZkError> {
    let home = zookeeper_home();
    let jar = home.join("lib").join(format!("zookeeper-{}.jar", zookeeper_version()));
    if !jar.exists() {
        return Err(LocalZkError::NotInstalled { jar });
    }
    Ok(format!("{}:{}", home.join("conf").display(), home.join("lib").join("*").display()))
}

/// The JVM to run the server with: `$JAVA_HOME/bin/java` when set, else `java` from PATH.
pub fn java() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let candidate = PathBuf::from(home).join("bin/java");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("java")
}

#[derive(Debug, thiserror::Error)]
pub enum LocalZkError {
    #[error(
        "ZooKeeper {} is not installed ({} is missing): run `bash zookeeper/install.sh` \
         (or `bash scripts/deps.sh`), or pass --zk HOST:PORT",
        zookeeper_version(), jar.display()
    )]
    NotInstalled { jar: PathBuf },
    #[error("cannot prepare a ZooKeeper directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("ZooKeeper did not start serving on port {port} within {timeout:?}; its log: {log}")]
    NotServing { port: u16, timeout: Duration, log: String },
}

/// A loopback port that nothing listens on now and that this process was not handed before.
/// The kernel gives a port closed after `bind(0)` out again soon (a few hundred times in 2,000
/// draws here), and two servers, or two members of one ensemble, handed one port never start.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if handed.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return Ok(port);
        }
    }
}

/// A running server; stopped and its directory removed on drop.
pub struct LocalZk {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl LocalZk {
    pub fn start() -> Result<Self, LocalZkError> {
        let classpath = zookeeper_classpath()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("taskcluster-zk-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), config)?;
        let log = std::fs::File::create(dir.join("zookeeper.log"))?;
        let child = Command::new(java())
            .arg("-Xmx512m")
            .arg("-cp")
            .arg(classpath)
            .arg(MAIN_CLASS)
            .arg(dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let server = LocalZk { child, port, dir };
        server.wait_serving(Duration::from_secs(30))?;
        Ok(server)
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_serving(&self, timeout: Duration) -> Result<(), LocalZkError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ruok(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        Err(LocalZkError::NotServing { port: self.port, timeout, log: tail })
    }
}

fn ruok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    stream.write_all(b"ruok").is_ok() && stream.read_to_string(&mut answer).is_ok() && answer == "imok"
}

impl Drop for LocalZk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..2000).map(|_| free_port().expect("a free loopback port")).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{} ports handed out twice", ports.len() - distinct.len());
    }
}
