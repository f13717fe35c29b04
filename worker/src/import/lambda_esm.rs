//! A Lambda function's Kinesis event source mapping (the JSON `aws lambda
//! get-event-source-mapping` prints) as a KinesisApplication that runs the function's image
//! behind the Lambda Runtime API, with the mapping's delivery policies.

use kinesis_spec::destination::Target;
use kinesis_spec::filter::{Filters, MAX_FILTERS};
use kinesis_spec::settings::utc_timestamp;
use serde_json::{Map, Value};

use super::{
    CONSUMER, DELIVERY, Draft, Field, Import, ImportError, PROCESSOR, STREAM, dns_name,
    initial_position, is_region, kinesis_arn, rfc3339_utc,
};

/// The image put in the template: the mapping names none.
const IMAGE: &str = "REPLACE-WITH-YOUR-FUNCTION-IMAGE";

/// The keys the mapping functions below handle (import or report) themselves; every other
/// key is reported with [`reason`].
const MAPPED: [&str; 13] = [
    "EventSourceArn",
    "FunctionArn",
    "StartingPosition",
    "StartingPositionTimestamp",
    "BatchSize",
    "MaximumBatchingWindowInSeconds",
    "ParallelizationFactor",
    "DestinationConfig",
    "MaximumRetryAttempts",
    "MaximumRecordAgeInSeconds",
    "BisectBatchOnFunctionError",
    "FunctionResponseTypes",
    "FilterCriteria",
];

/// The batching settings, their fields and Lambda's ranges, which the schema shares.
const BATCHING: [(&str, Field); 3] = [
    (
        "BatchSize",
        Field {
            section: DELIVERY,
            name: "batchSize",
            min: 1,
            max: 10_000,
        },
    ),
    (
        "MaximumBatchingWindowInSeconds",
        Field {
            section: DELIVERY,
            name: "maximumBatchingWindowSeconds",
            min: 0,
            max: 300,
        },
    ),
    (
        "ParallelizationFactor",
        Field {
            section: DELIVERY,
            name: "parallelizationFactor",
            min: 1,
            max: 10,
        },
    ),
];

/// `spec.delivery.maximumRecordAgeSeconds`.
const RECORD_AGE: Field = Field {
    section: DELIVERY,
    name: "maximumRecordAgeSeconds",
    min: 60,
    max: 604_800,
};

/// Why a mapping's checkpoints stay behind, reported with `StartingPosition`.
const CHECKPOINTS: &str = "imported as spec.initialPosition, but Lambda keeps this mapping's checkpoints to itself: they cannot be carried over, so every shard starts there (TRIM_HORIZON replays the stream's retention, LATEST leaves a gap). Disable the mapping, then set initialPosition AT_TIMESTAMP and initialTimestamp a little before the moment you disabled it (docs/MIGRATING.md). spec.applicationName is left out: there is no lease table to adopt, so the default NAMESPACE.NAME gets a new one";

