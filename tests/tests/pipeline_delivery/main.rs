//! The record pipeline end to end on the local servers: `kinesis-worker run` processes
//! delivering to `record-app` processes over Unix sockets.
//!
//! One test binary, its tests in a file per topic under `pipeline_delivery/` (a test is
//! `pipeline_delivery::<topic>::<test>`); the helpers they share are here.

mod admin;
mod aggregation;
mod batching;
mod delivery;
mod destinations;
mod fan_out;
mod resharding;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::Pipeline;
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Owners of the stream's leases, by shard.
async fn owners(p: &Pipeline) -> Result<std::collections::BTreeMap<String, Option<String>>> {
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    let snap = table.scan().await?;
    Ok(snap
        .leases
        .into_iter()
        .map(|l| (l.shard_id, l.owner))
        .collect())
}

async fn until_owned(p: &Pipeline, what: &str, check: impl Fn(&[String]) -> bool) -> Result<()> {
    wait_for(what, DEADLINE, POLL, || async {
        let o = owners(p).await.ok()?;
        let list: Vec<String> = o.values().map(|v| v.clone().unwrap_or_default()).collect();
        (!list.is_empty() && check(&list)).then_some(())
    })
    .await?;
    Ok(())
}

/// The hash key in the middle of `shard`'s range.
async fn middle_of(p: &Pipeline, shard: &str) -> Result<String> {
    let kinesis = p.env.kinesis().await;
    let out = kinesis.list_shards().stream_name(&p.stream).send().await?;
    let s = out
        .shards()
        .iter()
        .find(|s| s.shard_id() == shard)
        .ok_or_else(|| format!("no shard {shard}"))?;
    let range = s.hash_key_range().ok_or("no hash range")?;
    let start: u128 = range.starting_hash_key().parse()?;
    let end: u128 = range.ending_hash_key().parse()?;
    Ok((start + (end - start) / 2).to_string())
}

/// Splits `shard` at the middle of its hash key range and waits until the stream is ACTIVE.
async fn split_in_half(p: &Pipeline, shard: &str) -> Result<()> {
    let middle = middle_of(p, shard).await?;
    p.env
        .kinesis()
        .await
        .split_shard()
        .stream_name(&p.stream)
        .shard_to_split(shard)
        .new_starting_hash_key(middle)
        .send()
        .await?;
    p.env.wait_stream_active(&p.stream).await
}

/// The lease table's checkpoint of the stream's only shard, as `sequence` (or the checkpoint's
/// name when it is not a sequence number).
async fn only_checkpoint(p: &Pipeline, application: &str) -> Result<String> {
    use kinesis_worker::lease::checkpoint::Checkpoint;
    let table = LeaseTable::open(p.env.dynamodb().await, application, false).await?;
    let snap = table.scan().await?;
    Ok(match snap.leases.first().map(|l| l.checkpoint.clone()) {
        Some(Checkpoint::Sequence { sequence, .. }) => sequence.as_str().to_string(),
        other => format!("{other:?}"),
    })
}
