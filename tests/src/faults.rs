//! A fault-injecting HTTP proxy for the DynamoDB or Kinesis endpoint: the emulators never
//! throttle or fail, so tests put this between a worker and the server. It listens on
//! 127.0.0.1 and forwards each request on a fresh upstream connection, or answers it with the
//! service's throttling error (told apart by the `X-Amz-Target` header) or a 500, as its mode
//! says.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// What a [`Rule`] does with a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hold the request unanswered until the rule is removed, then close the connection
    /// (a hung call: only the client's own timeout ends it).
    Hang,
    /// Answer HTTP 500 InternalFailure.
    ServerError,
    /// Forward the request after this long (a slow call that lands late).
    Delay(std::time::Duration),
    /// Answer Kinesis's `ResourceNotFoundException` (HTTP 400), as Kinesis does for a shard
    /// it does not (yet, or any more) know.
    NotFound,
}

/// A fault for the requests whose text (head and body, lowercased) contains every one of
/// `contains` (e.g. `x-amz-target: dynamodb_20120810.scan`, or a shard id): checked before
/// the mode.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Substrings, lowercase, that must all appear.
    pub contains: Vec<String>,
    /// What to do.
    pub action: Action,
}

impl Rule {
    /// A rule matching requests that contain every one of `contains` (any case).
    pub fn new(contains: &[&str], action: Action) -> Self {
        Self {
            contains: contains.iter().map(|c| c.to_ascii_lowercase()).collect(),
            action,
        }
    }
}

type Rules = Arc<Mutex<Vec<(u64, Rule)>>>;

/// What the proxy counts.
#[derive(Default)]
struct Counters {
    /// Requests answered with an injected error, or held by a rule.
    injected: AtomicU64,
    /// Requests forwarded.
    forwarded: AtomicU64,
    /// Requests seen by the mode (every second one fails in the half modes).
    seen: AtomicU64,
    /// Delayed requests whose delay is over (each then goes on upstream).
    delays_done: AtomicU64,
    /// GetRecords calls refused by the read limit.
    reads_throttled: AtomicU64,
}

/// Kinesis's read limit of a shard, enforced on every GetRecords through the proxy (put one
/// single-shard stream behind it, and the proxy's limit is that shard's): at most `calls`
/// calls started, and at most `bytes` answered, in any second; a call past either is
/// answered `ProvisionedThroughputExceededException`, as Kinesis does.
#[derive(Debug, Default)]
struct ReadLimit {
    calls: usize,
    bytes: u64,
    /// The calls of the last second: when each started and the bytes of its answer.
    window: std::collections::VecDeque<(std::time::Instant, u64, u64)>,
    next_id: u64,
}

impl ReadLimit {
    /// Admits a call now (its id), or refuses it.
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        while self
            .window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= std::time::Duration::from_secs(1))
        {
            self.window.pop_front();
        }
        let bytes: u64 = self.window.iter().map(|(_, _, b)| b).sum();
        if self.window.len() >= self.calls || bytes >= self.bytes {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.window.push_back((now, id, 0));
        Some(id)
    }

    /// The answer of call `id` was `bytes` long.
    fn answered(&mut self, id: u64, bytes: u64) {
        if let Some(entry) = self.window.iter_mut().find(|(_, i, _)| *i == id) {
            entry.2 = bytes;
        }
    }
}

type Limit = Arc<Mutex<Option<ReadLimit>>>;

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    rules: Rules,
    next_rule: AtomicU64,
    mode: Arc<AtomicU8>,
    counters: Arc<Counters>,
    limit: Limit,
    task: tokio::task::JoinHandle<()>,
}

