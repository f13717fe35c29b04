//! The lease table against the real (local) DynamoDB server: creation and schema checks,
//! fenced takes and checkpoints, hand-overs, heartbeats, and items exactly as KCL writes
//! them.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use kinesis_operator_tests::{TestEnv, unique_name};
use kinesis_worker::lease::checkpoint::{Checkpoint, SequenceNumber};
use kinesis_worker::lease::model::{Heartbeat, Lease};
use kinesis_worker::lease::table::{LeaseError, LeaseTable};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

async fn table() -> Result<(LeaseTable, aws_sdk_dynamodb::Client)> {
    let env = TestEnv::require();
    let client = env.dynamodb().await;
    let t = LeaseTable::open(client.clone(), &unique_name("leases"), true).await?;
    Ok((t, client))
}

fn seq(s: &str, sub: u64) -> Result<Checkpoint> {
    Ok(Checkpoint::Sequence {
        sequence: SequenceNumber::parse(s)?,
        sub_sequence: sub,
    })
}

async fn lease_of(t: &LeaseTable, shard: &str) -> Result<Lease> {
    let snap = t.scan().await?;
    Ok(snap
        .leases
        .into_iter()
        .find(|l| l.shard_id == shard)
        .ok_or("lease not found")?)
}

#[tokio::test]
async fn open_creates_the_table_once_and_refuses_a_foreign_schema() -> Result<()> {
    let (t, client) = table().await?;
    // Opening again finds it.
    LeaseTable::open(client.clone(), t.name(), true).await?;

    let foreign = unique_name("foreign");
    client
        .create_table()
        .table_name(&foreign)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::N)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    let err = LeaseTable::open(client.clone(), &foreign, true)
        .await
        .err()
        .ok_or("a foreign table must be refused")?;
    assert!(matches!(err, LeaseError::WrongKeySchema { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&foreign) && text.contains("HASH id (N)") && text.contains("leaseKey"),
        "{text}"
    );

    let missing = LeaseTable::open(client, &unique_name("missing"), false)
        .await
        .err()
        .ok_or("missing table without create")?;
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    Ok(())
}

/// A table KCL created (its key only, no owner index) gets the owner index from the first
/// worker, and every worker after it still opens it: adding the index must not lose the
/// table's own key definition (moto replaces the definitions on UpdateTable).
#[tokio::test]
async fn a_kcl_table_keeps_its_key_when_the_owner_index_is_added() -> Result<()> {
    let env = TestEnv::require();
    let client = env.dynamodb().await;
    let name = unique_name("kcl-made");
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    let first = LeaseTable::open(client.clone(), &name, false).await?;
    first.ensure_owner_index().await?;
    let second = LeaseTable::open(client.clone(), &name, false).await;
    assert!(second.is_ok(), "{:?}", second.err().map(|e| e.to_string()));
    let _ = client.delete_table().table_name(&name).send().await;
    Ok(())
}

#[tokio::test]
async fn creating_a_lease_is_idempotent() -> Result<()> {
    let (t, _) = table().await?;
    let mut lease = Lease::new(
        "shardId-000000000002",
        Checkpoint::TrimHorizon,
        vec!["shardId-000000000000".into()],
    );
    lease.hash_range = Some(("0".into(), "170141183460469231731687303715884105727".into()));
    assert!(t.create_lease(&lease).await?);
    assert!(
        !t.create_lease(&lease).await?,
        "a second create changes nothing"
    );
    let read = lease_of(&t, "shardId-000000000002").await?;
    assert_eq!(read, lease);
    Ok(())
}

