//! When a shard's next GetRecords call may start (pure).
//!
//! Kinesis serves each shard at most 5 GetRecords calls and 2 MB of records a second, shared
//! by every polling application of the stream. Past either it answers
//! `ProvisionedThroughputExceededException`: a call that returned 10 MB leaves the shard
//! refused for the next 5 seconds. A worker catching up with 2 MiB pages at 5 calls a second
//! would ask for 10 MB a second and be refused four calls in five: each refusal a warning in
//! the log, a `ReadProvisionedThroughputExceeded` in CloudWatch and a backoff that may wait
//! longer than the limit asked. So each shard's reader spaces its calls: the next starts no
//! sooner than `min_interval` after the last one started, nor sooner than the last page's
//! bytes take at `bytes_per_second` (vmware-go-kcl paces the same two limits with a token
//! bucket; this is a bucket of no burst, which is what a 2 MiB page needs).
//!
//! # Guarantees
//! Over any run of consecutive calls spaced by [`ReadPace::gap`], the bytes returned by all
//! but the last are at most `bytes_per_second` × the time from the first call's start to the
//! last call's start, and no two calls start closer than `min_interval`: so at most one page
//! more than the limit is read in any window (test: `pace::tests`).

use std::time::Duration;

/// Kinesis's read limit of one shard, in bytes a second (2 MB, all polling consumers
/// together).
pub const SHARD_READ_BYTES_PER_SECOND: u64 = 2_000_000;

/// How one shard's GetRecords calls are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPace {
    /// The least time between two calls' starts (Kinesis allows 5 calls a second).
    pub min_interval: Duration,
    /// The most record bytes (data and partition keys) a second; `None`: not paced by bytes.
    pub bytes_per_second: Option<u64>,
}

impl Default for ReadPace {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_millis(200),
            bytes_per_second: Some(SHARD_READ_BYTES_PER_SECOND),
        }
    }
}

impl ReadPace {
    /// The least time from the start of a call that returned `bytes` to the start of the
    /// next call on the same shard.
    pub fn gap(&self, bytes: u64) -> Duration {
        let by_bytes = match self.bytes_per_second {
            Some(rate) if rate > 0 => {
                let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        };
        self.min_interval.max(by_bytes)
    }
}

/// How often a polled shard is read once it is at the tip (`millis_behind_latest` 0): every
/// polling application of the stream shares the shard's 5 calls a second, so one at the tip
/// must leave room for the others.
///
/// - While records come, a page at the tip is followed by `base` before the next call (500 ms
///   by default: two applications at the tip make 4 calls a second between them).
/// - Each empty page at the tip stretches that wait by half (from at least [`TIP_FLOOR`]), up
///   to `max` (1 s by default; KCL waits 1.5 s, always): an idle shard costs one call a second
///   per application. The first page with records brings it back to `base` at once.
/// - A throttled call doubles a separate floor under the wait (from at least [`TIP_FLOOR`], up
///   to `max`), which then shrinks by an eighth a page: an application that shares the shard
///   with more readers than the defaults allow settles at a pace that is not refused.
/// - A page behind the tip is followed by no wait (only [`ReadPace`]'s).
///
/// # Guarantees
/// The wait after a page at the tip is always within `[base, max]` (`max` below `base` counts
/// as `base`), and `base` itself while records come and nothing was throttled for a while;
/// behind the tip it is zero. Pure: the read loop tells it what each page was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TipPolling {
    /// The wait after a page at the tip while records come.
    pub base: Duration,
    /// The longest wait (an idle shard, or one throttled).
    pub max: Duration,
    /// The wait grown by empty pages at the tip (`base` while records come).
    idle: Duration,
    /// The floor raised by throttles (zero when none lately).
    throttle: Duration,
}

/// The least a wait grows from (a `base` of 0 still backs off).
pub const TIP_FLOOR: Duration = Duration::from_millis(100);

