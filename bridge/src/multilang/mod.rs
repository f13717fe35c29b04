//! KCL MultiLangDaemon apps, unchanged: the bridge serves the record-processor contract and
//! runs the user's command once per shard, speaking the MultiLang protocol (KCL 2.x/3.x) on
//! the child's stdin and stdout.
//!
//! | contract call       | to the child            | answer                                  |
//! |---------------------|-------------------------|-----------------------------------------|
//! | `Initialize`        | start it, `initialize`  | its `status`                            |
//! | `ProcessRecords`    | `processRecords`        | the last checkpoint it asked for        |
//! | `LeaseLost`         | `leaseLost`, then EOF   | checkpoints refused (`ShutdownException`) |
//! | `ShardEnded`        | `shardEnded`, then EOF  | it must `checkpoint()` (the shard's end), as KCL requires |
//! | `ShutdownRequested` | `shutdownRequested`, then EOF | the last checkpoint it asked for  |
//!
//! Unlike KCL's daemon, a child that hangs (no `status` within `--timeout-seconds`), crashes
//! or breaks the protocol fails only its own shard's call: it is killed, the worker retries
//! the call (then applies its failure policies), and the retry starts a new child from the
//! last checkpoint. The idle call (no records) is not passed on, as KCL's
//! `callProcessRecordsEvenForEmptyRecordList` defaults to false.

pub mod checkpoint;
pub mod child;
pub mod message;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kinesis_processor::v1;
use kinesis_processor::v1::record_processor_server::RecordProcessor;
use tonic::{Request, Response, Status};

use checkpoint::{Accepted, Cursor, Phase, Position};
use child::{Child, ChildError};
use message::Action;

/// How long a child may take to exit once its stdin is closed after its last call.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Settings of the MultiLang bridge.
#[derive(Debug, Clone)]
pub struct Config {
    /// The user's command (KCL's `executableName`), run once per shard.
    pub command: Vec<String>,
    /// How long a child may take for one action before it counts as hung.
    pub timeout: Duration,
    /// The most record bytes kept per shard for a replacement child (what the app
    /// acknowledged but has not checkpointed); beyond it new batches are refused until the
    /// app checkpoints.
    pub max_retained_bytes: usize,
}

/// One shard's child and where it stands.
#[derive(Default)]
struct Shard {
    /// The child between calls. During a call it is taken out, so a call the worker gives up
    /// on (its future dropped) kills it (`kill_on_drop`) instead of leaving it mid-exchange.
    child: Option<Child>,
    /// The position the shard started at.
    start: Option<v1::StartingPosition>,
    /// Checkpoint and last delivered record, as of the last call that succeeded.
    cursor: Cursor,
    /// The batches the child acknowledged since the last checkpoint it asked for: a child
    /// that replaces a failed one gets them again first, as KCL's daemon would start over from
    /// the checkpoint (an app may buffer records until it checkpoints).
    retained: Vec<Batch>,
    /// Record bytes in `retained`, kept as it changes (the bound is checked on every call).
    retained_bytes: usize,
}

/// A batch kept for a replacement child.
struct Batch {
    records: Vec<v1::Record>,
    millis_behind_latest: i64,
}

impl Shard {
    fn bytes(records: &[v1::Record]) -> usize {
        records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len() + r.sequence_number.len())
            .sum()
    }

    /// Keeps an acknowledged batch for a replacement child.
    fn retain(&mut self, batch: Batch) {
        self.retained_bytes += Self::bytes(&batch.records);
        self.retained.push(batch);
    }

    /// Drops what the accepted checkpoint covers from the retained batches.
    fn checkpointed(&mut self, accepted: &Accepted) {
        match accepted {
            Accepted::AllDelivered | Accepted::ShardEnd => self.retained.clear(),
            Accepted::UpTo(at) => {
                for batch in &mut self.retained {
                    batch.records.retain(|r| {
                        checkpoint::compare(
                            &Position::new(r.sequence_number.clone(), r.sub_sequence_number),
                            at,
                        ) == std::cmp::Ordering::Greater
                    });
                }
                self.retained.retain(|b| !b.records.is_empty());
            }
            Accepted::Nothing => {}
        }
        self.retained_bytes = self.retained.iter().map(|b| Self::bytes(&b.records)).sum();
    }
}

