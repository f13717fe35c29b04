//! Coordination with an elected assigner (`--coordination assigner`): the decisions, as pure
//! functions over plain data. The I/O lives in [`super::coordinator`]; the design and its
//! cost are in docs/LEASES.md ("Assigner mode").
//!
//! - [`plan`]: the assigner's round. From one scan it decides, for the whole fleet, which
//!   free lease goes to which live worker and which leases move (a hand-over request on the
//!   owner's lease, answered by the owner as in peer mode). The fair share and the rule for
//!   a move ([`super::balance::may_move`]) are the peer mode's, so a fleet settles in the
//!   same state whichever mode it runs.
//! - [`member_plan`]: every worker's round over its *own* leases only (a query on the owner
//!   index): which it lost, which it was given and must accept, which hand-overs it grants.
//! - [`watch`]: whether this worker should try to become the assigner.
//! - [`assigner_decision`] and [`member_decision`]: a whole round's decisions from what its
//!   reads returned (liveness, hand-over follow-up, [`plan`] / [`member_plan`]). The
//!   coordinator acts on them, and the lease simulation (`tests/src/bin/lease_sim.rs`) calls
//!   the very same functions, so the two cannot decide differently.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::balance::{LeaseState, may_move};
use super::handoff;
use super::liveness::{self, Observer};
use super::model::{Lease, TableSnapshot};

/// What the assigner knows besides the leases.
pub struct AssignerView<'a> {
    /// Workers alive and not draining: the fair share is computed over them.
    pub live: &'a BTreeSet<String>,
    /// Of those, the ones that may receive leases (proven alive: see
    /// [`liveness::proven_alive`]); a worker not among them keeps what it has and gets
    /// nothing new yet.
    pub receivers: &'a BTreeSet<String>,
    /// Outstanding hand-over requests: shard → the worker it was asked for.
    pub pending: &'a HashMap<String, String>,
    /// Upper bound on new hand-over requests per round (the fleet's, not per worker).
    pub max_moves: usize,
}

/// The assigner's decisions for one round.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssignerPlan {
    /// (shard, worker): give a free lease to a live worker (a take on its behalf,
    /// conditional on the scanned counter).
    pub assign: Vec<(String, String)>,
    /// (shard, owner, worker): ask the owner to hand the lease to the worker.
    pub request: Vec<(String, String, String)>,
    /// The fair share: `ceil(active leases / live workers)`.
    pub target: usize,
}

/// The assigner's round: free leases to the least loaded receivers first (up to the fair
/// share; a lease a dead worker left, up to twice the share, so it waits for nobody's proof
/// of life), then moves
/// from the most to the least loaded while [`may_move`] allows, at most
/// `view.max_moves` new requests. A pending request counts as if granted, so a slow owner
/// is never asked twice and nobody is over-filled while hand-overs are in flight.
///
/// Ties are broken by worker name, so the plan is a function of its input alone.
pub fn plan(leases: &[Lease], states: &[LeaseState<'_>], view: &AssignerView<'_>) -> AssignerPlan {
    let active = states
        .iter()
        .filter(|s| matches!(s, LeaseState::Owned(_) | LeaseState::Free))
        .count();
    if view.live.is_empty() {
        return AssignerPlan::default();
    }
    let target = active.div_ceil(view.live.len());
    // Per live worker: the leases it will hold once pending hand-overs complete.
    let mut holds: BTreeMap<&str, BTreeSet<&str>> = view
        .live
        .iter()
        .map(|w| (w.as_str(), BTreeSet::new()))
        .collect();
    let mut free = Vec::new();
    let mut moving: HashSet<&str> = HashSet::new();
    for (lease, state) in leases.iter().zip(states) {
        let shard = lease.shard_id.as_str();
        match state {
            LeaseState::Owned(owner) => {
                let to = view
                    .pending
                    .get(shard)
                    .filter(|to| view.live.contains(*to) && *to != owner);
                match to {
                    Some(to) => {
                        moving.insert(shard);
                        if let Some(set) = holds.get_mut(to.as_str()) {
                            set.insert(shard);
                        }
                    }
                    None => {
                        // A draining owner's leases count for nobody live: it releases them
                        // on its own, and they are assigned once free.
                        if let Some(set) = holds.get_mut(owner) {
                            set.insert(shard);
                        }
                    }
                }
            }
            LeaseState::Free => free.push((shard, lease.owner.is_some())),
            LeaseState::Finished | LeaseState::Blocked => {}
        }
    }
    let mut assign = Vec::new();
    for (shard, orphaned) in free {
        // The least loaded receiver, never past the fair share; the rest waits for more
        // receivers to be proven alive. Except a lease a dead worker left (its records are
        // waiting): while the others are not proven yet (a new assigner's first rounds),
        // receivers take those up to twice the share, and the balancing below hands the
        // surplus on once the others are proven. Never-owned leases (a fleet starting) wait.
        let cap = if orphaned { 2 * target } else { target };
        let Some((worker, set)) = holds
            .iter_mut()
            .filter(|(w, s)| view.receivers.contains(**w) && s.len() < cap)
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)))
        else {
            continue;
        };
        set.insert(shard);
        assign.push((shard.to_string(), (*worker).to_string()));
    }
    let assigned: HashSet<&str> = assign.iter().map(|(s, _)| s.as_str()).collect();
    let mut request = Vec::new();
    while request.len() < view.max_moves {
        let most = holds
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
            .map(|(w, s)| (*w, s.len()));
        let least = holds
            .iter()
            .filter(|(w, _)| view.receivers.contains(**w))
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)))
            .map(|(w, s)| (*w, s.len()));
        let (Some((from, from_n)), Some((to, to_n))) = (most, least) else {
            break;
        };
        if from == to || !may_move(from_n, to_n, target) {
            break;
        }
        // The giver's last lease that is really its own (not one it is about to receive, nor
        // one given to it this round, which it does not hold yet).
        let shard = holds.get(from).and_then(|set| {
            set.iter()
                .rev()
                .find(|s| !moving.contains(**s) && !assigned.contains(**s))
                .copied()
        });
        let Some(shard) = shard else { break };
        if let Some(set) = holds.get_mut(from) {
            set.remove(shard);
        }
        if let Some(set) = holds.get_mut(to) {
            set.insert(shard);
        }
        moving.insert(shard);
        request.push((shard.to_string(), from.to_string(), to.to_string()));
    }
    AssignerPlan {
        assign,
        request,
        target,
    }
}

