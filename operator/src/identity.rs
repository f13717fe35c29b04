//! Whose AWS identity the operator uses for an application's calls (DescribeStreamSummary,
//! ListShards, the lease table's CreateTable/claim/Scan, Register/DeregisterStreamConsumer).
//!
//! - [`Mode::Operator`]: its own (one team's cluster). Whoever may create a
//!   `KinesisApplication` can make the operator call AWS with its permissions.
//! - [`Mode::NamespaceRole`]: the role an administrator mapped to the object's namespace, in a
//!   ConfigMap in the operator's own namespace ([`RoleMap`]); the operator assumes it (STS
//!   AssumeRole, a session name and session tags naming cluster, namespace and object) for
//!   every call made for that object. A namespace without a mapping gets no AWS call at all.
//!
//! Why a ConfigMap in the operator's namespace and not a namespace annotation: a tenant who
//! administers their namespace often may annotate it (hierarchical-namespace and project
//! tools delegate that), and an annotation is spread over every namespace, so an audit must
//! read them all. The ConfigMap sits where only the operator's administrators write, in one
//! object that reads as the whole policy.
//!
//! Everything here is pure: the I/O (watching the ConfigMap, AssumeRole) is in the caller.

use std::collections::BTreeMap;

/// Which identity the operator uses for applications' AWS calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The operator's own: every namespace that may create a `KinesisApplication` is trusted.
    Operator,
    /// The role mapped to the object's namespace, assumed for each object.
    NamespaceRole,
}

/// The administrator's mapping from namespace to IAM role ARN (the ConfigMap's `data`: one
/// key per namespace). An entry whose value is not a role ARN maps that namespace to nothing,
/// with the reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMap {
    roles: BTreeMap<String, Result<String, String>>,
}

impl RoleMap {
    /// Reads a ConfigMap's `data` (namespace → role ARN; surrounding blanks ignored).
    pub fn parse(data: &BTreeMap<String, String>) -> Self {
        let roles = data
            .iter()
            .map(|(ns, arn)| {
                let arn = arn.trim();
                let checked = if is_role_arn(arn) {
                    Ok(arn.to_string())
                } else {
                    Err(format!(
                        "the mapping's entry for namespace `{ns}` is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
                    ))
                };
                (ns.clone(), checked)
            })
            .collect();
        Self { roles }
    }

    /// How many namespaces are mapped (valid entries only).
    pub fn len(&self) -> usize {
        self.roles.values().filter(|r| r.is_ok()).count()
    }

    /// No valid entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`, ACCOUNT twelve digits.
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, partition, service, region, account, resource] = parts[..] else {
        return false;
    };
    arn_ == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty() && n.len() <= 512)
}

/// The identity for one object's calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The operator's own credentials.
    Operator,
    /// Credentials of `role`, assumed as `session_name` with `tags`.
    Role(RoleSession),
}

/// One assumed-role session: what AssumeRole is called with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleSession {
    /// The role's ARN.
    pub role_arn: String,
    /// The session name (CloudTrail shows it): `ko.NAMESPACE.NAME`, ≤ 64 characters.
    pub session_name: String,
    /// Session tags: `kinesis-operator/cluster`, `…/namespace`, `…/application`.
    pub tags: Vec<(String, String)>,
    /// The object's namespace (grouping calls that may share a session).
    pub namespace: String,
}

/// Why an object gets no AWS identity: a condition message (reason `NoAwsIdentity`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoIdentity(pub String);

