//! The reshard watch: between the periodic reconciles (every `--resync-seconds`, which read
//! the lease table and write the status), list each application's shards every
//! `--shard-poll-seconds` and reconcile the application at once when its open shards are no
//! longer what its last reconcile sized the workers to.
//!
//! Applications that read one stream through the same endpoints as the same identity share one
//! listing a poll ([`groups`]): in `operator` identity mode every application of a stream, in
//! `namespace-role` mode those of one namespace (their role). So twenty objects naming one
//! stream cost that stream one listing a poll, not twenty.
//!
//! Cost: one ListShards page per 1,000 shards of each *stream* a poll, at most
//! [`CONCURRENCY`] at once. Kinesis does not bill ListShards; its limit is per stream (1,000
//! calls/s in the current API reference, 100/s in older ones). 500 streams at a 5 s poll:
//! 100 calls/s in all and 0.2 a second per stream, however many applications read each; no
//! DynamoDB and no Kubernetes call. A reshard is followed within a poll plus one reconcile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use kinesis_lease::discovery::ShardInfo;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::controller::Context;
use crate::crd::KinesisApplication;

/// Shard listings in flight at once.
pub const CONCURRENCY: usize = 8;

/// Whether the stream was resharded since the last reconcile: its open shards (`shards`)
/// differ from what the reconcile sized to (`sized_to`). Nothing to compare before the first
/// healthy reconcile.
pub fn resharded(sized_to: Option<i32>, shards: &[ShardInfo]) -> bool {
    let open = shards.iter().filter(|s| !s.closed).count() as i32;
    sized_to.is_some_and(|n| n != open)
}

/// `apps` grouped by `key` (those with the same key share one listing), in key order; an
/// application without a key (no AWS call may be made for it) is left out.
pub fn groups<K: Ord, A>(apps: Vec<A>, key: impl Fn(&A) -> Option<K>) -> Vec<Vec<A>> {
    let mut by: std::collections::BTreeMap<K, Vec<A>> = std::collections::BTreeMap::new();
    for a in apps {
        if let Some(k) = key(&a) {
            by.entry(k).or_default().push(a);
        }
    }
    by.into_values().collect()
}

/// Polls every application in `store` every `every` (one listing per stream and identity:
/// [`groups`]), sending those whose stream was resharded to `trigger` (the controller
/// reconciles them). Runs until `trigger` closes.
pub async fn watch(
    store: Store<KinesisApplication>,
    ctx: Arc<Context>,
    every: Duration,
    trigger: UnboundedSender<ObjectRef<KinesisApplication>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if trigger.is_closed() {
            return;
        }
        let apps: Vec<Arc<KinesisApplication>> = store
            .state()
            .into_iter()
            .filter(|a| a.metadata.deletion_timestamp.is_none())
            .filter(|a| ctx.open_shards_seen(a).is_some())
            .collect();
        ctx.metrics.reshard_round();
        let groups = groups(apps, |a| match ctx.listing_key(a) {
            Ok(k) => Some(k),
            Err(refused) => {
                tracing::debug!(application = %a.name_any(), "reshard watch: not listed, no AWS call may be made for it: {refused}");
                None
            }
        });
        futures::stream::iter(groups)
            .for_each_concurrent(CONCURRENCY, |group| {
                let ctx = ctx.clone();
                let trigger = trigger.clone();
                async move {
                    let Some(first) = group.first() else { return };
                    let shards = match ctx.list_shards(first).await {
                        Ok(s) => s,
                        // The next reconcile reports it as a condition.
                        Err(e) => {
                            tracing::debug!(application = %first.name_any(), error = %e, "reshard watch: listing shards failed");
                            return;
                        }
                    };
                    for app in &group {
                        let noticed = resharded(ctx.open_shards_seen(app), &shards);
                        if noticed {
                            tracing::info!(application = %app.name_any(), namespace = ?app.namespace(), "stream resharded: reconciling now");
                            let _ = trigger.unbounded_send(ObjectRef::from_obj(&**app));
                        }
                        ctx.metrics.reshard_poll(noticed);
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: "s".into(),
            parents: Vec::new(),
            hash_range: ("0".into(), "1".into()),
            closed,
        }
    }

    #[test]
    fn applications_of_one_stream_and_identity_share_one_listing() {
        // (name, key): twenty objects on team B's stream, two of team A's, one refused.
        let mut apps: Vec<(String, Option<&str>)> = (0..20)
            .map(|i| (format!("b{i}"), Some("stream-b")))
            .collect();
        apps.push(("a1".into(), Some("stream-a")));
        apps.push(("a2".into(), Some("stream-a")));
        apps.push(("refused".into(), None));
        let g = groups(apps, |a| a.1);
        assert_eq!(g.len(), 2, "one listing per stream a poll");
        assert_eq!((g[0].len(), g[1].len()), (2, 20));
        assert!(!g.iter().flatten().any(|a| a.0 == "refused"));
    }

    #[test]
    fn only_a_change_of_open_shards_since_the_last_reconcile_counts() {
        let four_open = vec![shard(false); 4];
        assert!(!resharded(Some(4), &four_open));
        assert!(resharded(Some(2), &four_open));
        // A split: two parents closed, four children open, still "4 open" → nothing to do.
        let mut split = vec![shard(true); 2];
        split.extend(vec![shard(false); 4]);
        assert!(!resharded(Some(4), &split));
        assert!(resharded(Some(2), &split));
        // Never reconciled healthily: the controller's own reconcile comes first.
        assert!(!resharded(None, &four_open));
    }
}
