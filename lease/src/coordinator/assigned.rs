//! The coordinator's round in assigner mode (the I/O around [`super::assign`]).
//!
//! Every round, every worker: (1) checks the role — a follower reads the assigner's
//! heartbeat item (one eventually consistent GetItem) and claims the role when that
//! heartbeat is stale for `failover_time`, gone, or draining; the assigner re-reads the role
//! item (strongly consistent) to notice that it was replaced; (2) the assigner scans the
//! table (eventually consistent) and acts on [`assign::assigner_decision`]; (3) every
//! worker reads its own leases (the assigner from its scan, the others from the owner
//! index) and acts on [`assign::member_decision`]. Every decision is one of those pure
//! functions, which the lease simulation (`tests/src/bin/lease_sim.rs`) calls as well.
//!
//! Per round, per follower: 2 requests, 1 read unit (two eventually consistent reads of
//! under 4 KB). The assigner: one eventually consistent scan (the table's size / 8 KB read
//! units), one strongly consistent GetItem, and writes only for changes.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::{StreamExt, stream};

use super::*;
use crate::assign::{AssignerSettings, Take};

/// Writes of one assigner round in flight at once: a window (the next write starts as soon
/// as one answers), not batches that each wait for their slowest write; at 10,000 new
/// leases that is ≈ 10,000 × 5 ms / 32 ≈ 1.6 s of takes instead of ≈ 6 s (`failover_sim`).
pub const ACT_CONCURRENCY: usize = 32;

impl Coordinator {
    pub(super) async fn assigned_round(&mut self) {
        let epoch = self.liveness.epoch();
        self.drop_stopped().await;
        if !self.liveness.is_alive(Instant::now()) {
            // Our own heartbeat is not confirmed: we may be the one considered dead. Take
            // nothing, decide nothing, until it is.
            self.fence_self().await;
            return;
        }
        self.check_role().await;
        let me = self.config.worker_id.clone();
        let mine = if self.role.mine {
            match self.assigner_round(epoch).await {
                Some(mine) => mine,
                None => return,
            }
        } else {
            match self.table.query_owned(&me).await {
                Ok(mine) => mine,
                Err(e) => {
                    tracing::warn!(error = %e, "reading this worker's leases (owner index) failed; keeping current leases");
                    self.fence_self().await;
                    return;
                }
            }
        };
        self.member_round(&mine, epoch).await;
        let due = self
            .role
            .last_sync
            .is_none_or(|t| t.elapsed() >= self.config.scan_interval * 2);
        if self.role.mine && self.role.need_sync && due {
            self.role.need_sync = false;
            self.role.last_sync = Some(Instant::now());
            self.sync_shards().await;
        }
    }

