//! `taskcluster master` and `taskcluster worker`: long-running pod roles.

use prometheus_client::registry::Registry;

use super::{default_id, shutdown_on_signal, Failure};
use crate::cli::{MasterArgs, ServeArgs, WorkerArgs};
use crate::master::{self, MasterContext};
use crate::records::TaskSettings;
use crate::telemetry::http::{self, Probes};
use crate::telemetry::metrics::{MasterMetrics, WorkerMetrics};
use crate::worker::{self, handler::Handler, WorkerContext};

async fn start_http(serve: &ServeArgs, registry: Registry, probes: std::sync::Arc<Probes>) -> Result<(), Failure> {
    if let Some(addr) = serve.listen_addr().map_err(Failure::usage)? {
        let bound = http::serve(addr, registry, probes).await.map_err(|e| Failure::usage(e.to_string()))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    Ok(())
}

fn millis(d: std::time::Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

pub async fn master(args: MasterArgs) -> Result<(), Failure> {
    let target = args.zk.target();
    target.validate()?;
    let metrics = MasterMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let probes = Probes::new();
    start_http(&args.serve, registry, probes.clone()).await?;
    let ctx = MasterContext {
        id: default_id(args.serve.id),
        target,
        settings: TaskSettings {
            max_attempts: args.max_attempts,
            task_timeout_ms: millis(args.task_timeout).max(1),
            backlog_cap: args.backlog_cap,
            retention_ms: millis(args.retention),
        },
        metrics,
        probes,
    };
    let shutdown = shutdown_on_signal();
    master::run(&ctx, &shutdown).await.map_err(|e| Failure::usage(e.to_string()))
}

pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    let target = args.zk.target();
    target.validate()?;
    let metrics = WorkerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let probes = Probes::new();
    start_http(&args.serve, registry, probes.clone()).await?;
    let handler = match args.exec {
        Some(command) if command.trim().is_empty() => return Err(Failure::usage("--exec needs a command")),
        Some(command) => Handler::Exec(command),
        None => Handler::Builtin(args.handler),
    };
    let ctx = WorkerContext {
        id: default_id(args.serve.id),
        target,
        handler,
        grace_period: args.grace_period,
        metrics,
        probes,
    };
    let shutdown = shutdown_on_signal();
    worker::run(&ctx, &shutdown).await.map_err(|e| Failure::usage(e.to_string()))
}
