//! `taskcluster bench --failover term|kill`: two master processes under a steady load; the
//! leader is stopped with a signal and the time until the standby's first assignment is
//! measured from the standby's own metrics. A worker process under the same load reports its
//! resident memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::bench::{start_cluster, Scratch};
use super::Failure;
use crate::cli::{BenchArgs, FailoverSignal};
use crate::client::Submitter;
use crate::connect::ZkTarget;
use crate::status::read_status;

#[derive(Debug, Serialize)]
struct FailoverReport {
    signal: &'static str,
    session_timeout_ms: u64,
    rounds: Vec<f64>,
    failover_p50_ms: f64,
    failover_max_ms: f64,
    tasks_during: u64,
    worker_rss_kb: u64,
    worker_peak_rss_kb: u64,
}

/// A master process with its metrics address; killed on drop.
struct MasterProcess {
    id: String,
    metrics: SocketAddr,
    child: Child,
}

impl MasterProcess {
    fn spawn(target: &ZkTarget, id: &str) -> Result<Self, Failure> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Failure::usage(format!("no free port: {e}")))?
            .port();
        let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
        let exe = std::env::current_exe().map_err(|e| Failure::usage(format!("cannot find our binary: {e}")))?;
        let timeout = humantime::format_duration(target.session_timeout).to_string();
        let child = Command::new(exe)
            .args(["master", "--zk", &target.connect, "--id", id, "--listen", &metrics.to_string()])
            .args(["--session-timeout", &timeout])
            .env("RUST_LOG", "warn,zookeeper_client=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Failure::usage(format!("cannot start a master: {e}")))?;
        Ok(Self { id: id.to_string(), metrics, child })
    }

    fn signal(&mut self, signal: FailoverSignal) {
        let number = match signal {
            FailoverSignal::Term => libc::SIGTERM,
            FailoverSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, number) };
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One metric's value from a `/metrics` endpoint (a plain HTTP/1.0 GET on loopback).
fn scrape(addr: SocketAddr, metric: &str) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|line| line.split_whitespace().next() == Some(metric))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Submits tasks with `inflight` in flight until cancelled; returns how many completed.
fn steady_load(submitter: Arc<Submitter>, inflight: usize, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut running = FuturesUnordered::new();
        let mut done = 0u64;
        let mut n = 0u64;
        loop {
            while !stop.is_cancelled() && running.len() < inflight {
                let submitter = submitter.clone();
                n += 1;
                running.push(async move { submitter.run(format!("failover-{n}").as_bytes()).await });
            }
            match running.next().await {
                Some(Ok(_)) => done += 1,
                Some(Err(error)) => tracing::warn!(%error, "load task failed"),
                None => return done,
            }
        }
    })
}

async fn leader_id(client: &zookeeper_client::Client) -> Option<String> {
    read_status(client).await.ok().and_then(|s| s.leader).map(|l| l.id)
}

async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Result<T, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(Failure::zookeeper(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(args: &BenchArgs, signal: FailoverSignal) -> Result<(), Failure> {
    const ASSIGNMENTS: &str = "taskcluster_master_assignments_total";
    let scratch = Scratch::create(&args.zk.target()).await?;
    let target = scratch.target();
    let session_timeout = target.session_timeout;

    let mut masters = vec![MasterProcess::spawn(&target, "master-0")?, MasterProcess::spawn(&target, "master-1")?];
    let exe = std::env::current_exe().map_err(|e| Failure::usage(e.to_string()))?;
    let mut worker = Command::new(exe)
        .args(["worker", "--zk", &target.connect, "--id", "worker-process", "--listen", "off", "--handler", "echo"])
        .env("RUST_LOG", "warn,zookeeper_client=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot start a worker: {e}")))?;
    let cluster = start_cluster(&target, 0, args.workers.saturating_sub(1));
    let submitter = Arc::new(Submitter::connect(&target).await.map_err(Failure::zookeeper)?);
    let observer = submitter.client();
    let stop = CancellationToken::new();
    let load = steady_load(submitter.clone(), args.inflight as usize, stop.clone());

    let mut rounds = Vec::new();
    let first_replacement = masters.len();
    for round in 0..args.rounds {
        let leader = wait_for("a leader", Duration::from_secs(30), async || leader_id(&observer).await).await?;
        let Some(at) = masters.iter().position(|m| m.id == leader) else {
            return Err(Failure::zookeeper(format!("leader {leader} is none of our masters")));
        };
        let standby = 1 - at;
        // The standby must be contending, with its metrics up and no assignment yet.
        wait_for("the standby's metrics", Duration::from_secs(30), async || {
            scrape(masters[standby].metrics, ASSIGNMENTS).filter(|v| *v == 0.0)
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        masters[at].signal(signal);
        let standby_metrics = masters[standby].metrics;
        let elapsed = tokio::task::spawn_blocking(move || {
            let deadline = started + session_timeout * 3 + Duration::from_secs(10);
            while Instant::now() < deadline {
                if scrape(standby_metrics, ASSIGNMENTS).is_some_and(|v| v > 0.0) {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })
        .await
        .map_err(|e| Failure::usage(e.to_string()))?
        .ok_or_else(|| Failure::zookeeper("the standby never assigned a task"))?;
        let ms = elapsed.as_secs_f64() * 1000.0;
        eprintln!("round {}: {} -> {} in {ms:.1} ms", round + 1, masters[at].id, masters[standby].id);
        rounds.push(ms);
        // The stopped master comes back as the next standby.
        masters[at] = MasterProcess::spawn(&target, &format!("master-{}", first_replacement + round as usize))?;
    }

    let worker_rss_kb = proc_status_kb(worker.id(), "VmRSS:");
    let worker_peak_rss_kb = proc_status_kb(worker.id(), "VmHWM:");
    stop.cancel();
    let tasks_during = load.await.unwrap_or(0);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    cluster.stop().await;
    drop(masters);
    drop(submitter);
    scratch.remove().await?;

    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let report = FailoverReport {
        signal: match signal {
            FailoverSignal::Term => "SIGTERM",
            FailoverSignal::Kill => "SIGKILL",
        },
        session_timeout_ms: session_timeout.as_millis() as u64,
        failover_p50_ms: sorted[sorted.len() / 2],
        failover_max_ms: sorted[sorted.len() - 1],
        rounds,
        tasks_during,
        worker_rss_kb,
        worker_peak_rss_kb,
    };
    println!("{}", serde_json::to_string(&report).map_err(|e| Failure::usage(e.to_string()))?);
    Ok(())
}
