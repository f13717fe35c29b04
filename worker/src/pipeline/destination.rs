//! The on-failure destination: where a batch goes that the app failed `max_attempts` times,
//! or whose records are older than the maximum record age, before the worker moves past it.
//! An SQS queue or a Kinesis stream, named by its ARN (as Lambda's `DestinationConfig`).
//!
//! # Guarantees
//! - A message names the application, stream, shard, the first and last position (sequence
//!   and sub-sequence numbers), the record count, the attempts, the reason and the last
//!   error. It carries the records themselves (data in base64) when they fit in one message
//!   (SQS: 256 KiB, Kinesis: 1 MiB); otherwise `recordsIncluded` is false and the positions
//!   are enough to read them again from the stream while it retains them.
//! - The shard task moves past the records only after [`Destination::send`] succeeded; a
//!   failed send is retried with backoff, never skipped.

use aws_config::SdkConfig;
use aws_types::region::Region;
use base64_simd::STANDARD as BASE64;
use serde::Serialize;

use crate::records::aggregation::UserRecord;

pub use kinesis_spec::destination::{BadArn, Target};

/// An SQS message body is at most 256 KiB.
const SQS_LIMIT: usize = 256 * 1024;
/// A Kinesis record (data and partition key) is at most 1 MiB.
const KINESIS_LIMIT: usize = 1024 * 1024 - 256;

/// A destination ARN the worker cannot use, or a send that failed.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Not an SQS queue or Kinesis stream ARN.
    #[error(transparent)]
    BadArn(#[from] BadArn),
    /// The destination did not take the message (or its queue could not be found).
    #[error("on-failure destination `{arn}`: {message}")]
    Send {
        /// The destination.
        arn: String,
        /// The service's error.
        message: String,
    },
}

/// Why records went to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The app failed them `max_attempts` times.
    AttemptsExhausted,
    /// They were older than the maximum record age when their turn came.
    RecordAge,
}

impl Reason {
    /// Every reason, so each metric series exists (at 0) before the first record is sent.
    pub const ALL: [Reason; 2] = [Self::AttemptsExhausted, Self::RecordAge];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::RecordAge => "record_age",
        }
    }
}

/// What a message says besides the records.
#[derive(Debug, Clone)]
pub struct About<'a> {
    /// The application (lease table).
    pub application: &'a str,
    /// The stream.
    pub stream: &'a str,
    /// The shard.
    pub shard: &'a str,
    /// Why.
    pub reason: Reason,
    /// Failed calls that carried these records.
    pub attempts: u32,
    /// The app's last error.
    pub error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Position<'a> {
    sequence_number: &'a str,
    sub_sequence_number: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    partition_key: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    explicit_hash_key: Option<&'a str>,
    approximate_arrival_timestamp_ms: Option<i64>,
    /// base64.
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    version: u32,
    application: &'a str,
    stream: &'a str,
    shard_id: &'a str,
    reason: Reason,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    first: Position<'a>,
    last: Position<'a>,
    record_count: usize,
    records_included: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<Vec<Record<'a>>>,
}

fn position(r: &UserRecord) -> Position<'_> {
    Position {
        sequence_number: &r.sequence_number,
        sub_sequence_number: r.sub_sequence_number,
    }
}

/// The message for `records` (not empty), at most `limit` bytes: with the records if they
/// fit, else without them. `None` for no records.
pub fn message(about: &About<'_>, records: &[UserRecord], limit: usize) -> Option<String> {
    let (first, last) = (records.first()?, records.last()?);
    // The app's error text is bounded: it must not push the records out of the message.
    let error = about
        .error
        .as_deref()
        .map(|e| match e.char_indices().nth(1024) {
            Some((i, _)) => &e[..i],
            None => e,
        });
    let mut m = Message {
        version: 1,
        application: about.application,
        stream: about.stream,
        shard_id: about.shard,
        reason: about.reason,
        attempts: about.attempts,
        error,
        first: position(first),
        last: position(last),
        record_count: records.len(),
        records_included: true,
        records: Some(
            records
                .iter()
                .map(|r| Record {
                    partition_key: &r.partition_key,
                    sequence_number: &r.sequence_number,
                    sub_sequence_number: r.sub_sequence_number,
                    explicit_hash_key: r.explicit_hash_key.as_deref(),
                    approximate_arrival_timestamp_ms: r.approximate_arrival_ms,
                    data: BASE64.encode_to_string(&r.data),
                })
                .collect(),
        ),
    };
    let body = serde_json::to_string(&m).ok()?;
    if body.len() <= limit {
        return Some(body);
    }
    m.records_included = false;
    m.records = None;
    serde_json::to_string(&m).ok()
}

/// A connected destination.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An SQS queue.
    Sqs {
        /// The ARN it was configured with.
        arn: String,
        /// The client, in the queue's region.
        client: aws_sdk_sqs::Client,
        /// The queue's URL.
        url: String,
    },
    /// A Kinesis stream.
    Kinesis {
        /// The ARN it was configured with.
        arn: String,
        /// The client, in the stream's region.
        client: aws_sdk_kinesis::Client,
        /// The stream's name.
        name: String,
    },
}

