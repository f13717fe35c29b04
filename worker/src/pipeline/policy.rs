//! What to do with a batch the app failed: retry it, split it (bisect), or send it to the
//! on-failure destination; which records are too old for the app ([`stale_front`]). Pure:
//! the shard task asks [`Plan`] what to deliver next and tells it how the call went.
//!
//! # Guarantees
//! - Every record of a batch ends exactly once, in shard order, either acknowledged by the
//!   app or handed to the destination (proptest `every_record_ends_once_in_order`).
//! - Without a destination nothing is ever given up: a failing batch is retried (or split)
//!   forever.
//! - With bisect, a segment of more than one record is split on failure and never sent to
//!   the destination: only a record that fails alone `max_attempts` times goes there, so a
//!   poison record does not take its good neighbours with it.

use std::collections::VecDeque;
use std::time::Duration;

/// The settings the plan follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailurePolicy {
    /// Give a segment to the destination after this many failed calls (only with a
    /// destination; `None`: retry forever).
    pub max_attempts: Option<u32>,
    /// Split a failing segment of more than one record in halves before retrying.
    pub bisect: bool,
    /// An on-failure destination is configured.
    pub destination: bool,
}

/// Records `start..end` of a batch and how many failed calls they were part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First record (index into the batch).
    pub start: usize,
    /// One past the last record.
    pub end: usize,
    /// Failed calls that carried these records.
    pub failures: u32,
    /// Failed calls of this very segment (since it was last split): what `max_attempts`
    /// counts.
    pub own_failures: u32,
}

impl Segment {
    /// Records in the segment.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// What [`Plan::failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The same segment again, after a backoff.
    Retry,
    /// The segment was split in halves; the first is next.
    Bisected,
    /// Give this segment to the destination: it failed `max_attempts` times.
    Destine(Segment),
}

/// The remaining work on one batch.
#[derive(Debug, Clone)]
pub struct Plan {
    policy: FailurePolicy,
    queue: VecDeque<Segment>,
}

impl Plan {
    /// A plan for a batch of `len` records.
    pub fn new(len: usize, policy: FailurePolicy) -> Self {
        let mut queue = VecDeque::new();
        if len > 0 {
            queue.push_back(Segment {
                start: 0,
                end: len,
                failures: 0,
                own_failures: 0,
            });
        }
        Self { policy, queue }
    }

    /// The segment to deliver next; `None`: the batch is done.
    pub fn next(&self) -> Option<Segment> {
        self.queue.front().copied()
    }

    /// The app acknowledged the segment [`Plan::next`] returned.
    pub fn acked(&mut self) {
        self.queue.pop_front();
    }

    /// The app acknowledged the first `n` records of the next segment and failed the rest
    /// (a partial batch failure): the rest counts one failure.
    pub fn partly_acked(&mut self, n: usize) -> AfterFailure {
        if let Some(front) = self.queue.front_mut() {
            front.start = (front.start + n).min(front.end);
            if front.is_empty() {
                self.queue.pop_front();
                return AfterFailure::Retry;
            }
        }
        self.failed()
    }

    /// The app failed the segment [`Plan::next`] returned.
    pub fn failed(&mut self) -> AfterFailure {
        let Some(mut seg) = self.queue.pop_front() else {
            return AfterFailure::Retry;
        };
        seg.failures = seg.failures.saturating_add(1);
        seg.own_failures = seg.own_failures.saturating_add(1);
        if self.policy.bisect && seg.len() > 1 {
            let mid = seg.start + seg.len() / 2;
            let half = Segment {
                own_failures: 0,
                ..seg
            };
            self.queue.push_front(Segment { start: mid, ..half });
            self.queue.push_front(Segment { end: mid, ..half });
            return AfterFailure::Bisected;
        }
        if self.policy.destination
            && self
                .policy
                .max_attempts
                .is_some_and(|m| seg.own_failures >= m)
        {
            return AfterFailure::Destine(seg);
        }
        self.queue.push_front(seg);
        AfterFailure::Retry
    }

