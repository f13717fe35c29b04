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
        .add_service(v1::record_processor_server::RecordProcessorServer::new(
            processor,
        ));
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
