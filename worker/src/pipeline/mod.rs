//! The record pipeline: for every shard lease the coordinator grants, a record processor that
//! reads the shard and delivers its records to the app over gRPC.
//!
//! # Guarantees
//! - Per shard one batch is in flight at a time, in shard order, so the records of one
//!   partition key reach the app in order. With `parallelization` N > 1 a batch is split by
//!   partition key into up to N lanes called at once; a key always goes to one lane and
//!   the batch ends when every lane did, so per-key order still holds, and the checkpoint
//!   is the lanes' low watermark ([`lanes`]). The next batch is read meanwhile (prefetch), within
//!   a worker-wide byte budget. Shards are processed concurrently; a shard whose delivery
//!   is retrying holds none of the budget and reads no further ahead, so a stuck shard never
//!   slows the others (test: `lease_slow_io::a_shard_stuck_retrying…`).
//! - Calls for one shard never overlap (except between lanes), also across processors: a shard's next processor
//!   (the lease came back) starts only after the previous one's last call (`LeaseLost`,
//!   `ShutdownRequested`) returned or timed out.
//! - A batch the app fails is delivered again, with backoff, until the app acknowledges it.
//!   Only with an on-failure destination may records be passed over: after `max_attempts`
//!   failed calls, or when older than `max_record_age`, they are sent there first, and the
//!   shard waits (retrying the send) until the destination took them ([`destination`],
//!   [`policy`]).
//! - Nothing beyond what the app acknowledged and asked to checkpoint is checkpointed
//!   (the one rule: [`progress`]);
//!   checkpoint writes are coalesced ([`CheckpointPolicy`]: due after its interval, or after
//!   so many records or bytes) and flushed before a lease is handed over or released. A
//!   restart therefore redelivers at most what was acknowledged since the last write, never
//!   less than everything unacknowledged.
//! - Records are delivered only while [`ShardLease::is_valid`] holds: a worker that lost its
//!   lease (or cannot confirm its own heartbeat) stops before anyone else may take over.
//! - Every app call has a deadline (`app_call_timeout`; `shutdown_call_timeout` for
//!   `ShutdownRequested`), and a lost lease cancels the call in flight: a hung app never
//!   holds a shard's next processor back for longer than that. A hand-over or shutdown
//!   interrupts every wait (a retry's backoff, a destination that is down), so the final
//!   checkpoint lands before the grant deadline; only an app call in flight is finished.
//! - A shard's end is checkpointed as `SHARD_END` only after the app answered `ShardEnded`;
//!   its children start after that.
//! - A polled shard's GetRecords calls start at least `read_pace.min_interval` apart and
//!   each waits until the page before it is paid for at `read_pace.bytes_per_second`, so a
//!   shard catching up stays within Kinesis's read limits instead of being refused
//!   ([`pace`]; test: `pipeline_delivery::delivery::a_shard_catching_up_is_read_no_faster…`).

mod app;
pub mod destination;
pub mod lanes;
pub mod pace;
pub mod policy;
pub mod position;
pub mod progress;
mod shard;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use app::{App, LocalProcessor};
use kinesis_processor::v1::shutdown_requested_request::Reason;
/// Record filters: [`kinesis_spec::filter`], which the operator also checks specs with.
pub use kinesis_spec::filter;
use shard::{Control, ShardTask};
use tokio::sync::{Semaphore, mpsc};

use crate::lease::coordinator::{CoordinatorHandle, LagBoard, LeaseEvent, ShardLease};
use crate::lease::discovery::{ShardCache, StreamRef};

/// How old the readers' shared ListShards view may be.
const SHARD_VIEW_MAX_AGE: Duration = Duration::from_secs(10);
use crate::metrics::{EventLabels, Metrics, ShardLabels};
use crate::records::reader::ReaderConfig;