/// The bridge: a [`RecordProcessor`] whose shards are child processes.
#[derive(Clone)]
pub struct MultiLang {
    config: Arc<Config>,
    shards: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shard>>>>>,
}

impl MultiLang {
    /// A bridge running `config.command` for each shard.
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            shards: Arc::default(),
        }
    }

    fn shard(&self, id: &str) -> Arc<tokio::sync::Mutex<Shard>> {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.entry(id.to_string()).or_default().clone()
    }

    /// Removes the shard's entry if it is still `this` one (a new `Initialize` may have
    /// replaced it meanwhile).
    fn forget(&self, id: &str, this: &Arc<tokio::sync::Mutex<Shard>>) {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if shards.get(id).is_some_and(|s| Arc::ptr_eq(s, this)) {
            shards.remove(id);
        }
    }

    /// Ends every child (stdin closed, then killed after a grace period): on the bridge's
    /// own SIGTERM, which comes after the worker handed every shard over.
    pub async fn finish_all(&self) {
        let shards: Vec<_> = {
            let mut map = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
            map.drain().map(|(_, s)| s).collect()
        };
        for shard in shards {
            if let Some(child) = shard.lock().await.child.take() {
                child.finish(EXIT_GRACE).await;
            }
        }
    }

    /// One exchange with `child`, its checkpoint requests judged against a copy of
    /// `cursor`; the copy and what was accepted on success.
    async fn exchange(
        &self,
        shard_id: &str,
        child: &mut Child,
        cursor: &Cursor,
        action: Action,
        line: &[u8],
        phase: Phase,
    ) -> Result<(Cursor, Option<Accepted>), ChildError> {
        let mut cursor = cursor.clone();
        let mut accepted = None;
        child
            .call(
                action,
                line,
                self.config.timeout,
                |seq, sub| match checkpoint::judge(&mut cursor, phase, seq, sub) {
                    Ok(a) => {
                        if a != Accepted::Nothing {
                            accepted = Some(a);
                        }
                        message::checkpoint_reply(seq, sub, None)
                    }
                    Err(refused) => {
                        tracing::warn!(
                            shard = shard_id,
                            ?seq,
                            ?sub,
                            error = refused.name(),
                            "checkpoint refused"
                        );
                        message::checkpoint_reply(seq, sub, Some(refused.name()))
                    }
                },
            )
            .await?;
        Ok((cursor, accepted))
    }

    /// A new child for the shard: started, initialized at the last checkpoint, and given
    /// again every batch acknowledged since (see [`Shard::retained`]); with the checkpoint it
    /// asked for during that replay, if any.
    async fn replacement(
        &self,
        shard_id: &str,
        state: &mut Shard,
    ) -> Result<(Child, Option<Accepted>), ChildError> {
        let mut child = Child::spawn(&self.config.command, shard_id)?;
        let start = match &state.cursor.checkpoint {
            Some(p) if p.sequence_number.bytes().all(|b| b.is_ascii_digit()) => {
                Some(v1::StartingPosition {
                    position: Some(v1::starting_position::Position::After(v1::RecordPosition {
                        sequence_number: p.sequence_number.clone(),
                        sub_sequence_number: p.sub_sequence_number,
                    })),
                })
            }
            _ => state.start.clone(),
        };
        let line = message::initialize(shard_id, start.as_ref());
        let fresh = Cursor {
            checkpoint: state.cursor.checkpoint.clone(),
            last_delivered: None,
        };
        self.exchange(
            shard_id,
            &mut child,
            &fresh,
            Action::Initialize,
            &line,
            Phase::Processing,
        )
        .await?;
        if state.retained.is_empty() {
            return Ok((child, None));
        }
        tracing::info!(
            shard = shard_id,
            batches = state.retained.len(),
            "giving the new process the batches acknowledged since the last checkpoint"
        );
        let mut accepted = None;
        let mut i = 0;
        while let Some(batch) = state.retained.get(i) {
            let line = message::process_records(&batch.records, batch.millis_behind_latest);
            // The child may checkpoint only what it has been given so far.
            let cursor = Cursor {
                checkpoint: state.cursor.checkpoint.clone(),
                last_delivered: batch
                    .records
                    .last()
                    .map(|r| Position::new(r.sequence_number.clone(), r.sub_sequence_number)),
            };
            let (cursor, got) = self
                .exchange(
                    shard_id,
                    &mut child,
                    &cursor,
                    Action::ProcessRecords,
                    &line,
                    Phase::Processing,
                )
                .await?;
            state.cursor.checkpoint = cursor.checkpoint;
            i += 1;
            if let Some(a) = got {
                let before = state.retained.len();
                state.checkpointed(&a);
                // What the checkpoint covered is gone from the front.
                i = i.saturating_sub(before - state.retained.len());
                accepted = Some(a);
            }
        }
        Ok((child, accepted))
    }

    /// Runs `action` on the shard's child (a replacement first when there is none), judging
    /// its checkpoint requests in `phase`. On failure the child is killed and the call
    /// fails; the worker retries it.
    async fn call(
        &self,
        shard_id: &str,
        state: &mut Shard,
        action: Action,
        line: &[u8],
        phase: Phase,
    ) -> Result<Option<Accepted>, Status> {
        let (mut child, replayed) = match state.child.take() {
            Some(child) => (child, None),
            None => self
                .replacement(shard_id, state)
                .await
                .map_err(|e| self.failed(shard_id, None, &e))?,
        };
        match self
            .exchange(shard_id, &mut child, &state.cursor, action, line, phase)
            .await
        {
            Ok((cursor, accepted)) => {
                state.cursor = cursor;
                state.child = Some(child);
                Ok(accepted.or(replayed))
            }
            Err(e) => {
                let pid = child.pid();
                child.kill().await;
                Err(self.failed(shard_id, pid, &e))
            }
        }
    }

    fn failed(&self, shard_id: &str, pid: Option<u32>, e: &ChildError) -> Status {
        tracing::warn!(shard = shard_id, pid, error = %e, "the app's process failed: stopped; the worker retries the call");
        failed(shard_id, e)
    }

    /// Sends a shard's last action and ends its child.
    async fn last_call(
        &self,
        shard_id: &str,
        action: Action,
        phase: Phase,
    ) -> Result<Option<Accepted>, Status> {
        let shard = self.shard(shard_id);
        let mut state = shard.lock().await;
        if state.child.is_none() && action == Action::LeaseLost {
            // Nothing runs for the shard: nothing to tell.
            self.forget(shard_id, &shard);
            return Ok(None);
        }
        let result = self
            .call(shard_id, &mut state, action, &message::bare(action), phase)
            .await;
        let ends = match (&result, action) {
            // KCL requires the end of the shard to be checkpointed; without it the call
            // fails and is retried with the same child.
            (Ok(a), Action::ShardEnded) => a.as_ref() == Some(&Accepted::ShardEnd),
            (Ok(_), _) => true,
            (Err(_), _) => true,
        };
        if ends {
            if let Some(child) = state.child.take() {
                child.finish(EXIT_GRACE).await;
            }
            self.forget(shard_id, &shard);
        }
        result
    }
}

