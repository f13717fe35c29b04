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
    /// Throttle each request with probability 1/2, independently (most SDK calls get
    /// through on a retry).
    ThrottleHalf = 1,
    /// Throttle everything (an outage: calls fail after the SDK's retries).
    ThrottleAll = 2,
    /// Answer each request with HTTP 500 InternalFailure with probability 1/2, independently.
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
    /// Delayed requests whose delay is over (each then goes on upstream).
    delays_done: AtomicU64,
    /// GetRecords calls refused by the read limit.
    reads_throttled: AtomicU64,
    /// SubscribeToShard events given the child shards by [`FaultProxy::end_shard`].
    children_sent: AtomicU64,
}

/// The shards [`FaultProxy::end_shard`] ended, and the children of each.
type Ends = Arc<Mutex<std::collections::HashMap<String, Vec<String>>>>;

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
    ends: Ends,
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
        let ends: Ends = Arc::default();
        let upstream = upstream.to_string();
        let (m, c, r, l, e) = (
            mode.clone(),
            counters.clone(),
            rules.clone(),
            limit.clone(),
            ends.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (m, c, upstream, r, l, e) = (
                    m.clone(),
                    c.clone(),
                    upstream.clone(),
                    r.clone(),
                    l.clone(),
                    e.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &m, &c, &r, &l, &e).await;
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
            ends,
            task,
        })
    }

    /// Makes SubscribeToShard on `shard` end as Kinesis ends a closed shard's subscription:
    /// the first event at the tip (no records, 0 ms behind) carries `children` and no
    /// continuation sequence number, and the subscription ends after it. kinesis-mock never
    /// sends the children; call this once the shard is closed (every record put before the
    /// close is then delivered before the tip is reached).
    pub fn end_shard(&self, shard: &str, children: &[String]) {
        if let Ok(mut ends) = self.ends.lock() {
            ends.insert(shard.to_string(), children.to_vec());
        }
    }

    /// Subscription events given their shard's children by [`FaultProxy::end_shard`].
    pub fn children_sent(&self) -> u64 {
        self.counters.children_sent.load(Ordering::SeqCst)
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
    ends: &Ends,
) -> std::io::Result<()> {
    let (injected, forwarded) = (&counters.injected, &counters.forwarded);
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
    let m = mode.load(Ordering::SeqCst);
    let fail = !delayed
        && match m {
            // A coin per request: a strict alternation (every second request by one
            // counter) starved whichever caller retried right after another's success.
            1 | 3 => fastrand::bool(),
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
    if head
        .to_ascii_lowercase()
        .contains("x-amz-target: kinesis_20131202.subscribetoshard")
    {
        let body = &request[head_len.min(request.len())..];
        let shard = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("ShardId")?.as_str().map(String::from))
            .unwrap_or_default();
        return subscription::relay(up, client, &shard, ends, &counters.children_sent).await;
    }
    // Streamed as it comes.
    let bytes = tokio::io::copy(&mut up, &mut client).await?;
    if let Some(id) = admitted
        && let Ok(mut guard) = limit.lock()
        && let Some(limit) = guard.as_mut()
    {
        limit.answered(id, bytes);
    }
    client.shutdown().await
}

/// SubscribeToShard's answer relayed event by event, so that a shard ended by
/// [`FaultProxy::end_shard`] ends as Kinesis ends it.
mod subscription {
    use std::sync::atomic::{AtomicU64, Ordering};

    use aws_smithy_types::event_stream::{HeaderValue, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::Ends;

    /// The body of an HTTP/1.1 answer as it comes, chunked or not.
    struct Body {
        up: TcpStream,
        raw: Vec<u8>,
        chunked: bool,
        /// Bytes of the current chunk still to come.
        left: usize,
        done: bool,
    }

    impl Body {
        async fn fill(&mut self) -> std::io::Result<bool> {
            let mut chunk = [0u8; 16384];
            let n = self.up.read(&mut chunk).await?;
            self.raw.extend_from_slice(&chunk[..n]);
            Ok(n > 0)
        }

        /// Appends the next body bytes to `out`; `false` at the body's end.
        async fn next(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
            if self.done {
                return Ok(false);
            }
            if !self.chunked {
                if self.raw.is_empty() && !self.fill().await? {
                    return Ok(false);
                }
                out.append(&mut self.raw);
                return Ok(true);
            }
            loop {
                if self.left > 0 {
                    if self.raw.is_empty() && !self.fill().await? {
                        return Ok(false);
                    }
                    let n = self.left.min(self.raw.len());
                    out.extend(self.raw.drain(..n));
                    self.left -= n;
                    return Ok(true);
                }
                // A chunk's size line (after the previous chunk's CRLF).
                let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    if !self.fill().await? {
                        return Ok(false);
                    }
                    continue;
                };
                let line = String::from_utf8_lossy(&self.raw[..end]).trim().to_string();
                self.raw.drain(..end + 2);
                if line.is_empty() {
                    continue;
                }
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                if size == 0 {
                    self.done = true;
                    return Ok(false);
                }
                self.left = size;
            }
        }
    }

