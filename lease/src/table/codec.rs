//! The lease table's item codec: leases, heartbeats, the assigner item and owner-index
//! entries to and from DynamoDB attribute maps, which scanned item is what, item sizes,
//! keys as a log line may repeat them. Pure: no I/O.
//!
//! A decoding error is the reason as text; [`super::LeaseTable`] wraps it in
//! [`super::LeaseError::BadItem`] with the table's name.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::assign::OwnedLease;
use crate::checkpoint::Checkpoint;
use crate::model::{
    AssignerItem, HEARTBEAT_KEY_PREFIX, Heartbeat, Lease, RESERVED_KEY_PREFIX, attr,
};

/// A DynamoDB item (or key): attribute name to value.
pub(super) type Item = HashMap<String, AttributeValue>;

/// An item's size as DynamoDB counts it (attribute names plus values; numbers approximated
/// by their digits), for the request-unit counters.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 0,
    }
}

/// A key as a log line may repeat it: at most 128 characters (a tenant may write a key of
/// 2 KB).
pub fn bounded_key(key: &str) -> String {
    key.chars().take(128).collect()
}

/// A string attribute.
pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

/// A number attribute.
pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The value of `koHandoffGranted`: the requester and the lease counter it was granted at.
pub(super) fn grant_value(to: &str, counter: u64) -> String {
    format!("{to}@{counter}")
}

/// A number attribute as a whole number; `None` if absent.
fn num(item: &Item, a: &str) -> Result<Option<u64>, String> {
    match item.get(a) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{a} = {v} is not a whole number")),
        Some(other) => Err(format!("{a} is {other:?}, expected a number")),
    }
}

/// An item's `leaseKey`; empty if it has no string one.
pub(super) fn lease_key(item: &Item) -> String {
    item.get(attr::LEASE_KEY)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default()
}

/// What a scanned item is, by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ItemKind {
    /// A worker's heartbeat.
    Heartbeat,
    /// One of ours that is neither (the assigner item, the operator's claim item, any later
    /// one): not a lease.
    Reserved,
    /// A lease (KCL's or ours); an empty key is a lease that cannot be read.
    Lease,
}

/// Which kind of item `key` names (a heartbeat key is also a reserved one: it is checked
/// first).
pub(super) fn kind_of(key: &str) -> ItemKind {
    if key.starts_with(HEARTBEAT_KEY_PREFIX) {
        ItemKind::Heartbeat
    } else if key.starts_with(RESERVED_KEY_PREFIX) {
        ItemKind::Reserved
    } else {
        ItemKind::Lease
    }
}

/// A scanned item that is a lease or a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// A worker's heartbeat.
    Heartbeat(Heartbeat),
    /// A shard's lease.
    Lease(Lease),
}

/// Decodes a scanned item with key `key`: `Ok(None)` for a reserved item (not a lease),
/// `Err` with what is wrong for one that cannot be read.
pub(super) fn entry_from_item(key: &str, item: &Item) -> Result<Option<Entry>, String> {
    match kind_of(key) {
        ItemKind::Heartbeat => heartbeat_from_item(key, item).map(|h| Some(Entry::Heartbeat(h))),
        ItemKind::Reserved => Ok(None),
        ItemKind::Lease => lease_from_item(key, item).map(|l| Some(Entry::Lease(l))),
    }
}

/// Is an owner-index entry with key `key` a lease (not one of our reserved items, not
/// keyless)? Entries that are not are skipped silently.
pub(super) fn is_indexed_lease(key: &str) -> bool {
    !key.is_empty() && !key.starts_with(RESERVED_KEY_PREFIX)
}

/// Decodes an owner-index entry (key `key`, which [`is_indexed_lease`]).
pub(super) fn owned_from_item(key: &str, item: &Item) -> Result<OwnedLease, String> {
    let counter = num(item, attr::LEASE_COUNTER)?;
    Ok(OwnedLease {
        shard_id: key.to_string(),
        counter: counter.unwrap_or(0),
        handoff_to: item
            .get(attr::HANDOFF_TO)
            .and_then(|v| v.as_s().ok())
            .cloned(),
    })
}

