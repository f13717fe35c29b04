//! What a `KinesisApplication` owns in AWS, and proof of it.
//!
//! The operator acts with one AWS identity for the whole cluster, so every object is treated
//! as a request from an untrusted tenant: it may use, and clean up, only what it owns.
//!
//! - **The claim item.** Every lease table in use carries one item `kinesis-operator:claim`
//!   naming the object that uses it (cluster, namespace, name, uid). It is written with a
//!   condition (absent, or already this uid), so of two objects pointing at one table, in any
//!   namespace or cluster, exactly one wins; the other gets `LeaseTableConflict` and no
//!   Deployment. The item looks like a finished lease to older workers (`checkpoint:
//!   SHARD_END`), and workers skip every `kinesis-operator:` key that is not a heartbeat.
//! - **Tags on what the operator creates.** A lease table the operator creates gets the tags
//!   of [`resource_tags`] (`kinesis-operator.io/managed: "true"` and the owner), and so does a
//!   fan-out consumer it registers; docs/IAM.md lets `DeleteTable` and
//!   `DeregisterStreamConsumer` act only on resources tagged managed, so not even a bug here
//!   can delete another table.
//!
//! # Guarantees
//! - A lease table is deleted only if `deletionPolicy` is `Delete`, its tags say the operator
//!   created it for this cluster, namespace and name, and this object (by uid) holds its
//!   claim. A table the user pointed at (adopted) is never deleted: the operator says so in a
//!   Warning Event and leaves it.
//! - A fan-out consumer is deregistered only if this object's claim records that the
//!   operator registered it for this object.
//! - Deleting an object that never won the claim changes nothing in AWS.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::crd::DeletionPolicy;

/// `leaseKey` of the claim item.
pub const CLAIM_KEY: &str = "kinesis-operator:claim";
/// Tag on every resource the operator created: `"true"`.
pub const TAG_MANAGED: &str = "kinesis-operator.io/managed";
/// Tag: the owner's cluster (the operator's `--cluster-name`).
pub const TAG_CLUSTER: &str = "kinesis-operator.io/cluster";
/// Tag: the owner's namespace.
pub const TAG_NAMESPACE: &str = "kinesis-operator.io/namespace";
/// Tag: the owner's name.
pub const TAG_NAME: &str = "kinesis-operator.io/name";
/// Tag: the owner's uid when the resource was created.
pub const TAG_UID: &str = "kinesis-operator.io/uid";

/// Attributes of the claim item.
pub mod attr {
    /// The owner's cluster.
    pub const CLUSTER: &str = "koClaimCluster";
    /// The owner's namespace.
    pub const NAMESPACE: &str = "koClaimNamespace";
    /// The owner's name.
    pub const NAME: &str = "koClaimName";
    /// The owner's uid: the condition of every claim write.
    pub const UID: &str = "koClaimUid";
    /// The fan-out consumer the operator registered for the owner.
    pub const CONSUMER: &str = "koClaimConsumer";
}

/// The object that owns (or asks for) a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The operator's cluster name.
    pub cluster: String,
    /// Namespace of the KinesisApplication.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (unique across clusters and re-creations).
    pub uid: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KinesisApplication {}/{} (uid {}) in cluster `{}`",
            self.namespace, self.name, self.uid, self.cluster
        )
    }
}

/// A claim item as read from a lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Who holds it.
    pub owner: Owner,
    /// The fan-out consumer the operator registered for this owner, if any.
    pub consumer: Option<String>,
}

/// The tags of a resource the operator creates for `owner`.
pub fn resource_tags(owner: &Owner) -> Vec<(String, String)> {
    vec![
        (TAG_MANAGED.into(), "true".into()),
        (TAG_CLUSTER.into(), owner.cluster.clone()),
        (TAG_NAMESPACE.into(), owner.namespace.clone()),
        (TAG_NAME.into(), owner.name.clone()),
        (TAG_UID.into(), owner.uid.clone()),
    ]
}