/// One of this worker's leases as the owner index shows it (eventually consistent: it may
/// lag the table by a moment, never run ahead of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLease {
    /// The shard.
    pub shard_id: String,
    /// The lease counter as indexed.
    pub counter: u64,
    /// An outstanding hand-over request.
    pub handoff_to: Option<String>,
}

/// A lease this worker holds, as the member round sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldState {
    /// The counter it holds the lease at.
    pub counter: u64,
    /// A hand-over of it is under way (the member leaves it alone).
    pub handing_over: bool,
}

/// A member's decisions for one round.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    /// Held leases that moved to another worker or another counter: stop processing them.
    pub lost: Vec<String>,
    /// Leases given to this worker (by the assigner, or handed over by their owner, or left
    /// by an earlier run of the same worker id): accept them, a take conditional on the
    /// indexed counter and owner, which also reads the checkpoint atomically.
    pub accept: Vec<OwnedLease>,
    /// Leases given to this worker while it drains: give them back.
    pub release: Vec<OwnedLease>,
    /// (shard, worker): hand-over requests on held leases to grant.
    pub grant: Vec<(String, String)>,
}

/// A member's round over its own leases.
///
/// A held lease missing from `mine` was taken by another worker (an index entry of ours
/// disappears only when the owner changes); one at a higher counter changed under us; one
/// at a *lower* counter is the index lagging our own accept, and is kept. Leases in `mine`
/// that are not held are accepted (released while draining), except those this worker left
/// (released, handed over, lost) at the indexed counter or later: `left` maps a shard to
/// the counter it was left at, and an index entry at or below it is the index lagging.
pub fn member_plan(
    me: &str,
    mine: &[OwnedLease],
    held: &HashMap<String, HeldState>,
    left: &HashMap<String, u64>,
    draining: bool,
) -> MemberPlan {
    let by_shard: HashMap<&str, &OwnedLease> =
        mine.iter().map(|l| (l.shard_id.as_str(), l)).collect();
    let mut out = MemberPlan::default();
    let mut held_ids: Vec<&String> = held.keys().collect();
    held_ids.sort();
    for shard in held_ids {
        let state = held[shard];
        if state.handing_over {
            continue;
        }
        match by_shard.get(shard.as_str()) {
            None => out.lost.push(shard.clone()),
            Some(l) if l.counter > state.counter => out.lost.push(shard.clone()),
            Some(l) if l.counter < state.counter => {}
            Some(l) => {
                if let Some(to) = l.handoff_to.as_deref().filter(|to| *to != me) {
                    out.grant.push((shard.clone(), to.to_string()));
                }
            }
        }
    }
    for l in mine {
        let stale = left.get(&l.shard_id).is_some_and(|c| l.counter <= *c);
        if held.contains_key(&l.shard_id) || stale {
            continue;
        }
        if draining {
            out.release.push(l.clone());
        } else {
            out.accept.push(l.clone());
        }
    }
    out
}