    /// The records `n` at the front of the next segment are too old for the app (maximum
    /// record age): they leave the plan as a segment for the destination.
    pub fn expire_front(&mut self, n: usize) -> Option<Segment> {
        let front = self.queue.front_mut()?;
        let n = n.min(front.len());
        if n == 0 {
            return None;
        }
        let out = Segment {
            end: front.start + n,
            ..*front
        };
        front.start += n;
        if front.is_empty() {
            self.queue.pop_front();
        }
        Some(out)
    }
}

/// How many records at the front of a segment are older than `max_age` at `now_ms` (Kinesis's
/// time), given their arrival times in order (a record without one is not too old): those go
/// to the destination, not to the app ([`Plan::expire_front`]).
pub fn stale_front(
    arrivals_ms: impl IntoIterator<Item = Option<i64>>,
    now_ms: i64,
    max_age: Duration,
) -> usize {
    let limit = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    arrivals_ms
        .into_iter()
        .take_while(|t| t.is_some_and(|t| now_ms - t > limit))
        .count()
}

/// After a failure of `seg` (that [`Plan::partly_acked`] answered with `after`) and its
/// backoff: `next` ([`Plan::next`]) when it holds the very same records, so the same request
/// goes again; `None` when the plan split or shortened the segment (or gave it up), so what
/// is left is encoded anew.
pub fn same_records(after: AfterFailure, seg: Segment, next: Option<Segment>) -> Option<Segment> {
    match (after, next) {
        (AfterFailure::Retry, Some(next)) if (next.start, next.end) == (seg.start, seg.end) => {
            Some(next)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: FailurePolicy = FailurePolicy {
        max_attempts: Some(2),
        bisect: true,
        destination: true,
    };

    /// Runs a plan over `len` records where the records in `poison` always fail; returns
    /// (acknowledged calls, destined segments).
    fn run(len: usize, poison: &[usize], policy: FailurePolicy) -> (Vec<Segment>, Vec<Segment>) {
        let mut plan = Plan::new(len, policy);
        let (mut acked, mut destined) = (Vec::new(), Vec::new());
        let mut calls = 0;
        while let Some(seg) = plan.next() {
            calls += 1;
            assert!(calls < 100_000, "no progress");
            if poison.iter().any(|p| (seg.start..seg.end).contains(p)) {
                if let AfterFailure::Destine(s) = plan.failed() {
                    destined.push(s);
                }
            } else {
                plan.acked();
                acked.push(seg);
            }
        }
        (acked, destined)
    }

    #[test]
    fn only_a_run_of_old_records_at_the_front_is_stale() {
        let age = Duration::from_secs(60);
        let now = 1_000_000;
        let old = Some(now - 60_001);
        let young = Some(now - 1_000);
        assert_eq!(stale_front([old, old, young, old], now, age), 2);
        // Exactly the maximum age is not older than it.
        assert_eq!(stale_front([Some(now - 60_000)], now, age), 0);
        // No arrival time: not too old, and it ends the run.
        assert_eq!(stale_front([None, old], now, age), 0);
        assert_eq!(stale_front(Vec::new(), now, age), 0);
        assert_eq!(stale_front([old], now, Duration::MAX), 0);
    }

    #[test]
    fn only_the_very_same_records_are_sent_again_unchanged() {
        // Retried forever (no destination, no bisect).
        let mut plan = Plan::new(10, FailurePolicy::default());
        let (Some(seg), after) = (plan.next(), plan.failed()) else {
            unreachable!("a plan of ten records")
        };
        assert_eq!(after, AfterFailure::Retry);
        let Some(next) = plan.next() else {
            unreachable!("retried")
        };
        assert_eq!((next.start, next.end, next.failures), (0, 10, 1));
        assert_eq!(same_records(after, seg, Some(next)), Some(next));
        // Acknowledged in part: what is left is new.
        let after = plan.partly_acked(4);
        assert_eq!(after, AfterFailure::Retry);
        let rest = plan.next();
        assert_eq!(rest.map(|s| (s.start, s.end)), Some((4, 10)));
        assert_eq!(same_records(after, next, rest), None);
        // Split in halves, or given up: new as well.
        assert_eq!(same_records(AfterFailure::Bisected, seg, Some(seg)), None);
        assert_eq!(
            same_records(AfterFailure::Destine(seg), seg, Some(seg)),
            None
        );
        assert_eq!(same_records(AfterFailure::Retry, seg, None), None);
    }

    #[test]
    fn a_poison_record_among_10000_goes_alone_to_the_destination() {
        let (acked, destined) = run(10_000, &[4_321], ALL);
        assert_eq!(
            destined,
            vec![Segment {
                start: 4_321,
                end: 4_322,
                failures: 15, // 13 halvings to the record, then its own 2
                own_failures: 2,
            }]
        );
        assert_eq!(acked.iter().map(Segment::len).sum::<usize>(), 9_999);
    }

    #[test]
    fn without_bisect_the_whole_batch_goes_after_max_attempts() {
        let policy = FailurePolicy {
            bisect: false,
            ..ALL
        };
        let (acked, destined) = run(10, &[3], policy);
        assert!(acked.is_empty());
        assert_eq!(destined.len(), 1);
        assert_eq!(
            (destined[0].start, destined[0].end, destined[0].failures),
            (0, 10, 2)
        );
    }

    #[test]
    fn without_a_destination_nothing_is_given_up() {
        for bisect in [false, true] {
            let mut plan = Plan::new(
                4,
                FailurePolicy {
                    max_attempts: Some(1),
                    bisect,
                    destination: false,
                },
            );
            for _ in 0..50 {
                assert!(
                    !matches!(plan.failed(), AfterFailure::Destine(_)),
                    "gave up without a destination"
                );
                assert!(plan.next().is_some());
            }
        }
    }

    #[test]
    fn a_partial_failure_retries_from_the_failed_record() {
        let mut plan = Plan::new(10, FailurePolicy::default());
        assert_eq!(plan.partly_acked(4), AfterFailure::Retry);
        assert_eq!(
            plan.next(),
            Some(Segment {
                start: 4,
                end: 10,
                failures: 1,
                own_failures: 1,
            })
        );
        plan.acked();
        assert_eq!(plan.next(), None);
    }

    #[test]
    fn expired_records_leave_from_the_front() {
        let mut plan = Plan::new(5, ALL);
        let s = plan.expire_front(2);
        assert_eq!(s.map(|s| (s.start, s.end)), Some((0, 2)));
        assert_eq!(plan.next().map(|s| (s.start, s.end)), Some((2, 5)));
        assert_eq!(plan.expire_front(0), None);
        assert_eq!(plan.expire_front(9).map(|s| (s.start, s.end)), Some((2, 5)));
        assert_eq!(plan.next(), None);
    }

    proptest! {
        #[test]
        fn every_record_ends_once_in_order(
            len in 1usize..300,
            poison in proptest::collection::vec(0usize..300, 0..6),
            max in 1u32..4,
            bisect: bool,
        ) {
            let policy = FailurePolicy { max_attempts: Some(max), bisect, destination: true };
            let (acked, destined) = run(len, &poison, policy);
            let mut ends: Vec<Segment> = acked.iter().chain(&destined).copied().collect();
            ends.sort_by_key(|s| s.start);
            let mut at = 0;
            for s in &ends {
                prop_assert_eq!(s.start, at, "a gap or an overlap");
                at = s.end;
            }
            prop_assert_eq!(at, len);
            // Only segments holding a poison record are given up; with bisect only lone ones.
            for s in &destined {
                prop_assert!(poison.iter().any(|p| (s.start..s.end).contains(p)));
                if bisect {
                    prop_assert_eq!(s.len(), 1);
                }
            }
            // Acknowledged in shard order.
            prop_assert!(acked.windows(2).all(|w| w[0].end <= w[1].start));
        }
    }
}