/// The claim item for `owner`.
pub fn claim_item(owner: &Owner) -> HashMap<String, AttributeValue> {
    let s = |v: &str| AttributeValue::S(v.to_string());
    HashMap::from([
        ("leaseKey".to_string(), s(CLAIM_KEY)),
        // An older worker reads it as a finished lease and leaves it alone.
        ("checkpoint".to_string(), s("SHARD_END")),
        ("leaseCounter".to_string(), AttributeValue::N("0".into())),
        (attr::CLUSTER.to_string(), s(&owner.cluster)),
        (attr::NAMESPACE.to_string(), s(&owner.namespace)),
        (attr::NAME.to_string(), s(&owner.name)),
        (attr::UID.to_string(), s(&owner.uid)),
    ])
}

/// Reads a claim item; `None` if it is not one (no uid).
pub fn parse_claim(item: &HashMap<String, AttributeValue>) -> Option<Claim> {
    let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    Some(Claim {
        owner: Owner {
            cluster: get(attr::CLUSTER).unwrap_or_default(),
            namespace: get(attr::NAMESPACE).unwrap_or_default(),
            name: get(attr::NAME).unwrap_or_default(),
            uid: get(attr::UID)?,
        },
        consumer: get(attr::CONSUMER),
    })
}

/// Was the resource with these tags created by the operator for `owner`'s cluster,
/// namespace and name?
pub fn created_for(tags: &HashMap<String, String>, owner: &Owner) -> bool {
    let is = |k: &str, v: &str| tags.get(k).map(String::as_str) == Some(v);
    is(TAG_MANAGED, "true")
        && is(TAG_CLUSTER, &owner.cluster)
        && is(TAG_NAMESPACE, &owner.namespace)
        && is(TAG_NAME, &owner.name)
}

/// What to do with a lease table when its KinesisApplication is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableCleanup {
    /// Delete it.
    Delete,
    /// Keep it; release this object's claim so a new object may adopt it.
    KeepAndRelease,
    /// Keep it; leave the claim (another object holds it, or there is none). The reason
    /// is said in a Warning Event when `warn`.
    Keep {
        /// Why (for the Event).
        reason: String,
        /// Worth a Warning Event (the user asked for Delete).
        warn: bool,
    },
}

