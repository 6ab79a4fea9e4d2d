//! `taskcluster-operator`: reconciles TaskCluster resources. Configured by environment:
//! `RUST_LOG` (log filter), `LOG_FORMAT` (`text` or `json`), `LISTEN` (metrics and probes
//! address, default `0.0.0.0:8080`), `POD_NAMESPACE`, `POD_NAME`, `CLUSTER_DOMAIN`,
//! `IMAGE_PULL_SECRETS`, `LEADER_ELECTION` (`true` when several replicas run), `WATCH_NAMESPACE`
//! (one namespace to watch instead of all).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::api::ListParams;
use kube::{Api, Client};
use std::io::IsTerminal;
use taskcluster_operator::build::Settings;
use taskcluster_operator::controller;
use taskcluster_operator::crd::TaskCluster;
use taskcluster_operator::http::{self, Health};
use taskcluster_operator::lease::{self, LeaseSettings};
use taskcluster_operator::metrics::Metrics;
use taskcluster_operator::scope::Scope;
use taskcluster_operator::zk::ZkStatusReader;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    // Colour only on a terminal: a pod's log is read by collectors.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn settings() -> Settings {
    let defaults = Settings::default();
    Settings {
        cluster_domain: std::env::var("CLUSTER_DOMAIN").unwrap_or(defaults.cluster_domain),
        operator_namespace: std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()),
        image_pull_secrets: std::env::var("IMAGE_PULL_SECRETS")
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
        operator_version: defaults.operator_version,
        admin_key: std::env::var("ZOOKEEPER_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(|k| taskcluster_operator::build::AdminKey(k.into_bytes())),
    }
}

/// Says plainly when the CRD is missing instead of failing on every watch. Lists within the
/// scope, which the operator's Role allows when it watches one namespace.
async fn check_crd(client: &Client, scope: &Scope) -> Result<(), String> {
    let api: Api<TaskCluster> = scope.api(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err("the TaskCluster CRD (taskclusters.taskcluster.dev) is not installed; install it with \
             `kubectl apply -f crds/taskcluster.yaml` or the Helm chart, then restart the operator"
                .into())
        },
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(format!("the operator may not list TaskClusters ({}); check its {}", status.message, scope.rbac()))
        },
        Err(err) => Err(format!("cannot reach the Kubernetes API server: {err}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let addr: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(_) => {
            error!("LISTEN={listen:?} is not an IP:PORT address");
            return ExitCode::FAILURE;
        },
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    tokio::spawn(async move {
        if let Err(err) = http::serve(addr, health).await {
            error!(%addr, error = %err, "cannot serve metrics and probes");
        }
    });

    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            error!(error = %err, "no Kubernetes configuration found (in-cluster service account or kubeconfig)");
            return ExitCode::FAILURE;
        },
    };
    let scope = Scope::from_env_value(std::env::var("WATCH_NAMESPACE").ok().as_deref());
    if let Err(message) = check_crd(&client, &scope).await {
        error!("{message}");
        return ExitCode::FAILURE;
    }
    let settings = settings();
    info!(version = taskcluster_operator::crd::OPERATOR_VERSION, ?scope, ?settings, "starting");
    // A standby replica is healthy too: readiness means the CRD check passed.
    ready.store(true, Ordering::Relaxed);
    let lease = match lease_settings() {
        Ok(lease) => lease,
        Err(message) => {
            error!("{message}");
            return ExitCode::FAILURE;
        },
    };
    if let Some(lease) = &lease {
        tokio::select! {
            _ = lease::acquire(&client, lease) => {},
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = terminated() => return ExitCode::SUCCESS,
        }
    }
    let zookeeper = Arc::new(
        ZkStatusReader::new(Duration::from_millis(1500))
            .counting_sessions_in(metrics.zookeeper_sessions_opened.clone()),
    );
    let run = controller::run(client.clone(), scope, settings, metrics, zookeeper);
    match &lease {
        None => run.await,
        Some(lease) => {
            tokio::select! {
                _ = run => lease::release(&client, lease).await,
                _ = lease::hold(&client, lease) => {
                    error!("lost the Lease; exiting so that the restart contends again");
                    return ExitCode::FAILURE;
                },
            }
        },
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM (never, where signals cannot be installed).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        },
        Err(_) => std::future::pending().await,
    }
}

/// Leader election settings when `LEADER_ELECTION=true`.
fn lease_settings() -> Result<Option<LeaseSettings>, String> {
    if !std::env::var("LEADER_ELECTION").is_ok_and(|v| v == "true") {
        return Ok(None);
    }
    let namespace = std::env::var("POD_NAMESPACE").ok().filter(|v| !v.is_empty());
    let identity = std::env::var("POD_NAME").ok().filter(|v| !v.is_empty());
    match (namespace, identity) {
        (Some(namespace), Some(identity)) => Ok(Some(LeaseSettings::new(namespace, identity))),
        _ => Err("LEADER_ELECTION=true needs POD_NAMESPACE and POD_NAME (set them from the downward API)".into()),
    }
}
