//! The MultiLangDaemon protocol's messages, as KCL 2.x/3.x writes and reads them
//! (newline-delimited JSON with an `action` field): pure encoding and decoding, no I/O.

use kinesis_processor::v1;
use serde::{Deserialize, Serialize};

use crate::json::push_escaped;

/// What a child is asked to do: the `action` of each message to it, which its `status`
/// message names in `responseFor` when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `initialize`
    Initialize,
    /// `processRecords`
    ProcessRecords,
    /// `leaseLost`
    LeaseLost,
    /// `shardEnded`
    ShardEnded,
    /// `shutdownRequested`
    ShutdownRequested,
}

impl Action {
    /// The action's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Initialize => "initialize",
            Self::ProcessRecords => "processRecords",
            Self::LeaseLost => "leaseLost",
            Self::ShardEnded => "shardEnded",
            Self::ShutdownRequested => "shutdownRequested",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeMessage<'a> {
    action: &'static str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
}

#[derive(Serialize)]
struct BareMessage {
    action: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckpointReply<'a> {
    action: &'static str,
    sequence_number: Option<&'a str>,
    sub_sequence_number: Option<u64>,
    error: Option<&'a str>,
}

fn line(message: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs cannot fail (string keys, no maps, no floats).
    let mut out = serde_json::to_vec(message).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The `initialize` line for a shard starting at `start`. KCL always sends all three keys:
/// a shard with no checkpoint gets its initial position (`TRIM_HORIZON`, `LATEST`,
/// `AT_TIMESTAMP`) as the sequence number and sub-sequence 0 (kclpy needs every key).
pub fn initialize(shard_id: &str, start: Option<&v1::StartingPosition>) -> Vec<u8> {
    let (sequence_number, sub_sequence_number) = match start.and_then(|s| s.position.as_ref()) {
        Some(v1::starting_position::Position::After(p)) => {
            (p.sequence_number.as_str(), p.sub_sequence_number)
        }
        Some(v1::starting_position::Position::Initial(i)) => (i.as_str(), 0),
        None => ("TRIM_HORIZON", 0),
    };
    line(&InitializeMessage {
        action: Action::Initialize.name(),
        shard_id,
        sequence_number,
        sub_sequence_number,
    })
}

/// The `processRecords` line: each record with `"action":"record"`, its data in standard
/// base64, and its arrival time as integer milliseconds (what KCL's `JsonFriendlyRecord`
/// writes).
///
/// # Guarantees
/// - One line of UTF-8 JSON (the only newline is the last byte) that parses to the same
///   value as serde_json would write for the message: `action`, `millisBehindLatest`, then
///   `records`, each with `action`, `data`, `partitionKey`, `sequenceNumber`,
///   `subSequenceNumber`, `approximateArrivalTimestamp`, in batch order.
/// - Built in one pass into one buffer sized up front, the base64 written straight into it
///   (no string per record, no escaping of what cannot need it): this is the per-batch hot
///   path.
pub fn process_records(records: &[v1::Record], millis_behind_latest: i64) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"action":"record","data":""#;
    const KEY: &[u8] = br#"","partitionKey":""#;
    const SEQUENCE: &[u8] = br#"","sequenceNumber":""#;
    const SUB: &[u8] = br#"","subSequenceNumber":"#;
    const ARRIVAL: &[u8] = br#","approximateArrivalTimestamp":"#;
    const FIXED: usize = HEAD.len() + KEY.len() + SEQUENCE.len() + SUB.len() + ARRIVAL.len();
    // Escaping may grow a key; the estimate covers the usual case in one allocation.
    let size = 64
        + records
            .iter()
            .map(|r| {
                FIXED
                    + 48
                    + base64_simd::STANDARD.encoded_length(r.data.len())
                    + r.partition_key.len()
                    + r.sequence_number.len()
            })
            .sum::<usize>();
    let mut buf = Vec::with_capacity(size);
    let mut numbers = itoa::Buffer::new();
    buf.extend_from_slice(br#"{"action":"processRecords","millisBehindLatest":"#);
    buf.extend_from_slice(numbers.format(millis_behind_latest).as_bytes());
    buf.extend_from_slice(br#","records":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(HEAD);
        base64_simd::STANDARD.encode_append(&r.data, &mut buf);
        buf.extend_from_slice(KEY);
        push_escaped(&mut buf, &r.partition_key);
        buf.extend_from_slice(SEQUENCE);
        push_escaped(&mut buf, &r.sequence_number);
        buf.extend_from_slice(SUB);
        buf.extend_from_slice(numbers.format(r.sub_sequence_number).as_bytes());
        buf.extend_from_slice(ARRIVAL);
        buf.extend_from_slice(
            numbers
                .format(r.approximate_arrival_timestamp_ms)
                .as_bytes(),
        );
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}\n");
    buf
}

/// The line of an action that carries no fields (`leaseLost`, `shardEnded`,
/// `shutdownRequested`). The legacy `shutdown` message is never sent: kclpy 3.x fails on it.
pub fn bare(action: Action) -> Vec<u8> {
    line(&BareMessage {
        action: action.name(),
    })
}

/// The answer to a child's `checkpoint` request: the position it asked for and, when the
/// checkpoint was refused, the name of the exception KCL would have thrown.
pub fn checkpoint_reply(
    sequence_number: Option<&str>,
    sub_sequence_number: Option<u64>,
    error: Option<&str>,
) -> Vec<u8> {
    line(&CheckpointReply {
        action: "checkpoint",
        sequence_number,
        sub_sequence_number,
        error,
    })
}

/// A message from a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromChild {
    /// `status`: the child finished the action named.
    Status {
        /// `responseFor`.
        response_for: String,
    },
    /// `checkpoint`: checkpoint up to this record, or (`None`) up to the last one delivered.
    Checkpoint {
        /// `sequenceNumber` (null: the last record delivered).
        sequence_number: Option<String>,
        /// `subSequenceNumber`.
        sub_sequence_number: Option<u64>,
    },
    /// A JSON message with another action: logged and skipped.
    Other {
        /// Its `action`.
        action: String,
    },
}

