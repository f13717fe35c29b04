//! The reader on our GetRecords client against a scripted HTTP server on 127.0.0.1, for the
//! answers the local Kinesis server never gives: throttling, an expired iterator, a JSON error
//! body on a CBOR request, an unreadable page, an HTML 500, a missing stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use minicbor::Encoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::aws::{AwsSettings, GetRecordsClients};
use crate::lease::checkpoint::Checkpoint;
use crate::lease::discovery::StreamRef;
use crate::records::reader::{Batch, ReadError, ReaderConfig, ShardReader};
use crate::records::wire::WireFormat;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    content_type: String,
    authorization: String,
    body: Vec<u8>,
}

/// A canned answer: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or("")
}

/// Serves `answers` in order, one per request (keep-alive), recording each request.
async fn scripted(answers: Vec<Answer>) -> Result<(String, Arc<Mutex<Vec<Seen>>>), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(answers.into_iter()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let len: usize = header(&head, "content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    if let Ok(mut l) = log.lock() {
                        l.push(Seen {
                            target: header(&head, "x-amz-target").to_string(),
                            content_type: header(&head, "content-type").to_string(),
                            authorization: header(&head, "authorization").to_string(),
                            body,
                        });
                    }
                    let next = script.lock().ok().and_then(|mut s| s.next());
                    let (status, ct, body) =
                        next.unwrap_or((500, "text/plain", b"script exhausted".to_vec()));
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).await.is_err()
                        || conn.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((endpoint, seen))
}

const JSON: &str = "application/x-amz-json-1.1";
const CBOR: &str = "application/x-amz-cbor-1.1";

