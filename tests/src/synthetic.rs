//! A synthetic Kinesis endpoint for CPU benchmarks: it answers `ListShards`,
//! `GetShardIterator` and `GetRecords` for one stream of `shards` shards, each holding
//! `per_shard` generated records, as fast as it can encode them.
//!
//! kinesis-mock serves about 9,000 100-byte records a second, so a worker reading from it
//! spends most of a benchmark waiting, and its per-record CPU is lost in the ticks of idle
//! polling. This server lets the worker read at its own speed, so its CPU per record can be
//! measured; it is a benchmark harness, never used by a test of behaviour.
//!
//! What it models: `GetRecords` answers in the content type of the request. CBOR answers
//! take the shapes real Kinesis uses (`Data` a byte string, timestamps tag 1 + epoch
//! milliseconds; maps and arrays definite or, with [`Shape::Indefinite`], indefinite-length,
//! as Jackson-based services write them); JSON answers base64 `Data` and float seconds, as
//! real Kinesis and the SDK do. Pages hold up to `page` records (or the request's `Limit`),
//! `MillisBehindLatest` is 0 once a shard's records are all served. What it does not model:
//! throttling (5 calls and 2 MB per shard per second), resharding, errors, other calls.
//! It listens on 127.0.0.1 only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Lengths of CBOR maps and arrays in the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Lengths written in each head.
    Definite,
    /// `0xbf … 0xff` / `0x9f … 0xff`.
    Indefinite,
}

/// What the stream holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// Open shards.
    pub shards: u32,
    /// Records in each shard.
    pub per_shard: u64,
    /// Bytes of data of each record.
    pub record_size: usize,
    /// Most records per page (real Kinesis: 10,000).
    pub page: u64,
    /// CBOR lengths.
    pub shape: Shape,
    /// Distinct partition keys.
    pub keys: u64,
}

struct State {
    config: Config,
    records_served: AtomicU64,
    calls: AtomicU64,
    data: Vec<u8>,
    /// Closed: every shard looks empty (so a benchmark can start its clock with the worker
    /// holding its leases and nothing read yet).
    open: AtomicBool,
}

/// A running synthetic endpoint; stops when dropped.
pub struct SyntheticKinesis {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SyntheticKinesis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SyntheticKinesis {
    /// Starts the server on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let data = pageview(config.record_size);
        let state = Arc::new(State {
            config,
            records_served: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            data,
            open: AtomicBool::new(true),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            state,
            task,
        })
    }

    /// Records served in GetRecords answers so far.
    pub fn records_served(&self) -> u64 {
        self.state.records_served.load(Ordering::Relaxed)
    }

    /// Opens (`true`) or closes the stream: while closed, every GetRecords answers an empty
    /// page at the tip, whatever the iterator.
    pub fn set_open(&self, open: bool) {
        self.state.open.store(open, Ordering::SeqCst);
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::Relaxed)
    }
}

/// The sequence number of record `pos` of shard `shard` (56 digits, as real ones).
pub fn sequence_number(shard: u32, pos: u64) -> String {
    format!("4959{shard:012}{pos:040}")
}

fn position_of(seq: &str) -> Option<u64> {
    seq.get(16..)?.parse().ok()
}

fn shard_id(shard: u32) -> String {
    format!("shardId-{shard:012}")
}

fn iterator(shard: u32, pos: u64) -> String {
    format!("synth-{shard}-{pos}")
}

/// The shard and position of an iterator found anywhere in `body` (CBOR or JSON).
fn parse_iterator(body: &[u8]) -> Option<(u32, u64)> {
    let at = body.windows(6).position(|w| w == b"synth-")? + 6;
    let rest = &body[at..];
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .unwrap_or(rest.len());
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (shard, pos) = text.split_once('-')?;
    Some((shard.parse().ok()?, pos.parse().ok()?))
}

