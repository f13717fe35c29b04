//! On-failure destinations (issue 15, policies 1 to 4): a batch given up, bisection down to a
//! poison record, a Kinesis stream as the destination, records past the maximum age, a partial
//! batch failure, a destination that is down.

use std::time::Duration;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{
    Pipeline, Received, http_get, metric, metric_with, received, until_received,
};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

use super::{Result, only_checkpoint, until_owned};

/// Records are passed over only into an on-failure destination (issue 15, policy 1):
/// `--max-attempts` alone is refused at start, naming the fix; with a destination the
/// given-up batch is in the queue, with its records, before the worker moves past it, and the
/// checkpoint moves past it only because the app had nothing pending before it.
#[tokio::test]
async fn a_batch_given_up_goes_to_the_destination_first_and_never_without_one() -> Result<()> {
    use kinesis_worker::lease::checkpoint::Checkpoint;
    let p = Pipeline::new(1).await?;
    let app = p
        .app("a", &["--checkpoint", "none", "--fail-first", "1"])
        .await?;
    p.put_sequence(2, 0, 5).await?;

    let mut refused = p.worker("refused", &app.address, &["--max-attempts", "1"])?;
    let code = refused.until_exit(DEADLINE).await?;
    assert_ne!(code, Some(0), "a worker that could skip records started");
    let said = std::fs::read_to_string(&refused.proc.log)?;
    assert!(said.contains("--on-failure-destination"), "{said}");

    let (queue, arn) = p
        .env
        .create_queue(&kinesis_operator_tests::unique_name("dlq"))
        .await?;
    let w = p.worker(
        "w",
        &app.address,
        &["--max-attempts", "1", "--on-failure-destination", &arn],
    )?;
    let label = r#"reason="attempts_exhausted""#;
    wait_for(
        "the first batch sent to the destination",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200 && metric_with(&page, label) >= 1.0).then_some(())
        },
    )
    .await?;
    let messages = p.env.drain_queue(&queue).await?;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m: serde_json::Value = serde_json::from_str(&messages[0])?;
    assert_eq!(m["reason"], "attempts_exhausted");
    assert_eq!(m["application"], p.app.as_str());
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["recordsIncluded"], true);
    let destined = m["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        destined.len(),
        m["recordCount"].as_u64().unwrap_or(0) as usize
    );
    assert!(!destined.is_empty());
    let last = m["last"]["sequenceNumber"]
        .as_str()
        .unwrap_or("")
        .to_string();

    p.put_sequence(2, 5, 5).await?;
    // Everything not in the destination reaches the app: nothing lost, nothing twice.
    let want = 20 - destined.len();
    let got = until_received(&[app.out.as_path()], want).await?;
    let mut all: Vec<String> = got.iter().map(|r| r.seq.clone()).collect();
    all.extend(
        destined
            .iter()
            .filter_map(|r| r["sequenceNumber"].as_str().map(String::from)),
    );
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (20, 20), "lost or duplicated records");
    w.stop(DEADLINE).await?;
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    let snap = table.scan().await?;
    match snap.leases.first().map(|l| l.checkpoint.clone()) {
        Some(Checkpoint::Sequence { sequence, .. }) => assert_eq!(sequence.as_str(), last),
        other => panic!("the checkpoint should be the destined batch's end, is {other:?}"),
    }
    p.cleanup().await
}