const REPLY: &str = "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-{json}\r\n\
x-amzn-RequestId: fault-proxy\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n{body}";
const DYNAMODB_THROTTLE: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput (injected by the test proxy)"}"#;
const KINESIS_THROTTLE: &str = r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected by the test proxy)"}"#;
const SERVER_ERROR: &str = r#"{"__type":"InternalFailure","message":"injected by the test proxy"}"#;
const KINESIS_NOT_FOUND: &str = r#"{"__type":"ResourceNotFoundException","message":"Shard not found (injected by the test proxy)"}"#;

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
        let counters = Arc::new(Counters::default());
        let rules: Rules = Arc::default();
        let limit: Limit = Arc::default();
        let upstream = upstream.to_string();
        let (m, c, r, l) = (mode.clone(), counters.clone(), rules.clone(), limit.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (m, c, upstream, r, l) =
                    (m.clone(), c.clone(), upstream.clone(), r.clone(), l.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &m, &c, &r, &l).await;
                });
            }
        });
        Ok(Self {
            endpoint,
            rules,
            next_rule: AtomicU64::new(0),
            mode,
            counters,
            limit,
            task,
        })
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Adds a rule; returns its id for [`FaultProxy::remove`].
    pub fn add(&self, rule: Rule) -> u64 {
        let id = self.next_rule.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut rules) = self.rules.lock() {
            rules.push((id, rule));
        }
        id
    }

    /// Removes a rule (requests it holds are then closed unanswered).
    pub fn remove(&self, id: u64) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.retain(|(i, _)| *i != id);
        }
    }

    /// Requests answered with an injected error so far.
    pub fn injected(&self) -> u64 {
        self.counters.injected.load(Ordering::SeqCst)
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::SeqCst)
    }

    /// Enforces Kinesis's read limit of one shard on every GetRecords through the proxy:
    /// `calls` a second and `bytes` a second (5 and 2,000,000 in Kinesis); see [`ReadLimit`].
    pub fn limit_reads(&self, calls: usize, bytes: u64) {
        if let Ok(mut limit) = self.limit.lock() {
            *limit = Some(ReadLimit {
                calls,
                bytes,
                ..ReadLimit::default()
            });
        }
    }

    /// GetRecords calls refused by [`FaultProxy::limit_reads`] so far.
    pub fn reads_throttled(&self) -> u64 {
        self.counters.reads_throttled.load(Ordering::SeqCst)
    }

    /// Delayed requests whose delay is over (each then goes on upstream).
    pub fn delays_done(&self) -> u64 {
        self.counters.delays_done.load(Ordering::SeqCst)
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
    counters: &Counters,
    rules: &Rules,
    limit: &Limit,
) -> std::io::Result<()> {
    let (injected, forwarded, seen) = (&counters.injected, &counters.forwarded, &counters.seen);
    let Some(request) = read_request(&mut client).await? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let matching = |rules: &Rules| -> Option<(u64, Action)> {
        let rules = rules.lock().ok()?;
        rules
            .iter()
            .find(|(_, r)| r.contains.iter().all(|c| text.contains(c.as_str())))
            .map(|(id, r)| (*id, r.action))
    };
    let mut delayed = false;
    if let Some((id, action)) = matching(rules) {
        injected.fetch_add(1, Ordering::SeqCst);
        match action {
            Action::Delay(d) => {
                tokio::time::sleep(d).await;
                counters.delays_done.fetch_add(1, Ordering::SeqCst);
                delayed = true;
            }
            Action::Hang => {
                // Until the rule goes; then the connection closes with no answer.
                while rules
                    .lock()
                    .map(|r| r.iter().any(|(i, _)| *i == id))
                    .unwrap_or(false)
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                return Ok(());
            }
            Action::ServerError => {
                client
                    .write_all(fault_reply(&text, true).as_bytes())
                    .await?;
                return client.shutdown().await;
            }
            Action::NotFound => {
                let reply = REPLY
                    .replace("{status}", "400 Bad Request")
                    .replace("{json}", "1.1")
                    .replace("{len}", &KINESIS_NOT_FOUND.len().to_string())
                    .replace("{body}", KINESIS_NOT_FOUND);
                client.write_all(reply.as_bytes()).await?;
                return client.shutdown().await;
            }
        }
    }
    // The shard's read limit, for GetRecords: `Some(None)` refused, `Some(Some(id))` admitted.
    let decision = if text.contains("x-amz-target: kinesis_20131202.getrecords") {
        limit
            .lock()
            .ok()
            .and_then(|mut guard| guard.as_mut().map(|l| l.admit(std::time::Instant::now())))
    } else {
        None
    };
    let admitted = match decision {
        Some(None) => {
            counters.reads_throttled.fetch_add(1, Ordering::SeqCst);
            client
                .write_all(fault_reply(&text, false).as_bytes())
                .await?;
            return client.shutdown().await;
        }
        Some(Some(id)) => Some(id),
        None => None,
    };
    let n = seen.fetch_add(1, Ordering::SeqCst);
    let m = mode.load(Ordering::SeqCst);
    let fail = !delayed
        && match m {
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
    // Streamed as it comes: a SubscribeToShard answer is an event stream that lasts minutes.
    let bytes = tokio::io::copy(&mut up, &mut client).await?;
    if let Some(id) = admitted
        && let Ok(mut guard) = limit.lock()
        && let Some(limit) = guard.as_mut()
    {
        limit.answered(id, bytes);
    }
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::ReadLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn the_read_limit_refuses_the_sixth_call_and_the_bytes_past_two_mb_in_a_second() {
        let t0 = Instant::now();
        let mut limit = ReadLimit {
            calls: 5,
            bytes: 2_000_000,
            ..ReadLimit::default()
        };
        for i in 0..5 {
            assert!(limit.admit(t0 + Duration::from_millis(i * 100)).is_some());
        }
        assert_eq!(
            limit.admit(t0 + Duration::from_millis(900)),
            None,
            "a sixth call in a second"
        );
        assert!(
            limit.admit(t0 + Duration::from_millis(1_000)).is_some(),
            "the first call is a second old"
        );
        // A big answer holds the shard back until it is a second old.
        let mut limit = ReadLimit {
            calls: 5,
            bytes: 2_000_000,
            ..ReadLimit::default()
        };
        let id = limit.admit(t0).unwrap_or(u64::MAX);
        limit.answered(id, 2_500_000);
        assert_eq!(
            limit.admit(t0 + Duration::from_millis(500)),
            None,
            "over 2 MB in the second"
        );
        assert!(limit.admit(t0 + Duration::from_millis(1_001)).is_some());
    }
}
