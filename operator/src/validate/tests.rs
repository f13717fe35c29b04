use serde_json::{Value, json};

use super::*;
use crate::crd::{KinesisApplication, KinesisApplicationStatus};

fn app(spec: Value) -> KinesisApplication {
    let mut obj = json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": "counter", "namespace": "default"},
        "spec": {
            "stream": {"name": "Pageviews", "region": "us-east-1"},
            "template": {"spec": {"containers": [{"name": "app", "image": "pageview-counter"}]}}
        }
    });
    if let (Some(base), Some(patch)) = (obj["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in patch {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(obj).unwrap_or_else(|e| panic!("test spec does not parse: {e}"))
}

/// The single violation of `spec`, as "field: message".
fn one(a: &KinesisApplication) -> String {
    let v = validate(a);
    assert_eq!(v.len(), 1, "{v:?}");
    v[0].to_string()
}

#[test]
fn a_minimal_spec_is_valid() {
    assert_eq!(validate(&app(json!({}))), vec![]);
    let with_destination = app(json!({
        "consumer": {"maxAttempts": 3},
        "delivery": {"onFailureDestination": "arn:aws:sqs:us-east-1:123456789012:dlq",
                     "bisectBatchOnError": true, "maximumRecordAgeSeconds": 3600}
    }));
    assert_eq!(validate(&with_destination), vec![]);
    assert_eq!(application_name(&app(json!({}))), "default.counter");
}

#[test]
fn the_default_application_name_holds_the_namespace_and_an_old_one_is_kept() {
    let mut a = app(json!({}));
    a.metadata.namespace = Some("team-b".into());
    assert_eq!(application_name(&a), "team-b.counter");
    // An object made before the default included the namespace keeps its table.
    a.status = Some(KinesisApplicationStatus {
        application_name: Some("counter".into()),
        ..Default::default()
    });
    assert_eq!(application_name(&a), "counter");
    assert_eq!(validate(&a), vec![]);
    a.spec.application_name = Some("explicit".into());
    assert_eq!(application_name(&a), "explicit");
}

#[test]
fn every_cross_field_rule_names_the_field_and_the_fix() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"consumer": {"maxAttempts": 3}}),
            "spec.consumer.maxAttempts:",
            "set spec.delivery.onFailureDestination",
        ),
        (
            json!({"delivery": {"maximumRecordAgeSeconds": 3600}}),
            "spec.delivery.maximumRecordAgeSeconds:",
            "set spec.delivery.onFailureDestination",
        ),
        (
            json!({"delivery": {"onFailureDestination": "arn:aws:kinesis:us-east-1:1:failed"}}),
            "spec.delivery.onFailureDestination:",
            "stream/NAME",
        ),
        (
            json!({"delivery": {"filters": ["{\"data\": {\"type\": [\"click\"]}}", "{\"Data\": {}}"]}}),
            "spec.delivery.filters:",
            "filter 2: unknown field `Data`",
        ),
        (
            json!({"delivery": {"filters": ["type=click"]}}),
            "spec.delivery.filters:",
            "filter 1: not JSON",
        ),
        (
            json!({"stream": {}}),
            "spec.stream:",
            "set spec.stream.name",
        ),
        (
            json!({"stream": {"name": "a", "arn": "arn:aws:kinesis:us-east-1:123456789012:stream/a"}}),
            "spec.stream:",
            "keep one",
        ),
        (
            json!({"stream": {"arn": "arn:aws:kinesis:us-east-1:123456789012:table/a"}}),
            "spec.stream.arn:",
            "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
        ),
        (
            json!({"stream": {"arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/a", "region": "us-east-1"}}),
            "spec.stream.region:",
            "differs from the ARN's region `eu-west-1`",
        ),
        (
            json!({"initialPosition": "AT_TIMESTAMP"}),
            "spec.initialTimestamp:",
            "needs initialTimestamp",
        ),
        (
            json!({"initialTimestamp": "2026-11-26T00:00:00Z"}),
            "spec.initialTimestamp:",
            "only used with initialPosition AT_TIMESTAMP",
        ),
        (
            // The schema's pattern lets a 13th month through; the worker would not start.
            json!({"initialPosition": "AT_TIMESTAMP", "initialTimestamp": "2026-13-26T00:00:00Z"}),
            "spec.initialTimestamp:",
            "is not an RFC 3339 time",
        ),
        (
            json!({"scaling": {"shardsPerWorker": 0}}),
            "spec.scaling.shardsPerWorker:",
            "at least one shard",
        ),
        (
            json!({"scaling": {"minWorkers": 5, "maxWorkers": 2}}),
            "spec.scaling.minWorkers:",
            "lower minWorkers or raise maxWorkers",
        ),
        (
            json!({"template": {"spec": {"containers": []}}}),
            "spec.template.spec.containers:",
            "add the container",
        ),
        (
            json!({"template": {"spec": {"containers": [{"name": "kinesis-worker"}]}}}),
            "spec.template.spec.containers:",
            "rename it",
        ),
        (
            json!({"processor": {"container": "nope"}}),
            "spec.processor.container:",
            "no container `nope`",
        ),
        (
            json!({"processor": {"socket": "/var/run/x.sock", "port": 50051}}),
            "spec.processor:",
            "one of them",
        ),
        (
            json!({"template": {"spec": {"containers": [{"name": "app"}], "volumes": [{"name": "kinesis-processor", "emptyDir": {}}]}}}),
            "spec.template.spec.volumes:",
            "rename it",
        ),
    ];
    for (spec, field, fix) in cases {
        let msg = one(&app(spec.clone()));
        assert!(msg.starts_with(field), "{spec}: {msg}");
        assert!(msg.contains(fix), "{spec}: {msg}");
    }
}

