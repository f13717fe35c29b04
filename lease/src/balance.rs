//! Which leases a worker takes, and which it asks other workers to hand over, in one round.
//!
//! The rules (a pure function of one table scan, so every worker decides alike):
//! - Finished shards (`SHARD_END`) need no owner and count for nobody. A shard whose parent
//!   lease is not finished is *blocked*: nobody takes it yet (children wait for parents).
//! - Fair share: `target = ceil(active leases / live workers)`, where a worker that is
//!   draining is not live.
//! - Free leases (no owner, or an owner that is not alive) are taken first, up to the target.
//! - Only when no free lease is left does a worker below target ask for more: from the most
//!   loaded workers first, while [`may_move`] allows (the giver is above target, or holds at
//!   least two more), at most `max_handoffs_per_round` at a time. So a fleet whose counts
//!   differ by at most one, none above target, makes no ownership change at all.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use super::model::Lease;

/// What a worker knows besides the leases.
pub struct Fleet<'a> {
    /// This worker.
    pub me: &'a str,
    /// Workers alive and not draining (including `me` unless it drains).
    pub live: &'a BTreeSet<String>,
    /// Is this worker shutting down? Then it takes nothing.
    pub draining: bool,
    /// Shards this worker is processing right now (its leases in the table that are not in
    /// this set belong to an earlier run of the same worker id, and are taken back).
    pub held: &'a HashSet<String>,
    /// Shards for which this worker already asked for a hand-over.
    pub pending_handoffs: &'a HashSet<String>,
    /// Upper bound on hand-over requests per round.
    pub max_handoffs_per_round: usize,
}

/// The round's decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Free leases to take now (conditional on their counter).
    pub take: Vec<String>,
    /// More free leases, in order of preference, to try in place of any of `take` that
    /// another worker takes first (so a race costs a write, not a round).
    pub take_instead: Vec<String>,
    /// (shard, current owner): ask the owner to hand the lease over.
    pub request_handoff: Vec<(String, String)>,
    /// The fair share this round was computed with.
    pub target: usize,
}

/// A lease's state in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState<'a> {
    /// Every record processed.
    Finished,
    /// A parent has not reached `SHARD_END`.
    Blocked,
    /// Owned by a live worker.
    Owned(&'a str),
    /// No owner, or the owner is not alive.
    Free,
}

/// Classifies every lease. `alive(owner)` says whether an owner still counts as alive.
pub fn classify<'a>(
    leases: &'a [Lease],
    alive: impl Fn(&Lease, &str) -> bool,
) -> Vec<LeaseState<'a>> {
    let finished: BTreeMap<&str, bool> = leases
        .iter()
        .map(|l| (l.shard_id.as_str(), l.is_finished()))
        .collect();
    leases
        .iter()
        .map(|l| {
            if l.is_finished() {
                LeaseState::Finished
            } else if l
                .parent_shard_ids
                .iter()
                // A parent with no lease left was processed and cleaned up (or predates the
                // table): it does not block.
                .any(|p| finished.get(p.as_str()) == Some(&false))
            {
                LeaseState::Blocked
            } else {
                match l.owner.as_deref() {
                    Some(owner) if alive(l, owner) => LeaseState::Owned(owner),
                    _ => LeaseState::Free,
                }
            }
        })
        .collect()
}

/// A stable per-worker order over shards, so that workers taking at the same time tend to
/// pick different leases (conditional writes settle any collision).
fn spread(me: &str, shard: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    me.hash(&mut h);
    shard.hash(&mut h);
    h.finish()
}

/// May one lease move from a worker holding `from` to one holding `to`? While the giver is
/// above the fair share, or holds at least two more than the taker: so moves stop exactly
/// when every worker is within one lease of every other (and none is above target).
pub fn may_move(from: usize, to: usize, target: usize) -> bool {
    from > target || from >= to + 2
}

