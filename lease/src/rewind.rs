//! Rewinding an application's checkpoints to a time, so that every record that arrived at or
//! after it is delivered again (pure: a function of the stream's shards, what each holds
//! since the time, and one scan of the lease table; the operator reads and writes around it).
//!
//! # Guarantees
//! Applied to a stopped fleet (no worker holds or takes a lease while the rewrites are made):
//! - **Every record since the time is delivered again.** A shard whose processing got to or
//!   past its first record at or after the time (`first_since`), or that is finished, goes
//!   back to `AT_TIMESTAMP` (the time), its lease recreated when it was deleted; every
//!   descendant of such a shard (created after the time, so all its records are after it)
//!   goes back to its start the same way.
//! - **Nothing is skipped.** A checkpoint never moves forward: a shard whose processing had
//!   not reached the time (an application behind), or that holds nothing since it, is left
//!   as it is, and so is every shard that ended before the time.
//! - **Parents before children, as before.** Each rewritten lease names its parents, so the
//!   workers finish a rewound parent before its children start again. A parent whose lease
//!   was already deleted (finished, its children had started) gets a `SHARD_END` lease back:
//!   it blocks nothing, and it keeps the shard sync from taking it for unfinished (its
//!   children are back at their start) and delivering its records, all before the time.
//! - Every rewrite is conditional on the lease being as scanned (its counter, or no item),
//!   and the counter moves on, so a worker that still thought it held one is fenced.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::checkpoint::{Checkpoint, SequenceNumber};
use crate::discovery::{ShardInfo, finished_ancestors};
use crate::model::Lease;

/// One lease to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The lease as it is to be (no owner; counter one past the scanned one).
    pub lease: Lease,
    /// The counter scanned (the write's condition), or `None`: there was no item.
    pub seen: Option<u64>,
    /// Its generation in the lineage (0: no parent among the stream's shards): every
    /// rewrite of a lower depth lands before any of a higher one, so a rewind interrupted
    /// between two writes never leaves a rewound child without its parent's lease.
    pub depth: usize,
}

/// What a rewind does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewindPlan {
    /// The writes, parents before children.
    pub rewrites: Vec<Rewrite>,
    /// Shards going back to the time (those processed past it, and their descendants).
    pub rewound: BTreeSet<String>,
    /// Of those, the ones whose lease had been deleted (finished) and is made again.
    pub recreated: usize,
    /// Finished parents given a `SHARD_END` lease back.
    pub finished_parents: usize,
    /// Shards left as they were: nothing since the time, or not processed that far yet.
    pub untouched: usize,
}

/// Did the processing of a shard get to or past its first record at or after the time?
fn processed_past(lease: Option<&Lease>, first: Option<&SequenceNumber>, to_ms: i64) -> bool {
    let Some(first) = first else {
        // Nothing since the time: nothing to deliver again.
        return false;
    };
    let Some(lease) = lease else {
        return false;
    };
    match &lease.checkpoint {
        Checkpoint::ShardEnd => true,
        Checkpoint::Sequence { sequence, .. } => sequence >= first,
        // At the time itself: a rewind to it that was interrupted; planned again (the same
        // write), so its descendants and deleted parents are too.
        Checkpoint::AtTimestamp => lease.start_timestamp_ms.is_some_and(|ts| ts >= to_ms),
        Checkpoint::TrimHorizon | Checkpoint::Latest => false,
    }
}

/// The shards whose first record since the time [`plan`] may need: those with progress
/// recorded (or an `AT_TIMESTAMP` start of their own) and those without a lease (a finished
/// one may have been deleted). A shard not started holds nothing to deliver again.
pub fn to_probe<'a>(shards: &'a [ShardInfo], leases: &[Lease]) -> Vec<&'a str> {
    let by_id: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
    shards
        .iter()
        .filter(|s| {
            by_id.get(s.shard_id.as_str()).is_none_or(|l| {
                l.checkpoint.is_progress()
                    || (l.checkpoint == Checkpoint::AtTimestamp && l.start_timestamp_ms.is_some())
            })
        })
        .map(|s| s.shard_id.as_str())
        .collect()
}