/// One record among 200 (`key-1:42`) always fails, as the app's `app_flag` says; the worker
/// runs with `--max-attempts 2 --bisect-on-error`, a destination and `worker_flags`. That
/// record alone goes to the destination; every other reaches the app exactly once, each key
/// in order. Returns what the app received and the worker's metrics.
async fn one_failing_record_goes_alone_to_the_destination(
    p: &Pipeline,
    app_flag: &str,
    worker_flags: &[&str],
) -> Result<(Vec<Received>, String)> {
    let app = p.app("a", &[app_flag, "key-1:42"]).await?;
    p.put_sequence(2, 0, 100).await?;
    let (queue, arn) = p
        .env
        .create_queue(&kinesis_operator_tests::unique_name("dlq"))
        .await?;
    let mut flags = vec![
        "--max-attempts",
        "2",
        "--bisect-on-error",
        "--on-failure-destination",
        &arn,
    ];
    flags.extend(worker_flags);
    let w = p.worker("w", &app.address, &flags)?;
    let got = until_received(&[app.out.as_path()], 199).await?;
    let label = r#"reason="attempts_exhausted""#;
    let page = wait_for(
        "the failing record in the destination",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200 && metric_with(&page, label) >= 1.0).then_some(page)
        },
    )
    .await?;
    assert_eq!(metric_with(&page, label), 1.0, "only the failing record");
    assert!(metric(&page, "kinesis_worker_bisections_total") >= 1.0);
    let messages = p.env.drain_queue(&queue).await?;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m: serde_json::Value = serde_json::from_str(&messages[0])?;
    assert_eq!(m["recordCount"], 1);
    assert_eq!(m["records"][0]["data"], "a2V5LTE6NDI="); // base64 of key-1:42
    assert_eq!(m["attempts"].as_u64().map(|a| a >= 2), Some(true));
    // 199 distinct records, none the failing one, each key in order.
    let mut seen = std::collections::BTreeSet::new();
    let mut next: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &got {
        assert!(seen.insert(r.seq.clone()), "delivered twice: {}", r.data);
        assert_ne!(r.data, "key-1:42");
        let i: usize = r.data.rsplit(':').next().unwrap_or("").parse()?;
        let n = next.entry(r.key.clone()).or_insert(0);
        if r.key == "key-1" && *n == 42 {
            *n = 43;
        }
        assert_eq!(i, *n, "key {} out of order", r.key);
        *n += 1;
    }
    assert_eq!(seen.len(), 199);
    w.stop(DEADLINE).await?;
    Ok((got, page))
}

/// A poison record among many (issue 15, policy 3): with `--bisect-on-error` the failing
/// batch is halved down to the record, which alone goes to the destination; every other
/// record reaches the app once, in key order.
#[tokio::test]
async fn bisect_sends_only_the_poison_record_to_the_destination() -> Result<()> {
    let p = Pipeline::new(1).await?;
    one_failing_record_goes_alone_to_the_destination(&p, "--poison", &[]).await?;
    p.cleanup().await
}

/// A Kinesis stream as the on-failure destination (issue 27, item 9): the worker sends to the
/// stream its ARN names (`StreamARN`, so another account's stream is that one, not a
/// same-named stream in the worker's account), and the given-up record arrives there.
#[tokio::test]
async fn a_kinesis_destination_gets_the_given_up_record_at_the_stream_its_arn_names() -> Result<()>
{
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &["--poison", "key-0:3"]).await?;
    let dlq = kinesis_operator_tests::unique_name("dlq-stream");
    p.env.create_stream(&dlq, 1).await?;
    let kinesis = p.env.kinesis().await;
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(&dlq)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .ok_or("stream arn")?;
    p.put_sequence(1, 0, 10).await?;
    let w = p.worker(
        "w",
        &app.address,
        &[
            "--max-attempts",
            "2",
            "--bisect-on-error",
            "--on-failure-destination",
            &arn,
        ],
    )?;
    until_received(&[app.out.as_path()], 9).await?;
    let shard = kinesis
        .list_shards()
        .stream_name(&dlq)
        .send()
        .await?
        .shards
        .and_then(|s| s.into_iter().next())
        .map(|s| s.shard_id)
        .ok_or("a shard")?;
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name(&dlq)
        .shard_id(&shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator
        .ok_or("an iterator")?;
    let records = wait_for(
        "the record in the destination stream",
        DEADLINE,
        POLL,
        || {
            let kinesis = kinesis.clone();
            let iterator = iterator.clone();
            async move {
                let out = kinesis
                    .get_records()
                    .shard_iterator(iterator)
                    .send()
                    .await
                    .ok()?;
                let r = out.records;
                (!r.is_empty()).then_some(r)
            }
        },
    )
    .await?;
    assert_eq!(records.len(), 1);
    let m: serde_json::Value = serde_json::from_slice(records[0].data.as_ref())?;
    assert_eq!(m["records"][0]["data"], "a2V5LTA6Mw=="); // base64 of key-0:3
    w.stop(DEADLINE).await?;
    p.env.remove(Some(&dlq), &[]).await;
    p.cleanup().await
}