/// Imports a Lambda event source mapping for a Kinesis stream: `EventSourceArn` (a stream,
/// or a consumer: then enhanced fan-out), `FunctionArn` (the object's name, protocol
/// `lambda`), `StartingPosition` and its timestamp, `BatchSize`,
/// `MaximumBatchingWindowInSeconds`, `ParallelizationFactor`, `DestinationConfig.OnFailure`,
/// `MaximumRetryAttempts`, `MaximumRecordAgeInSeconds`, `BisectBatchOnFunctionError`,
/// `FunctionResponseTypes` and `FilterCriteria`. Every other key, and every value outside
/// the schema's ranges, is reported in [`Import::unmapped`].
///
/// # Errors
/// Not JSON, not one mapping object, no or a non-Kinesis `EventSourceArn`, no or a
/// malformed `FunctionArn`, or a value of the wrong type ([`ImportError`] names the key).
pub fn lambda_esm(json: &str) -> Result<Import, ImportError> {
    let Value::Object(esm) = serde_json::from_str::<Value>(json)? else {
        return Err(ImportError::NotAMapping {
            hint: "give the object `aws lambda get-event-source-mapping --uuid UUID` prints",
        });
    };
    if esm.contains_key("EventSourceMappings") {
        return Err(ImportError::NotAMapping {
            hint: "this is a list (`list-event-source-mappings`): import one mapping, as `aws lambda get-event-source-mapping --uuid UUID` prints it",
        });
    }
    let function = function(&esm)?;
    let mut draft = Draft::new(dns_name(&function.name, "lambda-app"));
    source(&esm, &mut draft)?;
    handler(&function, &mut draft);
    position(&esm, &mut draft)?;
    for (key, field) in BATCHING {
        if let Some(n) = int(&esm, key)? {
            draft.number(key, n, field);
        }
    }
    failures(&esm, &mut draft)?;
    response_types(&esm, &mut draft)?;
    filters(&esm, &mut draft)?;
    for (key, value) in &esm {
        if !MAPPED.contains(&key.as_str()) {
            draft.skip(key, &show(value), reason(key));
        }
    }
    Ok(draft.finish())
}

/// A value as the report shows it: a string as it is, anything else as JSON.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value of `key`, unless absent or null.
fn field<'a>(esm: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    esm.get(key).filter(|v| !v.is_null())
}

/// The string `key`, if there is one.
fn text<'a>(esm: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ImportError> {
    field(esm, key)
        .map(|v| v.as_str().ok_or_else(|| wrong_type(key, v, "a string")))
        .transpose()
}

/// The whole number `key`, if there is one.
fn int(esm: &Map<String, Value>, key: &str) -> Result<Option<i64>, ImportError> {
    field(esm, key)
        .map(|v| {
            v.as_i64().ok_or_else(|| ImportError::NotANumber {
                key: key.to_owned(),
                value: show(v),
                fix: "the AWS CLI prints it as a whole number: check the file".to_owned(),
            })
        })
        .transpose()
}

/// The boolean `key`, if there is one.
fn flag(esm: &Map<String, Value>, key: &str) -> Result<Option<bool>, ImportError> {
    field(esm, key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| wrong_type(key, v, "true or false"))
        })
        .transpose()
}

/// `key` has a value of another type than `expected`.
fn wrong_type(key: &str, value: &Value, expected: &str) -> ImportError {
    ImportError::BadValue {
        key: key.to_owned(),
        value: show(value),
        fix: format!("expected {expected}, as the AWS CLI prints it: check the file"),
    }
}

/// The function the mapping invokes.
struct Function {
    /// Its name.
    name: String,
    /// Its ARN.
    arn: String,
    /// The version or alias the ARN names, if any.
    qualifier: Option<String>,
}

/// The function of `FunctionArn` (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`).
fn function(esm: &Map<String, Value>) -> Result<Function, ImportError> {
    let arn = text(esm, "FunctionArn")?.ok_or(ImportError::Missing {
        key: "FunctionArn",
        fix: "give the whole output of `aws lambda get-event-source-mapping`",
    })?;
    let parts: Vec<&str> = arn.split(':').collect();
    let (name, qualifier) = match parts[..] {
        ["arn", _, "lambda", _, _, "function", name] => (name, None),
        ["arn", _, "lambda", _, _, "function", name, qualifier] => (name, Some(qualifier)),
        _ => ("", None),
    };
    if name.is_empty() {
        return Err(ImportError::BadValue {
            key: "FunctionArn".to_owned(),
            value: arn.to_owned(),
            fix: "give a Lambda function ARN, arn:aws:lambda:REGION:ACCOUNT:function:NAME"
                .to_owned(),
        });
    }
    Ok(Function {
        name: name.to_owned(),
        arn: arn.to_owned(),
        qualifier: qualifier.map(str::to_owned),
    })
}