/// One line a child wrote on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Empty or whitespace: kclpy writes a newline before and after each message.
    Blank,
    /// Not a protocol message (a library printing to stdout): logged and skipped.
    NotProtocol(String),
    /// A protocol message.
    Message(FromChild),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Incoming {
    action: String,
    #[serde(default)]
    response_for: Option<String>,
    #[serde(default)]
    sequence_number: Option<serde_json::Value>,
    #[serde(default)]
    sub_sequence_number: Option<serde_json::Value>,
}

/// A sequence number as a child may write it: a string, or a JSON number (a child that
/// parsed it with `int(...)`); anything else is kept as text so the checkpoint is refused
/// with the position named.
fn sequence_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn sub_sequence(v: Option<serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Decodes one line a child wrote.
pub fn parse(text: &str) -> Line {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Line::Blank;
    }
    let Ok(msg) = serde_json::from_str::<Incoming>(trimmed) else {
        return Line::NotProtocol(trimmed.to_string());
    };
    Line::Message(match msg.action.as_str() {
        "status" => FromChild::Status {
            response_for: msg.response_for.unwrap_or_default(),
        },
        "checkpoint" => FromChild::Checkpoint {
            sequence_number: msg.sequence_number.and_then(sequence_text),
            sub_sequence_number: sub_sequence(msg.sub_sequence_number),
        },
        _ => FromChild::Other { action: msg.action },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    /// The message as serde_json writes it: the reference for the hand-written line.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct RecordMessage<'a> {
        action: &'static str,
        data: String,
        partition_key: &'a str,
        sequence_number: &'a str,
        sub_sequence_number: u64,
        approximate_arrival_timestamp: i64,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ProcessRecordsMessage<'a> {
        action: &'static str,
        millis_behind_latest: i64,
        records: Vec<RecordMessage<'a>>,
    }

    fn json(line: &[u8]) -> std::result::Result<serde_json::Value, Box<dyn std::error::Error>> {
        assert_eq!(line.last(), Some(&b'\n'), "one message per line");
        assert_eq!(
            line.iter().filter(|b| **b == b'\n').count(),
            1,
            "no newline inside a message"
        );
        Ok(serde_json::from_slice(line)?)
    }

    #[test]
    fn initialize_always_has_the_three_keys() -> Result {
        let after = v1::StartingPosition {
            position: Some(v1::starting_position::Position::After(v1::RecordPosition {
                sequence_number: "4959".into(),
                sub_sequence_number: 3,
            })),
        };
        assert_eq!(
            json(&initialize("shardId-000000000001", Some(&after)))?,
            serde_json::json!({"action":"initialize","shardId":"shardId-000000000001",
                "sequenceNumber":"4959","subSequenceNumber":3})
        );
        let initial = v1::StartingPosition {
            position: Some(v1::starting_position::Position::Initial("LATEST".into())),
        };
        assert_eq!(
            json(&initialize("s", Some(&initial)))?,
            serde_json::json!({"action":"initialize","shardId":"s",
                "sequenceNumber":"LATEST","subSequenceNumber":0})
        );
        assert_eq!(
            json(&initialize("s", None))?["sequenceNumber"],
            "TRIM_HORIZON"
        );
        Ok(())
    }

    #[test]
    fn records_are_sent_as_kcl_writes_them() -> Result {
        let records = [v1::Record {
            data: vec![0, 1, 0xfe, b'\n'].into(),
            partition_key: "key \"1\"".into(),
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
            sub_sequence_number: 2,
            approximate_arrival_timestamp_ms: 1_545_084_650_987,
            ..Default::default()
        }];
        assert_eq!(
            json(&process_records(&records, 1200))?,
            serde_json::json!({"action":"processRecords","millisBehindLatest":1200,
                "records":[{"action":"record","data":"AAH+Cg==","partitionKey":"key \"1\"",
                "sequenceNumber":"49590338271490256608559692538361571095921575989136588898",
                "subSequenceNumber":2,"approximateArrivalTimestamp":1_545_084_650_987_i64}]})
        );
        Ok(())
    }

    /// The reference line: serde_json over the message structs.
    fn by_serde(records: &[v1::Record], millis_behind_latest: i64) -> Vec<u8> {
        let records = records
            .iter()
            .map(|r| RecordMessage {
                action: "record",
                data: base64_simd::STANDARD.encode_to_string(&r.data),
                partition_key: &r.partition_key,
                sequence_number: &r.sequence_number,
                sub_sequence_number: r.sub_sequence_number,
                approximate_arrival_timestamp: r.approximate_arrival_timestamp_ms,
            })
            .collect();
        line(&ProcessRecordsMessage {
            action: Action::ProcessRecords.name(),
            millis_behind_latest,
            records,
        })
    }

    proptest::proptest! {
        /// The hand-written line is byte for byte what serde_json writes, whatever the keys
        /// (control characters, quotes, non-ASCII), data, and numbers (negative included).
        #[test]
        fn the_records_line_is_what_serde_writes(
            batch in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                    "\\PC{0,8}|[\"\\\\\\x00-\\x1f]{0,4}",
                    "[0-9]{1,60}",
                    proptest::num::u64::ANY,
                    proptest::num::i64::ANY,
                ),
                0..6,
            ),
            behind in proptest::num::i64::ANY,
        ) {
            let records: Vec<v1::Record> = batch
                .into_iter()
                .map(|(data, key, seq, sub, at)| v1::Record {
                    data: data.into(),
                    partition_key: key,
                    sequence_number: seq,
                    sub_sequence_number: sub,
                    approximate_arrival_timestamp_ms: at,
                    ..Default::default()
                })
                .collect();
            let (mine, reference) = (process_records(&records, behind), by_serde(&records, behind));
            proptest::prop_assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&reference));
        }
    }

    #[test]
    fn bare_actions_and_checkpoint_replies() -> Result {
        assert_eq!(
            json(&bare(Action::ShutdownRequested))?,
            serde_json::json!({"action":"shutdownRequested"})
        );
        assert_eq!(
            json(&checkpoint_reply(None, None, Some("ShutdownException")))?,
            serde_json::json!({"action":"checkpoint","sequenceNumber":null,
                "subSequenceNumber":null,"error":"ShutdownException"})
        );
        Ok(())
    }

    #[test]
    fn what_a_child_writes() {
        assert_eq!(parse("\n"), Line::Blank);
        assert_eq!(parse("   "), Line::Blank);
        assert_eq!(
            parse(r#"{"action": "status", "responseFor": "initialize"}"#),
            Line::Message(FromChild::Status {
                response_for: "initialize".into()
            })
        );
        assert_eq!(
            parse(r#"{"action": "checkpoint", "sequenceNumber": null, "subSequenceNumber": null}"#),
            Line::Message(FromChild::Checkpoint {
                sequence_number: None,
                sub_sequence_number: None
            })
        );
        assert_eq!(
            parse(r#"{"action": "checkpoint", "sequenceNumber": "12", "subSequenceNumber": 0}"#),
            Line::Message(FromChild::Checkpoint {
                sequence_number: Some("12".into()),
                sub_sequence_number: Some(0)
            })
        );
        // A child that parsed the number with int() and wrote it back as a number.
        assert_eq!(
            parse(r#"{"action": "checkpoint", "sequenceNumber": 12}"#),
            Line::Message(FromChild::Checkpoint {
                sequence_number: Some("12".into()),
                sub_sequence_number: None
            })
        );
        assert_eq!(
            parse("Record (Partition Key: k"),
            Line::NotProtocol("Record (Partition Key: k".into())
        );
        assert_eq!(
            parse(r#"{"no":"action"}"#),
            Line::NotProtocol(r#"{"no":"action"}"#.into())
        );
        assert_eq!(
            parse(r#"{"action":"prepareCheckpoint"}"#),
            Line::Message(FromChild::Other {
                action: "prepareCheckpoint".into()
            })
        );
    }
}