    /// The event with `children` and no continuation, if `message` is an event at the tip
    /// (no records, 0 ms behind) of a shard that is to end.
    pub(super) fn ended(message: &Message, children: &[String], parent: &str) -> Option<Message> {
        let event = message.headers().iter().any(|h| {
            h.name().as_str() == ":event-type"
                && matches!(h.value(), HeaderValue::String(s) if s.as_str() == "SubscribeToShardEvent")
        });
        if !event {
            return None;
        }
        let mut payload: serde_json::Value = serde_json::from_slice(message.payload()).ok()?;
        let at_tip = payload.get("Records")?.as_array()?.is_empty()
            && payload.get("MillisBehindLatest")?.as_i64()? == 0;
        if !at_tip {
            return None;
        }
        let object = payload.as_object_mut()?;
        object.remove("ContinuationSequenceNumber");
        object.insert(
            "ChildShards".into(),
            children
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "ShardId": c,
                        "ParentShards": [parent],
                        "HashKeyRange": {"StartingHashKey": "0",
                            "EndingHashKey": "340282366920938463463374607431768211455"},
                    })
                })
                .collect(),
        );
        let payload = serde_json::to_vec(&payload).ok()?;
        Some(Message::new_from_parts(message.headers().to_vec(), payload))
    }

    /// Relays the answer from `up` to `client`, frame by frame; after an event given
    /// `shard`'s children, the subscription ends.
    pub(super) async fn relay(
        mut up: TcpStream,
        mut client: TcpStream,
        shard: &str,
        ends: &Ends,
        sent: &AtomicU64,
    ) -> std::io::Result<()> {
        // The head, passed on with the body delimited by the connection's close.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = up.read(&mut chunk).await?;
            if n == 0 {
                client.write_all(&raw).await?;
                return client.shutdown().await;
            }
            raw.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let lower = head.to_ascii_lowercase();
        if !lower.starts_with("http/1.1 200") {
            client.write_all(&raw).await?;
            tokio::io::copy(&mut up, &mut client).await?;
            return client.shutdown().await;
        }
        let chunked = lower.contains("transfer-encoding: chunked");
        let mut out_head = String::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let l = line.to_ascii_lowercase();
            if !l.starts_with("transfer-encoding:") && !l.starts_with("content-length:") {
                out_head.push_str(line);
                out_head.push_str("\r\n");
            }
        }
        out_head.push_str("\r\n");
        client.write_all(out_head.as_bytes()).await?;
        let mut body = Body {
            raw: raw.split_off(head_end),
            up,
            chunked,
            left: 0,
            done: false,
        };
        let mut frames = Vec::new();
        loop {
            // Every whole frame buffered.
            while frames.len() >= 4 {
                let len = u32::from_be_bytes([frames[0], frames[1], frames[2], frames[3]]) as usize;
                if len < 16 {
                    // No event stream: pass the rest on as it comes.
                    client.write_all(&frames).await?;
                    frames.clear();
                    while body.next(&mut frames).await? {
                        client.write_all(&frames).await?;
                        frames.clear();
                    }
                    return client.shutdown().await;
                }
                if frames.len() < len {
                    break;
                }
                let frame: Vec<u8> = frames.drain(..len).collect();
                let children = ends.lock().ok().and_then(|e| e.get(shard).cloned());
                let rewritten = children.and_then(|children| {
                    let message =
                        aws_smithy_eventstream::frame::read_message_from(&frame[..]).ok()?;
                    ended(&message, &children, shard)
                });
                if let Some(message) = rewritten {
                    let mut bytes = Vec::new();
                    if aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).is_ok()
                    {
                        client.write_all(&bytes).await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                        // As Kinesis: the subscription of an ended shard ends.
                        return client.shutdown().await;
                    }
                }
                client.write_all(&frame).await?;
            }
            if !body.next(&mut frames).await? {
                client.write_all(&frames).await?;
                return client.shutdown().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadLimit;

    #[test]
    fn only_an_event_at_the_tip_of_an_ended_shard_gets_its_children() {
        use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
        let event = |payload: serde_json::Value| {
            Message::new(serde_json::to_vec(&payload).unwrap_or_default())
                .add_header(Header::new(
                    ":message-type",
                    HeaderValue::String("event".into()),
                ))
                .add_header(Header::new(
                    ":event-type",
                    HeaderValue::String("SubscribeToShardEvent".into()),
                ))
        };
        let children = vec!["shardId-000000000001".to_string()];
        let tip = event(serde_json::json!({"Records": [], "MillisBehindLatest": 0,
            "ContinuationSequenceNumber": "49"}));
        let ended = super::subscription::ended(&tip, &children, "shardId-000000000000");
        let payload: serde_json::Value = ended
            .map(|m| serde_json::from_slice(m.payload()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(payload["ChildShards"][0]["ShardId"], "shardId-000000000001");
        assert_eq!(
            payload["ChildShards"][0]["ParentShards"][0],
            "shardId-000000000000"
        );
        assert!(
            payload.get("ContinuationSequenceNumber").is_none(),
            "{payload}"
        );
        let with_records = event(serde_json::json!({"Records": [{"SequenceNumber": "1"}],
            "MillisBehindLatest": 0, "ContinuationSequenceNumber": "49"}));
        assert!(super::subscription::ended(&with_records, &children, "p").is_none());
        let behind = event(serde_json::json!({"Records": [], "MillisBehindLatest": 5}));
        assert!(super::subscription::ended(&behind, &children, "p").is_none());
    }
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
