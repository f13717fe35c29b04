//! One shard's record processor: a reading task that prefetches ([`read`], within the
//! shard's share of the read-ahead budget, [`ledger`]), and the delivery loop that calls the
//! app one batch at a time ([`deliver`], deciding with [`decide`]) and coalesces its
//! checkpoints ([`crate::pipeline::progress`]).

mod decide;
mod deliver;
mod ledger;
mod read;

use std::sync::Arc;
use std::time::Duration;

use decide::{starting_position, wanted_of, write_now_of};
use kinesis_processor::v1;
use ledger::Ledger;
use read::{Item, read_ahead};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::PipelineConfig;
use super::app::App;
use super::position::Position;
use super::progress::{LaneProgress, Progress};
use crate::backoff::Backoff;
use crate::lease::checkpoint::{Checkpoint, SequenceNumber};
use crate::lease::coordinator::{CoordinatorHandle, ShardLease};
use crate::lease::table::LeaseError;
use crate::metrics::{EventLabels, Metrics};
use crate::records::ShardSource;
use crate::records::aggregation::UserRecord;
use crate::records::fanout::FanOutReader;
use crate::records::reader::{ReaderConfig, ShardReader};

/// How far before Kinesis's "now" ([`crate::clock`]) a `LATEST` lease is pinned: covers
/// the skew between Kinesis's own hosts (the `Date` of one answer against the arrival
/// timestamps another assigns), and a worker clock ahead of Kinesis's by up to this much
/// while Kinesis has not answered yet (a listing is asked for first, so only when Kinesis
/// sends no `Date`). A next owner may therefore get up to this much from before the first
/// owner's start, never less than from it.
const PIN_MARGIN_MS: i64 = 5_000;

/// Kept free before a shutdown deadline for the final checkpoint write.
const FLUSH_RESERVE: Duration = Duration::from_millis(300);

/// What the dispatcher tells a shard task (and a shard task its lanes: [`Control::Stop`]).
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
    /// Sent by a shard task to its own lanes only (never by the dispatcher): finish the call
    /// in flight, cut off shortly before `deadline` like a call during a hand-over, then stop.
    /// Nothing is answered, nor checkpointed by the lane: the shard task does that.
    Stop {
        /// The hand-over's deadline.
        deadline: Instant,
    },
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