/// `spec.stream` from `EventSourceArn`; a consumer ARN means enhanced fan-out through the
/// operator's own consumer.
fn source(esm: &Map<String, Value>, draft: &mut Draft) -> Result<(), ImportError> {
    let arn = text(esm, "EventSourceArn")?.ok_or(ImportError::Missing {
        key: "EventSourceArn",
        fix: "give the whole output of `aws lambda get-event-source-mapping`",
    })?;
    let parsed = kinesis_arn(arn).ok_or_else(|| ImportError::BadValue {
        key: "EventSourceArn".to_owned(),
        value: arn.to_owned(),
        fix: "not a Kinesis stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME): only Kinesis event source mappings can be imported".to_owned(),
    })?;
    draft.set(STREAM, "arn", parsed.stream_arn.clone());
    if is_region(&parsed.region) {
        draft.set(STREAM, "region", parsed.region.clone());
    }
    if let Some(consumer) = &parsed.consumer {
        draft.set(CONSUMER, "mode", "EnhancedFanOut");
        draft.skip(
            "EventSourceArn",
            arn,
            format!("the consumer {consumer} is not reused: the operator registers its own consumer (named spec.applicationName) and reads the stream by enhanced fan-out through it"),
        );
    }
    Ok(())
}

/// `spec.processor.protocol: lambda` and a template whose image is to be replaced.
fn handler(function: &Function, draft: &mut Draft) {
    draft.set(PROCESSOR, "protocol", "lambda");
    draft.app_container(IMAGE);
    draft.skip(
        "image",
        IMAGE,
        format!("the mapping names no image: replace it in spec.template with the container image of {} (the one Lambda runs), or any image whose command runs a runtime interface client, e.g. `python -m awslambdaric module.handler`; when the image does not name the handler itself, set spec.processor.handler", function.name),
    );
    if let Some(qualifier) = &function.qualifier {
        draft.skip(
            "FunctionArn",
            &function.arn,
            format!("the version or alias `{qualifier}` has no equivalent: the image in spec.template is the code that runs"),
        );
    }
}

/// `spec.initialPosition` and `spec.initialTimestamp`; the checkpoints stay in Lambda.
fn position(esm: &Map<String, Value>, draft: &mut Draft) -> Result<(), ImportError> {
    let timestamp = field(esm, "StartingPositionTimestamp");
    let ignored = "only used with StartingPosition AT_TIMESTAMP";
    let Some(given) = text(esm, "StartingPosition")? else {
        if let Some(ts) = timestamp {
            draft.skip("StartingPositionTimestamp", &show(ts), ignored);
        }
        return Ok(());
    };
    let position = initial_position("StartingPosition", given)?;
    draft.top("initialPosition", position);
    draft.skip("StartingPosition", given, CHECKPOINTS);
    match (position, timestamp) {
        ("AT_TIMESTAMP", Some(ts)) => {
            let utc = utc_time(ts).ok_or_else(|| ImportError::BadValue {
                key: "StartingPositionTimestamp".to_owned(),
                value: show(ts),
                fix: "give seconds since 1970 (e.g. 1704067200.0) or an ISO 8601 time with an offset (2024-01-01T00:00:00Z)".to_owned(),
            })?;
            draft.top("initialTimestamp", utc);
        }
        ("AT_TIMESTAMP", None) => {
            return Err(ImportError::Missing {
                key: "StartingPositionTimestamp",
                fix: "StartingPosition AT_TIMESTAMP needs it: seconds since 1970 or an ISO 8601 time",
            });
        }
        (_, Some(ts)) => draft.skip("StartingPositionTimestamp", &show(ts), ignored),
        (_, None) => {}
    }
    Ok(())
}

/// The CLI's `StartingPositionTimestamp` (epoch seconds, maybe fractional, or ISO 8601 with
/// an offset) as RFC 3339 in UTC.
fn utc_time(value: &Value) -> Option<String> {
    let seconds = |s: f64| {
        (s.is_finite() && s >= 0.0)
            .then(|| (s * 1000.0).round() as i64)
            .and_then(rfc3339_utc)
    };
    match value {
        Value::Number(n) => n.as_f64().and_then(seconds),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(seconds)
            .or_else(|| utc_timestamp(s).ok()),
        _ => None,
    }
}

