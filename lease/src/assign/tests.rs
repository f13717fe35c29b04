use std::collections::{BTreeSet, HashMap};

use super::*;
use crate::balance::classify;
use crate::checkpoint::Checkpoint;
use crate::model::Heartbeat;

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

/// One assigner round; owners are alive when in `alive`.
fn round(
    leases: &[Lease],
    alive: &BTreeSet<String>,
    live_set: &BTreeSet<String>,
    pending: &HashMap<String, String>,
    max_moves: usize,
) -> AssignerPlan {
    let states = classify(leases, |_, o| alive.contains(o));
    plan(
        leases,
        &states,
        &AssignerView {
            live: live_set,
            receivers: live_set,
            pending,
            max_moves,
        },
    )
}

fn counts(leases: &[Lease]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for l in leases {
        if let Some(o) = &l.owner {
            *c.entry(o.clone()).or_insert(0) += 1;
        }
    }
    c
}

/// Applies a plan as if every write succeeded and every owner granted at once.
fn apply(leases: &mut [Lease], p: &AssignerPlan) {
    for l in leases.iter_mut() {
        if let Some((_, to)) = p.assign.iter().find(|(s, _)| *s == l.shard_id) {
            l.owner = Some(to.clone());
        }
        if let Some((_, _, to)) = p.request.iter().find(|(s, _, _)| *s == l.shard_id) {
            l.owner = Some(to.clone());
        }
    }
}

#[test]
fn free_leases_are_spread_evenly() {
    let mut leases: Vec<Lease> = shards(64).iter().map(|s| lease(s, None)).collect();
    let ws = live(&["w1", "w2", "w3", "w4"]);
    let p = round(&leases, &ws, &ws, &HashMap::new(), 16);
    assert_eq!(p.assign.len(), 64);
    assert!(p.request.is_empty());
    assert_eq!(p.target, 16);
    apply(&mut leases, &p);
    assert!(
        counts(&leases).values().all(|n| *n == 16),
        "{:?}",
        counts(&leases)
    );
}

#[test]
fn a_balanced_fleet_changes_nothing() {
    // 10 leases on 3 workers: 4, 3, 3 is as even as it gets.
    let owners = ["w1", "w1", "w1", "w1", "w2", "w2", "w2", "w3", "w3", "w3"];
    let leases: Vec<Lease> = shards(10)
        .iter()
        .zip(owners)
        .map(|(s, o)| lease(s, Some(o)))
        .collect();
    let ws = live(&["w1", "w2", "w3"]);
    assert_eq!(
        round(&leases, &ws, &ws, &HashMap::new(), 16),
        AssignerPlan {
            target: 4,
            ..AssignerPlan::default()
        }
    );
}

#[test]
fn a_joining_worker_gets_its_share_in_one_round_and_then_nothing_moves() {
    let mut leases: Vec<Lease> = shards(64)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(["w1", "w2", "w3", "w4"][i % 4])))
        .collect();
    let ws = live(&["w1", "w2", "w3", "w4", "w5"]);
    let p = round(&leases, &ws, &ws, &HashMap::new(), 16);
    assert!(p.assign.is_empty());
    assert_eq!(p.request.len(), 12, "{:?}", p.request);
    assert!(
        p.request
            .iter()
            .all(|(_, from, to)| to == "w5" && from != "w5")
    );
    apply(&mut leases, &p);
    let c = counts(&leases);
    assert_eq!(c["w5"], 12);
    assert!(c.values().all(|n| *n == 12 || *n == 13), "{c:?}");
    assert!(
        round(&leases, &ws, &ws, &HashMap::new(), 16)
            .request
            .is_empty()
    );
}

#[test]
fn pending_requests_count_as_granted_and_are_not_asked_again() {
    let leases: Vec<Lease> = shards(8).iter().map(|s| lease(s, Some("w1"))).collect();
    let ws = live(&["w1", "w2"]);
    let first = round(&leases, &ws, &ws, &HashMap::new(), 16);
    assert_eq!(first.request.len(), 4);
    let pending: HashMap<String, String> = first
        .request
        .iter()
        .map(|(s, _, to)| (s.clone(), to.clone()))
        .collect();
    // The owner has not answered yet: nothing more to ask.
    let again = round(&leases, &ws, &ws, &pending, 16);
    assert!(again.request.is_empty(), "{:?}", again.request);
    assert!(again.assign.is_empty());
}

