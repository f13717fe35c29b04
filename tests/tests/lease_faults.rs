//! DynamoDB failures never drop a lease: a worker behind a proxy that throttles half of its
//! requests, then all of them for a moment, keeps every lease (the SDK retries with backoff;
//! what still fails is retried on the next round).

use std::collections::BTreeMap;

use kinesis_operator_tests::faults::{FaultProxy, Mode};
use kinesis_operator_tests::fleet::{DEADLINE, Fleet, POLL, shared_by};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::model::TableSnapshot;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn counters(s: &TableSnapshot) -> BTreeMap<String, u64> {
    s.leases
        .iter()
        .map(|l| (l.shard_id.clone(), l.counter))
        .collect()
}

/// Waits until every worker's heartbeat advanced `n` more times.
async fn beats(fleet: &Fleet, n: u64) -> Result<TableSnapshot> {
    let start = fleet.snapshot().await.ok_or("scan")?;
    Ok(wait_for("more heartbeats", DEADLINE, POLL, || async {
        let s = fleet.snapshot().await?;
        start
            .heartbeats
            .iter()
            .all(|h0| {
                s.heartbeats
                    .iter()
                    .any(|h| h.worker_id == h0.worker_id && h.counter >= h0.counter + n)
            })
            .then_some(s)
    })
    .await?)
}

#[tokio::test]
async fn throttling_and_a_short_outage_drop_no_lease() -> Result<()> {
    let mut fleet = Fleet::new(4).await?;
    // Long enough that the outage below stays well inside it, also on a loaded machine: with
    // 10 s, a CI run with the cluster tests beside it once went 11.5 s without a confirmed
    // heartbeat (throttled retries back off) and the worker rightly fenced itself.
    fleet.failover_ms = 20_000;
    let upstream = fleet
        .env
        .dynamodb_endpoint
        .trim_start_matches("http://")
        .to_string();
    let proxy = FaultProxy::start(&upstream).await?;
    let w1 = fleet.worker("w1", &["--dynamodb-endpoint", &proxy.endpoint])?;
    let w2 = fleet.worker("w2", &["--dynamodb-endpoint", &proxy.endpoint])?;
    let (_, balanced) = fleet
        .until("4 shards shared 2/2", shared_by(4, &["w1", "w2"], 2, 2))
        .await?;

    proxy.set(Mode::ThrottleHalf);
    beats(&fleet, 3).await?;
    let half = proxy.injected();
    assert!(half > 0, "throttling was injected");

    proxy.set(Mode::ThrottleAll);
    wait_for("an outage of several failed calls", DEADLINE, POLL, || {
        let n = proxy.injected();
        async move { (n >= half + 8).then_some(()) }
    })
    .await?;
    proxy.set(Mode::Pass);
    let after = beats(&fleet, 3).await?;

    eprintln!(
        "injected {} throttling errors, forwarded {} requests",
        proxy.injected(),
        proxy.forwarded()
    );
    assert_eq!(
        counters(&balanced),
        counters(&after),
        "no lease changed hands"
    );
    for (name, w) in [("w1", &w1), ("w2", &w2)] {
        let lost: Vec<String> = w
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("lost"))
            .collect();
        assert!(
            lost.is_empty(),
            "{name} lost leases: {lost:?}\n{}",
            w.log_tail()
        );
    }
    fleet.cleanup().await
}
