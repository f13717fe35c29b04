//! The items of the lease table: one lease per shard (KCL's attributes and meanings, so an
//! application moving from KCL keeps its checkpoints) and one heartbeat per worker (ours).

use super::checkpoint::Checkpoint;

/// KCL's attribute names. Ours are the `ko*` ones below.
pub mod attr {
    /// Hash key: the shard id for a lease, `kinesis-operator:worker:<id>` for a heartbeat.
    pub const LEASE_KEY: &str = "leaseKey";
    /// The worker holding the lease.
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// Fencing token (N): every ownership change increments it, every ownership-dependent
    /// write is conditional on it.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// Checkpoint (S): sequence number or sentinel.
    pub const CHECKPOINT: &str = "checkpoint";
    /// Sub-sequence number of the checkpoint (N).
    pub const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
    /// Owner changes since the last checkpoint (N).
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    /// Parent shards (SS): one after a split, two after a merge.
    pub const PARENT_SHARD_IDS: &str = "parentShardId";
    /// Child shards (SS), known once the shard ended.
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// The shard's hash key range (S, decimal).
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// The shard's hash key range (S, decimal).
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// KCL's prepared (two-phase) checkpoint (S).
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// Its sub-sequence number (N).
    pub const PENDING_CHECKPOINT_SUB: &str = "pendingCheckpointSubSequenceNumber";
    /// Opaque application state stored with the prepared checkpoint (B).
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// Ours: a worker asks the owner to hand the lease over (S, the asking worker's id).
    pub const HANDOFF_TO: &str = "koHandoffTo";
    /// Ours: the owner granted the request in `koHandoffTo` (S, the same worker id): its
    /// record processor is finishing, and the requester's timeout runs from when it sees
    /// this. A request without it is never taken by timeout.
    pub const HANDOFF_GRANTED: &str = "koHandoffGranted";
    /// Ours: a heartbeat's counter (N), incremented on every heartbeat.
    pub const HEARTBEAT: &str = "koHeartbeat";
    /// Ours: the heartbeat's worker id (S).
    pub const WORKER_ID: &str = "koWorkerId";
    /// Ours: the worker is shutting down and takes no leases (BOOL).
    pub const DRAINING: &str = "koDraining";
    /// Ours, on heartbeat items: how far behind the tip each shard of the worker is (a map
    /// shard → milliseconds), for the operator's status.
    pub const LAG: &str = "koLag";
    /// Ours, on heartbeat items: how the worker coordinates (`peer` or `assigner`), so a fleet
    /// that mixes them is noticed.
    pub const COORDINATION: &str = "koCoordination";
    /// Ours, on heartbeat items: the shards whose delivery waits for the on-failure
    /// destination (it refuses their records), a string set, absent when none.
    pub const STALLED: &str = "koStalled";
    /// Ours, on heartbeat items: the shards whose app keeps failing their records
    /// ([`super::Heartbeat::failing`]), a string set, absent when none.
    pub const FAILING: &str = "koFailing";
    /// Where a lease that started at `LATEST` was pinned before its first delivery (epoch
    /// ms, with checkpoint `AT_TIMESTAMP`): the next owner resumes there, not at its own tip.
    pub const START_TIMESTAMP: &str = "koStartTimestamp";
    /// Ours (assigner mode): the lease was given to `leaseOwner` (by the assigner, or by a
    /// hand-over) and not yet accepted by it (BOOL); its acceptance removes it.
    pub const ASSIGNED: &str = "koAssigned";
    /// Ours, on the assigner item: the workers that watch the assigner every round (SS).
    pub const SUCCESSORS: &str = "koSuccessors";
}

/// The owner index (assigner mode): a global secondary index on `leaseOwner` projecting the
/// counter and the hand-over request, so a worker reads only its own leases, and a
/// checkpoint (which changes neither) costs no index write.
pub const OWNER_INDEX: &str = "koLeaseOwnerIndex";

/// The assigner item's key (assigner mode): `leaseOwner` is the elected assigner,
/// `leaseCounter` the election term (every claim bumps it).
pub const ASSIGNER_KEY: &str = "kinesis-operator:assigner";

/// Prefix of heartbeat items' keys; no shard id starts with it.
pub const HEARTBEAT_KEY_PREFIX: &str = "kinesis-operator:worker:";