#[test]
fn moves_per_round_are_bounded_and_the_fleet_converges() {
    let mut leases: Vec<Lease> = shards(100).iter().map(|s| lease(s, Some("w1"))).collect();
    let ws = live(&["w1", "w2", "w3", "w4", "w5", "w6", "w7"]);
    let mut rounds = 0;
    loop {
        let p = round(&leases, &ws, &ws, &HashMap::new(), 10);
        assert!(p.request.len() <= 10);
        if p.request.is_empty() && p.assign.is_empty() {
            break;
        }
        apply(&mut leases, &p);
        rounds += 1;
        assert!(rounds < 20, "does not converge");
    }
    let c = counts(&leases);
    let (lo, hi) = (c.values().min().copied(), c.values().max().copied());
    assert_eq!((lo, hi), (Some(14), Some(15)), "{c:?}");
    assert_eq!(rounds, 9, "86 moves, 10 a round");
}

#[test]
fn a_dead_workers_leases_go_to_the_live_ones_without_moving_anything_else() {
    let mut leases: Vec<Lease> = shards(12)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(["w1", "w2", "w3"][i % 3])))
        .collect();
    let ws = live(&["w1", "w2"]);
    let p = round(&leases, &ws, &ws, &HashMap::new(), 16);
    assert_eq!(p.assign.len(), 4);
    assert!(p.request.is_empty());
    apply(&mut leases, &p);
    assert_eq!(
        counts(&leases),
        BTreeMap::from([("w1".into(), 6), ("w2".into(), 6)])
    );
}

#[test]
fn a_draining_workers_leases_are_neither_asked_for_nor_counted() {
    let leases: Vec<Lease> = shards(6)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(if i < 4 { "w1" } else { "w2" })))
        .collect();
    // w1 drains: alive (its leases are owned) but not live.
    let alive = live(&["w1", "w2"]);
    let ws = live(&["w2"]);
    let p = round(&leases, &alive, &ws, &HashMap::new(), 16);
    assert!(p.request.is_empty() && p.assign.is_empty(), "{p:?}");
}

#[test]
fn finished_and_blocked_leases_are_not_assigned() {
    let mut parent = lease("shardId-000000000000", None);
    parent.checkpoint = Checkpoint::ShardEnd;
    let mut open_parent = lease("shardId-000000000001", Some("w1"));
    open_parent.child_shard_ids = vec!["shardId-000000000003".into()];
    let child_of_finished = Lease::new(
        "shardId-000000000002",
        Checkpoint::TrimHorizon,
        vec!["shardId-000000000000".into()],
    );
    let blocked = Lease::new(
        "shardId-000000000003",
        Checkpoint::TrimHorizon,
        vec!["shardId-000000000001".into()],
    );
    let leases = vec![parent, open_parent, child_of_finished, blocked];
    let ws = live(&["w1", "w2"]);
    let p = round(&leases, &ws, &ws, &HashMap::new(), 16);
    assert_eq!(
        p.assign,
        vec![("shardId-000000000002".to_string(), "w2".to_string())]
    );
}

/// The assigner's plan when only `receivers` of the live `alive` are proven.
fn plan_proven(leases: &[Lease], alive: &BTreeSet<String>, receivers: &[&str]) -> AssignerPlan {
    let states = classify(leases, |_, o| alive.contains(o));
    plan(
        leases,
        &states,
        &AssignerView {
            live: alive,
            receivers: &live(receivers),
            pending: &HashMap::new(),
            max_moves: 16,
        },
    )
}

#[test]
fn unproven_workers_count_for_the_share_but_receive_nothing_yet() {
    // A new assigner has seen w2 and w3 only once (not proven alive): the dead w4's leases
    // go to the proven w1 anyway, up to twice the fair share (its records must not wait for
    // the others' proof of life); nothing is moved to the unproven.
    let leases: Vec<Lease> = shards(12)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(["w1", "w2", "w3", "w4"][i % 4])))
        .collect();
    let alive = live(&["w1", "w2", "w3"]);
    let p = plan_proven(&leases, &alive, &["w1"]);
    assert_eq!(p.target, 4);
    assert_eq!(p.assign.len(), 3, "all of w4's leases: {p:?}");
    assert!(p.assign.iter().all(|(_, to)| to == "w1"));
    assert!(p.request.is_empty());

    // Never-owned leases (a fleet starting) go no further than the share: the others'
    // proof comes within a round or two, and moving them later would be churn.
    let fresh: Vec<Lease> = shards(12).iter().map(|s| lease(s, None)).collect();
    let p = plan_proven(&fresh, &alive, &["w1"]);
    assert_eq!(p.assign.len(), 4, "{p:?}");

    // With many dead leases, twice the share is the most a receiver takes.
    let many: Vec<Lease> = shards(40)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(if i < 4 { "w1" } else { "w9" })))
        .collect();
    let p = plan_proven(&many, &alive, &["w1"]);
    assert_eq!(p.target, 14);
    assert_eq!(p.assign.len(), 24, "w1 holds 4, takes 24 more: {p:?}");
}

