//! The worker's two HTTP listeners.
//!
//! - The **admin port** (`--admin-address`, `0.0.0.0:8080` by default): `/metrics`, `/healthz`,
//!   `/readyz` and `/drained`. Nothing on it changes what the worker does: `/drained` only
//!   *waits* for a drain that something else started, so a request from another pod cannot
//!   stop consumption. A flood from another pod stays cheap: `/readyz` answers from one
//!   health check of the app a second at most, and at most [`DRAINED_WAITERS`] `/drained`
//!   requests wait at once (more get 503 at once).
//! - The **local port** (`--local-admin-address`, `127.0.0.1:8081`; loopback only, the pod's
//!   own network namespace): `POST /drain` starts a drain and answers when it is done. Used by
//!   `kinesis-worker drain` (an exec preStop hook, or by hand) from inside the pod.
//!
//! In a pod the worker drains on SIGTERM; the app container's preStop hook is `GET /drained`,
//! which keeps the app serving until the worker has handed every lease over (the app gets
//! `ShutdownRequested` and may checkpoint). After a drain the worker exits.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
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

    /// Completes once a drain was requested (by the local `POST /drain`).
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    /// Completes once a drain (however started) has finished.
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    async fn request_and_wait(&self) {
        self.requested.notify_one();
        self.finished().await;
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    table: Option<LeaseTable>,
    app: Option<App>,
    drain: Drain,
    /// The app's last health answer and when it came: `/readyz` asks the app at most once
    /// per [`READY_FOR`], however many ask it (a flood from another pod costs the app
    /// nothing).
    ready: Arc<tokio::sync::Mutex<Option<(std::time::Instant, bool)>>>,
    /// `/drained` long-polls at most [`DRAINED_WAITERS`] at once (the kubelet's preStop hook
    /// needs one); more are refused at once.
    waiters: Arc<tokio::sync::Semaphore>,
}

/// How long one health answer of the app serves `/readyz`.
const READY_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// `/drained` requests held open at once, at most.
pub const DRAINED_WAITERS: usize = 16;

/// The app's readiness, from a health answer at most [`READY_FOR`] old (one check at a
/// time: concurrent callers wait for it and share it).
async fn app_ready(s: &AdminState, app: &App) -> bool {
    let mut last = s.ready.lock().await;
    if let Some((at, ready)) = *last
        && at.elapsed() < READY_FOR
    {
        return ready;
    }
    let ready = app.is_ready().await;
    *last = Some((std::time::Instant::now(), ready));
    ready
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
        Some(app) if app_ready(&s, app).await => (StatusCode::OK, "ok: the app answers\n".into()),
        Some(app) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the app at {} does not answer its gRPC health check (grpc.health.v1) with SERVING\n",
                app.address()
            ),
        ),
    }
}

/// Waits for a drain started elsewhere (SIGTERM, the local `/drain`); starts nothing.
async fn drained(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    let Ok(_permit) = s.waiters.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many /drained requests waiting already\n",
        );
    };
    s.drain.finished().await;
    (
        StatusCode::OK,
        "drained: every lease handed over or released\n",
    )
}

/// `/drained` under any number of leading slashes; anything else is not found.
async fn kubelet_drained(
    State(s): State<AdminState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> (StatusCode, &'static str) {
    if method == axum::http::Method::GET && uri.path().trim_start_matches('/') == "drained" {
        return drained(State(s)).await;
    }
    (StatusCode::NOT_FOUND, "not found\n")
}

async fn drain(State(s): State<AdminState>) -> &'static str {
    s.drain.request_and_wait().await;
    "drained: every lease handed over or released\n"
}

/// The running listeners; [`Admin::stop`] lets answers in flight (a waiting `/drained`)
/// finish first.
#[derive(Debug)]
pub struct Admin {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Admin {
    /// Stops both listeners after the requests in flight are answered.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The local port must stay inside the host (or pod): it can stop consumption.
    #[error(
        "the local admin address {0} is not a loopback address: /drain stops consumption, so it listens on 127.0.0.1 or [::1] only"
    )]
    NotLoopback(SocketAddr),
    /// An address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn spawn(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin HTTP server failed");
        }
    })
}

async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind { address, source })
}

/// Serves the admin port on `address` and the local drain port on `local` (which must be a
/// loopback address) until [`Admin::stop`].
///
/// # Errors
/// [`AdminError::NotLoopback`] for a `local` address others could reach;
/// [`AdminError::Bind`] when an address cannot be bound.
pub async fn serve(
    address: SocketAddr,
    local: SocketAddr,
    metrics: Arc<Metrics>,
    table: Option<LeaseTable>,
    app: Option<App>,
    drain_switch: Drain,
) -> Result<Admin, AdminError> {
    if !local.ip().is_loopback() {
        return Err(AdminError::NotLoopback(local));
    }
    let state = AdminState {
        metrics,
        table,
        app,
        drain: drain_switch,
        ready: Arc::default(),
        waiters: Arc::new(tokio::sync::Semaphore::new(DRAINED_WAITERS)),
    };
    let public = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/drained", get(drained))
        // The kubelet of Kubernetes 1.20 asks a preStop HTTP hook for "/" + its path, so
        // `//drained`: a 404 there would end the hook at once and stop the app before the
        // hand-over.
        .fallback(kubelet_drained)
        .with_state(state.clone());
    let private = Router::new().route("/drain", post(drain)).with_state(state);
    let (stop, stopped) = watch::channel(false);
    let public_listener = bind(address).await?;
    let local_listener = bind(local).await?;
    Ok(Admin {
        stop,
        tasks: vec![
            spawn(public_listener, public, stopped.clone()),
            spawn(local_listener, private, stopped),
        ],
    })
}

/// Asks the worker whose local admin port is `address` to drain (`POST /drain`) and waits
/// for its answer: the `kinesis-worker drain` command.
///
/// # Errors
/// The worker could not be reached, or answered with an error status.
pub async fn request_drain(address: SocketAddr) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to the worker's local admin port {address}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::post("/drain")
        .header(hyper::header::HOST, address.to_string())
        .body(Empty::<prost::bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if !status.is_success() {
        anyhow::bail!("{address} answered {status}: {text}");
    }
    Ok(text)
}
