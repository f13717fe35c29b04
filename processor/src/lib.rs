//! The record-processor contract of kinesis-operator, for Rust.
//!
//! The `kinesis-worker` sidecar reads the shards and calls the application over gRPC: the
//! application implements [`v1::record_processor_server::RecordProcessor`] and serves it with
//! [`serve`]; the worker reaches it with [`connect`]. The contract itself is
//! `proto/kinesis_operator/processor/v1/processor.proto` (documented in docs/PROCESSOR.md), so
//! an application can be written in any language with gRPC.
//!
//! The default transport is a Unix domain socket on a volume the two containers share:
//! nothing is exposed outside the pod and there is no port to collide with.

use std::future::Future;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// Generated types, client and server of `kinesis_operator.processor.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("kinesis_operator.processor.v1");
}

pub mod malloc;

pub use tonic;
pub use tonic_health;

/// HTTP/2 flow-control window of each call the app receives (bytes).
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame the app accepts (bytes).
const MAX_FRAME: u32 = 1024 * 1024;

/// The gRPC metadata key of a `ProcessRecords` call that carries its lease's validity: ms
/// since the epoch (the pod's clock, which the worker and the app share) after which the
/// worker may no longer own the shard. [`serve`] refuses a call that arrives later, before
/// any of your code sees it; an app in another language should do the same
/// (docs/PROCESSOR.md, "Fencing your own writes").
pub const LEASE_VALID_UNTIL: &str = "kinesis-lease-valid-until-ms";

/// Has a lease valid until `until_ms` expired at `now_ms`?
fn expired(until_ms: i64, now_ms: i64) -> bool {
    now_ms > until_ms
}

/// The interceptor [`serve`] puts in front of the processor: a call whose
/// [`LEASE_VALID_UNTIL`] has passed is refused with `FAILED_PRECONDITION` (the worker that
/// sent it was paused after its lease check and may have lost the shard since; a call that
/// reaches the app in time goes through).
///
/// # Errors
/// `FAILED_PRECONDITION` for a late call, `INVALID_ARGUMENT` for a value that is not a
/// number.
#[allow(clippy::result_large_err)]
pub fn refuse_after_lease(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let Some(value) = req.metadata().get(LEASE_VALID_UNTIL) else {
        return Ok(req);
    };
    let until: i64 = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            tonic::Status::invalid_argument(format!("{LEASE_VALID_UNTIL} is not a number"))
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if expired(until, now) {
        return Err(tonic::Status::failed_precondition(format!(
            "the call's lease expired {} ms before it reached the app (its worker was paused): not delivered",
            now - until
        )));
    }
    Ok(req)
}

/// The socket the worker and the app share in a pod (the operator mounts an `emptyDir` at
/// `/var/run/kinesis`).
pub const DEFAULT_SOCKET: &str = "/var/run/kinesis/processor.sock";

/// Where the app serves the processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix domain socket: `unix:///path/to.sock` (or a bare absolute path).
    Unix(PathBuf),
    /// TCP: `http://127.0.0.1:50051` (or `127.0.0.1:50051`).
    Tcp(String),
}

/// An address that is neither a Unix socket path nor a TCP address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not parseable.
    #[error(
        "processor address `{0}` is neither a Unix socket (unix:///path/to.sock) nor a TCP address (http://127.0.0.1:50051)"
    )]
    Invalid(String),
}

impl std::str::FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if path.starts_with('/') {
                return Ok(Self::Unix(PathBuf::from(path)));
            }
            return Err(AddressError::Invalid(s.into()));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let uri = if s.starts_with("http://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        match uri.parse::<Uri>() {
            Ok(u) if u.port_u16().is_some() && u.host().is_some() => Ok(Self::Tcp(uri)),
            _ => Err(AddressError::Invalid(s.into())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(u) => f.write_str(u),
        }
    }
}

