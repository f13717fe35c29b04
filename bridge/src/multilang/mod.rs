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
}

/// One shard's child and where it stands.
#[derive(Default)]
struct Shard {
    child: Option<Child>,
    /// The position the shard started at (for a new child after a failure).
    start: Option<v1::StartingPosition>,
    cursor: Cursor,
    /// A call was under way when its future was dropped (the worker gave up on it): the
    /// child is mid-exchange and must be replaced.
    in_call: bool,
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

    fn forget(&self, id: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.remove(id);
    }

    /// The shards with a child now.
    pub fn shard_count(&self) -> usize {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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

    /// Runs `action` on the shard's child (starting one from the last checkpoint first when
    /// there is none), judging its checkpoint requests in `phase`. On failure the child is
    /// killed and the call fails; the worker retries it.
    async fn call(
        &self,
        shard_id: &str,
        state: &mut Shard,
        action: Action,
        line: &[u8],
        phase: Phase,
    ) -> Result<Option<Accepted>, Status> {
        if state.in_call
            && let Some(child) = state.child.take()
        {
            tracing::warn!(
                shard = shard_id,
                pid = child.pid(),
                "the worker gave up on the app's last call: replacing its process"
            );
            child.kill().await;
        }
        if state.child.is_none() && action != Action::Initialize {
            self.start(shard_id, state).await?;
        }
        let Some(child) = state.child.as_mut() else {
            return Err(Status::internal("no process for the shard"));
        };
        let mut accepted = None;
        let cursor = &mut state.cursor;
        state.in_call = true;
        let result = child
            .call(
                action,
                line,
                self.config.timeout,
                |seq, sub| match checkpoint::judge(cursor, phase, seq, sub) {
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
            .await;
        state.in_call = false;
        match result {
            Ok(()) => Ok(accepted),
            Err(e) => {
                if let Some(child) = state.child.take() {
                    tracing::warn!(shard = shard_id, pid = child.pid(), error = %e, "the app's process failed: stopped; the worker retries the call");
                    child.kill().await;
                }
                Err(failed(shard_id, &e))
            }
        }
    }

    /// Starts a child for the shard and initializes it at the last checkpoint.
    async fn start(&self, shard_id: &str, state: &mut Shard) -> Result<(), Status> {
        let child =
            Child::spawn(&self.config.command, shard_id).map_err(|e| failed(shard_id, &e))?;
        state.child = Some(child);
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
        let Some(child) = state.child.as_mut() else {
            return Err(Status::internal("no process for the shard"));
        };
        if let Err(e) = child
            .call(
                Action::Initialize,
                &line,
                self.config.timeout,
                |seq, sub| message::checkpoint_reply(seq, sub, Some("InvalidStateException")),
            )
            .await
        {
            if let Some(child) = state.child.take() {
                child.kill().await;
            }
            return Err(failed(shard_id, &e));
        }
        Ok(())
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
            self.forget(shard_id);
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
            drop(state);
            self.forget(shard_id);
        }
        result
    }
}

fn failed(shard_id: &str, e: &ChildError) -> Status {
    Status::unavailable(format!(
        "shard {shard_id}: {e}; the process was stopped and the call will be retried with a new one started at the last checkpoint"
    ))
}

/// The contract's checkpoint for what the child asked.
fn to_checkpoint(accepted: Option<Accepted>) -> Option<v1::Checkpoint> {
    match accepted? {
        Accepted::UpTo(p) => Some(v1::Checkpoint::up_to(v1::RecordPosition {
            sequence_number: p.sequence_number,
            sub_sequence_number: p.sub_sequence_number,
        })),
        Accepted::AllDelivered | Accepted::ShardEnd => Some(v1::Checkpoint::all_delivered()),
        Accepted::Nothing => None,
    }
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
        self.start(&req.shard_id, &mut state).await?;
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
        let before = state.cursor.clone();
        state.cursor.last_delivered = Some(Position::new(
            last.sequence_number.clone(),
            last.sub_sequence_number,
        ));
        let line = message::process_records(&req.records, req.millis_behind_latest);
        match self
            .call(
                &req.shard_id,
                &mut state,
                Action::ProcessRecords,
                &line,
                Phase::Processing,
            )
            .await
        {
            Ok(accepted) => Ok(Response::new(v1::ProcessRecordsResponse {
                checkpoint: to_checkpoint(accepted),
                failed_from: None,
            })),
            Err(status) => {
                // The batch was not acknowledged: its records will come again, and a new
                // child starts at the last checkpoint of a call that succeeded.
                state.cursor = before;
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
