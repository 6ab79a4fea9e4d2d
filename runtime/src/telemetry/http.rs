//! `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// What the probes report. Healthy: the process loop is alive (and a worker's current run is
/// not stuck). Ready: connected (master) or registered (worker).
#[derive(Debug, Default)]
pub struct Probes {
    pub healthy: AtomicBool,
    pub ready: AtomicBool,
    /// From when the current run counts as stuck (None: no run, or no limit).
    stuck_from: Mutex<Option<Instant>>,
}

impl Probes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { healthy: AtomicBool::new(true), ready: AtomicBool::new(false), stuck_from: Mutex::new(None) })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// A run starts that counts as stuck from `from` on; None: it ended.
    pub fn set_stuck_from(&self, from: Option<Instant>) {
        *self.stuck_from.lock().unwrap_or_else(|e| e.into_inner()) = from;
    }

    pub fn is_healthy(&self) -> bool {
        let stuck_from = *self.stuck_from.lock().unwrap_or_else(|e| e.into_inner());
        self.healthy.load(Ordering::Relaxed) && stuck_from.is_none_or(|from| Instant::now() < from)
    }
}

struct Shared {
    registry: Registry,
    probes: Arc<Probes>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}; choose another --listen address")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds now (so a taken port fails the start) and serves in the background.
pub async fn serve(addr: SocketAddr, registry: Registry, probes: Arc<Probes>) -> Result<SocketAddr, ListenError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })?;
    let bound = listener.local_addr().map_err(|source| ListenError { addr, source })?;
    let shared = Arc::new(Shared { registry, probes });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], "encoding failed".into()),
    }
}

fn probe(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    probe(shared.probes.is_healthy())
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    probe(shared.probes.ready.load(Ordering::Relaxed))
}
