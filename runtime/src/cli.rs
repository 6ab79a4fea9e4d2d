//! Command-line interface: one binary serves every pod role and the client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::connect::ZkTarget;
use crate::telemetry::logging::LogFormat;
use crate::worker::handler::HandlerKind;

/// A duration flag: humantime syntax (`500ms`, `10s`, `2m`), and more than zero, since every
/// duration here is a timeout, period or deadline that zero would make meaningless.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

#[derive(Debug, Parser)]
#[command(name = "taskcluster", version, about = "Master/worker task processing coordinated by ZooKeeper")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, env = "TASKCLUSTER_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Contend for leadership and, while leading, assign tasks to workers.
    Master(MasterArgs),
    /// Register as a worker and execute the tasks assigned to it.
    Worker(WorkerArgs),
    /// Submit tasks and optionally wait for their results.
    Submit(SubmitArgs),
    /// Show leader, backlog, workers and counters.
    Status(StatusArgs),
    /// Run masters, workers and clients in one process and measure throughput and latency.
    Bench(BenchArgs),
    /// Start a local ZooKeeper, masters and workers, submit tasks, kill the leader, show failover.
    Demo(DemoArgs),
}

#[derive(Clone, Debug, Args)]
pub struct ZkArgs {
    /// ZooKeeper servers: HOST:PORT[,HOST:PORT...][/chroot].
    #[arg(long, env = "TASKCLUSTER_ZK")]
    pub zk: String,
    /// Digest credentials USER:PASSWORD; everything created is then writable by them only.
    #[arg(long, env = "TASKCLUSTER_ZK_DIGEST", hide_env_values = true)]
    pub zk_digest: Option<String>,
    /// ZooKeeper session timeout: how long a silent process keeps its leadership or registration.
    #[arg(long, env = "TASKCLUSTER_SESSION_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub session_timeout: Duration,
}

impl ZkArgs {
    pub fn target(&self) -> ZkTarget {
        ZkTarget::new(self.zk.clone()).with_session_timeout(self.session_timeout).with_digest(self.zk_digest.clone())
    }
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Identity in ZooKeeper and in status; unique among the cluster's masters, and among its
    /// workers. Defaults to the pod name in Kubernetes, else to `<host name>-<process id>`.
    #[arg(long, env = "TASKCLUSTER_ID")]
    pub id: Option<String>,
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz; "off" disables them. The
    /// default, a free loopback port, lets several processes share a machine; the address
    /// taken is logged.
    #[arg(long, env = "TASKCLUSTER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: String,
}

impl ServeArgs {
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen == "off" {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| format!("--listen {:?} is not an IP:PORT address (or \"off\")", self.listen))
    }
}

#[derive(Clone, Debug, Args)]
pub struct MasterArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Attempts per task before it is dead-lettered.
    #[arg(long, env = "TASKCLUSTER_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// A running task that takes longer counts as a failed attempt.
    #[arg(long, env = "TASKCLUSTER_TASK_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub task_timeout: Duration,
    /// Submissions are refused once this many tasks are in /tasks.
    #[arg(long, env = "TASKCLUSTER_BACKLOG_CAP", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub backlog_cap: u64,
    /// Results no client collected are deleted this long after completion.
    #[arg(long, env = "TASKCLUSTER_RETENTION", default_value = "10m", value_parser = positive_duration)]
    pub retention: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Built-in handler used when --exec is not given.
    #[arg(long, env = "TASKCLUSTER_HANDLER", default_value = "seed")]
    pub handler: HandlerKind,
    /// Run this command through `sh -c` per task: payload on stdin, stdout is the result,
    /// a non-zero exit is a failure carrying stderr.
    #[arg(long, env = "TASKCLUSTER_EXEC")]
    pub exec: Option<String>,
    /// On SIGTERM, how long to let the current task finish before giving it back.
    #[arg(long, env = "TASKCLUSTER_GRACE_PERIOD", default_value = "20s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Payloads, one task each.
    pub payloads: Vec<String>,
    /// Read one payload per line from this file ("-" for stdin).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Generate N tasks (payload "task-<n>") as load, with a progress bar.
    #[arg(long)]
    pub count: Option<u64>,
    /// Wait for every result, print them, and exit non-zero if any task failed.
    #[arg(long)]
    pub wait: bool,
    /// Tasks in flight at once: being created, and with --wait also until answered (without
    /// it, a large --count queues tasks as fast as ZooKeeper takes them).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub inflight: u32,
    /// Give up waiting for a result after this long.
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub zk: ZkArgs,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub masters: u32,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Tasks in flight per client.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub inflight: u32,
    /// Tasks in all.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tasks: u64,
    /// Creates for the raw pipelined-create measurement.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub raw_creates: u64,
    /// Creates in flight during the raw measurement (one session).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub raw_window: u32,
    /// Instead of throughput: run two master processes under load, stop the leader with this
    /// signal, and measure until the standby's first assignment; also reports a worker
    /// process's resident memory under that load.
    #[arg(long)]
    pub failover: Option<FailoverSignal>,
    /// Failovers to measure with --failover.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailoverSignal {
    /// Graceful: the leader closes its session at once.
    Term,
    /// Crash: the standby waits for the session timeout.
    Kill,
}

#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Tasks to submit.
    #[arg(long, default_value_t = 200)]
    pub tasks: u64,
    /// Use this ZooKeeper instead of starting one.
    #[arg(long, env = "TASKCLUSTER_ZK")]
    pub zk: Option<String>,
}