fn failed(shard_id: &str, e: &ChildError) -> Status {
    Status::unavailable(format!(
        "shard {shard_id}: {e}; the process was stopped and the call will be retried with a new one started at the last checkpoint"
    ))
}

/// The contract's checkpoint for what the child asked, written at once: a KCL app's
/// `checkpoint()` was a write (it paced its own calls, e.g. every 60 s in KCL's samples), so
/// it keeps what a crash may redeliver, and costs what it cost on KCL.
fn to_checkpoint(accepted: Option<Accepted>) -> Option<v1::Checkpoint> {
    let c = match accepted? {
        Accepted::UpTo(p) => v1::Checkpoint::up_to(v1::RecordPosition {
            sequence_number: p.sequence_number,
            sub_sequence_number: p.sub_sequence_number,
        }),
        Accepted::AllDelivered | Accepted::ShardEnd => v1::Checkpoint::all_delivered(),
        Accepted::Nothing => return None,
    };
    Some(c.written_now())
}

#[tonic::async_trait]
impl RecordProcessor for MultiLang {
    async fn initialize(
        &self,
        request: Request<v1::InitializeRequest>,
    ) -> Result<Response<v1::InitializeResponse>, Status> {
        let req = request.into_inner();
        let shard = self.shard(&req.shard_id);
        let mut state = shard.lock().await;
        if let Some(old) = state.child.take() {
            old.kill().await;
        }
        let checkpoint = match req
            .starting_position
            .as_ref()
            .and_then(|s| s.position.as_ref())
        {
            Some(v1::starting_position::Position::After(p)) => Some(Position::new(
                p.sequence_number.clone(),
                p.sub_sequence_number,
            )),
            _ => None,
        };
        *state = Shard {
            start: req.starting_position.clone(),
            cursor: Cursor {
                checkpoint,
                last_delivered: None,
            },
            ..Shard::default()
        };
        let (child, _) = self
            .replacement(&req.shard_id, &mut state)
            .await
            .map_err(|e| self.failed(&req.shard_id, None, &e))?;
        state.child = Some(child);
        Ok(Response::new(v1::InitializeResponse {}))
    }

