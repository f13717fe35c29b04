//! The pure half of the Lambda adapter: Lambda's Kinesis event built from a batch, the
//! handler's answer read back (partial batch response, error body), and the ids an invocation
//! carries. No I/O here.

use std::cmp::Ordering;
use std::collections::HashSet;

use kinesis_processor::v1;
use serde_json::{Value, json};

use crate::json::push_escaped;

/// The fields every record of a Kinesis event repeats: where the records come from and who
/// invokes the function.
#[derive(Debug, Clone)]
pub struct EventSource {
    event_source_arn: String,
    region: String,
    invoke_identity_arn: String,
    /// The end of each event record, from `"eventName"` to the closing brace, serialized once.
    tail: Vec<u8>,
}

impl EventSource {
    /// The source of the events: `eventSourceARN` (the stream's ARN), `awsRegion` and
    /// `invokeIdentityArn` of every record.
    pub fn new(
        event_source_arn: impl Into<String>,
        region: impl Into<String>,
        invoke_identity_arn: impl Into<String>,
    ) -> Self {
        let event_source_arn = event_source_arn.into();
        let region = region.into();
        let invoke_identity_arn = invoke_identity_arn.into();
        let mut tail = Vec::with_capacity(
            96 + event_source_arn.len() + region.len() + invoke_identity_arn.len(),
        );
        tail.extend_from_slice(br#""eventName":"aws:kinesis:record","invokeIdentityArn":""#);
        push_escaped(&mut tail, &invoke_identity_arn);
        tail.extend_from_slice(br#"","awsRegion":""#);
        push_escaped(&mut tail, &region);
        tail.extend_from_slice(br#"","eventSourceARN":""#);
        push_escaped(&mut tail, &event_source_arn);
        tail.extend_from_slice(br#""}"#);
        Self {
            event_source_arn,
            region,
            invoke_identity_arn,
            tail,
        }
    }

    /// `eventSourceARN` of each record.
    pub fn event_source_arn(&self) -> &str {
        &self.event_source_arn
    }

    /// `awsRegion` of each record.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// `invokeIdentityArn` of each record.
    pub fn invoke_identity_arn(&self) -> &str {
        &self.invoke_identity_arn
    }
}

/// `approximateArrivalTimestamp`: Lambda gives epoch seconds as a float.
fn arrival_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Lambda's Kinesis event for a batch of `shard_id`, as a JSON value: one event record per
/// [`v1::Record`] (the sub-records of a KPL-aggregated record each get one, sharing the
/// sequence number). The same event as [`kinesis_event_bytes`], which the adapter sends; this
/// form is for inspection and tests.
pub fn kinesis_event(shard_id: &str, records: &[v1::Record], source: &EventSource) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key,
                    "sequenceNumber": r.sequence_number,
                    "data": base64_simd::STANDARD.encode_to_string(&r.data),
                    "approximateArrivalTimestamp": arrival_seconds(r.approximate_arrival_timestamp_ms),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("{shard_id}:{}", r.sequence_number),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": source.invoke_identity_arn,
                "awsRegion": source.region,
                "eventSourceARN": source.event_source_arn,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Lambda's Kinesis event for a batch of `shard_id`, serialized: the body of the invocation
/// (`GET …/invocation/next`).
///
/// # Guarantees
/// - The bytes are UTF-8 JSON that parses to exactly [`kinesis_event`] of the same arguments:
///   `{"Records":[…]}` with one event record per [`v1::Record`], in batch order; `data` in
///   standard base64 with padding; `approximateArrivalTimestamp` in epoch seconds as a float;
///   `eventID` = `<shard_id>:<sequenceNumber>`.
/// - Built in one pass into one buffer sized up front (no intermediate JSON tree): this is
///   the per-batch hot path.
///
/// # Errors
/// None: every input has an event.
pub fn kinesis_event_bytes(
    shard_id: &str,
    records: &[v1::Record],
    source: &EventSource,
) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":""#;
    const SEQUENCE: &[u8] = br#"","sequenceNumber":""#;
    const DATA: &[u8] = br#"","data":""#;
    const ARRIVAL: &[u8] = br#"","approximateArrivalTimestamp":"#;
    const ID: &[u8] = br#"},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":""#;
    const FIXED: usize = HEAD.len() + SEQUENCE.len() + DATA.len() + ARRIVAL.len() + ID.len();
    // Escaping may grow a string; the estimate covers the usual case in one allocation.
    let size: usize = 16
        + records
            .iter()
            .map(|r| {
                FIXED
                    + source.tail.len()
                    + base64_simd::STANDARD.encoded_length(r.data.len())
                    + r.partition_key.len()
                    + 2 * r.sequence_number.len()
                    + shard_id.len()
                    + 32
            })
            .sum::<usize>();
    let mut buf = Vec::with_capacity(size);
    buf.extend_from_slice(br#"{"Records":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(HEAD);
        push_escaped(&mut buf, &r.partition_key);
        buf.extend_from_slice(SEQUENCE);
        push_escaped(&mut buf, &r.sequence_number);
        buf.extend_from_slice(DATA);
        base64_simd::STANDARD.encode_append(&r.data, &mut buf);
        buf.extend_from_slice(ARRIVAL);
        // A finite f64 written to a Vec: serde_json cannot fail here.
        let _ = serde_json::to_writer(
            &mut buf,
            &arrival_seconds(r.approximate_arrival_timestamp_ms),
        );
        buf.extend_from_slice(ID);
        push_escaped(&mut buf, shard_id);
        buf.push(b':');
        push_escaped(&mut buf, &r.sequence_number);
        buf.push(b'"');
        buf.push(b',');
        buf.extend_from_slice(&source.tail);
    }
    buf.extend_from_slice(b"]}");
    buf
}

/// What the handler's return value means for the batch (Lambda's partial batch response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record was processed.
    Success,
    /// The records before this index of the batch were processed; it and the ones after it
    /// failed.
    FailedFrom(usize),
    /// `batchItemFailures` is malformed or names a record that is not in the batch: as in
    /// Lambda, the whole batch fails. The text says why.
    Invalid(String),
}

/// Compares two Kinesis sequence numbers (decimal strings without leading zeros) as numbers.
fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Reads the body of `POST …/invocation/{id}/response` (the handler's return value) for the
/// batch `records` that was sent, as Lambda reads a partial batch response.
///
/// # Guarantees
/// - [`Outcome::Success`] when the body is not JSON, not an object, has no
///   `batchItemFailures`, or has it `null` or empty: a handler may return anything.
/// - [`Outcome::FailedFrom`] when `batchItemFailures` lists `{"itemIdentifier":
///   "<sequenceNumber>"}` of records of the batch: the index of the first record carrying the
///   lowest sequence number named (compared as decimal numbers), whatever the list's order.
///
/// # Errors
/// [`Outcome::Invalid`] (Lambda fails the whole batch) when `batchItemFailures` is not a
/// list, an item has no `itemIdentifier`, or it is empty, not a string, or names no record
/// of the batch.
pub fn outcome(body: &[u8], records: &[v1::Record]) -> Outcome {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Outcome::Success;
    };
    let failures = match value.get("batchItemFailures") {
        None | Some(Value::Null) => return Outcome::Success,
        Some(Value::Array(items)) if items.is_empty() => return Outcome::Success,
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Outcome::Invalid(format!(
                "batchItemFailures must be a list of {{\"itemIdentifier\": \"<sequenceNumber>\"}}, not {}",
                short(&other.to_string())
            ));
        }
    };
    let in_batch: HashSet<&str> = records.iter().map(|r| r.sequence_number.as_str()).collect();
    let mut lowest: Option<&str> = None;
    for (n, item) in failures.iter().enumerate() {
        let id = match item.get("itemIdentifier") {
            Some(Value::String(id)) if !id.is_empty() => id.as_str(),
            Some(Value::String(_)) => {
                return Outcome::Invalid(format!(
                    "item {n} of batchItemFailures has an empty itemIdentifier"
                ));
            }
            Some(other) => {
                return Outcome::Invalid(format!(
                    "the itemIdentifier of item {n} of batchItemFailures is {}, not a sequence number string",
                    short(&other.to_string())
                ));
            }
            None => {
                return Outcome::Invalid(format!(
                    "item {n} of batchItemFailures has no itemIdentifier: {}",
                    short(&item.to_string())
                ));
            }
        };
        if !in_batch.contains(id) {
            return Outcome::Invalid(format!(
                "itemIdentifier \"{}\" is the sequence number of no record of the batch",
                short(id)
            ));
        }
        if lowest.is_none_or(|l| compare_sequence_numbers(id, l) == Ordering::Less) {
            lowest = Some(id);
        }
    }
    match lowest.and_then(|l| records.iter().position(|r| r.sequence_number == l)) {
        Some(index) => Outcome::FailedFrom(index),
        // Unreachable: a non-empty list whose every identifier is in the batch.
        None => Outcome::Invalid("batchItemFailures names no record".into()),
    }
}

/// The longest error text [`error_message`] returns (characters, before the ellipsis).
const MAX_MESSAGE: usize = 300;

/// One line of at most [`MAX_MESSAGE`] characters.
fn short(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// A one-line summary, `ErrorType: message` of at most about 300 characters, of the body of
/// `POST …/invocation/{id}/error` or `POST …/init/error` (`{"errorMessage", "errorType",
/// "stackTrace"}`) and its `Lambda-Runtime-Function-Error-Type` header. The body's
/// `errorType` wins over the header's; a body that is not such JSON is quoted as text.
pub fn error_message(body: &[u8], error_type_header: Option<&str>) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let kind = field("errorType").or_else(|| {
        error_type_header
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    });
    let message = match &parsed {
        Some(Value::Object(_)) => field("errorMessage"),
        Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.trim().is_empty()),
        _ => Some(String::from_utf8_lossy(body).trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let line = match (kind, message) {
        (Some(kind), Some(message)) => format!("{kind}: {message}"),
        (Some(kind), None) => kind,
        (None, Some(message)) => message,
        (None, None) => "the handler failed without an error message".into(),
    };
    short(&line)
}

/// A new invocation id (`Lambda-Runtime-Aws-Request-Id`): a random UUID (version 4),
/// e.g. `8476a536-e9f4-4f8c-a8a1-0c5ec0b7d2a1`.
pub fn request_id() -> String {
    let r = fastrand::u128(..);
    let r = (r & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let r = (r & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        r >> 96,
        (r >> 80) & 0xffff,
        (r >> 64) & 0xffff,
        (r >> 48) & 0xffff,
        r & 0xffff_ffff_ffff
    )
}

/// A new X-Ray trace header (`Lambda-Runtime-Trace-Id`), not sampled:
/// `Root=1-<8 hex of epoch seconds>-<24 hex>;Parent=<16 hex>;Sampled=0`.
pub fn trace_id() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
        seconds & 0xffff_ffff,
        fastrand::u128(..) >> 32,
        fastrand::u64(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn record(sequence: &str, data: &[u8], arrival_ms: i64) -> v1::Record {
        v1::Record {
            data: data.to_vec().into(),
            partition_key: format!("key-{sequence}"),
            sequence_number: sequence.into(),
            approximate_arrival_timestamp_ms: arrival_ms,
            ..Default::default()
        }
    }

    fn source() -> EventSource {
        EventSource::new(
            "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
            "us-east-2",
            "arn:aws:iam::123456789012:role/lambda-role",
        )
    }

    #[test]
    fn the_event_has_lambdas_exact_shape() -> TestResult {
        let records = [
            record(
                "49590338271490256608559692538361571095921575989136588898",
                b"Hello, this is a test 123.",
                1_545_084_650_987,
            ),
            record(
                "49590338271490256608559692540925702759324208523137515618",
                &[0xfb, 0xff, 0x00, 0x0a],
                1_545_084_711_166,
            ),
        ];
        let expected = json!({"Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-49590338271490256608559692538361571095921575989136588898",
                    "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0IDEyMy4=",
                    "approximateArrivalTimestamp": 1545084650.987
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                "awsRegion": "us-east-2",
                "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"
            },
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": "key-49590338271490256608559692540925702759324208523137515618",
                    "sequenceNumber": "49590338271490256608559692540925702759324208523137515618",
                    "data": "+/8ACg==",
                    "approximateArrivalTimestamp": 1545084711.166
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": "shardId-000000000006:49590338271490256608559692540925702759324208523137515618",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                "awsRegion": "us-east-2",
                "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"
            }
        ]});
        assert_eq!(
            kinesis_event("shardId-000000000006", &records, &source()),
            expected
        );
        let bytes = kinesis_event_bytes("shardId-000000000006", &records, &source());
        assert_eq!(serde_json::from_slice::<Value>(&bytes)?, expected);
        // Seconds as a float, as Lambda sends them (not integer milliseconds).
        let text = std::str::from_utf8(&bytes)?;
        assert!(
            text.contains(r#""approximateArrivalTimestamp":1545084650.987}"#),
            "{text}"
        );
        let whole = kinesis_event_bytes("s", &[record("1", b"", 1_545_084_651_000)], &source());
        assert!(
            std::str::from_utf8(&whole)?.contains(r#""approximateArrivalTimestamp":1545084651.0}"#)
        );
        Ok(())
    }

    #[test]
    fn an_empty_batch_and_aggregated_sub_records() -> TestResult {
        assert_eq!(
            serde_json::from_slice::<Value>(&kinesis_event_bytes("s", &[], &source()))?,
            json!({"Records": []})
        );
        // Two sub-records of one aggregated record: two event records, one sequence number.
        let mut a = record("7", b"a", 0);
        a.sub_sequence_number = 0;
        a.aggregated = true;
        let mut b = record("7", b"b", 0);
        b.sub_sequence_number = 1;
        b.aggregated = true;
        let event: Value =
            serde_json::from_slice(&kinesis_event_bytes("shard-1", &[a, b], &source()))?;
        let ids: Vec<&str> = event["Records"]
            .as_array()
            .ok_or("no Records")?
            .iter()
            .filter_map(|r| r["eventID"].as_str())
            .collect();
        assert_eq!(ids, ["shard-1:7", "shard-1:7"]);
        assert_eq!(event["Records"][1]["kinesis"]["data"], "Yg==");
        assert_eq!(
            event["Records"][0]["kinesis"]["approximateArrivalTimestamp"],
            0.0
        );
        Ok(())
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() -> TestResult {
        let mut nasty: String = (0u8..0x20).map(char::from).collect();
        nasty.push_str("\"quoted\" back\\slash é ü 🦀 \u{7f} </script>");
        for s in [nasty.as_str(), "", "plain", "\"", "\\"] {
            let mut mine = vec![b'"'];
            push_escaped(&mut mine, s);
            mine.push(b'"');
            assert_eq!(std::str::from_utf8(&mine)?, serde_json::to_string(s)?);
        }
        let mut r = record("12", b"x", 0);
        r.partition_key = nasty.clone();
        let odd = EventSource::new("arn\"1", "re\\gion", "id\n");
        let event: Value =
            serde_json::from_slice(&kinesis_event_bytes("sh\"ard", &[r.clone()], &odd))?;
        assert_eq!(event, kinesis_event("sh\"ard", &[r], &odd));
        assert_eq!(
            event["Records"][0]["kinesis"]["partitionKey"],
            nasty.as_str()
        );
        assert_eq!(event["Records"][0]["eventID"], "sh\"ard:12");
        assert_eq!(event["Records"][0]["eventSourceARN"], "arn\"1");
        Ok(())
    }

    fn batch(sequences: &[&str]) -> Vec<v1::Record> {
        sequences.iter().map(|s| record(s, b"x", 0)).collect()
    }

    #[test]
    fn a_handler_that_reports_no_failures_succeeds() {
        let records = batch(&["1", "2"]);
        for body in [
            "null",
            "{}",
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
            r#""done""#,
            "42",
            "[1,2]",
            r#"{"statusCode":200}"#,
            "not json at all",
            "",
        ] {
            assert_eq!(
                outcome(body.as_bytes(), &records),
                Outcome::Success,
                "{body}"
            );
        }
    }

    #[test]
    fn the_lowest_failed_sequence_number_wins() {
        // "99" < "100" as numbers although not as strings; listed second.
        let records = batch(&["98", "99", "100", "101"]);
        let body = br#"{"batchItemFailures":[{"itemIdentifier":"100"},{"itemIdentifier":"99"}]}"#;
        assert_eq!(outcome(body, &records), Outcome::FailedFrom(1));
        let body = br#"{"batchItemFailures":[{"itemIdentifier":"101"}]}"#;
        assert_eq!(outcome(body, &records), Outcome::FailedFrom(3));
        let body = br#"{"batchItemFailures":[{"itemIdentifier":"98"}]}"#;
        assert_eq!(outcome(body, &records), Outcome::FailedFrom(0));
        // Sub-records share a sequence number: the first of them.
        let records = batch(&["5", "6", "6", "6", "7"]);
        let body = br#"{"batchItemFailures":[{"itemIdentifier":"7"},{"itemIdentifier":"6"}]}"#;
        assert_eq!(outcome(body, &records), Outcome::FailedFrom(1));
    }

    #[test]
    fn invalid_batch_item_failures_fail_the_whole_batch() {
        let records = batch(&["1", "2"]);
        let invalid = |body: &str| match outcome(body.as_bytes(), &records) {
            Outcome::Invalid(why) => why,
            other => format!("not invalid: {other:?}"),
        };
        assert!(
            invalid(r#"{"batchItemFailures":[{"itemIdentifier":"3"}]}"#)
                .contains("no record of the batch")
        );
        assert!(
            invalid(r#"{"batchItemFailures":[{"itemIdentifier":"2"},{"itemIdentifier":"3"}]}"#)
                .contains("\"3\"")
        );
        assert!(invalid(r#"{"batchItemFailures":[{"id":"1"}]}"#).contains("no itemIdentifier"));
        assert!(invalid(r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#).contains("empty"));
        assert!(invalid(r#"{"batchItemFailures":[{"itemIdentifier":2}]}"#).contains("is 2"));
        assert!(invalid(r#"{"batchItemFailures":[{"itemIdentifier":null}]}"#).contains("is null"));
        assert!(invalid(r#"{"batchItemFailures":["1"]}"#).contains("no itemIdentifier"));
        assert!(invalid(r#"{"batchItemFailures":"1"}"#).contains("must be a list"));
    }

    #[test]
    fn errors_become_one_short_line() {
        let body = br#"{"errorMessage":"division by zero","errorType":"ZeroDivisionError","stackTrace":["  File \"/var/task/app.py\", line 3\n"]}"#;
        assert_eq!(
            error_message(body, None),
            "ZeroDivisionError: division by zero"
        );
        assert_eq!(
            error_message(body, Some("Unhandled")),
            "ZeroDivisionError: division by zero"
        );
        let body = br#"{"errorMessage":"boom\n  more"}"#;
        assert_eq!(
            error_message(body, Some("Unhandled")),
            "Unhandled: boom more"
        );
        assert_eq!(error_message(body, None), "boom more");
        assert_eq!(
            error_message(b"", Some("Runtime.ExitError")),
            "Runtime.ExitError"
        );
        assert_eq!(
            error_message(b"", None),
            "the handler failed without an error message"
        );
        assert_eq!(
            error_message(b"plain text\nfailure", None),
            "plain text failure"
        );
        let long = format!(
            r#"{{"errorMessage":"{}","errorType":"E"}}"#,
            "é".repeat(1000)
        );
        let line = error_message(long.as_bytes(), None);
        assert_eq!(line.chars().count(), MAX_MESSAGE + 1);
        assert!(line.starts_with("E: éé") && line.ends_with('…'));
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let ids: Vec<String> = (0..64).map(|_| request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            for (i, c) in id.char_indices() {
                if [8, 13, 18, 23].contains(&i) {
                    assert_eq!(c, '-', "{id}");
                } else {
                    assert!(c.is_ascii_digit() || ('a'..='f').contains(&c), "{id}");
                }
            }
            assert_eq!(&id[14..15], "4", "{id}");
            assert!(["8", "9", "a", "b"].contains(&&id[19..20]), "{id}");
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn trace_ids_have_the_x_ray_format() -> TestResult {
        let t = trace_id();
        let rest = t.strip_prefix("Root=1-").ok_or("no Root")?;
        let (root, rest) = rest.split_once(";Parent=").ok_or("no Parent")?;
        let (parent, sampled) = rest.split_once(';').ok_or("no Sampled")?;
        let (time, random) = root.split_once('-').ok_or("no root parts")?;
        let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
        assert!(
            time.len() == 8 && random.len() == 24 && parent.len() == 16,
            "{t}"
        );
        assert!(hex(time) && hex(random) && hex(parent), "{t}");
        assert_eq!(sampled, "Sampled=0");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        assert!(now.abs_diff(u64::from_str_radix(time, 16)?) < 60, "{t}");
        Ok(())
    }
}
