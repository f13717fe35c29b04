use std::collections::{BTreeSet, HashMap, HashSet};

use super::*;
use crate::checkpoint::{Checkpoint, SequenceNumber};

fn lease(shard: &str, owner: Option<&str>) -> Lease {
    let mut l = Lease::new(shard, Checkpoint::TrimHorizon, Vec::new());
    l.owner = owner.map(String::from);
    l
}

fn shards(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("shardId-{i:012}")).collect()
}

fn live(ws: &[&str]) -> BTreeSet<String> {
    ws.iter().map(|w| (*w).to_string()).collect()
}

/// Every lease's owner is alive when it is in `live`; `me` holds all its leases.
fn plan_for(leases: &[Lease], me: &str, live_set: &BTreeSet<String>) -> Plan {
    let held: HashSet<String> = leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me))
        .map(|l| l.shard_id.clone())
        .collect();
    plan_with(leases, me, live_set, &held, &HashSet::new(), 16, false)
}

/// One round for `me` with everything spelled out; owners alive when in `live`.
fn plan_with(
    leases: &[Lease],
    me: &str,
    live_set: &BTreeSet<String>,
    held: &HashSet<String>,
    pending: &HashSet<String>,
    max_handoffs_per_round: usize,
    draining: bool,
) -> Plan {
    let states = classify(leases, |_, o| live_set.contains(o));
    plan(
        leases,
        &states,
        &Fleet {
            me,
            live: live_set,
            draining,
            held,
            pending_handoffs: pending,
            max_handoffs_per_round,
        },
    )
}

fn counts(leases: &[Lease]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for l in leases {
        if let Some(o) = &l.owner {
            *c.entry(o.clone()).or_insert(0) += 1;
        }
    }
    c
}

/// One round for every worker in turn: takes succeed, hand-overs are granted by the owner
/// within the same round. Returns the number of ownership changes.
fn round(leases: &mut [Lease], workers: &[&str]) -> usize {
    let live_set = live(workers);
    let mut changes = 0;
    for me in workers {
        let p = plan_for(leases, me, &live_set);
        for shard in &p.take {
            if let Some(l) = leases.iter_mut().find(|l| &l.shard_id == shard) {
                l.owner = Some((*me).to_string());
                l.counter += 1;
                changes += 1;
            }
        }
        // Owners grant what they can spare.
        let mut by_owner: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (shard, owner) in &p.request_handoff {
            by_owner
                .entry(owner.clone())
                .or_default()
                .push((shard.clone(), (*me).to_string()));
        }
        for (owner, reqs) in by_owner {
            let held = leases
                .iter()
                .filter(|l| l.owner.as_deref() == Some(owner.as_str()))
                .count();
            let reqs_ref: Vec<(&str, &str)> =
                reqs.iter().map(|(s, t)| (s.as_str(), t.as_str())).collect();
            let snapshot = counts(leases);
            let (grant, _) = grant_handoffs(&reqs_ref, held, p.target, &live_set, |w| {
                snapshot.get(w).copied().unwrap_or(0)
            });
            for (shard, to) in grant {
                if let Some(l) = leases.iter_mut().find(|l| l.shard_id == shard) {
                    l.owner = Some(to.to_string());
                    l.counter += 1;
                    changes += 1;
                }
            }
        }
    }
    changes
}

#[test]
fn a_worker_alone_takes_every_free_lease() {
    let leases: Vec<Lease> = shards(8).iter().map(|s| lease(s, None)).collect();
    let p = plan_for(&leases, "w1", &live(&["w1"]));
    assert_eq!(p.take.len(), 8);
    assert_eq!(p.target, 8);
    assert!(p.request_handoff.is_empty());
}

#[test]
fn free_leases_are_shared_up_to_the_target() {
    let leases: Vec<Lease> = shards(10).iter().map(|s| lease(s, None)).collect();
    let p = plan_for(&leases, "w1", &live(&["w1", "w2", "w3"]));
    assert_eq!(p.target, 4);
    assert_eq!(p.take.len(), 4);
    // The other free leases are the fallbacks for takes lost to a faster worker.
    assert_eq!(p.take_instead.len(), 6);
    assert!(p.take_instead.iter().all(|s| !p.take.contains(s)));
}

#[test]
fn workers_prefer_different_free_leases() {
    let leases: Vec<Lease> = shards(12).iter().map(|s| lease(s, None)).collect();
    let l = live(&["w1", "w2", "w3"]);
    let a = plan_for(&leases, "w1", &l).take;
    let b = plan_for(&leases, "w2", &l).take;
    assert_ne!(a, b, "the same first choices would make every take a race");
}

#[test]
fn a_balanced_fleet_makes_no_change() {
    let names = ["w1", "w2", "w3", "w4", "w5"];
    let mut leases: Vec<Lease> = shards(64)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(names[i % 5])))
        .collect();
    // 13,13,13,13,12
    assert_eq!(round(&mut leases, &names), 0);
}

#[test]
fn a_joining_worker_reaches_its_fair_share_in_one_round_and_then_nothing_moves() {
    let four = ["w1", "w2", "w3", "w4"];
    let mut leases: Vec<Lease> = shards(64)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(four[i % 4])))
        .collect();
    let five = ["w1", "w2", "w3", "w4", "w5"];
    let moved = round(&mut leases, &five);
    let c = counts(&leases);
    assert!(
        c.get("w5").copied().unwrap_or(0) >= 64 / 5,
        "w5 has {:?}",
        c.get("w5")
    );
    assert!(c.values().all(|n| *n >= 12 && *n <= 13), "{c:?}");
    assert_eq!(moved, 12, "only the leases w5 needed moved");
    assert_eq!(round(&mut leases, &five), 0, "and then the fleet is stable");
}

