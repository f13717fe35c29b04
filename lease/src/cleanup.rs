//! Which items of the lease table can go, so its size follows the live shards and workers
//! (a pure function of one scan; the coordinator acts on it).
//!
//! # Guarantees
//! - A finished lease (`SHARD_END`) is removed only once every child of it has a lease
//!   that has *started* (a checkpoint past its start position), as KCL's cleanup does; the
//!   shard sync then never creates it again ([`super::discovery::new_leases`]) and it no
//!   longer blocks anything ([`super::balance::classify`]).
//! - A heartbeat item is removed only when its worker owns no lease and its counter has not
//!   changed for the retention (three failover times, on the observer's own clock), and only
//!   at the counter seen (a worker that beats again keeps, or re-creates, its item).
//! - One worker cleans, so a fleet does not race to delete the same items (each delete is
//!   conditional anyway): the assigner in assigner mode, else the live worker with the
//!   smallest id ([`is_cleaner`]).

use std::collections::{BTreeSet, HashMap};

use super::checkpoint::Checkpoint;
use super::model::TableSnapshot;

/// What to delete.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// Dead workers' heartbeat items: (worker, the counter seen).
    pub heartbeats: Vec<(String, u64)>,
    /// Finished leases whose children all started.
    pub leases: Vec<String>,
}

/// In peer mode: is `me` the worker that cleans (the live worker with the smallest id)?
pub fn is_cleaner(me: &str, live: &BTreeSet<String>) -> bool {
    live.iter().next().map(String::as_str) == Some(me)
}

/// Decides the cleanup, for the worker that cleans. `dead(worker)`: has that worker's
/// heartbeat counter been unchanged for the retention?
pub fn plan(
    snapshot: &TableSnapshot,
    me: &str,
    live: &BTreeSet<String>,
    dead: impl Fn(&str) -> bool,
) -> Cleanup {
    let owners: BTreeSet<&str> = snapshot
        .leases
        .iter()
        .filter_map(|l| l.owner.as_deref())
        .collect();
    let heartbeats = snapshot
        .heartbeats
        .iter()
        .filter(|h| h.worker_id != me && !live.contains(&h.worker_id))
        .filter(|h| !owners.contains(h.worker_id.as_str()) && dead(&h.worker_id))
        .map(|h| (h.worker_id.clone(), h.counter))
        .collect();
    let by_id: HashMap<&str, &super::model::Lease> = snapshot
        .leases
        .iter()
        .map(|l| (l.shard_id.as_str(), l))
        .collect();
    let mut children: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for l in &snapshot.leases {
        for p in &l.parent_shard_ids {
            children
                .entry(p.as_str())
                .or_default()
                .insert(l.shard_id.as_str());
        }
        for c in &l.child_shard_ids {
            children
                .entry(l.shard_id.as_str())
                .or_default()
                .insert(c.as_str());
        }
    }
    let leases = snapshot
        .leases
        .iter()
        .filter(|l| l.checkpoint == Checkpoint::ShardEnd)
        .filter(|l| {
            children.get(l.shard_id.as_str()).is_some_and(|cs| {
                !cs.is_empty()
                    && cs.iter().all(|c| {
                        by_id
                            .get(c)
                            .is_some_and(|child| child.checkpoint.is_progress())
                    })
            })
        })
        .map(|l| l.shard_id.clone())
        .collect();
    Cleanup { heartbeats, leases }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SequenceNumber;
    use crate::model::{Heartbeat, Lease};

    fn lease(id: &str, parents: &[&str], cp: Checkpoint) -> Lease {
        Lease::new(id, cp, parents.iter().map(|p| (*p).to_string()).collect())
    }

    /// A started checkpoint (a sequence number).
    fn seq() -> Checkpoint {
        SequenceNumber::parse("5").map_or(Checkpoint::TrimHorizon, |sequence| {
            Checkpoint::Sequence {
                sequence,
                sub_sequence: 0,
            }
        })
    }

    fn beat(w: &str) -> Heartbeat {
        Heartbeat {
            worker_id: w.into(),
            counter: 3,
            draining: false,
            lag: Default::default(),
            coordination: None,
            stalled: Default::default(),
            failing: Default::default(),
        }
    }

    #[test]
    fn a_finished_parent_goes_once_every_child_started_and_dead_heartbeats_go() {
        let mut owned = lease("c2", &["p2"], Checkpoint::TrimHorizon);
        owned.owner = Some("zombie".into());
        let snap = TableSnapshot {
            leases: vec![
                // p1 → c1 (started): p1 goes.
                lease("p1", &[], Checkpoint::ShardEnd),
                lease("c1", &["p1"], seq()),
                // p2 → c2 (not started): p2 stays.
                lease("p2", &[], Checkpoint::ShardEnd),
                owned,
                // merge: m1 + m2 → m3 (started); m1 named its child too.
                {
                    let mut m1 = lease("m1", &[], Checkpoint::ShardEnd);
                    m1.child_shard_ids = vec!["m3".into()];
                    m1
                },
                lease("m2", &[], Checkpoint::ShardEnd),
                lease("m3", &["m1", "m2"], Checkpoint::ShardEnd),
                // A finished shard whose child has no lease yet: stays.
                {
                    let mut x = lease("x", &[], Checkpoint::ShardEnd);
                    x.child_shard_ids = vec!["x-child".into()];
                    x
                },
                // A finished shard with no known child: stays.
                lease("lonely", &[], Checkpoint::ShardEnd),
            ],
            heartbeats: vec![beat("a"), beat("dead"), beat("zombie"), beat("b")],
        };
        let live: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let dead = |w: &str| w != "a" && w != "b";
        let plan_a = plan(&snap, "a", &live, dead);
        let mut leases = plan_a.leases.clone();
        leases.sort();
        assert_eq!(leases, vec!["m1", "m2", "p1"]);
        // "zombie" still names a lease owner: kept until its leases are taken.
        assert_eq!(plan_a.heartbeats, vec![("dead".to_string(), 3)]);
        // Only the smallest live id cleans.
        assert!(is_cleaner("a", &live) && !is_cleaner("b", &live));
        // Not dead yet: kept.
        assert!(plan(&snap, "a", &live, |_| false).heartbeats.is_empty());
    }
}