/// What the main loop does after an event.
enum Next {
    /// Wait for the next one.
    Go,
    /// The lease is gone: stop (after `LeaseLost`).
    Lost,
    /// The shard ended (its children): finish it.
    End(Vec<String>),
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
    /// A `Shutdown` (to a lane: a `Stop`) came (kept in `Delivery::deferred`) and the wait
    /// was one a shutdown interrupts: cancelled.
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
        Some(Control::Shutdown { deadline, .. } | Control::Stop { deadline }) => {
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
    /// What was written, what may be written, what the app acknowledged: the one
    /// checkpoint rule ([`Progress`]).
    progress: Progress,
    last_write: Option<Instant>,
    /// Records and their bytes delivered since the last checkpoint write.
    since_write: (u64, u64),
    /// The app asked for its last checkpoint to be written at once.
    write_now: bool,
    deferred: Option<Control>,
    /// The lease's fencing token (owner, counter): fixed while this task owns the lease (the
    /// counter changes only with the owner), so it is read once, not per batch.
    fencing: (String, u64),
    /// This shard's share of the read-ahead budget.
    ledger: Arc<Ledger>,
    /// With more than one lane (parallelism within the shard): what each lane did.
    lanes: Option<LaneProgress>,
    /// When the app was last called for this shard (records or not): a shard whose pages
    /// the app never sees (all filtered, all destined) still gets an empty call once per
    /// checkpoint interval, so the app can checkpoint what it acknowledged before them.
    last_call: Instant,
}

impl Delivery {
    /// A checkpoint write was made (or tried): the policy's clock and counts start again.
    fn write_tried(&mut self) {
        self.last_write = Some(Instant::now());
        self.since_write = (0, 0);
        self.write_now = false;
    }
}

impl ShardTask {
    /// Runs until the lease is lost, handed over, released or the shard ended.
    pub(crate) async fn run(self, mut control: mpsc::Receiver<Control>) {
        let mut reader_config = self.config.reader.clone();
        if let Some(ts) = self.lease.start_timestamp_ms {
            // A LATEST lease pinned by an earlier owner: resume where that one started.
            reader_config.initial_timestamp_ms = Some(ts);
        }
        let mut d = Delivery {
            shard: self.lease.shard_id.clone(),
            progress: Progress::new(self.lease.checkpoint.clone()),
            last_write: None,
            since_write: (0, 0),
            write_now: false,
            deferred: None,
            fencing: self.lease.fencing_token().await,
            ledger: Arc::new(Ledger::new()),
            lanes: (self.config.parallelization > 1)
                .then(|| LaneProgress::new(self.config.parallelization)),
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
        let start = d.progress.committed().clone();
        let reader = self.reader(&start, reader_config);
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
        // A tenth of the interval (at least 100 ms): a shard gone quiet writes its checkpoint
        // about an interval after its last write, not up to two.
        let mut tick = tokio::time::interval(
            (self.config.checkpoint.interval / 10).max(Duration::from_millis(100)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(c) = d.deferred.take() {
                match c {
                    // A `Stop` is only ever sent to a lane, which never gets here.
                    Control::Lost | Control::Stop { .. } => {
                        return self.finish_lost(&mut d, true).await;
                    }
                    Control::Shutdown {
                        done,
                        reason,
                        deadline,
                    } => {
                        return self.finish_shutdown(&mut d, done, reason, deadline).await;
                    }
                }
            }
            let next = tokio::select! {
                biased;
                c = control.recv() => {
                    d.deferred = Some(c.unwrap_or(Control::Lost));
                    Next::Go
                }
                item = rx.recv() => match item {
                    Some(Item::Records { records, millis_behind_latest, ticket }) => {
                        let batch = Gathered { records, millis_behind_latest, tickets: vec![ticket], end: None };
                        self.on_records(&mut d, batch, &mut rx, &mut control).await
                    }
                    Some(Item::End { children }) => Next::End(children),
                    None => Next::Lost,
                },
                _ = tick.tick() => self.on_tick(&mut d, &mut control).await,
            };
            match next {
                Next::Go => {}
                Next::Lost => return self.finish_lost(&mut d, true).await,
                Next::End(children) => {
                    return self.finish_end(&mut d, children, &mut control).await;
                }
            }
        }
    }

    /// The shard's reader, from `start`: polling, or enhanced fan-out through the configured
    /// consumer.
    fn reader(&self, start: &Checkpoint, config: ReaderConfig) -> ShardSource {
        let shard = self.lease.shard_id.clone();
        let hash_range = self
            .lease
            .hash_range
            .as_ref()
            .and_then(|(s, e)| crate::records::aggregation::HashRange::parse(s, e));
        match &self.config.fan_out_consumer {
            None => ShardSource::Polling(Box::new(ShardReader::new(
                self.kinesis.clone(),
                self.config.stream.clone(),
                shard,
                start.clone(),
                hash_range,
                config,
            ))),
            Some(consumer_arn) => ShardSource::FanOut(Box::new(FanOutReader::new(
                self.shards.clone(),
                consumer_arn.clone(),
                shard,
                start.clone(),
                hash_range,
                config,
            ))),
        }
    }

    /// Records read: gathers more within the batching window, delivers them, gives back
    /// their read-ahead budget and writes the checkpoint when it is due.
    async fn on_records(
        &self,
        d: &mut Delivery,
        mut batch: Gathered,
        rx: &mut mpsc::Receiver<Item>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Next {
        self.gather(d, &mut batch, rx, control).await;
        if d.deferred.is_none() {
            let records = std::mem::take(&mut batch.records);
            let bytes: usize = records.iter().map(|r| r.data.len()).sum();
            d.since_write.0 += records.len() as u64;
            d.since_write.1 += bytes as u64;
            let flow = self
                .deliver(d, records, batch.millis_behind_latest, control)
                .await;
            if let Flow::Lost = flow {
                return Next::Lost;
            }
        }
        for t in &batch.tickets {
            d.ledger.release(*t);
        }
        if let Flow::Lost = self.flush(d, false).await {
            return Next::Lost;
        }
        match (batch.end, &d.deferred) {
            (Some(children), None) => Next::End(children),
            _ => Next::Go,
        }
    }

    /// The checkpoint interval passed: a shard gone quiet still lets the app checkpoint what
    /// it finished since its last answer (e.g. counts written by a timer): an empty call.
    /// Then the checkpoint is written when it is due.
    async fn on_tick(&self, d: &mut Delivery, control: &mut mpsc::Receiver<Control>) -> Next {
        if d.progress.delivered().is_some()
            && d.last_call.elapsed() >= self.config.checkpoint.interval
            && self.lease.is_valid()
        {
            d.last_call = Instant::now();
            self.idle_call(d, control).await;
            if !self.lease.is_valid() {
                return Next::Lost;
            }
        }
        if let Flow::Lost = self.flush(d, false).await {
            return Next::Lost;
        }
        Next::Go
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
            Some(Control::Shutdown { .. } | Control::Stop { .. })
                if on_shutdown == OnShutdown::Interrupt =>
            {
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
                    d.progress.pinned();
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
            Guarded::Done(Ok(resp)) => self.want(d, resp.checkpoint),
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

    /// Records what the app asked to checkpoint (refusing what it may not), and whether it
    /// asked for the write at once.
    fn want(&self, d: &mut Delivery, asked: Option<v1::Checkpoint>) {
        let now = write_now_of(&asked);
        match d.progress.want(&d.shard, &wanted_of(asked)) {
            Ok(()) => d.write_now |= now,
            Err(refused) => {
                self.metrics.checkpoints_refused.inc();
                tracing::error!(shard = %d.shard, error = %refused, "checkpoint refused");
            }
        }
    }

    /// Writes the wanted checkpoint if a write is due ([`super::CheckpointPolicy::due`]), or `now`.
    async fn flush(&self, d: &mut Delivery, now: bool) -> Flow {
        let Some(p) = d.progress.to_write().cloned() else {
            return Flow::Continue;
        };
        let (records, bytes) = d.since_write;
        if !now
            && !d.write_now
            && !self
                .config
                .checkpoint
                .due(d.last_write.map(|t| t.elapsed()), records, bytes)
        {
            return Flow::Continue;
        }
        match self.lease.checkpoint(p.checkpoint()).await {
            Ok(()) => {
                self.metrics.checkpoints_written.inc();
                d.progress.written(&p);
                d.write_tried();
                Flow::Continue
            }
            Err(LeaseError::LeaseLost { .. }) => Flow::Lost,
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                tracing::warn!(shard = %d.shard, error = %e, "checkpoint write failed; retrying when the next one is due");
                // As if written: the next try when another interval passed or another bound's
                // worth of records came, not at every batch (a throttled table is not hammered).
                d.write_tried();
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
            Ok(Ok(resp)) => self.want(d, resp.checkpoint),
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
        tracing::info!(shard = %d.shard, checkpoint = %d.progress.committed(), "processor shut down");
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
