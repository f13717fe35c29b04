//! Exponential backoff with full jitter, for retries of AWS and app calls.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each drawn uniformly from `[0, cap]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, never longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .base
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        // Full jitter from a per-thread random generator (seeded from the OS): workers
        // that failed together do not retry together. (The clock's sub-second digits,
        // used before, are constant on a clock of microsecond resolution.)
        cap.mul_f64(fastrand::f64())
    }

    /// Counts a failure and sleeps.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for n in 1..=20u32 {
            let d = b.next_delay();
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << n.min(16))
                .min(Duration::from_secs(1));
            assert!(d <= cap, "failure {n}: {d:?} > {cap:?}");
        }
        assert_eq!(b.failures(), 20);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay() <= Duration::from_millis(200));
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        // Full jitter: 1,000 draws at one cap fill each tenth of [0, cap]; a source that
        // repeats (a coarse clock) puts them all in one or two tenths.
        let cap = Duration::from_secs(1);
        let mut tenths = [0u32; 10];
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_millis(500), cap);
            let d = b.next_delay();
            assert!(d <= cap);
            let i = ((d.as_secs_f64() * 10.0) as usize).min(9);
            tenths[i] += 1;
        }
        assert!(
            tenths.iter().all(|&n| (50..=150).contains(&n)),
            "not spread: {tenths:?}"
        );
    }
}
