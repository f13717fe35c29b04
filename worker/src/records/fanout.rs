//! Reading one shard by enhanced fan-out: the stream pushes records to a registered consumer
//! over SubscribeToShard (a dedicated 2 MB/s per shard and consumer, ~70 ms latency), instead
//! of the worker polling GetRecords.
//!
//! # Guarantees
//! The same as the polling reader ([`super::reader`]): nothing skipped, a checkpoint inside a
//! KPL record honoured, the shard's end reported once after its last record. A subscription
//! ends after 5 minutes (or on an error) and is renewed right after the last record delivered
//! (the event's continuation sequence number).
//!
//! The end of a shard is known from the subscription itself (an event with child shards, as
//! Kinesis sends at the end): no listing. Only as a safety net for an end that never comes
//! (kinesis-mock never sends the children), a shard that has sat at its tip for
//! [`ReaderConfig::fan_out_end_check`] asks the worker's shared ListShards view whether it
//! closed (one listing per worker per that interval, whatever the number of shards). A shard
//! the view shows closed is *not* taken as ended: the rest is read by polling (GetRecords)
//! from the position reached, until Kinesis says the shard has no more records (no next
//! iterator). A record put just before the close, after the subscription's last (empty)
//! event, is so delivered, not skipped by a guessed end.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};

use super::aggregation::HashRange;
use super::reader::{
    Batch, Expander, MAX_USER_RECORDS_PER_BATCH, Position, ReadError, ReaderConfig, ShardReader,
    from_sdk, permanent_error,
};
use crate::backoff::Backoff;
use crate::lease::checkpoint::Checkpoint;
use crate::lease::discovery::{ShardCache, StreamRef};

/// A subscription is renewed after this long (Kinesis ends it after 5 minutes).
pub const SUBSCRIPTION_LIFETIME: Duration = Duration::from_secs(300);

type Subscription = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
>;

/// Registers (or finds) the stream consumer `name` and waits until it is ACTIVE; returns its
/// ARN.
///
/// # Errors
/// [`ReadError::Kinesis`] when the stream cannot be described or the consumer registered
/// (e.g. access denied: `kinesis:RegisterStreamConsumer`, `kinesis:DescribeStreamConsumer`).
pub async fn register_consumer(
    client: &Client,
    stream: &StreamRef,
    name: &str,
) -> Result<String, ReadError> {
    let fail = |what: &str, detail: String| ReadError::Kinesis {
        stream: stream.to_string(),
        shard_id: "-".into(),
        detail: format!("{what}: {detail}"),
    };
    let stream_arn = match stream {
        StreamRef::Arn(a) => a.clone(),
        StreamRef::Name(n) => client
            .describe_stream_summary()
            .stream_name(n)
            .send()
            .await
            .map_err(|e| fail("DescribeStreamSummary", DisplayErrorContext(e).to_string()))?
            .stream_description_summary
            .map(|s| s.stream_arn)
            .ok_or_else(|| fail("DescribeStreamSummary", "no stream description".into()))?,
    };
    match client
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(_) => tracing::info!(consumer = name, "stream consumer registered"),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => {
            return Err(fail(
                "RegisterStreamConsumer",
                DisplayErrorContext(e).to_string(),
            ));
        }
    }
    wait_active(client, stream, |r| {
        r.stream_arn(&stream_arn).consumer_name(name)
    })
    .await
}