#[test]
fn the_application_name_cannot_change_once_set() {
    let mut a = app(json!({"applicationName": "counter-v2"}));
    a.status = Some(KinesisApplicationStatus {
        application_name: Some("counter".into()),
        ..Default::default()
    });
    let msg = one(&a);
    assert!(
        msg.starts_with("spec.applicationName:") && msg.contains("from `counter` to `counter-v2`"),
        "{msg}"
    );
    // Unchanged: fine.
    a.spec.application_name = Some("counter".into());
    assert_eq!(validate(&a), vec![]);
}

#[test]
fn arn_parts() {
    let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/Pageviews";
    assert_eq!(arn_region(arn), Some("eu-west-1"));
    assert_eq!(arn_stream_name(arn), Some("Pageviews"));
    assert_eq!(arn_stream_name("arn:aws:kinesis:eu-west-1:1:stream/"), None);
}

#[test]
fn an_endpoint_the_administrator_did_not_allow_is_refused_naming_the_field() {
    let allowed = AllowedEndpoints::new(["http://10.250.0.1:4567/", "HTTP://10.250.0.1:4569"]);
    let stream = |endpoints: Value| {
        let mut s = json!({"name": "s"});
        if let (Some(s), Some(e)) = (s.as_object_mut(), endpoints.as_object()) {
            s.extend(e.clone());
        }
        app(json!({"stream": s}))
    };
    // None set: AWS's own endpoints, nothing to refuse, whatever the list.
    assert_eq!(
        endpoints(&stream(json!({})), &AllowedEndpoints::default()),
        vec![]
    );
    // Listed ones (any case, a trailing slash or not).
    let ok = stream(json!({"endpoint": "http://10.250.0.1:4567",
        "dynamoDbEndpoint": "http://10.250.0.1:4569/"}));
    assert_eq!(endpoints(&ok, &allowed), vec![]);
    // A tenant's own server: refused, each field named; an empty list refuses every override.
    let bad = stream(json!({"endpoint": "http://10.250.0.1:4567",
        "dynamoDbEndpoint": "http://attacker.team-a.svc:8000"}));
    let got = endpoints(&bad, &allowed);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].field, "spec.stream.dynamoDbEndpoint");
    assert!(
        got[0].message.contains("aws.allowedEndpoints"),
        "{}",
        got[0]
    );
    let fields: Vec<String> = endpoints(&ok, &AllowedEndpoints::default())
        .into_iter()
        .map(|i| i.field)
        .collect();
    assert_eq!(
        fields,
        ["spec.stream.endpoint", "spec.stream.dynamoDbEndpoint"]
    );
    // A prefix of an allowed endpoint is not allowed.
    let prefix = stream(json!({"endpoint": "http://10.250.0.1:45"}));
    assert_eq!(endpoints(&prefix, &allowed).len(), 1);
}

