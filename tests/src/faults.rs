//! A fault-injecting HTTP proxy for the DynamoDB or Kinesis endpoint: the emulators never
//! throttle or fail, so tests put this between a worker and the server. It listens on
//! 127.0.0.1 and forwards each request on a fresh upstream connection, or answers it with the
//! service's throttling error (told apart by the `X-Amz-Target` header) or a 500, as its mode
//! says.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward everything.
    Pass = 0,
    /// Throttle every second request (the SDK's retries get through).
    ThrottleHalf = 1,
    /// Throttle everything (an outage: calls fail after the SDK's retries).
    ThrottleAll = 2,
    /// Answer every second request with HTTP 500 InternalFailure.
    ServerErrorHalf = 3,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    mode: Arc<AtomicU8>,
    injected: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const REPLY: &str = "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-{json}\r\n\
x-amzn-RequestId: fault-proxy\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{body}";
const DYNAMODB_THROTTLE: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput (injected by the test proxy)"}"#;
const KINESIS_THROTTLE: &str = r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected by the test proxy)"}"#;
const SERVER_ERROR: &str = r#"{"__type":"InternalFailure","message":"injected by the test proxy"}"#;

/// The error reply for a request whose lowercased head is `head`.
fn fault_reply(head: &str, server_error: bool) -> String {
    let kinesis = head.contains("x-amz-target: kinesis_");
    let json = if kinesis { "1.1" } else { "1.0" };
    let (status, body) = match (server_error, kinesis) {
        (true, _) => ("500 Internal Server Error", SERVER_ERROR),
        (false, true) => ("400 Bad Request", KINESIS_THROTTLE),
        (false, false) => ("400 Bad Request", DYNAMODB_THROTTLE),
    };
    REPLY
        .replace("{status}", status)
        .replace("{json}", json)
        .replace("{len}", &body.len().to_string())
        .replace("{body}", body)
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`host:port`).
    ///
    /// # Errors
    /// It could not bind a loopback port.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let injected = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (m, i, f) = (mode.clone(), injected.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (m, i, f, seen, upstream) = (
                    m.clone(),
                    i.clone(),
                    f.clone(),
                    seen.clone(),
                    upstream.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &m, &i, &f, &seen).await;
                });
            }
        });
        Ok(Self {
            endpoint,
            mode,
            injected,
            forwarded,
            task,
        })
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests answered with an injected error so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body).
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf))
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    mode: &AtomicU8,
    injected: &AtomicU64,
    forwarded: &AtomicU64,
    seen: &AtomicU64,
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let n = seen.fetch_add(1, Ordering::SeqCst);
    let m = mode.load(Ordering::SeqCst);
    let fail = match m {
        1 | 3 => n.is_multiple_of(2),
        2 => true,
        _ => false,
    };
    if fail {
        injected.fetch_add(1, Ordering::SeqCst);
        let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
        let reply = fault_reply(&head, m == Mode::ServerErrorHalf as u8);
        client.write_all(reply.as_bytes()).await?;
        return client.shutdown().await;
    }
    forwarded.fetch_add(1, Ordering::SeqCst);
    // One request per upstream connection, closed after the response: no response framing
    // to parse, and the client opens a new connection for its next request.
    let text = String::from_utf8_lossy(&request);
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head_len = head.len() + 4;
    let mut rewritten: Vec<u8> = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .flat_map(|l| [l.as_bytes(), b"\r\n"])
        .flatten()
        .copied()
        .collect();
    rewritten.extend_from_slice(b"Connection: close\r\n\r\n");
    rewritten.extend_from_slice(&request[head_len.min(request.len())..]);
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&rewritten).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    client.write_all(&response).await?;
    client.shutdown().await
}
