//! The chaos suite's short form (issue 10): 16 shards, 4 `kinesis-worker run` processes each
//! with its app, a producer of per-key counters, a seeded schedule of 20 faults (kill -9,
//! SIGTERM, SIGSTOP/SIGCONT past failover, app crash, split, merge, throttling and 5xx from
//! Kinesis and DynamoDB). Every record produced is accounted for by the strict checker (lost,
//! order within each lease tenure, two owners, graceful duplicates, stalls); see
//! `kinesis_operator_tests::chaos` and docs/RELIABILITY.md (the long form).

use std::time::Duration;

use kinesis_operator_tests::chaos::{ChaosConfig, run};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// One run at a time: each starts 4 workers, 4 apps and 2 fault proxies, and two at once on
/// 2 cores would test the machine, not the workers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn holds(config: ChaosConfig) -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = run(&config).await?;
    eprintln!("{config:?}\n{report}");
    assert!(report.produced > 0, "records were produced");
    assert_eq!(report.lost, 0, "no record lost\n{report}");
    assert_eq!(report.order_violations, 0, "per-key order\n{report}");
    assert_eq!(
        report.tenure_order_violations, 0,
        "per-key order within each lease tenure, redeliveries included\n{report}"
    );
    assert_eq!(
        report.two_owner_deliveries, 0,
        "one owner delivering per shard at a time\n{report}"
    );
    assert_eq!(
        report.checkpoint_regressions, 0,
        "no checkpoint went backwards\n{report}"
    );
    assert!(report.samples > 10, "the table was sampled\n{report}");
    assert_eq!(
        report.graceful_duplicates, 0,
        "no duplicate after a graceful hand-over, drain or shard end\n{report}"
    );
    assert_eq!(
        report.stalled_shards, 0,
        "every shard checkpointed to its end\n{report}"
    );
    assert!(report.holds(), "{report}");
    Ok(())
}

#[tokio::test]
async fn twenty_faults_polling_from_latest_lose_nothing() -> Result<()> {
    holds(ChaosConfig {
        seed: 20261202,
        latest: true,
        spacing: Duration::from_secs(4),
        ..ChaosConfig::default()
    })
    .await
}

/// The same with 3 lanes per shard (issue 15, parallelism within a shard): kills, pauses,
/// hand-overs and reshards while each shard's batches are split over concurrent calls.
#[tokio::test]
async fn twenty_faults_with_three_lanes_per_shard_lose_nothing() -> Result<()> {
    holds(ChaosConfig {
        seed: 7,
        lanes: 3,
        spacing: Duration::from_secs(4),
        ..ChaosConfig::default()
    })
    .await
}
