//! What the status says about the shards, bounded (pure): the object's size must not grow with
//! the stream. A status entry per shard is ≈ 150 bytes, and etcd refuses objects past
//! 1.5 MiB, near 10,000 shards; every status write would also cost its whole size. So the
//! status lists at most [`SHARD_STATUS_LIMIT`] shards — all of them in a small stream, else the
//! ones that most need a look (no owner, then the most lagging) — and counts the rest; the
//! full per-shard view is `kinesis-worker status` and the workers' metrics.

use std::cmp::Reverse;

use kinesis_lease::discovery::ShardInfo;
use kinesis_lease::status::{ShardState, ShardView};

use crate::crd::ShardStatus;

/// Entries in `status.shardStatus` at most.
pub const SHARD_STATUS_LIMIT: usize = 20;

/// The shard part of the status.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShardReport {
    /// The shards listed: every open shard and every closed one not yet finished, in the
    /// stream's order if they fit in the limit, else the most concerning first.
    pub listed: Vec<ShardStatus>,
    /// Shards that would be listed but did not fit.
    pub omitted: usize,
    /// Of all listable shards, those with an owner.
    pub leased: usize,
    /// The largest lag of any listable shard.
    pub max_lag_ms: Option<i64>,
}

/// The report over `views` (one per shard of `shards`, in the same order), at most `limit`
/// entries.
pub fn shard_report(views: &[ShardView], shards: &[ShardInfo], limit: usize) -> ShardReport {
    let listable: Vec<&ShardView> = views
        .iter()
        .zip(shards)
        .filter(|(v, s)| !s.closed || (v.checkpoint.is_some() && v.state != ShardState::Finished))
        .map(|(v, _)| v)
        .collect();
    let leased = listable.iter().filter(|v| v.owner.is_some()).count();
    let max_lag_ms = listable.iter().filter_map(|v| v.lag_ms).max();
    let mut shown = listable.clone();
    if shown.len() > limit {
        // No owner first (nothing processes it), then the largest lag, then unknown lag.
        shown.sort_by_key(|v| {
            (
                v.owner.is_some(),
                Reverse(v.lag_ms.unwrap_or(-1)),
                v.shard_id.clone(),
            )
        });
        shown.truncate(limit);
    }
    ShardReport {
        listed: shown
            .iter()
            .map(|v| ShardStatus {
                shard_id: v.shard_id.clone(),
                owner: v.owner.clone(),
                checkpoint: v.checkpoint.as_ref().map(ToString::to_string),
                millis_behind_latest: v.lag_ms,
            })
            .collect(),
        omitted: listable.len() - shown.len(),
        leased,
        max_lag_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_lease::checkpoint::Checkpoint;

    fn shard(i: usize, closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: format!("shardId-{i:012}"),
            parents: Vec::new(),
            hash_range: ("0".into(), "1".into()),
            closed,
        }
    }

    fn view(i: usize, owner: Option<&str>, lag: Option<i64>, state: ShardState) -> ShardView {
        ShardView {
            shard_id: format!("shardId-{i:012}"),
            owner: owner.map(String::from),
            checkpoint: Some(Checkpoint::TrimHorizon),
            lag_ms: lag,
            stalled: false,
            failing: false,
            state,
        }
    }

    #[test]
    fn a_small_stream_is_listed_whole_in_its_order() {
        let shards: Vec<ShardInfo> = (0..4).map(|i| shard(i, false)).collect();
        let views: Vec<ShardView> = (0..4)
            .map(|i| view(i, Some("w"), Some(10 * i as i64), ShardState::Processing))
            .collect();
        let r = shard_report(&views, &shards, SHARD_STATUS_LIMIT);
        assert_eq!(r.listed.len(), 4);
        assert_eq!(r.listed[0].shard_id, "shardId-000000000000");
        assert_eq!((r.omitted, r.leased, r.max_lag_ms), (0, 4, Some(30)));
    }

    #[test]
    fn ten_thousand_shards_list_twenty_the_unowned_and_most_lagging_first() {
        let n = 10_000;
        let mut shards: Vec<ShardInfo> = (0..n).map(|i| shard(i, false)).collect();
        let mut views: Vec<ShardView> = (0..n)
            .map(|i| {
                view(
                    i,
                    Some("w"),
                    Some((i % 1000) as i64),
                    ShardState::Processing,
                )
            })
            .collect();
        views[5].owner = None;
        views[7].lag_ms = Some(1_000_000);
        // A finished closed shard is not listed at all.
        shards.push(shard(n, true));
        views.push(view(n, None, None, ShardState::Finished));
        let r = shard_report(&views, &shards, SHARD_STATUS_LIMIT);
        assert_eq!(r.listed.len(), 20);
        assert_eq!(r.omitted, n - 20);
        assert_eq!(r.leased, n - 1);
        assert_eq!(r.max_lag_ms, Some(1_000_000));
        assert_eq!(
            r.listed[0].shard_id, "shardId-000000000005",
            "no owner first"
        );
        assert_eq!(
            r.listed[1].shard_id, "shardId-000000000007",
            "then the most lagging"
        );
        let lags: Vec<i64> = r.listed[2..]
            .iter()
            .filter_map(|s| s.millis_behind_latest)
            .collect();
        assert_eq!(lags.len(), 18);
        assert!(
            lags.windows(2).all(|w| w[0] >= w[1]),
            "most lagging first: {lags:?}"
        );
        assert_eq!(
            (lags[0], lags[17]),
            (999, 998),
            "ten shards at 999 ms, then 998"
        );
        // Bounded: the status stays a few KB whatever the stream.
        let bytes = serde_json::to_string(&r.listed)
            .map(|s| s.len())
            .unwrap_or(0);
        assert!(bytes < 4096, "{bytes} bytes");
    }
}
