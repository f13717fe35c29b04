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
