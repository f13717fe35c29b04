//! A fleet of `kinesis-worker leases` processes (separate processes, as in pods) against the
//! local Kinesis and DynamoDB servers: shards shared with one live owner each, failover after
//! SIGKILL, hand-off on SIGTERM, a joining worker, a paused worker fencing itself.
//!
//! Timings are printed, not asserted (the bench measures them); the deadlines here only stop
//! a broken fleet from hanging the test.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kinesis_operator_tests::fleet::{DEADLINE, FAILOVER_MS, Fleet, POLL, shared_by};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::model::TableSnapshot;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

#[tokio::test]
async fn every_shard_gets_one_live_owner_and_a_killed_workers_shards_move() -> Result<()> {
    let fleet = Fleet::new(8).await?;
    let w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    let _w3 = fleet.worker("w3", &[])?;
    let (t, _) = fleet
        .until(
            "8 shards shared 3/3/2",
            shared_by(8, &["w1", "w2", "w3"], 2, 3),
        )
        .await?;
    eprintln!("fleet of 3 balanced 8 shards in {t:?}");

    w1.signal("KILL");
    let (t, _) = fleet
        .until(
            "w1's shards taken by w2 and w3",
            shared_by(8, &["w2", "w3"], 4, 4),
        )
        .await?;
    eprintln!("after SIGKILL, shards resumed in {t:?} (failover time {FAILOVER_MS} ms)");
    fleet.cleanup().await
}

#[tokio::test]
async fn sigterm_releases_every_lease_for_the_others_to_take_at_once() -> Result<()> {
    let fleet = Fleet::new(6).await?;
    let mut w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    fleet
        .until("6 shards shared 3/3", shared_by(6, &["w1", "w2"], 3, 3))
        .await?;

    w1.signal("TERM");
    let (t, _) = fleet
        .until("w1's shards taken by w2", shared_by(6, &["w2"], 6, 6))
        .await?;
    eprintln!("after SIGTERM, shards resumed in {t:?} (failover time {FAILOVER_MS} ms)");
    let code = wait_for("w1 exits", DEADLINE, POLL, || {
        let exited = w1.exited();
        async move { exited }
    })
    .await?;
    assert_eq!(code, Some(0), "graceful exit; log:\n{}", w1.log_tail());
    assert!(
        w1.lines().iter().any(|l| l == "stopped"),
        "{:?}",
        w1.lines()
    );
    // It exits only after removing its heartbeat: a scan now must not find it.
    let snap = fleet.snapshot().await.ok_or("scan")?;
    assert!(
        !snap.heartbeats.iter().any(|h| h.worker_id == "w1"),
        "w1 removed its heartbeat: {:?}",
        snap.heartbeats
    );
    fleet.cleanup().await
}

#[tokio::test]
async fn a_joining_worker_reaches_its_fair_share_and_then_nothing_moves() -> Result<()> {
    let fleet = Fleet::new(12).await?;
    let _w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    fleet
        .until("12 shards shared 6/6", shared_by(12, &["w1", "w2"], 6, 6))
        .await?;

    let _w3 = fleet.worker("w3", &[])?;
    let (t, balanced) = fleet
        .until(
            "w3 at its fair share",
            shared_by(12, &["w1", "w2", "w3"], 4, 4),
        )
        .await?;
    eprintln!("joining worker reached its fair share in {t:?}");

    // Stable: while every worker beats three more times, no lease changes hands.
    let beats: HashMap<String, u64> = balanced
        .heartbeats
        .iter()
        .map(|h| (h.worker_id.clone(), h.counter))
        .collect();
    let t_beats = Instant::now();
    let later = wait_for(
        "three more heartbeats from everyone",
        DEADLINE,
        POLL,
        || async {
            let snap = fleet.snapshot().await?;
            snap.heartbeats
                .iter()
                .all(|h| h.counter >= beats.get(&h.worker_id).copied().unwrap_or(0) + 3)
                .then_some(snap)
        },
    )
    .await?;
    eprintln!("three heartbeats: {:?}", t_beats.elapsed());
    let counters = |s: &TableSnapshot| -> BTreeMap<String, u64> {
        s.leases
            .iter()
            .map(|l| (l.shard_id.clone(), l.counter))
            .collect()
    };
    assert_eq!(
        counters(&balanced),
        counters(&later),
        "a balanced fleet makes no ownership change"
    );
    fleet.cleanup().await
}

#[tokio::test]
async fn a_paused_worker_loses_its_shards_and_stops_by_itself() -> Result<()> {
    let fleet = Fleet::new(4).await?;
    let w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    let (_, before) = fleet
        .until("4 shards shared 2/2", shared_by(4, &["w1", "w2"], 2, 2))
        .await?;
    let w1_shards: Vec<String> = before
        .leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some("w1"))
        .map(|l| l.shard_id.clone())
        .collect();

    w1.signal("STOP");
    fleet
        .until("w2 took w1's shards", shared_by(4, &["w2"], 4, 4))
        .await?;
    w1.signal("CONT");
    // Resumed, w1 first notices that it is stale and drops what it held.
    wait_for("w1 reports its shards lost", DEADLINE, POLL, || async {
        let lines = w1.lines();
        w1_shards
            .iter()
            .all(|s| lines.contains(&format!("lost {s}")))
            .then_some(())
    })
    .await?;
    // And the fleet settles back to 2/2 through hand-overs.
    fleet
        .until(
            "4 shards shared 2/2 again",
            shared_by(4, &["w1", "w2"], 2, 2),
        )
        .await?;
    fleet.cleanup().await
}