/// A channel to the app. It connects lazily and reconnects by itself, so the worker may start
/// before the app; an unreachable app shows as an error of each call.
///
/// # Errors
/// Only for an address tonic cannot use.
pub fn connect(address: &Address) -> Result<Channel, tonic::transport::Error> {
    match address {
        Address::Tcp(uri) => Ok(Endpoint::try_from(uri.clone())?.connect_lazy()),
        Address::Unix(path) => {
            let path = path.clone();
            // The URI is not used for a Unix socket but must be valid.
            Ok(
                Endpoint::try_from("http://localhost")?.connect_with_connector_lazy(
                    tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }),
                ),
            )
        }
    }
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket or port could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// Where.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `processor` (and grpc.health.v1, reporting SERVING) on `address` until `shutdown`
/// completes. A stale socket file is replaced; the socket is made accessible to the worker
/// container, which runs as another user.
///
/// # Errors
/// [`ServeError::Bind`] when the address cannot be bound; [`ServeError::Transport`].
pub async fn serve<P>(
    address: &Address,
    processor: P,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    P: v1::record_processor_server::RecordProcessor,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<v1::record_processor_server::RecordProcessorServer<P>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // A batch is one message of up to a few MB on a local socket: windows that hold one,
    // and frames of up to 1 MiB, let the worker send it without waiting for window updates
    // every 64 KiB or cutting it into 16 KiB frames (fewer wake-ups and syscalls on both
    // sides; docs/BENCHMARKS.md).
    let router = Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .add_service(health)
        .add_service(
            v1::record_processor_server::RecordProcessorServer::with_interceptor(
                processor,
                refuse_after_lease as fn(_) -> _,
            ),
        );
    let bind_error = |source| ServeError::Bind {
        address: address.to_string(),
        source,
    };
    match address {
        Address::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(bind_error)?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_error(e)),
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(bind_error)?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                    .map_err(bind_error)?;
            }
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
            let _ = std::fs::remove_file(path);
        }
        Address::Tcp(uri) => {
            let parsed: Uri = uri
                .parse()
                .map_err(|_| bind_error(std::io::Error::other("bad URI")))?;
            let host = parsed.host().unwrap_or("127.0.0.1");
            let port = parsed.port_u16().unwrap_or(50051);
            let listener = tokio::net::TcpListener::bind((host, port))
                .await
                .map_err(bind_error)?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
    }
    Ok(())
}

/// Runs a Rust app's `main`: glibc's malloc tuned for batches ([`malloc::tune_for_batches`],
/// before any thread starts), then `app` to completion on a multi-threaded tokio runtime with
/// every driver enabled. `app` is typically the future of an `async fn` that parses the
/// arguments and calls [`serve`].
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     kinesis_processor::run_app(run())?
/// }
/// ```
///
/// # Errors
/// The runtime could not be built; `app`'s own outcome is the `Ok` value.
pub fn run_app<F: Future>(app: F) -> std::io::Result<F::Output> {
    malloc::tune_for_batches();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(app))
}

impl v1::Checkpoint {
    /// Checkpoint the last record the worker delivered on the shard (`AllDelivered`).
    pub fn all_delivered() -> Self {
        Self {
            target: Some(v1::checkpoint::Target::AllDelivered(v1::AllDelivered {})),
            write_now: false,
        }
    }

    /// Checkpoint up to and including the record at `position` (`UpTo`).
    pub fn up_to(position: v1::RecordPosition) -> Self {
        Self {
            target: Some(v1::checkpoint::Target::UpTo(position)),
            write_now: false,
        }
    }

    /// The same checkpoint, written at once rather than when the worker's policy makes a
    /// write due (one DynamoDB write per answer that asks it).
    pub fn written_now(self) -> Self {
        Self {
            write_now: true,
            ..self
        }
    }
}

impl v1::Record {
    /// Where this record is in its shard: what [`v1::Checkpoint::up_to`] and a partial
    /// failure's `failed_from` name.
    pub fn position(&self) -> v1::RecordPosition {
        v1::RecordPosition {
            sequence_number: self.sequence_number.clone(),
            sub_sequence_number: self.sub_sequence_number,
        }
    }
}

/// Completes on SIGTERM (Kubernetes stopping the container) or SIGINT (Ctrl-C): the
/// `shutdown` future for [`serve`], and what the project's binaries wait on.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_arrives_after_its_lease_is_refused() {
        let with = |v: &str| {
            let mut r = tonic::Request::new(());
            if let Ok(v) = v.parse() {
                r.metadata_mut().insert(LEASE_VALID_UNTIL, v);
            }
            refuse_after_lease(r).map(drop).map_err(|e| e.code())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        assert_eq!(with(&(now + 60_000).to_string()), Ok(()));
        assert_eq!(
            with(&(now - 1_000).to_string()),
            Err(tonic::Code::FailedPrecondition)
        );
        assert_eq!(with("soon"), Err(tonic::Code::InvalidArgument));
        assert_eq!(
            refuse_after_lease(tonic::Request::new(()))
                .map(drop)
                .map_err(|e| e.code()),
            Ok(())
        );
        assert!(expired(10, 11) && !expired(10, 10));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:///var/run/kinesis/processor.sock"
                .parse::<Address>()
                .ok(),
            Some(Address::Unix(DEFAULT_SOCKET.into()))
        );
        assert_eq!(
            "/tmp/a.sock".parse::<Address>().ok(),
            Some(Address::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:50051".parse::<Address>().ok(),
            Some(Address::Tcp("http://127.0.0.1:50051".into()))
        );
        assert_eq!(
            "http://localhost:9".parse::<Address>().ok(),
            Some(Address::Tcp("http://localhost:9".into()))
        );
        for bad in ["unix:relative.sock", "localhost", "http://", ""] {
            let err = bad.parse::<Address>().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("unix:///path")),
                "{bad}: {err:?}"
            );
        }
    }
}
