//! The admin HTTP port: `/metrics`, `/healthz`, `/readyz` and `/drain`.
//!
//! In a pod, `/drain` is the app container's preStop hook: the worker hands its leases over
//! (letting the app checkpoint) while the app still serves, and answers when done.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::{Notify, watch};

use crate::lease::table::LeaseTable;
use crate::metrics::Metrics;
use crate::pipeline::App;

/// Starts and observes a drain.
#[derive(Debug, Clone)]
pub struct Drain {
    requested: Arc<Notify>,
    done: watch::Receiver<bool>,
}

impl Drain {
    /// A drain switch, and the sender that reports it finished.
    pub fn new() -> (Self, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            Self {
                requested: Arc::new(Notify::new()),
                done: rx,
            },
            tx,
        )
    }

    /// Completes once a drain was requested (by `/drain`).
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    async fn request_and_wait(&self) {
        self.requested.notify_one();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    table: Option<LeaseTable>,
    app: Option<App>,
    drain: Drain,
}

async fn metrics_page(State(s): State<AdminState>) -> impl IntoResponse {
    let body = s.metrics.encode(s.table.as_ref().map(LeaseTable::counters));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if *s.drain.done.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "drained\n".into());
    }
    match &s.app {
        None => (StatusCode::OK, "ok\n".into()),
        Some(app) if app.is_ready().await => (StatusCode::OK, "ok: the app answers\n".into()),
        Some(app) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the app at {} does not answer its gRPC health check (grpc.health.v1) with SERVING\n",
                app.address()
            ),
        ),
    }
}

async fn drain(State(s): State<AdminState>) -> &'static str {
    s.drain.request_and_wait().await;
    "drained: every lease handed over or released\n"
}

/// Serves the admin endpoints on `address` until the process ends.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    table: Option<LeaseTable>,
    app: Option<App>,
    drain_switch: Drain,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let state = AdminState {
        metrics,
        table,
        app,
        drain: drain_switch,
    };
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/drain", get(drain).post(drain))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(address).await?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin HTTP server failed");
        }
    }))
}
