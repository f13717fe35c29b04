//! The coordinator's round in peer mode: every worker scans the whole table and decides for
//! itself with [`balance::plan`] (the I/O around it: takes, hand-over requests and answers).

use super::*;

impl Coordinator {
    /// One peer round: scan, observe, lose what changed under us, decide, answer hand-over
    /// requests, take, follow up on our requests, ask for hand-overs.
    pub(super) async fn peer_round(&mut self) {
        // Leases taken in this round belong to the epoch it started in: a lapse during the
        // round (a slow scan) leaves them invalid, and the next round takes them back.
        let epoch = self.liveness.epoch();
        self.drop_stopped().await;
        let asked = Instant::now();
        let snapshot = match self.table.scan().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "lease table scan failed; keeping current leases");
                self.fence_self().await;
                return;
            }
        };
        let now = Instant::now();
        let me = self.config.worker_id.clone();
        self.observer.observe_scan(&snapshot, now);
        self.warn_of_other_modes(&snapshot);

        if !self.liveness.is_alive(now) {
            // Our own heartbeat is not confirmed: we may be the one considered dead. Take
            // nothing until it is.
            self.last_snapshot = snapshot;
            self.scanned = true;
            self.fence_self().await;
            return;
        }

        let (live, states) = liveness::fleet_view(
            &snapshot,
            &self.observer,
            &me,
            self.draining,
            self.config.failover_time,
            asked,
        );
        self.last_live = live.clone();
        let by_shard: HashMap<&str, &Lease> = snapshot
            .leases
            .iter()
            .map(|l| (l.shard_id.as_str(), l))
            .collect();

        // 1. Leases we hold that changed under us are lost.
        let mut held_now = Vec::with_capacity(self.held.len());
        for (shard, held) in &self.held {
            if !held.handing_over {
                held_now.push((shard.clone(), held.handle.held.lock().await.counter));
            }
        }
        let lost = lost_leases(&held_now, &by_shard, &me);
        self.lose(lost).await;

        // 2. Decide.
        let held_ids: HashSet<String> = self.held.keys().cloned().collect();
        let pending_ids: HashSet<String> = self.pending.keys().cloned().collect();
        let plan = balance::plan(
            &snapshot.leases,
            &states,
            &Fleet {
                me: &me,
                live: &live,
                draining: self.draining,
                held: &held_ids,
                pending_handoffs: &pending_ids,
                max_handoffs_per_round: self.config.max_handoffs_per_round,
            },
        );

        // 3. Hand-over requests on our leases: grant what we can spare, decline the rest.
        self.answer_handoff_requests(&snapshot, &states, &live, plan.target)
            .await;
        // 4. Take free leases.
        self.take_planned(&plan, &by_shard, epoch).await;
        // 5. Follow up on earlier hand-over requests: answered, declined, or granted and
        //    not handed over in time.
        let timeout = self.config.handoff_timeout;
        let timed_out = handoff::follow_up(&mut self.pending, &by_shard, now, |seen| {
            now.saturating_duration_since(seen) > timeout
        });
        for (lease, _) in timed_out {
            match self.table.take_after_handoff_timeout(&lease, &me).await {
                Ok(held) => {
                    tracing::info!(shard = %lease.shard_id, "owner did not answer the hand-over request: taken after its grant timed out");
                    self.acquired(&lease, held, epoch).await;
                }
                Err(e) => {
                    tracing::debug!(shard = %lease.shard_id, error = %e, "take after hand-over timeout failed")
                }
            }
        }
        // 6. Ask for hand-overs (after the follow-up, which judges requests by this scan).
        self.request_handoffs(&plan, &by_shard).await;
        self.last_snapshot = snapshot;
        self.scanned = true;
    }

    /// Stops the processors of `lost` leases (another worker holds them now).
    async fn lose(&mut self, lost: Vec<String>) {
        for shard in lost {
            if let Some(h) = self.held.remove(&shard) {
                h.handle.revoked.store(true, Ordering::SeqCst);
                tracing::info!(shard = %shard, "lease lost");
                let _ = self.events.send(LeaseEvent::Lost { shard_id: shard }).await;
            }
        }
    }

    /// Peer mode: answers the hand-over requests on the leases this worker holds: grants what
    /// it can spare above its fair share (`target`), declines the rest.
    async fn answer_handoff_requests(
        &mut self,
        snapshot: &TableSnapshot,
        states: &[balance::LeaseState<'_>],
        live: &BTreeSet<String>,
        target: usize,
    ) {
        let me = self.config.worker_id.clone();
        let requests: Vec<(&str, &str)> = snapshot
            .leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some(me.as_str()))
            .filter(|l| self.held.get(&l.shard_id).is_some_and(|h| !h.handing_over))
            .filter_map(|l| l.handoff_to.as_deref().map(|to| (l.shard_id.as_str(), to)))
            .collect();
        if requests.is_empty() {
            return;
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (l, s) in snapshot.leases.iter().zip(states) {
            if let (balance::LeaseState::Owned(o), Some(_)) = (s, l.owner.as_deref()) {
                *counts.entry(o).or_insert(0) += 1;
            }
        }
        // What we hold as the fleet counts it: live leases only (a finished lease whose
        // processor is still winding down counts for nobody).
        let holding = snapshot
            .leases
            .iter()
            .zip(states)
            .filter(|(l, s)| {
                matches!(s, balance::LeaseState::Owned(o) if *o == me)
                    && self.held.get(&l.shard_id).is_some_and(|h| !h.handing_over)
            })
            .count();
        let (grant, decline) = balance::grant_handoffs(&requests, holding, target, live, |w| {
            counts.get(w).copied().unwrap_or(0)
        });
        for (shard, to) in grant {
            self.start_handover(shard, to).await;
        }
        for shard in decline {
            if let Some(h) = self.held.get(shard) {
                let held = h.handle.held.lock().await.clone();
                if let Err(e) = self.table.decline_handoff(&held, &me).await {
                    tracing::debug!(shard = %shard, error = %e, "declining a hand-over failed");
                }
            }
        }
    }

    /// Peer mode: takes the leases `plan` names. A lease handed to us in answer to our
    /// request is ours already: the previous owner's fenced hand-over bumped the counter, so
    /// no second write. A take lost to a faster worker is replaced by the next free lease of
    /// `take_instead`.
    async fn take_planned(
        &mut self,
        plan: &balance::Plan,
        by_shard: &HashMap<&str, &Lease>,
        epoch: u64,
    ) {
        let me = self.config.worker_id.clone();
        let mut instead = plan.take_instead.iter();
        let mut queue: std::collections::VecDeque<&String> = plan.take.iter().collect();
        while let Some(shard) = queue.pop_front() {
            let Some(lease) = by_shard.get(shard.as_str()) else {
                continue;
            };
            let handed_to_us = lease.owner.as_deref() == Some(me.as_str())
                && self
                    .pending
                    .get(shard)
                    .is_some_and(|r| lease.counter == r.counter + 1);
            if handed_to_us {
                self.pending.remove(shard);
                let held = HeldLease {
                    shard_id: lease.shard_id.clone(),
                    counter: lease.counter,
                    checkpoint: lease.checkpoint.clone(),
                    start_timestamp_ms: lease.start_timestamp_ms,
                };
                self.acquired(lease, held, epoch).await;
                continue;
            }
            match self.table.take(lease, &me).await {
                Ok(held) => self.acquired(lease, held, epoch).await,
                Err(LeaseError::LeaseLost { .. }) => {
                    if let Some(next) = instead.next() {
                        queue.push_back(next);
                    }
                }
                Err(e) => tracing::warn!(shard = %shard, error = %e, "take failed"),
            }
        }
    }

    /// Peer mode: writes the hand-over requests `plan` names; the requester's clock starts
    /// once it sees the owner's grant.
    async fn request_handoffs(&mut self, plan: &balance::Plan, by_shard: &HashMap<&str, &Lease>) {
        let me = self.config.worker_id.clone();
        for (shard, _owner) in &plan.request_handoff {
            let Some(lease) = by_shard.get(shard.as_str()) else {
                continue;
            };
            match self.table.request_handoff(lease, &me).await {
                Ok(true) => {
                    self.pending
                        .insert(shard.clone(), handoff::Request::new(&me, lease.counter));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "hand-over request failed")
                }
            }
        }
    }
}

