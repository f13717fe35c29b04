//! What reaches the app in which calls (issue 15, policies 5 to 7): filters, the batching
//! window, parallel lanes within a shard, a graceful stop mid-batch in lanes, and every policy
//! at once with a crash.

use std::time::Duration;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{
    Pipeline, Received, check_sequence, http_get, metric, metric_with, received, until_received,
};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

use super::{Result, only_checkpoint, split_in_half, until_owned};

/// Filters (issue 15, policy 7): only records matching a pattern reach the app; the rest
/// count as processed, so the checkpoint reaches the last record even when it was filtered
/// out. A second application whose filter matches nothing gets no call with records at all,
/// and its checkpoint still reaches the end.
#[tokio::test]
async fn filters_send_only_matching_records_and_checkpoint_past_the_rest() -> Result<()> {
    let p = Pipeline::new(1).await?;
    let kinesis = p.env.kinesis().await;
    let mut want = std::collections::BTreeSet::new();
    let mut last = String::new();
    for i in 0..60 {
        let kind = ["click", "view", "scroll"][i % 3];
        let (key, data) = if i % 10 == 4 {
            // Not JSON, but its partition key matches the second pattern.
            ("vip".to_string(), format!("plain text {i}"))
        } else {
            (
                format!("user-{}", i % 4),
                format!(r#"{{"type": "{kind}", "i": {i}}}"#),
            )
        };
        last = p.put(&kinesis, &key, data.as_bytes()).await?;
        if kind == "click" || key == "vip" {
            want.insert(last.clone());
        }
    }
    // The last record (i = 59, a `scroll` of user-3) matches nothing.
    assert!(!want.contains(&last));
    let app = p.app("a", &[]).await?;
    let filters = r#"[{"data": {"type": ["click"]}}, {"partitionKey": ["vip"]}]"#;
    let w = p.worker("w", &app.address, &["--filters", filters])?;
    let got = until_received(&[app.out.as_path()], want.len()).await?;
    let page = wait_for(
        "every record filtered or delivered",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200
                && metric(&page, "kinesis_worker_records_filtered_total")
                    >= (60 - want.len()) as f64)
                .then_some(page)
        },
    )
    .await?;
    assert_eq!(
        metric(&page, "kinesis_worker_records_filtered_total"),
        (60 - want.len()) as f64
    );
    let delivered: std::collections::BTreeSet<String> = got.iter().map(|r| r.seq.clone()).collect();
    assert_eq!(delivered, want, "exactly the matching records");
    assert_eq!(got.len(), want.len(), "each once");
    w.stop(DEADLINE).await?;
    assert_eq!(
        only_checkpoint(&p, &p.app).await?,
        last,
        "checkpointed past the filtered tail"
    );

    // A filter that matches nothing: no record reaches the app, yet the shard is processed.
    let none = p.app("none", &[]).await?;
    let other = kinesis_operator_tests::unique_name("app");
    let w = p.worker_for(
        &other,
        "w2",
        &none.address,
        &["--filters", r#"[{"data": {"type": ["no-such-type"]}}]"#],
    )?;
    wait_for("all 60 records filtered out", DEADLINE, POLL, || async {
        let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
        (s == 200 && metric(&page, "kinesis_worker_records_filtered_total") >= 60.0).then_some(())
    })
    .await?;
    w.stop(DEADLINE).await?;
    assert!(received(&[none.out.as_path()]).is_empty());
    assert_eq!(only_checkpoint(&p, &other).await?, last);
    p.env.remove(None, &[&other]).await;

    // A bad pattern stops the worker at start, naming the filter and the key.
    let mut bad = p.worker(
        "bad",
        &app.address,
        &["--filters", r#"[{"Data": {"type": ["x"]}}]"#],
    )?;
    let code = bad.until_exit(DEADLINE).await?;
    assert_ne!(code, Some(0));
    let said = std::fs::read_to_string(&bad.proc.log)?;
    assert!(said.contains("filter 1: unknown field `Data`"), "{said}");
    p.cleanup().await
}

/// Batch size and batching window (issue 15, policy 5): pages read within the window are
/// gathered into one call of at most `--batch-size` records, so 120 records put in 12 puts
/// spread over ~3.6 s reach the app in a few calls instead of one per page. Every record
/// once, in order.
#[tokio::test]
async fn a_batching_window_gathers_pages_into_fewer_calls_of_at_most_batch_size() -> Result<()> {
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker(
        "w",
        &app.address,
        &["--batch-size", "40", "--batching-window-ms", "3000"],
    )?;
    until_owned(&p, "the shard leased", |o| o.iter().all(|x| !x.is_empty())).await?;
    let kinesis = p.env.kinesis().await;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    for put in 0..12 {
        tick.tick().await;
        for i in 0..10 {
            p.put(&kinesis, "k", format!("k:{}", put * 10 + i).as_bytes())
                .await?;
        }
    }
    let got = until_received(&[app.out.as_path()], 120).await?;
    // One call = one receive time.
    let mut calls: Vec<(u128, usize)> = Vec::new();
    for (i, r) in got.iter().enumerate() {
        let at: usize = r.data.rsplit(':').next().unwrap_or("").parse()?;
        assert_eq!(at, i, "out of order or twice");
        match calls.last_mut() {
            Some((t, n)) if *t == r.recv_ns() => *n += 1,
            _ => calls.push((r.recv_ns(), 1)),
        }
    }
    let sizes: Vec<usize> = calls.iter().map(|c| c.1).collect();
    assert!(
        sizes.iter().all(|&n| n <= 40),
        "a call above the batch size: {sizes:?}"
    );
    assert!(sizes.len() <= 6, "pages were not gathered: {sizes:?}");
    let (_, page) = http_get(&w.admin, "/metrics").await?;
    assert_eq!(
        metric(&page, "kinesis_worker_records_per_call_count"),
        sizes.len() as f64
    );
    w.stop(DEADLINE).await?;
    p.cleanup().await
}

/// Parallelism within a shard (issue 15, policy 6): with 4 lanes a shard's batch reaches the
/// app as concurrent calls (the app sees them overlap), yet every key's records arrive in put
/// order, across a split of one shard mid-stream (children after their parent), and none is
/// lost or delivered twice.
#[tokio::test]
async fn parallel_lanes_keep_each_keys_order_across_a_reshard() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let app = p.app("a", &["--delay-ms", "20"]).await?;
    let w = p.worker(
        "w",
        &app.address,
        &["--parallelization-factor", "4", "--batch-size", "5"],
    )?;
    until_owned(&p, "w owns both shards", |o| {
        o.len() == 2 && o.iter().all(|w| w == "w")
    })
    .await?;
    let keys = 20;
    p.put_sequence(keys, 0, 10).await?;
    split_in_half(&p, "shardId-000000000000").await?;
    p.put_sequence(keys, 10, 10).await?;
    let got = until_received(&[app.out.as_path()], keys * 20).await?;
    assert_eq!(check_sequence(&got, keys, 20)?, 0, "no record twice");
    assert_eq!(got.len(), keys * 20);
    let overlaps = app.proc.lines();
    assert!(
        overlaps.iter().any(|l| l.starts_with("overlap ")),
        "no two calls of one shard ran at once"
    );
    let (_, page) = http_get(&w.admin, "/metrics").await?;
    assert!(page.contains("kinesis_worker_lanes_busy"), "{page}");
    w.stop(DEADLINE).await?;
    // The parent ended after all its lanes: the app heard ShardEnded, and its lease is
    // SHARD_END (or already removed, once its children started).
    assert!(
        app.proc
            .lines()
            .iter()
            .any(|l| l.starts_with("shard-ended shardId-000000000000")),
        "the parent ended"
    );
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    let snap = table.scan().await?;
    if let Some(parent) = snap
        .leases
        .iter()
        .find(|l| l.shard_id == "shardId-000000000000")
    {
        assert_eq!(
            parent.checkpoint,
            kinesis_worker::lease::checkpoint::Checkpoint::ShardEnd
        );
    }
    p.cleanup().await
}

