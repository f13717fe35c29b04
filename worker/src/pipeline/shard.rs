//! One shard's record processor: a reading task that prefetches, and the delivery loop that
//! calls the app one batch at a time and coalesces its checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kinesis_processor::v1;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::PipelineConfig;
use super::app::{App, BatchRequest};
use super::destination::{About, Reason, message};
use super::lanes::{Watermark, lane_of};
use super::policy::{AfterFailure, Plan, Segment};
use super::position::{Position, Wanted, resolve};
use crate::backoff::Backoff;
use crate::lease::checkpoint::{Checkpoint, SequenceNumber};
use crate::lease::coordinator::{CoordinatorHandle, ShardLease};
use crate::lease::table::LeaseError;
use crate::metrics::{EventLabels, Metrics, ReasonLabels, ShardLabels};
use crate::records::ShardSource;
use crate::records::aggregation::UserRecord;
use crate::records::fanout::FanOutReader;
use crate::records::reader::{Batch, ShardReader};

/// How far before Kinesis's "now" ([`crate::clock`]) a `LATEST` lease is pinned: covers
/// the skew between Kinesis's own hosts (the `Date` of one answer against the arrival
/// timestamps another assigns), and a worker clock ahead of Kinesis's by up to this much
/// while Kinesis has not answered yet (a listing is asked for first, so only when Kinesis
/// sends no `Date`). A next owner may therefore get up to this much from before the first
/// owner's start, never less than from it.
const PIN_MARGIN_MS: i64 = 5_000;

/// Kept free before a shutdown deadline for the final checkpoint write.
const FLUSH_RESERVE: Duration = Duration::from_millis(300);

/// What the dispatcher tells a shard task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The lease is gone: stop now, nothing may be checkpointed.
    Lost,
    /// Finish the batch in flight, let the app checkpoint, answer `done`.
    Shutdown {
        done: oneshot::Sender<()>,
        reason: v1::shutdown_requested_request::Reason,
        /// Everything (ShutdownRequested, the final checkpoint) is done by then.
        deadline: Instant,
    },
}

/// Read ahead of delivery; its share of the worker's prefetch budget is in the shard's
/// [`Ledger`] under `ticket`.
enum Item {
    Records {
        records: Vec<UserRecord>,
        millis_behind_latest: i64,
        ticket: u64,
    },
    End {
        children: Vec<String>,
    },
}

/// One shard's share of the worker-wide read-ahead budget.
///
/// # Guarantees
/// A shard whose delivery is retrying (the app fails its batch) holds none of the budget:
/// [`Ledger::stall`] gives back every permit of the shard, and while stalled its reader
/// neither reads ahead nor waits for budget. So a stuck shard never slows the others; it
/// keeps at most the pages it had already read (the one in delivery, one waiting, one being
/// read), outside the budget.
struct Ledger {
    permits: std::sync::Mutex<HashMap<u64, OwnedSemaphorePermit>>,
    next: AtomicU64,
    stalled: watch::Sender<bool>,
}

impl Ledger {
    fn new() -> Self {
        Self {
            permits: std::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stalled: watch::Sender::new(false),
        }
    }

    fn ticket(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn is_stalled(&self) -> bool {
        *self.stalled.borrow()
    }

    /// Keeps `permit` for `ticket`, unless the shard stalled meanwhile (then it goes back).
    fn hold(&self, ticket: u64, permit: OwnedSemaphorePermit) {
        if let Ok(mut p) = self.permits.lock()
            && !self.is_stalled()
        {
            p.insert(ticket, permit);
        }
    }

    /// The item `ticket` was delivered (or given up): its budget goes back.
    fn release(&self, ticket: u64) {
        if let Ok(mut p) = self.permits.lock() {
            p.remove(&ticket);
        }
    }

    /// Delivery is retrying: give back everything and read no further ahead.
    fn stall(&self) {
        if !self.is_stalled() {
            self.stalled.send_replace(true);
        }
        if let Ok(mut p) = self.permits.lock() {
            p.clear();
        }
    }

    /// Delivery moves again.
    fn unstall(&self) {
        if self.is_stalled() {
            self.stalled.send_replace(false);
        }
    }
}

/// Records gathered for delivery by the batching window.
struct Gathered {
    records: Vec<UserRecord>,
    millis_behind_latest: i64,
    /// The read-ahead budget they hold.
    tickets: Vec<u64>,
    /// The shard ended right after them (its children).
    end: Option<Vec<String>>,
}

/// How a delivery ended.
enum Flow {
    Continue,
    /// A control message (shutdown, hand-over) stopped delivery before the end of the
    /// records; the rest goes to the next owner.
    Interrupted,
    /// The lease is gone (lost or revoked).
    Lost,
}

/// How a guarded wait on something outside the worker (an app call, a destination send, a
/// retry's backoff) ended; see [`ShardTask::guard`].
enum Guarded<T> {
    /// It finished.
    Done(T),
    /// It took longer than its deadline: cancelled.
    TimedOut,
    /// A `Shutdown` came (kept in `Delivery::deferred`) and the wait was one a shutdown
    /// interrupts: cancelled.
    Interrupted,
    /// The lease is gone (a `Lost` came, or the lease is no longer valid): cancelled.
    Lost,
}

/// What a `Shutdown` does to a guarded wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnShutdown {
    /// Finish it (an app call in flight: its records stay one unbroken stretch).
    Finish,
    /// Cancel it (a backoff, a destination send: the next owner does it again).
    Interrupt,
}

/// How often a guarded wait looks at the lease's validity (a local check, no I/O): a worker
/// that cannot confirm its own heartbeat stops its calls within this much of noticing.
const VALIDITY_CHECK: Duration = Duration::from_millis(250);

/// When a call that finishes during a hand-over (`deferred` holds the `Shutdown`) is cut
/// off: enough before the hand-over's deadline for `ShutdownRequested` and the final
/// checkpoint write.
fn shutdown_cutoff(deferred: &Option<Control>) -> Option<Instant> {
    match deferred {
        Some(Control::Shutdown { deadline, .. }) => {
            Some(deadline.checked_sub(FLUSH_RESERVE * 2).unwrap_or(*deadline))
        }
        _ => None,
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records the app will not see (filtered out, or taken by the destination) up to and
/// including `last` count as delivered. They are checkpointed at once only if the app had
/// nothing acknowledged but not yet checkpointed before them; otherwise the app's next
/// checkpoint covers them (an app that buffers keeps its say). A lane's last delivery may lie
/// behind the shard's checkpoint (the other lanes moved it): nothing of it is pending then.
fn pass_over(d: &mut Delivery, last: Position) {
    let floor = d.floor();
    let nothing_pending = d.delivered.as_ref().is_none_or(|p| !p.is_beyond(&floor));
    d.delivered = Some(last.clone());
    if nothing_pending {
        d.wanted = Some(last);
    }
}

/// The position of a record; `None` (logged) for a malformed sequence number, which Kinesis
/// never sends: there is nothing to checkpoint against then.
fn position_of(shard: &str, r: &UserRecord) -> Option<Position> {
    match SequenceNumber::parse(&r.sequence_number) {
        Ok(sequence) => Some(Position {
            sequence,
            sub_sequence: r.sub_sequence_number,
        }),
        Err(e) => {
            tracing::error!(shard = %shard, error = %e, "record with a malformed sequence number");
            None
        }
    }
}

pub(crate) struct ShardTask {
    pub(crate) lease: ShardLease,
    pub(crate) app: App,
    pub(crate) config: Arc<PipelineConfig>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) coordinator: CoordinatorHandle,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) kinesis: aws_sdk_kinesis::Client,
    /// The worker's shared view of the stream's shards.
    pub(crate) shards: crate::lease::discovery::ShardCache,
}

