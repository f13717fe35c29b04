//! Graceful hand-over under load (issue 10, item 8): a worker joins a fleet while records
//! flow and a slow app (2.5 s per batch) holds every shard's batch in flight; the leases it
//! gets are handed over by their owner. Then the first worker drains (SIGTERM, as in a
//! rollout) while records flow, releasing its leases to the other. A graceful hand-over
//! delivers nothing twice and never lets two owners deliver one shard at once. One app
//! serves both workers, so it sees any overlap of calls for one shard directly.

use std::collections::BTreeMap;
use std::time::Duration;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, check_sequence, received, until_received};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const KEYS: usize = 16;
/// Half put while the second worker joins, half while the first drains.
const PER_KEY: usize = 120;
/// Failover 6 s, hand-over timeout 4 s: a batch in flight (2.5 s) plus ShutdownRequested and
/// the final checkpoint fit into what the owner may take.
const TIMINGS: &[&str] = &[
    "--failover-time-ms",
    "6000",
    "--scan-interval-ms",
    "250",
    "--handoff-timeout-ms",
    "4000",
    "--shard-sync-interval-ms",
    "500",
    "--idle-time-ms",
    "100",
    "--checkpoint-interval-ms",
    "1000",
];

async fn owners(p: &Pipeline) -> Result<BTreeMap<String, Option<String>>> {
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    Ok(table
        .scan()
        .await?
        .leases
        .into_iter()
        .map(|l| (l.shard_id, l.owner))
        .collect())
}

fn count(o: &BTreeMap<String, Option<String>>, w: &str) -> usize {
    o.values().filter(|v| v.as_deref() == Some(w)).count()
}

#[tokio::test]
async fn a_graceful_handover_under_load_delivers_nothing_twice_and_never_from_two_owners()
-> Result<()> {
    let mut p = Pipeline::new(4).await?;
    p.test_timings = false;
    let app = p.app("a", &["--delay-ms", "2500"]).await?;
    let w1 = p.worker("w1", &app.address, TIMINGS)?;
    wait_for("w1 owns all 4 shards", DEADLINE, POLL, || async {
        let o = owners(&p).await.ok()?;
        (o.len() == 4 && count(&o, "w1") == 4).then_some(())
    })
    .await?;

    let produce = async {
        for i in 0..PER_KEY / 2 {
            p.put_sequence(KEYS, i, 1).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let join = async {
        wait_for("records flowing", DEADLINE, POLL, || async {
            (received(&[app.out.as_path()]).len() >= KEYS).then_some(())
        })
        .await?;
        let w2 = p.worker("w2", &app.address, TIMINGS)?;
        wait_for("2 shards each", DEADLINE, POLL, || async {
            let o = owners(&p).await.ok()?;
            (count(&o, "w1") == 2 && count(&o, "w2") == 2).then_some(())
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(w2)
    };
    let (produced, joined) = tokio::join!(produce, join);
    produced?;
    let w2 = joined?;

    let produce = async {
        for i in PER_KEY / 2..PER_KEY {
            p.put_sequence(KEYS, i, 1).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let drain = async {
        // Drain once the second half's records are flowing.
        wait_for("second-half records arriving", DEADLINE, POLL, || async {
            received(&[app.out.as_path()])
                .iter()
                .any(|r| {
                    r.data
                        .split_once(':')
                        .and_then(|(_, i)| i.parse::<usize>().ok())
                        .is_some_and(|i| i >= PER_KEY / 2)
                })
                .then_some(())
        })
        .await?;
        w1.proc.signal("TERM");
        wait_for("w2 owns all 4 shards", DEADLINE, POLL, || async {
            let o = owners(&p).await.ok()?;
            (count(&o, "w2") == 4).then_some(())
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let (produced, drained) = tokio::join!(produce, drain);
    produced?;
    drained?;

    let total = KEYS * PER_KEY;
    let got = until_received(&[app.out.as_path()], total).await?;
    let duplicates = check_sequence(&got, KEYS, PER_KEY)?;
    let log = std::fs::read_to_string(&w1.proc.log).unwrap_or_default();
    let handovers = log
        .lines()
        .filter(|l| l.contains("lease handed over"))
        .count();
    let released = log.lines().filter(|l| l.contains("lease released")).count();
    let forced = log
        .lines()
        .filter(|l| l.contains("hand-over forced"))
        .count();
    let overlaps = app.said("overlap");
    eprintln!(
        "hand-overs {handovers} (forced {forced}), released on drain {released}, records {total}, duplicates {duplicates}, overlapping calls {}",
        overlaps.len()
    );
    assert!(
        handovers >= 2,
        "w1 handed 2 leases over\n{}",
        w1.proc.log_tail()
    );
    assert!(
        released >= 2,
        "w1 released its leases on drain\n{}",
        w1.proc.log_tail()
    );
    assert!(
        overlaps.is_empty(),
        "two owners delivered one shard at once: {overlaps:?}"
    );
    assert_eq!(duplicates, 0, "a graceful hand-over delivers nothing twice");
    drop(w2);
    p.cleanup().await
}