#[test]
fn a_new_assigners_surplus_moves_on_once_the_others_are_proven() {
    // After the round above, w2 and w3 are proven: the surplus w1 took is handed on, and
    // the fleet ends balanced.
    let mut leases: Vec<Lease> = shards(12)
        .iter()
        .enumerate()
        .map(|(i, s)| lease(s, Some(["w1", "w2", "w3", "w1"][i % 4])))
        .collect();
    let alive = live(&["w1", "w2", "w3"]);
    for _ in 0..4 {
        let p = round(&leases, &alive, &alive, &HashMap::new(), 16);
        apply(&mut leases, &p);
    }
    let c = counts(&leases);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4],
        "{c:?}"
    );
}

#[test]
fn no_live_worker_no_plan() {
    let leases: Vec<Lease> = shards(3).iter().map(|s| lease(s, None)).collect();
    let p = round(&leases, &live(&[]), &live(&[]), &HashMap::new(), 16);
    assert_eq!(p, AssignerPlan::default());
}

fn owned(shard: &str, counter: u64, handoff_to: Option<&str>) -> OwnedLease {
    OwnedLease {
        shard_id: shard.into(),
        counter,
        handoff_to: handoff_to.map(String::from),
    }
}

fn held(entries: &[(&str, u64, bool)]) -> HashMap<String, HeldState> {
    entries
        .iter()
        .map(|(s, c, h)| {
            (
                (*s).to_string(),
                HeldState {
                    counter: *c,
                    handing_over: *h,
                },
            )
        })
        .collect()
}

#[test]
fn a_member_loses_what_left_its_index_or_moved_on_and_keeps_what_the_index_lags() {
    let mine = vec![owned("b", 7, None), owned("c", 2, None)];
    let h = held(&[
        ("a", 3, false),
        ("b", 5, false),
        ("c", 3, false),
        ("d", 1, true),
    ]);
    let p = member_plan("me", &mine, &h, &HashMap::new(), false);
    // a: gone from the index (taken); b: a higher counter (changed under us); c: the
    // index has not caught up with our accept yet; d: being handed over, left alone.
    assert_eq!(p.lost, vec!["a".to_string(), "b".to_string()]);
    assert!(p.accept.is_empty() && p.release.is_empty() && p.grant.is_empty());
}

#[test]
fn a_member_accepts_what_it_was_given_grants_requests_and_releases_while_draining() {
    let mine = vec![
        owned("a", 4, Some("w2")),
        owned("b", 1, None),
        owned("e", 9, None),
        owned("f", 2, Some("me")),
        owned("g", 6, None),
    ];
    let h = held(&[("a", 4, false), ("f", 2, false)]);
    // e was left (released) at counter 9: its entry is the index lagging; g was left at 5
    // and given back since, at 6.
    let left = HashMap::from([("e".to_string(), 9), ("g".to_string(), 5)]);
    let p = member_plan("me", &mine, &h, &left, false);
    assert_eq!(p.grant, vec![("a".to_string(), "w2".to_string())]);
    assert_eq!(p.accept, vec![owned("b", 1, None), owned("g", 6, None)]);
    assert!(p.lost.is_empty() && p.release.is_empty());
    let draining = member_plan("me", &mine, &h, &left, true);
    assert_eq!(
        draining.release,
        vec![owned("b", 1, None), owned("g", 6, None)]
    );
    assert!(draining.accept.is_empty());
}

#[test]
fn successors_are_the_first_live_workers_but_the_assigner() {
    let ws = live(&["w1", "w2", "w3", "w4", "w5"]);
    assert_eq!(successors("w2", &ws), vec!["w1", "w3", "w4"]);
    assert_eq!(successors("w1", &live(&["w1"])), Vec::<String>::new());
}

#[test]
fn the_role_is_claimed_only_when_free_or_its_holder_is_dead_or_leaving() {
    assert_eq!(watch(None, false, false), Watch::Claim);
    assert_eq!(watch(Some("w1"), false, false), Watch::Follow);
    assert_eq!(watch(Some("w1"), true, false), Watch::Claim);
    assert_eq!(watch(Some("w1"), false, true), Watch::Claim);
}