/// Settings of the record pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The stream.
    pub stream: StreamRef,
    /// The application (lease table), told to the app at `Initialize`.
    pub application: String,
    /// This worker, told to the app at `Initialize`.
    pub worker_id: String,
    /// GetRecords settings.
    pub reader: ReaderConfig,
    /// Read by enhanced fan-out through this registered consumer (its ARN); `None`: poll.
    pub fan_out_consumer: Option<String>,
    /// Where each shard's lag is published (the coordinator's heartbeat carries it).
    pub lag: LagBoard,
    /// The wait between reads of a shard at its tip while records come
    /// ([`pace::TipPolling`]).
    pub idle_time: Duration,
    /// The longest wait between reads of a shard at its tip: an idle or throttled shard backs
    /// off from `idle_time` to this ([`pace::TipPolling`]).
    pub idle_time_max: Duration,
    /// How a shard's GetRecords calls are spaced: Kinesis's 5 calls and 2 MB a second per
    /// shard ([`pace`]).
    pub read_pace: pace::ReadPace,
    /// When a shard's checkpoint write is due (besides hand-overs, releases, shard ends and
    /// shutdowns, which always write).
    pub checkpoint: CheckpointPolicy,
    /// Hand a batch to `destination` after this many failed deliveries; `None` (or no
    /// destination): retry forever, skipping nothing.
    pub max_attempts: Option<u32>,
    /// Where records go that exhausted `max_attempts` or exceeded `max_record_age`.
    pub destination: Option<Arc<destination::Destination>>,
    /// Split a failing batch in halves before retrying (a poison record then holds back
    /// only itself).
    pub bisect_on_error: bool,
    /// Records older than this (by arrival time) go to the destination, not to the app.
    pub max_record_age: Option<Duration>,
    /// Honour the app's `failed_from` (partial batch failure): acknowledge the records
    /// before it and retry from it. Off: such an answer fails the whole call.
    pub report_batch_item_failures: bool,
    /// Only records matching one of these reach the app; the others count as processed.
    pub filters: filter::Filters,
    /// Most records in one `ProcessRecords` call; `None`: a GetRecords page's worth.
    pub batch_size: Option<usize>,
    /// Wait up to this long gathering records for one call (until `batch_size` is reached);
    /// zero: deliver each page as it is read.
    pub batching_window: Duration,
    /// Lanes per shard (1-10): a batch is split by partition key into this many parts
    /// delivered at once (the app then sees concurrent calls for one shard).
    pub parallelization: usize,
    /// First retry delay of a failed app call.
    pub retry_base: Duration,
    /// Longest retry delay of a failed app call.
    pub retry_max: Duration,
    /// Most record bytes in one `ProcessRecords` call (a GetRecords page is split to fit).
    pub max_call_bytes: usize,
    /// Most records, in KiB, read ahead of delivery across all shards (their data and
    /// [`crate::records::reader::RECORD_OVERHEAD_BYTES`] each).
    pub max_buffered_kib: u32,
    /// How long the app may take to answer `ShutdownRequested`.
    pub shutdown_call_timeout: Duration,
    /// How long the app may take to answer any other call: past it the call is cancelled
    /// and counts as failed.
    pub app_call_timeout: Duration,
    /// Kinesis's time (pins of `LATEST` leases, record ages); set by the Kinesis client's
    /// answers when it carries this clock's interceptor.
    pub clock: crate::clock::KinesisClock,
}

/// When a shard's acknowledged records are written as its checkpoint: one `UpdateItem` of
/// the lease item (a DynamoDB write unit) per write, so the policy is the bill.
///
/// # Guarantees
/// A write is due once `interval` has passed since the last one, or once `max_records`
/// records or `max_bytes` record bytes were delivered since: what a crash (or a lease lost
/// to failover) can make the next owner deliver again is bounded by all three. With the
/// defaults (10 minutes, 60,000 records, 60 MB: a minute of a shard at its write limits) a
/// shard at its limits writes once a minute, as KCL's sample apps do, and a shard at a
/// tenth of them once every 10 minutes: the cost follows the traffic. Hand-overs,
/// releases, shard ends and shutdowns write whatever is acknowledged, due or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Longest time between two writes of a shard with acknowledged records.
    pub interval: Duration,
    /// Records delivered since the last write that make the next one due.
    pub max_records: u64,
    /// Record bytes delivered since the last write that make the next one due.
    pub max_bytes: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(600),
            max_records: 60_000,
            max_bytes: 60_000_000,
        }
    }
}

impl CheckpointPolicy {
    /// Is a write due, `since` after the last one (`None`: none yet, the first is written at
    /// once) with `records` records of `bytes` bytes delivered since?
    pub fn due(&self, since: Option<Duration>, records: u64, bytes: u64) -> bool {
        since.is_none_or(|t| t >= self.interval)
            || records >= self.max_records
            || bytes >= self.max_bytes
    }
}

impl PipelineConfig {
    /// Defaults for `stream`.
    pub fn new(
        stream: StreamRef,
        application: impl Into<String>,
        worker_id: impl Into<String>,
    ) -> Self {
        Self {
            stream,
            application: application.into(),
            worker_id: worker_id.into(),
            reader: ReaderConfig::default(),
            fan_out_consumer: None,
            lag: LagBoard::default(),
            idle_time: Duration::from_millis(500),
            idle_time_max: Duration::from_millis(1000),
            read_pace: pace::ReadPace::default(),
            checkpoint: CheckpointPolicy::default(),
            max_attempts: None,
            destination: None,
            bisect_on_error: false,
            max_record_age: None,
            report_batch_item_failures: false,
            filters: filter::Filters::default(),
            batch_size: None,
            batching_window: Duration::ZERO,
            parallelization: 1,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            max_call_bytes: 3 * 1024 * 1024,
            max_buffered_kib: 64 * 1024,
            shutdown_call_timeout: Duration::from_secs(10),
            app_call_timeout: Duration::from_secs(300),
            clock: crate::clock::KinesisClock::default(),
        }
    }
}

impl PipelineConfig {
    /// The failure policy these settings make.
    pub fn failure_policy(&self) -> policy::FailurePolicy {
        policy::FailurePolicy {
            max_attempts: self.max_attempts,
            bisect: self.bisect_on_error,
            destination: self.destination.is_some(),
        }
    }
}