/// Maximum record age (issue 15, policy 4): records older than the limit when their turn comes
/// go to the destination, not to the app; fresh ones reach the app. Every record is in one of
/// the two.
#[tokio::test]
async fn records_older_than_the_maximum_age_go_to_the_destination_instead_of_the_app() -> Result<()>
{
    let p = Pipeline::new(1).await?;
    p.put_sequence(2, 0, 5).await?;
    let put_at = std::time::SystemTime::now();
    let (queue, arn) = p
        .env
        .create_queue(&kinesis_operator_tests::unique_name("dlq"))
        .await?;
    let app = p.app("a", &[]).await?;
    // The condition is the records' age itself: past the 3 s limit before anyone reads them.
    let aged = Duration::from_secs(4).saturating_sub(put_at.elapsed().unwrap_or_default());
    tokio::time::sleep(aged).await;
    let w = p.worker(
        "w",
        &app.address,
        &[
            "--max-record-age-seconds",
            "3",
            "--on-failure-destination",
            &arn,
        ],
    )?;
    let label = r#"reason="record_age""#;
    wait_for(
        "the stale records sent to the destination",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200 && metric_with(&page, label) >= 10.0).then_some(())
        },
    )
    .await?;
    p.put_sequence(2, 5, 5).await?;
    let got = until_received(&[app.out.as_path()], 10).await?;
    let messages = p.env.drain_queue(&queue).await?;
    let mut stale = Vec::new();
    for m in &messages {
        let m: serde_json::Value = serde_json::from_str(m)?;
        assert_eq!(m["reason"], "record_age");
        assert_eq!(
            m["attempts"], 0,
            "stale records are not offered to the app first"
        );
        for r in m["records"].as_array().cloned().unwrap_or_default() {
            stale.extend(r["sequenceNumber"].as_str().map(String::from));
        }
    }
    assert_eq!(stale.len(), 10, "{messages:?}");
    let fresh: Vec<&str> = got.iter().map(|r| r.data.as_str()).collect();
    for r in &got {
        let i: usize = r.data.rsplit(':').next().unwrap_or("").parse()?;
        assert!(i >= 5, "a stale record reached the app: {}", r.data);
        assert!(!stale.contains(&r.seq), "in both: {}", r.seq);
    }
    assert_eq!(got.len(), 10, "{fresh:?}");
    w.stop(DEADLINE).await?;
    p.cleanup().await
}

/// Partial batch failure (issue 15, policy 2): the app acknowledges the records before the
/// one it cannot process (`failed_from`); only that one and what follows are delivered again
/// (here bisected, so the failing record alone ends in the destination). Nothing before it
/// is delivered twice: every one of the 200 records is delivered exactly once or is the one
/// record in the destination.
#[tokio::test]
async fn a_partial_batch_failure_retries_only_from_the_failed_record() -> Result<()> {
    let p = Pipeline::new(1).await?;
    let (got, page) = one_failing_record_goes_alone_to_the_destination(
        &p,
        "--fail-from",
        &["--report-batch-item-failures"],
    )
    .await?;
    assert!(metric(&page, "kinesis_worker_partial_batch_failures_total") >= 1.0);
    // The records before the failing one were acknowledged by the first call's partial
    // answer: delivered at attempt 1, never again.
    assert!(
        got.iter().any(|r| r.data == "key-1:41" && r.attempt == 1),
        "the record before the failing one was acknowledged by the first call"
    );
    p.cleanup().await
}

