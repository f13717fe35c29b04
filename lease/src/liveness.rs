//! Liveness without trusting clocks across machines (KCL's rule): a value that proves a
//! worker alive (its heartbeat counter, or for a lease whose owner has no heartbeat item —
//! a table adopted from KCL — the lease counter) is considered stale once it has not changed
//! for `failover_time` as measured on the observer's own monotonic clock.
//!
//! [`Observer`] keeps the observations; [`Observer::observe_scan`], [`fleet_view`] and
//! [`proven_alive`] turn one table scan into verdicts (pure: no I/O). The coordinator and
//! the lease simulation (`tests/src/bin/lease_sim.rs`) both decide with them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::balance::{self, LeaseState};
use super::model::{HEARTBEAT_KEY_PREFIX, Heartbeat, Lease, TableSnapshot};

/// The observation key of `worker`'s heartbeat (its item's `leaseKey`).
pub fn heartbeat_key(worker: &str) -> String {
    Heartbeat::key(worker)
}

/// The observation key of `shard`'s lease counter (the liveness of an owner without a
/// heartbeat item: a KCL worker).
pub fn lease_key(shard: &str) -> String {
    format!("lease:{shard}")
}

/// Remembers, per key, the last value seen, when (observer's clock) it last changed, and
/// whether this observer has ever seen it change.
#[derive(Debug, Default, Clone)]
pub struct Observer {
    seen: HashMap<String, (u64, Instant, bool)>,
    /// When the last scan was observed whole ([`Observer::observe_scan`]).
    last_scan: Option<Instant>,
    /// Heartbeat keys a scan no longer showed (deleted items): their last value, and when
    /// they went. An eventually consistent read may still return a deleted item for a
    /// moment; seen again unchanged, it is not new.
    gone: HashMap<String, (u64, Instant)>,
}

/// A heartbeat item new since the previous scan is a proof of life only if that scan was
/// at most this long ago: it was written since, so its worker was alive within this time.
/// Longer (a worker that was not scanning, e.g. the assigner again after a term as a
/// follower, or a run of failed scans), the item may be old: a change must be seen.
pub const FIRST_SIGHT_WITHIN: Duration = Duration::from_secs(5);

/// How long a deleted heartbeat's last value is remembered (see `Observer::gone`).
const GONE_KEPT: Duration = Duration::from_secs(60);

impl Observer {
    /// An observer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key` had `value` at `now`. A key seen for the first time counts as just
    /// changed: an observer that just started gives everyone a full `failover_time`.
    pub fn observe(&mut self, key: &str, value: u64, now: Instant) {
        match self.seen.get_mut(key) {
            Some((seen, _, _)) if *seen == value => {}
            Some(entry) => *entry = (value, now, true),
            None => {
                self.seen.insert(key.to_string(), (value, now, false));
            }
        }
    }

    /// Has this observer seen `key`'s value change at least once? A proof of life that the
    /// benefit of the doubt given at first sight is not: a dead worker's last heartbeat, first
    /// seen by an observer that just started, is not stale for `failover_time` either.
    pub fn has_changed(&self, key: &str) -> bool {
        self.seen.get(key).is_some_and(|(_, _, changed)| *changed)
    }

    /// How long `key`'s value has been the same, as this observer saw it (since first sight
    /// if it never changed); `None` if never seen.
    pub fn unchanged_for(&self, key: &str, now: Instant) -> Option<Duration> {
        self.seen
            .get(key)
            .map(|(_, changed, _)| now.saturating_duration_since(*changed))
    }

    /// Has `key`'s value stayed the same for longer than `failover_time`? A key never seen
    /// is not stale (the caller observes before it asks).
    pub fn is_stale(&self, key: &str, now: Instant, failover_time: Duration) -> bool {
        self.seen
            .get(key)
            .is_some_and(|(_, changed, _)| now.saturating_duration_since(*changed) > failover_time)
    }

    /// Forgets keys not in `present` (deleted items), so the map does not grow forever.
    pub fn retain(&mut self, mut present: impl FnMut(&str) -> bool) {
        self.seen.retain(|k, _| present(k));
    }