    /// Step (1): who is the assigner, and should this worker claim the role? A successor
    /// (named in the role item) watches the assigner's heartbeat every round, any other
    /// follower every [`ASSIGNER_REREAD_ROUNDS`] rounds, as a fallback should the assigner and
    /// its successors die together.
    async fn check_role(&mut self) {
        let me = self.config.worker_id.clone();
        // Re-read every round until the assigner has named its successors (a fleet's first
        // rounds), then every ASSIGNER_REREAD_ROUNDS.
        let reread = self
            .role
            .item
            .as_ref()
            .is_none_or(|i| i.successors.is_empty())
            || self.role.mine
            || self.role.rounds_since_read >= ASSIGNER_REREAD_ROUNDS;
        // Until the assigner has named its successors (as this worker last read the item),
        // every follower watches.
        let successor = self
            .role
            .item
            .as_ref()
            .is_some_and(|i| i.successors.is_empty() || i.successors.contains(&me));
        if !reread && !successor {
            self.role.rounds_since_read += 1;
            return;
        }
        if reread {
            match self.table.read_assigner(self.role.mine).await {
                Ok(item) => {
                    self.role.item = item;
                    self.role.rounds_since_read = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the assigner item failed");
                    return;
                }
            }
        } else {
            self.role.rounds_since_read += 1;
        }
        let holder = self.role.item.as_ref().and_then(|i| i.owner.clone());
        let was_mine = self.role.mine;
        self.role.mine = holder.as_deref() == Some(me.as_str());
        if was_mine && !self.role.mine {
            tracing::warn!(now = ?holder, "no longer the assigner (another worker claimed the role)");
            self.role.pending.clear();
        }
        if self.role.mine || self.draining {
            return;
        }
        // A value is as old as when it was seen (after the read), and staleness counts up to
        // when it was asked (before it): a read answered late (a pause, throttled retries)
        // must not make a live assigner look dead.
        let asked = Instant::now();
        let (stale, gone_or_draining) = match holder.as_deref() {
            None => (false, false),
            Some(h) => match self.table.read_heartbeat(h).await {
                Ok(Some(hb)) => {
                    let answered = Instant::now();
                    // The same observation as a scan's, kept in the same observer: once this
                    // worker is the assigner, the old one's shards are free at once.
                    self.observer
                        .observe(&heartbeat_key(h), hb.counter, answered);
                    let stale =
                        self.observer
                            .is_stale(&heartbeat_key(h), asked, self.config.failover_time);
                    (stale, hb.draining)
                }
                Ok(None) => (false, true),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the assigner's heartbeat failed");
                    return;
                }
            },
        };
        if assign::watch(holder.as_deref(), stale, gone_or_draining) == Watch::Follow {
            return;
        }
        tracing::info!(holder = ?holder, stale, gone_or_draining, successor, "the assigner looks dead or gone: claiming the role");
        // Claim on the item as it is now (strongly consistent), not as last read.
        let seen = match self.table.read_assigner(true).await {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(error = %e, "reading the assigner item failed");
                return;
            }
        };
        if seen != self.role.item {
            // It changed since: somebody claimed it (or stepped down); judge again next round.
            self.role.item = seen;
            return;
        }
        match self.table.claim_assigner(&me, seen.as_ref()).await {
            Ok(Some(item)) => {
                tracing::info!(term = item.term, previous = ?holder, "became the assigner");
                self.role.item = Some(item);
                self.role.mine = true;
                self.role.need_sync = true;
            }
            Ok(None) => self.role.item = None,
            Err(e) => tracing::warn!(error = %e, "claiming the assigner role failed"),
        }
    }

    /// Step (2), the assigner's: scan, decide for the fleet ([`assign::assigner_decision`],
    /// pure), act (the takes, then the hand-over requests, then the successors). Returns this
    /// worker's own leases from the scan, or `None` if the scan failed.
    async fn assigner_round(&mut self, epoch: u64) -> Option<Vec<OwnedLease>> {
        let started = Instant::now();
        // In parallel segments, one per page the table took last time: the round's scan takes
        // about one page's time whatever the table's size.
        let snapshot = match self
            .table
            .scan_parallel(false, self.role.scan_segments)
            .await
        {
            Ok((s, report)) => {
                self.role.scan_segments = crate::table::scan_segments(report.bytes);
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease table scan failed; keeping current leases");
                self.fence_self().await;
                return None;
            }
        };
        let now = Instant::now();
        let me = self.config.worker_id.clone();
        self.warn_of_other_modes(&snapshot);
        let settings = AssignerSettings {
            me: &me,
            draining: self.draining,
            failover_time: self.config.failover_time,
            heartbeat_interval: self.config.heartbeat_interval,
            scan_interval: self.config.scan_interval,
            handoff_timeout: self.config.handoff_timeout,
            max_handoffs_per_round: self.config.max_handoffs_per_round,
        };
        // Staleness up to when the scan was asked, not answered (see `check_role`).
        let decision = assign::assigner_decision(
            &snapshot,
            &mut self.observer,
            &mut self.role.pending,
            &settings,
            started,
            now,
        );
        self.role.need_sync |= decision.children_missing;
        tracing::debug!(
            scan_ms = started.elapsed().as_millis() as u64,
            leases = snapshot.leases.len(),
            live = decision.live.len(),
            target = decision.plan.target,
            assign = decision.plan.assign.len(),
            request = decision.plan.request.len(),
            pending = decision.pending,
            timed_out = decision.timed_out,
            "assigner round"
        );
        let mine_now = self.act_takes(&decision.takes).await;
        self.act_requests(&decision.requests).await;
        self.name_successors(decision.successors).await;
        // Taken for ourselves this round: ours at the new counter, which the scan predates.
        let mut mine = decision.mine;
        for (lease, held) in mine_now {
            mine.retain(|l| l.shard_id != lease.shard_id);
            mine.push(OwnedLease {
                shard_id: lease.shard_id.clone(),
                counter: held.counter,
                handoff_to: None,
            });
            self.acquired(&lease, held, epoch).await;
        }
        self.last_live = decision.live;
        self.last_snapshot = snapshot;
        self.scanned = true;
        Some(mine)
    }

    /// Takes on behalf of the chosen workers (the timed-out hand-overs and the free leases),
    /// many at once. Returns the leases taken for this worker itself, with how it holds them.
    async fn act_takes(&self, takes: &[Take]) -> Vec<(Lease, HeldLease)> {
        let me = self.config.worker_id.clone();
        let mut mine_now = Vec::new();
        let mut acts = stream::iter(takes.iter().cloned().map(|take| {
            let (table, me_) = (self.table.clone(), me.clone());
            async move {
                let Take {
                    lease,
                    to,
                    after_timeout,
                } = take;
                // For itself the assigner takes as in peer mode: accepted at once.
                let res = match (after_timeout, to == me_) {
                    (true, true) => table.take_after_handoff_timeout(&lease, &to).await,
                    (true, false) => table.assign_after_handoff_timeout(&lease, &to).await,
                    (false, true) => table.take(&lease, &to).await,
                    (false, false) => table.assign(&lease, &to).await,
                };
                (lease, to, after_timeout, res)
            }
        }))
        .buffer_unordered(ACT_CONCURRENCY);
        while let Some((lease, to, after_timeout, res)) = acts.next().await {
            match res {
                Ok(held) => {
                    if after_timeout {
                        tracing::info!(shard = %lease.shard_id, to = %to, "owner did not answer the hand-over request in time after granting it: lease given anyway");
                    } else {
                        tracing::debug!(shard = %lease.shard_id, to = %to, "lease assigned");
                    }
                    if to == me {
                        mine_now.push((lease, held));
                    }
                }
                Err(LeaseError::LeaseLost { .. }) => {}
                Err(e) => {
                    tracing::warn!(shard = %lease.shard_id, to = %to, error = %e, "assigning a lease failed")
                }
            }
        }
        mine_now
    }

    /// Writes the hand-over requests (lease as scanned, for whom), many at once, and
    /// remembers the ones that landed in `role.pending`.
    async fn act_requests(&mut self, requests: &[(Lease, String)]) {
        let table = self.table.clone();
        let mut acts = stream::iter(requests.iter().cloned().map(|(lease, to)| {
            let table = table.clone();
            async move {
                let res = table.request_handoff(&lease, &to).await;
                (lease, to, res)
            }
        }))
        .buffer_unordered(ACT_CONCURRENCY);
        while let Some((lease, to, res)) = acts.next().await {
            match res {
                Ok(true) => {
                    self.role.pending.insert(
                        lease.shard_id.clone(),
                        handoff::Request::new(to, lease.counter),
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = %lease.shard_id, error = %e, "hand-over request failed")
                }
            }
        }
    }

    /// Writes the successors `wanted` into the role item when they changed (rare: a write
    /// per change of the first few live worker ids).
    async fn name_successors(&mut self, wanted: Vec<String>) {
        let me = self.config.worker_id.clone();
        let Some(item) = self.role.item.as_mut() else {
            return;
        };
        if item.successors == wanted {
            return;
        }
        match self.table.set_successors(&me, item.term, &wanted).await {
            Ok(()) => item.successors = wanted,
            Err(e) => tracing::debug!(error = %e, "naming the assigner's successors failed"),
        }
    }

    /// Step (3), every worker's: act on its own leases.
    async fn member_round(&mut self, mine: &[OwnedLease], epoch: u64) {
        let me = self.config.worker_id.clone();
        let mut held = HashMap::new();
        for (shard, h) in &self.held {
            let counter = h.handle.held.lock().await.counter;
            held.insert(
                shard.clone(),
                HeldState {
                    counter,
                    handing_over: h.handing_over,
                },
            );
        }
        // What the index no longer shows needs no memory.
        let plan = assign::member_decision(&me, mine, &held, &mut self.role.left, self.draining);
        for shard in plan.lost {
            if let Some(h) = self.held.remove(&shard) {
                h.handle.revoked.store(true, Ordering::SeqCst);
                tracing::info!(shard = %shard, "lease lost");
                let _ = self.events.send(LeaseEvent::Lost { shard_id: shard }).await;
            }
        }
        for (shard, to) in &plan.grant {
            self.start_handover(shard, to).await;
        }
        let mut accepts = tokio::task::JoinSet::new();
        for owned in plan.accept {
            let (table, me) = (self.table.clone(), me.clone());
            accepts.spawn(async move {
                let res = table.accept(&owned, &me).await;
                (owned, res)
            });
        }
        let mut accepted = Vec::new();
        while let Some(done) = accepts.join_next().await {
            let Ok((owned, res)) = done else { continue };
            match res {
                Ok((held, lease)) => accepted.push((lease, held)),
                // The index showed a state that is gone: not ours at that counter any more.
                Err(LeaseError::LeaseLost { .. }) => {
                    self.role.left.insert(owned.shard_id, owned.counter);
                }
                Err(e) => {
                    tracing::warn!(shard = %owned.shard_id, error = %e, "accepting a lease failed")
                }
            }
        }
        for (lease, held) in accepted {
            self.acquired(&lease, held, epoch).await;
        }
        for owned in plan.release {
            let held = crate::table::HeldLease {
                shard_id: owned.shard_id.clone(),
                counter: owned.counter,
                checkpoint: crate::checkpoint::Checkpoint::TrimHorizon,
                start_timestamp_ms: None,
            };
            match self.table.release(&held, &me).await {
                Ok(()) => {
                    tracing::info!(shard = %owned.shard_id, "given a lease while draining: released");
                    self.role.left.insert(owned.shard_id, owned.counter);
                }
                Err(e) => {
                    tracing::debug!(shard = %owned.shard_id, error = %e, "releasing a lease given while draining failed")
                }
            }
        }
    }

    /// On shutdown: gives the assigner role up first, so another worker takes over the
    /// fleet's decisions while this one drains.
    pub(super) async fn step_down(&mut self) {
        if !self.role.mine {
            return;
        }
        let me = self.config.worker_id.clone();
        let Some(term) = self.role.item.as_ref().map(|i| i.term) else {
            return;
        };
        match self.table.release_assigner(&me, term).await {
            Ok(()) => tracing::info!(term, "assigner role given up"),
            Err(e) => {
                tracing::info!(error = %e, "giving the assigner role up failed (another worker takes it after failover time)")
            }
        }
        self.role.mine = false;
    }
}