/// A graceful shutdown in the middle of a batch delivered in lanes redelivers nothing: the
/// lanes finish the batch (a slow app, 4 lanes of 100 records in calls of 5), the app's
/// `all_delivered` covers all of it, and the next worker starts after it.
#[tokio::test]
async fn a_graceful_shutdown_mid_batch_in_lanes_redelivers_nothing() -> Result<()> {
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &["--delay-ms", "30"]).await?;
    p.put_sequence(40, 0, 10).await?;
    let lanes = ["--parallelization-factor", "4", "--batch-size", "5"];
    let w1 = p.worker("w1", &app.address, &lanes)?;
    wait_for("the first calls of the batch", DEADLINE, POLL, || async {
        (received(&[app.out.as_path()]).len() >= 20).then_some(())
    })
    .await?;
    w1.stop(DEADLINE).await?;
    let first = received(&[app.out.as_path()]).len();
    let w2 = p.worker("w2", &app.address, &lanes)?;
    p.put_sequence(40, 10, 1).await?;
    let got = until_received(&[app.out.as_path()], 440).await?;
    assert_eq!(
        check_sequence(&got, 40, 11)?,
        0,
        "records delivered again after a graceful shutdown (w1 delivered {first})"
    );
    w2.stop(DEADLINE).await?;
    p.cleanup().await
}

