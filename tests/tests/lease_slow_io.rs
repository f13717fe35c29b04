//! Slow and hung I/O against a running `kinesis-worker run` (issue 10, item 7): a DynamoDB
//! call that never answers must not stop the worker's heartbeat, and so must not make the
//! worker fence itself (or the fleet think it dead). The hang is made by the fault proxy in
//! front of DynamoDB; the test reads the table directly.

use std::time::{Duration, Instant};

use kinesis_operator_tests::faults::{Action, FaultProxy, Rule};
use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, check_sequence, received, until_received};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The worker's heartbeat counter as the table holds it (read past the proxy).
async fn beat(table: &LeaseTable, worker: &str) -> Result<u64> {
    let snap = table.scan().await?;
    Ok(snap
        .heartbeats
        .iter()
        .find(|h| h.worker_id == worker)
        .map(|h| h.counter)
        .ok_or("no heartbeat item")?)
}

/// Everything the worker logged so far.
fn log(proc: &kinesis_operator_tests::process::Proc) -> String {
    std::fs::read_to_string(&proc.log).unwrap_or_default()
}

/// Holds every request matching `target` for `hold` (three failover times of the test
/// timings) and returns how far the heartbeat moved meanwhile.
async fn hang_for(
    proxy: &FaultProxy,
    table: &LeaseTable,
    target: &str,
    hold: Duration,
) -> Result<u64> {
    let before = beat(table, "w").await?;
    let rule = proxy.add(Rule::new(
        &[&format!("x-amz-target: dynamodb_20120810.{target}")],
        Action::Hang,
    ));
    let start = Instant::now();
    // Let a call get caught first (the worker scans every 250 ms, checkpoints every 1 s).
    wait_for(&format!("a {target} call held"), DEADLINE, POLL, || async {
        (proxy.injected() > 0).then_some(())
    })
    .await?;
    tokio::time::sleep(hold.saturating_sub(start.elapsed())).await;
    let after = beat(table, "w").await?;
    proxy.remove(rule);
    eprintln!("{target} held for {hold:?}: heartbeat {before} -> {after}");
    Ok(after - before)
}

#[tokio::test]
async fn a_hung_scan_or_checkpoint_write_does_not_stop_the_heartbeat() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let proxy = FaultProxy::start(p.env.dynamodb_endpoint.trim_start_matches("http://")).await?;
    let app = p.app("a", &[]).await?;
    let mut w = p.worker("w", &app.address, &["--dynamodb-endpoint", &proxy.endpoint])?;
    p.put_sequence(4, 0, 10).await?;
    until_received(&[app.out.as_path()], 40).await?;
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    // The test timings: failover 3 s, heartbeat every second.
    let hold = Duration::from_secs(9);

    let moved = hang_for(&proxy, &table, "scan", hold).await?;
    assert!(
        moved >= 4,
        "the heartbeat went on while a scan hung ({moved} beats in {hold:?})\n{}",
        w.proc.log_tail()
    );

    // Checkpoint writes are UpdateItem: records arrive, the app asks to checkpoint, the
    // write hangs.
    p.put_sequence(4, 10, 10).await?;
    let moved = hang_for(&proxy, &table, "updateitem", hold).await?;
    assert!(
        moved >= 4,
        "the heartbeat went on while a checkpoint write hung ({moved} beats in {hold:?})\n{}",
        w.proc.log_tail()
    );

    p.put_sequence(4, 20, 10).await?;
    until_received(&[app.out.as_path()], 120).await?;
    check_sequence(&received(&[app.out.as_path()]), 4, 30)?;
    let lost: Vec<String> = log(&w.proc)
        .lines()
        .filter(|l| l.contains("lease lost") || l.contains("stopping all shards"))
        .map(String::from)
        .collect();
    assert!(lost.is_empty(), "the worker kept its leases: {lost:?}");
    assert_eq!(w.proc.exited(), None, "the worker is still running");
    p.cleanup().await
}