/// The identity for object `name` in `namespace` under `mode`. `map` is the administrator's
/// mapping (`None`: its ConfigMap does not exist); `source` names it in messages
/// (`NAMESPACE/NAME`).
///
/// # Errors
/// [`NoIdentity`] in `NamespaceRole` mode when the namespace is not mapped to a valid role:
/// the caller then makes no AWS call for the object.
pub fn identity_for(
    mode: Mode,
    map: Option<&RoleMap>,
    source: &str,
    cluster: &str,
    namespace: &str,
    name: &str,
) -> Result<Identity, NoIdentity> {
    if mode == Mode::Operator {
        return Ok(Identity::Operator);
    }
    let Some(map) = map else {
        return Err(NoIdentity(format!(
            "no AWS role for namespace `{namespace}`: the operator's namespace-to-role mapping (ConfigMap `{source}`) does not exist; an administrator creates it (chart value aws.namespaceRoles)"
        )));
    };
    match map.roles.get(namespace) {
        Some(Ok(role_arn)) => Ok(Identity::Role(RoleSession {
            role_arn: role_arn.clone(),
            session_name: session_name(namespace, name),
            tags: session_tags(cluster, namespace, name),
            namespace: namespace.to_string(),
        })),
        Some(Err(why)) => Err(NoIdentity(format!(
            "no AWS role for namespace `{namespace}`: {why} in ConfigMap `{source}`; an administrator fixes it"
        ))),
        None => Err(NoIdentity(format!(
            "no AWS role for namespace `{namespace}`: ConfigMap `{source}` maps no role to it; an administrator adds `{namespace}: <role ARN>` (chart value aws.namespaceRoles)"
        ))),
    }
}

/// The default cluster name: `k8s-` and the uid of namespace `kube-system` (made when the
/// cluster was, never the same on two clusters). `None` without a uid.
pub fn cluster_name_from_uid(uid: Option<&str>) -> Option<String> {
    uid.map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| format!("k8s-{u}"))
}

/// The characters STS allows in a session name, others replaced by `-`.
fn session_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
        c
    } else {
        '-'
    }
}

/// `ko.NAMESPACE.NAME` in STS's alphabet, at most 64 characters: a longer one keeps its first
/// 55 and ends with 8 hex digits of a hash of the whole, so two long names differ.
pub fn session_name(namespace: &str, name: &str) -> String {
    let full: String = format!("ko.{namespace}.{name}")
        .chars()
        .map(session_char)
        .collect();
    if full.len() <= 64 {
        return full;
    }
    format!("{}.{:08x}", &full[..55], fnv32(full.as_bytes()))
}

/// A stable 32-bit FNV-1a hash (not `DefaultHasher`, whose output may change between builds).
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A tag value in STS's alphabet (letters, digits, blanks, `_.:/=+-@`), ≤ 256 characters.
fn tag_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(256)
        .collect()
}

/// The session tags naming cluster, namespace and object (IAM policies may condition on them
/// as `aws:PrincipalTag/kinesis-operator/namespace`).
pub fn session_tags(cluster: &str, namespace: &str, name: &str) -> Vec<(String, String)> {
    vec![
        ("kinesis-operator/cluster".into(), tag_value(cluster)),
        ("kinesis-operator/namespace".into(), tag_value(namespace)),
        ("kinesis-operator/application".into(), tag_value(name)),
    ]
}