/// Decides the lease table's fate from the policy, its tags and its claim item.
pub fn table_cleanup(
    policy: DeletionPolicy,
    table: &str,
    tags: &HashMap<String, String>,
    claim: Option<&Claim>,
    owner: &Owner,
) -> TableCleanup {
    let holds_claim = claim.is_some_and(|c| c.owner.uid == owner.uid);
    if !holds_claim {
        let reason = match claim {
            Some(c) => format!(
                "lease table `{table}` is kept: it is claimed by {}, not by this object",
                c.owner
            ),
            None => format!(
                "lease table `{table}` is kept: this object never claimed it (no claim item)"
            ),
        };
        return TableCleanup::Keep {
            reason,
            warn: policy == DeletionPolicy::Delete,
        };
    }
    match policy {
        DeletionPolicy::Retain => TableCleanup::KeepAndRelease,
        DeletionPolicy::Delete if created_for(tags, owner) => TableCleanup::Delete,
        DeletionPolicy::Delete => TableCleanup::Keep {
            reason: format!(
                "lease table `{table}` is kept although deletionPolicy is Delete: the operator did not create it for this object (it has no {TAG_MANAGED} tag naming {}/{} in cluster `{}`), so it is adopted; delete it yourself if it is no longer needed",
                owner.namespace, owner.name, owner.cluster
            ),
            warn: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> Owner {
        Owner {
            cluster: "c1".into(),
            namespace: "team-a".into(),
            name: "counter".into(),
            uid: uid.into(),
        }
    }

    fn tags(o: &Owner) -> HashMap<String, String> {
        resource_tags(o).into_iter().collect()
    }

    #[test]
    fn a_claim_item_reads_back() {
        let o = owner("u1");
        let mut item = claim_item(&o);
        assert_eq!(
            parse_claim(&item),
            Some(Claim {
                owner: o.clone(),
                consumer: None
            })
        );
        item.insert(
            attr::CONSUMER.into(),
            AttributeValue::S("counter-consumer".into()),
        );
        assert_eq!(
            parse_claim(&item).and_then(|c| c.consumer),
            Some("counter-consumer".into())
        );
        item.remove(attr::UID);
        assert_eq!(parse_claim(&item), None);
    }

    #[test]
    fn only_a_table_created_for_this_object_and_claimed_by_it_is_deleted() {
        let me = owner("u1");
        let mine = Claim {
            owner: me.clone(),
            consumer: None,
        };
        assert_eq!(
            table_cleanup(DeletionPolicy::Delete, "t", &tags(&me), Some(&mine), &me),
            TableCleanup::Delete
        );
        // Re-created object (new uid, same name) that won the claim: the table is its own.
        let again = owner("u2");
        let claim2 = Claim {
            owner: again.clone(),
            consumer: None,
        };
        assert_eq!(
            table_cleanup(
                DeletionPolicy::Delete,
                "t",
                &tags(&me),
                Some(&claim2),
                &again
            ),
            TableCleanup::Delete
        );
        // Retain: kept, claim released.
        assert_eq!(
            table_cleanup(DeletionPolicy::Retain, "t", &tags(&me), Some(&mine), &me),
            TableCleanup::KeepAndRelease
        );
    }

    #[test]
    fn an_adopted_or_foreign_table_is_never_deleted() {
        let me = owner("u1");
        let mine = Claim {
            owner: me.clone(),
            consumer: None,
        };
        // Adopted: no tags (a KCL table, someone else's table).
        let none = HashMap::new();
        assert!(matches!(
            table_cleanup(DeletionPolicy::Delete, "precious-orders", &none, Some(&mine), &me),
            TableCleanup::Keep { warn: true, ref reason } if reason.contains("adopted")
        ));
        // Created by the operator, but for another namespace (or cluster).
        let mut other = me.clone();
        other.namespace = "team-b".into();
        assert!(matches!(
            table_cleanup(DeletionPolicy::Delete, "t", &tags(&other), Some(&mine), &me),
            TableCleanup::Keep { warn: true, .. }
        ));
        let mut other_cluster = me.clone();
        other_cluster.cluster = "c2".into();
        assert!(matches!(
            table_cleanup(
                DeletionPolicy::Delete,
                "t",
                &tags(&other_cluster),
                Some(&mine),
                &me
            ),
            TableCleanup::Keep { warn: true, .. }
        ));
        // Claimed by someone else: kept, even with matching tags; the claim is not touched.
        let theirs = Claim {
            owner: owner("u9"),
            consumer: None,
        };
        assert!(matches!(
            table_cleanup(DeletionPolicy::Delete, "t", &tags(&me), Some(&theirs), &me),
            TableCleanup::Keep { warn: true, ref reason } if reason.contains("u9")
        ));
        assert!(matches!(
            table_cleanup(DeletionPolicy::Retain, "t", &tags(&me), Some(&theirs), &me),
            TableCleanup::Keep { warn: false, .. }
        ));
        // No claim at all (the object never got that far, e.g. WrongKeySchema).
        assert!(matches!(
            table_cleanup(DeletionPolicy::Delete, "t", &tags(&me), None, &me),
            TableCleanup::Keep { warn: true, .. }
        ));
        // A managed tag alone is not enough.
        let managed_only: HashMap<String, String> =
            [(TAG_MANAGED.to_string(), "true".to_string())].into();
        assert!(!created_for(&managed_only, &me));
    }
}