/// `Limit` of a CBOR request: the text `Limit` followed by an unsigned integer.
fn cbor_limit(body: &[u8]) -> Option<u64> {
    let at = body.windows(6).position(|w| w == b"\x65Limit")? + 6;
    let rest = body.get(at..)?;
    let (&b, tail) = rest.split_first()?;
    let n = match b {
        0x00..=0x17 => u64::from(b),
        0x18 => u64::from(*tail.first()?),
        0x19 => u64::from(u16::from_be_bytes(tail.get(..2)?.try_into().ok()?)),
        0x1a => u64::from(u32::from_be_bytes(tail.get(..4)?.try_into().ok()?)),
        _ => return None,
    };
    Some(n)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        body,
    )
        .into_response()
}

fn json(value: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
        value.to_string(),
    )
        .into_response()
}

async fn answer(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cbor = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("cbor"));
    match target.rsplit('.').next() {
        Some("ListShards") => list_shards(&state.config),
        Some("GetShardIterator") => get_shard_iterator(&state.config, &body),
        Some("GetRecords") => get_records(&state, &body, cbor),
        _ => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "the synthetic Kinesis answers ListShards, GetShardIterator and GetRecords only",
        ),
    }
}

fn list_shards(c: &Config) -> Response {
    let step = u128::MAX / u128::from(c.shards.max(1));
    let shards: Vec<serde_json::Value> = (0..c.shards)
        .map(|i| {
            let start = step * u128::from(i);
            let end = if i + 1 == c.shards {
                u128::MAX
            } else {
                start + step - 1
            };
            serde_json::json!({
                "ShardId": shard_id(i),
                "HashKeyRange": {
                    "StartingHashKey": start.to_string(),
                    "EndingHashKey": end.to_string(),
                },
                "SequenceNumberRange": { "StartingSequenceNumber": sequence_number(i, 0) },
            })
        })
        .collect();
    json(&serde_json::json!({ "Shards": shards }))
}

fn get_shard_iterator(c: &Config, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "GetShardIterator: JSON expected",
        );
    };
    let shard = req["ShardId"]
        .as_str()
        .and_then(|s| s.strip_prefix("shardId-"))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| *s < c.shards);
    let Some(shard) = shard else {
        return error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            "no such shard",
        );
    };
    let at = req["StartingSequenceNumber"].as_str().and_then(position_of);
    let pos = match (req["ShardIteratorType"].as_str(), at) {
        (Some("AT_SEQUENCE_NUMBER"), Some(p)) => p,
        (Some("AFTER_SEQUENCE_NUMBER"), Some(p)) => p + 1,
        (Some("LATEST"), _) => c.per_shard,
        _ => 0,
    };
    json(&serde_json::json!({ "ShardIterator": iterator(shard, pos) }))
}

fn get_records(state: &State, body: &[u8], cbor: bool) -> Response {
    let c = &state.config;
    let Some((shard, pos)) = parse_iterator(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidArgumentException",
            "the shard iterator is not one of this server's",
        );
    };
    let limit = if cbor {
        cbor_limit(body)
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["Limit"].as_u64())
    };
    let n = if state.open.load(Ordering::SeqCst) {
        c.page
            .min(limit.unwrap_or(c.page))
            .min(c.per_shard.saturating_sub(pos))
    } else {
        0
    };
    let next = iterator(shard, pos + n);
    let behind: u64 = if n > 0 && pos + n < c.per_shard {
        60_000
    } else {
        0
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    state.records_served.fetch_add(n, Ordering::Relaxed);
    let records = pos..pos + n;
    if cbor {
        let body = cbor_page(state, shard, records, &next, behind, now_ms);
        ([(header::CONTENT_TYPE, "application/x-amz-cbor-1.1")], body).into_response()
    } else {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(&state.data);
        let records: Vec<serde_json::Value> = records
            .map(|p| {
                serde_json::json!({
                    "SequenceNumber": sequence_number(shard, p),
                    "ApproximateArrivalTimestamp": now_ms as f64 / 1000.0,
                    "Data": data,
                    "PartitionKey": format!("k{}", p % c.keys.max(1)),
                })
            })
            .collect();
        json(&serde_json::json!({
            "Records": records,
            "NextShardIterator": next,
            "MillisBehindLatest": behind,
        }))
    }
}

