//! Fencing: a worker cut off from DynamoDB past the failover time stops by itself, and once
//! reconnected it still cannot write a checkpoint for a shard that moved to another worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kinesis_operator_tests::faults::{FaultProxy, Mode};
use kinesis_operator_tests::fleet::{DEADLINE, Fleet, POLL};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::checkpoint::{Checkpoint, SequenceNumber};
use kinesis_worker::lease::coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorHandle, LeaseEvent, ShardLease,
};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::lease::table::{LeaseError, LeaseTable};
use tokio::sync::mpsc;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Acquired leases, by shard, with when they were acquired.
type Acquired = std::sync::Arc<tokio::sync::Mutex<HashMap<String, (ShardLease, Instant)>>>;

/// Starts an in-process coordinator whose DynamoDB client uses `dynamodb_endpoint`; its
/// acquired leases are collected in the returned map.
async fn coordinator(
    fleet: &Fleet,
    id: &str,
    dynamodb_endpoint: &str,
) -> Result<(CoordinatorHandle, Acquired)> {
    let mut env = fleet.env.clone();
    env.dynamodb_endpoint = dynamodb_endpoint.to_string();
    let table = LeaseTable::open(env.dynamodb().await, &fleet.app, true).await?;
    let mut config = CoordinatorConfig::new(id);
    config.failover_time = Duration::from_millis(2_000);
    config.heartbeat_interval = config.failover_time / 3;
    config.scan_interval = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::channel(64);
    let (c, handle) = Coordinator::new(
        table,
        Some((env.kinesis().await, StreamRef::Name(fleet.stream.clone()))),
        config,
        tx,
    );
    tokio::spawn(c.run());
    let held: Acquired = std::sync::Arc::default();
    let sink = held.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match e {
                LeaseEvent::Acquired(l) => {
                    sink.lock()
                        .await
                        .insert(l.shard_id.clone(), (l, Instant::now()));
                }
                LeaseEvent::ShutdownRequested { done, .. } => {
                    let _ = done.send(());
                }
                LeaseEvent::Lost { .. } => {}
            }
        }
    });
    Ok((handle, held))
}

#[tokio::test]
async fn a_cut_off_worker_stops_by_itself_and_cannot_checkpoint_a_moved_shard() -> Result<()> {
    let fleet = Fleet::new(2).await?;
    let upstream = fleet
        .env
        .dynamodb_endpoint
        .trim_start_matches("http://")
        .to_string();
    let proxy = FaultProxy::start(&upstream).await?;
    let (a, a_leases) = coordinator(&fleet, "a", &proxy.endpoint).await?;
    // A alone first, so it holds both shards.
    fleet
        .until("a owns both shards", |o, _| {
            o.len() == 2 && o.values().all(|w| w.as_deref() == Some("a"))
        })
        .await?;
    let mine: Vec<ShardLease> = wait_for("a's pipeline got both leases", DEADLINE, POLL, || {
        let leases = a_leases.clone();
        async move {
            let l = leases.lock().await;
            (l.len() == 2).then(|| l.values().map(|(l, _)| l.clone()).collect())
        }
    })
    .await?;
    assert!(mine.iter().all(ShardLease::is_valid));
    let sequence = SequenceNumber::parse("100")?;
    mine[0]
        .checkpoint(Checkpoint::Sequence {
            sequence: sequence.clone(),
            sub_sequence: 0,
        })
        .await?;

    let (b, b_leases) = coordinator(&fleet, "b", &fleet.env.dynamodb_endpoint).await?;
    fleet
        .until("a and b share the shards", |o, c| {
            o.len() == 2 && c.get("a") == Some(&1) && c.get("b") == Some(&1)
        })
        .await?;

    // When each lease A still holds stops being valid, seen from A's side.
    let watch: Vec<ShardLease> = mine.iter().filter(|l| l.is_valid()).cloned().collect();
    assert!(!watch.is_empty(), "a holds a shard when it is cut off");
    let held_at_cut: Vec<String> = watch.iter().map(|l| l.shard_id.clone()).collect();
    let invalid_at = tokio::spawn(async move {
        let mut at: HashMap<String, Instant> = HashMap::new();
        while at.len() < watch.len() {
            for l in &watch {
                if !l.is_valid() {
                    at.entry(l.shard_id.clone()).or_insert_with(Instant::now);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        at
    });

    // Cut A off: every DynamoDB call of A fails. B takes over once A's heartbeat is stale.
    proxy.set(Mode::ThrottleAll);
    fleet
        .until("b owns both shards", |o, _| {
            o.values().all(|w| w.as_deref() == Some("b"))
        })
        .await?;
    let still_valid: Vec<&str> = mine
        .iter()
        .filter(|l| l.is_valid())
        .map(|l| l.shard_id.as_str())
        .collect();
    assert!(
        still_valid.is_empty(),
        "a stopped by itself, without hearing from DynamoDB: {still_valid:?}"
    );
    // A stopped *before* B started on each shard A had.
    let invalid_at = invalid_at.await?;
    let acquired = b_leases.lock().await;
    for shard in &held_at_cut {
        let stopped = invalid_at.get(shard).ok_or("a's stop time")?;
        let (_, started) = acquired.get(shard).ok_or("b acquired it")?;
        eprintln!(
            "{shard}: a stopped {:?} before b acquired it",
            started.saturating_duration_since(*stopped)
        );
        assert!(stopped < started, "{shard}: a stopped before b started");
    }
    drop(acquired);

    // Reconnected, A's old handles still cannot move a checkpoint.
    proxy.set(Mode::Pass);
    let later = Checkpoint::Sequence {
        sequence: SequenceNumber::parse("200")?,
        sub_sequence: 0,
    };
    for lease in &mine {
        let err = lease
            .checkpoint(later.clone())
            .await
            .err()
            .ok_or("a checkpoint on a moved shard must fail")?;
        assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    }
    let snap = fleet.snapshot().await.ok_or("scan")?;
    let cp = snap
        .leases
        .iter()
        .find(|l| l.shard_id == mine[0].shard_id)
        .map(|l| l.checkpoint.clone());
    assert_eq!(
        cp,
        Some(Checkpoint::Sequence {
            sequence,
            sub_sequence: 0
        }),
        "the checkpoint did not move"
    );

    a.shutdown().await;
    b.shutdown().await;
    fleet.cleanup().await
}