    /// Records one scan's liveness evidence (heartbeat counters, and lease counters for
    /// owners without a heartbeat item) as seen at `now`, and forgets keys that are gone.
    ///
    /// A heartbeat item that was not in this observer's previous scan and is in this one was
    /// written in between: that counts as a change, a proof of life (a joining worker is a
    /// receiver after one scan instead of two, the second of which may come after its
    /// quick first beats). Only when the previous scan was at most [`FIRST_SIGHT_WITHIN`]
    /// ago, so never on an observer's first scan (a new assigner must still see each
    /// worker's heartbeat change), nor after a gap; and not for a deleted item returned
    /// again unchanged by an eventually consistent read.
    pub fn observe_scan(&mut self, snapshot: &TableSnapshot, now: Instant) {
        let watching = self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) <= FIRST_SIGHT_WITHIN);
        self.last_scan = Some(now);
        self.gone
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= GONE_KEPT);
        for hb in &snapshot.heartbeats {
            let key = heartbeat_key(&hb.worker_id);
            let back_unchanged = self
                .gone
                .get(&key)
                .is_some_and(|(counter, _)| *counter == hb.counter);
            if watching && !back_unchanged && !self.seen.contains_key(&key) {
                self.seen.insert(key, (hb.counter, now, true));
            } else {
                self.observe(&key, hb.counter, now);
            }
        }
        for l in &snapshot.leases {
            self.observe(&lease_key(&l.shard_id), l.counter, now);
        }
        let present: HashSet<String> = snapshot
            .heartbeats
            .iter()
            .map(|h| heartbeat_key(&h.worker_id))
            .chain(snapshot.leases.iter().map(|l| lease_key(&l.shard_id)))
            .collect();
        for (key, (counter, _, _)) in &self.seen {
            if !present.contains(key) && key.starts_with(HEARTBEAT_KEY_PREFIX) {
                self.gone.insert(key.clone(), (*counter, now));
            }
        }
        self.retain(|k| present.contains(k));
    }
}

/// The live workers (alive and not draining; `me` unless it drains) and every lease's state,
/// from one scan and the observations, with staleness measured up to `asked` (when the scan
/// was asked, not answered: a read answered late must not make a live worker look dead).
pub fn fleet_view<'a>(
    snapshot: &'a TableSnapshot,
    observer: &Observer,
    me: &str,
    draining: bool,
    failover: Duration,
    asked: Instant,
) -> (BTreeSet<String>, Vec<LeaseState<'a>>) {
    let heartbeats: HashMap<&str, &Heartbeat> = snapshot
        .heartbeats
        .iter()
        .map(|h| (h.worker_id.as_str(), h))
        .collect();
    let worker_alive = |w: &str| {
        heartbeats
            .get(w)
            .is_some_and(|_| !observer.is_stale(&heartbeat_key(w), asked, failover))
    };
    let mut live: BTreeSet<String> = snapshot
        .heartbeats
        .iter()
        .filter(|h| !h.draining && worker_alive(&h.worker_id))
        .map(|h| h.worker_id.clone())
        .collect();
    if draining {
        live.remove(me);
    } else {
        live.insert(me.to_string());
    }
    let alive = |lease: &Lease, owner: &str| {
        owner == me
            || if heartbeats.contains_key(owner) {
                worker_alive(owner)
            } else {
                // An owner without a heartbeat item (a KCL worker): KCL's rule on the lease
                // counter itself.
                !observer.is_stale(&lease_key(&lease.shard_id), asked, failover)
            }
    };
    let states = balance::classify(&snapshot.leases, alive);
    (live, states)
}

/// How long a worker first seen by an observer counts for the fair share without proof of
/// life: one heartbeat interval and two scan intervals (a live worker is proven by then).
pub fn proof_time(heartbeat_interval: Duration, scan_interval: Duration) -> Duration {
    heartbeat_interval + scan_interval * 2
}

