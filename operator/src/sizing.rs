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
    let wanted = (open_shards.max(0) + per - 1) / per;
    let clamped = wanted.max(s.min_workers.max(0));
    let clamped = s.max_workers.map_or(clamped, |m| clamped.min(m.max(1)));
    clamped.min(open_shards.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