#[test]
fn a_fan_out_application_cannot_move_to_another_stream() {
    use crate::crd::FanOutConsumer;
    let mut a = app(json!({"stream": {"name": "Other", "region": "us-east-1"}}));
    a.status = Some(KinesisApplicationStatus {
        stream: Some("Pageviews".into()),
        consumer: Some(FanOutConsumer {
            name: "default.counter".into(),
            arn:
                "arn:aws:kinesis:us-east-1:000000000000:stream/Pageviews/consumer/default.counter:1"
                    .into(),
            registered_by_operator: true,
        }),
        ..Default::default()
    });
    let msg = one(&a);
    assert!(
        msg.starts_with("spec.stream:") && msg.contains("from `Pageviews`"),
        "{msg}"
    );
    // Same stream, or no consumer: fine.
    a.spec.stream.name = Some("Pageviews".into());
    assert_eq!(validate(&a), vec![]);
    a.spec.stream.name = Some("Other".into());
    if let Some(s) = a.status.as_mut() {
        s.consumer = None;
    }
    assert_eq!(validate(&a), vec![]);
}

#[test]
fn an_application_name_outside_the_namespace_needs_the_administrator() {
    let none = UnprefixedNames::default();
    let named = |n: &str| app(json!({"applicationName": n}));
    // The namespace's own names, and the default, pass.
    assert_eq!(
        application_name_refused(&named("default.orders"), &none),
        None
    );
    assert_eq!(application_name_refused(&app(json!({})), &none), None);
    // Another namespace's default, an existing table, a bare prefix: refused, naming the fix.
    for squat in ["team-b.orders", "orders-kcl", "defaultx.orders", "default"] {
        let e = application_name_refused(&named(squat), &none)
            .map(|i| i.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("spec.applicationName:")
                && e.contains("default.<name>")
                && e.contains("applicationNames.unprefixedAllowedIn"),
            "{squat}: {e}"
        );
    }
    // Allowed by the administrator, for this namespace or all.
    for allowed in [vec!["default"], vec!["*"], vec!["other", " default "]] {
        assert_eq!(
            application_name_refused(&named("orders-kcl"), &UnprefixedNames::new(allowed)),
            None
        );
    }
    assert!(
        application_name_refused(&named("orders-kcl"), &UnprefixedNames::new(["other"])).is_some()
    );
    // A name this object already uses (from before the rule) keeps working.
    let mut legacy = named("orders-kcl");
    legacy.status = Some(KinesisApplicationStatus {
        application_name: Some("orders-kcl".into()),
        ..Default::default()
    });
    // Named in the status but never held (a refused claim): still refused.
    assert!(application_name_refused(&legacy, &none).is_some());
    if let Some(s) = legacy.status.as_mut() {
        crate::plan::set_condition(
            &mut s.conditions,
            "LeaseTableReady",
            true,
            "TableActive",
            "held",
            Some(1),
        );
    }
    assert_eq!(application_name_refused(&legacy, &none), None);
}

#[test]
fn each_protocol_asks_for_its_own_fields() {
    assert_eq!(
        validate(&app(json!({"processor": {"protocol": "kcl-multilang",
            "command": ["python3", "sample_kclpy_app.py"]}}))),
        vec![]
    );
    assert_eq!(
        validate(&app(
            json!({"processor": {"protocol": "lambda", "handler": "app.handler"}})
        )),
        vec![]
    );
    assert!(
        one(&app(json!({"processor": {"protocol": "kcl-multilang"}}))).starts_with(
            "spec.processor.command: protocol kcl-multilang needs the app's command line"
        )
    );
    assert!(
        one(&app(
            json!({"processor": {"protocol": "kcl-multilang", "command": [" "]}})
        ))
        .starts_with("spec.processor.command:")
    );
    assert!(
        one(&app(
            json!({"processor": {"command": ["python3", "app.py"]}})
        ))
        .contains("only protocol kcl-multilang runs a command")
    );
    assert!(
        one(&app(
            json!({"processor": {"protocol": "grpc", "handler": "app.handler"}})
        ))
        .contains("only protocol lambda has a handler")
    );
    assert!(
        one(&app(
            json!({"processor": {"protocol": "kcl-multilang", "command": ["x"]},
            "delivery": {"parallelizationFactor": 2}})
        ))
        .starts_with(
            "spec.delivery.parallelizationFactor: protocol kcl-multilang runs one process per shard"
        )
    );
    let mut clash = app(json!({"processor": {"protocol": "kcl-multilang", "command": ["x"]}}));
    if let Some(pod) = clash.spec.template.spec.as_mut() {
        pod.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
            name: "kinesis-bridge".into(),
            ..Default::default()
        }]);
    }
    assert!(one(&clash).contains("the operator's bridge volume"));
}