/// The assigner's settings for one round (from the coordinator's configuration).
#[derive(Debug, Clone, Copy)]
pub struct AssignerSettings<'a> {
    /// This worker (the assigner).
    pub me: &'a str,
    /// Is this worker shutting down? Then it is not live and receives nothing.
    pub draining: bool,
    /// A worker whose heartbeat has not changed for this long is dead.
    pub failover_time: Duration,
    /// How often workers write their heartbeats (see [`liveness::proof_time`]).
    pub heartbeat_interval: Duration,
    /// How often the assigner scans.
    pub scan_interval: Duration,
    /// How long after the assigner saw an owner's grant the lease is taken anyway.
    pub handoff_timeout: Duration,
    /// Hand-over requests per round at most (raised to one per live worker).
    pub max_handoffs_per_round: usize,
}

/// A take the assigner makes on a worker's behalf, conditional on the scanned counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The lease as scanned.
    pub lease: Lease,
    /// The worker it goes to (the assigner itself takes as in peer mode: accepted at once).
    pub to: String,
    /// The owner granted a hand-over and did not hand over within the timeout (otherwise
    /// the lease is free).
    pub after_timeout: bool,
}

/// Everything the assigner decides in one round, from one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignerDecision {
    /// Workers alive and not draining, as of when the scan was asked.
    pub live: BTreeSet<String>,
    /// Of those, the ones the fair share is computed over (see [`liveness::proven_alive`]).
    pub counted: BTreeSet<String>,
    /// Of those, the ones proven alive: they may receive leases.
    pub receivers: BTreeSet<String>,
    /// The plan over the leases (for its counts; [`AssignerDecision::takes`] and
    /// [`AssignerDecision::requests`] are what to write).
    pub plan: AssignerPlan,
    /// Takes on workers' behalf: first the timed-out hand-overs, then the free leases of
    /// [`AssignerPlan::assign`].
    pub takes: Vec<Take>,
    /// Hand-over requests to write: (the lease as scanned, for whom). One that lands is
    /// remembered with [`handoff::Request::new`] at the scanned counter.
    pub requests: Vec<(Lease, String)>,
    /// Outstanding hand-over requests followed this round (before the new ones).
    pub pending: usize,
    /// Of the takes, the ones after a hand-over timeout.
    pub timed_out: usize,
    /// The successors the role item should name ([`successors`] over
    /// [`AssignerDecision::live`]).
    pub successors: Vec<String>,
    /// This worker's own leases, as the scan shows them.
    pub mine: Vec<OwnedLease>,
    /// A finished lease names a child that has no lease yet: list the shards soon.
    pub children_missing: bool,
}