impl TipPolling {
    /// A policy waiting `base` while records come and up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            idle: base,
            throttle: Duration::ZERO,
        }
    }

    /// A call was refused for the shard's read limit.
    pub fn throttled(&mut self) {
        self.throttle = (self.throttle.max(self.base).max(TIP_FLOOR) * 2).min(self.max);
    }

    /// The page just read: how long to wait before the next call.
    pub fn after_page(&mut self, at_tip: bool, had_records: bool) -> Duration {
        let throttle = self.throttle;
        self.throttle -= self.throttle / 8;
        if self.throttle < TIP_FLOOR / 2 {
            self.throttle = Duration::ZERO;
        }
        if !at_tip {
            self.idle = self.base;
            return Duration::ZERO;
        }
        self.idle = if had_records {
            self.base
        } else {
            (self.idle.max(TIP_FLOOR) * 3 / 2).min(self.max)
        };
        self.idle.max(throttle).clamp(self.base, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_pages_are_spaced_by_the_call_limit_and_large_ones_by_their_bytes() {
        let pace = ReadPace::default();
        assert_eq!(pace.gap(0), Duration::from_millis(200));
        assert_eq!(pace.gap(100_000), Duration::from_millis(200));
        // 400 kB take 200 ms at 2 MB/s: the two limits meet there.
        assert_eq!(pace.gap(400_000), Duration::from_millis(200));
        assert_eq!(
            pace.gap(2 * 1024 * 1024),
            Duration::from_nanos(1_048_576_000)
        );
        // A 10 MB page, the most one call returns: 5 s, as Kinesis refuses for.
        assert_eq!(pace.gap(10_000_000), Duration::from_secs(5));
        let unpaced = ReadPace {
            bytes_per_second: None,
            ..pace
        };
        assert_eq!(unpaced.gap(10_000_000), Duration::from_millis(200));
        let zero = ReadPace {
            bytes_per_second: Some(0),
            ..pace
        };
        assert_eq!(zero.gap(10_000_000), Duration::from_millis(200));
        let slow = ReadPace {
            min_interval: Duration::ZERO,
            bytes_per_second: Some(1),
        };
        assert_eq!(slow.gap(u64::MAX), Duration::from_nanos(u64::MAX));
    }

    proptest! {
        /// Calls started as early as [`ReadPace::gap`] allows, with pages of any size up to
        /// 10 MB: in every window from one call's start to a later one's, the bytes of the
        /// calls before the later one never exceed the rate × the window, and calls never
        /// come closer than the call limit.
        #[test]
        fn no_window_reads_more_than_the_limit_allows(
            pages in proptest::collection::vec(0u64..=10_000_000, 1..60),
            rate in 1_000u64..=4_000_000,
            min_ms in 0u64..=500,
        ) {
            let pace = ReadPace {
                min_interval: Duration::from_millis(min_ms),
                bytes_per_second: Some(rate),
            };
            let mut starts = vec![Duration::ZERO];
            for &b in &pages {
                let last = *starts.last().unwrap_or(&Duration::ZERO);
                starts.push(last + pace.gap(b));
            }
            for i in 0..pages.len() {
                for j in i + 1..=pages.len() {
                    let window = starts[j] - starts[i];
                    let read: u128 = pages[i..j].iter().map(|&b| u128::from(b)).sum();
                    // Nanosecond rounding: at most 1 ns short a call.
                    let allowed = u128::from(rate) * (window.as_nanos() + (j - i) as u128)
                        / 1_000_000_000;
                    prop_assert!(read <= allowed + 1, "{read} bytes in {window:?} at {rate} B/s");
                    prop_assert!(window >= pace.min_interval * u32::try_from(j - i).unwrap_or(u32::MAX));
                }
            }
        }
    }

    fn tip() -> TipPolling {
        TipPolling::new(Duration::from_millis(500), Duration::from_millis(1000))
    }

    #[test]
    fn while_records_come_at_the_tip_the_wait_is_the_base() {
        let mut t = tip();
        for _ in 0..10 {
            assert_eq!(t.after_page(true, true), Duration::from_millis(500));
        }
    }

    #[test]
    fn an_idle_shard_backs_off_to_the_max_and_records_bring_it_back_at_once() {
        let mut t = tip();
        let waits: Vec<u128> = (0..5)
            .map(|_| t.after_page(true, false).as_millis())
            .collect();
        assert_eq!(waits, vec![750, 1000, 1000, 1000, 1000]);
        assert_eq!(t.after_page(true, true), Duration::from_millis(500));
        // A base of 0 still backs off.
        let mut t = TipPolling::new(Duration::ZERO, Duration::from_millis(1000));
        let waits: Vec<u128> = (0..8)
            .map(|_| t.after_page(true, false).as_millis())
            .collect();
        assert_eq!(waits.first(), Some(&150));
        assert_eq!(waits.last(), Some(&1000));
        assert_eq!(t.after_page(true, true), Duration::ZERO);
    }

    #[test]
    fn a_throttle_raises_the_wait_which_then_shrinks_back_and_behind_the_tip_nothing_waits() {
        let mut t = tip();
        t.throttled();
        assert_eq!(t.after_page(true, true), Duration::from_millis(1000));
        let back: Vec<u128> = (0..12)
            .map(|_| t.after_page(true, true).as_millis())
            .collect();
        assert!(back.windows(2).all(|w| w[0] >= w[1]), "{back:?}");
        assert_eq!(back.last(), Some(&500));
        let mut t = tip();
        t.throttled();
        assert_eq!(
            t.after_page(false, true),
            Duration::ZERO,
            "catching up: no wait"
        );
        assert!(
            t.after_page(true, true) > Duration::from_millis(500),
            "still raised"
        );
    }

    proptest::proptest! {
        /// Whatever happens, a wait at the tip stays within [base, max] and none behind it.
        #[test]
        fn waits_stay_within_bounds(
            base in 1u64..2_000,
            extra in 0u64..5_000,
            events in proptest::collection::vec((0u8..3, proptest::bool::ANY), 0..200),
        ) {
            let (base, max) = (Duration::from_millis(base), Duration::from_millis(base + extra));
            let mut t = TipPolling::new(base, max);
            for (kind, records) in events {
                match kind {
                    0 => t.throttled(),
                    1 => {
                        let w = t.after_page(true, records);
                        proptest::prop_assert!(w >= base && w <= max, "{w:?}");
                    }
                    _ => proptest::prop_assert_eq!(t.after_page(false, records), Duration::ZERO),
                }
            }
        }
    }
}