/// Delivery state of one shard.
struct Delivery {
    shard: String,
    /// The last checkpoint written.
    committed: Checkpoint,
    /// The furthest position the app asked to checkpoint, not written yet.
    wanted: Option<Position>,
    /// The last record delivered to (and acknowledged by) the app.
    delivered: Option<Position>,
    last_write: Option<Instant>,
    deferred: Option<Control>,
    /// The lease's fencing token (owner, counter): fixed while this task owns the lease (the
    /// counter changes only with the owner), so it is read once, not per batch.
    fencing: (String, u64),
    /// This shard's share of the read-ahead budget.
    ledger: Arc<Ledger>,
    /// With more than one lane (parallelism within the shard): what each lane did.
    lanes: Option<Lanes>,
    /// When the app was last called for this shard (records or not): a shard whose pages
    /// the app never sees (all filtered, all destined) still gets an empty call once per
    /// checkpoint interval, so the app can checkpoint what it acknowledged before them.
    last_call: Instant,
}

/// The lanes of a shard delivered in parallel: the shard's `delivered` and `wanted` are the
/// low watermarks of its lanes'.
struct Lanes {
    delivered: Watermark,
    wanted: Watermark,
    /// Per lane: the last record it delivered.
    each: Vec<Option<Position>>,
}

impl Lanes {
    fn new(n: usize) -> Self {
        Self {
            delivered: Watermark::new(n),
            wanted: Watermark::new(n),
            each: vec![None; n],
        }
    }
}

/// Counts a lane busy while it lives.
struct Busy<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Busy<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Delivery {
    /// The furthest checkpoint written or asked for.
    fn floor(&self) -> Checkpoint {
        self.wanted
            .as_ref()
            .map_or_else(|| self.committed.clone(), Position::checkpoint)
    }
}

fn wanted_of(c: Option<v1::Checkpoint>) -> Wanted {
    match c.and_then(|c| c.target) {
        None => Wanted::Nothing,
        Some(v1::checkpoint::Target::AllDelivered(_)) => Wanted::AllDelivered,
        Some(v1::checkpoint::Target::UpTo(p)) => {
            Wanted::UpTo(p.sequence_number, p.sub_sequence_number)
        }
    }
}

fn starting_position(c: &Checkpoint) -> v1::StartingPosition {
    use v1::starting_position::Position as P;
    let position = match c {
        Checkpoint::Sequence {
            sequence,
            sub_sequence,
        } => P::After(v1::RecordPosition {
            sequence_number: sequence.as_str().to_string(),
            sub_sequence_number: *sub_sequence,
        }),
        other => P::Initial(other.to_kcl().0.to_string()),
    };
    v1::StartingPosition {
        position: Some(position),
    }
}

/// Splits a batch into calls of at most `max_bytes` of record data (at least one record
/// each) and at most `max_records` records, keeping the order.
fn chunks(
    mut records: Vec<UserRecord>,
    max_bytes: usize,
    max_records: Option<usize>,
) -> Vec<Vec<UserRecord>> {
    let max_records = max_records.unwrap_or(usize::MAX).max(1);
    // Where each chunk starts; then split from the back, so that a page that fits in one
    // call (the usual case) is not moved at all.
    let mut starts = Vec::new();
    let (mut bytes, mut count) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = r.data.len() + r.partition_key.len() + 64;
        if i > 0 && (bytes + size > max_bytes || count == max_records) {
            starts.push(i);
            (bytes, count) = (0, 0);
        }
        bytes += size;
        count += 1;
    }
    let mut out = Vec::with_capacity(starts.len() + 1);
    for &start in starts.iter().rev() {
        out.push(records.split_off(start));
    }
    if !records.is_empty() {
        out.push(records);
    }
    out.reverse();
    out
}

/// After "not found" for `shard` (seen at `seen`): `Some(children)` if the stream exists
/// and a listing made after that answer no longer lists the shard (it expired), `None` if
/// it does, or the stream itself is gone or cannot be listed (then the read is retried,
/// nothing is given up). A cached listing from before the answer is never trusted: a child
/// created after it would be declared expired and ended with none of its records.
async fn expired(
    shards: &crate::lease::discovery::ShardCache,
    shard: &str,
    seen: std::time::Instant,
) -> Option<Vec<String>> {
    // A listing that has the shard settles it without a call (every shard of a stream
    // whose fan-out consumer was deleted answers "not found": no listing storm); only its
    // absence must be confirmed by a listing begun after the answer.
    let cached = shards.listed_after(None).await.ok()?;
    if cached.iter().any(|s| s.shard_id == shard) {
        return None;
    }
    let shards = shards.listed_after(Some(seen)).await.ok()?;
    if shards.iter().any(|s| s.shard_id == shard) {
        return None;
    }
    Some(
        shards
            .iter()
            .filter(|s| s.parents.iter().any(|p| p == shard))
            .map(|s| s.shard_id.clone())
            .collect(),
    )
}

