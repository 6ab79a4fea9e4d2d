//! `taskcluster bench`: masters, workers and clients in one process against a given
//! ZooKeeper, in a fresh chroot; ends with one JSON line of results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::Failure;
use crate::cli::BenchArgs;
use crate::client::Submitter;
use crate::connect::ZkTarget;
use crate::master::{self, MasterContext};
use crate::records::{TaskOutcome, TaskSettings};
use crate::telemetry::http::Probes;
use crate::telemetry::metrics::{MasterMetrics, WorkerMetrics};
use crate::worker::handler::{Handler, HandlerKind};
use crate::worker::{self, WorkerContext};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub masters: u32,
    pub workers: u32,
    pub clients: u32,
    pub inflight: u32,
    pub tasks: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub tasks_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub idle_p50_ms: f64,
    /// The mean of the raw rates measured right before and right after the tasks.
    pub raw_zk_creates_per_s: f64,
    pub raw_before_per_s: f64,
    pub raw_after_per_s: f64,
    pub ratio_to_raw: f64,
}

/// Pipelined creates (and deletes) under `dir`, `window` in flight: the server's raw write rate.
pub async fn raw_creates(client: &Client, dir: &str, count: u64, window: usize) -> Result<f64, ZkError> {
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.create(dir, b"", &options).await?;
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut next = 0u64;
    while next < count || !inflight.is_empty() {
        while next < count && inflight.len() < window {
            let path = format!("{dir}/n{next}");
            let options = &options;
            inflight.push(async move { client.create(&path, b"", options).await });
            next += 1;
        }
        if let Some(result) = inflight.next().await {
            result?;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    delete_tree(client, dir).await?;
    Ok(rate)
}

/// Deletes `path` and everything below it, pipelined per level.
pub async fn delete_tree(client: &Client, path: &str) -> Result<(), ZkError> {
    let children = match client.list_children(path).await {
        Ok(children) => children,
        Err(ZkError::NoNode) => return Ok(()),
        Err(error) => return Err(error),
    };
    for chunk in children.chunks(1000) {
        let deletes = chunk.iter().map(|child| {
            let child = format!("{}/{child}", path.trim_end_matches('/'));
            async move { Box::pin(delete_tree(client, &child)).await }
        });
        for result in futures::future::join_all(deletes).await {
            result?;
        }
    }
    match client.delete(path, None).await {
        Ok(()) | Err(ZkError::NoNode) => Ok(()),
        Err(error) => Err(error),
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

pub struct Cluster {
    shutdown: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    pub async fn stop(self) {
        self.shutdown.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

pub fn start_cluster(target: &ZkTarget, masters: u32, workers: u32) -> Cluster {
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for i in 0..masters {
        let ctx = MasterContext {
            id: format!("bench-master-{i}"),
            target: target.clone(),
            settings: TaskSettings::default(),
            metrics: MasterMetrics::default(),
            probes: Probes::new(),
        };
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(async move {
            if let Err(error) = master::run(&ctx, &shutdown).await {
                tracing::error!(%error, "bench master failed");
            }
        }));
    }
    for i in 0..workers {
        let ctx = WorkerContext {
            id: format!("bench-worker-{i}"),
            target: target.clone(),
            handler: Handler::Builtin(HandlerKind::Echo),
            grace_period: Duration::from_secs(5),
            metrics: WorkerMetrics::default(),
            probes: Probes::new(),
        };
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(async move {
            if let Err(error) = worker::run(&ctx, &shutdown).await {
                tracing::error!(%error, "bench worker failed");
            }
        }));
    }
    Cluster { shutdown, handles }
}

/// Runs `total` tasks from `clients` clients with `inflight` each; returns latencies (µs),
/// failures and elapsed time.
async fn drive(
    target: &ZkTarget,
    clients: u32,
    inflight: u32,
    total: u64,
) -> Result<(Histogram<u64>, u64, Duration), Failure> {
    let mut submitters = Vec::new();
    for _ in 0..clients {
        submitters.push(Arc::new(Submitter::connect(target).await.map_err(Failure::zookeeper)?));
    }
    let started = Instant::now();
    let per_client = total / clients as u64;
    let mut runs = Vec::new();
    for (i, submitter) in submitters.into_iter().enumerate() {
        let share = if i == 0 { total - per_client * (clients as u64 - 1) } else { per_client };
        runs.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let mut failed = 0u64;
            let mut inflight_tasks = FuturesUnordered::new();
            let mut next = 0u64;
            while next < share || !inflight_tasks.is_empty() {
                while next < share && inflight_tasks.len() < inflight as usize {
                    let submitter = submitter.clone();
                    let payload = format!("bench-{i}-{next}");
                    next += 1;
                    inflight_tasks.push(async move {
                        let started = Instant::now();
                        let result = submitter.run(payload.as_bytes()).await;
                        (started.elapsed(), result)
                    });
                }
                if let Some((elapsed, result)) = inflight_tasks.next().await {
                    match result {
                        Ok((_, TaskOutcome::Succeeded(_))) => {
                            histogram.record(elapsed.as_micros() as u64).map_err(|e| e.to_string())?;
                        },
                        Ok((_, TaskOutcome::Failed(_))) => failed += 1,
                        Err(error) => return Err(error.to_string()),
                    }
                }
            }
            Ok::<_, String>((histogram, failed))
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| Failure::usage(e.to_string()))?;
    let mut failed = 0;
    for run in runs {
        let (h, f) = run.await.map_err(|e| Failure::zookeeper(e.to_string()))?.map_err(Failure::zookeeper)?;
        histogram.add(h).map_err(|e| Failure::usage(e.to_string()))?;
        failed += f;
    }
    Ok((histogram, failed, started.elapsed()))
}

/// A fresh znode under the given root for one benchmark run, removed at the end.
pub struct Scratch {
    pub root: Client,
    pub path: String,
    base: ZkTarget,
}

impl Scratch {
    pub async fn create(base: &ZkTarget) -> Result<Self, Failure> {
        base.validate()?;
        let root = base.connect().await?;
        let path = format!("/taskcluster-bench-{:x}", root.session_id().0 as u64);
        let options = CreateMode::Persistent.with_acls(base.acls());
        root.create(&path, b"", &options).await.map_err(Failure::zookeeper)?;
        Ok(Self { root, path, base: base.clone() })
    }

    /// The base target, chrooted into the scratch znode.
    pub fn target(&self) -> ZkTarget {
        let mut target = self.base.clone();
        let (hosts, chroot) = match self.base.connect.find('/') {
            Some(i) => (&self.base.connect[..i], self.base.connect[i..].trim_end_matches('/')),
            None => (self.base.connect.as_str(), ""),
        };
        target.connect = format!("{hosts}{chroot}{}", self.path);
        target
    }

    pub async fn remove(self) -> Result<(), Failure> {
        delete_tree(&self.root, &self.path).await.map_err(Failure::zookeeper)
    }
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if let Some(signal) = args.failover {
        return super::failover::run(&args, signal).await;
    }
    let scratch = Scratch::create(&args.zk.target()).await?;
    let root_client = scratch.root.clone();
    let raw_dir = format!("{}/raw", scratch.path);
    let target = scratch.target();
    // A fresh server's JIT is cold: both paths get a first pass of the same size that only
    // warms it, then both are measured back to back on the same warm server.
    let measure_raw = || async {
        raw_creates(&root_client, &raw_dir, args.raw_creates, args.raw_window as usize)
            .await
            .map_err(Failure::zookeeper)
    };
    eprintln!("warming up: {} raw creates, {} tasks ...", args.raw_creates, args.tasks);
    measure_raw().await?;
    let cluster = start_cluster(&target, args.masters, args.workers);
    // The first tasks also wait for the election and the registrations.
    drive(&target, 1, 1, 20).await?;
    drive(&target, args.clients, args.inflight, args.tasks).await?;
    eprintln!("idle latency (1 client, 1 in flight) ...");
    let (idle, _, _) = drive(&target, 1, 1, 200).await?;
    // The raw rate drifts as the server warms: measured right before and right after the
    // tasks, its mean is the rate at the time of the tasks.
    eprintln!("raw pipelined creates ({}) ...", args.raw_creates);
    let raw_before = measure_raw().await?;
    eprintln!(
        "throughput: {} tasks, {} masters, {} workers, {} clients x {} in flight ...",
        args.tasks, args.masters, args.workers, args.clients, args.inflight
    );
    let (histogram, failed, elapsed) = drive(&target, args.clients, args.inflight, args.tasks).await?;
    eprintln!("raw pipelined creates again ({}) ...", args.raw_creates);
    let raw_after = measure_raw().await?;
    let raw = (raw_before + raw_after) / 2.0;
    cluster.stop().await;
    scratch.remove().await?;

    let tasks_per_s = args.tasks as f64 / elapsed.as_secs_f64();
    let report = BenchReport {
        masters: args.masters,
        workers: args.workers,
        clients: args.clients,
        inflight: args.inflight,
        tasks: args.tasks,
        failed,
        elapsed_s: elapsed.as_secs_f64(),
        tasks_per_s,
        p50_ms: ms(&histogram, 0.5),
        p99_ms: ms(&histogram, 0.99),
        idle_p50_ms: ms(&idle, 0.5),
        raw_zk_creates_per_s: raw,
        raw_before_per_s: raw_before,
        raw_after_per_s: raw_after,
        ratio_to_raw: tasks_per_s / raw,
    };
    println!("{}", serde_json::to_string(&report).map_err(|e| Failure::usage(e.to_string()))?);
    Ok(())
}
