//! Delivery of one batch: in calls (or lanes), each call following the failure policy. The
//! decisions are pure ([`super::decide`], [`crate::pipeline::policy`],
//! [`crate::pipeline::progress`]); this is the I/O around them.

use std::sync::Arc;

use futures_util::future::join_all;
use kinesis_processor::tonic::{Code, Status};
use kinesis_processor::v1;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::app::BatchRequest;
use super::super::destination::{About, Reason, message};
use super::super::lanes::lane_of;
use super::super::policy::{AfterFailure, Plan, Segment, same_records, stale_front};
use super::super::position::Position;
use super::super::progress::LaneProgress;
use super::decide::{FailedFrom, Positions, chunks, failure_text, halfway};
use super::{
    Control, Delivery, Flow, Guarded, OnShutdown, ShardTask, position_of, sleep_until_some,
};
use crate::backoff::Backoff;
use crate::lease::coordinator::LagBoard;
use crate::lease::model::FAILING_AFTER_ATTEMPTS;
use crate::metrics::ReasonLabels;
use crate::records::aggregation::UserRecord;

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

/// The records of one call, and what each attempt at them needs.
struct Call {
    /// Shared with each attempt's request, which encodes its range from them.
    records: Arc<Vec<UserRecord>>,
    positions: Positions,
    millis_behind_latest: i64,
}

/// The remaining work on one call ([`Plan`]), and the backoff between its failed attempts.
struct Attempts {
    plan: Plan,
    backoff: Backoff,
    /// Failed calls since the last progress (records acknowledged or passed over).
    stuck: u32,
    /// The shard named failing, once `stuck` reached [`FAILING_AFTER_ATTEMPTS`].
    mark: Option<FailingMark>,
}

impl Attempts {
    /// Records acknowledged or passed over: the call moves.
    fn moved(&mut self) {
        self.stuck = 0;
        self.mark = None;
    }

    /// Another failed call of `shard` without progress.
    fn failed(&mut self, lag: &LagBoard, shard: &str) {
        self.stuck = self.stuck.saturating_add(1);
        if self.stuck >= FAILING_AFTER_ATTEMPTS && self.mark.is_none() {
            self.mark = Some(FailingMark::start(lag, shard));
        }
    }
}

/// Names its shard failing in the worker's heartbeat while it lives
/// ([`LagBoard::failing_start`]): one per call (a lane each), so one lane that moves does not
/// hide another that does not. Dropped, however the call ends (moved, delivered, handed over,
/// lost), it names the shard no more.
struct FailingMark {
    lag: LagBoard,
    shard: String,
}

impl FailingMark {
    fn start(lag: &LagBoard, shard: &str) -> Self {
        lag.failing_start(shard);
        Self {
            lag: lag.clone(),
            shard: shard.to_string(),
        }
    }
}

impl Drop for FailingMark {
    fn drop(&mut self) {
        self.lag.failing_end(&self.shard);
    }
}

/// A failed attempt at a segment.
struct Failure {
    /// Records at the front of the segment the app acknowledged nonetheless (a partial
    /// batch failure).
    acked: usize,
    /// Why the rest failed.
    error: String,
    /// The gRPC code, when the call failed as a whole.
    code: Option<Code>,
}

/// Waits for the lanes of a batch (`all`), keeping control messages in `d.deferred`. On a
/// hand-over the lanes go on to the end of the batch, so what they delivered stays one
/// unbroken stretch and the final checkpoint covers it (nothing the app asked to checkpoint
/// is delivered again), unless half the time left before the hand-over deadline passes
/// first: then each lane (`lanes`: their control channels) is told to stop after its call in
/// flight ([`Control::Stop`]). `None` when the lease is lost meanwhile: `all` is dropped,
/// which cancels every lane's call (the new owner gets these records again).
async fn await_lanes<F: std::future::Future>(
    d: &mut Delivery,
    all: F,
    lanes: &[mpsc::Sender<Control>],
    control: &mut mpsc::Receiver<Control>,
) -> Option<F::Output> {
    tokio::pin!(all);
    // When to stop the lanes, and the hand-over's deadline.
    let mut stop_lanes: Option<(Instant, Instant)> = None;
    loop {
        let stop_at = stop_lanes.map(|(at, _)| at);
        tokio::select! {
            done = &mut all => return Some(done),
            c = control.recv(), if d.deferred.is_none() => {
                let c = c.unwrap_or(Control::Lost);
                let shutdown = match &c {
                    Control::Shutdown { deadline, .. } => Some(*deadline),
                    _ => None,
                };
                d.deferred = Some(c);
                match shutdown {
                    Some(deadline) => {
                        stop_lanes = Some((halfway(Instant::now(), deadline), deadline));
                    }
                    None => return None,
                }
            }
            _ = sleep_until_some(stop_at) => {
                if let Some((_, deadline)) = stop_lanes.take() {
                    for tx in lanes {
                        let _ = tx.try_send(Control::Stop { deadline });
                    }
                }
            }
        }
    }
}

