//! Reading one shard by polling: GetShardIterator from the checkpoint (or the initial
//! position), then GetRecords in a loop, KPL records split into user records.
//!
//! # Guarantees
//! - Nothing is skipped: after a checkpoint at `(sequence, sub)` the next record delivered is
//!   sub-record `sub + 1` of that record (or the next record); an expired iterator is renewed
//!   right after the last record delivered.
//! - The shard's end is reported once, with its child shards, after its last record.
//!
//! Throttling and transient errors are retried inside [`ShardReader::next_batch`] with
//! exponential backoff and jitter; only errors that retrying cannot fix are returned.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::aggregation::{HashRange, KinesisRecord, UserRecord, deaggregate};
use crate::backoff::Backoff;
use crate::lease::checkpoint::Checkpoint;
use crate::lease::discovery::StreamRef;

/// Kinesis returns at most 10,000 records per GetRecords call.
pub const MAX_RECORDS_LIMIT: i32 = 10_000;

/// Settings of a reader.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Records per GetRecords call (1..=10,000).
    pub max_records: i32,
    /// For a lease at `AT_TIMESTAMP`: the application's initial timestamp (epoch ms).
    pub initial_timestamp_ms: Option<i64>,
    /// First retry delay after a throttle or transient error.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            max_records: MAX_RECORDS_LIMIT,
            initial_timestamp_ms: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// One read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Records (possibly none: then the reader is at the tip if `millis_behind_latest` is 0).
    Records {
        /// In shard order.
        records: Vec<UserRecord>,
        /// How far behind the tip this read was.
        millis_behind_latest: Option<i64>,
    },
    /// Every record of the shard has been delivered.
    ShardEnd {
        /// Its children, as GetRecords reported them (may be empty: then list the shards).
        child_shard_ids: Vec<String>,
    },
}

/// What a reader cannot recover from by retrying.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream or shard does not exist.
    #[error("shard {shard_id} of stream `{stream}` not found: {detail}")]
    NotFound {
        /// The stream.
        stream: String,
        /// The shard.
        shard_id: String,
        /// Kinesis's message.
        detail: String,
    },
    /// A lease at `AT_TIMESTAMP` without a timestamp configured.
    #[error(
        "shard {shard_id} starts AT_TIMESTAMP but no initial timestamp is configured: set the application's initialTimestamp"
    )]
    NoTimestamp {
        /// The shard.
        shard_id: String,
    },
    /// Anything else Kinesis refused (access denied, invalid argument): retrying won't help.
    #[error("reading shard {shard_id} of stream `{stream}` failed: {detail}")]
    Kinesis {
        /// The stream.
        stream: String,
        /// The shard.
        shard_id: String,
        /// The SDK error.
        detail: String,
    },
}

/// Where the next read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Position {
    /// The lease's checkpoint (or initial position).
    Start(Checkpoint),
    /// After this Kinesis record, all of whose user records were delivered.
    After(String),
}

/// The user records of a page of Kinesis records (KPL records split into their sub-records,
/// sub-records of other shards dropped). `resume` = `(sequence, sub)` of a checkpoint: that
/// record's user records up to `sub` are skipped.
pub(crate) fn user_records(
    raw_records: Vec<aws_sdk_kinesis::types::Record>,
    resume: Option<&(String, u64)>,
    hash_range: Option<HashRange>,
) -> Vec<UserRecord> {
    let mut records = Vec::with_capacity(raw_records.len());
    for r in raw_records {
        // Moved, not copied: the data is the bulk of the worker's memory traffic.
        let raw = KinesisRecord {
            data: r.data.into_inner(),
            partition_key: r.partition_key.unwrap_or_default(),
            sequence_number: r.sequence_number,
            approximate_arrival_ms: r
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok()),
        };
        let after = resume
            .filter(|(seq, _)| *seq == raw.sequence_number)
            .map(|(_, sub)| *sub);
        if after.is_none() && !super::aggregation::looks_aggregated(&raw.data) {
            records.push(super::aggregation::plain(raw));
            continue;
        }
        let users = deaggregate(raw, hash_range, after);
        // The checkpointed record itself, when it is a plain one, is done.
        records.extend(
            users
                .into_iter()
                .filter(|u| after.is_none() || u.aggregated),
        );
    }
    records
}

/// The error of a Kinesis call that retrying cannot fix (stream or shard not found, access
/// denied, invalid argument), or `None` when it is worth retrying (throttling, transient).
pub(crate) fn permanent_error<E, R>(
    stream: &StreamRef,
    shard_id: &str,
    e: &aws_sdk_kinesis::error::SdkError<E, R>,
) -> Option<ReadError>
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.as_service_error().and_then(|s| s.code())?;
    let detail = DisplayErrorContext(e).to_string();
    match code {
        "ResourceNotFoundException" => Some(ReadError::NotFound {
            stream: stream.to_string(),
            shard_id: shard_id.to_string(),
            detail,
        }),
        "AccessDeniedException" | "InvalidArgumentException" => Some(ReadError::Kinesis {
            stream: stream.to_string(),
            shard_id: shard_id.to_string(),
            detail,
        }),
        _ => None,
    }
}

/// Reads one shard.
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream: StreamRef,
    shard_id: String,
    hash_range: Option<HashRange>,
    config: ReaderConfig,
    position: Position,
    iterator: Option<String>,
    ended: bool,
    children: Vec<String>,
    backoff: Backoff,
}