/// Decodes the assigner item.
pub(super) fn assigner_from_item(item: &Item) -> Result<AssignerItem, String> {
    Ok(AssignerItem {
        owner: item
            .get(attr::LEASE_OWNER)
            .and_then(|v| v.as_s().ok())
            .cloned(),
        term: num(item, attr::LEASE_COUNTER)?.unwrap_or(0),
        successors: match item.get(attr::SUCCESSORS) {
            Some(AttributeValue::Ss(v)) => {
                let mut v = v.clone();
                v.sort();
                v
            }
            _ => Vec::new(),
        },
    })
}

/// Decodes a heartbeat item with key `key`.
pub(super) fn heartbeat_from_item(key: &str, item: &Item) -> Result<Heartbeat, String> {
    let worker_id = key.trim_start_matches(HEARTBEAT_KEY_PREFIX).to_string();
    Ok(Heartbeat {
        worker_id,
        counter: num(item, attr::HEARTBEAT)?.unwrap_or(0),
        draining: item
            .get(attr::DRAINING)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        lag: item
            .get(attr::LAG)
            .and_then(|v| v.as_m().ok())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default(),
        coordination: item
            .get(attr::COORDINATION)
            .and_then(|v| v.as_s().ok())
            .cloned(),
        stalled: string_set(item, attr::STALLED),
        failing: string_set(item, attr::FAILING),
    })
}

/// A string set attribute (absent or not a string set: empty).
fn string_set(item: &Item, name: &str) -> std::collections::BTreeSet<String> {
    item.get(name)
        .and_then(|v| v.as_ss().ok())
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

/// A heartbeat's item, as [`super::LeaseTable::heartbeat`] puts it.
pub(super) fn heartbeat_item(beat: &Heartbeat) -> Item {
    let mut item = Item::new();
    if let Some(c) = &beat.coordination {
        item.insert(attr::COORDINATION.to_string(), s(c));
    }
    // A string set cannot be empty: absent means none.
    for (name, set) in [
        (attr::STALLED, &beat.stalled),
        (attr::FAILING, &beat.failing),
    ] {
        if !set.is_empty() {
            item.insert(
                name.to_string(),
                AttributeValue::Ss(set.iter().cloned().collect()),
            );
        }
    }
    item.insert(
        attr::LEASE_KEY.to_string(),
        s(&Heartbeat::key(&beat.worker_id)),
    );
    item.insert(attr::WORKER_ID.to_string(), s(&beat.worker_id));
    item.insert(attr::HEARTBEAT.to_string(), n(beat.counter));
    item.insert(
        attr::DRAINING.to_string(),
        AttributeValue::Bool(beat.draining),
    );
    item.insert(
        attr::LAG.to_string(),
        AttributeValue::M(
            beat.lag
                .iter()
                .map(|(shard, ms)| (shard.clone(), AttributeValue::N(ms.to_string())))
                .collect(),
        ),
    );
    item
}

/// A heartbeat item's size as the write counters charge it: key, worker id, counter, flag,
/// and the lag map (an estimate, not [`item_size`]).
pub(super) fn heartbeat_size(beat: &Heartbeat) -> usize {
    attr::LEASE_KEY.len()
        + Heartbeat::key(&beat.worker_id).len()
        + attr::WORKER_ID.len()
        + beat.worker_id.len()
        + attr::HEARTBEAT.len()
        + 8
        + attr::DRAINING.len()
        + 1
        + attr::LAG.len()
        + beat.lag.keys().map(|k| k.len() + 8).sum::<usize>()
        + beat
            .coordination
            .as_ref()
            .map_or(0, |c| attr::COORDINATION.len() + c.len())
        + [
            (attr::STALLED, &beat.stalled),
            (attr::FAILING, &beat.failing),
        ]
        .iter()
        .filter(|(_, set)| !set.is_empty())
        .map(|(name, set)| name.len() + set.iter().map(String::len).sum::<usize>())
        .sum::<usize>()
}

/// A new shard's lease item, as [`super::LeaseTable::create_lease`] puts it: key, counter,
/// checkpoint, no owner switches, and the parents and hash range when known.
pub(super) fn new_lease_item(lease: &Lease) -> Item {
    let (cp, sub) = lease.checkpoint.to_kcl();
    let mut item = Item::new();
    item.insert(attr::LEASE_KEY.to_string(), s(&lease.shard_id));
    item.insert(attr::LEASE_COUNTER.to_string(), n(lease.counter));
    item.insert(attr::CHECKPOINT.to_string(), s(cp));
    item.insert(attr::CHECKPOINT_SUB.to_string(), n(sub));
    item.insert(attr::OWNER_SWITCHES.to_string(), n(0));
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            attr::PARENT_SHARD_IDS.to_string(),
            AttributeValue::Ss(lease.parent_shard_ids.clone()),
        );
    }
    if let Some((start, end)) = &lease.hash_range {
        item.insert(attr::STARTING_HASH_KEY.to_string(), s(start));
        item.insert(attr::ENDING_HASH_KEY.to_string(), s(end));
    }
    item
}