impl Destination {
    /// Connects to `arn`: for a queue, looks up its URL (which also checks it exists).
    /// `sqs_endpoint` / `kinesis_endpoint` override the services' endpoints (local servers).
    ///
    /// # Errors
    /// A bad ARN, or a queue that cannot be found.
    pub async fn connect(
        arn: &str,
        sdk: &SdkConfig,
        sqs_endpoint: Option<&str>,
        kinesis_endpoint: Option<&str>,
    ) -> Result<Self, DestinationError> {
        match Target::parse(arn)? {
            Target::Sqs {
                region,
                account,
                name,
            } => {
                let mut b = aws_sdk_sqs::config::Builder::from(sdk).region(Region::new(region));
                if let Some(url) = sqs_endpoint {
                    b = b.endpoint_url(url);
                }
                let client = aws_sdk_sqs::Client::from_conf(b.build());
                let out = client
                    .get_queue_url()
                    .queue_name(&name)
                    .queue_owner_aws_account_id(&account)
                    .send()
                    .await
                    .map_err(|e| DestinationError::Send {
                        arn: arn.to_string(),
                        message: format!(
                            "looking up the queue: {}",
                            aws_smithy_types::error::display::DisplayErrorContext(&e)
                        ),
                    })?;
                let url = out
                    .queue_url()
                    .ok_or_else(|| DestinationError::Send {
                        arn: arn.to_string(),
                        message: "GetQueueUrl answered no URL".into(),
                    })?
                    .to_string();
                Ok(Self::Sqs {
                    arn: arn.to_string(),
                    client,
                    url,
                })
            }
            Target::Kinesis { region, name } => {
                let mut b = aws_sdk_kinesis::config::Builder::from(sdk).region(Region::new(region));
                if let Some(url) = kinesis_endpoint {
                    b = b.endpoint_url(url);
                }
                Ok(Self::Kinesis {
                    arn: arn.to_string(),
                    client: aws_sdk_kinesis::Client::from_conf(b.build()),
                    name,
                })
            }
        }
    }

    /// The ARN.
    pub fn arn(&self) -> &str {
        match self {
            Self::Sqs { arn, .. } | Self::Kinesis { arn, .. } => arn,
        }
    }

    /// The largest message it takes.
    pub fn limit(&self) -> usize {
        match self {
            Self::Sqs { .. } => SQS_LIMIT,
            Self::Kinesis { .. } => KINESIS_LIMIT,
        }
    }

    /// Sends `body` (from [`message`]) about `shard` (the partition key in a stream, so one
    /// shard's failures stay in order).
    ///
    /// # Errors
    /// [`DestinationError::Send`] when the service did not take it.
    pub async fn send(&self, shard: &str, body: String) -> Result<(), DestinationError> {
        let failed = |message: String| DestinationError::Send {
            arn: self.arn().to_string(),
            message,
        };
        match self {
            Self::Sqs { client, url, .. } => client
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    failed(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())
                }),
            // By ARN, not name: a name means "in the client's account", and the ARN may name
            // another account's stream (a cross-account destination).
            Self::Kinesis { client, arn, .. } => client
                .put_record()
                .stream_arn(arn)
                .partition_key(shard)
                .data(aws_sdk_kinesis::primitives::Blob::new(body.into_bytes()))
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    failed(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: &str, data: &[u8]) -> UserRecord {
        UserRecord {
            data: bytes::Bytes::copy_from_slice(data),
            partition_key: "k".into(),
            explicit_hash_key: None,
            sequence_number: seq.into(),
            sub_sequence_number: 0,
            approximate_arrival_ms: Some(7),
            aggregated: false,
        }
    }

    fn about() -> About<'static> {
        About {
            application: "app",
            stream: "s",
            shard: "shardId-000000000001",
            reason: Reason::AttemptsExhausted,
            attempts: 3,
            error: Some("boom".into()),
        }
    }

    #[test]
    fn a_message_carries_the_records_when_they_fit_and_their_positions_always() {
        let records = vec![rec("1", b"hello"), rec("2", &[0, 255])];
        let body = message(&about(), &records, SQS_LIMIT).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["recordsIncluded"], true);
        assert_eq!(v["recordCount"], 2);
        assert_eq!(v["first"]["sequenceNumber"], "1");
        assert_eq!(v["last"]["sequenceNumber"], "2");
        assert_eq!(v["reason"], "attempts_exhausted");
        assert_eq!(v["records"][0]["data"], "aGVsbG8=");
        assert_eq!(v["records"][1]["data"], "AP8=");

        let big = vec![rec("1", &[1; 200_000]), rec("9", &[2; 200_000])];
        let body = message(&about(), &big, SQS_LIMIT).unwrap_or_default();
        assert!(body.len() < 1000, "{}", body.len());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["recordsIncluded"], false);
        assert_eq!(v["last"]["sequenceNumber"], "9");
        assert!(v.get("records").is_none());
        assert_eq!(message(&about(), &[], SQS_LIMIT), None);
    }

    #[test]
    fn a_long_error_is_cut_without_splitting_a_character() {
        let mut a = about();
        a.error = Some("é".repeat(5_000));
        let body = message(&a, &[rec("1", b"x")], SQS_LIMIT).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"].as_str().map(|e| e.chars().count()), Some(1024));
        assert_eq!(v["recordsIncluded"], true);
    }
}