/// The destination down (issue 15, policy 1's edge): a batch given up while its queue is gone
/// is not passed over. The worker retries the send (counting `destination_errors_total`),
/// delivers nothing further on the shard and checkpoints nothing; once the queue is back the
/// batch lands there and the shard moves on, losing nothing.
#[tokio::test]
async fn a_destination_that_is_down_holds_the_shard_until_it_takes_the_records() -> Result<()> {
    let p = Pipeline::new(1).await?;
    let app = p
        .app("a", &["--checkpoint", "all", "--fail-first", "1"])
        .await?;
    let name = kinesis_operator_tests::unique_name("dlq");
    let (queue, arn) = p.env.create_queue(&name).await?;
    let w = p.worker(
        "w",
        &app.address,
        &["--max-attempts", "1", "--on-failure-destination", &arn],
    )?;
    until_owned(&p, "w owns the shard", |o| o.iter().all(|x| x == "w")).await?;
    let sqs = p.env.sqs().await;
    sqs.delete_queue().queue_url(&queue).send().await?;
    p.put_sequence(2, 0, 5).await?;
    wait_for(
        "sends to the deleted queue retried",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200 && metric(&page, "kinesis_worker_destination_errors_total") >= 3.0)
                .then_some(())
        },
    )
    .await?;
    p.put_sequence(2, 5, 5).await?;
    // Still held: the records after the failed batch are not delivered meanwhile.
    let (_, page) = http_get(&w.admin, "/metrics").await?;
    assert_eq!(metric(&page, "kinesis_worker_records_delivered_total"), 0.0);
    assert_eq!(metric_with(&page, r#"reason="attempts_exhausted""#), 0.0);
    assert!(received(&[app.out.as_path()]).is_empty());
    let checkpoint = only_checkpoint(&p, &p.app).await?;
    assert!(
        !checkpoint.chars().all(|c| c.is_ascii_digit()),
        "checkpointed {checkpoint}"
    );
    // The worker's heartbeat names the stalled shard (the operator's DeliveryStalled
    // condition reads it).
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    let stalled_in_heartbeat = || async {
        let snap = table.scan().await.ok()?;
        Some(
            snap.heartbeats
                .iter()
                .any(|h| h.worker_id == "w" && h.stalled.contains("shardId-000000000000")),
        )
    };
    wait_for(
        "the heartbeat names the stalled shard",
        DEADLINE,
        POLL,
        || async { stalled_in_heartbeat().await.filter(|s| *s) },
    )
    .await?;

    let (queue, _) = p.env.create_queue(&name).await?;
    let got = wait_for(
        "the batch in the destination and the rest delivered",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            let destined = metric_with(&page, r#"reason="attempts_exhausted""#);
            let got = received(&[app.out.as_path()]);
            (s == 200 && destined >= 1.0 && got.len() as f64 + destined >= 20.0).then_some(got)
        },
    )
    .await?;
    let mut all: Vec<String> = got.iter().map(|r| r.seq.clone()).collect();
    for m in p.env.drain_queue(&queue).await? {
        let m: serde_json::Value = serde_json::from_str(&m)?;
        for r in m["records"].as_array().cloned().unwrap_or_default() {
            all.extend(r["sequenceNumber"].as_str().map(String::from));
        }
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!((n, all.len()), (20, 20), "lost or duplicated records");
    wait_for(
        "the heartbeat no longer names the shard",
        DEADLINE,
        POLL,
        || async { stalled_in_heartbeat().await.filter(|s| !*s) },
    )
    .await?;
    w.stop(DEADLINE).await?;
    p.cleanup().await
}
