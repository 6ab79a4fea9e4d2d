//! Resizing a real ensemble the way the operator does: servers started by the image's own
//! `images/zookeeper/zookeeper-server` from the members a ConfigMap would list, and the
//! operator's reader and reconfig (`ZkStatusReader::members`, `reconfigure`) as the super user
//! whose digest the servers were given.
//!
//! Needs a JRE and the pinned ZooKeeper that `zookeeper/install.sh` installs (as the runtime's
//! tests do).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Ports;
use taskcluster::localzk::{java, zookeeper_classpath, zookeeper_home};
use taskcluster::ZkTarget;
use taskcluster_operator::build::security::{digest, SUPER_USER};
use taskcluster_operator::ensemble::{Members, Step};
use taskcluster_operator::zk::{ReconfigError, StatusSource, ZkStatusReader};

const PASSWORD: &str = "operator-derived";

/// One server run by the image's start script; killed and its directory removed on drop.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    id: usize,
    ports: Ports,
}

impl Server {
    /// Starts server `id` from the initial `members` (ids into `all`), the way a pod starts
    /// from its ConfigMap: a static `zoo.cfg` and a `zoo.cfg.dynamic` beside it.
    fn start(test: &str, all: &[Ports], id: usize, members: &[usize]) -> Self {
        let dir = std::env::temp_dir().join(format!("taskcluster-reconfig-{test}-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = Self { child: None, dir, id, ports: all[id - 1] };
        std::fs::create_dir_all(server.dir.join("data")).expect("a data directory");
        std::fs::create_dir_all(server.dir.join("conf")).expect("a conf directory");
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nmaxClientCnxns=0\n\
             4lw.commands.whitelist=ruok,srvr,mntr,conf\nadmin.enableServer=false\n\
             reconfigEnabled=true\nstandaloneEnabled=false\n",
            server.dir.join("data").display(),
            server.ports.client,
        );
        std::fs::write(server.conf(), cfg).expect("zoo.cfg");
        let lines: String = members.iter().map(|m| format!("server.{m}={}\n", all[m - 1].address())).collect();
        std::fs::write(server.dir.join("conf/zoo.cfg.dynamic"), lines).expect("zoo.cfg.dynamic");
        server.run();
        server
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("conf/zoo.cfg")
    }

    /// Runs the start script (again), keeping the data directory.
    fn run(&mut self) {
        zookeeper_classpath().unwrap_or_else(|e| panic!("{e}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/zookeeper/zookeeper-server");
        let java_dir = java().parent().map(Path::to_path_buf).filter(|d| !d.as_os_str().is_empty());
        let path = match java_dir {
            Some(dir) => format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()),
            None => std::env::var("PATH").unwrap_or_default(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("zookeeper.log"))
            .expect("a log file");
        let child = Command::new("bash")
            .arg(script)
            .env("PATH", path)
            .env("ZK_CONF", self.conf())
            .env("ZK_DATA", self.dir.join("data"))
            .env("ZK_MYID", self.id.to_string())
            .env("ZK_HEAP", "128m")
            .env("ZK_HOME", zookeeper_home())
            .env("ZK_SERVER", self.ports.address())
            .env("ZK_SUPER_DIGEST", digest(SUPER_USER, PASSWORD))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("bash starts the script");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT: the script execs the JVM, so the child is the server.
    fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill").args([signal, &pid]).status().expect("kill runs");
    }

    fn word(&self, word: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.ports.client)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(word.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    fn mode(&self) -> Option<String> {
        self.word("srvr")?.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `check` holds; panics with `what` and the servers' logs after a minute.
async fn until(what: &str, servers: &[&Server], mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        if Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| format!("server {}:\n{}", s.id, s.log_tail())).collect();
            panic!("{what} did not happen within 60 s\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn members(reader: &ZkStatusReader, server: &Server) -> Option<Members> {
    // A fresh key each time: the reader backs off per key after a failure.
    let key = format!("test/{}-{:?}", server.id, Instant::now());
    reader.members(&key, &server.connect()).await.ok()
}

async fn voters(reader: &ZkStatusReader, server: &Server) -> Vec<i32> {
    members(reader, server).await.map(|m| m.voters.into_iter().collect()).unwrap_or_default()
}

/// Runs the operator's reconfig until ZooKeeper takes it, as the reconcile loop retries.
async fn reconfigure(reader: &ZkStatusReader, all: &[Ports], via: &Server, step: Step, servers: &[&Server]) {
    let address = |id: i32| all[id as usize - 1].address();
    let mut last = String::new();
    until(&format!("the reconfig {step:?}"), servers, async || {
        let Some(current) = members(reader, via).await else { return false };
        match reader.reconfigure(&via.connect(), PASSWORD, &step, current.version, &address).await {
            Ok(()) => true,
            Err(ReconfigError::NotYet(why)) => {
                last = why;
                false
            },
            Err(err) => panic!("the reconfig {step:?} failed: {err} (before: {last})"),
        }
    })
    .await;
}

async fn write_and_read(server: &Server, path: &str) -> bool {
    let Ok(client) = ZkTarget::new(server.connect()).connect().await else { return false };
    let created = client
        .create(
            path,
            b"kept",
            &zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await;
    let kept = matches!(created, Ok(_) | Err(zookeeper_client::Error::NodeExists));
    kept && client.get_data(path).await.is_ok_and(|(data, _)| data == b"kept")
}

async fn reads(server: &Server, path: &str) -> bool {
    let Ok(client) = ZkTarget::new(server.connect()).connect().await else { return false };
    client.get_data(path).await.is_ok_and(|(data, _)| data == b"kept")
}

#[tokio::test]
async fn one_server_grows_to_three_that_vote_and_shrinks_back_keeping_the_data() {
    let all: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
    let reader = ZkStatusReader::new(Duration::from_secs(10));
    let mut first = Server::start("grow", &all, 1, &[1]);
    until("server 1 to lead alone", &[&first], async || first.mode().as_deref() == Some("leader")).await;
    assert_eq!(voters(&reader, &first).await, vec![1]);
    until("a write to server 1", &[&first], async || write_and_read(&first, "/before").await).await;

    // No newcomer runs: a majority of {1,2,3} is not in sync, so ZooKeeper declines.
    let add = Step::Add(vec![2, 3]);
    let version = members(&reader, &first).await.expect("members").version;
    let (connect, address) = (first.connect(), |id: i32| all[id as usize - 1].address());
    let declined = reader.reconfigure(&connect, PASSWORD, &add, version, &address).await;
    assert!(matches!(declined, Err(ReconfigError::NotYet(_))), "a reconfig without its joiners: {declined:?}");

    // Newcomers start from the committed members (the ConfigMap's) plus themselves.
    let second = Server::start("grow", &all, 2, &[1]);
    let third = Server::start("grow", &all, 3, &[1]);
    let servers = [&first, &second, &third];
    until("the newcomers to follow", &servers, async || {
        second.mode().as_deref() == Some("follower") && third.mode().as_deref() == Some("follower")
    })
    .await;
    assert_eq!(voters(&reader, &second).await, vec![1], "a newcomer is no member before the reconfig");
    // Only the super user may reconfigure (ZooKeeper checks it once the joiners are in sync).
    let refused = reader.reconfigure(&connect, "wrong", &add, version, &address).await;
    assert!(matches!(refused, Err(ReconfigError::NotAuthorized)), "a reconfig by anyone: {refused:?}");
    reconfigure(&reader, &all, &first, add, &servers).await;
    for server in servers {
        until(&format!("server {} to see three members", server.id), &servers, async || {
            voters(&reader, server).await == vec![1, 2, 3]
        })
        .await;
    }

    // They vote: without the first server, the other two elect a leader and keep the data.
    first.stop();
    let (second_ref, third_ref) = (&second, &third);
    until("servers 2 and 3 to elect a leader", &[second_ref, third_ref], async || {
        let modes = [second.mode(), third.mode()];
        modes.iter().any(|m| m.as_deref() == Some("leader")) && modes.iter().all(|m| m.is_some())
    })
    .await;
    until("the data on server 2", &[second_ref], async || reads(&second, "/before").await).await;
    until("a write to server 3", &[third_ref], async || write_and_read(&third, "/after").await).await;

    // A restarted server comes back with the newest membership it knew, not the initial one
    // (alone in that, it would lead by itself). With the others frozen it must find no
    // majority, however long it looks.
    second.freeze(true);
    third.freeze(true);
    first.run();
    until("server 1 to answer", &[&first], async || first.word("ruok").is_some()).await;
    for _ in 0..20 {
        let mode = first.mode();
        assert!(
            mode.is_none(),
            "server 1 serves as {mode:?} without a majority of the ensemble it knew:\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    second.freeze(false);
    third.freeze(false);
    until("server 1 to rejoin", &[&first, &second, &third], async || first.mode().is_some()).await;
    assert_eq!(voters(&reader, &first).await, vec![1, 2, 3]);
    until("the later write on server 1", &[&first], async || reads(&first, "/after").await).await;

    // Shrinking: the removal first, the servers after.
    let servers = [&first, &second, &third];
    reconfigure(&reader, &all, &first, Step::Remove(vec![2, 3]), &servers).await;
    drop(second);
    drop(third);
    until("server 1 to lead alone again", &[&first], async || first.mode().as_deref() == Some("leader")).await;
    assert_eq!(voters(&reader, &first).await, vec![1]);
    until("every write on server 1", &[&first], async || {
        reads(&first, "/before").await && reads(&first, "/after").await
    })
    .await;
}