#[test]
fn two_workers_joining_at_once_never_push_an_owner_below_target() {
    let four = ["w1", "w2", "w3", "w4"];
    let mut leases: Vec<Lease> = shards(64)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(four[i % 4])))
        .collect();
    let six = ["w1", "w2", "w3", "w4", "w5", "w6"];
    for _ in 0..3 {
        round(&mut leases, &six);
    }
    let c = counts(&leases);
    assert!(c.values().all(|n| *n >= 10 && *n <= 11), "{c:?}");
    assert_eq!(round(&mut leases, &six), 0);
}

#[test]
fn a_dead_workers_leases_are_free_and_shared_out() {
    let names = ["w1", "w2", "w3", "w4"];
    let mut leases: Vec<Lease> = shards(16)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(names[i % 4])))
        .collect();
    let survivors = ["w1", "w2", "w3"];
    round(&mut leases, &survivors);
    let c = counts(&leases);
    assert_eq!(c.get("w4"), None, "{c:?}");
    assert!(c.values().all(|n| *n >= 5 && *n <= 6), "{c:?}");
}

#[test]
fn handoffs_per_round_are_bounded() {
    let mut leases: Vec<Lease> = shards(20).iter().map(|s| lease(s, Some("w1"))).collect();
    leases.truncate(20);
    let live_set = live(&["w1", "w2"]);
    let p = plan_with(
        &leases,
        "w2",
        &live_set,
        &HashSet::new(),
        &HashSet::new(),
        3,
        false,
    );
    assert_eq!(p.request_handoff.len(), 3);
    assert!(p.request_handoff.iter().all(|(_, o)| o == "w1"));
}

#[test]
fn pending_handoffs_count_against_what_is_still_needed() {
    let leases: Vec<Lease> = shards(4).iter().map(|s| lease(s, Some("w1"))).collect();
    let live_set = live(&["w1", "w2"]);
    let pending: HashSet<String> = leases.iter().map(|l| l.shard_id.clone()).collect();
    let p = plan_with(
        &leases,
        "w2",
        &live_set,
        &HashSet::new(),
        &pending,
        16,
        false,
    );
    assert!(p.request_handoff.is_empty(), "{p:?}");
}

#[test]
fn a_draining_worker_takes_nothing_and_does_not_count() {
    let leases: Vec<Lease> = shards(6).iter().map(|s| lease(s, None)).collect();
    let live_set = live(&["w1"]);
    let p = plan_with(
        &leases,
        "w2",
        &live_set,
        &HashSet::new(),
        &HashSet::new(),
        16,
        true,
    );
    assert!(p.take.is_empty() && p.request_handoff.is_empty());
    assert_eq!(
        p.target, 6,
        "the fair share is computed over the live workers only"
    );
}

#[test]
fn children_wait_for_every_parent_to_finish() {
    let mut split_parent = lease("shardId-000000000000", None);
    split_parent.checkpoint = Checkpoint::Sequence {
        sequence: seq5(),
        sub_sequence: 0,
    };
    let mut merged_parent = lease("shardId-000000000001", None);
    merged_parent.checkpoint = Checkpoint::ShardEnd;
    let child_of_split = Lease::new(
        "shardId-000000000002",
        Checkpoint::TrimHorizon,
        vec!["shardId-000000000000".into()],
    );
    let child_of_merge = Lease::new(
        "shardId-000000000003",
        Checkpoint::TrimHorizon,
        vec!["shardId-000000000000".into(), "shardId-000000000001".into()],
    );
    let orphan = Lease::new(
        "shardId-000000000004",
        Checkpoint::TrimHorizon,
        vec!["shardId-gone".into()],
    );
    let leases = vec![
        split_parent,
        merged_parent,
        child_of_split,
        child_of_merge,
        orphan,
    ];
    let states = classify(&leases, |_, _| true);
    assert_eq!(
        states,
        vec![
            LeaseState::Free,
            LeaseState::Finished,
            LeaseState::Blocked,
            LeaseState::Blocked,
            LeaseState::Free
        ]
    );
    let p = plan_for(&leases, "w1", &live(&["w1"]));
    let mut taken = p.take.clone();
    taken.sort();
    assert_eq!(
        taken,
        vec![
            "shardId-000000000000".to_string(),
            "shardId-000000000004".to_string()
        ]
    );
}

#[test]
fn leases_of_an_earlier_run_of_the_same_worker_are_taken_back() {
    let leases: Vec<Lease> = shards(3).iter().map(|s| lease(s, Some("w1"))).collect();
    let live_set = live(&["w1", "w2"]);
    let p = plan_with(
        &leases,
        "w1",
        &live_set,
        &HashSet::new(),
        &HashSet::new(),
        16,
        false,
    );
    assert_eq!(p.take.len(), 3);
}

#[test]
fn owners_never_grant_below_target_and_only_to_live_workers() {
    let live_set = live(&["w1", "w5", "w6"]);
    let requests = [("a", "w5"), ("b", "w6"), ("c", "w5"), ("d", "dead")];
    let (grant, decline) = grant_handoffs(&requests, 15, 13, &live_set, |_| 12);
    assert_eq!(grant, vec![("a", "w5"), ("b", "w6")]);
    assert_eq!(decline, vec!["c", "d"]);
    // At target, an owner still gives to a worker two or more behind it.
    let (grant, decline) = grant_handoffs(&[("a", "w5"), ("b", "w5")], 11, 11, &live_set, |_| 9);
    assert_eq!(grant, vec![("a", "w5")]);
    assert_eq!(decline, vec!["b"]);
}

fn seq5() -> SequenceNumber {
    match SequenceNumber::parse("5") {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}