/// The on-failure destination, retries and the record age (both need a destination:
/// without one Lambda drops the records, and the worker never drops any), and bisection.
fn failures(esm: &Map<String, Value>, draft: &mut Draft) -> Result<(), ImportError> {
    let has_destination = destination(esm, draft)?;
    if let Some(bisect) = flag(esm, "BisectBatchOnFunctionError")? {
        draft.set(DELIVERY, "bisectBatchOnError", bisect);
    }
    let retries = "MaximumRetryAttempts";
    match int(esm, retries)? {
        // -1: Lambda retries until the records expire. Unset maxAttempts retries forever,
        // which is the same while the records are in the stream: nothing to set.
        None | Some(-1) => {}
        Some(n) if n < 0 => draft.skip(
            retries,
            &n.to_string(),
            "Lambda takes -1 (no limit) or 0 to 10000 retries: set spec.consumer.maxAttempts by hand",
        ),
        Some(n) if !has_destination => draft.skip(
            retries,
            &n.to_string(),
            "without an on-failure destination Lambda drops a batch after its last retry, and the worker never drops records: it retries until the function succeeds. To pass records over, set spec.delivery.onFailureDestination and spec.consumer.maxAttempts (retries + 1)",
        ),
        // maxAttempts counts every call: the first one and the retries.
        Some(n) => match i32::try_from(n.saturating_add(1)) {
            Ok(attempts) => draft.set(CONSUMER, "maxAttempts", attempts),
            Err(_) => draft.skip(
                retries,
                &n.to_string(),
                "too large for spec.consumer.maxAttempts: leave it out to retry forever",
            ),
        },
    }
    let age = "MaximumRecordAgeInSeconds";
    match int(esm, age)? {
        // -1: no limit, the default.
        None | Some(-1) => {}
        Some(n) if !has_destination => draft.skip(
            age,
            &n.to_string(),
            "without an on-failure destination Lambda drops older records, and the worker never drops records. To pass them over, set spec.delivery.onFailureDestination and spec.delivery.maximumRecordAgeSeconds",
        ),
        Some(n) => draft.number(age, n, RECORD_AGE),
    }
    Ok(())
}

/// `spec.delivery.onFailureDestination` from `DestinationConfig.OnFailure.Destination`;
/// whether it was set.
fn destination(esm: &Map<String, Value>, draft: &mut Draft) -> Result<bool, ImportError> {
    let Some(config) = field(esm, "DestinationConfig") else {
        return Ok(false);
    };
    let Some(config) = config.as_object() else {
        return Err(wrong_type("DestinationConfig", config, "an object"));
    };
    let mut found = false;
    for (kind, target) in config {
        let key = format!("DestinationConfig.{kind}.Destination");
        // `{"OnFailure": {}}`: no destination.
        let Some(arn) = target.get("Destination").and_then(Value::as_str) else {
            continue;
        };
        if kind != "OnFailure" {
            draft.skip(
                &key,
                arn,
                "only an on-failure destination has an equivalent (spec.delivery.onFailureDestination)",
            );
            continue;
        }
        match Target::parse(arn) {
            Ok(_) => {
                draft.set(DELIVERY, "onFailureDestination", arn);
                found = true;
            }
            Err(e) => draft.skip(
                &key,
                arn,
                format!("{e}. Without a destination, failing records are retried until the function succeeds"),
            ),
        }
    }
    Ok(found)
}

/// `spec.delivery.reportBatchItemFailures` from `FunctionResponseTypes`.
fn response_types(esm: &Map<String, Value>, draft: &mut Draft) -> Result<(), ImportError> {
    let key = "FunctionResponseTypes";
    let Some(types) = field(esm, key) else {
        return Ok(());
    };
    let Some(types) = types.as_array() else {
        return Err(wrong_type(key, types, "a list"));
    };
    for kind in types {
        if kind.as_str() == Some("ReportBatchItemFailures") {
            draft.set(DELIVERY, "reportBatchItemFailures", true);
        } else {
            draft.skip(
                key,
                &show(kind),
                "only ReportBatchItemFailures has an equivalent (spec.delivery.reportBatchItemFailures)",
            );
        }
    }
    Ok(())
}

