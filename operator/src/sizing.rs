//! How many workers a stream calls for.

use crate::crd::KinesisApplicationSpec;

/// Workers for `open_shards` open shards: `spec.replicas` when set (kubectl scale, an
/// autoscaler); otherwise `ceil(open / shardsPerWorker)` clamped to `[minWorkers,
/// maxWorkers]`, and never more than the open shards (a worker without a shard only waits).
pub fn desired_workers(spec: &KinesisApplicationSpec, open_shards: i32) -> i32 {
    if let Some(r) = spec.replicas {
        return r.max(0);
    }
    let s = &spec.scaling;
    let per = s.shards_per_worker.max(1);
    // Rounded up without `open + per - 1`, which overflows for a huge shardsPerWorker.
    let open = open_shards.max(0);
    let wanted = open / per + i32::from(open % per != 0);
    let clamped = wanted.max(s.min_workers.max(0));
    let clamped = s.max_workers.map_or(clamped, |m| clamped.min(m.max(1)));
    clamped.min(open_shards.max(1))
}

/// With `scaling.mode: Lag`, workers are added at most this often: the new ones take leases
/// and drain the backlog before the lag can show whether more are needed.
pub const SCALE_UP_EVERY_S: i64 = 30;

/// What a lag-following size reads (times in epoch seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagInputs {
    /// The workers wanted now (the last decision), if any.
    pub current: Option<i32>,
    /// The fewest: max(minWorkers, ceil(open / shardsPerWorker)).
    pub packed: i32,
    /// The most: min(maxWorkers, open shards).
    pub spread: i32,
    /// The largest lag the owners report.
    pub max_lag_ms: Option<i64>,
    /// `targetLagSeconds` in ms.
    pub target_ms: i64,
    /// `scaleDownStabilizationSeconds`.
    pub stabilization_s: i64,
    /// Now.
    pub now_s: i64,
    /// When the count last changed.
    pub last_scale_s: Option<i64>,
    /// Since when the lag has stayed under half the target.
    pub low_since_s: Option<i64>,
}

/// Why a lag-following size moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagMove {
    /// The lag (ms) was above the target.
    Up(i64),
    /// The lag stayed under half the target for the stabilization window.
    Down,
}

/// A lag-following size: the workers, the low-lag start to remember, and why it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagScaling {
    /// The workers.
    pub desired: i32,
    /// Since when the lag has stayed under half the target (to write back).
    pub low_since_s: Option<i64>,
    /// Why it moved, if it did.
    pub moved: Option<LagMove>,
}

/// Follows the lag between packed and spread (pure).
///
/// # Guarantees
/// - Up: doubled (at least one more, at most `spread`) when the largest lag is above the
///   target, at most every [`SCALE_UP_EVERY_S`].
/// - Down: halved (at least `packed`) only once the lag stayed at or under half the target for
///   the whole stabilization window, which then starts again: no flapping between the two
///   (the band between half the target and the target moves nothing and resets the window).
/// - An unknown lag (no owner reports one, e.g. while leases move or pods crash) moves
///   nothing and starts the window again: the workers are halved only after a whole window of
///   lag seen low.
pub fn lag_workers(i: &LagInputs) -> LagScaling {
    let hi = i.spread.max(1);
    let lo = i.packed.clamp(1, hi);
    let current = i.current.unwrap_or(lo).clamp(lo, hi);
    let stay = |low_since_s| LagScaling {
        desired: current,
        low_since_s,
        moved: None,
    };
    match i.max_lag_ms {
        Some(lag) if lag > i.target_ms => {
            let cooled = i
                .last_scale_s
                .is_none_or(|t| i.now_s - t >= SCALE_UP_EVERY_S);
            let up = current.saturating_mul(2).max(current + 1).min(hi);
            if cooled && up > current {
                LagScaling {
                    desired: up,
                    low_since_s: None,
                    moved: Some(LagMove::Up(lag)),
                }
            } else {
                stay(None)
            }
        }
        Some(lag) if lag.saturating_mul(2) <= i.target_ms => {
            let since = i.low_since_s.unwrap_or(i.now_s);
            if i.now_s - since >= i.stabilization_s && current > lo {
                LagScaling {
                    desired: (current / 2 + current % 2).max(lo),
                    low_since_s: Some(i.now_s),
                    moved: Some(LagMove::Down),
                }
            } else {
                stay(Some(since))
            }
        }
        Some(_) | None => stay(None),
    }
}