impl ShardTask {
    /// Delivers one batch, a call at a time, each retried until the app acknowledges it, or
    /// (with a destination) until the failure policy hands it to the destination.
    pub(super) async fn deliver(
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
            d.progress.pass_over(last);
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
    /// shard would, with its own [`crate::pipeline::progress::Progress`]; the batch is done
    /// when every lane is. Then the shard's progress moves to the low watermarks of the
    /// lanes' ([`LaneProgress`]).
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
        lanes.begin(&d.progress);
        let Some(split) = self.split_lanes(d, &mut lanes, records) else {
            d.lanes = Some(lanes);
            return Flow::Lost;
        };
        let mut senders = Vec::new();
        let mut runs = Vec::new();
        for (i, records) in split.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let (tx, mut rx) = mpsc::channel(2);
            senders.push(tx);
            let mut ld = Delivery {
                shard: d.shard.clone(),
                progress: lanes.lane(&d.progress, i),
                last_write: None,
                since_write: (0, 0),
                write_now: false,
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
        let Some(done) = await_lanes(d, join_all(runs), &senders, control).await else {
            d.lanes = Some(lanes);
            return Flow::Lost;
        };
        let mut lost = false;
        for (i, ld, flow) in done {
            lost |= matches!(flow, Flow::Lost);
            d.last_call = d.last_call.max(ld.last_call);
            d.write_now |= ld.write_now;
            lanes.finish(i, &ld.progress);
        }
        d.progress.merge_lanes(&lanes);
        d.lanes = Some(lanes);
        if lost { Flow::Lost } else { Flow::Continue }
    }

    /// Splits a batch into the records of each lane, by partition key (the records no filter
    /// matches go to no lane: counted in `records_filtered_total`), and tells `lanes` which
    /// lane has each record. `None` for a malformed sequence number.
    fn split_lanes(
        &self,
        d: &Delivery,
        lanes: &mut LaneProgress,
        records: Vec<UserRecord>,
    ) -> Option<Vec<Vec<UserRecord>>> {
        let n = lanes.lanes();
        let mut split: Vec<Vec<UserRecord>> = vec![Vec::new(); n];
        let mut filtered = 0u64;
        for r in records {
            let p = position_of(&d.shard, &r)?;
            let lane = self
                .config
                .filters
                .matches(&r)
                .then(|| lane_of(&r.partition_key, n));
            lanes.add(p, lane);
            match lane.and_then(|l| split.get_mut(l)) {
                Some(part) => part.push(r),
                None => filtered += 1,
            }
        }
        self.metrics.records_filtered.inc_by(filtered);
        Some(split)
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
        // Every record's position is kept only when a policy may need part of the batch
        // again (bisect, partial failure) or its contents (destination, record age). Each
        // call's request is encoded from the records in place, never cloned.
        let keep = policy.destination || policy.bisect || self.config.report_batch_item_failures;
        if chunk.is_empty() {
            return Flow::Continue;
        }
        let Some(positions) = Positions::of(&d.shard, &chunk, keep) else {
            return Flow::Lost;
        };
        let mut tries = Attempts {
            plan: Plan::new(chunk.len(), policy),
            backoff: Backoff::new(self.config.retry_base, self.config.retry_max),
            stuck: 0,
            mark: None,
        };
        let call = Call {
            records: Arc::new(chunk),
            positions,
            millis_behind_latest,
        };
        while let Some(seg) = tries.plan.next() {
            let Some(last) = call.positions.at(seg.end - 1) else {
                tracing::error!(shard = %d.shard, "a batch without the position of its last record: the processor stops rather than skip it");
                return Flow::Lost;
            };
            if !self.lease.is_valid() {
                return Flow::Lost;
            }
            // Records too old for the app go to the destination first.
            let stale = match (self.config.max_record_age, policy.destination) {
                (Some(age), true) => stale_front(
                    call.records[seg.start..seg.end]
                        .iter()
                        .map(|r| r.approximate_arrival_ms),
                    self.config.clock.now_ms(),
                    age,
                ),
                _ => 0,
            };
            if let Some(expired) = tries.plan.expire_front(stale) {
                let (records, positions) = (&call.records, call.positions.all());
                match self
                    .destine(
                        d,
                        records,
                        positions,
                        expired,
                        Reason::RecordAge,
                        None,
                        control,
                    )
                    .await
                {
                    Flow::Continue => {
                        tries.moved();
                        continue;
                    }
                    flow => return flow,
                }
            }
            match self
                .deliver_segment(d, &call, &mut tries, seg, last, control)
                .await
            {
                Flow::Continue => {}
                flow => return flow,
            }
            if d.deferred.is_some() && tries.plan.next().is_some() {
                // The rest goes to the next owner.
                return Flow::Interrupted;
            }
        }
        Flow::Continue
    }

    /// Delivers records `seg` of `call` (`last`: the position of its last record) until the
    /// app acknowledges them, or a part of them (the plan then holds the rest), or the
    /// policy hands them to the destination: `Flow::Continue`. `Flow::Interrupted` or
    /// `Flow::Lost` when a control message or the lease's end stops it.
    async fn deliver_segment(
        &self,
        d: &mut Delivery,
        call: &Call,
        tries: &mut Attempts,
        mut seg: Segment,
        last: Position,
        control: &mut mpsc::Receiver<Control>,
    ) -> Flow {
        let count = seg.len() as u64;
        let bytes = data_bytes(&call.records[seg.start..seg.end]);
        // One request per segment: each attempt encodes it into tonic's buffer.
        let batch = BatchRequest::from_records(
            &d.shard,
            Arc::clone(&call.records),
            seg.start..seg.end,
            call.millis_behind_latest,
            &d.fencing.0,
            d.fencing.1,
        );
        self.metrics.records_per_call.observe(count as f64);
        // The lag while the app works on these: the age of the oldest.
        let _working = call.records[seg.start..seg.end]
            .iter()
            .filter_map(|r| r.approximate_arrival_ms)
            .min()
            .map(|at| {
                Working::start(
                    &self.config.lag,
                    d.shard.clone(),
                    self.config.clock.now_ms() - at,
                )
            });
        loop {
            let answer = match self.call_app(d, &batch, seg.failures + 1, control).await {
                Ok(answer) => answer,
                Err(flow) => return flow,
            };
            let failure = match answer {
                Ok(resp) => match resp.failed_from {
                    None => {
                        d.ledger.unstall();
                        tries.moved();
                        tries.backoff.reset();
                        tries.plan.acked();
                        d.progress.acked(last);
                        self.metrics.records_delivered.inc_by(count);
                        self.metrics.bytes_delivered.inc_by(bytes);
                        self.metrics.batches_delivered.inc();
                        self.want(d, resp.checkpoint);
                        return Flow::Continue;
                    }
                    Some(failed) => {
                        self.metrics.partial_batch_failures.inc();
                        let (n, error) = self.partly(d, &failed, call.positions.all(), seg);
                        if n > 0 {
                            tries.moved();
                            if let Some(p) = call.positions.at(seg.start + n - 1) {
                                d.progress.acked(p);
                            }
                            let acked = &call.records[seg.start..seg.start + n];
                            self.metrics.records_delivered.inc_by(n as u64);
                            self.metrics.bytes_delivered.inc_by(data_bytes(acked));
                            self.want(d, resp.checkpoint);
                        }
                        Failure {
                            acked: n,
                            error,
                            code: None,
                        }
                    }
                },
                Err(e) => Failure {
                    acked: 0,
                    error: e.message().to_string(),
                    code: Some(e.code()),
                },
            };
            match self
                .after_failure(d, call, tries, seg, failure, control)
                .await
            {
                Ok(Some(same)) => seg = same,
                Ok(None) => return Flow::Continue,
                Err(flow) => return flow,
            }
        }
    }

    /// One `ProcessRecords` call of `batch`: the app's answer (a call past its deadline
    /// answers `DEADLINE_EXCEEDED`), or the flow that ended the wait for it (a lost lease
    /// cancels the call; a hand-over lets it finish unless its time runs out).
    async fn call_app(
        &self,
        d: &mut Delivery,
        batch: &BatchRequest,
        attempt: u32,
        control: &mut mpsc::Receiver<Control>,
    ) -> Result<Result<v1::ProcessRecordsResponse, Status>, Flow> {
        if !self.lease.is_valid() {
            return Err(Flow::Lost);
        }
        d.last_call = Instant::now();
        // Taken with the check above: a worker paused between the two cannot deliver after
        // it resumes (the app refuses the call).
        let valid_until = self.valid_until_ms();
        let call = self.app.process_encoded(batch, attempt, valid_until);
        let timeout = self.config.app_call_timeout;
        // A hand-over lets the batch in flight finish; a lost lease cancels it (the new owner
        // gets these records again), and so does the deadline (a failed attempt).
        match self
            .guard(d, control, timeout, OnShutdown::Finish, call)
            .await
        {
            Guarded::Done(r) => Ok(r),
            Guarded::TimedOut => {
                self.metrics.app_call_timeouts.inc();
                Ok(Err(Status::deadline_exceeded(format!(
                    "no answer within {timeout:?} (--app-call-timeout-ms)"
                ))))
            }
            // Cut off before the hand-over's deadline: not acknowledged, so the next owner
            // gets these records; what came before is checkpointed.
            Guarded::Interrupted => Err(Flow::Interrupted),
            Guarded::Lost => Err(Flow::Lost),
        }
    }

    /// After the app failed (the rest of) segment `seg`: the shard stops reading ahead, the
    /// plan decides, and that is carried out: the destination, or a backoff. `Ok(Some(seg))`:
    /// the very same records again (the same request); `Ok(None)`: the segment is done with
    /// (sent to the destination, split, or shortened: the plan has what is left);
    /// `Err(flow)`: a hand-over or the lease's end stops delivery.
    async fn after_failure(
        &self,
        d: &mut Delivery,
        call: &Call,
        tries: &mut Attempts,
        seg: Segment,
        failure: Failure,
        control: &mut mpsc::Receiver<Control>,
    ) -> Result<Option<Segment>, Flow> {
        let Failure { acked, error, code } = failure;
        // A stuck shard holds none of the read-ahead budget.
        d.ledger.stall();
        self.metrics.batch_retries.inc();
        let after = tries.plan.partly_acked(acked);
        let attempts = seg.failures + 1;
        match after {
            AfterFailure::Destine(given_up) => {
                d.ledger.unstall();
                let first = call
                    .records
                    .get(seg.start)
                    .map(|r| r.sequence_number.clone())
                    .unwrap_or_default();
                tracing::error!(shard = %d.shard, error = %error, code = ?code, attempts, records = given_up.len(), first = %first, destination = self.config.destination.as_ref().map_or("", |x| x.arn()), "records failed max attempts: sending them to the on-failure destination");
                let reason = Reason::AttemptsExhausted;
                let error = Some(failure_text(error, code));
                let positions = call.positions.all();
                return match self
                    .destine(
                        d,
                        &call.records,
                        positions,
                        given_up,
                        reason,
                        error,
                        control,
                    )
                    .await
                {
                    Flow::Continue => {
                        // Passed over: the call moves again.
                        tries.moved();
                        Ok(None)
                    }
                    flow => Err(flow),
                };
            }
            AfterFailure::Bisected => {
                self.metrics.bisections.inc();
                tracing::warn!(shard = %d.shard, error = %error, code = ?code, attempt = attempts, records = seg.len() as u64 - acked as u64, "app ProcessRecords failed; bisecting the batch");
            }
            AfterFailure::Retry => {
                tracing::warn!(shard = %d.shard, error = %error, code = ?code, attempt = attempts, acknowledged = acked, "app ProcessRecords failed; retrying the failed records");
            }
        }
        // Failed again and again without progress: the shard does not move, whatever the
        // number of workers (the operator says so, and scales by the lag of the others).
        tries.failed(&self.config.lag, &d.shard);
        let delay = tries.backoff.next_delay();
        if d.deferred.is_some() {
            // Shutting down: the next owner retries these records.
            return Err(Flow::Interrupted);
        }
        match self.pause(d, delay, control).await {
            Flow::Continue => {}
            // A hand-over ends the backoff: the next owner retries these records.
            flow => return Err(flow),
        }
        Ok(same_records(after, seg, tries.plan.next()))
    }

    /// Reads a partial batch failure ([`FailedFrom`]): how many records of `seg` the app
    /// acknowledged (those before `failed`), and the error to report. Zero (the whole call
    /// failed, logged) when partial failures are off, or `failed` is not a record of the
    /// segment.
    fn partly(
        &self,
        d: &Delivery,
        failed: &v1::RecordPosition,
        positions: &[Position],
        seg: Segment,
    ) -> (usize, String) {
        let enabled = self.config.report_batch_item_failures;
        let read = FailedFrom::read(failed, positions, seg, enabled);
        match &read {
            FailedFrom::Off { named } => {
                tracing::error!(shard = %d.shard, failed_from = %named, "the app reported a partial batch failure, but --report-batch-item-failures (spec.delivery.reportBatchItemFailures) is off: the whole batch counts as failed");
            }
            FailedFrom::NotInBatch { named } => {
                tracing::error!(shard = %d.shard, failed_from = %named, "the app's failed_from names no record of the batch: the whole batch counts as failed");
            }
            FailedFrom::At { .. } => {}
        }
        read.acked()
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
        d.progress.pass_over(last.clone());
        Flow::Continue
    }
}

/// Record data bytes of `records`.
fn data_bytes(records: &[UserRecord]) -> u64 {
    records.iter().map(|r| r.data.len() as u64).sum()
}

/// A call the app works on, in the lag board until it is answered (or abandoned).
struct Working<'a> {
    board: &'a crate::lease::coordinator::LagBoard,
    shard: String,
}

impl<'a> Working<'a> {
    fn start(board: &'a crate::lease::coordinator::LagBoard, shard: String, age_ms: i64) -> Self {
        board.delivering(&shard, age_ms);
        Self { board, shard }
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.board.delivered(&self.shard);
    }
}