/// Of the leases this worker holds (`held`: shard and the counter it holds it at), those the
/// scan shows with another owner or counter: lost (another worker took them).
fn lost_leases(held: &[(String, u64)], by_shard: &HashMap<&str, &Lease>, me: &str) -> Vec<String> {
    held.iter()
        .filter(|(shard, counter)| {
            !by_shard
                .get(shard.as_str())
                .is_some_and(|l| l.owner.as_deref() == Some(me) && l.counter == *counter)
        })
        .map(|(shard, _)| shard.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_of(shard: &str, owner: &str, counter: u64, handoff_to: Option<&str>) -> Lease {
        let mut l = Lease::new(shard, Checkpoint::TrimHorizon, Vec::new());
        l.owner = Some(owner.into());
        l.counter = counter;
        l.handoff_to = handoff_to.map(String::from);
        l
    }

    #[test]
    fn a_held_lease_is_lost_when_its_owner_or_counter_changed_or_it_is_gone() {
        let leases = [
            lease_of("a", "me", 3, None),
            lease_of("b", "other", 4, None),
            lease_of("c", "me", 9, None),
        ];
        let by_shard: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        let held = vec![
            ("a".to_string(), 3),
            ("b".to_string(), 3),
            ("c".to_string(), 8),
            ("gone".to_string(), 1),
        ];
        let mut lost = lost_leases(&held, &by_shard, "me");
        lost.sort();
        assert_eq!(lost, vec!["b", "c", "gone"]);
    }
}