#[tokio::test]
async fn of_two_workers_taking_one_lease_exactly_one_wins_and_the_loser_is_fenced() -> Result<()> {
    let (t, _) = table().await?;
    t.create_lease(&Lease::new(
        "shardId-000000000000",
        Checkpoint::TrimHorizon,
        Vec::new(),
    ))
    .await?;
    let scanned = lease_of(&t, "shardId-000000000000").await?;
    let (a, b) = tokio::join!(t.take(&scanned, "worker-a"), t.take(&scanned, "worker-b"));
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one take succeeds: {a:?} {b:?}"
    );
    let (mut winner, winner_id, loser) = match (a, b) {
        (Ok(h), Err(e)) => (h, "worker-a", e),
        (Err(e), Ok(h)) => (h, "worker-b", e),
        _ => return Err("both or neither took".into()),
    };
    assert!(matches!(loser, LeaseError::LeaseLost { .. }), "{loser}");
    t.checkpoint(&mut winner, winner_id, seq("100", 0)?).await?;

    // Another worker takes it over (as after a failover); the old owner is fenced.
    let now = lease_of(&t, "shardId-000000000000").await?;
    assert_eq!(now.owner.as_deref(), Some(winner_id));
    assert_eq!(
        now.owner_switches_since_checkpoint, 0,
        "a checkpoint resets the switch count"
    );
    let mut thief = t.take(&now, "worker-c").await?;
    let err = t
        .checkpoint(&mut winner, winner_id, seq("200", 0)?)
        .await
        .err()
        .ok_or("fenced")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    let err = t
        .release(&winner, winner_id)
        .await
        .err()
        .ok_or("fenced release")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");

    // The new owner resumes from the checkpoint and can never move it backwards.
    assert_eq!(thief.checkpoint, seq("100", 0)?);
    let err = t
        .checkpoint(&mut thief, "worker-c", seq("99", 5)?)
        .await
        .err()
        .ok_or("backwards")?;
    assert!(
        matches!(err, LeaseError::CheckpointBackwards { .. }),
        "{err}"
    );
    t.checkpoint(&mut thief, "worker-c", seq("100", 3)?).await?;
    t.checkpoint(&mut thief, "worker-c", Checkpoint::ShardEnd)
        .await?;
    let end = lease_of(&t, "shardId-000000000000").await?;
    assert_eq!(end.checkpoint, Checkpoint::ShardEnd);
    assert!(end.is_finished());
    Ok(())
}

#[tokio::test]
async fn release_lets_anyone_take_at_once() -> Result<()> {
    let (t, _) = table().await?;
    t.create_lease(&Lease::new(
        "shardId-000000000001",
        Checkpoint::Latest,
        Vec::new(),
    ))
    .await?;
    let held = t
        .take(&lease_of(&t, "shardId-000000000001").await?, "worker-a")
        .await?;
    t.release(&held, "worker-a").await?;
    let free = lease_of(&t, "shardId-000000000001").await?;
    assert_eq!(free.owner, None);
    assert_eq!(free.counter, held.counter + 1);
    let again = t.take(&free, "worker-b").await?;
    assert_eq!(again.counter, held.counter + 2);
    Ok(())
}