/// Decides one round for `fleet.me`.
pub fn plan(leases: &[Lease], states: &[LeaseState<'_>], fleet: &Fleet<'_>) -> Plan {
    let active = states
        .iter()
        .filter(|s| matches!(s, LeaseState::Owned(_) | LeaseState::Free))
        .count();
    let workers = fleet.live.len().max(1);
    let target = active.div_ceil(workers);
    if fleet.draining {
        return Plan {
            target,
            ..Plan::default()
        };
    }

    let mut counts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut mine_to_reclaim = Vec::new();
    let mut free = Vec::new();
    for (lease, state) in leases.iter().zip(states) {
        let shard = lease.shard_id.as_str();
        match state {
            LeaseState::Owned(owner) if *owner == fleet.me && !fleet.held.contains(shard) => {
                mine_to_reclaim.push(shard);
            }
            LeaseState::Owned(owner) => counts.entry(owner).or_default().push(shard),
            LeaseState::Free => free.push(shard),
            LeaseState::Finished | LeaseState::Blocked => {}
        }
    }
    let mine = counts.get(fleet.me).map_or(0, Vec::len);
    let mut need = target.saturating_sub(mine);

    // Leases of an earlier run of this same worker id come back first, whatever the target:
    // nobody else will take them while our heartbeat is alive.
    let mut take: Vec<String> = mine_to_reclaim.iter().map(|s| (*s).to_string()).collect();
    need = need.saturating_sub(take.len());

    free.sort_by_key(|s| spread(fleet.me, s));
    take.extend(free.iter().take(need).map(|s| (*s).to_string()));
    let taken_free = need.min(free.len());
    let take_instead: Vec<String> = free
        .iter()
        .skip(taken_free)
        .map(|s| (*s).to_string())
        .collect();
    need -= taken_free;

    let mut request_handoff = Vec::new();
    if need > 0 && free.len() == taken_free {
        let mut my_count = mine + take.len();
        // (owner, its current count, its leases in this worker's spread order)
        let mut victims: Vec<(&str, usize, Vec<&str>)> = counts
            .into_iter()
            .filter(|(owner, _)| *owner != fleet.me && fleet.live.contains(*owner))
            .map(|(owner, mut shards)| {
                shards.sort_by_key(|s| std::cmp::Reverse(spread(fleet.me, s)));
                (owner, shards.len(), shards)
            })
            .collect();
        // One lease at a time, always from the currently most loaded worker (ties by name,
        // so every worker sees the same order).
        while need > 0 && request_handoff.len() < fleet.max_handoffs_per_round {
            let Some(victim) = victims
                .iter_mut()
                .filter(|v| !v.2.is_empty())
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            else {
                break;
            };
            if !may_move(victim.1, my_count, target) {
                break;
            }
            let Some(shard) = victim.2.pop() else { break };
            if !fleet.pending_handoffs.contains(shard) {
                request_handoff.push((shard.to_string(), victim.0.to_string()));
            }
            // An earlier request still pending counts as if granted.
            victim.1 -= 1;
            my_count += 1;
            need -= 1;
        }
    }
    Plan {
        take_instead,
        take,
        request_handoff,
        target,
    }
}

#[cfg(test)]
mod tests;

/// The owner's side of a hand-over: of the leases it holds that other workers asked for,
/// which to hand over now and which to decline.
///
/// It grants to live requesters only, and only while [`may_move`] allows, counting what it
/// already granted this round (two workers joining at once may both ask the same owner).
/// The rest are declined: the request is cleared, and the requester asks again next round
/// if it still needs to. `count_of(worker)` is a worker's lease count in the same scan.
pub fn grant_handoffs<'a>(
    requests: &[(&'a str, &'a str)],
    held: usize,
    target: usize,
    live: &BTreeSet<String>,
    count_of: impl Fn(&str) -> usize,
) -> (Vec<(&'a str, &'a str)>, Vec<&'a str>) {
    let mut mine = held;
    let mut given: BTreeMap<&str, usize> = BTreeMap::new();
    let mut grant = Vec::new();
    let mut decline = Vec::new();
    for (shard, to) in requests {
        let theirs = count_of(to) + given.get(to).copied().unwrap_or(0);
        if live.contains(*to) && may_move(mine, theirs, target) {
            grant.push((*shard, *to));
            mine -= 1;
            *given.entry(to).or_insert(0) += 1;
        } else {
            decline.push(*shard);
        }
    }
    (grant, decline)
}
