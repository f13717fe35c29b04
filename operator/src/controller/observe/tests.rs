use super::*;

fn names() -> Names {
    Names {
        stream: "orders".into(),
        region: "eu-west-1".into(),
        table: "team-a.orders".into(),
    }
}

fn owner(cluster: &str, namespace: &str, name: &str) -> Owner {
    Owner {
        cluster: cluster.into(),
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

#[test]
fn aws_failures_are_classified_by_their_text() {
    for (detail, reason) in [
        ("AssumeRole failed: no such role", "AssumeRoleFailed"),
        (
            "ListShards failed: AccessDeniedException (HTTP 400): nope",
            "AccessDenied",
        ),
        (
            "ListShards failed: access denied (HTTP 403)",
            "AccessDenied",
        ),
        ("User: <arn> is not authorized to perform", "AccessDenied"),
        (
            "ListShards failed: LimitExceededException (HTTP 400)",
            "Throttled",
        ),
        ("GetItem failed: ThrottlingException", "Throttled"),
        ("dispatch failure: connection refused", "Unavailable"),
    ] {
        assert_eq!(aws_problem(detail), reason, "{detail}");
    }
}

#[test]
fn names_fall_back_to_the_operators_region() {
    let app: KinesisApplication = match serde_json::from_value(serde_json::json!({
        "apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication",
        "metadata": {"name": "a", "namespace": "n"},
        "spec": {"stream": {"arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"},
            "applicationName": "orders-app",
            "template": {"spec": {"containers": [{"name": "app"}]}}}
    })) {
        Ok(a) => a,
        Err(e) => panic!("test object: {e}"),
    };
    let n = Names::of(&app, None);
    assert_eq!(
        (n.stream.as_str(), n.region.as_str(), n.table.as_str()),
        (
            "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
            "the operator's region",
            "orders-app"
        )
    );
    assert_eq!(
        Names::of(&app, Some("us-east-1".into())).region,
        "us-east-1"
    );
}

#[test]
fn a_refusal_fails_ready_with_its_reason() {
    let p = refused(Refusal {
        reason: "NoAwsIdentity",
        message: "no role for namespace `n`".into(),
        transient: false,
    });
    assert_eq!(
        p,
        Problem::new("Ready", "NoAwsIdentity", "no role for namespace `n`".into())
    );
}

#[test]
fn a_missing_or_unreadable_stream_fails_stream_ready() {
    let p = stream_problem(
        &DiscoveryError::StreamNotFound {
            stream: "orders".into(),
            detail: "ResourceNotFoundException".into(),
        },
        &names(),
    );
    assert_eq!((p.condition, p.reason), ("StreamReady", "StreamNotFound"));
    assert_eq!(
        p.message,
        "stream `orders` not found in eu-west-1: create it, or fix spec.stream.name / spec.stream.arn / spec.stream.region"
    );
    let p = stream_problem(
        &DiscoveryError::Kinesis {
            stream: "orders".into(),
            detail: "ListShards failed: LimitExceededException (HTTP 400): slow down".into(),
        },
        &names(),
    );
    assert_eq!((p.condition, p.reason), ("StreamReady", "Throttled"));
    assert!(
        p.message
            .starts_with("reading stream `orders` in eu-west-1 failed: ListShards failed"),
        "{}",
        p.message
    );
    assert_eq!(stream_found(&names(), 4), "stream `orders` has 4 shards");
}

#[test]
fn a_table_that_cannot_be_opened_fails_lease_table_ready() {
    let p = table_problem(
        &LeaseError::WrongKeySchema {
            table: "team-a.orders".into(),
            found: "id (S)".into(),
        },
        &names(),
    );
    assert_eq!(
        (p.condition, p.reason),
        ("LeaseTableReady", "WrongKeySchema")
    );
    assert_eq!(
        p.message,
        "table `team-a.orders` in eu-west-1 exists and is not a lease table (its key is not `leaseKey`): choose another spec.applicationName"
    );
    let p = table_problem(
        &LeaseError::AccessDenied {
            table: "team-a.orders".into(),
            action: "CreateTable",
            detail: "no".into(),
        },
        &names(),
    );
    assert_eq!((p.condition, p.reason), ("LeaseTableReady", "AccessDenied"));
    assert!(
        p.message
            .starts_with("lease table `team-a.orders` in eu-west-1: not allowed to CreateTable"),
        "{}",
        p.message
    );
    let p = table_problem(
        &LeaseError::NotActive {
            table: "team-a.orders".into(),
        },
        &names(),
    );
    assert_eq!(p.reason, "Unavailable");
}

#[test]
fn a_claim_held_elsewhere_names_its_holder_only_within_the_namespace() {
    let me = owner("c1", "team-a", "orders");
    let p = claim_conflict(&owner("c1", "team-a", "older"), &me, &names());
    assert_eq!(
        (p.condition, p.reason),
        ("LeaseTableReady", "LeaseTableConflict")
    );
    assert!(
        p.message.starts_with(
            "lease table `team-a.orders` is claimed by KinesisApplication team-a/older (uid uid-older) in cluster `c1`: "
        ),
        "{}",
        p.message
    );
    for other in [owner("c1", "team-b", "x"), owner("c2", "team-a", "older")] {
        let p = claim_conflict(&other, &me, &names());
        assert!(
            p.message
                .starts_with("lease table `team-a.orders` is claimed by another application: "),
            "{}",
            p.message
        );
        assert!(!p.message.contains(&other.uid), "{}", p.message);
    }
    let p = claim_failed("GetItem failed: AccessDeniedException (HTTP 400)", &names());
    assert_eq!((p.condition, p.reason), ("LeaseTableReady", "AccessDenied"));
    assert!(
        p.message
            .starts_with("claiming lease table `team-a.orders` in eu-west-1: GetItem failed"),
        "{}",
        p.message
    );
    assert_eq!(
        table_claimed(&names()),
        "lease table `team-a.orders` is active and claimed by this application"
    );
}

#[test]
fn a_consumer_is_the_operators_only_if_it_registered_it() {
    let found = |arn: &str, registered: bool| Consumer {
        arn: arn.into(),
        registered_by_operator: registered,
    };
    let recorded = |arn: &str, registered: bool| FanOutConsumer {
        name: "team-a.orders".into(),
        arn: arn.into(),
        registered_by_operator: registered,
    };
    // Registered just now: the operator's, written at once.
    let (r, write) = consumer_record(None, "team-a.orders", &found("arn:1", true));
    assert_eq!((r, write), (recorded("arn:1", true), true));
    // Found later, recorded earlier as the operator's (same ARN): still the operator's, no
    // extra write.
    let (r, write) = consumer_record(
        Some(&recorded("arn:1", true)),
        "team-a.orders",
        &found("arn:1", false),
    );
    assert_eq!((r, write), (recorded("arn:1", true), false));
    // Registered again under the same name (another ARN), or someone else's: not ours.
    let (r, write) = consumer_record(
        Some(&recorded("arn:1", true)),
        "team-a.orders",
        &found("arn:2", false),
    );
    assert_eq!((r, write), (recorded("arn:2", false), false));
    let (r, write) = consumer_record(
        Some(&recorded("arn:1", false)),
        "team-a.orders",
        &found("arn:1", false),
    );
    assert_eq!((r, write), (recorded("arn:1", false), false));
    // Registered by this reconcile while the status already recorded it: no second write.
    let (_, write) = consumer_record(
        Some(&recorded("arn:1", true)),
        "team-a.orders",
        &found("arn:1", true),
    );
    assert!(!write);
}

#[test]
fn a_consumer_that_cannot_be_found_or_registered_fails_stream_ready() {
    let p = consumer_problem(&stream_gone(&names()), &names());
    assert_eq!((p.condition, p.reason), ("StreamReady", "Unavailable"));
    assert_eq!(
        p.message,
        "fan-out consumer `team-a.orders` of stream `orders`: stream `orders` not found: create it, or fix spec.stream"
    );
    let p = consumer_problem(
        "RegisterStreamConsumer failed: LimitExceededException (HTTP 400)",
        &names(),
    );
    assert_eq!(p.reason, "Throttled");
}

#[test]
fn a_bounded_scan_is_used_only_when_complete() {
    assert!(complete(&ScanReport::default()));
    assert!(!complete(&ScanReport {
        truncated: true,
        ..ScanReport::default()
    }));
}
