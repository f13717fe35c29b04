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

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::aggregation::{HashRange, KinesisRecord, UserRecord};
use super::wire::RecordsPage;
use super::wire::client::{CallError, WireClient};
use crate::backoff::Backoff;
use crate::lease::checkpoint::Checkpoint;
use crate::lease::discovery::StreamRef;

/// Kinesis returns at most 10,000 records per GetRecords call.
pub const MAX_RECORDS_LIMIT: i32 = 10_000;

/// Default page size a reader aims for (bytes): see [`ReaderConfig::page_bytes`].
pub const DEFAULT_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// What a record costs in a page beyond its data (sequence number, framing, bookkeeping),
/// bytes: so that pages of tiny records are not underestimated, and the read-ahead budget
/// counts a held record's own memory (an empty record is not free).
pub const RECORD_OVERHEAD_BYTES: usize = 128;

/// Assumed size of a record before a shard's first page tells (bytes).
const FIRST_RECORD_BYTES: usize = 1024;

/// The default of [`ReaderConfig::fan_out_end_check`]: a subscription's lifetime. At
/// 10,000 shards and 500 workers that is at most one listing per worker per 5 minutes
/// (≈ 17 ListShards pages a second for the fleet, of the stream's 1,000), against 500 a
/// second when every worker relisted every 10 s.
pub const FAN_OUT_END_CHECK: Duration = Duration::from_secs(300);

/// Settings of a reader.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Records per GetRecords call (1..=10,000): the most; see `page_bytes`.
    pub max_records: i32,
    /// The page size a read aims for (bytes): each call's `Limit` is this divided by the
    /// size of a record of the shard's last page (its data, key and [`RECORD_OVERHEAD_BYTES`]),
    /// at most `max_records`. Kinesis serves a shard at most 2 MB/s at 5 calls/s, so pages of
    /// 2 MiB lose no throughput, while 10 MB pages of 1 KB records make every shard hold
    /// 10 MB several times over (the answer, the request to the app, its HTTP/2 copy).
    pub page_bytes: usize,
    /// For a lease at `AT_TIMESTAMP`: the application's initial timestamp (epoch ms).
    pub initial_timestamp_ms: Option<i64>,
    /// First retry delay after a throttle or transient error.
    pub backoff_base: Duration,
    /// Longest retry delay after a throttle ([`Retries`]).
    pub backoff_max: Duration,
    /// Longest retry delay after a transient error (a 5xx, a dropped connection: [`Retries`]).
    pub error_backoff_max: Duration,
    /// GetRecords through our own client (CBOR or JSON, see [`super::wire`]); `None`: through
    /// the SDK. GetShardIterator always goes through the SDK.
    pub get_records: Option<Arc<WireClient>>,
    /// Counts each GetRecords refused for a read limit, as it happens (the worker's
    /// `read_throttled`).
    pub throttled: Option<prometheus_client::metrics::counter::Counter>,
    /// Enhanced fan-out: how often a shard sitting at its tip may ask the worker's shared
    /// ListShards view whether it closed. Kinesis ends a shard's subscription with an event
    /// carrying its child shards, which is what ends a fan-out shard; the listing is only the
    /// safety net for a missed end (and for emulators that never send the children).
    pub fan_out_end_check: Duration,
}

/// The longest wait after a transient GetRecords or GetShardIterator error by default: an
/// idle shard's wait at the tip, so retrying through an outage costs no more calls than
/// reading an idle shard.
pub const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            max_records: MAX_RECORDS_LIMIT,
            page_bytes: DEFAULT_PAGE_BYTES,
            initial_timestamp_ms: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            error_backoff_max: ERROR_BACKOFF_MAX,
            get_records: None,
            throttled: None,
            fan_out_end_check: FAN_OUT_END_CHECK,
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
/// sub-records of other shards dropped; `resume` = `(sequence, sub)` of a checkpoint: that
/// record's user records up to `sub` are skipped), at most so many at a time ([`MAX_USER_RECORDS_PER_BATCH`]): a page
/// of KPL aggregates is expanded part by part as the pipeline asks for it (each part counted
/// in the read-ahead budget), never all at once.
#[derive(Debug, Default)]
pub(crate) struct Expander {
    raw: std::collections::VecDeque<KinesisRecord>,
    /// The checkpoint to resume after: its record's sub-records up to it are done.
    resume: Option<(String, u64)>,
    /// The front record's sub-records up to this one are done (it is partly expanded).
    front_after: Option<u64>,
    hash_range: Option<HashRange>,
}