#[test]
fn a_member_forgets_what_it_left_once_its_index_no_longer_shows_it() {
    let mut left = HashMap::from([("a".to_string(), 3), ("b".to_string(), 1)]);
    // b is still indexed at the counter it was left at (the index lags): not accepted.
    let p = member_decision("me", &[owned("b", 1, None)], &held(&[]), &mut left, false);
    assert_eq!(left, HashMap::from([("b".to_string(), 1)]));
    assert_eq!(p, MemberPlan::default());
    // Given back since, at a higher counter: accepted.
    let p = member_decision("me", &[owned("b", 2, None)], &held(&[]), &mut left, false);
    assert_eq!(p.accept, vec![owned("b", 2, None)]);
}

#[test]
fn children_are_missing_when_a_finished_lease_names_one_without_a_lease() {
    let mut parent = lease("p", None);
    parent.checkpoint = Checkpoint::ShardEnd;
    parent.child_shard_ids = vec!["c".into()];
    let mut scan = TableSnapshot {
        leases: vec![parent],
        heartbeats: Vec::new(),
    };
    assert!(children_missing(&scan));
    scan.leases.push(lease("c", None));
    assert!(!children_missing(&scan));
}

// The assigner's whole round (`assigner_decision`), as the coordinator and the lease
// simulation both run it, at the default timings: failover 10 s, heartbeats every 3 s, scans
// every second, hand-over timeout 5 s. "w1" is the assigner.

fn settings() -> AssignerSettings<'static> {
    AssignerSettings {
        me: "w1",
        draining: false,
        failover_time: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(3),
        scan_interval: Duration::from_secs(1),
        handoff_timeout: Duration::from_secs(5),
        max_handoffs_per_round: 16,
    }
}

fn beat(worker: &str, counter: u64) -> Heartbeat {
    Heartbeat {
        worker_id: worker.into(),
        counter,
        draining: false,
        lag: Default::default(),
        coordination: Some("assigner".into()),
        stalled: Default::default(),
        failing: Default::default(),
    }
}

fn lease_at(shard: &str, owner: &str, counter: u64) -> Lease {
    let mut l = lease(shard, Some(owner));
    l.counter = counter;
    l
}

/// A lease whose owner granted a hand-over to `to`.
fn granted(shard: &str, owner: &str, counter: u64, to: &str) -> Lease {
    let mut l = lease_at(shard, owner, counter);
    l.handoff_to = Some(to.into());
    l.handoff_granted = true;
    l
}

/// The assigner's memory across rounds, on a clock of whole seconds from `t0`.
#[derive(Clone)]
struct Assigner {
    observer: Observer,
    pending: HashMap<String, handoff::Request<Instant>>,
    t0: Instant,
}

impl Assigner {
    fn new() -> Self {
        Self {
            observer: Observer::new(),
            pending: HashMap::new(),
            t0: Instant::now(),
        }
    }

    /// A round on a scan asked `asked` s and answered `answered` s after `t0`.
    fn round_at(&mut self, scan: &TableSnapshot, asked: u64, answered: u64) -> AssignerDecision {
        let at = |s| self.t0 + Duration::from_secs(s);
        let (asked, answered) = (at(asked), at(answered));
        assigner_decision(
            scan,
            &mut self.observer,
            &mut self.pending,
            &settings(),
            asked,
            answered,
        )
    }

    fn round(&mut self, scan: &TableSnapshot, t: u64) -> AssignerDecision {
        self.round_at(scan, t, t)
    }
}

fn scan(leases: Vec<Lease>, beats: &[(&str, u64)]) -> TableSnapshot {
    TableSnapshot {
        leases,
        heartbeats: beats.iter().map(|(w, c)| beat(w, *c)).collect(),
    }
}

#[test]
fn a_granted_hand_over_that_completes_is_forgotten() {
    let mut a = Assigner::new();
    a.pending.insert("a".into(), handoff::Request::new("w2", 5));
    let rest = || {
        vec![
            lease_at("b", "w2", 1),
            lease_at("c", "w1", 1),
            lease_at("d", "w1", 1),
        ]
    };
    let mut leases = vec![granted("a", "w1", 5, "w2")];
    leases.extend(rest());
    let d = a.round(&scan(leases, &[("w1", 1), ("w2", 1)]), 0);
    assert!(d.takes.is_empty() && d.requests.is_empty(), "{d:?}");
    assert_eq!(d.pending, 1);
    assert!(a.pending["a"].granted_seen.is_some());
    // The owner handed it over: a new owner, a new counter.
    let mut leases = vec![lease_at("a", "w2", 6)];
    leases.extend(rest());
    let d = a.round(&scan(leases, &[("w1", 2), ("w2", 2)]), 1);
    assert!(d.takes.is_empty() && d.requests.is_empty(), "{d:?}");
    assert_eq!((d.pending, d.timed_out), (0, 0));
    assert!(a.pending.is_empty());
}