/// The assigner's round, decided: from one scan (asked at `asked`, answered at `now`), it
/// records the liveness evidence in `observer`, judges who is live, counted and proven
/// ([`liveness::fleet_view`], [`liveness::proven_alive`]), follows the outstanding
/// hand-over requests in `pending` ([`handoff::adopt`]: an earlier assigner's are adopted;
/// [`handoff::follow_up`]: answered ones are forgotten, granted ones not handed over within
/// `handoff_timeout` go to the requester anyway), and plans ([`plan`]).
///
/// # Guarantees
/// No I/O and no clock: the same inputs give the same decision. A lease is taken after a
/// timeout only when its owner granted the hand-over (see [`handoff`]); a worker is dead
/// only once its heartbeat has not changed for `failover_time` up to `asked`; free leases
/// and new hand-over requests go only to [`AssignerDecision::receivers`] (a timed-out
/// hand-over goes to the worker it was requested for).
pub fn assigner_decision(
    snapshot: &TableSnapshot,
    observer: &mut Observer,
    pending: &mut HashMap<String, handoff::Request<Instant>>,
    settings: &AssignerSettings<'_>,
    asked: Instant,
    now: Instant,
) -> AssignerDecision {
    let me = settings.me;
    observer.observe_scan(snapshot, now);
    // Staleness up to when the scan was asked, not answered.
    let (live, states) = liveness::fleet_view(
        snapshot,
        observer,
        me,
        settings.draining,
        settings.failover_time,
        asked,
    );
    let proof_time = liveness::proof_time(settings.heartbeat_interval, settings.scan_interval);
    let (counted, receivers) =
        liveness::proven_alive(snapshot, observer, &live, me, proof_time, now);
    let by_shard: HashMap<&str, &Lease> = snapshot
        .leases
        .iter()
        .map(|l| (l.shard_id.as_str(), l))
        .collect();

    handoff::adopt(pending, &snapshot.leases, now);
    let timeout = settings.handoff_timeout;
    let timed_out = handoff::follow_up(pending, &by_shard, now, |seen| {
        now.saturating_duration_since(seen) > timeout
    });
    let outstanding: HashMap<String, String> = pending
        .iter()
        .map(|(s, r)| (s.clone(), r.to.clone()))
        .collect();
    let planned = plan(
        &snapshot.leases,
        &states,
        &AssignerView {
            live: &counted,
            receivers: &receivers,
            pending: &outstanding,
            // Up to one move per live worker a round (at least the peer mode's bound).
            max_moves: settings.max_handoffs_per_round.max(live.len()),
        },
    );

    let timed_out_n = timed_out.len();
    let mut takes: Vec<Take> = timed_out
        .into_iter()
        .map(|(lease, to)| Take {
            lease,
            to,
            after_timeout: true,
        })
        .collect();
    takes.extend(planned.assign.iter().filter_map(|(shard, to)| {
        by_shard.get(shard.as_str()).map(|l| Take {
            lease: (*l).clone(),
            to: to.clone(),
            after_timeout: false,
        })
    }));
    let requests = planned
        .request
        .iter()
        .filter_map(|(shard, _from, to)| {
            by_shard
                .get(shard.as_str())
                .map(|l| ((*l).clone(), to.clone()))
        })
        .collect();
    let mine = snapshot
        .leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me))
        .map(|l| OwnedLease {
            shard_id: l.shard_id.clone(),
            counter: l.counter,
            handoff_to: l.handoff_to.clone(),
        })
        .collect();
    AssignerDecision {
        successors: successors(me, &live),
        children_missing: children_missing(snapshot),
        pending: outstanding.len(),
        timed_out: timed_out_n,
        live,
        counted,
        receivers,
        plan: planned,
        takes,
        requests,
        mine,
    }
}

/// Does a finished lease name a child that has no lease yet? (Its children need creating:
/// list the shards now rather than at the next periodic sync.)
pub fn children_missing(snapshot: &TableSnapshot) -> bool {
    let present: HashSet<&str> = snapshot
        .leases
        .iter()
        .map(|l| l.shard_id.as_str())
        .collect();
    snapshot.leases.iter().any(|l| {
        l.is_finished()
            && l.child_shard_ids
                .iter()
                .any(|c| !present.contains(c.as_str()))
    })
}

/// A member's round, decided: forgets the shards it left that its index no longer shows
/// (`left`: they need no memory), then [`member_plan`].
pub fn member_decision(
    me: &str,
    mine: &[OwnedLease],
    held: &HashMap<String, HeldState>,
    left: &mut HashMap<String, u64>,
    draining: bool,
) -> MemberPlan {
    left.retain(|s, _| mine.iter().any(|l| &l.shard_id == s));
    member_plan(me, mine, held, left, draining)
}

/// A follower re-reads the assigner item every this many rounds (it also re-reads it when
/// the holder looks dead or gone); a successor watches the assigner's heartbeat every round.
pub const ASSIGNER_REREAD_ROUNDS: u32 = 30;

/// How many workers watch the assigner's heartbeat every round (its successors); every
/// other worker looks every 30 rounds, so a fleet of 500 does not pay 500 reads a second for
/// it.
pub const SUCCESSORS: usize = 3;

/// The assigner's choice of successors: the first [`SUCCESSORS`] live workers by id, itself
/// excluded (sorted, as the item stores them).
pub fn successors(me: &str, live: &BTreeSet<String>) -> Vec<String> {
    live.iter()
        .filter(|w| *w != me)
        .take(SUCCESSORS)
        .cloned()
        .collect()
}

/// What a worker does about the assigner role this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Somebody alive holds it: nothing to do.
    Follow,
    /// Nobody holds it, or its holder is dead or draining: try to claim it.
    Claim,
}

/// Whether to claim the assigner role: when no worker holds it, or its holder's heartbeat
/// has been stale for the failover time (`holder_stale`: the same rule by which any worker
/// is considered dead), is missing (it shut down), or announces draining.
pub fn watch(holder: Option<&str>, holder_stale: bool, holder_gone_or_draining: bool) -> Watch {
    match holder {
        None => Watch::Claim,
        Some(_) if holder_stale || holder_gone_or_draining => Watch::Claim,
        Some(_) => Watch::Follow,
    }
}

#[cfg(test)]
mod tests;