impl Expander {
    pub(crate) fn new(
        raw: Vec<KinesisRecord>,
        resume: Option<(String, u64)>,
        hash_range: Option<HashRange>,
    ) -> Self {
        Self {
            raw: raw.into(),
            resume,
            front_after: None,
            hash_range,
        }
    }

    /// Nothing left to expand.
    pub(crate) fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The next user records, at most `max` (≥ 1), in shard order.
    pub(crate) fn next_part(&mut self, max: usize) -> Vec<UserRecord> {
        let max = max.max(1);
        let mut records = Vec::new();
        while records.len() < max {
            let Some(raw) = self.raw.front() else { break };
            let resumed = self
                .resume
                .as_ref()
                .filter(|(seq, _)| *seq == raw.sequence_number)
                .map(|(_, sub)| *sub);
            let after = self.front_after.or(resumed);
            if after.is_none() && !super::aggregation::looks_aggregated(&raw.data) {
                if let Some(raw) = self.raw.pop_front() {
                    records.push(super::aggregation::plain(raw));
                }
                continue;
            }
            let (users, more) = super::aggregation::deaggregate_part(
                raw,
                self.hash_range,
                after,
                max - records.len(),
            );
            // The checkpointed record itself, when it is a plain one, is done.
            records.extend(
                users
                    .into_iter()
                    .filter(|u| after.is_none() || u.aggregated),
            );
            match more {
                Some(last) => self.front_after = Some(last),
                None => {
                    self.raw.pop_front();
                    self.front_after = None;
                }
            }
        }
        records
    }
}

/// The most user records one batch of a shard holds: a page of KPL aggregates is handed to
/// the pipeline in parts of this many, each waiting for its share of the read-ahead budget.
pub const MAX_USER_RECORDS_PER_BATCH: usize = 10_000;

/// An SDK record as ours: the data moved, not copied (it is the bulk of the worker's memory
/// traffic).
pub(crate) fn from_sdk(r: aws_sdk_kinesis::types::Record) -> KinesisRecord {
    KinesisRecord {
        data: bytes::Bytes::from(r.data.into_inner()),
        partition_key: r.partition_key.unwrap_or_default().into(),
        sequence_number: r.sequence_number.into(),
        approximate_arrival_ms: r
            .approximate_arrival_timestamp
            .and_then(|t| t.to_millis().ok()),
    }
}

/// Why a call of the reader failed, for [`Retries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused for a read limit (the shard's, the account's, KMS's).
    Throttled,
    /// Anything else worth retrying: a 5xx, a dropped connection, a timeout.
    Transient,
}

/// How long a shard's reader waits before calling again after a failed call (pure; full
/// jitter from [`Backoff`]).
///
/// A throttle is a rate signal: its waits grow to `throttle_max`, so that readers sharing a
/// shard settle at a pace Kinesis accepts. A transient error says nothing about the rate:
/// its waits grow only to `error_max` (1 s by default, an idle shard's own pace at the tip),
/// so once an outage is over a shard is read again within about a second, and never waits
/// behind a backoff grown long while other shards, luckier with the failing calls, go on
/// (seen with half of all calls failing: one shard of two delivered nothing for 60 s).
///
/// # Guarantees
/// After any run of failures, the wait after a transient error is at most `error_max`, and
/// after a throttle at most `throttle_max`; a success resets both (test:
/// `tests::a_transient_error_never_waits_longer_than_its_cap`).
#[derive(Debug, Clone)]
pub struct Retries {
    throttled: Backoff,
    failed: Backoff,
}

impl Retries {
    /// Waits from `base`, up to `throttle_max` after throttles and `error_max` after other
    /// failures.
    pub fn new(base: Duration, throttle_max: Duration, error_max: Duration) -> Self {
        Self {
            throttled: Backoff::new(base, throttle_max),
            failed: Backoff::new(base, error_max),
        }
    }

    /// Counts a failure of kind `failure`: the wait before the next call.
    pub fn delay(&mut self, failure: Failure) -> Duration {
        match failure {
            Failure::Throttled => self.throttled.next_delay(),
            Failure::Transient => self.failed.next_delay(),
        }
    }

    /// A call succeeded.
    pub fn reset(&mut self) {
        self.throttled.reset();
        self.failed.reset();
    }
}