#[test]
fn a_granted_hand_over_not_done_within_the_timeout_is_taken_for_the_requester() {
    let mut a = Assigner::new();
    a.pending.insert("a".into(), handoff::Request::new("w2", 5));
    let at = |t: u64| {
        scan(
            vec![
                granted("a", "w1", 5, "w2"),
                lease_at("b", "w2", 1),
                lease_at("c", "w1", 1),
                lease_at("d", "w1", 1),
            ],
            &[("w1", t + 1), ("w2", t + 1)],
        )
    };
    // The timeout runs from when the grant was first seen (t = 0): 5 s, not more.
    for t in 0..=5 {
        let d = a.round(&at(t), t);
        assert!(d.takes.is_empty() && d.requests.is_empty(), "t={t}: {d:?}");
    }
    let d = a.round(&at(6), 6);
    assert_eq!(
        d.takes,
        vec![Take {
            lease: granted("a", "w1", 5, "w2"),
            to: "w2".into(),
            after_timeout: true,
        }]
    );
    assert_eq!(d.timed_out, 1);
    assert!(!a.pending.contains_key("a"));
}

/// w1 and w2 beat every round; w3 at `w3(t)`. Two leases each.
fn three(t: u64, w3: impl Fn(u64) -> u64) -> TableSnapshot {
    let owners = ["w1", "w1", "w2", "w2", "w3", "w3"];
    let leases = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .zip(owners)
        .map(|(s, o)| lease_at(s, o, 1))
        .collect();
    scan(leases, &[("w1", t + 1), ("w2", t + 1), ("w3", w3(t))])
}

#[test]
fn a_dead_owners_leases_are_given_to_the_live_after_the_failover_time() {
    let mut a = Assigner::new();
    // w3's heartbeat never changes again.
    for t in 0..=10 {
        let d = a.round(&three(t, |_| 1), t);
        assert!(d.takes.is_empty() && d.requests.is_empty(), "t={t}: {d:?}");
        assert!(d.live.contains("w3"), "t={t}");
    }
    let d = a.round(&three(11, |_| 1), 11);
    assert!(!d.live.contains("w3"));
    let takes: Vec<(&str, &str, bool)> = d
        .takes
        .iter()
        .map(|t| (t.lease.shard_id.as_str(), t.to.as_str(), t.after_timeout))
        .collect();
    assert_eq!(takes, vec![("e", "w1", false), ("f", "w2", false)]);
    assert_eq!(d.successors, vec!["w2".to_string()]);
}

#[test]
fn a_slow_but_live_owner_is_not_declared_dead_nor_by_a_slow_read() {
    let mut a = Assigner::new();
    // w3 beats every 9 s: slower than anyone else, within the failover time.
    let slow = |t: u64| 1 + t / 9;
    for t in 0..=25 {
        let d = a.round(&three(t, slow), t);
        assert!(d.takes.is_empty() && d.requests.is_empty(), "t={t}: {d:?}");
        assert!(d.live.contains("w3"), "t={t}");
    }
    // A scan asked at 28 s and answered at 30 s still shows w3's beat of 18 s: stale as of
    // the answer, not as of the question, so w3 is alive.
    let mut late = a.clone();
    let d = a.round_at(&three(30, |_| slow(25)), 28, 30);
    assert!(d.live.contains("w3") && d.takes.is_empty(), "{d:?}");
    // Judged as of the answer, the same read would have taken w3's leases.
    let d = late.round_at(&three(30, |_| slow(25)), 30, 30);
    assert!(!d.live.contains("w3") && d.takes.len() == 2, "{d:?}");
}

#[test]
fn a_new_assigner_gives_nothing_to_the_unproven_and_counts_them_only_for_a_while() {
    let mut a = Assigner::new();
    // w3 died before this assigner started: first seen, never changing.
    let d = a.round(&three(0, |_| 1), 0);
    assert!(d.counted.contains("w3") && !d.receivers.contains("w3"));
    assert!(!d.receivers.contains("w2"), "w2 is not proven yet either");
    let d = a.round(&three(1, |_| 1), 1);
    assert!(d.receivers.contains("w2") && !d.receivers.contains("w3"));
    // Past the proof time (a heartbeat interval and two scans), w3 no longer counts.
    let d = a.round(&three(6, |_| 1), 6);
    assert_eq!(d.counted, live(&["w1", "w2"]));
    assert!(d.live.contains("w3"));
}