/// Nothing is lost with every policy at once under a fault (issue 15, "must show"): 2 shards,
/// 3 lanes each, batches of 10, bisect, a partial failure (`--fail-from`), a poison record,
/// a filter, an on-failure destination, and the app process crashing mid-batch. Every one of
/// the 240 records is acknowledged by the app, filtered out, or in the destination, exactly
/// one of these; each key in order; a record delivered twice only after the crash (a retry).
#[tokio::test]
async fn every_record_is_acked_filtered_or_destined_with_all_policies_and_a_crash() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let bad = [
        "--poison",
        "key-3:7",
        "--fail-from",
        "key-7:3",
        "--delay-ms",
        "5",
    ];
    let mut crashing = bad.to_vec();
    crashing.extend(["--crash-at-batch", "12"]);
    let app = p.app("a", &crashing).await?;
    let (queue, arn) = p
        .env
        .create_queue(&kinesis_operator_tests::unique_name("dlq"))
        .await?;
    let filters = r#"[{"data": [{"anything-but": {"prefix": "key-5:"}}]}]"#;
    let w = p.worker(
        "w",
        &app.address,
        &[
            "--parallelization-factor",
            "3",
            "--batch-size",
            "10",
            "--bisect-on-error",
            "--report-batch-item-failures",
            // 3, not 2: while the crashed app is down every call fails, and a good record
            // must not run out of attempts before it is back (7 failed calls, ~13 s).
            "--max-attempts",
            "3",
            "--on-failure-destination",
            &arn,
            "--filters",
            filters,
        ],
    )?;
    let keys = 12;
    p.put_sequence(keys, 0, 20).await?;
    let mut app = app;
    wait_for("the app crashed", DEADLINE, POLL, || {
        let exited = app.proc.exited().is_some();
        async move { exited.then_some(()) }
    })
    .await?;
    let before_crash = received(&[app.out.as_path()]);
    let app2 = p.app("a", &bad).await?;
    // The restarted app binds the same socket and appends to the same file.
    assert_eq!(app.out, app2.out);
    let outs = [app2.out.as_path()];
    // 240 records: 20 of key-5 filtered out, 2 in the destination.
    let got = until_received(&outs, 240 - 20 - 2).await?;
    let page = wait_for(
        "both failing records in the destination",
        DEADLINE,
        POLL,
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            (s == 200 && metric_with(&page, r#"reason="attempts_exhausted""#) >= 2.0)
                .then_some(page)
        },
    )
    .await?;
    let mut destined = Vec::new();
    for m in p.env.drain_queue(&queue).await? {
        let m: serde_json::Value = serde_json::from_str(&m)?;
        for r in m["records"].as_array().cloned().unwrap_or_default() {
            destined.extend(r["sequenceNumber"].as_str().map(String::from));
        }
    }
    assert_eq!(
        destined.len(),
        2,
        "only the two failing records: {destined:?}"
    );
    assert_eq!(metric(&page, "kinesis_worker_records_filtered_total"), 20.0);

    // Account for every record by its data, and attribute every duplicate to the crash.
    let mut copies: std::collections::BTreeMap<String, Vec<&Received>> = Default::default();
    for r in &got {
        copies.entry(r.data.clone()).or_default().push(r);
    }
    for (data, list) in &copies {
        assert!(
            !data.starts_with("key-5:"),
            "a filtered record reached the app"
        );
        assert!(
            data != "key-3:7" && data != "key-7:3",
            "{data} reached the app"
        );
        if list.len() > 1 {
            assert!(
                list.iter().skip(1).all(|r| r.attempt > 1)
                    && before_crash.iter().any(|b| b.data == *data),
                "{data} delivered {} times, not by the crash's retry: {list:?}",
                list.len()
            );
        }
        assert!(
            !destined.contains(&list[0].seq),
            "{data} both acked and destined"
        );
    }
    for k in 0..keys {
        for i in 0..20 {
            let data = format!("key-{k}:{i}");
            let accounted =
                copies.contains_key(&data) || k == 5 || data == "key-3:7" || data == "key-7:3";
            assert!(accounted, "{data} lost");
        }
    }
    // Per key in order (first deliveries), skipping what never reaches the app.
    let mut next: std::collections::BTreeMap<String, usize> = Default::default();
    let mut firsts = std::collections::BTreeSet::new();
    for r in &got {
        if !firsts.insert(r.seq.clone()) {
            continue;
        }
        let i: usize = r.data.rsplit(':').next().unwrap_or("").parse()?;
        let n = next.entry(r.key.clone()).or_insert(0);
        if (r.key == "key-3" && *n == 7) || (r.key == "key-7" && *n == 3) {
            *n += 1;
        }
        assert_eq!(i, *n, "key {} out of order", r.key);
        *n += 1;
    }
    w.stop(DEADLINE).await?;
    p.cleanup().await
}