/// A map that holds at most `cap` entries, dropping the least recently used one to make room
/// (the AWS client cache: one entry per region, endpoints and identity).
#[derive(Debug)]
pub struct Bounded<K, V> {
    cap: usize,
    tick: u64,
    entries: std::collections::HashMap<K, (u64, V)>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    /// An empty map holding at most `cap` (≥ 1) entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            entries: std::collections::HashMap::new(),
        }
    }

    /// The value of `key`, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(t, v)| {
            *t = tick;
            v.clone()
        })
    }

    /// Inserts `key`, first dropping the least recently used entry when full.
    pub fn insert(&mut self, key: K, value: V) {
        self.tick += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.cap {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (self.tick, value));
    }

    /// Drops every entry `drop` selects.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// It holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> RoleMap {
        RoleMap::parse(
            &entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/team-a-kinesis";

    #[test]
    fn the_operator_mode_uses_the_operators_identity_whatever_the_mapping() {
        assert_eq!(
            identity_for(Mode::Operator, None, "ko/roles", "c", "team-a", "x"),
            Ok(Identity::Operator)
        );
    }

    #[test]
    fn a_mapped_namespace_gets_its_role_with_a_session_naming_the_object() {
        let m = map(&[("team-a", &format!(" {ROLE}\n"))]);
        let Ok(Identity::Role(s)) = identity_for(
            Mode::NamespaceRole,
            Some(&m),
            "ko/roles",
            "prod-1",
            "team-a",
            "orders",
        ) else {
            panic!("no role");
        };
        assert_eq!(s.role_arn, ROLE);
        assert_eq!(s.session_name, "ko.team-a.orders");
        assert_eq!(
            s.tags,
            vec![
                ("kinesis-operator/cluster".to_string(), "prod-1".to_string()),
                ("kinesis-operator/namespace".into(), "team-a".into()),
                ("kinesis-operator/application".into(), "orders".into()),
            ]
        );
    }

    #[test]
    fn an_unmapped_namespace_a_missing_mapping_or_a_bad_entry_gets_no_identity() {
        let m = map(&[("team-a", ROLE), ("team-c", "arn:aws:iam::123:user/x")]);
        for (mapping, ns, says) in [
            (Some(&m), "team-b", "maps no role to it"),
            (None, "team-a", "does not exist"),
            (Some(&m), "team-c", "not an IAM role ARN"),
        ] {
            let e = identity_for(Mode::NamespaceRole, mapping, "ko/roles", "c", ns, "x")
                .err()
                .map(|e| e.0)
                .unwrap_or_default();
            assert!(e.contains(says) && e.contains(ns), "{e}");
            // Nothing of another namespace's entry is repeated.
            assert!(!e.contains("123456789012"), "{e}");
        }
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn only_iam_role_arns_are_roles() {
        for good in [
            ROLE,
            "arn:aws-cn:iam::123456789012:role/path/to/r",
            "arn:aws-us-gov:iam::123456789012:role/r",
        ] {
            assert!(is_role_arn(good), "{good}");
        }
        for bad in [
            "",
            "team-a",
            "arn:aws:iam::123456789012:user/r",
            "arn:aws:iam::12345678901:role/r",
            "arn:aws:iam:us-east-1:123456789012:role/r",
            "arn:aws:sts::123456789012:role/r",
            "arn:aws:iam::123456789012:role/",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn session_names_fit_sts_and_long_ones_stay_distinct() {
        let long = "n".repeat(200);
        let a = session_name("team-a", &format!("{long}a"));
        let b = session_name("team-a", &format!("{long}b"));
        assert!(a.len() <= 64 && b.len() <= 64, "{a}");
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c))
        );
        let tags = session_tags("my cluster/eu#1", "ns", "n");
        assert_eq!(tags[0].1, "my cluster/eu-1");
    }

    #[test]
    fn the_default_cluster_name_is_the_clusters_own() {
        assert_eq!(
            cluster_name_from_uid(Some("0b6f3c1e-9a7d-4f0e-8c55-3d1b2a9e7f10")).as_deref(),
            Some("k8s-0b6f3c1e-9a7d-4f0e-8c55-3d1b2a9e7f10")
        );
        assert_eq!(cluster_name_from_uid(Some(" ")), None);
        assert_eq!(cluster_name_from_uid(None), None);
    }

    #[test]
    fn the_bounded_map_drops_the_least_recently_used_entry() {
        let mut m = Bounded::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        assert_eq!(m.get(&"a"), Some(1));
        m.insert("c", 3);
        assert_eq!(
            (m.get(&"b"), m.get(&"a"), m.get(&"c")),
            (None, Some(1), Some(3))
        );
        assert_eq!(m.len(), 2);
        m.insert("a", 10);
        assert_eq!((m.len(), m.get(&"a")), (2, Some(10)));
        m.retain(|k| *k != "a");
        assert_eq!(m.len(), 1);
    }
}
