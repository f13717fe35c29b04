//! What the record pipeline holds: a [`ShardLease`] per shard this worker owns, over the
//! coordinator's [`LeaseHandle`] (validity, the counter it is held at, fenced writes).

use super::*;

#[derive(Debug)]
pub(super) struct LeaseHandle {
    pub(super) table: LeaseTable,
    pub(super) worker_id: String,
    pub(super) held: tokio::sync::Mutex<HeldLease>,
    pub(super) revoked: AtomicBool,
    pub(super) liveness: Arc<SelfLiveness>,
    /// The liveness epoch the lease was taken in.
    pub(super) epoch: u64,
}

impl LeaseHandle {
    pub(super) fn is_valid(&self) -> bool {
        !self.revoked.load(Ordering::SeqCst)
            && self.liveness.epoch() == self.epoch
            && self.liveness.is_alive(Instant::now())
    }

    pub(super) fn valid_until(&self) -> Option<Instant> {
        if self.revoked.load(Ordering::SeqCst) || self.liveness.epoch() != self.epoch {
            return None;
        }
        self.liveness
            .alive_until()
            .filter(|until| *until > Instant::now())
    }
}

/// A shard this worker owns, handed to the record pipeline.
#[derive(Debug, Clone)]
pub struct ShardLease {
    /// The shard.
    pub shard_id: String,
    /// Resume after this checkpoint (or start at this initial position).
    pub checkpoint: Checkpoint,
    /// KCL's prepared checkpoint, if the previous owner left one.
    pub pending_checkpoint: Option<Checkpoint>,
    /// The shard's hash key range, when known (to drop KPL sub-records of other shards).
    pub hash_range: Option<(String, String)>,
    /// With checkpoint `AT_TIMESTAMP`: the lease's own pinned start (epoch ms), if any.
    pub start_timestamp_ms: Option<i64>,
    pub(super) inner: Arc<LeaseHandle>,
    /// Alive while the record processor holds this lease: the coordinator sees it dropped
    /// (the processor ended, however) and releases the lease.
    pub(super) _task: Arc<()>,
}

impl ShardLease {
    /// May records of this shard still be delivered? False once the lease is lost, handed
    /// over or released, and whenever this worker has not confirmed its own heartbeat
    /// recently enough (a paused or cut-off worker stops by itself).
    pub fn is_valid(&self) -> bool {
        self.inner.is_valid()
    }

    /// Until when [`ShardLease::is_valid`] holds at the latest, unless a heartbeat lands
    /// meanwhile; `None` when it does not hold now. A call made under this lease carries it
    /// to the app (docs/PROCESSOR.md, "Fencing"), which refuses the call once it passed: a
    /// worker paused between its lease check and its call cannot deliver late.
    pub fn valid_until(&self) -> Option<Instant> {
        self.inner.valid_until()
    }

    /// The lease's fencing token: this worker and the lease counter it holds the lease at
    /// (the counter grows with every change of owner and stays while the owner keeps it).
    pub async fn fencing_token(&self) -> (String, u64) {
        let held = self.inner.held.lock().await;
        (self.inner.worker_id.clone(), held.counter)
    }

    /// Writes a checkpoint.
    ///
    /// # Guarantees
    /// Lands only while this worker still owns the lease (fenced by the counter) and never
    /// moves the checkpoint backwards.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] when the lease is no longer ours (then it is revoked);
    /// [`LeaseError::CheckpointBackwards`]; [`LeaseError::Dynamo`] (transient: retry).
    pub async fn checkpoint(&self, to: Checkpoint) -> Result<(), LeaseError> {
        self.write(Write::Checkpoint(to)).await
    }

    /// Pins a lease at `LATEST` to `AT_TIMESTAMP` `timestamp_ms` (see
    /// [`LeaseTable::pin_start`]).
    ///
    /// # Errors
    /// As [`ShardLease::checkpoint`].
    pub async fn pin_start(&self, timestamp_ms: i64) -> Result<(), LeaseError> {
        self.write(Write::PinStart(timestamp_ms)).await
    }

    /// A fenced write under the lease's lock: refused at once when the lease is no longer
    /// valid, and a lost ownership condition revokes the lease.
    async fn write(&self, write: Write) -> Result<(), LeaseError> {
        let mut held = self.inner.held.lock().await;
        if !self.is_valid() {
            return Err(LeaseError::LeaseLost {
                shard_id: held.shard_id.clone(),
                counter: held.counter,
            });
        }
        let (table, me) = (&self.inner.table, &self.inner.worker_id);
        let res = match write {
            Write::Checkpoint(to) => table.checkpoint(&mut held, me, to).await,
            Write::PinStart(ms) => table.pin_start(&mut held, me, ms).await,
        };
        if matches!(res, Err(LeaseError::LeaseLost { .. })) {
            self.inner.revoked.store(true, Ordering::SeqCst);
        }
        res
    }

    /// Records the shard's children when it ended.
    ///
    /// # Errors
    /// As [`ShardLease::checkpoint`].
    pub async fn set_children(&self, children: &[String]) -> Result<(), LeaseError> {
        let held = self.inner.held.lock().await;
        self.inner
            .table
            .set_children(&held, &self.inner.worker_id, children)
            .await
    }

    /// The checkpoint as of the last write or take.
    pub async fn current_checkpoint(&self) -> Checkpoint {
        self.inner.held.lock().await.checkpoint.clone()
    }
}

/// A write of [`ShardLease`] that depends on holding the lease.
enum Write {
    Checkpoint(Checkpoint),
    PinStart(i64),
}