/// The annotation recording the `spec.replicas` the operator itself wrote (sized to the
/// shards): while `spec.replicas` still equals it, the object is sized by the operator.
pub const SIZED_ANNOTATION: &str = "kinesis-operator.io/sized-replicas";

/// Who decides the worker count, and what the operator must write for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// The Deployment's replicas.
    pub desired: i32,
    /// Write `spec.replicas` (and the annotation) to this sized count: the scale
    /// subresource (`kubectl scale`, HPA, KEDA) reads `.spec.replicas`, which must exist.
    pub write_sized: Option<i32>,
    /// Someone else set `spec.replicas` (kubectl scale, an autoscaler): drop the annotation.
    pub released: bool,
}

/// Decides the worker count from `spec.replicas`, the annotation the operator wrote last
/// (`sized`), and what the shards call for (`for_shards`).
///
/// - `spec.replicas` unset: sized; write it, so `/scale` reads the sized count.
/// - `spec.replicas` equal to the operator's last write: still sized; follow the shards.
/// - anything else: a fixed count set by someone else; the operator never overrides it
///   (remove `spec.replicas` to hand sizing back to the operator).
pub fn replicas(spec_replicas: Option<i32>, sized: Option<i32>, for_shards: i32) -> Replicas {
    match (spec_replicas, sized) {
        (None, _) => Replicas {
            desired: for_shards,
            write_sized: Some(for_shards),
            released: false,
        },
        (Some(r), Some(s)) if r == s => Replicas {
            desired: for_shards,
            write_sized: (r != for_shards).then_some(for_shards),
            released: false,
        },
        (Some(r), s) => Replicas {
            desired: r.max(0),
            write_sized: None,
            released: s.is_some(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst, then quiet: 1 → 2 → 4 at most every 30 s while the lag is above the target,
    /// nothing in the band, back down by halves once the lag stayed low for the window.
    #[test]
    fn the_lag_doubles_the_workers_and_a_quiet_window_halves_them() {
        let at = |now_s, current, lag: Option<i64>, last, since| LagInputs {
            current: Some(current),
            packed: 1,
            spread: 4,
            max_lag_ms: lag,
            target_ms: 10_000,
            stabilization_s: 60,
            now_s,
            last_scale_s: last,
            low_since_s: since,
        };
        let up = lag_workers(&at(100, 1, Some(30_000), Some(0), None));
        assert_eq!((up.desired, up.moved), (2, Some(LagMove::Up(30_000))));
        // Within 30 s of that: wait for the new worker to show.
        assert_eq!(
            lag_workers(&at(110, 2, Some(30_000), Some(100), None)).desired,
            2
        );
        assert_eq!(
            lag_workers(&at(130, 2, Some(30_000), Some(100), None)).desired,
            4
        );
        // Never past one per shard.
        assert_eq!(
            lag_workers(&at(200, 4, Some(99_000), Some(130), None)).moved,
            None
        );
        // In the band (5-10 s): nothing moves and the quiet window starts over.
        let band = lag_workers(&at(300, 4, Some(7_000), Some(130), Some(250)));
        assert_eq!((band.desired, band.low_since_s), (4, None));
        // Low: the window starts, and only a full window halves.
        let low = lag_workers(&at(310, 4, Some(1_000), Some(130), None));
        assert_eq!((low.desired, low.low_since_s), (4, Some(310)));
        assert_eq!(
            lag_workers(&at(369, 4, Some(1_000), Some(130), Some(310))).desired,
            4
        );
        let down = lag_workers(&at(370, 4, Some(1_000), Some(130), Some(310)));
        assert_eq!(
            (down.desired, down.moved, down.low_since_s),
            (2, Some(LagMove::Down), Some(370))
        );
        assert_eq!(
            lag_workers(&at(430, 2, Some(0), Some(370), Some(370))).desired,
            1
        );
        // Never under packed; an unknown lag starts the window again.
        assert_eq!(
            lag_workers(&at(999, 1, Some(0), Some(430), Some(430))).moved,
            None
        );
        let unknown = lag_workers(&at(500, 2, None, Some(430), Some(431)));
        assert_eq!((unknown.desired, unknown.low_since_s), (2, None));
        // No decision yet: packed.
        let first = LagInputs {
            current: None,
            ..at(0, 0, None, None, None)
        };
        assert_eq!(lag_workers(&first).desired, 1);
    }

    #[test]
    fn any_shards_per_worker_sizes_without_overflow() {
        let spec = |per: i32| -> KinesisApplicationSpec {
            serde_json::from_value(serde_json::json!({
                "stream": {"name": "s"},
                "scaling": {"shardsPerWorker": per},
                "template": {"spec": {"containers": [{"name": "app"}]}}
            }))
            .unwrap_or_else(|e| panic!("spec: {e}"))
        };
        assert_eq!(desired_workers(&spec(i32::MAX), i32::MAX), 1);
        assert_eq!(desired_workers(&spec(i32::MAX), 10_000), 1);
        assert_eq!(desired_workers(&spec(3), 10), 4);
        assert_eq!(desired_workers(&spec(1), i32::MAX), i32::MAX);
        assert_eq!(desired_workers(&spec(2), 0), 1);
    }

    #[test]
    fn the_operator_sizes_until_someone_else_sets_the_replicas() {
        // Unset: sized, and written for the scale subresource.
        assert_eq!(
            replicas(None, None, 4),
            Replicas {
                desired: 4,
                write_sized: Some(4),
                released: false
            }
        );
        // Its own write, shards unchanged: nothing to do.
        assert_eq!(
            replicas(Some(4), Some(4), 4),
            Replicas {
                desired: 4,
                write_sized: None,
                released: false
            }
        );
        // Its own write, the stream resharded: follow.
        assert_eq!(
            replicas(Some(4), Some(4), 8),
            Replicas {
                desired: 8,
                write_sized: Some(8),
                released: false
            }
        );
        // kubectl scale / an HPA changed it: theirs from now on.
        assert_eq!(
            replicas(Some(2), Some(4), 8),
            Replicas {
                desired: 2,
                write_sized: None,
                released: true
            }
        );
        // Set in the manifest from the start.
        assert_eq!(
            replicas(Some(3), None, 8),
            Replicas {
                desired: 3,
                write_sized: None,
                released: false
            }
        );
        assert_eq!(replicas(Some(-1), None, 8).desired, 0);
    }

    fn spec(per: i32, min: i32, max: Option<i32>, replicas: Option<i32>) -> KinesisApplicationSpec {
        let mut s: KinesisApplicationSpec = match serde_json::from_value(serde_json::json!({
            "stream": {"name": "s"},
            "template": {"spec": {"containers": [{"name": "app"}]}}
        })) {
            Ok(s) => s,
            Err(e) => panic!("test spec: {e}"),
        };
        s.scaling.shards_per_worker = per;
        s.scaling.min_workers = min;
        s.scaling.max_workers = max;
        s.replicas = replicas;
        s
    }

    #[test]
    fn workers_follow_the_open_shards() {
        let one_each = spec(1, 1, None, None);
        assert_eq!(desired_workers(&one_each, 4), 4);
        assert_eq!(desired_workers(&one_each, 8), 8);
        assert_eq!(desired_workers(&spec(3, 1, None, None), 8), 3);
        assert_eq!(desired_workers(&spec(1, 1, Some(5), None), 8), 5);
        // minWorkers, but never more than the open shards.
        assert_eq!(desired_workers(&spec(1, 6, None, None), 4), 4);
        assert_eq!(desired_workers(&spec(4, 2, None, None), 4), 2);
        // A stream without open shards yet: one worker waits for them.
        assert_eq!(desired_workers(&one_each, 0), 1);
        // An explicit replica count (the scale subresource) wins.
        assert_eq!(desired_workers(&spec(1, 1, None, Some(2)), 8), 2);
    }
}
