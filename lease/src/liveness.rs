//! Liveness without trusting clocks across machines (KCL's rule): a value that proves a
//! worker alive (its heartbeat counter, or for a lease whose owner has no heartbeat item —
//! a table adopted from KCL — the lease counter) is considered stale once it has not changed
//! for `failover_time` as measured on the observer's own monotonic clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Remembers, per key, the last value seen, when (observer's clock) it last changed, and
/// whether this observer has ever seen it change.
#[derive(Debug, Default, Clone)]
pub struct Observer {
    seen: HashMap<String, (u64, Instant, bool)>,
}

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
}
