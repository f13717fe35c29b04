//! Enhanced fan-out: delivery across a split, a shard ended by its subscription's children,
//! merges of quiet shards, idle shards that do not list the stream.

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{
    Pipeline, check_sequence, http_get, metric_with, until_received,
};
use kinesis_operator_tests::wait_for;

use super::{Result, split_in_half, until_owned};

#[tokio::test]
async fn enhanced_fan_out_delivers_every_record_and_follows_a_split() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker("w", &app.address, &["--consumer-mode", "enhanced-fan-out"])?;
    until_owned(&p, "w owns both shards", |o| {
        o.len() == 2 && o.iter().all(|w| w == "w")
    })
    .await?;
    let keys = 8;
    p.put_sequence(keys, 0, 10).await?;
    until_received(&[app.out.as_path()], keys * 10).await?;
    split_in_half(&p, "shardId-000000000000").await?;
    let kinesis = p.env.kinesis().await;
    p.put_sequence(keys, 10, 10).await?;
    let got = until_received(&[app.out.as_path()], keys * 20).await?;
    check_sequence(&got, keys, 20)?;
    let shards: std::collections::BTreeSet<&str> = got.iter().map(|r| r.shard.as_str()).collect();
    assert!(
        shards.contains("shardId-000000000002") || shards.contains("shardId-000000000003"),
        "records from the split's children: {shards:?}"
    );
    let lines = app.proc.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shard-ended shardId-000000000000")),
        "{lines:?}"
    );
    let (_, page) = http_get(&w.admin, "/metrics").await?;
    assert!(page.contains(r#"api="SubscribeToShard""#), "{page}");
    // Polling only for the last records of the one shard that ended (kinesis-mock sends no
    // end event): a few GetRecords calls, not a read loop.
    let polls = metric_with(&page, r#"api="GetRecords""#);
    assert!(
        polls <= 5.0,
        "no polling but the ended shard's drain ({polls}): {page}"
    );
    let consumers = kinesis
        .list_stream_consumers()
        .stream_arn(
            kinesis
                .describe_stream_summary()
                .stream_name(&p.stream)
                .send()
                .await?
                .stream_description_summary
                .ok_or("no summary")?
                .stream_arn,
        )
        .send()
        .await?;
    assert!(
        consumers
            .consumers()
            .iter()
            .any(|c| c.consumer_name() == p.app),
        "consumer registered under the application name"
    );
    drop(w);
    p.cleanup().await
}

/// Issue 30: a fan-out shard ends on the event that carries its children, as Kinesis sends
/// it at a closed shard's end, with no listing and no polling (the safety-net listing is 5
/// minutes away). kinesis-mock sends no children: the proxy adds them, as Kinesis would, to
/// the first event at the tip after the split. Every record before and after the split
/// delivered, per key in order.
#[tokio::test]
async fn a_fan_out_shard_ends_on_the_event_carrying_its_children() -> Result<()> {
    use kinesis_operator_tests::faults::FaultProxy;
    let p = Pipeline::new(2).await?;
    let proxy = FaultProxy::start(p.env.kinesis_endpoint.trim_start_matches("http://")).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker(
        "w",
        &app.address,
        &[
            "--consumer-mode",
            "enhanced-fan-out",
            "--kinesis-endpoint",
            &proxy.endpoint,
            "--fan-out-end-check-ms",
            "300000",
        ],
    )?;
    until_owned(&p, "w owns both shards", |o| {
        o.len() == 2 && o.iter().all(|w| w == "w")
    })
    .await?;
    let keys = 8;
    p.put_sequence(keys, 0, 10).await?;
    until_received(&[app.out.as_path()], keys * 10).await?;
    split_in_half(&p, "shardId-000000000000").await?;
    proxy.end_shard(
        "shardId-000000000000",
        &["shardId-000000000002".into(), "shardId-000000000003".into()],
    );
    wait_for("the parent ended", DEADLINE, POLL, || async {
        app.proc
            .lines()
            .iter()
            .any(|l| l.starts_with("shard-ended shardId-000000000000"))
            .then_some(())
    })
    .await?;
    p.put_sequence(keys, 10, 10).await?;
    let got = until_received(&[app.out.as_path()], keys * 20).await?;
    check_sequence(&got, keys, 20)?;
    assert!(proxy.children_sent() >= 1, "the end came from the children");
    let (_, page) = http_get(&w.admin, "/metrics").await?;
    let polls = metric_with(&page, r#"api="GetRecords""#);
    assert!(
        polls == 0.0,
        "the parent's end was read from its subscription, not drained by polling: {polls}"
    );
    drop(w);
    p.cleanup().await
}

/// Issue 10, item 4: with enhanced fan-out, a shard's end must come from the stream, not be
/// guessed from ListShards after an empty event at the tip. Eight quiet shards; every
/// ListShards takes 3 s (a proxy), so a reader checking whether its shard closed usually
/// has that answer in flight when a record is put to the shard and the shard is merged. The
/// record came after the subscription's last event: it must still be delivered, before
/// `SHARD_END`. On the code before, such records were lost and SHARD_END checkpointed past
/// them.
#[tokio::test]
async fn fan_out_merges_of_quiet_shards_lose_no_record_put_just_before_the_close() -> Result<()> {
    use kinesis_operator_tests::faults::{Action, FaultProxy, Rule};
    let p = Pipeline::new(8).await?;
    let proxy = FaultProxy::start(p.env.kinesis_endpoint.trim_start_matches("http://")).await?;
    let _slow = proxy.add(Rule::new(
        &["x-amz-target: kinesis_20131202.listshards"],
        Action::Delay(std::time::Duration::from_secs(3)),
    ));
    let app = p.app("a", &[]).await?;
    let _w = p.worker(
        "w",
        &app.address,
        &[
            "--consumer-mode",
            "enhanced-fan-out",
            "--kinesis-endpoint",
            &proxy.endpoint,
        ],
    )?;
    wait_for("8 processors subscribed", DEADLINE, POLL, || async {
        (app.said("initialize ").len() >= 8).then_some(())
    })
    .await?;
    let kinesis = p.env.kinesis().await;
    let shards = kinesis.list_shards().stream_name(&p.stream).send().await?;
    let start_of = |id: &str| -> Result<String> {
        Ok(shards
            .shards()
            .iter()
            .find(|s| s.shard_id() == id)
            .and_then(|s| s.hash_key_range())
            .ok_or("no hash range")?
            .starting_hash_key()
            .to_string())
    };
    for pair in 0..4 {
        let (a, b) = (
            format!("shardId-{:012}", 2 * pair),
            format!("shardId-{:012}", 2 * pair + 1),
        );
        for (k, shard) in [(2 * pair, &a), (2 * pair + 1, &b)] {
            kinesis
                .put_record()
                .stream_name(&p.stream)
                .partition_key(format!("key-{k}"))
                .explicit_hash_key(start_of(shard)?)
                .data(aws_sdk_kinesis::primitives::Blob::new(format!("key-{k}:0")))
                .send()
                .await?;
        }
        kinesis
            .merge_shards()
            .stream_name(&p.stream)
            .shard_to_merge(&a)
            .adjacent_shard_to_merge(&b)
            .send()
            .await?;
        p.env.wait_stream_active(&p.stream).await?;
    }
    let got = until_received(&[app.out.as_path()], 8).await?;
    check_sequence(&got, 8, 1)?;
    wait_for("every merged parent ended", DEADLINE, POLL, || async {
        (app.said("shard-ended ").len() >= 8).then_some(())
    })
    .await?;
    eprintln!("ListShards calls held 3 s each: {}", proxy.injected());
    p.cleanup().await
}

/// Issues 13 and 30: with enhanced fan-out, idle shards at the tip do not list the stream to
/// learn whether they closed (Kinesis ends a shard's subscription with its children); only a
/// safety net asks one shared view per worker, every 5 minutes by default. Eight idle
/// shards, shard sync every 60 s: ListShards calls over 25 s counted from the worker's
/// metrics (issue 13's shared view: one per 10 s, 2–3 here; before it, ≈ 8 × 12 / 2 = 48;
/// now none, one allowed for the worker's own shard sync).
#[tokio::test]
async fn idle_fan_out_shards_do_not_list_the_stream() -> Result<()> {
    let mut p = Pipeline::new(8).await?;
    p.test_timings = false;
    let app = p.app("a", &[]).await?;
    let w = p.worker(
        "w",
        &app.address,
        &[
            "--consumer-mode",
            "enhanced-fan-out",
            "--failover-time-ms",
            "3000",
            "--scan-interval-ms",
            "250",
            "--shard-sync-interval-ms",
            "60000",
        ],
    )?;
    wait_for("8 processors subscribed", DEADLINE, POLL, || async {
        (app.said("initialize ").len() >= 8).then_some(())
    })
    .await?;
    let list_shards = |page: &str| metric_with(page, r#"api="ListShards""#);
    let (_, before) = http_get(&w.admin, "/metrics").await?;
    // The measured window itself.
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    let (_, after) = http_get(&w.admin, "/metrics").await?;
    let calls = list_shards(&after) - list_shards(&before);
    eprintln!("ListShards calls in 25 s with 8 idle fan-out shards: {calls}");
    assert!(
        calls <= 1.0,
        "idle fan-out shards do not relist the stream: {calls} calls"
    );
    p.cleanup().await
}