    async fn process_records(
        &self,
        request: Request<v1::ProcessRecordsRequest>,
    ) -> Result<Response<v1::ProcessRecordsResponse>, Status> {
        let req = request.into_inner();
        let Some(last) = req.records.last() else {
            return Ok(Response::new(v1::ProcessRecordsResponse::default()));
        };
        let shard = self.shard(&req.shard_id);
        let mut state = shard.lock().await;
        if state.retained_bytes > self.config.max_retained_bytes {
            return Err(Status::resource_exhausted(format!(
                "shard {}: the app has not checkpointed for more than {} MiB of records, which the bridge keeps to give a replacement process (--max-retained-mib): checkpoint more often",
                req.shard_id,
                self.config.max_retained_bytes >> 20
            )));
        }
        let delivered = Position::new(last.sequence_number.clone(), last.sub_sequence_number);
        let line = message::process_records(&req.records, req.millis_behind_latest);
        // The child sees the batch's records as delivered while it processes them.
        let before = state.cursor.last_delivered.replace(delivered);
        let result = self
            .call(
                &req.shard_id,
                &mut state,
                Action::ProcessRecords,
                &line,
                Phase::Processing,
            )
            .await;
        match result {
            Ok(accepted) => {
                state.retain(Batch {
                    records: req.records,
                    millis_behind_latest: req.millis_behind_latest,
                });
                if let Some(a) = &accepted {
                    state.checkpointed(a);
                }
                Ok(Response::new(v1::ProcessRecordsResponse {
                    checkpoint: to_checkpoint(accepted),
                    failed_from: None,
                }))
            }
            Err(status) => {
                // Not acknowledged: the worker retries the batch, and a replacement child
                // starts at the last checkpoint with the batches acknowledged since.
                state.cursor.last_delivered = before;
                Err(status)
            }
        }
    }

    async fn lease_lost(
        &self,
        request: Request<v1::LeaseLostRequest>,
    ) -> Result<Response<v1::LeaseLostResponse>, Status> {
        let shard_id = request.into_inner().shard_id;
        if let Err(e) = self
            .last_call(&shard_id, Action::LeaseLost, Phase::LeaseLost)
            .await
        {
            tracing::warn!(shard = %shard_id, error = %e.message(), "leaseLost failed; the process was stopped");
        }
        Ok(Response::new(v1::LeaseLostResponse {}))
    }

    async fn shard_ended(
        &self,
        request: Request<v1::ShardEndedRequest>,
    ) -> Result<Response<v1::ShardEndedResponse>, Status> {
        let shard_id = request.into_inner().shard_id;
        match self
            .last_call(&shard_id, Action::ShardEnded, Phase::ShardEnded)
            .await?
        {
            Some(Accepted::ShardEnd) => Ok(Response::new(v1::ShardEndedResponse {})),
            _ => Err(Status::failed_precondition(format!(
                "shard {shard_id} ended but the app did not call checkpoint() in shardEnded (KCL requires it before the child shards start): retried"
            ))),
        }
    }

    async fn shutdown_requested(
        &self,
        request: Request<v1::ShutdownRequestedRequest>,
    ) -> Result<Response<v1::ShutdownRequestedResponse>, Status> {
        let shard_id = request.into_inner().shard_id;
        let accepted = match self
            .last_call(&shard_id, Action::ShutdownRequested, Phase::Processing)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(shard = %shard_id, error = %e.message(), "shutdownRequested failed; the process was stopped");
                None
            }
        };
        Ok(Response::new(v1::ShutdownRequestedResponse {
            checkpoint: to_checkpoint(accepted),
        }))
    }
}