fn iterator(it: &str) -> Answer {
    (
        200,
        JSON,
        format!(r#"{{"ShardIterator":"{it}"}}"#).into_bytes(),
    )
}

fn cbor_error(code: &str) -> Result<Answer, Box<dyn std::error::Error>> {
    let mut e = Encoder::new(Vec::new());
    e.map(2)?
        .str("__type")?
        .str(code)?
        .str("message")?
        .str("scripted")?;
    Ok((400, CBOR, e.into_writer()))
}

fn page(
    records: &[(&str, &[u8])],
    next: Option<&str>,
    children: &[&str],
) -> Result<Answer, Box<dyn std::error::Error>> {
    let mut e = Encoder::new(Vec::new());
    e.begin_map()?.str("Records")?.begin_array()?;
    for (seq, data) in records {
        e.begin_map()?
            .str("Data")?
            .bytes(data)?
            .str("PartitionKey")?
            .str("pk")?
            .str("SequenceNumber")?
            .str(seq)?
            .str("ApproximateArrivalTimestamp")?
            .tag(minicbor::data::Tag::new(1))?
            .u64(1_700_000_000_000)?
            .end()?;
    }
    e.end()?.str("NextShardIterator")?;
    match next {
        Some(n) => e.str(n)?,
        None => e.null()?,
    };
    e.str("MillisBehindLatest")?
        .u64(0)?
        .str("ChildShards")?
        .array(children.len() as u64)?;
    for c in children {
        e.map(1)?.str("ShardId")?.str(c)?;
    }
    e.end()?;
    Ok((200, CBOR, e.into_writer()))
}

async fn reader(endpoint: &str) -> Result<ShardReader, Box<dyn std::error::Error>> {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    let settings = AwsSettings {
        region: Some("us-east-1".into()),
        kinesis_endpoint: Some(endpoint.to_string()),
        ..Default::default()
    };
    let config = ReaderConfig {
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        error_backoff_max: Duration::from_millis(20),
        get_records: Some(settings.get_records_client(&sdk, WireFormat::Cbor, None)?),
        ..ReaderConfig::default()
    };
    Ok(ShardReader::new(
        settings.kinesis(&sdk),
        StreamRef::Name("s".into()),
        "shardId-000000000000",
        Checkpoint::TrimHorizon,
        None,
        config,
    ))
}

fn iterator_of(seen: &Seen) -> String {
    let mut d = minicbor::Decoder::new(&seen.body);
    let _ = d.map();
    let _ = d.str();
    d.str().map(String::from).unwrap_or_default()
}

#[tokio::test]
async fn throttling_expiry_and_bad_answers_are_retried_and_nothing_is_skipped() -> TestResult {
    let (endpoint, seen) = scripted(vec![
        iterator("it-1"),
        // A JSON error body on a CBOR request (real Kinesis does this).
        (400, JSON, br#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded"}"#.to_vec()),
        cbor_error("ExpiredIteratorException")?,
        iterator("it-2"),
        page(&[("100", b"one"), ("101", &[0, 1, 2])], Some("it-3"), &[])?,
        // Unreadable: the same page is read again through the SDK (JSON).
        (200, CBOR, vec![0xbf, 0x67, b'R']),
        (200, JSON, br#"{"Records":[{"SequenceNumber":"102","Data":"dHdv","PartitionKey":"pk"}],"NextShardIterator":"it-4","MillisBehindLatest":0}"#.to_vec()),
        (500, "text/html", b"<html>oops</html>".to_vec()),
        page(&[], None, &["shardId-000000000001"])?,
    ])
    .await?;
    let mut reader = reader(&endpoint).await?;
    let mut got = Vec::new();
    let read = async {
        loop {
            match reader.next_batch().await? {
                Batch::Records { records, .. } => got.extend(records),
                end @ Batch::ShardEnd { .. } => return Ok::<_, ReadError>(end),
            }
        }
    };
    // The reader retries by itself: a wrong turn shows as a call that never ends.
    let end = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| "the reader did not reach the shard's end in 30 s")??;
    let pairs: Vec<(&str, &[u8])> = got
        .iter()
        .map(|r| (&*r.sequence_number, &r.data[..]))
        .collect();
    assert_eq!(
        pairs,
        [
            ("100", &b"one"[..]),
            ("101", &[0u8, 1, 2][..]),
            ("102", &b"two"[..])
        ]
    );
    assert_eq!(got[0].approximate_arrival_ms, Some(1_700_000_000_000));
    assert_eq!(
        end,
        Batch::ShardEnd {
            child_shard_ids: vec!["shardId-000000000001".into()]
        }
    );
    let seen = seen.lock().map_err(|_| "poisoned")?.clone();
    let calls: Vec<(&str, String, &str)> = seen
        .iter()
        .map(|s| {
            let op = s.target.trim_start_matches("Kinesis_20131202.");
            let it = if op == "GetRecords" && s.content_type == CBOR {
                iterator_of(s)
            } else {
                String::new()
            };
            (op, it, s.content_type.as_str())
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("GetShardIterator", String::new(), JSON),
            ("GetRecords", "it-1".into(), CBOR),
            ("GetRecords", "it-1".into(), CBOR),
            ("GetShardIterator", String::new(), JSON),
            ("GetRecords", "it-2".into(), CBOR),
            ("GetRecords", "it-3".into(), CBOR),
            ("GetRecords", String::new(), JSON),
            ("GetRecords", "it-4".into(), CBOR),
            ("GetRecords", "it-4".into(), CBOR),
        ]
    );
    let fallback = seen.get(6).ok_or("no fallback call")?;
    assert!(String::from_utf8_lossy(&fallback.body).contains(r#""ShardIterator":"it-3""#));
    for s in seen.iter().filter(|s| s.content_type == CBOR) {
        assert!(
            s.authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=test/")
                && s.authorization.contains("/us-east-1/kinesis/aws4_request"),
            "{}",
            s.authorization
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_stream_is_reported_not_retried() -> TestResult {
    let (endpoint, seen) = scripted(vec![
        iterator("it-1"),
        cbor_error("ResourceNotFoundException")?,
    ])
    .await?;
    let mut reader = reader(&endpoint).await?;
    let read = tokio::time::timeout(Duration::from_secs(30), reader.next_batch())
        .await
        .map_err(|_| "no answer from the reader in 30 s")?;
    match read {
        Err(ReadError::NotFound { shard_id, .. }) => assert_eq!(shard_id, "shardId-000000000000"),
        other => return Err(format!("expected NotFound, got {other:?}").into()),
    }
    assert_eq!(seen.lock().map_err(|_| "poisoned")?.len(), 2);
    Ok(())
}