/// A CBOR writer for the few shapes the answers need.
struct Cbor {
    out: Vec<u8>,
    shape: Shape,
}

impl Cbor {
    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => self.out.push(m | n as u8),
            24..=0xff => self.out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                self.out.push(m | 25);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.out.push(m | 26);
                self.out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.out.push(m | 27);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
    fn text(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.out.extend_from_slice(b);
    }
    /// Opens a map (major 5) or an array (major 4) of `n` entries.
    fn open(&mut self, major: u8, n: u64) {
        match self.shape {
            Shape::Definite => self.head(major, n),
            Shape::Indefinite => self.out.push((major << 5) | 31),
        }
    }
    fn close(&mut self) {
        if self.shape == Shape::Indefinite {
            self.out.push(0xff);
        }
    }
}

fn cbor_page(
    state: &State,
    shard: u32,
    records: std::ops::Range<u64>,
    next: &str,
    behind: u64,
    now_ms: u64,
) -> Vec<u8> {
    let c = &state.config;
    let mut w = Cbor {
        out: Vec::with_capacity((records.end - records.start) as usize * (c.record_size + 120)),
        shape: c.shape,
    };
    w.open(5, 3);
    w.text("Records");
    w.open(4, records.end - records.start);
    for p in records {
        w.open(5, 4);
        w.text("SequenceNumber");
        w.text(&sequence_number(shard, p));
        w.text("ApproximateArrivalTimestamp");
        w.head(6, 1);
        w.head(0, now_ms);
        w.text("Data");
        w.bytes(&state.data);
        w.text("PartitionKey");
        w.text(&format!("k{}", p % c.keys.max(1)));
        w.close();
    }
    w.close();
    w.text("NextShardIterator");
    w.text(next);
    w.text("MillisBehindLatest");
    w.head(0, behind);
    w.close();
    w.out
}

/// A pageview as the examples read it (`{"client_id":…,"path":"/abc…"}`), padded to `size`
/// bytes; plain letters when `size` is too small for one.
fn pageview(size: usize) -> Vec<u8> {
    let (head, tail) = (br#"{"client_id":"client-7","path":"/"#.as_slice(), br#""}"#);
    let letters = |n: usize| (0..n).map(|i| b'a' + (i % 26) as u8);
    match size.checked_sub(head.len() + tail.len()) {
        Some(pad) => head
            .iter()
            .copied()
            .chain(letters(pad))
            .chain(tail.iter().copied())
            .collect(),
        None => letters(size).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterators_and_limits_are_found_in_either_encoding() {
        assert_eq!(
            parse_iterator(br#"{"ShardIterator":"synth-3-12000","Limit":10}"#),
            Some((3, 12000))
        );
        // CBOR: {"ShardIterator": "synth-2-5", "Limit": 10000}
        let mut w = Cbor {
            out: Vec::new(),
            shape: Shape::Definite,
        };
        w.open(5, 2);
        w.text("ShardIterator");
        w.text("synth-2-5");
        w.text("Limit");
        w.head(0, 10_000);
        assert_eq!(parse_iterator(&w.out), Some((2, 5)));
        assert_eq!(cbor_limit(&w.out), Some(10_000));
        assert_eq!(parse_iterator(b"nothing"), None);
        assert_eq!(
            position_of(&sequence_number(7, 123_456)),
            Some(123_456),
            "{}",
            sequence_number(7, 123_456)
        );
        assert_eq!(sequence_number(7, 1).len(), 56);
    }

    #[test]
    fn records_are_pageviews_of_the_size_asked() {
        for size in [100, 1024] {
            let data = pageview(size);
            assert_eq!(data.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            assert_eq!(
                v["client_id"],
                "client-7",
                "{}",
                String::from_utf8_lossy(&data)
            );
        }
        assert_eq!(pageview(10), b"abcdefghij");
    }
}