/// Prefix of every item of ours that is not a lease (heartbeats, the operator's claim item);
/// no shard id starts with it, and a scan skips what it does not know under it.
pub const RESERVED_KEY_PREFIX: &str = "kinesis-operator:";

/// One shard's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub shard_id: String,
    /// The worker holding it, if any.
    pub owner: Option<String>,
    /// The fencing counter.
    pub counter: u64,
    /// Where processing has got to (or where it starts).
    pub checkpoint: Checkpoint,
    /// KCL's prepared checkpoint, if one is pending.
    pub pending_checkpoint: Option<Checkpoint>,
    /// State stored with the prepared checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// Owner changes since the last checkpoint.
    pub owner_switches_since_checkpoint: u64,
    /// Parent shards, which must reach `SHARD_END` before this one starts.
    pub parent_shard_ids: Vec<String>,
    /// Child shards, once known.
    pub child_shard_ids: Vec<String>,
    /// The shard's hash key range (decimal strings), when known.
    pub hash_range: Option<(String, String)>,
    /// A worker that asked the owner to hand this lease over.
    pub handoff_to: Option<String>,
    /// The owner granted the request in `handoff_to` (it is finishing its processor).
    pub handoff_granted: bool,
    /// With checkpoint `AT_TIMESTAMP`: this lease's own start (epoch ms), written when a
    /// `LATEST` lease was pinned; `None`: the application's initial timestamp.
    pub start_timestamp_ms: Option<i64>,
    /// Given to `owner` and not yet accepted (assigner mode): not processed yet.
    pub assigned: bool,
}

impl Lease {
    /// A new, unowned lease for a shard that starts at `initial`.
    pub fn new(
        shard_id: impl Into<String>,
        initial: Checkpoint,
        parent_shard_ids: Vec<String>,
    ) -> Self {
        Self {
            shard_id: shard_id.into(),
            owner: None,
            counter: 0,
            checkpoint: initial,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids,
            child_shard_ids: Vec::new(),
            hash_range: None,
            handoff_to: None,
            handoff_granted: false,
            start_timestamp_ms: None,
            assigned: false,
        }
    }

    /// Is every record of the shard processed?
    pub fn is_finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

/// A worker's heartbeat item: proves the worker alive while its counter keeps changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The worker.
    pub worker_id: String,
    /// Incremented on every heartbeat.
    pub counter: u64,
    /// The worker is shutting down: it takes nothing and counts for no fair share.
    pub draining: bool,
    /// Milliseconds behind the tip of each shard it processes, as of its last reads.
    pub lag: std::collections::BTreeMap<String, i64>,
    /// How the worker coordinates (`peer`, `assigner`); `None` from workers before this was
    /// recorded (peer mode only).
    pub coordination: Option<String>,
    /// Shards whose delivery waits for the on-failure destination, which refuses their
    /// records (the operator turns this into the `DeliveryStalled` condition).
    pub stalled: std::collections::BTreeSet<String>,
    /// Shards whose app failed [`FAILING_AFTER_ATTEMPTS`] calls in a row without taking a
    /// record (one lane is enough): the shard does not move, and more workers would not
    /// help (the operator turns this into `DeliveryStalled` and leaves their lag out of
    /// lag-following scaling).
    pub failing: std::collections::BTreeSet<String>,
}

/// After this many failed calls in a row without a record taken, a shard counts as failing
/// ([`Heartbeat::failing`]): with the default backoff (100 ms doubling to 10 s, jittered)
/// about 15–30 s of failures, so one hiccup of the app does not count.
pub const FAILING_AFTER_ATTEMPTS: u32 = 10;

impl Heartbeat {
    /// The item's `leaseKey`.
    pub fn key(worker_id: &str) -> String {
        format!("{HEARTBEAT_KEY_PREFIX}{worker_id}")
    }
}

/// The assigner item: who holds the role, under which term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignerItem {
    /// The worker holding the role, if any (none after a graceful step-down).
    pub owner: Option<String>,
    /// The election term: every claim bumps it, every claim is conditional on it.
    pub term: u64,
    /// The workers that watch the assigner's heartbeat every round (`koSuccessors`), chosen
    /// by the assigner; the others look only every 30 rounds.
    pub successors: Vec<String>,
}

/// Everything one scan of the lease table found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSnapshot {
    /// One per shard.
    pub leases: Vec<Lease>,
    /// One per worker that ever started (until it removes its own on shutdown).
    pub heartbeats: Vec<Heartbeat>,
}
