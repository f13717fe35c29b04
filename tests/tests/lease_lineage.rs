//! Resharding and adoption with `kinesis-worker leases` processes on the local servers:
//! children of a split or a merge start only after every parent reached `SHARD_END`, and a
//! table written by KCL is taken over at exactly its checkpoints.

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_operator_tests::fleet::{DEADLINE, Fleet, POLL};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::checkpoint::Checkpoint;
use kinesis_worker::lease::model::Lease;
use kinesis_worker::lease::table::HeldLease;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// 2^127: the middle of the hash key space.
const MIDDLE: &str = "170141183460469231731687303715884105728";

async fn wait_active(fleet: &Fleet) -> Result<()> {
    fleet.env.wait_stream_active(&fleet.stream).await
}

async fn lease(fleet: &Fleet, shard: &str) -> Result<Lease> {
    let snap = fleet.snapshot().await.ok_or("scan failed")?;
    Ok(snap
        .leases
        .into_iter()
        .find(|l| l.shard_id == shard)
        .ok_or_else(|| format!("no lease for {shard}"))?)
}

/// Writes `SHARD_END` for `shard` as its owner's record pipeline does at the end of a shard.
async fn finish(fleet: &Fleet, shard: &str) -> Result<()> {
    let l = lease(fleet, shard).await?;
    let owner = l.owner.clone().ok_or("a parent is finished by its owner")?;
    let mut held = HeldLease {
        shard_id: l.shard_id.clone(),
        counter: l.counter,
        checkpoint: l.checkpoint.clone(),
        start_timestamp_ms: l.start_timestamp_ms,
    };
    fleet
        .table
        .checkpoint(&mut held, &owner, Checkpoint::ShardEnd)
        .await?;
    Ok(())
}

/// Waits until `w`'s heartbeat has advanced `n` times: time passes for the fleet to act.
async fn beats(fleet: &Fleet, w: &str, n: u64) -> Result<()> {
    let now = fleet.snapshot().await.ok_or("scan")?;
    let start = now
        .heartbeats
        .iter()
        .find(|h| h.worker_id == w)
        .map_or(0, |h| h.counter);
    wait_for("heartbeats", DEADLINE, POLL, || async {
        let s = fleet.snapshot().await?;
        s.heartbeats
            .iter()
            .any(|h| h.worker_id == w && h.counter >= start + n)
            .then_some(())
    })
    .await?;
    Ok(())
}

fn owner_of(snap_owner: Option<&Lease>) -> Option<String> {
    snap_owner.and_then(|l| l.owner.clone())
}

#[tokio::test]
async fn children_of_a_split_and_of_a_merge_wait_for_every_parent() -> Result<()> {
    let fleet = Fleet::new(1).await?;
    let _w1 = fleet.worker("w1", &[])?;
    let parent = "shardId-000000000000";
    fleet
        .until("w1 owns the only shard", |o, _| {
            o.get(parent).is_some_and(|w| w.as_deref() == Some("w1"))
        })
        .await?;

    // Split: two children, blocked while the parent is not at SHARD_END.
    let kinesis = fleet.env.kinesis().await;
    kinesis
        .split_shard()
        .stream_name(&fleet.stream)
        .shard_to_split(parent)
        .new_starting_hash_key(MIDDLE)
        .send()
        .await?;
    wait_active(&fleet).await?;
    let (_, snap) = fleet
        .until("leases for the split's children", |o, _| o.len() == 3)
        .await?;
    let children: Vec<String> = snap
        .leases
        .iter()
        .filter(|l| l.parent_shard_ids == vec![parent.to_string()])
        .map(|l| l.shard_id.clone())
        .collect();
    assert_eq!(children.len(), 2, "{:?}", snap.leases);
    beats(&fleet, "w1", 3).await?;
    let snap = fleet.snapshot().await.ok_or("scan")?;
    for c in &children {
        assert_eq!(
            owner_of(snap.leases.iter().find(|l| &l.shard_id == c)),
            None,
            "{c} waits for its parent"
        );
    }
    finish(&fleet, parent).await?;
    fleet
        .until("both children taken once the parent ended", |o, _| {
            children
                .iter()
                .all(|c| o.get(c).is_some_and(|w| w.as_deref() == Some("w1")))
        })
        .await?;

    // Merge the two children: the merged shard waits for both.
    kinesis
        .merge_shards()
        .stream_name(&fleet.stream)
        .shard_to_merge(&children[0])
        .adjacent_shard_to_merge(&children[1])
        .send()
        .await?;
    wait_active(&fleet).await?;
    let (_, snap) = fleet
        .until("a lease for the merged shard", |o, _| o.len() == 4)
        .await?;
    let merged = snap
        .leases
        .iter()
        .find(|l| l.parent_shard_ids.len() == 2)
        .map(|l| l.shard_id.clone())
        .ok_or("a lease with two parents")?;
    finish(&fleet, &children[0]).await?;
    beats(&fleet, "w1", 3).await?;
    let snap = fleet.snapshot().await.ok_or("scan")?;
    assert_eq!(
        owner_of(snap.leases.iter().find(|l| l.shard_id == merged)),
        None,
        "one parent is not enough"
    );
    finish(&fleet, &children[1]).await?;
    fleet
        .until("merged shard taken once both parents ended", |o, _| {
            o.get(&merged).is_some_and(|w| w.as_deref() == Some("w1"))
        })
        .await?;
    fleet.cleanup().await
}