/// Decodes a lease item with key `key`, written by us or by KCL (any version since 1.x).
pub(super) fn lease_from_item(key: &str, item: &Item) -> Result<Lease, String> {
    if key.is_empty() {
        return Err("no leaseKey string".to_string());
    }
    let checkpoint_of = |cp: &str, sub: &str| -> Result<Option<Checkpoint>, String> {
        match item.get(cp).and_then(|v| v.as_s().ok()) {
            None => Ok(None),
            Some(text) => {
                let sub = num(item, sub)?.unwrap_or(0);
                Checkpoint::from_kcl(text, sub)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        }
    };
    // KCL always writes a checkpoint; an item without one starts from the oldest record,
    // which skips nothing.
    let checkpoint =
        checkpoint_of(attr::CHECKPOINT, attr::CHECKPOINT_SUB)?.unwrap_or(Checkpoint::TrimHorizon);
    let strings = |a: &str| -> Vec<String> {
        match item.get(a) {
            Some(AttributeValue::Ss(v)) => {
                let mut v = v.clone();
                v.sort();
                v
            }
            // Older KCL versions wrote a single parent as a string.
            Some(AttributeValue::S(v)) => vec![v.clone()],
            _ => Vec::new(),
        }
    };
    let hash_range = match (
        item.get(attr::STARTING_HASH_KEY)
            .and_then(|v| v.as_s().ok()),
        item.get(attr::ENDING_HASH_KEY).and_then(|v| v.as_s().ok()),
    ) {
        (Some(a), Some(b)) => Some((a.clone(), b.clone())),
        _ => None,
    };
    Ok(Lease {
        shard_id: key.to_string(),
        owner: item
            .get(attr::LEASE_OWNER)
            .and_then(|v| v.as_s().ok())
            .cloned(),
        counter: num(item, attr::LEASE_COUNTER)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint: checkpoint_of(attr::PENDING_CHECKPOINT, attr::PENDING_CHECKPOINT_SUB)?,
        pending_checkpoint_state: item
            .get(attr::PENDING_CHECKPOINT_STATE)
            .and_then(|v| v.as_b().ok())
            .map(|b| b.as_ref().to_vec()),
        owner_switches_since_checkpoint: num(item, attr::OWNER_SWITCHES)?.unwrap_or(0),
        parent_shard_ids: strings(attr::PARENT_SHARD_IDS),
        child_shard_ids: strings(attr::CHILD_SHARD_IDS),
        hash_range,
        // A grant names the requester and the counter it was given at: one left behind
        // by a write that does not clear it (an older worker's) never matches a later
        // request.
        handoff_granted: item
            .get(attr::HANDOFF_GRANTED)
            .and_then(|v| v.as_s().ok())
            .is_some_and(|g| {
                let counter = num(item, attr::LEASE_COUNTER).ok().flatten().unwrap_or(0);
                item.get(attr::HANDOFF_TO)
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|to| *g == grant_value(to, counter))
            }),
        handoff_to: item
            .get(attr::HANDOFF_TO)
            .and_then(|v| v.as_s().ok())
            .cloned(),
        start_timestamp_ms: item
            .get(attr::START_TIMESTAMP)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok()),
        assigned: item
            .get(attr::ASSIGNED)
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SequenceNumber;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn items_are_classified_by_their_key() {
        assert_eq!(kind_of("shardId-000000000000"), ItemKind::Lease);
        assert_eq!(kind_of(""), ItemKind::Lease);
        assert_eq!(kind_of(&Heartbeat::key("w1")), ItemKind::Heartbeat);
        assert_eq!(kind_of(crate::model::ASSIGNER_KEY), ItemKind::Reserved);
        assert_eq!(kind_of("kinesis-operator:claim"), ItemKind::Reserved);
        assert!(is_indexed_lease("shardId-000000000000"));
        assert!(!is_indexed_lease(""));
        assert!(!is_indexed_lease(crate::model::ASSIGNER_KEY));
        assert!(!is_indexed_lease(&Heartbeat::key("w1")));
    }

    #[test]
    fn a_new_lease_item_reads_back_as_the_lease() {
        let Ok(sequence) = SequenceNumber::parse("4955") else {
            panic!("4955 is a sequence number");
        };
        let mut lease = Lease::new(
            "shardId-000000000002",
            Checkpoint::Sequence {
                sequence,
                sub_sequence: 3,
            },
            vec!["shardId-000000000000".into(), "shardId-000000000001".into()],
        );
        lease.counter = 7;
        lease.hash_range = Some(("0".into(), "170141183460469231731687303715884105727".into()));
        let written = new_lease_item(&lease);
        assert_eq!(lease_key(&written), lease.shard_id);
        assert_eq!(written.get(attr::OWNER_SWITCHES), Some(&n(0)));
        assert_eq!(
            lease_from_item(&lease.shard_id, &written),
            Ok(lease.clone())
        );
        assert_eq!(
            entry_from_item(&lease.shard_id, &written),
            Ok(Some(Entry::Lease(lease)))
        );

        let bare = Lease::new("shardId-000000000003", Checkpoint::Latest, Vec::new());
        let written = new_lease_item(&bare);
        assert!(!written.contains_key(attr::PARENT_SHARD_IDS));
        assert!(!written.contains_key(attr::STARTING_HASH_KEY));
        assert_eq!(lease_from_item(&bare.shard_id, &written), Ok(bare));
    }

    #[test]
    fn a_kcl_lease_item_reads_with_its_older_shapes() {
        let i = item(&[
            (attr::LEASE_KEY, s("shardId-1")),
            (attr::LEASE_OWNER, s("w1")),
            (attr::LEASE_COUNTER, n(5)),
            (attr::PARENT_SHARD_IDS, s("shardId-0")),
            (attr::HANDOFF_TO, s("w2")),
            (attr::HANDOFF_GRANTED, s(&grant_value("w2", 5))),
        ]);
        let Ok(l) = lease_from_item("shardId-1", &i) else {
            panic!("a KCL lease reads");
        };
        assert_eq!(l.owner.as_deref(), Some("w1"));
        assert_eq!(l.checkpoint, Checkpoint::TrimHorizon);
        assert_eq!(l.parent_shard_ids, vec!["shardId-0".to_string()]);
        assert!(l.handoff_granted);
        // A grant given at another counter does not count.
        let mut stale = i.clone();
        stale.insert(attr::HANDOFF_GRANTED.into(), s(&grant_value("w2", 4)));
        assert_eq!(
            lease_from_item("shardId-1", &stale).map(|l| l.handoff_granted),
            Ok(false)
        );
    }

    #[test]
    fn a_malformed_lease_says_what_is_wrong() {
        assert_eq!(
            lease_from_item("", &Item::new()),
            Err("no leaseKey string".to_string())
        );
        let i = item(&[(attr::LEASE_COUNTER, AttributeValue::N("x".into()))]);
        assert_eq!(
            lease_from_item("shardId-1", &i),
            Err("leaseCounter = x is not a whole number".to_string())
        );
        let i = item(&[(attr::LEASE_COUNTER, s("1"))]);
        assert!(
            matches!(lease_from_item("shardId-1", &i), Err(e) if e.contains("expected a number"))
        );
        let i = item(&[(attr::CHECKPOINT, s("garbage"))]);
        assert!(lease_from_item("shardId-1", &i).is_err());
        assert!(entry_from_item("shardId-1", &i).is_err());
        // A reserved item is not read at all.
        assert_eq!(entry_from_item(crate::model::ASSIGNER_KEY, &i), Ok(None));
    }

    #[test]
    fn a_heartbeat_item_reads_back_as_the_heartbeat() {
        let beat = Heartbeat {
            worker_id: "w1".into(),
            counter: 42,
            draining: true,
            lag: [("shardId-1".to_string(), 1500_i64)].into_iter().collect(),
            coordination: Some("assigner".into()),
            stalled: ["shardId-2".to_string()].into_iter().collect(),
            failing: ["shardId-3".to_string()].into_iter().collect(),
        };
        let written = heartbeat_item(&beat);
        let key = lease_key(&written);
        assert_eq!(key, Heartbeat::key("w1"));
        assert_eq!(heartbeat_from_item(&key, &written), Ok(beat.clone()));
        assert_eq!(
            entry_from_item(&key, &written),
            Ok(Some(Entry::Heartbeat(beat.clone())))
        );
        assert!(heartbeat_size(&beat) > 0);

        let quiet = Heartbeat {
            coordination: None,
            stalled: Default::default(),
            failing: Default::default(),
            ..beat
        };
        let written = heartbeat_item(&quiet);
        assert!(!written.contains_key(attr::STALLED));
        assert!(!written.contains_key(attr::FAILING));
        assert!(!written.contains_key(attr::COORDINATION));
        assert_eq!(heartbeat_from_item(&key, &written), Ok(quiet));
    }

    #[test]
    fn the_assigner_item_and_owner_index_entries_decode() {
        let i = item(&[
            (attr::LEASE_OWNER, s("w1")),
            (attr::LEASE_COUNTER, n(3)),
            (
                attr::SUCCESSORS,
                AttributeValue::Ss(vec!["w3".into(), "w2".into()]),
            ),
        ]);
        assert_eq!(
            assigner_from_item(&i),
            Ok(AssignerItem {
                owner: Some("w1".into()),
                term: 3,
                successors: vec!["w2".into(), "w3".into()],
            })
        );
        let bad = item(&[(attr::LEASE_COUNTER, s("3"))]);
        assert!(assigner_from_item(&bad).is_err());

        let e = item(&[(attr::LEASE_COUNTER, n(9)), (attr::HANDOFF_TO, s("w2"))]);
        assert_eq!(
            owned_from_item("shardId-1", &e),
            Ok(OwnedLease {
                shard_id: "shardId-1".into(),
                counter: 9,
                handoff_to: Some("w2".into()),
            })
        );
        assert!(owned_from_item("shardId-1", &bad).is_err());
    }

    #[test]
    fn sizes_and_logged_keys() {
        let i = item(&[(attr::LEASE_KEY, s("abc")), ("n", n(1234))]);
        assert_eq!(item_size(&i), attr::LEASE_KEY.len() + 3 + 1 + 3);
        assert_eq!(bounded_key(&"k".repeat(2048)).len(), 128);
        assert_eq!(bounded_key("short"), "short");
    }
}