#[tokio::test]
async fn a_handoff_request_is_answered_by_the_owner_or_taken_after_its_grant_timed_out()
-> Result<()> {
    let (t, _) = table().await?;
    for shard in [
        "shardId-000000000010",
        "shardId-000000000011",
        "shardId-000000000012",
    ] {
        t.create_lease(&Lease::new(shard, Checkpoint::TrimHorizon, Vec::new()))
            .await?;
    }
    let mut held = HashMap::new();
    for shard in [
        "shardId-000000000010",
        "shardId-000000000011",
        "shardId-000000000012",
    ] {
        held.insert(shard, t.take(&lease_of(&t, shard).await?, "owner").await?);
    }

    // Granted: the owner hands over; the request does not disturb the owner's checkpoints.
    let l = lease_of(&t, "shardId-000000000010").await?;
    assert!(t.request_handoff(&l, "joiner").await?);
    assert!(
        !t.request_handoff(&l, "other").await?,
        "one request at a time"
    );
    let h = held.get_mut("shardId-000000000010").ok_or("held")?;
    t.checkpoint(h, "owner", seq("7", 0)?).await?;
    t.hand_over(h, "owner", "joiner", false).await?;
    let after = lease_of(&t, "shardId-000000000010").await?;
    assert_eq!(
        (after.owner.as_deref(), after.handoff_to.as_deref()),
        (Some("joiner"), None)
    );
    assert_eq!(after.checkpoint, seq("7", 0)?);

    // Declined: the request is cleared and a timeout take is then refused.
    let l = lease_of(&t, "shardId-000000000011").await?;
    assert!(t.request_handoff(&l, "joiner").await?);
    t.decline_handoff(held.get("shardId-000000000011").ok_or("held")?, "owner")
        .await?;
    let err = t
        .take_after_handoff_timeout(&l, "joiner")
        .await
        .err()
        .ok_or("declined")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");

    // Not granted: never taken by timeout (the owner may still deliver); a grant for
    // another worker is refused.
    let l = lease_of(&t, "shardId-000000000012").await?;
    assert!(t.request_handoff(&l, "joiner").await?);
    let err = t
        .take_after_handoff_timeout(&l, "joiner")
        .await
        .err()
        .ok_or("taken without the owner's grant")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    let owner_held = held.get("shardId-000000000012").ok_or("held")?;
    let err = t
        .grant_handoff(&owner_held.shard_id, owner_held.counter, "owner", "other")
        .await
        .err()
        .ok_or("granted to a worker that did not ask")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    // Granted and not handed over: taken after the timeout, and the silent owner is fenced.
    t.grant_handoff(&owner_held.shard_id, owner_held.counter, "owner", "joiner")
        .await?;
    let granted = lease_of(&t, "shardId-000000000012").await?;
    assert!(granted.handoff_granted);
    assert_eq!(
        granted.counter, l.counter,
        "a grant does not move the counter"
    );
    t.take_after_handoff_timeout(&l, "joiner").await?;
    let after = lease_of(&t, "shardId-000000000012").await?;
    assert!(!after.handoff_granted && after.handoff_to.is_none());
    let mut old = held.get("shardId-000000000012").ok_or("held")?.clone();
    let err = t
        .checkpoint(&mut old, "owner", seq("9", 0)?)
        .await
        .err()
        .ok_or("fenced")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn heartbeats_are_items_of_their_own() -> Result<()> {
    let (t, _) = table().await?;
    t.create_lease(&Lease::new(
        "shardId-000000000000",
        Checkpoint::TrimHorizon,
        Vec::new(),
    ))
    .await?;
    t.heartbeat(&Heartbeat {
        worker_id: "pod-a".into(),
        counter: 1,
        draining: false,
        lag: Default::default(),
        coordination: None,
        stalled: Default::default(),
        failing: Default::default(),
    })
    .await?;
    t.heartbeat(&Heartbeat {
        worker_id: "pod-a".into(),
        counter: 2,
        draining: true,
        lag: [("shardId-000000000001".to_string(), 1500)].into(),
        coordination: Some("peer".into()),
        stalled: ["shardId-000000000001".to_string()].into(),
        failing: ["shardId-000000000002".to_string()].into(),
    })
    .await?;
    let snap = t.scan().await?;
    assert_eq!(snap.leases.len(), 1, "heartbeats are not leases");
    assert_eq!(
        snap.heartbeats,
        vec![Heartbeat {
            worker_id: "pod-a".into(),
            counter: 2,
            draining: true,
            lag: [("shardId-000000000001".to_string(), 1500)].into(),
            coordination: Some("peer".into()),
            stalled: ["shardId-000000000001".to_string()].into(),
            failing: ["shardId-000000000002".to_string()].into(),
        }]
    );
    t.remove_heartbeat("pod-a").await?;
    assert!(t.scan().await?.heartbeats.is_empty());
    Ok(())
}

/// The operator's claim item, and any other item of ours under `kinesis-operator:`, is not a
/// lease: a scan skips it instead of failing or handing it out.
#[tokio::test]
async fn the_operators_claim_item_is_not_a_lease() -> Result<()> {
    let (t, client) = table().await?;
    t.create_lease(&Lease::new(
        "shardId-000000000000",
        Checkpoint::TrimHorizon,
        Vec::new(),
    ))
    .await?;
    let owner = kinesis_operator::ownership::Owner {
        cluster: "c1".into(),
        namespace: "team-a".into(),
        name: "counter".into(),
        uid: "u-1".into(),
    };
    client
        .put_item()
        .table_name(t.name())
        .set_item(Some(kinesis_operator::ownership::claim_item(&owner)))
        .send()
        .await?;
    // A later item of ours that this version does not know, with no lease attributes.
    client
        .put_item()
        .table_name(t.name())
        .item(
            "leaseKey",
            AttributeValue::S("kinesis-operator:future".into()),
        )
        .item("leaseCounter", AttributeValue::S("not a number".into()))
        .send()
        .await?;
    let snap = t.scan().await?;
    let keys: Vec<&str> = snap.leases.iter().map(|l| l.shard_id.as_str()).collect();
    assert_eq!(keys, ["shardId-000000000000"]);
    assert!(snap.heartbeats.is_empty());
    Ok(())
}

/// One malformed item (a lease KCL or a person wrote wrong) is skipped and counted; the
/// scan, and with it the whole fleet, goes on (issue 10, item 13: it failed every scan).
#[tokio::test]
async fn a_malformed_item_is_skipped_and_counted_not_fatal() -> Result<()> {
    let (t, client) = table().await?;
    t.create_lease(&Lease::new(
        "shardId-000000000000",
        Checkpoint::TrimHorizon,
        Vec::new(),
    ))
    .await?;
    client
        .put_item()
        .table_name(t.name())
        .item("leaseKey", AttributeValue::S("shardId-000000000009".into()))
        .item("leaseCounter", AttributeValue::S("seven".into()))
        .item("checkpoint", AttributeValue::S("TRIM_HORIZON".into()))
        .send()
        .await?;
    client
        .put_item()
        .table_name(t.name())
        .item("leaseKey", AttributeValue::S("shardId-000000000010".into()))
        .item(
            "checkpoint",
            AttributeValue::S("not-a-sequence-number".into()),
        )
        .send()
        .await?;
    let snap = t.scan().await?;
    let keys: Vec<&str> = snap.leases.iter().map(|l| l.shard_id.as_str()).collect();
    assert_eq!(keys, ["shardId-000000000000"]);
    assert_eq!(
        t.counters()
            .bad_items
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    t.scan().await?;
    assert_eq!(
        t.counters()
            .bad_items
            .load(std::sync::atomic::Ordering::Relaxed),
        4,
        "counted on every scan"
    );
    Ok(())
}

#[tokio::test]
async fn items_written_as_kcl_writes_them_are_read_exactly() -> Result<()> {
    let (t, client) = table().await?;
    // Attribute names and DynamoDB types as KCL for Java's DynamoDBLeaseSerializer writes
    // them: a closed parent at SHARD_END with children, and a child mid-way through an
    // aggregated record with a prepared checkpoint.
    let parent = [
        ("leaseKey", AttributeValue::S("shardId-000000000000".into())),
        ("leaseOwner", AttributeValue::S("kcl-worker-1".into())),
        ("leaseCounter", AttributeValue::N("4711".into())),
        ("checkpoint", AttributeValue::S("SHARD_END".into())),
        ("checkpointSubSequenceNumber", AttributeValue::N("0".into())),
        (
            "ownerSwitchesSinceCheckpoint",
            AttributeValue::N("0".into()),
        ),
        (
            "childShardIds",
            AttributeValue::Ss(vec![
                "shardId-000000000001".into(),
                "shardId-000000000002".into(),
            ]),
        ),
        ("startingHashKey", AttributeValue::S("0".into())),
        (
            "endingHashKey",
            AttributeValue::S("340282366920938463463374607431768211455".into()),
        ),
    ];
    let child = [
        ("leaseKey", AttributeValue::S("shardId-000000000001".into())),
        ("leaseOwner", AttributeValue::S("kcl-worker-2".into())),
        ("leaseCounter", AttributeValue::N("12".into())),
        (
            "checkpoint",
            AttributeValue::S("49590338271490256608559692538361571095921575989136588898".into()),
        ),
        ("checkpointSubSequenceNumber", AttributeValue::N("3".into())),
        (
            "ownerSwitchesSinceCheckpoint",
            AttributeValue::N("2".into()),
        ),
        (
            "parentShardId",
            AttributeValue::Ss(vec!["shardId-000000000000".into()]),
        ),
        (
            "pendingCheckpoint",
            AttributeValue::S("49590338271490256608559692540925702759324208523137515618".into()),
        ),
        (
            "pendingCheckpointSubSequenceNumber",
            AttributeValue::N("0".into()),
        ),
        (
            "pendingCheckpointState",
            AttributeValue::B(Blob::new(b"app-state".to_vec())),
        ),
        ("startingHashKey", AttributeValue::S("0".into())),
        (
            "endingHashKey",
            AttributeValue::S("170141183460469231731687303715884105727".into()),
        ),
    ];
    for item in [&parent[..], &child[..]] {
        let mut put = client.put_item().table_name(t.name());
        for (k, v) in item {
            put = put.item(*k, v.clone());
        }
        put.send().await?;
    }
    let p = lease_of(&t, "shardId-000000000000").await?;
    assert_eq!(p.checkpoint, Checkpoint::ShardEnd);
    assert_eq!(p.counter, 4711);
    assert_eq!(
        p.child_shard_ids,
        vec![
            "shardId-000000000001".to_string(),
            "shardId-000000000002".to_string()
        ]
    );
    let c = lease_of(&t, "shardId-000000000001").await?;
    assert_eq!(c.owner.as_deref(), Some("kcl-worker-2"));
    assert_eq!(
        c.checkpoint,
        seq(
            "49590338271490256608559692538361571095921575989136588898",
            3
        )?
    );
    assert_eq!(
        c.pending_checkpoint,
        Some(seq(
            "49590338271490256608559692540925702759324208523137515618",
            0
        )?)
    );
    assert_eq!(
        c.pending_checkpoint_state.as_deref(),
        Some(&b"app-state"[..])
    );
    assert_eq!(c.owner_switches_since_checkpoint, 2);
    assert_eq!(c.parent_shard_ids, vec!["shardId-000000000000".to_string()]);
    assert_eq!(
        c.hash_range,
        Some((
            "0".to_string(),
            "170141183460469231731687303715884105727".to_string()
        ))
    );

    // Taken over by one of ours, it resumes from exactly KCL's checkpoint.
    let held = t.take(&c, "pod-a").await?;
    assert_eq!(
        held.checkpoint,
        seq(
            "49590338271490256608559692538361571095921575989136588898",
            3
        )?
    );
    Ok(())
}

/// Issue 10, item 11: the old owner's last checkpoint lands after the new owner scanned the
/// lease but before it takes it (a checkpoint does not change the counter, so the take still
/// succeeds). The new owner must resume from the checkpoint in the table, not the one it
/// scanned, and its lower write must not move the table's checkpoint backwards.
#[tokio::test]
async fn a_late_checkpoint_of_the_old_owner_and_a_lower_one_of_the_new_owner_never_regress()
-> Result<()> {
    let (t, _) = table().await?;
    let shard = "shardId-000000000042";
    t.create_lease(&Lease::new(shard, Checkpoint::TrimHorizon, Vec::new()))
        .await?;
    let mut old = t.take(&lease_of(&t, shard).await?, "old-owner").await?;
    t.checkpoint(&mut old, "old-owner", seq("50", 0)?).await?;
    // The new owner's scan: checkpoint 50.
    let scanned = lease_of(&t, shard).await?;
    assert_eq!(scanned.checkpoint, seq("50", 0)?);
    // The old owner's late write crosses it.
    t.checkpoint(&mut old, "old-owner", seq("100", 0)?).await?;
    let mut new = t.take(&scanned, "new-owner").await?;
    assert_eq!(
        new.checkpoint,
        seq("100", 0)?,
        "the new owner resumes from the table's checkpoint, read with its take"
    );
    let lower = t.checkpoint(&mut new, "new-owner", seq("70", 0)?).await;
    assert!(
        matches!(lower, Err(LeaseError::CheckpointBackwards { .. })),
        "{lower:?}"
    );
    assert_eq!(lease_of(&t, shard).await?.checkpoint, seq("100", 0)?);
    // The old owner is fenced from here on.
    let late = t.checkpoint(&mut old, "old-owner", seq("120", 0)?).await;
    assert!(
        matches!(late, Err(LeaseError::LeaseLost { .. })),
        "{late:?}"
    );
    t.checkpoint(&mut new, "new-owner", seq("130", 0)?).await?;
    assert_eq!(lease_of(&t, shard).await?.checkpoint, seq("130", 0)?);
    Ok(())
}

/// A grant left behind by a write that does not clear it (a worker from before the grant,
/// during a rollout: it takes after its timeout and removes only `koHandoffTo`) never counts
/// for a later request: a grant names the counter it was given at.
#[tokio::test]
async fn a_stale_grant_never_counts_for_a_later_request() -> Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (t, client) = table().await?;
    let shard = "shardId-000000000020";
    t.create_lease(&Lease::new(shard, Checkpoint::TrimHorizon, Vec::new()))
        .await?;
    let held = t.take(&lease_of(&t, shard).await?, "owner").await?;
    assert!(
        t.request_handoff(&lease_of(&t, shard).await?, "joiner")
            .await?
    );
    t.grant_handoff(shard, held.counter, "owner", "joiner")
        .await?;
    assert!(lease_of(&t, shard).await?.handoff_granted);
    // An old worker's take and a later old-style request by the same worker: the grant
    // attribute is still there, with the earlier counter.
    let key = |u: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder| {
        u.table_name(t.name())
            .key("leaseKey", AttributeValue::S(shard.into()))
    };
    key(client.update_item())
        .update_expression("SET leaseOwner = :o, leaseCounter = :c REMOVE koHandoffTo")
        .expression_attribute_values(":o", AttributeValue::S("old".into()))
        .expression_attribute_values(":c", AttributeValue::N((held.counter + 1).to_string()))
        .send()
        .await?;
    key(client.update_item())
        .update_expression("SET koHandoffTo = :j")
        .expression_attribute_values(":j", AttributeValue::S("joiner".into()))
        .send()
        .await?;
    let l = lease_of(&t, shard).await?;
    assert_eq!(l.handoff_to.as_deref(), Some("joiner"));
    assert!(
        !l.handoff_granted,
        "a grant of counter {} is not one of {}",
        held.counter, l.counter
    );
    let err = t
        .take_after_handoff_timeout(&l, "joiner")
        .await
        .err()
        .ok_or("taken on a stale grant")?;
    assert!(matches!(err, LeaseError::LeaseLost { .. }), "{err}");
    Ok(())
}

/// Issue 30, item 4: the assigner's parallel scan reads every item once. 60 leases and
/// 5 heartbeats scanned in 1, 4 and 16 segments (more segments than some have items): the
/// same leases and heartbeats as one scan, none twice, and the read units' bytes the same.
#[tokio::test]
async fn a_parallel_scan_reads_every_item_once_whatever_the_segments() -> Result<()> {
    let (t, _) = table().await?;
    for i in 0..60 {
        t.create_lease(&Lease::new(
            format!("shardId-{i:012}"),
            Checkpoint::TrimHorizon,
            Vec::new(),
        ))
        .await?;
    }
    for w in 0..5 {
        t.heartbeat(&Heartbeat {
            worker_id: format!("pod-{w}"),
            counter: 1,
            draining: false,
            lag: Default::default(),
            coordination: Some("assigner".into()),
            stalled: Default::default(),
            failing: Default::default(),
        })
        .await?;
    }
    let keys = |s: &kinesis_worker::lease::model::TableSnapshot| {
        let mut l: Vec<String> = s.leases.iter().map(|l| l.shard_id.clone()).collect();
        let mut h: Vec<String> = s.heartbeats.iter().map(|h| h.worker_id.clone()).collect();
        l.sort();
        h.sort();
        (l, h)
    };
    let (one, one_report) = t.scan_parallel(true, 1).await?;
    assert_eq!(one.leases.len(), 60);
    assert_eq!(one.heartbeats.len(), 5);
    for segments in [4, 16] {
        let (many, report) = t.scan_parallel(true, segments).await?;
        assert_eq!(
            many.leases.len(),
            60,
            "{segments} segments: a lease twice or missing"
        );
        assert_eq!(many.heartbeats.len(), 5, "{segments} segments");
        assert_eq!(keys(&many), keys(&one), "{segments} segments");
        assert_eq!(report.bytes, one_report.bytes, "{segments} segments");
    }
    Ok(())
}