#[tokio::test]
async fn a_table_written_by_kcl_is_taken_over_at_its_checkpoints() -> Result<()> {
    let fleet = Fleet::new(2).await?;
    let ddb = fleet.env.dynamodb().await;
    // As KCL for Java writes them, owned by KCL workers that are gone: one shard in the middle
    // of an aggregated record, one at a plain record.
    let items = [
        (
            "shardId-000000000000",
            "49590338271490256608559692538361571095921575989136588898",
            "3",
        ),
        (
            "shardId-000000000001",
            "49590338271490256608559692540925702759324208523137515618",
            "0",
        ),
    ];
    for (shard, seq, sub) in items {
        ddb.put_item()
            .table_name(&fleet.app)
            .item("leaseKey", AttributeValue::S(shard.into()))
            .item("leaseOwner", AttributeValue::S("kcl-worker-gone".into()))
            .item("leaseCounter", AttributeValue::N("812".into()))
            .item("checkpoint", AttributeValue::S(seq.into()))
            .item("checkpointSubSequenceNumber", AttributeValue::N(sub.into()))
            .item(
                "ownerSwitchesSinceCheckpoint",
                AttributeValue::N("0".into()),
            )
            .send()
            .await?;
    }
    let w1 = fleet.worker("w1", &[])?;
    // KCL's owners have no heartbeat: their leases expire by KCL's own rule (counter
    // unchanged for the failover time), then w1 takes them.
    fleet
        .until("w1 owns both shards", |o, _| {
            o.len() == 2 && o.values().all(|w| w.as_deref() == Some("w1"))
        })
        .await?;
    let lines = wait_for("w1 reports both acquisitions", DEADLINE, POLL, || {
        let lines = w1.lines();
        async move {
            (lines.iter().filter(|l| l.starts_with("acquired ")).count() == 2).then_some(lines)
        }
    })
    .await?;
    assert!(
        lines.contains(&"acquired shardId-000000000000 49590338271490256608559692538361571095921575989136588898/3".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"acquired shardId-000000000001 49590338271490256608559692540925702759324208523137515618".to_string()),
        "{lines:?}"
    );
    fleet.cleanup().await
}

/// Issue 13: the table's size follows the live shards. A finished parent whose children
/// have all started is deleted (as KCL's cleanup does); a finished parent whose child has
/// not started yet is kept; a dead worker's heartbeat item (unchanged for three failover
/// times, owning nothing) is deleted; the live worker's own is not.
#[tokio::test]
async fn finished_parents_and_dead_workers_heartbeats_are_removed() -> Result<()> {
    use kinesis_worker::lease::checkpoint::SequenceNumber;
    use kinesis_worker::lease::model::Heartbeat;
    let fleet = Fleet::new(1).await?;
    let t = &fleet.table;
    let started = Checkpoint::Sequence {
        sequence: SequenceNumber::parse("100")?,
        sub_sequence: 0,
    };
    // done-parent -> started-child; kept-parent -> waiting-child (still at its start).
    for (id, parents) in [
        ("done-parent", vec![]),
        ("started-child", vec!["done-parent".to_string()]),
        ("kept-parent", vec![]),
        ("waiting-child", vec!["kept-parent".to_string()]),
    ] {
        t.create_lease(&Lease::new(id, Checkpoint::TrimHorizon, parents))
            .await?;
    }
    for (id, cp) in [
        ("done-parent", Checkpoint::ShardEnd),
        ("started-child", started.clone()),
        ("kept-parent", Checkpoint::ShardEnd),
    ] {
        let l = lease(&fleet, id).await?;
        let mut held = t.take(&l, "old-worker").await?;
        t.checkpoint(&mut held, "old-worker", cp).await?;
        t.release(&held, "old-worker").await?;
    }
    t.heartbeat(&Heartbeat {
        worker_id: "ghost".into(),
        counter: 7,
        draining: false,
        lag: Default::default(),
        coordination: None,
        stalled: Default::default(),
        failing: Default::default(),
    })
    .await?;

    let w1 = fleet.worker("w1", &[])?;
    wait_for(
        "the finished parent and the ghost's heartbeat removed",
        DEADLINE,
        POLL,
        || async {
            let snap = fleet.snapshot().await?;
            let has = |id: &str| snap.leases.iter().any(|l| l.shard_id == id);
            let ghost = snap.heartbeats.iter().any(|h| h.worker_id == "ghost");
            (!has("done-parent") && !ghost).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", w1.log_tail()))?;
    let snap = fleet.snapshot().await.ok_or("scan")?;
    for id in ["started-child", "kept-parent", "waiting-child"] {
        assert!(
            snap.leases.iter().any(|l| l.shard_id == id),
            "{id} is kept: {:?}",
            snap.leases
        );
    }
    assert!(
        snap.heartbeats.iter().any(|h| h.worker_id == "w1"),
        "the live worker's heartbeat is kept"
    );
    fleet.cleanup().await
}