/// Why one GetRecords call gave no page.
enum Fetch {
    /// The iterator expired: get a new one after the last delivered record.
    Expired,
    /// Retrying cannot fix it.
    Permanent(ReadError),
    /// Refused for the shard's read limit: back off and call again.
    Throttled(String),
    /// Transient, unreadable: back off and call again.
    Retry(String),
}

/// Error codes Kinesis answers when a read is over a limit (the shard's 5 calls or 2 MB a
/// second, the account's, or KMS's): counted apart from other failures, because a
/// 400 is also what access denied looks like.
pub(crate) fn is_throttle(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "ThrottlingException"
    )
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
    permanent_code(stream, shard_id, code, DisplayErrorContext(e).to_string())
}

/// The [`ReadError`] of an error code that retrying cannot fix, or `None`.
pub(crate) fn permanent_code(
    stream: &StreamRef,
    shard_id: &str,
    code: &str,
    detail: String,
) -> Option<ReadError> {
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
    retries: Retries,
    /// Average size of a record of the last non-empty page (data, key and overhead).
    record_bytes: Option<usize>,
    /// What is left of the last page (its aggregates expanded part by part), and how far
    /// behind the tip that page was.
    pending: Expander,
    pending_behind: Option<i64>,
    /// GetRecords calls refused for a read limit so far.
    throttles: u64,
}

/// The `Limit` of the next GetRecords call: as many records of `record_bytes` (the last
/// page's average; unknown before the first page) as fit in `page_bytes`, between 1 and
/// `max_records` (itself at most 10,000).
pub fn page_limit(max_records: i32, page_bytes: usize, record_bytes: Option<usize>) -> i32 {
    let per_record = record_bytes.unwrap_or(FIRST_RECORD_BYTES).max(1);
    let fit = i32::try_from(page_bytes / per_record).unwrap_or(i32::MAX);
    fit.clamp(1, max_records.clamp(1, MAX_RECORDS_LIMIT))
}