/// The assigner's view of `live`: (the workers the fair share is computed over, the workers
/// it may give leases to). First sight gives an *owner* the benefit of the doubt for a
/// failover time (its leases are not taken), but a new assigner must not hand leases to a
/// worker that died before it started watching, nor count it for the fair share. So a
/// receiver is proven alive (this observer saw its heartbeat change; a new worker's first
/// heartbeats are half a scan interval apart, so it is proven within a round or two);
/// a worker counts for the share while proven or first seen less than `proof_time` ago (see
/// [`proof_time`]). `me` is always proven.
pub fn proven_alive(
    snapshot: &TableSnapshot,
    observer: &Observer,
    live: &BTreeSet<String>,
    me: &str,
    proof_time: Duration,
    now: Instant,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut counted = BTreeSet::new();
    let mut receivers = BTreeSet::new();
    for h in snapshot
        .heartbeats
        .iter()
        .filter(|h| live.contains(&h.worker_id))
    {
        let key = heartbeat_key(&h.worker_id);
        let proven = h.worker_id == me || observer.has_changed(&key);
        if proven {
            receivers.insert(h.worker_id.clone());
        }
        if proven
            || observer
                .unchanged_for(&key, now)
                .is_none_or(|d| d <= proof_time)
        {
            counted.insert(h.worker_id.clone());
        }
    }
    if live.contains(me) {
        counted.insert(me.to_string());
        receivers.insert(me.to_string());
    }
    (counted, receivers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILOVER: Duration = Duration::from_secs(10);

    #[test]
    fn unchanged_value_goes_stale_after_failover_time() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        o.observe("w1", 5, t0);
        o.observe("w1", 5, t0 + Duration::from_secs(9));
        assert!(!o.is_stale("w1", t0 + Duration::from_secs(10), FAILOVER));
        o.observe("w1", 5, t0 + Duration::from_secs(11));
        assert!(o.is_stale("w1", t0 + Duration::from_secs(11), FAILOVER));
    }

    #[test]
    fn a_change_resets_the_clock() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        o.observe("w1", 5, t0);
        o.observe("w1", 6, t0 + Duration::from_secs(8));
        assert!(!o.is_stale("w1", t0 + Duration::from_secs(17), FAILOVER));
        assert!(o.is_stale("w1", t0 + Duration::from_secs(19), FAILOVER));
    }

    #[test]
    fn first_sight_gives_a_full_failover_time() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        // A value that may have been frozen for hours before we started is still given
        // failover_time from our first look: we cannot know better without trusting clocks.
        o.observe("w1", 1, t0);
        assert!(!o.is_stale("w1", t0 + FAILOVER, FAILOVER));
        assert!(!o.is_stale("never-seen", t0 + FAILOVER * 100, FAILOVER));
    }

    #[test]
    fn a_change_is_a_proof_of_life_first_sight_is_not() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        o.observe("w1", 7, t0);
        o.observe("w1", 7, t0 + Duration::from_secs(1));
        assert!(!o.has_changed("w1"));
        o.observe("w1", 8, t0 + Duration::from_secs(2));
        assert!(o.has_changed("w1"));
        assert!(!o.has_changed("never-seen"));
    }

    #[test]
    fn retain_forgets_deleted_keys() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        o.observe("w1", 1, t0);
        o.observe("w2", 1, t0);
        o.retain(|k| k == "w2");
        assert!(
            !o.is_stale("w1", t0 + FAILOVER * 2, FAILOVER),
            "forgotten keys are unknown, not stale"
        );
        assert!(o.is_stale("w2", t0 + FAILOVER * 2, FAILOVER));
    }

    fn beat(worker: &str, counter: u64, draining: bool) -> Heartbeat {
        Heartbeat {
            worker_id: worker.into(),
            counter,
            draining,
            lag: Default::default(),
            coordination: None,
            stalled: Default::default(),
            failing: Default::default(),
        }
    }

    fn lease(shard: &str, owner: &str, counter: u64) -> Lease {
        let mut l = Lease::new(
            shard,
            crate::checkpoint::Checkpoint::TrimHorizon,
            Vec::new(),
        );
        l.owner = Some(owner.into());
        l.counter = counter;
        l
    }

    fn set(ws: &[&str]) -> BTreeSet<String> {
        ws.iter().map(|w| (*w).to_string()).collect()
    }

    #[test]
    fn a_scan_is_observed_whole_and_deleted_items_are_forgotten() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        let scan = TableSnapshot {
            leases: vec![lease("a", "w1", 3)],
            heartbeats: vec![beat("w1", 1, false), beat("w2", 1, false)],
        };
        o.observe_scan(&scan, t0);
        assert!(o.unchanged_for(&heartbeat_key("w2"), t0).is_some());
        assert!(o.unchanged_for(&lease_key("a"), t0).is_some());
        let later = TableSnapshot {
            leases: vec![lease("a", "w1", 4)],
            heartbeats: vec![beat("w1", 2, false)],
        };
        o.observe_scan(&later, t0 + Duration::from_secs(1));
        assert!(o.has_changed(&heartbeat_key("w1")));
        assert!(o.has_changed(&lease_key("a")));
        assert_eq!(o.unchanged_for(&heartbeat_key("w2"), t0), None);
    }

    #[test]
    fn the_fleet_view_leaves_out_the_draining_and_the_stale_as_of_when_the_scan_was_asked() {
        let t0 = Instant::now();
        let mut o = Observer::new();
        let scan = |w1: u64, k: u64| TableSnapshot {
            leases: vec![
                lease("a", "w1", 1),
                lease("b", "w3", 1),
                lease("k", "kcl", k),
            ],
            heartbeats: vec![
                beat("w1", w1, false),
                beat("w2", 1, true),
                beat("w3", 1, false),
            ],
        };
        o.observe_scan(&scan(1, 1), t0);
        let s = scan(2, 1);
        let at = |secs| t0 + Duration::from_secs(secs);
        o.observe_scan(&s, at(11));
        let (live, states) = fleet_view(&s, &o, "me", false, FAILOVER, at(11));
        // w2 drains; w3's heartbeat and the KCL owner's lease counter are stale.
        assert_eq!(live, set(&["me", "w1"]));
        assert_eq!(
            states,
            vec![LeaseState::Owned("w1"), LeaseState::Free, LeaseState::Free]
        );
        // The same answer to a scan asked 10 s after the last change: nobody is stale yet.
        let (live, states) = fleet_view(&s, &o, "me", false, FAILOVER, at(10));
        assert_eq!(live, set(&["me", "w1", "w3"]));
        assert_eq!(
            states,
            vec![
                LeaseState::Owned("w1"),
                LeaseState::Owned("w3"),
                LeaseState::Owned("kcl")
            ]
        );
        // A draining observer is not live itself.
        let (live, _) = fleet_view(&s, &o, "w1", true, FAILOVER, at(11));
        assert!(live.is_empty());
    }

    #[test]
    fn a_receiver_is_proven_alive_and_the_unproven_count_only_for_a_while() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let proof = proof_time(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(proof, Duration::from_secs(5));
        let mut o = Observer::new();
        let scan = |w2: u64| TableSnapshot {
            leases: Vec::new(),
            heartbeats: vec![
                beat("me", 1, false),
                beat("w1", 1, false),
                beat("w2", w2, false),
            ],
        };
        o.observe_scan(&scan(1), at(0));
        o.observe_scan(&scan(2), at(1_000));
        let live = set(&["me", "w1", "w2"]);
        // w1 is seen, unchanged, for less than the proof time: counted, not a receiver.
        let (counted, receivers) = proven_alive(&scan(2), &o, &live, "me", proof, at(5_000));
        assert_eq!(counted, live);
        assert_eq!(receivers, set(&["me", "w2"]));
        // Past the proof time it no longer counts for the share.
        let (counted, receivers) = proven_alive(&scan(2), &o, &live, "me", proof, at(5_001));
        assert_eq!(counted, set(&["me", "w2"]));
        assert_eq!(receivers, set(&["me", "w2"]));
        // Only the live are judged.
        let (counted, receivers) = proven_alive(&scan(2), &o, &set(&["w2"]), "me", proof, at(0));
        assert_eq!((counted, receivers), (set(&["w2"]), set(&["w2"])));
    }

    #[test]
    fn a_heartbeat_item_new_since_the_last_scan_is_a_proof_of_life_but_not_on_the_first_scan() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut o = Observer::new();
        // A watch of the old assigner (not a scan) does not make the next scan a later one.
        o.observe(&heartbeat_key("old"), 7, at(0));
        let first = TableSnapshot {
            leases: Vec::new(),
            heartbeats: vec![beat("w1", 5, false)],
        };
        o.observe_scan(&first, at(0));
        assert!(
            !o.has_changed(&heartbeat_key("w1")),
            "first sight on a first scan"
        );
        let second = TableSnapshot {
            leases: Vec::new(),
            heartbeats: vec![beat("w1", 5, false), beat("w2", 1, false)],
        };
        o.observe_scan(&second, at(1_000));
        assert!(
            o.has_changed(&heartbeat_key("w2")),
            "written since the last scan"
        );
        assert!(!o.has_changed(&heartbeat_key("w1")), "unchanged");
        // Its clock starts at that sight: stale only a failover time later.
        assert!(!o.is_stale(&heartbeat_key("w2"), at(11_000), FAILOVER));
        assert!(o.is_stale(&heartbeat_key("w2"), at(11_001), FAILOVER));
        let live = set(&["me", "w1", "w2"]);
        let proof = proof_time(Duration::from_secs(3), Duration::from_secs(1));
        let (_, receivers) = proven_alive(&second, &o, &live, "me", proof, at(1_000));
        assert_eq!(receivers, set(&["me", "w2"]));

        // w2's item deleted (its worker died, the cleanup removed it); an eventually
        // consistent scan returns it again unchanged: not written since, no proof.
        let mut o2 = o.clone();
        o2.observe_scan(&first, at(2_000));
        o2.observe_scan(&second, at(3_000));
        assert!(
            !o2.has_changed(&heartbeat_key("w2")),
            "a deleted item back unchanged"
        );
        // Back with a new counter: written since.
        let third = TableSnapshot {
            leases: Vec::new(),
            heartbeats: vec![beat("w1", 5, false), beat("w2", 9, false)],
        };
        o2.observe_scan(&first, at(4_000));
        o2.observe_scan(&third, at(5_000));
        assert!(
            o2.has_changed(&heartbeat_key("w2")),
            "back with a new counter"
        );

        // A scan after a gap (this worker was not the assigner for a while): an item new to
        // it may be old, its worker dead: no proof until it changes.
        let fourth = TableSnapshot {
            leases: Vec::new(),
            heartbeats: vec![beat("w1", 5, false), beat("w3", 1, false)],
        };
        o.observe_scan(
            &fourth,
            at(1_000) + FIRST_SIGHT_WITHIN + Duration::from_millis(1),
        );
        assert!(
            !o.has_changed(&heartbeat_key("w3")),
            "first sight after a gap"
        );
    }
}