/// Runs record processors for the leases the coordinator grants.
pub struct Pipeline {
    config: Arc<PipelineConfig>,
    app: App,
    kinesis: aws_sdk_kinesis::Client,
    coordinator: CoordinatorHandle,
    metrics: Arc<Metrics>,
    budget: Arc<Semaphore>,
    /// One view of the stream's shards for every reader (see [`ShardCache`]).
    shard_view: ShardCache,
    shards: HashMap<String, mpsc::Sender<Control>>,
    /// The last task started per shard: the next one for the shard waits for it, so calls
    /// for one shard never overlap (a lost processor's LeaseLost before the next
    /// processor's Initialize).
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    draining: Arc<AtomicBool>,
}

impl Pipeline {
    /// A pipeline delivering to `app`.
    pub fn new(
        config: PipelineConfig,
        app: App,
        kinesis: aws_sdk_kinesis::Client,
        coordinator: CoordinatorHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut config = config;
        config.reader.throttled = Some(metrics.read_throttled.clone());
        let budget = Arc::new(Semaphore::new(config.max_buffered_kib as usize));
        let shard_view =
            ShardCache::new(kinesis.clone(), config.stream.clone(), SHARD_VIEW_MAX_AGE);
        Self {
            shard_view,
            config: Arc::new(config),
            app,
            kinesis,
            coordinator,
            metrics,
            budget,
            shards: HashMap::new(),
            tasks: HashMap::new(),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    fn event(&self, event: &'static str) {
        self.metrics
            .lease_events
            .get_or_create(&EventLabels { event })
            .inc();
    }

    /// Follows the coordinator's events until its channel closes.
    pub async fn run(mut self, mut events: mpsc::Receiver<LeaseEvent>) {
        while let Some(event) = events.recv().await {
            self.shards.retain(|_, tx| !tx.is_closed());
            match event {
                LeaseEvent::Acquired(lease) => {
                    self.event("acquired");
                    self.start(lease);
                }
                LeaseEvent::Lost { shard_id } => {
                    self.event("lost");
                    if let Some(tx) = self.shards.remove(&shard_id) {
                        let _ = tx.send(Control::Lost).await;
                    }
                }
                LeaseEvent::ShutdownRequested {
                    shard_id,
                    done,
                    deadline,
                } => {
                    self.event("shutdown_requested");
                    let reason = if self.draining.load(Ordering::SeqCst) {
                        Reason::WorkerShutdown
                    } else {
                        Reason::Handoff
                    };
                    match self.shards.remove(&shard_id) {
                        Some(tx) => {
                            // A task that already finished drops `done`: answered too.
                            let _ = tx
                                .send(Control::Shutdown {
                                    done,
                                    reason,
                                    deadline,
                                })
                                .await;
                        }
                        None => {
                            let _ = done.send(());
                        }
                    }
                }
            }
            self.metrics.leases_held.set(self.shards.len() as i64);
        }
        for (shard, tx) in self.shards.drain() {
            let _ = tx.send(Control::Lost).await;
            self.metrics
                .millis_behind_latest
                .remove(&ShardLabels { shard });
        }
        self.metrics.leases_held.set(0);
    }

    /// Set it before [`CoordinatorHandle::shutdown`]: from then on shutdown requests are
    /// reported to the app as `REASON_WORKER_SHUTDOWN` rather than a hand-over.
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    fn start(&mut self, lease: ShardLease) {
        let (tx, rx) = mpsc::channel(4);
        let shard = lease.shard_id.clone();
        let task = ShardTask {
            lease,
            app: self.app.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            coordinator: self.coordinator.clone(),
            budget: self.budget.clone(),
            kinesis: self.kinesis.clone(),
            shards: self.shard_view.clone(),
        };
        let metrics = self.metrics.clone();
        let lag = self.config.lag.clone();
        let label = ShardLabels {
            shard: shard.clone(),
        };
        self.tasks.retain(|_, t| !t.is_finished());
        let previous = self.tasks.remove(&shard);
        let handle = tokio::spawn(async move {
            if let Some(p) = previous {
                // The previous processor of this shard is finishing (its LeaseLost or
                // ShutdownRequested call, bounded by their timeouts): after it.
                let _ = p.await;
            }
            task.run(rx).await;
            lag.remove(&label.shard);
            metrics.millis_behind_latest.remove(&label);
        });
        self.tasks.insert(shard.clone(), handle);
        self.shards.insert(shard, tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_due_by_time_or_by_volume_whichever_comes_first() {
        let p = CheckpointPolicy::default();
        let s = Duration::from_secs;
        // The first write at once.
        assert!(p.due(None, 0, 0));
        // A quiet shard: only after the interval.
        assert!(!p.due(Some(s(599)), 10, 1_000));
        assert!(p.due(Some(s(600)), 1, 10));
        // A shard at its write limits (1,000 records, 1 MB a second): after a minute.
        assert!(!p.due(Some(s(59)), 59_000, 59_000_000));
        assert!(p.due(Some(s(60)), 60_000, 60_000_000));
        // Small records: the record bound; large ones: the byte bound.
        assert!(p.due(Some(s(1)), 60_000, 100));
        assert!(p.due(Some(s(1)), 10, 60_000_000));
        assert!(!p.due(Some(s(1)), 59_999, 59_999_999));
    }
}