impl ShardReader {
    /// A reader that resumes after `checkpoint` (or starts at an initial position).
    pub fn new(
        client: Client,
        stream: StreamRef,
        shard_id: impl Into<String>,
        checkpoint: Checkpoint,
        hash_range: Option<HashRange>,
        config: ReaderConfig,
    ) -> Self {
        let ended = checkpoint == Checkpoint::ShardEnd;
        let backoff = Backoff::new(config.backoff_base, config.backoff_max);
        Self {
            client,
            stream,
            shard_id: shard_id.into(),
            hash_range,
            config,
            position: Position::Start(checkpoint),
            iterator: None,
            ended,
            children: Vec::new(),
            backoff,
        }
    }

    /// A reader that goes on from `position` (the fan-out reader's drain of a closed shard).
    pub(crate) fn from_position(
        client: Client,
        stream: StreamRef,
        shard_id: impl Into<String>,
        position: Position,
        hash_range: Option<HashRange>,
        config: ReaderConfig,
    ) -> Self {
        let mut r = Self::new(
            client,
            stream,
            shard_id,
            Checkpoint::TrimHorizon,
            hash_range,
            config,
        );
        r.ended = position == Position::Start(Checkpoint::ShardEnd);
        r.position = position;
        r
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// A checkpoint `(sequence, sub)`: reading restarts AT that record, and its user records
    /// up to `sub` are skipped (a plain record has only sub-record 0). KCL does the same, so a
    /// checkpoint inside a KPL record neither skips nor redelivers a user record.
    fn resume_at(&self) -> Option<(String, u64)> {
        match &self.position {
            Position::Start(Checkpoint::Sequence {
                sequence,
                sub_sequence,
            }) => Some((sequence.as_str().to_string(), *sub_sequence)),
            _ => None,
        }
    }

    async fn backoff(&mut self) {
        self.backoff.wait().await;
    }

    async fn new_iterator(&mut self) -> Result<(), ReadError> {
        let mut req = self.client.get_shard_iterator().shard_id(&self.shard_id);
        req = match &self.stream {
            StreamRef::Name(n) => req.stream_name(n),
            StreamRef::Arn(a) => req.stream_arn(a),
        };
        req = match &self.position {
            Position::Start(Checkpoint::Sequence { sequence, .. }) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence.as_str()),
            Position::After(sequence) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            Position::Start(Checkpoint::TrimHorizon) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            Position::Start(Checkpoint::Latest) => {
                req.shard_iterator_type(ShardIteratorType::Latest)
            }
            Position::Start(Checkpoint::AtTimestamp) => {
                let ms =
                    self.config
                        .initial_timestamp_ms
                        .ok_or_else(|| ReadError::NoTimestamp {
                            shard_id: self.shard_id.clone(),
                        })?;
                req.shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms))
            }
            Position::Start(Checkpoint::ShardEnd) => {
                self.ended = true;
                return Ok(());
            }
        };
        loop {
            match req.clone().send().await {
                Ok(out) => {
                    self.backoff.reset();
                    self.iterator = out.shard_iterator().map(String::from);
                    if self.iterator.is_none() {
                        self.ended = true;
                    }
                    return Ok(());
                }
                Err(e) => {
                    if let Some(err) = permanent_error(&self.stream, &self.shard_id, &e) {
                        return Err(err);
                    }
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&e), "GetShardIterator failed; backing off");
                    self.backoff().await;
                }
            }
        }
    }

    /// The next batch. Retries throttling, expired iterators and transient errors itself.
    ///
    /// # Errors
    /// [`ReadError`] for what retrying cannot fix.
    pub async fn next_batch(&mut self) -> Result<Batch, ReadError> {
        loop {
            if self.ended {
                return Ok(Batch::ShardEnd {
                    child_shard_ids: self.children.clone(),
                });
            }
            if self.iterator.is_none() {
                self.new_iterator().await?;
                continue;
            }
            let iterator = self.iterator.clone().unwrap_or_default();
            let res = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.config.max_records.clamp(1, MAX_RECORDS_LIMIT))
                .send()
                .await;
            let mut out = match res {
                Ok(out) => out,
                Err(e) => {
                    let se = e.as_service_error();
                    if se.is_some_and(|s| s.is_expired_iterator_exception()) {
                        // Renewed right after the last delivered record.
                        self.iterator = None;
                        continue;
                    }
                    if let Some(err) = permanent_error(&self.stream, &self.shard_id, &e) {
                        return Err(err);
                    }
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&e), "GetRecords failed; backing off");
                    self.backoff().await;
                    continue;
                }
            };
            self.backoff.reset();
            let resume = self.resume_at();
            if let Some(last) = out.records.last() {
                self.position = Position::After(last.sequence_number.clone());
            }
            let records = user_records(
                std::mem::take(&mut out.records),
                resume.as_ref(),
                self.hash_range,
            );
            self.iterator = out.next_shard_iterator.take();
            if self.iterator.is_none() {
                self.ended = true;
                self.children = out
                    .child_shards()
                    .iter()
                    .map(|c| c.shard_id().to_string())
                    .collect();
                if records.is_empty() {
                    return Ok(Batch::ShardEnd {
                        child_shard_ids: self.children.clone(),
                    });
                }
                // The last records first; the end on the next call.
            }
            return Ok(Batch::Records {
                records,
                millis_behind_latest: out.millis_behind_latest(),
            });
        }
    }
}