/// Plans the rewind to `to_ms` (epoch milliseconds) of the application whose table holds
/// `leases`, on a stream of `shards`. `first_since` maps a shard to its first record at or
/// after the time (absent or `None`: no record since the time).
pub fn plan(
    shards: &[ShardInfo],
    first_since: &HashMap<String, Option<SequenceNumber>>,
    leases: &[Lease],
    to_ms: i64,
) -> RewindPlan {
    let by_id: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
    let existing: HashSet<&str> = by_id.keys().copied().collect();
    // Started: progress recorded, or moved back to this very time by an interrupted rewind
    // (it had progress before): their deleted parents stay finished.
    let started: HashSet<&str> = leases
        .iter()
        .filter(|l| {
            l.checkpoint.is_progress()
                || (l.checkpoint == Checkpoint::AtTimestamp && l.start_timestamp_ms == Some(to_ms))
        })
        .map(|l| l.shard_id.as_str())
        .collect();
    // Deleted leases of finished shards count as finished ones.
    let finished = finished_ancestors(shards, &existing, &started);
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in shards {
        for p in &s.parents {
            children
                .entry(p.as_str())
                .or_default()
                .push(s.shard_id.as_str());
        }
    }
    let roots: Vec<&str> = shards
        .iter()
        .filter(|s| {
            let id = s.shard_id.as_str();
            let first = first_since.get(id).and_then(Option::as_ref);
            if finished.contains(id) {
                // Deleted once finished: it was processed to its end.
                first.is_some()
            } else {
                processed_past(by_id.get(id).copied(), first, to_ms)
            }
        })
        .map(|s| s.shard_id.as_str())
        .collect();
    let mut rewound: BTreeSet<String> = BTreeSet::new();
    let mut walk = roots;
    while let Some(id) = walk.pop() {
        if rewound.insert(id.to_string()) {
            walk.extend(children.get(id).into_iter().flatten().copied());
        }
    }
    let mut plan = RewindPlan {
        untouched: shards.len() - rewound.len(),
        ..RewindPlan::default()
    };
    // Parents first: the shards in listing order after a topological sort by parents.
    let order = crate::discovery::creation_waves(
        shards
            .iter()
            .map(|s| Lease::new(&s.shard_id, Checkpoint::TrimHorizon, s.parents.clone()))
            .collect(),
    );
    let info: HashMap<&str, &ShardInfo> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut tombstoned: HashSet<String> = HashSet::new();
    for (depth, wave) in order.into_iter().enumerate() {
        for l in wave {
            let id = l.shard_id.as_str();
            let Some(shard) = info.get(id) else { continue };
            if !rewound.contains(id) {
                continue;
            }
            for p in &shard.parents {
                let deleted = !existing.contains(p.as_str()) && finished.contains(p.as_str());
                if deleted && !rewound.contains(p) && tombstoned.insert(p.clone()) {
                    let parents = info
                        .get(p.as_str())
                        .map(|s| s.parents.clone())
                        .unwrap_or_default();
                    let mut lease = Lease::new(p, Checkpoint::ShardEnd, parents);
                    lease.hash_range = info.get(p.as_str()).map(|s| s.hash_range.clone());
                    plan.finished_parents += 1;
                    plan.rewrites.push(Rewrite {
                        lease,
                        seen: None,
                        depth: depth.saturating_sub(1),
                    });
                }
            }
            let seen = by_id.get(id).map(|l| l.counter);
            if seen.is_none() {
                plan.recreated += 1;
            }
            let mut lease = Lease::new(id, Checkpoint::AtTimestamp, shard.parents.clone());
            lease.start_timestamp_ms = Some(to_ms);
            lease.hash_range = Some(shard.hash_range.clone());
            lease.counter = seen.map_or(0, |c| c + 1);
            plan.rewrites.push(Rewrite { lease, seen, depth });
        }
    }
    plan.rewound = rewound;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000_000;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            hash_range: ("0".into(), "9".into()),
            closed,
        }
    }

    fn seq(n: u64) -> SequenceNumber {
        SequenceNumber::parse(&n.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(id: &str, parents: &[&str], cp: Checkpoint) -> Lease {
        let mut l = Lease::new(id, cp, parents.iter().map(|p| p.to_string()).collect());
        l.owner = Some("w1".into());
        l.counter = 7;
        l
    }

    fn cp(n: u64) -> Checkpoint {
        Checkpoint::Sequence {
            sequence: seq(n),
            sub_sequence: 0,
        }
    }

    fn firsts(of: &[(&str, Option<u64>)]) -> HashMap<String, Option<SequenceNumber>> {
        of.iter()
            .map(|(s, n)| (s.to_string(), n.map(seq)))
            .collect()
    }

    fn written(p: &RewindPlan) -> Vec<(&str, &Checkpoint, Option<u64>)> {
        p.rewrites
            .iter()
            .map(|r| (r.lease.shard_id.as_str(), &r.lease.checkpoint, r.seen))
            .collect()
    }

    /// A split after the time: the parent (processed to its end, its lease deleted as KCL's
    /// cleanup does) gets its lease back at the time, the children go back to their start
    /// behind it; a shard that ended before the time, and its finished parent, stay.
    #[test]
    fn a_reshard_after_the_time_brings_the_parent_back_and_its_children_behind_it() {
        let shards = vec![
            shard("old", &[], true),    // ended before the time
            shard("p", &["old"], true), // open at the time, split after it
            shard("c1", &["p"], false),
            shard("c2", &["p"], false),
        ];
        let leases = vec![at("c1", &["p"], cp(50)), at("c2", &["p"], cp(60))];
        let first = firsts(&[("p", Some(20)), ("c1", Some(40)), ("c2", Some(45))]);
        let plan = plan(&shards, &first, &leases, T);
        assert_eq!(
            plan.rewound,
            ["c1", "c2", "p"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(
            (plan.recreated, plan.untouched, plan.finished_parents),
            (1, 1, 1)
        );
        // Parents first: old's tombstone, p, then its children.
        assert_eq!(
            written(&plan),
            vec![
                ("old", &Checkpoint::ShardEnd, None),
                ("p", &Checkpoint::AtTimestamp, None),
                ("c1", &Checkpoint::AtTimestamp, Some(7)),
                ("c2", &Checkpoint::AtTimestamp, Some(7)),
            ]
        );
        for r in &plan.rewrites[1..] {
            assert_eq!(r.lease.start_timestamp_ms, Some(T));
            assert_eq!(r.lease.owner, None, "no owner after a rewind");
            assert_eq!(r.lease.counter, r.seen.map_or(0, |c| c + 1), "fenced");
        }
        assert_eq!(
            plan.rewrites[2].lease.parent_shard_ids,
            vec!["p".to_string()]
        );
    }

    /// A checkpoint never moves forward: a shard behind the time, one with nothing since
    /// it, and one not started are left alone.
    #[test]
    fn a_shard_not_processed_past_the_time_is_left_as_it_is() {
        let shards = vec![
            shard("behind", &[], false),
            shard("quiet", &[], false),
            shard("fresh", &[], false),
            shard("at", &[], false),
            shard("ahead", &[], false),
        ];
        let leases = vec![
            at("behind", &[], cp(10)),
            at("quiet", &[], cp(99)),
            at("fresh", &[], Checkpoint::TrimHorizon),
            at("at", &[], cp(30)),
            at("ahead", &[], cp(31)),
        ];
        let first = firsts(&[
            ("behind", Some(11)),
            ("quiet", None),
            ("fresh", Some(1)),
            ("at", Some(30)),
            ("ahead", Some(30)),
        ]);
        let plan = plan(&shards, &first, &leases, T);
        assert_eq!(
            plan.rewound,
            ["ahead", "at"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(plan.untouched, 3);
        assert_eq!(plan.recreated, 0);
    }

    /// A rewind interrupted after its children's writes and before the deleted parent's: the
    /// next plan, from the table as it then is, still makes the parent again (and writes the
    /// children again, the same), so nothing is left unblocked; parents have a lower depth.
    #[test]
    fn an_interrupted_rewind_is_planned_again_to_the_same_end() {
        let shards = vec![
            shard("p", &[], true),
            shard("c1", &["p"], false),
            shard("c2", &["p"], false),
        ];
        let leases = vec![at("c1", &["p"], cp(50)), at("c2", &["p"], cp(60))];
        let first = firsts(&[("p", Some(20)), ("c1", Some(40)), ("c2", Some(45))]);
        let whole = plan(&shards, &first, &leases, T);
        let depth = |p: &RewindPlan, id: &str| {
            p.rewrites
                .iter()
                .find(|r| r.lease.shard_id == id)
                .map(|r| r.depth)
        };
        assert!(depth(&whole, "p") < depth(&whole, "c1"), "{whole:?}");
        // Only the children's writes landed.
        let after: Vec<Lease> = whole
            .rewrites
            .iter()
            .filter(|r| r.lease.shard_id != "p")
            .map(|r| r.lease.clone())
            .collect();
        let again = plan(&shards, &first, &after, T);
        assert_eq!(again.rewound, whole.rewound, "{again:?}");
        assert_eq!(again.recreated, 1, "p made again");
        let c1 = again.rewrites.iter().find(|r| r.lease.shard_id == "c1");
        assert_eq!(
            c1.map(|r| r.seen),
            Some(Some(8)),
            "fenced on the interrupted write"
        );
    }

    /// An `AT_TIMESTAMP` start after the time goes back to it; one before it stays.
    #[test]
    fn a_later_start_timestamp_goes_back_and_an_earlier_one_stays() {
        let shards = vec![shard("late", &[], false), shard("early", &[], false)];
        let mut late = at("late", &[], Checkpoint::AtTimestamp);
        late.start_timestamp_ms = Some(T + 1);
        let mut early = at("early", &[], Checkpoint::AtTimestamp);
        early.start_timestamp_ms = Some(T - 1);
        let first = firsts(&[("late", Some(5)), ("early", Some(5))]);
        let plan = plan(&shards, &first, &[late, early], T);
        assert_eq!(plan.rewound, ["late".to_string()].into_iter().collect());
    }

    /// A merge: both parents rewound, the child behind both; a grandchild too.
    #[test]
    fn descendants_of_every_rewound_shard_go_back_whatever_they_hold() {
        let shards = vec![
            shard("a", &[], true),
            shard("b", &[], true),
            shard("m", &["a", "b"], true),
            shard("g", &["m"], false),
        ];
        let leases = vec![
            at("a", &[], Checkpoint::ShardEnd),
            at("b", &[], Checkpoint::ShardEnd),
            at("m", &["a", "b"], Checkpoint::ShardEnd),
            at("g", &["m"], Checkpoint::TrimHorizon),
        ];
        // b holds nothing since the time (it could only have ended before it... or just
        // been quiet): a's descendants go back all the same.
        let first = firsts(&[("a", Some(3)), ("m", Some(9)), ("g", None)]);
        let plan = plan(&shards, &first, &leases, T);
        assert_eq!(
            plan.rewound,
            ["a", "g", "m"].iter().map(|s| s.to_string()).collect()
        );
        let order: Vec<&str> = written(&plan).iter().map(|w| w.0).collect();
        assert_eq!(order, vec!["a", "m", "g"]);
        assert_eq!(plan.rewrites[1].lease.parent_shard_ids, vec!["a", "b"]);
        assert_eq!(plan.finished_parents, 0, "b's lease exists");
    }
}