/// Average size of `records` as [`page_limit`] counts it; `None` for an empty page.
fn average_record_bytes(records: &[KinesisRecord]) -> Option<usize> {
    let total: usize = records
        .iter()
        .map(|r| r.data.len() + r.partition_key.len() + RECORD_OVERHEAD_BYTES)
        .sum();
    total.checked_div(records.len())
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
        let retries = Retries::new(
            config.backoff_base,
            config.backoff_max,
            config.error_backoff_max,
        );
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
            retries,
            record_bytes: None,
            pending: Expander::default(),
            pending_behind: None,
            throttles: 0,
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

    async fn backoff(&mut self, failure: Failure) {
        tokio::time::sleep(self.retries.delay(failure)).await;
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
                    self.retries.reset();
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
                    let failure = if e
                        .as_service_error()
                        .and_then(|s| aws_sdk_kinesis::error::ProvideErrorMetadata::code(s))
                        .is_some_and(is_throttle)
                    {
                        Failure::Throttled
                    } else {
                        Failure::Transient
                    };
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&e), "GetShardIterator failed; backing off");
                    self.backoff(failure).await;
                }
            }
        }
    }

    /// GetRecords calls refused for a read limit (and retried) so far.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// Has the shard's end been read (the next batch is the end, or records before it)?
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Is part of the last page still to be handed out (no call for the next batch)?
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next batch. Retries throttling, expired iterators and transient errors itself.
    ///
    /// # Errors
    /// [`ReadError`] for what retrying cannot fix.
    pub async fn next_batch(&mut self) -> Result<Batch, ReadError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Batch::Records {
                    records: self.pending.next_part(MAX_USER_RECORDS_PER_BATCH),
                    millis_behind_latest: self.pending_behind,
                });
            }
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
            let mut page = match self.fetch(&iterator).await {
                Ok(page) => page,
                Err(Fetch::Expired) => {
                    // Renewed right after the last delivered record.
                    self.iterator = None;
                    continue;
                }
                Err(Fetch::Permanent(e)) => return Err(e),
                Err(Fetch::Throttled(detail)) => {
                    self.throttles += 1;
                    if let Some(counter) = &self.config.throttled {
                        counter.inc();
                    }
                    tracing::info!(shard = %self.shard_id, error = %detail, "GetRecords throttled (the shard's read limit, shared by every application reading it); backing off");
                    self.backoff(Failure::Throttled).await;
                    continue;
                }
                Err(Fetch::Retry(detail)) => {
                    tracing::warn!(shard = %self.shard_id, error = %detail, "GetRecords failed; backing off");
                    self.backoff(Failure::Transient).await;
                    continue;
                }
            };
            self.retries.reset();
            if let Some(bytes) = average_record_bytes(&page.records) {
                self.record_bytes = Some(bytes);
            }
            let resume = self.resume_at();
            if let Some(last) = page.records.last() {
                self.position = Position::After(last.sequence_number.to_string());
            }
            self.pending =
                Expander::new(std::mem::take(&mut page.records), resume, self.hash_range);
            self.pending_behind = page.millis_behind_latest;
            let records = self.pending.next_part(MAX_USER_RECORDS_PER_BATCH);
            self.iterator = page.next_shard_iterator.take();
            if self.iterator.is_none() {
                self.ended = true;
                self.children = std::mem::take(&mut page.child_shard_ids);
                if records.is_empty() && self.pending.is_empty() {
                    return Ok(Batch::ShardEnd {
                        child_shard_ids: self.children.clone(),
                    });
                }
                // The last records first; the end on the next call.
            }
            return Ok(Batch::Records {
                records,
                millis_behind_latest: page.millis_behind_latest,
            });
        }
    }

    /// One GetRecords call, through our client or the SDK.
    async fn fetch(&self, iterator: &str) -> Result<RecordsPage, Fetch> {
        let limit = page_limit(
            self.config.max_records,
            self.config.page_bytes,
            self.record_bytes,
        );
        if let Some(wire) = &self.config.get_records {
            match wire.get_records(iterator, limit).await {
                Ok(page) => return Ok(page),
                // An answer our decoder cannot read must not stall the shard: reported, and
                // this page read again through the SDK (an iterator may be used again).
                Err(CallError::Decode(e)) => {
                    tracing::error!(shard = %self.shard_id, error = %e, format = ?wire.format(), "GetRecords answer unreadable by our decoder; reading this page through the SDK instead (set --get-records-client sdk if this repeats)");
                }
                Err(e) => {
                    return Err(match e.code() {
                        Some("ExpiredIteratorException") => Fetch::Expired,
                        Some(code) if is_throttle(code) => Fetch::Throttled(e.to_string()),
                        Some(code) => {
                            match permanent_code(&self.stream, &self.shard_id, code, e.to_string())
                            {
                                Some(p) => Fetch::Permanent(p),
                                None => Fetch::Retry(e.to_string()),
                            }
                        }
                        None => Fetch::Retry(e.to_string()),
                    });
                }
            }
        }
        let res = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await;
        match res {
            Ok(out) => Ok(RecordsPage {
                child_shard_ids: out
                    .child_shards()
                    .iter()
                    .map(|c| c.shard_id().to_string())
                    .collect(),
                millis_behind_latest: out.millis_behind_latest(),
                next_shard_iterator: out.next_shard_iterator,
                records: out.records.into_iter().map(from_sdk).collect(),
            }),
            Err(e) => {
                if e.as_service_error()
                    .is_some_and(|s| s.is_expired_iterator_exception())
                {
                    return Err(Fetch::Expired);
                }
                if let Some(err) = permanent_error(&self.stream, &self.shard_id, &e) {
                    return Err(Fetch::Permanent(err));
                }
                let detail = DisplayErrorContext(&e).to_string();
                if e.as_service_error()
                    .and_then(|s| aws_sdk_kinesis::error::ProvideErrorMetadata::code(s))
                    .is_some_and(is_throttle)
                {
                    return Err(Fetch::Throttled(detail));
                }
                Err(Fetch::Retry(detail))
            }
        }
    }
}

#[cfg(test)]
mod expander_tests {
    use super::*;
    use crate::records::aggregation::aggregate;

    fn raw(seq: &str, data: Vec<u8>) -> KinesisRecord {
        KinesisRecord {
            data: data.into(),
            partition_key: "k".into(),
            sequence_number: seq.into(),
            approximate_arrival_ms: None,
        }
    }

    fn agg(n: usize) -> Vec<u8> {
        let subs: Vec<(String, Option<String>, Vec<u8>)> = (0..n)
            .map(|i| (format!("k{i}"), None, Vec::new()))
            .collect();
        aggregate(&subs)
    }

    fn ids(rs: &[UserRecord]) -> Vec<(String, u64)> {
        rs.iter()
            .map(|r| (r.sequence_number.to_string(), r.sub_sequence_number))
            .collect()
    }