/// `spec.delivery.filters` from `FilterCriteria.Filters[].Pattern`, each checked as the
/// operator will check it.
fn filters(esm: &Map<String, Value>, draft: &mut Draft) -> Result<(), ImportError> {
    let Some(criteria) = field(esm, "FilterCriteria") else {
        return Ok(());
    };
    let Some(criteria) = criteria.as_object() else {
        return Err(wrong_type("FilterCriteria", criteria, "an object"));
    };
    let mut kept: Vec<String> = Vec::new();
    let listed = criteria.get("Filters").and_then(Value::as_array);
    for (i, filter) in listed.into_iter().flatten().enumerate() {
        let key = format!("FilterCriteria.Filters[{i}].Pattern");
        let Some(pattern) = filter.get("Pattern").and_then(Value::as_str) else {
            draft.skip(
                &key,
                &show(filter),
                "no Pattern string: nothing to filter by",
            );
            continue;
        };
        if kept.len() == MAX_FILTERS {
            draft.skip(
                &key,
                pattern,
                "spec.delivery.filters takes at most 10 patterns: merge some by hand",
            );
            continue;
        }
        match Filters::parse(&[pattern]) {
            Ok(_) => kept.push(pattern.to_owned()),
            Err(e) => draft.skip(
                &key,
                pattern,
                format!("{}. Left out of spec.delivery.filters, which changes what reaches the function: rewrite it by hand (docs/PROCESSOR.md \"Filters\")", e.message),
            ),
        }
    }
    if !kept.is_empty() {
        draft.set(DELIVERY, "filters", kept);
    }
    Ok(())
}