/// Reads the shard ahead of delivery: one batch waits in the channel, the next is read
/// meanwhile; the worker-wide byte budget bounds what all shards hold.
async fn read_ahead(
    mut reader: ShardSource,
    shards: crate::lease::discovery::ShardCache,
    tx: mpsc::Sender<Item>,
    config: Arc<PipelineConfig>,
    metrics: Arc<Metrics>,
    budget: Arc<Semaphore>,
    ledger: Arc<Ledger>,
) {
    let shard = reader.shard_id().to_string();
    let mut stalled = ledger.stalled.subscribe();
    let gauge = metrics
        .millis_behind_latest
        .get_or_create(&ShardLabels {
            shard: shard.clone(),
        })
        .clone();
    let mut errors = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    // The last call's start and when the next may start: Kinesis's 5 calls and 2 MB a
    // second per shard (`pace`); fan-out pushes at its own pace.
    let mut started = Instant::now();
    let mut next_call = started;
    // Bytes of the last call's page handed out so far (a page of KPL aggregates comes in
    // parts: only the call is paced, by the whole page).
    let mut page_read: u64 = 0;
    loop {
        // While delivery retries, read no further ahead.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let from_page = reader.has_pending();
        if !reader.pushes() && !from_page {
            // The metric counts only the wait the byte limit adds to the call limit's.
            let floor = (started + config.read_pace.min_interval).max(Instant::now());
            if next_call > floor {
                metrics
                    .read_paced_seconds
                    .inc_by((next_call - floor).as_secs_f64());
            }
            tokio::time::sleep_until(next_call).await;
        }
        if !from_page {
            started = Instant::now();
            next_call = started + config.read_pace.min_interval;
            page_read = 0;
        }
        match reader.next_batch().await {
            Ok(Batch::Records {
                records,
                millis_behind_latest,
            }) => {
                errors.reset();
                // One pass: data bytes, and each record's own memory, for the budget (a KPL
                // aggregate of 170,000 empty records holds tens of MB and no data); data and
                // keys for the read limit.
                let (data_bytes, key_bytes) = records.iter().fold((0usize, 0usize), |(d, k), r| {
                    (d + r.data.len(), k + r.partition_key.len())
                });
                let bytes = data_bytes.saturating_add(
                    records
                        .len()
                        .saturating_mul(crate::records::reader::RECORD_OVERHEAD_BYTES),
                );
                let read = u64::try_from(data_bytes.saturating_add(key_bytes)).unwrap_or(u64::MAX);
                page_read = page_read.saturating_add(read);
                next_call = started + config.read_pace.gap(page_read);
                let behind = millis_behind_latest.unwrap_or(0);
                gauge.set(behind);
                config.lag.set(&shard, behind);
                if records.is_empty() {
                    if behind == 0 && !reader.pushes() {
                        tokio::time::sleep(config.idle_time).await;
                    }
                    continue;
                }
                let kib = u32::try_from(bytes.div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .min(config.max_buffered_kib);
                let ticket = ledger.ticket();
                // The wait for budget ends when delivery stalls: a stuck shard must not
                // stand in the (fair, first-come) queue in front of the others.
                tokio::select! {
                    permit = budget.clone().acquire_many_owned(kib) => {
                        if let Ok(permit) = permit {
                            ledger.hold(ticket, permit);
                        }
                    }
                    _ = stalled.wait_for(|s| *s) => {}
                }
                let item = Item::Records {
                    records,
                    millis_behind_latest: behind,
                    ticket,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            Ok(Batch::ShardEnd { child_shard_ids }) => {
                let _ = tx
                    .send(Item::End {
                        children: child_shard_ids,
                    })
                    .await;
                return;
            }
            Err(e) => {
                let seen = std::time::Instant::now();
                if matches!(e, crate::records::reader::ReadError::NotFound { .. })
                    && let Some(children) = expired(&shards, &shard, seen).await
                {
                    // A closed shard past the stream's retention: nothing left to read. Its
                    // end, so its children start (retrying would hold them back forever).
                    tracing::warn!(shard = %shard, error = %e, children = ?children, "the shard is no longer in the stream (past its retention): treating it as ended");
                    metrics.shards_expired.inc();
                    let _ = tx.send(Item::End { children }).await;
                    return;
                }
                let delay = errors.next_delay().max(Duration::from_secs(1));
                tracing::error!(shard = %shard, error = %e, retry_in = ?delay, "reading the shard failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl ShardTask {
    /// Runs until the lease is lost, handed over, released or the shard ended.
    pub(crate) async fn run(self, mut control: mpsc::Receiver<Control>) {
        let shard = self.lease.shard_id.clone();
        let hash_range = self
            .lease
            .hash_range
            .as_ref()
            .and_then(|(s, e)| crate::records::aggregation::HashRange::parse(s, e));
        let mut reader_config = self.config.reader.clone();
        if let Some(ts) = self.lease.start_timestamp_ms {
            // A LATEST lease pinned by an earlier owner: resume where that one started.
            reader_config.initial_timestamp_ms = Some(ts);
        }
        let mut d = Delivery {
            shard: shard.clone(),
            committed: self.lease.checkpoint.clone(),
            wanted: None,
            delivered: None,
            last_write: None,
            deferred: None,
            fencing: self.lease.fencing_token().await,
            ledger: Arc::new(Ledger::new()),
            lanes: (self.config.parallelization > 1)
                .then(|| Lanes::new(self.config.parallelization)),
            last_call: Instant::now(),
        };
        // The first owner of a LATEST lease pins it before anything is read, and then reads
        // from its own pin like every later owner: a LATEST iterator asked for after the pin
        // (a slow Kinesis, an app slow to initialize) would skip what was put in between.
        if self.lease.checkpoint == Checkpoint::Latest {
            match self.pin_latest(&mut d, &mut control).await {
                Some(at) => reader_config.initial_timestamp_ms = Some(at),
                None => return self.finish_lost(&mut d, false).await,
            }
        }
        let start = d.committed.clone();
        let reader = match &self.config.fan_out_consumer {
            None => ShardSource::Polling(Box::new(ShardReader::new(
                self.kinesis.clone(),
                self.config.stream.clone(),
                shard.clone(),
                start.clone(),
                hash_range,
                reader_config,
            ))),
            Some(consumer_arn) => ShardSource::FanOut(Box::new(FanOutReader::new(
                self.shards.clone(),
                consumer_arn.clone(),
                shard.clone(),
                start.clone(),
                hash_range,
                reader_config,
            ))),
        };
        if !self.initialize(&mut d, &start, &mut control).await {
            self.finish_lost(&mut d, false).await;
            return;
        }
        let (tx, mut rx) = mpsc::channel(1);
        let reading = tokio::spawn(read_ahead(
            reader,
            self.shards.clone(),
            tx,
            self.config.clone(),
            self.metrics.clone(),
            self.budget.clone(),
            d.ledger.clone(),
        ));
        let _abort = AbortOnDrop(reading);
        let mut tick = tokio::time::interval(self.config.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(c) = d.deferred.take() {
                match c {
                    Control::Lost => return self.finish_lost(&mut d, true).await,
                    Control::Shutdown {
                        done,
                        reason,
                        deadline,
                    } => {
                        return self.finish_shutdown(&mut d, done, reason, deadline).await;
                    }
                }
            }
            tokio::select! {
                biased;
                c = control.recv() => {
                    d.deferred = Some(c.unwrap_or(Control::Lost));
                }
                item = rx.recv() => match item {
                    Some(Item::Records { records, millis_behind_latest, ticket }) => {
                        let mut batch = Gathered { records, millis_behind_latest, tickets: vec![ticket], end: None };
                        self.gather(&mut d, &mut batch, &mut rx, &mut control).await;
                        if d.deferred.is_none() {
                            let records = std::mem::take(&mut batch.records);
                            let flow = self.deliver(&mut d, records, batch.millis_behind_latest, &mut control).await;
                            if let Flow::Lost = flow {
                                return self.finish_lost(&mut d, true).await;
                            }
                        }
                        for t in &batch.tickets {
                            d.ledger.release(*t);
                        }
                        if let Flow::Lost = self.flush(&mut d, false).await {
                            return self.finish_lost(&mut d, true).await;
                        }
                        if let (Some(children), None) = (batch.end, &d.deferred) {
                            return self.finish_end(&mut d, children, &mut control).await;
                        }
                    }
                    Some(Item::End { children }) => return self.finish_end(&mut d, children, &mut control).await,
                    None => return self.finish_lost(&mut d, true).await,
                },
                _ = tick.tick() => {
                    // A shard gone quiet still lets the app checkpoint what it finished since
                    // its last answer (e.g. counts written by a timer): an empty call.
                    if d.delivered.is_some()
                        && d.last_call.elapsed() >= self.config.checkpoint_interval
                        && self.lease.is_valid()
                    {
                        d.last_call = Instant::now();
                        self.idle_call(&mut d, &mut control).await;
                        if !self.lease.is_valid() {
                            return self.finish_lost(&mut d, true).await;
                        }
                    }
                    if let Flow::Lost = self.flush(&mut d, false).await {
                        return self.finish_lost(&mut d, true).await;
                    }
                }
            }
        }
    }

    /// The batching window: adds the pages read within `batching_window` of the first to
    /// `batch`, until it holds `batch_size` records, the shard ends, or a control message
    /// comes (kept in `d.deferred`; then nothing is delivered and the next owner reads these
    /// records again).
    async fn gather(
        &self,
        d: &mut Delivery,
        batch: &mut Gathered,
        rx: &mut mpsc::Receiver<Item>,
        control: &mut mpsc::Receiver<Control>,
    ) {
        if self.config.batching_window.is_zero() {
            return;
        }
        let until = Instant::now() + self.config.batching_window;
        let enough = self.config.batch_size.unwrap_or(usize::MAX);
        while batch.records.len() < enough {
            tokio::select! {
                biased;
                c = control.recv() => {
                    d.deferred = Some(c.unwrap_or(Control::Lost));
                    return;
                }
                item = rx.recv() => match item {
                    Some(Item::Records { records, millis_behind_latest, ticket }) => {
                        batch.records.extend(records);
                        batch.millis_behind_latest = millis_behind_latest;
                        batch.tickets.push(ticket);
                    }
                    Some(Item::End { children }) => {
                        batch.end = Some(children);
                        return;
                    }
                    // The reader stopped: the main loop sees it next.
                    None => return,
                },
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Runs `work` until it finishes, its `timeout` passes, the lease is lost (a `Lost`
    /// control message, or [`ShardLease::is_valid`] turning false) or, with
    /// [`OnShutdown::Interrupt`], a `Shutdown` comes. Control messages that come meanwhile
    /// are kept in `d.deferred`. Whatever ends it other than [`Guarded::Done`] cancels
    /// `work` (drops it).
    ///
    /// # Guarantees
    /// No wait of a shard task outlives its lease by more than [`VALIDITY_CHECK`], nor a
    /// hand-over request when it is interruptible.
    async fn guard<F: std::future::Future>(
        &self,
        d: &mut Delivery,
        control: &mut mpsc::Receiver<Control>,
        timeout: Duration,
        on_shutdown: OnShutdown,
        work: F,
    ) -> Guarded<F::Output> {
        match &d.deferred {
            Some(Control::Lost) => return Guarded::Lost,
            Some(Control::Shutdown { .. }) if on_shutdown == OnShutdown::Interrupt => {
                return Guarded::Interrupted;
            }
            _ => {}
        }
        tokio::pin!(work);
        let deadline = Instant::now() + timeout;
        let mut check = tokio::time::interval(VALIDITY_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A call finishing during a hand-over gets until shortly before the hand-over's
        // deadline: then it is cancelled, so `ShutdownRequested` and the final checkpoint
        // still land (a hung call must not turn a hand-over into a lost lease).
        let mut cutoff = shutdown_cutoff(&d.deferred);
        loop {
            tokio::select! {
                biased;
                c = control.recv(), if d.deferred.is_none() => {
                    let c = c.unwrap_or(Control::Lost);
                    let lost = matches!(c, Control::Lost);
                    d.deferred = Some(c);
                    if lost {
                        return Guarded::Lost;
                    }
                    if on_shutdown == OnShutdown::Interrupt {
                        return Guarded::Interrupted;
                    }
                    cutoff = shutdown_cutoff(&d.deferred);
                }
                out = &mut work => return Guarded::Done(out),
                _ = sleep_until_some(cutoff) => return Guarded::Interrupted,
                _ = tokio::time::sleep_until(deadline) => return Guarded::TimedOut,
                _ = check.tick() => {
                    if !self.lease.is_valid() {
                        return Guarded::Lost;
                    }
                }
            }
        }
    }

    /// Waits for `delay` (a retry's backoff): `Continue` when it passed with the lease still
    /// valid, `Interrupted` when a `Shutdown` came first (kept in `d.deferred`), `Lost`
    /// when the lease went away.
    async fn pause(
        &self,
        d: &mut Delivery,
        delay: Duration,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        let sleep = tokio::time::sleep(delay);
        match self
            .guard(d, control, delay * 2, OnShutdown::Interrupt, sleep)
            .await
        {
            Guarded::Done(()) | Guarded::TimedOut if self.lease.is_valid() => Flow::Continue,
            Guarded::Interrupted => Flow::Interrupted,
            _ => Flow::Lost,
        }
    }

    /// Pins a `LATEST` lease to where this owner starts (minus [`PIN_MARGIN_MS`] for clock
    /// skew against Kinesis's arrival timestamps) before anything is read: a next owner then
    /// resumes there instead of at its own, later, tip, so a quiet shard that moves before
    /// its first checkpoint skips nothing. This owner reads from the pin too. Retried until
    /// it lands; the pinned time (ms), or `None` when the lease went away meanwhile.
    async fn pin_latest(
        &self,
        d: &mut Delivery,
        control: &mut mpsc::Receiver<Control>,
    ) -> Option<i64> {
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        loop {
            if !self.lease.is_valid() || d.deferred.is_some() {
                return None;
            }
            if !self.config.clock.is_known()
                && let Err(e) = self.shards.get().await
            {
                // Any answer of Kinesis sets its clock (a listing, shared and cached): no
                // pin by this worker's own clock while Kinesis does not answer.
                let delay = backoff.next_delay();
                tracing::warn!(shard = %d.shard, error = %e, retry_in = ?delay, "asking Kinesis its time before pinning failed; retrying");
                if !matches!(self.pause(d, delay, control).await, Flow::Continue) {
                    return None;
                }
                continue;
            }
            let at = self.config.clock.now_ms().saturating_sub(PIN_MARGIN_MS);
            match self.lease.pin_start(at).await {
                Ok(()) => {
                    tracing::info!(shard = %d.shard, at_timestamp_ms = at, "LATEST start pinned");
                    d.committed = Checkpoint::AtTimestamp;
                    return Some(at);
                }
                Err(LeaseError::LeaseLost { .. }) => return None,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(shard = %d.shard, error = %e, retry_in = ?delay, "pinning the LATEST start failed; retrying");
                    if !matches!(self.pause(d, delay, control).await, Flow::Continue) {
                        return None;
                    }
                }
            }
        }
    }

    /// Calls `Initialize` until it succeeds. False when the lease went away meanwhile.
    async fn initialize(
        &self,
        d: &mut Delivery,
        start: &Checkpoint,
        control: &mut mpsc::Receiver<Control>,
    ) -> bool {
        let req = v1::InitializeRequest {
            shard_id: d.shard.clone(),
            starting_position: Some(starting_position(start)),
            stream: self.config.stream.to_string(),
            application: self.config.application.clone(),
            worker_id: self.config.worker_id.clone(),
        };
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        loop {
            if !self.lease.is_valid() || d.deferred.is_some() {
                return false;
            }
            let call = self.app.initialize(req.clone());
            let timeout = self.config.app_call_timeout;
            // Finished even on a hand-over: an app that initialized gets its
            // `ShutdownRequested` (the main loop sees the deferred Shutdown first).
            let error = match self
                .guard(d, control, timeout, OnShutdown::Finish, call)
                .await
            {
                Guarded::Done(Ok(())) => return true,
                Guarded::Done(Err(e)) => format!("{:?}: {}", e.code(), e.message()),
                Guarded::TimedOut => {
                    self.metrics.app_call_timeouts.inc();
                    format!("no answer within {timeout:?} (--app-call-timeout-ms)")
                }
                Guarded::Interrupted | Guarded::Lost => return false,
            };
            let delay = backoff.next_delay();
            tracing::warn!(shard = %d.shard, error = %error, attempt = backoff.failures(), retry_in = ?delay, "app Initialize failed");
            if !matches!(self.pause(d, delay, control).await, Flow::Continue) {
                return false;
            }
        }
    }

    /// Delivers one batch, a call at a time, each retried until the app acknowledges it, or
    /// (with a destination) until the failure policy hands it to the destination.
    async fn deliver(
        &self,
        d: &mut Delivery,
        records: Vec<UserRecord>,
        millis_behind_latest: i64,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        if d.lanes.is_some() {
            return self
                .deliver_lanes(d, records, millis_behind_latest, control)
                .await;
        }
        let Some((records, filtered_tail)) = self.filter(d, records) else {
            return Flow::Lost;
        };
        match self
            .deliver_chunks(d, records, millis_behind_latest, control)
            .await
        {
            Flow::Lost => return Flow::Lost,
            // The rest (and any filtered tail) goes to the next owner.
            Flow::Interrupted => return Flow::Continue,
            Flow::Continue => {}
        }
        if let Some(last) = filtered_tail {
            pass_over(d, last);
        }
        Flow::Continue
    }

    /// Delivers `records` in calls of at most `max_call_bytes` and `batch_size` records.
    /// `Flow::Interrupted` when a control message came meanwhile (after the call in flight).
    async fn deliver_chunks(
        &self,
        d: &mut Delivery,
        records: Vec<UserRecord>,
        millis_behind_latest: i64,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        for chunk in chunks(records, self.config.max_call_bytes, self.config.batch_size) {
            let flow = self
                .deliver_call(d, chunk, millis_behind_latest, control)
                .await;
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
            if d.deferred.is_some() {
                return Flow::Interrupted;
            }
        }
        Flow::Continue
    }

    /// Delivers a batch in lanes (parallelism within the shard): split by partition key, the
    /// lanes' calls run at once, each lane following the filters and the failure policy as a
    /// shard would; the batch is done when every lane is. Then the shard's `delivered` and
    /// `wanted` move to the low watermarks of the lanes'.
    async fn deliver_lanes(
        &self,
        d: &mut Delivery,
        records: Vec<UserRecord>,
        millis_behind_latest: i64,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        let Some(mut lanes) = d.lanes.take() else {
            return Flow::Continue;
        };
        let n = lanes.each.len();
        // A checkpoint asked for at the shard level (an idle call's or a shutdown's answer)
        // confirms every lane up to it.
        if let Some(floor) = Position::of(&d.floor()) {
            for i in 0..n {
                lanes.wanted.confirm(i, &floor);
            }
        }
        let mut split: Vec<Vec<UserRecord>> = vec![Vec::new(); n];
        let mut filtered = 0u64;
        for r in records {
            let Some(p) = position_of(&d.shard, &r) else {
                d.lanes = Some(lanes);
                return Flow::Lost;
            };
            let lane = self
                .config
                .filters
                .matches(&r)
                .then(|| lane_of(&r.partition_key, n));
            lanes.delivered.add(p.clone(), lane);
            lanes.wanted.add(p, lane);
            match lane {
                Some(l) => split[l].push(r),
                None => filtered += 1,
            }
        }
        self.metrics.records_filtered.inc_by(filtered);
        let mut senders = Vec::new();
        let mut runs = Vec::new();
        for (i, records) in split.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let (tx, mut rx) = mpsc::channel(2);
            senders.push(tx);
            // The lane's floor is the shard's: this batch's records all lie beyond it.
            let mut ld = Delivery {
                shard: d.shard.clone(),
                committed: d.floor(),
                wanted: None,
                delivered: lanes.each[i].clone(),
                last_write: None,
                deferred: None,
                fencing: d.fencing.clone(),
                ledger: d.ledger.clone(),
                lanes: None,
                last_call: d.last_call,
            };
            runs.push(async move {
                let _busy = Busy::new(&self.metrics.lanes_busy);
                let flow = self
                    .deliver_chunks(&mut ld, records, millis_behind_latest, &mut rx)
                    .await;
                (i, ld, flow)
            });
        }
        let all = futures_util::future::join_all(runs);
        tokio::pin!(all);
        // On a hand-over the lanes go on to the end of the batch, so what they delivered
        // stays one unbroken stretch and the final checkpoint covers it (nothing the app
        // asked to checkpoint is delivered again), unless half the time left before the
        // hand-over deadline passes first: then each lane stops after its call in flight.
        let mut stop_lanes: Option<(Instant, v1::shutdown_requested_request::Reason, Instant)> =
            None;
        let done = loop {
            let stop_at = stop_lanes.map(|(at, ..)| at);
            tokio::select! {
                done = &mut all => break done,
                c = control.recv(), if d.deferred.is_none() => {
                    let c = c.unwrap_or(Control::Lost);
                    if let Control::Shutdown { reason, deadline, .. } = &c {
                        let now = Instant::now();
                        let at = now + deadline.saturating_duration_since(now) / 2;
                        stop_lanes = Some((at, *reason, *deadline));
                    } else {
                        // Cancels every lane's call: the new owner gets these records again.
                        d.deferred = Some(c);
                        d.lanes = Some(lanes);
                        return Flow::Lost;
                    }
                    d.deferred = Some(c);
                }
                _ = sleep_until_some(stop_at) => {
                    if let Some((_, reason, deadline)) = stop_lanes.take() {
                        for tx in &senders {
                            let _ = tx.try_send(Control::Shutdown {
                                done: oneshot::channel().0,
                                reason,
                                deadline,
                            });
                        }
                    }
                }
            }
        };
        let mut lost = false;
        for (i, ld, flow) in done {
            lost |= matches!(flow, Flow::Lost);
            d.last_call = d.last_call.max(ld.last_call);
            if let Some(p) = &ld.delivered {
                lanes.delivered.confirm(i, p);
            }
            if let Some(p) = &ld.wanted {
                lanes.wanted.confirm(i, p);
            }
            lanes.each[i] = ld.delivered;
        }
        if let Some(p) = lanes.delivered.mark()
            && d.delivered.as_ref().is_none_or(|x| p > *x)
        {
            d.delivered = Some(p);
        }
        if let Some(p) = lanes.wanted.mark()
            && p.is_beyond(&d.floor())
        {
            d.wanted = Some(p);
        }
        d.lanes = Some(lanes);
        if lost { Flow::Lost } else { Flow::Continue }
    }

    /// Drops the records that match no filter (counted in `records_filtered_total`). Also
    /// returns the last record's position when it was dropped: once the app has its part,
    /// everything up to there counts as delivered. `None` for a malformed sequence number.
    fn filter(
        &self,
        d: &Delivery,
        records: Vec<UserRecord>,
    ) -> Option<(Vec<UserRecord>, Option<Position>)> {
        if self.config.filters.is_empty() {
            return Some((records, None));
        }
        let Some(last) = records.last() else {
            return Some((records, None));
        };
        let last = position_of(&d.shard, last)?;
        let before = records.len();
        let kept: Vec<UserRecord> = records
            .into_iter()
            .filter(|r| self.config.filters.matches(r))
            .collect();
        self.metrics
            .records_filtered
            .inc_by((before - kept.len()) as u64);
        let tail_dropped = kept.last().is_none_or(|k| {
            k.sequence_number != last.sequence.as_str()
                || k.sub_sequence_number != last.sub_sequence
        });
        Some((kept, tail_dropped.then_some(last)))
    }

    /// One call's worth of records, delivered as the failure policy ([`Plan`]) says: each
    /// part retried until the app acknowledges it, or (with a destination) until the policy
    /// hands it to the destination. `Flow::Interrupted` when a control message stops it
    /// before the end.
    async fn deliver_call(
        &self,
        d: &mut Delivery,
        chunk: Vec<UserRecord>,
        millis_behind_latest: i64,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        let policy = self.config.failure_policy();
        let partial = self.config.report_batch_item_failures;
        // Every record's position is kept only when a policy may need part of the batch
        // again (bisect, partial failure) or its contents (destination, record age). Each
        // call's request is encoded from the records in place, never cloned.
        let keep = policy.destination || policy.bisect || partial;
        let Some(tail) = chunk.len().checked_sub(1) else {
            return Flow::Continue;
        };
        // Only the last position is needed unless parts of the batch may end apart.
        let from = if keep { 0 } else { tail };
        let mut positions = Vec::with_capacity(chunk.len() - from);
        for r in &chunk[from..] {
            match position_of(&d.shard, r) {
                Some(p) => positions.push(p),
                None => return Flow::Lost,
            }
        }
        let len = chunk.len();
        // Shared with each attempt's request, which encodes its range from it.
        let records = Arc::new(chunk);
        let mut plan = Plan::new(len, policy);
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        while let Some(seg) = plan.next() {
            // The position of the record at `i` (an index into the batch).
            let at = |i: usize| {
                if keep {
                    positions.get(i).cloned()
                } else {
                    positions.last().cloned()
                }
            };
            let Some(last) = at(seg.end - 1) else {
                tracing::error!(shard = %d.shard, "a batch without the position of its last record: the processor stops rather than skip it");
                return Flow::Lost;
            };
            if !self.lease.is_valid() {
                return Flow::Lost;
            }
            if let (Some(age), true) = (self.config.max_record_age, policy.destination) {
                let now_ms = self.config.clock.now_ms();
                let limit = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                let stale = records[seg.start..seg.end]
                    .iter()
                    .take_while(|r| r.approximate_arrival_ms.is_some_and(|t| now_ms - t > limit))
                    .count();
                if let Some(expired) = plan.expire_front(stale) {
                    let reason = Reason::RecordAge;
                    match self
                        .destine(d, &records, &positions, expired, reason, None, control)
                        .await
                    {
                        Flow::Continue => continue,
                        flow => return flow,
                    }
                }
            }
            let count = seg.len() as u64;
            // One request per segment: each attempt encodes it into tonic's buffer.
            let part = &records[seg.start..seg.end];
            let bytes: u64 = part.iter().map(|r| r.data.len() as u64).sum();
            let first = part
                .first()
                .map(|r| r.sequence_number.clone())
                .unwrap_or_default();
            let batch = BatchRequest::from_records(
                &d.shard,
                Arc::clone(&records),
                seg.start..seg.end,
                millis_behind_latest,
                &d.fencing.0,
                d.fencing.1,
            );
            self.metrics.records_per_call.observe(count as f64);
            let mut seg = seg;
            loop {
                if !self.lease.is_valid() {
                    return Flow::Lost;
                }
                d.last_call = Instant::now();
                // Taken with the check above: a worker paused between the two cannot deliver
                // after it resumes (the app refuses the call).
                let valid_until = self.valid_until_ms();
                let call = self
                    .app
                    .process_encoded(&batch, seg.failures + 1, valid_until);
                let timeout = self.config.app_call_timeout;
                // A hand-over lets the batch in flight finish; a lost lease cancels it (the
                // new owner gets these records again), and so does the deadline (a failed
                // attempt).
                let res = match self
                    .guard(d, control, timeout, OnShutdown::Finish, call)
                    .await
                {
                    Guarded::Done(r) => r,
                    Guarded::TimedOut => {
                        self.metrics.app_call_timeouts.inc();
                        Err(kinesis_processor::tonic::Status::deadline_exceeded(
                            format!("no answer within {timeout:?} (--app-call-timeout-ms)"),
                        ))
                    }
                    // Cut off before the hand-over's deadline: not acknowledged, so the next
                    // owner gets these records; what came before is checkpointed.
                    Guarded::Interrupted => return Flow::Interrupted,
                    Guarded::Lost => return Flow::Lost,
                };
                // How many records of the segment the app acknowledged, and why not the rest.
                let (acked, error) = match res {
                    Ok(resp) => match resp.failed_from {
                        None => {
                            d.ledger.unstall();
                            backoff.reset();
                            plan.acked();
                            d.delivered = Some(last);
                            self.metrics.records_delivered.inc_by(count);
                            self.metrics.bytes_delivered.inc_by(bytes);
                            self.metrics.batches_delivered.inc();
                            self.want(d, &wanted_of(resp.checkpoint));
                            break;
                        }
                        Some(failed) => {
                            self.metrics.partial_batch_failures.inc();
                            let (n, why) = self.partly(d, &failed, &positions, seg, partial);
                            if n > 0 {
                                let bytes: u64 = records[seg.start..seg.start + n]
                                    .iter()
                                    .map(|r| r.data.len() as u64)
                                    .sum();
                                d.delivered = at(seg.start + n - 1);
                                self.metrics.records_delivered.inc_by(n as u64);
                                self.metrics.bytes_delivered.inc_by(bytes);
                                self.want(d, &wanted_of(resp.checkpoint));
                            }
                            (n, (why, None))
                        }
                    },
                    Err(e) => (0, (e.message().to_string(), Some(e.code()))),
                };
                let (error, code) = error;
                // A stuck shard holds none of the read-ahead budget.
                d.ledger.stall();
                self.metrics.batch_retries.inc();
                let after = plan.partly_acked(acked);
                let attempts = seg.failures + 1;
                match after {
                    AfterFailure::Destine(given_up) => {
                        d.ledger.unstall();
                        tracing::error!(shard = %d.shard, error = %error, code = ?code, attempts, records = given_up.len(), first = %first, destination = self.config.destination.as_ref().map_or("", |x| x.arn()), "records failed max attempts: sending them to the on-failure destination");
                        let reason = Reason::AttemptsExhausted;
                        let error = Some(match code {
                            Some(code) => format!("{code:?}: {error}"),
                            None => error,
                        });
                        match self
                            .destine(d, &records, &positions, given_up, reason, error, control)
                            .await
                        {
                            Flow::Continue => break,
                            flow => return flow,
                        }
                    }
                    AfterFailure::Bisected => {
                        self.metrics.bisections.inc();
                        tracing::warn!(shard = %d.shard, error = %error, code = ?code, attempt = attempts, records = count - acked as u64, "app ProcessRecords failed; bisecting the batch");
                    }
                    AfterFailure::Retry => {
                        tracing::warn!(shard = %d.shard, error = %error, code = ?code, attempt = attempts, acknowledged = acked, "app ProcessRecords failed; retrying the failed records");
                    }
                }
                let delay = backoff.next_delay();
                if d.deferred.is_some() {
                    // Shutting down: the next owner retries these records.
                    return Flow::Interrupted;
                }
                match self.pause(d, delay, control).await {
                    Flow::Continue => {}
                    // A hand-over ends the backoff: the next owner retries these records.
                    flow => return flow,
                }
                match (after, plan.next()) {
                    // The very same records: the same bytes go again.
                    (AfterFailure::Retry, Some(next))
                        if (next.start, next.end) == (seg.start, seg.end) =>
                    {
                        seg = next
                    }
                    // Split, or acknowledged in part: what is left is encoded anew.
                    _ => break,
                }
            }
            if d.deferred.is_some() && plan.next().is_some() {
                // The rest goes to the next owner.
                return Flow::Interrupted;
            }
        }
        Flow::Continue
    }

    /// Reads a partial batch failure: how many records of `seg` the app acknowledged (those
    /// before `failed`), and the error to report. Zero (the whole call failed) when partial
    /// failures are off, or `failed` is not a record of the segment.
    fn partly(
        &self,
        d: &Delivery,
        failed: &v1::RecordPosition,
        positions: &[Position],
        seg: Segment,
        enabled: bool,
    ) -> (usize, String) {
        let named = format!("{}/{}", failed.sequence_number, failed.sub_sequence_number);
        if !enabled {
            tracing::error!(shard = %d.shard, failed_from = %named, "the app reported a partial batch failure, but --report-batch-item-failures (spec.delivery.reportBatchItemFailures) is off: the whole batch counts as failed");
            return (0, format!("failed from {named} (partial failures off)"));
        }
        let found = SequenceNumber::parse(&failed.sequence_number)
            .ok()
            .map(|sequence| Position {
                sequence,
                sub_sequence: failed.sub_sequence_number,
            })
            .and_then(|p| {
                positions
                    .get(seg.start..seg.end)
                    .and_then(|s| s.iter().position(|x| *x == p))
            });
        match found {
            Some(n) => (n, format!("the app failed the batch from record {named}")),
            None => {
                tracing::error!(shard = %d.shard, failed_from = %named, "the app's failed_from names no record of the batch: the whole batch counts as failed");
                (0, format!("failed_from {named} is not in the batch"))
            }
        }
    }

    /// Sends records `seg` to the on-failure destination, retrying until it takes them;
    /// then they count as passed. They are checkpointed with it only if the app had nothing
    /// delivered but not yet checkpointed before them (an app that buffers keeps its say).
    #[allow(clippy::too_many_arguments)]
    async fn destine(
        &self,
        d: &mut Delivery,
        records: &[UserRecord],
        positions: &[Position],
        seg: Segment,
        reason: Reason,
        error: Option<String>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        // Records are passed over only once the destination took them: anything short of
        // that (no destination, no position, no message) keeps them, and the processor
        // stops (the next owner reads them again) rather than skip them.
        let fail = |what: &str| {
            tracing::error!(shard = %d.shard, records = seg.len(), problem = what, "cannot send records to the on-failure destination: the processor stops without passing over them");
            Flow::Lost
        };
        let Some(destination) = &self.config.destination else {
            return fail("no destination configured");
        };
        let Some(last) = seg.end.checked_sub(1).and_then(|i| positions.get(i)) else {
            return fail("the records' positions are missing");
        };
        let about = About {
            application: &self.config.application,
            stream: &self.config.stream.to_string(),
            shard: &d.shard,
            reason,
            attempts: seg.failures,
            error,
        };
        let Some(body) = records
            .get(seg.start..seg.end)
            .and_then(|part| message(&about, part, destination.limit()))
        else {
            return fail("no records to send");
        };
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        let shard = d.shard.clone();
        loop {
            // A hand-over cancels the send (the next owner sends these records again).
            let send = destination.send(&shard, body.clone());
            let timeout = self.config.app_call_timeout;
            let error = match self
                .guard(d, control, timeout, OnShutdown::Interrupt, send)
                .await
            {
                Guarded::Done(Ok(())) => break,
                Guarded::Done(Err(e)) => e.to_string(),
                Guarded::TimedOut => format!("no answer within {timeout:?}"),
                Guarded::Interrupted => return Flow::Interrupted,
                Guarded::Lost => return Flow::Lost,
            };
            self.metrics.destination_errors.inc();
            self.config.lag.set_stalled(&d.shard, true);
            d.ledger.stall();
            let delay = backoff.next_delay();
            tracing::error!(shard = %d.shard, error = %error, retry_in = ?delay, "sending to the on-failure destination failed; the shard waits until it succeeds");
            match self.pause(d, delay, control).await {
                Flow::Continue => {}
                flow => return flow,
            }
        }
        d.ledger.unstall();
        self.config.lag.set_stalled(&d.shard, false);
        self.metrics
            .records_to_destination
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc_by(seg.len() as u64);
        tracing::warn!(shard = %d.shard, records = seg.len(), reason = reason.label(), destination = destination.arn(), "records sent to the on-failure destination");
        pass_over(d, last.clone());
        Flow::Continue
    }

    /// `ProcessRecords` with no records, so the app can answer a checkpoint; a failure is
    /// only logged (nothing was delivered that could be lost).
    async fn idle_call(&self, d: &mut Delivery, control: &mut mpsc::Receiver<Control>) {
        let req = v1::ProcessRecordsRequest {
            shard_id: d.shard.clone(),
            records: Vec::new(),
            millis_behind_latest: 0,
            attempt: 1,
            lease_owner: d.fencing.0.clone(),
            lease_counter: d.fencing.1,
        };
        let call = self.app.process_records(req);
        let timeout = self.config.app_call_timeout;
        match self
            .guard(d, control, timeout, OnShutdown::Finish, call)
            .await
        {
            Guarded::Done(Ok(resp)) => self.want(d, &wanted_of(resp.checkpoint)),
            Guarded::Done(Err(e)) => {
                tracing::debug!(shard = %d.shard, error = %e.message(), "idle ProcessRecords failed")
            }
            Guarded::TimedOut => {
                self.metrics.app_call_timeouts.inc();
                tracing::warn!(shard = %d.shard, timeout = ?timeout, "idle ProcessRecords got no answer in time; cancelled")
            }
            // The main loop sees `d.deferred` (or the lease's validity) next.
            Guarded::Interrupted | Guarded::Lost => {}
        }
    }

    /// The lease's validity as wall-clock ms (the app shares this machine's clock); `None`
    /// when it is not valid now.
    fn valid_until_ms(&self) -> Option<i64> {
        let left = self
            .lease
            .valid_until()?
            .saturating_duration_since(std::time::Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        i64::try_from(now.saturating_add(left).as_millis()).ok()
    }

    /// Records what the app asked to checkpoint (refusing what it may not).
    fn want(&self, d: &mut Delivery, wanted: &Wanted) {
        match resolve(&d.shard, wanted, d.delivered.as_ref(), &d.floor()) {
            Ok(Some(p)) => d.wanted = Some(p),
            Ok(None) => {}
            Err(refused) => {
                self.metrics.checkpoints_refused.inc();
                tracing::error!(shard = %d.shard, error = %refused, "checkpoint refused");
            }
        }
    }

    /// Writes the wanted checkpoint if the interval has passed (or `now`).
    async fn flush(&self, d: &mut Delivery, now: bool) -> Flow {
        let Some(p) = d.wanted.clone() else {
            return Flow::Continue;
        };
        if !now
            && d.last_write
                .is_some_and(|t| t.elapsed() < self.config.checkpoint_interval)
        {
            return Flow::Continue;
        }
        match self.lease.checkpoint(p.checkpoint()).await {
            Ok(()) => {
                self.metrics.checkpoints_written.inc();
                d.committed = p.checkpoint();
                d.wanted = None;
                d.last_write = Some(Instant::now());
                Flow::Continue
            }
            Err(LeaseError::LeaseLost { .. }) => Flow::Lost,
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!(shard = %d.shard, error = %e, "checkpoint write failed; retrying at the next interval");
                d.last_write = Some(Instant::now());
                Flow::Continue
            }
        }
    }

    async fn finish_lost(&self, d: &mut Delivery, initialized: bool) {
        tracing::info!(shard = %d.shard, "lease lost: processor stopped");
        if initialized
            && let Err(e) =
                tokio::time::timeout(self.config.retry_max, self.app.lease_lost(&d.shard))
                    .await
                    .unwrap_or_else(|_| {
                        Err(kinesis_processor::tonic::Status::deadline_exceeded(
                            "LeaseLost timed out",
                        ))
                    })
        {
            tracing::warn!(shard = %d.shard, error = %e.message(), "app LeaseLost failed");
        }
    }

    async fn finish_shutdown(
        &self,
        d: &mut Delivery,
        done: oneshot::Sender<()>,
        reason: v1::shutdown_requested_request::Reason,
        deadline: Instant,
    ) {
        let req = v1::ShutdownRequestedRequest {
            shard_id: d.shard.clone(),
            reason: reason as i32,
        };
        // The app's answer and the final checkpoint both fit before the deadline.
        let call_timeout = self.config.shutdown_call_timeout.min(
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(FLUSH_RESERVE),
        );
        match tokio::time::timeout(call_timeout, self.app.shutdown_requested(req)).await {
            Ok(Ok(resp)) => self.want(d, &wanted_of(resp.checkpoint)),
            Ok(Err(e)) => {
                tracing::warn!(shard = %d.shard, error = %e.message(), "app ShutdownRequested failed; checkpointing what it acknowledged before")
            }
            Err(_) => {
                tracing::warn!(shard = %d.shard, "app ShutdownRequested timed out; checkpointing what it acknowledged before")
            }
        }
        if let Flow::Lost = self.flush(d, true).await {
            tracing::warn!(shard = %d.shard, "lease lost before the final checkpoint");
        }
        tracing::info!(shard = %d.shard, checkpoint = %d.committed, "processor shut down");
        let _ = done.send(());
    }

    async fn finish_end(
        &self,
        d: &mut Delivery,
        children: Vec<String>,
        control: &mut mpsc::Receiver<Control>,
    ) {
        let req = v1::ShardEndedRequest {
            shard_id: d.shard.clone(),
            child_shard_ids: children.clone(),
        };
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        loop {
            if let Some(Control::Shutdown { .. }) = &d.deferred {
                // Not finished: the next owner reads to the end again (from the checkpoint).
                if let Some(Control::Shutdown {
                    done,
                    reason,
                    deadline,
                }) = d.deferred.take()
                {
                    return self.finish_shutdown(d, done, reason, deadline).await;
                }
            }
            if matches!(d.deferred, Some(Control::Lost)) || !self.lease.is_valid() {
                return self.finish_lost(d, true).await;
            }
            let call = self.app.shard_ended(req.clone());
            let timeout = self.config.app_call_timeout;
            let error = match self
                .guard(d, control, timeout, OnShutdown::Finish, call)
                .await
            {
                Guarded::Done(Ok(())) => break,
                Guarded::Done(Err(e)) => e.message().to_string(),
                Guarded::TimedOut => {
                    self.metrics.app_call_timeouts.inc();
                    format!("no answer within {timeout:?} (--app-call-timeout-ms)")
                }
                Guarded::Interrupted | Guarded::Lost => continue,
            };
            let delay = backoff.next_delay();
            tracing::warn!(shard = %d.shard, error = %error, retry_in = ?delay, "app ShardEnded failed; retrying");
            if let Flow::Lost = self.pause(d, delay, control).await {
                return self.finish_lost(d, true).await;
            }
        }
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        loop {
            let res = async {
                if !children.is_empty() {
                    self.lease.set_children(&children).await?;
                }
                self.lease.checkpoint(Checkpoint::ShardEnd).await
            }
            .await;
            match res {
                Ok(()) => break,
                Err(LeaseError::LeaseLost { .. }) => return self.finish_lost(d, false).await,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(shard = %d.shard, error = %e, retry_in = ?delay, "writing SHARD_END failed; retrying");
                    match self.pause(d, delay, control).await {
                        Flow::Continue => {}
                        // The app has finished the shard: the write is still the right
                        // answer to a hand-over (it is fenced, so it cannot land late).
                        Flow::Interrupted => {
                            if shutdown_cutoff(&d.deferred).is_some_and(|c| Instant::now() >= c) {
                                // The hand-over's time is up: the next owner ends the shard.
                                return self.finish_lost(d, true).await;
                            }
                            tokio::time::sleep(delay).await;
                        }
                        Flow::Lost => return self.finish_lost(d, false).await,
                    }
                }
            }
        }
        self.metrics.checkpoints_written.inc();
        self.metrics
            .lease_events
            .get_or_create(&EventLabels {
                event: "shard_ended",
            })
            .inc();
        tracing::info!(shard = %d.shard, children = ?children, "shard ended: SHARD_END checkpointed");
        self.coordinator.shard_ended().await;
        // A hand-over or shutdown asked meanwhile needs its answer.
        if let Some(Control::Shutdown { done, .. }) = d.deferred.take() {
            let _ = done.send(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, bytes: usize) -> UserRecord {
        UserRecord {
            data: vec![0; bytes].into(),
            partition_key: "k".into(),
            explicit_hash_key: None,
            sequence_number: seq.to_string().into(),
            sub_sequence_number: 0,
            approximate_arrival_ms: None,
            aggregated: false,
        }
    }

    fn at(seq: u64) -> Position {
        Position {
            sequence: SequenceNumber::parse(&seq.to_string())
                .unwrap_or_else(|_| unreachable!("a valid sequence number")),
            sub_sequence: 0,
        }
    }

    fn delivery(committed: Checkpoint, delivered: Option<Position>) -> Delivery {
        Delivery {
            shard: "s".into(),
            committed,
            wanted: None,
            delivered,
            last_write: None,
            deferred: None,
            fencing: ("w".into(), 1),
            ledger: Arc::new(Ledger::new()),
            lanes: None,
            last_call: Instant::now(),
        }
    }

    #[test]
    fn records_passed_over_are_checkpointed_only_when_nothing_is_pending_before_them() {
        // Nothing delivered yet, or everything delivered checkpointed: checkpointed at once.
        let mut d = delivery(Checkpoint::TrimHorizon, None);
        pass_over(&mut d, at(5));
        assert_eq!(d.wanted, Some(at(5)));
        let mut d = delivery(at(4).checkpoint(), Some(at(4)));
        pass_over(&mut d, at(5));
        assert_eq!(d.wanted, Some(at(5)));
        // Acknowledged beyond the checkpoint: the app's next checkpoint decides.
        let mut d = delivery(at(3).checkpoint(), Some(at(4)));
        pass_over(&mut d, at(5));
        assert_eq!((d.wanted, d.delivered), (None, Some(at(5))));
        // A lane whose last delivery lies behind the shard's checkpoint (other lanes moved
        // it) has nothing pending: its destined records must not hold the shard back.
        let mut d = delivery(at(7).checkpoint(), Some(at(2)));
        pass_over(&mut d, at(9));
        assert_eq!(d.wanted, Some(at(9)));
    }

    #[test]
    fn chunks_keep_order_and_the_byte_bound() {
        let records: Vec<_> = (0..100).map(|i| rec(i, 1000)).collect();
        let out = chunks(records, 10_000, None);
        assert!(out.len() > 1);
        let flat: Vec<String> = out
            .iter()
            .flatten()
            .map(|r| r.sequence_number.to_string())
            .collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(flat, want);
        for c in &out {
            let size: usize = c.iter().map(|r| r.data.len() + 65).sum();
            assert!(size <= 10_000, "{size}");
        }
        // A record larger than the bound travels alone.
        let out = chunks(vec![rec(1, 50_000), rec(2, 10)], 10_000, None);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
        assert!(chunks(Vec::new(), 10, None).is_empty());
        // A record limit (batch size) as well.
        let records: Vec<_> = (0..25).map(|i| rec(i, 10)).collect();
        let out = chunks(records, 10_000, Some(10));
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
    }
}