    #[test]
    fn a_page_of_aggregates_is_expanded_in_parts_in_order_and_whole() {
        let mut e = Expander::new(
            vec![
                raw("1", b"plain".to_vec()),
                raw("2", agg(25)),
                raw("3", b"x".to_vec()),
            ],
            None,
            None,
        );
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        while !e.is_empty() {
            let part = e.next_part(10);
            sizes.push(part.len());
            all.extend(ids(&part));
        }
        assert_eq!(sizes, vec![10, 10, 7]);
        let mut expected = vec![("1".to_string(), 0)];
        expected.extend((0..25).map(|i| ("2".to_string(), i)));
        expected.push(("3".to_string(), 0));
        assert_eq!(all, expected);
    }

    #[test]
    fn a_checkpoint_inside_an_aggregate_resumes_after_it_across_parts() {
        let mut e = Expander::new(vec![raw("2", agg(25))], Some(("2".into(), 4)), None);
        let first = e.next_part(10);
        assert_eq!(first.first().map(|r| r.sub_sequence_number), Some(5));
        let mut rest = ids(&first);
        while !e.is_empty() {
            rest.extend(ids(&e.next_part(10)));
        }
        assert_eq!(
            rest,
            (5..25).map(|i| ("2".to_string(), i)).collect::<Vec<_>>()
        );
        // A plain record at the checkpoint is done.
        let mut p = Expander::new(
            vec![raw("7", b"p".to_vec()), raw("8", b"q".to_vec())],
            Some(("7".into(), 0)),
            None,
        );
        assert_eq!(ids(&p.next_part(10)), vec![("8".to_string(), 0)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_error_never_waits_longer_than_its_cap() {
        let cap = Duration::from_secs(1);
        let mut r = Retries::new(Duration::from_millis(100), Duration::from_secs(10), cap);
        let mut longest = Duration::ZERO;
        for _ in 0..200 {
            longest = longest.max(r.delay(Failure::Transient));
        }
        assert!(longest <= cap, "{longest:?} after transient errors");
        // Throttles still back off further (a rate signal), on their own count.
        let throttled = (0..200)
            .map(|_| r.delay(Failure::Throttled))
            .max()
            .unwrap_or_default();
        assert!(
            throttled > cap,
            "throttles grow past {cap:?}: {throttled:?}"
        );
        assert!(throttled <= Duration::from_secs(10));
        // A success starts both over.
        r.reset();
        assert!(r.delay(Failure::Throttled) <= Duration::from_millis(200));
        assert!(r.delay(Failure::Transient) <= Duration::from_millis(200));
    }

    fn record(data: usize, key: &str) -> KinesisRecord {
        KinesisRecord {
            data: bytes::Bytes::from(vec![0u8; data]),
            partition_key: key.to_string().into(),
            sequence_number: "1".to_string().into(),
            approximate_arrival_ms: None,
        }
    }

    #[test]
    fn a_page_of_1_kb_records_is_sized_to_the_target_not_to_10_mb() {
        let avg = average_record_bytes(&[record(1024, "k1"), record(1024, "k2")]);
        assert_eq!(avg, Some(1024 + 2 + RECORD_OVERHEAD_BYTES));
        let limit = page_limit(10_000, DEFAULT_PAGE_BYTES, avg);
        assert_eq!(limit, 1_817);
        // The page it asks for stays within the target.
        assert!(limit as usize * 1024 <= DEFAULT_PAGE_BYTES);
    }

    #[test]
    fn small_records_still_get_full_pages_and_max_records_still_caps() {
        let avg = average_record_bytes(&[record(50, "key")]);
        assert_eq!(page_limit(10_000, DEFAULT_PAGE_BYTES, avg), 10_000);
        assert_eq!(page_limit(500, DEFAULT_PAGE_BYTES, avg), 500);
        // Out-of-range settings are clamped to what Kinesis accepts.
        assert_eq!(page_limit(0, DEFAULT_PAGE_BYTES, avg), 1);
        assert_eq!(page_limit(50_000, usize::MAX, avg), MAX_RECORDS_LIMIT);
    }

    #[test]
    fn huge_records_read_one_at_a_time_and_the_first_page_assumes_1_kib() {
        let avg = average_record_bytes(&[record(1_000_000, "k")]);
        assert_eq!(page_limit(10_000, DEFAULT_PAGE_BYTES, avg), 2);
        assert_eq!(page_limit(10_000, 1, avg), 1);
        assert_eq!(page_limit(10_000, DEFAULT_PAGE_BYTES, None), 2_048);
        assert_eq!(average_record_bytes(&[]), None);
    }
}