async fn wait_active(
    client: &Client,
    stream: &StreamRef,
    which: impl Fn(
        aws_sdk_kinesis::operation::describe_stream_consumer::builders::DescribeStreamConsumerFluentBuilder,
    ) -> aws_sdk_kinesis::operation::describe_stream_consumer::builders::DescribeStreamConsumerFluentBuilder,
) -> Result<String, ReadError> {
    let fail = |what: &str, detail: String| ReadError::Kinesis {
        stream: stream.to_string(),
        shard_id: "-".into(),
        detail: format!("{what}: {detail}"),
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for _ in 0..120 {
        let out = which(client.describe_stream_consumer())
            .send()
            .await
            .map_err(|e| fail("DescribeStreamConsumer", DisplayErrorContext(e).to_string()))?;
        if let Some(c) = out.consumer_description
            && c.consumer_status == ConsumerStatus::Active
        {
            return Ok(c.consumer_arn);
        }
        backoff.wait().await;
    }
    Err(fail(
        "DescribeStreamConsumer",
        "the consumer is not ACTIVE after 2 minutes".into(),
    ))
}

/// Reads one shard through a fan-out consumer.
pub struct FanOutReader {
    client: Client,
    stream: StreamRef,
    consumer_arn: String,
    shard_id: String,
    hash_range: Option<HashRange>,
    config: ReaderConfig,
    position: Position,
    subscription: Option<(Subscription, Instant)>,
    at_tip: bool,
    /// The worker's shared view of the stream's shards (is this one closed?).
    shards: ShardCache,
    /// When this reader last asked that view (or began): see
    /// [`ReaderConfig::fan_out_end_check`].
    end_checked: Instant,
    ended: bool,
    children: Vec<String>,
    backoff: Backoff,
    /// Polling the rest of a shard seen closed at the tip (see the module docs).
    drain: Option<Box<ShardReader>>,
    /// What is left of the last event (its aggregates expanded part by part), and how far
    /// behind the tip that event was.
    pending: Expander,
    pending_behind: i64,
}

impl std::fmt::Debug for FanOutReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOutReader")
            .field("shard_id", &self.shard_id)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl FanOutReader {
    /// A reader that resumes after `checkpoint` (or starts at an initial position), with
    /// the client and stream of the worker's shared shard view `shards`.
    pub fn new(
        shards: ShardCache,
        consumer_arn: String,
        shard_id: impl Into<String>,
        checkpoint: Checkpoint,
        hash_range: Option<HashRange>,
        config: ReaderConfig,
    ) -> Self {
        let client = shards.client().clone();
        let stream = shards.stream().clone();
        let ended = checkpoint == Checkpoint::ShardEnd;
        // SubscribeToShard may be called once per second per shard and consumer.
        let backoff = Backoff::new(Duration::from_secs(1), config.backoff_max);
        Self {
            client,
            stream,
            consumer_arn,
            shard_id: shard_id.into(),
            hash_range,
            config,
            position: Position::Start(checkpoint),
            subscription: None,
            at_tip: false,
            shards,
            end_checked: Instant::now(),
            ended,
            children: Vec::new(),
            backoff,
            drain: None,
            pending: Expander::default(),
            pending_behind: 0,
        }
    }

    /// The shard is closed and the subscription at its tip: read the rest by polling.
    fn start_drain(&mut self) {
        tracing::info!(shard = %self.shard_id, "shard closed: reading its last records by polling");
        self.subscription = None;
        self.drain = Some(Box::new(ShardReader::from_position(
            self.client.clone(),
            self.stream.clone(),
            self.shard_id.clone(),
            self.position.clone(),
            self.hash_range,
            self.config.clone(),
        )));
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    fn error(&self, detail: String) -> ReadError {
        ReadError::Kinesis {
            stream: self.stream.to_string(),
            shard_id: self.shard_id.clone(),
            detail,
        }
    }

    fn starting_position(&self) -> Result<StartingPosition, ReadError> {
        let b = StartingPosition::builder();
        let b = match &self.position {
            Position::Start(Checkpoint::Sequence { sequence, .. }) => b
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence.as_str()),
            Position::After(sequence) => b
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(sequence),
            Position::Start(Checkpoint::TrimHorizon) => b.r#type(ShardIteratorType::TrimHorizon),
            Position::Start(Checkpoint::Latest) => b.r#type(ShardIteratorType::Latest),
            Position::Start(Checkpoint::AtTimestamp) => {
                let ms =
                    self.config
                        .initial_timestamp_ms
                        .ok_or_else(|| ReadError::NoTimestamp {
                            shard_id: self.shard_id.clone(),
                        })?;
                b.r#type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms))
            }
            Position::Start(Checkpoint::ShardEnd) => b.r#type(ShardIteratorType::TrimHorizon),
        };
        b.build().map_err(|e| self.error(e.to_string()))
    }

    async fn subscribe(&mut self) -> Result<(), ReadError> {
        loop {
            let position = self.starting_position()?;
            let res = self
                .client
                .subscribe_to_shard()
                .consumer_arn(&self.consumer_arn)
                .shard_id(&self.shard_id)
                .starting_position(position)
                .customize()
                // A subscription streams for five minutes: no operation timeout (the
                // worker's Kinesis client has one); the stream's own events tell it alive.
                .config_override(
                    aws_sdk_kinesis::config::Builder::default()
                        .timeout_config(crate::aws::AwsTimeouts::default().streaming()),
                )
                .send()
                .await;
            match res {
                Ok(out) => {
                    self.subscription = Some((out.event_stream, Instant::now()));
                    return Ok(());
                }
                Err(e) => {
                    if let Some(err) = permanent_error(&self.stream, &self.shard_id, &e) {
                        return Err(err);
                    }
                    // ResourceInUse (the previous owner's subscription is still open),
                    // throttling, transient errors.
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&e), "SubscribeToShard failed; backing off");
                    self.backoff.wait().await;
                }
            }
        }
    }

    /// Is the shard closed? Asks the worker's shared ListShards view at most once per
    /// [`ReaderConfig::fan_out_end_check`] (a listing made within that interval, by any reader
    /// of the worker, answers); `false` in between.
    async fn closed(&mut self) -> bool {
        let every = self.config.fan_out_end_check;
        if self.end_checked.elapsed() < every {
            return false;
        }
        // A failed listing is tried again at the next event, not an interval later.
        let Ok(shards) = self
            .shards
            .listed_after(Instant::now().checked_sub(every))
            .await
        else {
            return false;
        };
        self.end_checked = Instant::now();
        shards
            .iter()
            .find(|s| s.shard_id == self.shard_id)
            .is_some_and(|s| s.closed)
    }

    /// Is part of the last event still to be handed out?
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next batch. Renews subscriptions and retries transient errors itself.
    ///
    /// # Errors
    /// [`ReadError`] for what retrying cannot fix.
    pub async fn next_batch(&mut self) -> Result<Batch, ReadError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Batch::Records {
                    records: self.pending.next_part(MAX_USER_RECORDS_PER_BATCH),
                    millis_behind_latest: Some(self.pending_behind),
                });
            }
            if self.ended {
                return Ok(Batch::ShardEnd {
                    child_shard_ids: self.children.clone(),
                });
            }
            if let Some(drain) = self.drain.as_mut() {
                return drain.next_batch().await;
            }
            if self
                .subscription
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= SUBSCRIPTION_LIFETIME)
            {
                self.subscription = None;
            }
            if self.subscription.is_none() {
                self.subscribe().await?;
            }
            let Some((sub, _)) = self.subscription.as_mut() else {
                continue;
            };
            match sub.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(mut ev))) => {
                    self.backoff.reset();
                    let resume = match &self.position {
                        Position::Start(Checkpoint::Sequence {
                            sequence,
                            sub_sequence,
                        }) => Some((sequence.as_str().to_string(), *sub_sequence)),
                        _ => None,
                    };
                    if let Some(last) = ev.records.last() {
                        self.position = Position::After(last.sequence_number.clone());
                    }
                    if !ev.continuation_sequence_number.is_empty() {
                        self.position = Position::After(ev.continuation_sequence_number.clone());
                    }
                    self.pending = Expander::new(
                        std::mem::take(&mut ev.records)
                            .into_iter()
                            .map(from_sdk)
                            .collect(),
                        resume,
                        self.hash_range,
                    );
                    self.pending_behind = ev.millis_behind_latest;
                    let records = self.pending.next_part(MAX_USER_RECORDS_PER_BATCH);
                    self.at_tip = records.is_empty()
                        && self.pending.is_empty()
                        && ev.millis_behind_latest == 0;
                    let children: Vec<String> = ev
                        .child_shards
                        .unwrap_or_default()
                        .iter()
                        .map(|c| c.shard_id().to_string())
                        .collect();
                    if !children.is_empty() {
                        self.ended = true;
                        self.children = children;
                    } else if self.at_tip && self.closed().await {
                        self.start_drain();
                        continue;
                    }
                    if self.ended && records.is_empty() && self.pending.is_empty() {
                        continue;
                    }
                    return Ok(Batch::Records {
                        records,
                        millis_behind_latest: Some(ev.millis_behind_latest),
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The subscription ended (after 5 minutes, or the shard closed): renew
                    // from the position reached.
                    self.subscription = None;
                    if self.at_tip && self.closed().await {
                        self.start_drain();
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %DisplayErrorContext(&e), "fan-out subscription failed; resubscribing");
                    self.subscription = None;
                    self.backoff.wait().await;
                }
            }
        }
    }
}