/// Why `key` (not one of [`MAPPED`]) is not imported.
fn reason(key: &str) -> &'static str {
    match key {
        "UUID"
        | "StateTransitionReason"
        | "LastModified"
        | "LastProcessingResult"
        | "EventSourceMappingArn"
        | "FilterCriteriaError"
        | "ResponseMetadata" => "informational",
        "State" => {
            "informational; disable the mapping at the cutover (`aws lambda update-event-source-mapping --uuid UUID --no-enabled`), or Lambda and the pods both process the stream"
        }
        "TumblingWindowInSeconds" => {
            "tumbling windows (state carried from one invocation to the next) are not supported; 0 means off"
        }
        "KMSKeyArn" => "encrypts the filter criteria inside Lambda; nothing to set",
        "MetricsConfig" => {
            "Lambda's mapping metrics: the worker serves Prometheus metrics on :8080/metrics (docs/OPERATIONS.md)"
        }
        "Tags" => "AWS tags of the mapping: label the KinesisApplication instead",
        "ProvisionedPollerConfig" | "ScalingConfig" => {
            "Lambda's pollers: the operator sizes the workers to the shards (spec.scaling)"
        }
        "Queues"
        | "Topics"
        | "SelfManagedEventSource"
        | "SelfManagedKafkaEventSourceConfig"
        | "AmazonManagedKafkaEventSourceConfig"
        | "DocumentDBEventSourceConfig"
        | "SourceAccessConfigurations" => {
            "a setting of other event sources (Kafka, MQ, SQS, DocumentDB): nothing to import for Kinesis"
        }
        _ => {
            "not a setting kinesis-operator knows: check that the file is what `aws lambda get-event-source-mapping` prints"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// `aws lambda get-event-source-mapping --uuid …` for a function with every policy on.
    const ESM: &str = r#"{
    "UUID": "14e0db71-5d35-4eb5-b481-8945cf9d10c2",
    "StartingPosition": "TRIM_HORIZON",
    "BatchSize": 500,
    "MaximumBatchingWindowInSeconds": 5,
    "ParallelizationFactor": 2,
    "EventSourceArn": "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
    "FilterCriteria": {
        "Filters": [
            {
                "Pattern": "{\"data\": {\"type\": [\"order\"]}}"
            },
            {
                "Pattern": "{\"approximateArrivalTimestamp\": [{\"numeric\": [\">\", 0]}]}"
            }
        ]
    },
    "FunctionArn": "arn:aws:lambda:eu-west-1:123456789012:function:Orders_Processor",
    "LastModified": "2024-03-01T10:15:30.123000+00:00",
    "LastProcessingResult": "OK",
    "State": "Enabled",
    "StateTransitionReason": "User action",
    "DestinationConfig": {
        "OnFailure": {
            "Destination": "arn:aws:sqs:eu-west-1:123456789012:orders-dlq"
        }
    },
    "MaximumRecordAgeInSeconds": 3600,
    "BisectBatchOnFunctionError": true,
    "MaximumRetryAttempts": 3,
    "TumblingWindowInSeconds": 60,
    "FunctionResponseTypes": [
        "ReportBatchItemFailures"
    ],
    "EventSourceMappingArn": "arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:14e0db71-5d35-4eb5-b481-8945cf9d10c2"
}"#;

    fn at<'a>(import: &'a Import, pointer: &str) -> Option<&'a Value> {
        import.manifest.pointer(pointer)
    }

    fn reason_of<'a>(import: &'a Import, key: &str) -> Option<&'a str> {
        import
            .unmapped
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.reason.as_str())
    }

    /// `ESM` with `changes` applied to its top-level keys (null removes one).
    fn esm_with(changes: &Value) -> Result<String, Box<dyn std::error::Error>> {
        let mut esm: Value = serde_json::from_str(ESM)?;
        let (Some(map), Some(changes)) = (esm.as_object_mut(), changes.as_object()) else {
            return Err("not objects".into());
        };
        for (key, value) in changes {
            if value.is_null() {
                map.remove(key);
            } else {
                map.insert(key.clone(), value.clone());
            }
        }
        Ok(esm.to_string())
    }

    #[test]
    fn a_mapping_with_every_policy_maps_field_by_field() -> TestResult {
        let import = lambda_esm(ESM)?;
        assert_eq!(
            at(&import, "/metadata/name"),
            Some(&json!("orders-processor"))
        );
        assert_eq!(
            at(&import, "/spec/stream"),
            Some(&json!({
                "arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
                "region": "eu-west-1",
            }))
        );
        // Nothing to adopt: the default application name (a new lease table).
        assert_eq!(at(&import, "/spec/applicationName"), None);
        assert_eq!(
            at(&import, "/spec/processor"),
            Some(&json!({"protocol": "lambda"}))
        );
        assert_eq!(
            at(&import, "/spec/template/spec/containers"),
            Some(&json!([{"name": "app", "image": "REPLACE-WITH-YOUR-FUNCTION-IMAGE"}]))
        );
        assert_eq!(
            at(&import, "/spec/initialPosition"),
            Some(&json!("TRIM_HORIZON"))
        );
        assert_eq!(
            at(&import, "/spec/delivery"),
            Some(&json!({
                "batchSize": 500,
                "maximumBatchingWindowSeconds": 5,
                "parallelizationFactor": 2,
                "onFailureDestination": "arn:aws:sqs:eu-west-1:123456789012:orders-dlq",
                "bisectBatchOnError": true,
                "maximumRecordAgeSeconds": 3600,
                "reportBatchItemFailures": true,
                "filters": ["{\"data\": {\"type\": [\"order\"]}}"],
            }))
        );
        // Three retries: four calls in all.
        assert_eq!(
            at(&import, "/spec/consumer"),
            Some(&json!({"maxAttempts": 4}))
        );
        Ok(())
    }

    #[test]
    fn every_key_of_the_mapping_is_imported_or_reported() -> TestResult {
        let import = lambda_esm(ESM)?;
        let unmapped: BTreeSet<&str> = import.unmapped.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(
            unmapped,
            BTreeSet::from([
                "UUID",
                "LastModified",
                "LastProcessingResult",
                "State",
                "StateTransitionReason",
                "EventSourceMappingArn",
                "TumblingWindowInSeconds",
                "StartingPosition",
                "FilterCriteria.Filters[1].Pattern",
                "image",
            ])
        );
        let input: Value = serde_json::from_str(ESM)?;
        let keys = input.as_object().ok_or("not an object")?.keys();
        for key in keys {
            assert!(
                MAPPED.contains(&key.as_str()) || unmapped.contains(key.as_str()),
                "{key} lost"
            );
        }
        for (key, words) in [
            ("UUID", "informational"),
            ("State", "--no-enabled"),
            ("TumblingWindowInSeconds", "not supported"),
            ("StartingPosition", "cannot be carried over"),
            (
                "FilterCriteria.Filters[1].Pattern",
                "approximateArrivalTimestamp",
            ),
            ("image", "awslambdaric"),
        ] {
            let reason = reason_of(&import, key).ok_or(key)?;
            assert!(reason.contains(words), "{key}: {reason}");
        }
        Ok(())
    }

    #[test]
    fn a_consumer_arn_means_fan_out_through_the_operators_consumer() -> TestResult {
        let consumer = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks/consumer/lambda-clicks:1700000000";
        let import = lambda_esm(&esm_with(&json!({"EventSourceArn": consumer}))?)?;
        assert_eq!(
            at(&import, "/spec/stream/arn"),
            Some(&json!(
                "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
            ))
        );
        assert_eq!(
            at(&import, "/spec/stream/region"),
            Some(&json!("us-east-1"))
        );
        assert_eq!(
            at(&import, "/spec/consumer/mode"),
            Some(&json!("EnhancedFanOut"))
        );
        let reason = reason_of(&import, "EventSourceArn").ok_or("EventSourceArn")?;
        assert!(
            reason.contains("lambda-clicks") && reason.contains("registers its own consumer"),
            "{reason}"
        );
        Ok(())
    }

    #[test]
    fn minus_one_means_no_limit_and_sets_nothing() -> TestResult {
        let import = lambda_esm(&esm_with(
            &json!({"MaximumRetryAttempts": -1, "MaximumRecordAgeInSeconds": -1}),
        )?)?;
        assert_eq!(at(&import, "/spec/consumer/maxAttempts"), None);
        assert_eq!(at(&import, "/spec/delivery/maximumRecordAgeSeconds"), None);
        assert!(
            import
                .unmapped
                .iter()
                .all(|u| u.key != "MaximumRetryAttempts" && u.key != "MaximumRecordAgeInSeconds"),
            "{:?}",
            import.unmapped
        );
        Ok(())
    }

    #[test]
    fn limits_without_a_destination_are_reported() -> TestResult {
        let import = lambda_esm(&esm_with(&json!({"DestinationConfig": {"OnFailure": {}}}))?)?;
        assert_eq!(at(&import, "/spec/consumer/maxAttempts"), None);
        assert_eq!(at(&import, "/spec/delivery/onFailureDestination"), None);
        assert_eq!(at(&import, "/spec/delivery/maximumRecordAgeSeconds"), None);
        for key in ["MaximumRetryAttempts", "MaximumRecordAgeInSeconds"] {
            let reason = reason_of(&import, key).ok_or(key)?;
            assert!(reason.contains("never drops records"), "{key}: {reason}");
        }
        // An SNS topic has no equivalent: reported, and the limits with it.
        let sns = "arn:aws:sns:eu-west-1:123456789012:orders-failures";
        let import = lambda_esm(&esm_with(
            &json!({"DestinationConfig": {"OnFailure": {"Destination": sns}}}),
        )?)?;
        assert_eq!(at(&import, "/spec/delivery/onFailureDestination"), None);
        assert!(reason_of(&import, "DestinationConfig.OnFailure.Destination").is_some());
        assert!(reason_of(&import, "MaximumRetryAttempts").is_some());
        Ok(())
    }

    #[test]
    fn an_out_of_range_parallelization_factor_is_reported() -> TestResult {
        let import = lambda_esm(&esm_with(&json!({"ParallelizationFactor": 12}))?)?;
        assert_eq!(at(&import, "/spec/delivery/parallelizationFactor"), None);
        let reason = reason_of(&import, "ParallelizationFactor").ok_or("ParallelizationFactor")?;
        assert!(reason.contains("1 to 10"), "{reason}");
        Ok(())
    }

    #[test]
    fn at_timestamp_takes_epoch_seconds_or_iso_8601() -> TestResult {
        for (given, utc) in [
            (json!(1_704_067_200.5), "2024-01-01T00:00:00.500Z"),
            (json!("2024-01-01T01:00:00+01:00"), "2024-01-01T00:00:00Z"),
        ] {
            let import = lambda_esm(&esm_with(&json!({
                "StartingPosition": "AT_TIMESTAMP",
                "StartingPositionTimestamp": given,
            }))?)?;
            assert_eq!(
                at(&import, "/spec/initialPosition"),
                Some(&json!("AT_TIMESTAMP"))
            );
            assert_eq!(at(&import, "/spec/initialTimestamp"), Some(&json!(utc)));
        }
        let missing = lambda_esm(&esm_with(&json!({"StartingPosition": "AT_TIMESTAMP"}))?);
        assert!(
            matches!(
                missing,
                Err(ImportError::Missing {
                    key: "StartingPositionTimestamp",
                    ..
                })
            ),
            "{missing:?}"
        );
        Ok(())
    }

    #[test]
    fn a_qualified_function_arn_reports_the_qualifier() -> TestResult {
        let arn = "arn:aws:lambda:eu-west-1:123456789012:function:orders:live";
        let import = lambda_esm(&esm_with(&json!({"FunctionArn": arn}))?)?;
        assert_eq!(at(&import, "/metadata/name"), Some(&json!("orders")));
        let reason = reason_of(&import, "FunctionArn").ok_or("FunctionArn")?;
        assert!(reason.contains("`live`"), "{reason}");
        Ok(())
    }

    #[test]
    fn malformed_json_is_an_error() {
        let err = lambda_esm("{\"EventSourceArn\": ");
        assert!(matches!(err, Err(ImportError::Json(_))), "{err:?}");
        let list = lambda_esm(r#"{"EventSourceMappings": []}"#);
        assert!(
            matches!(list, Err(ImportError::NotAMapping { .. })),
            "{list:?}"
        );
        let array = lambda_esm("[]");
        assert!(
            matches!(array, Err(ImportError::NotAMapping { .. })),
            "{array:?}"
        );
    }

    #[test]
    fn a_source_that_is_not_a_kinesis_stream_is_an_error() -> TestResult {
        let sqs =
            esm_with(&json!({"EventSourceArn": "arn:aws:sqs:eu-west-1:123456789012:orders"}))?;
        let err = lambda_esm(&sqs)
            .err()
            .ok_or("an SQS mapping was imported")?;
        assert!(
            matches!(&err, ImportError::BadValue { key, .. } if key == "EventSourceArn"),
            "{err:?}"
        );
        assert!(err.to_string().contains("Kinesis"), "{err}");
        let none = esm_with(&json!({"EventSourceArn": null}))?;
        let err = lambda_esm(&none).err().ok_or("imported without a source")?;
        assert!(
            matches!(
                err,
                ImportError::Missing {
                    key: "EventSourceArn",
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_the_key() -> TestResult {
        let text = esm_with(&json!({"BatchSize": "lots"}))?;
        let err = lambda_esm(&text).err().ok_or("imported")?;
        assert!(err.to_string().contains("BatchSize"), "{err}");
        Ok(())
    }
}