/// Issue 10, item 6: heartbeats that each take 1.3 s to land (test timings: failover 3 s,
/// heartbeat every 1 s, valid for 2.75 s after a heartbeat is *sent*) leave the worker
/// without a confirmed heartbeat for a moment in every cycle, while each heartbeat, once it
/// lands, makes it look alive again. Record processors that check their lease in that
/// moment stop by themselves. No lease may stay held with nobody processing it: every record
/// put during and after the episode is delivered. The app answers LeaseLost slowly (9 s, inside the worker's 10 s limit):
/// the shard's next processor must not call it before that answer (item 14: calls for one
/// shard never overlap).
#[tokio::test]
async fn a_heartbeat_that_lands_late_leaves_no_lease_without_a_processor() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let proxy = FaultProxy::start(p.env.dynamodb_endpoint.trim_start_matches("http://")).await?;
    let app = p.app("a", &["--slow-lease-lost-ms", "9000"]).await?;
    let mut w = p.worker("w", &app.address, &["--dynamodb-endpoint", &proxy.endpoint])?;
    p.put_sequence(4, 0, 10).await?;
    until_received(&[app.out.as_path()], 40).await?;

    let rule = proxy.add(Rule::new(
        &[
            "x-amz-target: dynamodb_20120810.putitem",
            "kinesis-operator:worker:w",
        ],
        Action::Delay(Duration::from_millis(1_300)),
    ));
    // Records keep coming, so processors deliver and checkpoint (and check their lease).
    for i in 10..30 {
        p.put_sequence(4, i, 1).await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    proxy.remove(rule);
    let stopped = log(&w.proc)
        .lines()
        .filter(|l| l.contains("lease lost: processor stopped"))
        .count();
    eprintln!("processors that stopped by themselves: {stopped}");
    assert!(
        stopped > 0,
        "the fault made no processor stop: the test shows nothing\n{}",
        w.proc.log_tail()
    );

    p.put_sequence(4, 30, 10).await?;
    until_received(&[app.out.as_path()], 160)
        .await
        .map_err(|e| format!("{e}\n{}", w.proc.log_tail()))?;
    check_sequence(&received(&[app.out.as_path()]), 4, 40)?;
    let overlaps = app.said("overlap");
    assert!(
        overlaps.is_empty(),
        "calls for one shard overlapped: {overlaps:?}"
    );
    assert_eq!(w.proc.exited(), None, "the worker is still running");
    p.cleanup().await
}

/// Issue 10, item 9: a shard whose batches the app keeps failing must not hold the worker's
/// read-ahead budget (here 1 MiB): shard 0 gets a page of 1.2 MB the app always fails, then
/// shard 1 gets small records, which must all be delivered while shard 0 retries.
#[tokio::test]
async fn a_shard_stuck_retrying_does_not_starve_the_others_of_read_ahead() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let app = p
        .app("a", &["--fail-shard", "shardId-000000000000"])
        .await?;
    let mut w = p.worker("w", &app.address, &["--max-buffered-mib", "1"])?;
    let kinesis = p.env.kinesis().await;
    // Shard 0 of 2 holds hash keys below 2^127, shard 1 the rest.
    let put = |ehk: &'static str, data: Vec<u8>, key: String| {
        let kinesis = kinesis.clone();
        let stream = p.stream.clone();
        async move {
            kinesis
                .put_record()
                .stream_name(stream)
                .partition_key(key)
                .explicit_hash_key(ehk)
                .data(aws_sdk_kinesis::primitives::Blob::new(data))
                .send()
                .await
        }
    };
    for i in 0..4 {
        put("0", vec![b'x'; 300_000], format!("big-{i}")).await?;
    }
    wait_for("shard 0 stuck retrying", DEADLINE, POLL, || async {
        log(&w.proc)
            .contains("app ProcessRecords failed; retrying the failed records")
            .then_some(())
    })
    .await?;
    for i in 0..20 {
        put(
            "170141183460469231731687303715884105728",
            format!("key-0:{i}").into_bytes(),
            "key-0".to_string(),
        )
        .await?;
    }
    until_received(&[app.out.as_path()], 20)
        .await
        .map_err(|e| format!("{e}\n{}", w.proc.log_tail()))?;
    let got = received(&[app.out.as_path()]);
    assert!(
        got.iter().all(|r| r.shard == "shardId-000000000001"),
        "only shard 1 was delivered"
    );
    check_sequence(&got, 1, 20)?;
    assert_eq!(w.proc.exited(), None, "the worker is still running");
    p.cleanup().await
}
