//! The operator→worker contract across the process boundary: settings rendered as the
//! operator renders them ([`WorkerSettings::to_env`]) and read by the real `kinesis-worker`
//! binary (`run --print-settings`, which parses flags and environment exactly as `run` does
//! and starts nothing) come back equal. A variable renamed on one side only, a value the
//! worker reads differently, or a worker default that moved away from
//! `kinesis_spec::settings::defaults` fails here. Needs no environment: no AWS, no cluster.

use std::net::SocketAddr;
use std::process::Command;

use kinesis_operator::crd::KinesisApplication;
use kinesis_operator::deployment::{self, WorkerSettings as OperatorSettings};
use kinesis_operator::validate::WORKER_CONTAINER;
use kinesis_operator_tests::process::binary;
use kinesis_spec::settings::{ConsumerMode, InitialPosition, LogFormat, WorkerSettings, env};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// What `kinesis-worker run --print-settings` reads from exactly `vars`: nothing of this
/// process's own environment reaches it.
fn worker_reads(vars: &[(String, String)]) -> Result<WorkerSettings> {
    let out = Command::new(binary("kinesis-worker")?)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["run", "--print-settings"])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "kinesis-worker run --print-settings failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| -> Box<dyn std::error::Error> {
        format!(
            "kinesis-worker run --print-settings printed no WorkerSettings ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
        .into()
    })
}

/// The variables with a value in the worker container of the Deployment the operator makes
/// for `app` (the worker id comes from the pod's name).
fn rendered_by_operator(
    app: &KinesisApplication,
    operator: &OperatorSettings,
    consumer_arn: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let worker = deployment::deployment(app, 1, operator, consumer_arn)
        .spec
        .template
        .spec
        .into_iter()
        .flat_map(|p| p.containers)
        .find(|c| c.name == WORKER_CONTAINER)
        .ok_or("no worker container")?;
    Ok(worker
        .env
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect())
}

fn rendered(settings: &WorkerSettings) -> Vec<(String, String)> {
    settings
        .to_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Every setting set, each to a value that is not the worker's default: a variable the
/// worker does not read comes back as its default and fails the comparison.
fn full() -> WorkerSettings {
    WorkerSettings {
        stream: "arn:aws:kinesis:us-east-1:123456789012:stream/Pageviews".into(),
        application: "shop.counter".into(),
        app_address: "http://127.0.0.1:50051".into(),
        admin_address: SocketAddr::from(([0, 0, 0, 0], 9090)),
        create_lease_table: false,
        log_format: LogFormat::Json,
        log_level: "kinesis_worker=debug,info".into(),
        region: Some("eu-central-1".into()),
        kinesis_endpoint: Some("http://10.250.0.1:4567".into()),
        dynamodb_endpoint: Some("http://10.250.0.1:8000".into()),
        initial_position: Some(InitialPosition::AtTimestamp),
        initial_timestamp: Some("2026-11-26T00:00:00Z".into()),
        consumer_mode: Some(ConsumerMode::EnhancedFanOut),
        consumer_arn: Some(
            "arn:aws:kinesis:us-east-1:123456789012:stream/Pageviews/consumer/counter:1".into(),
        ),
        max_records: Some(500),
        idle_time_ms: Some(100),
        failover_time_ms: Some(20_000),
        checkpoint_interval_ms: Some(1_000),
        checkpoint_max_records: Some(5_000),
        checkpoint_max_bytes: Some(2_000_000),
        max_attempts: Some(3),
        max_record_age_seconds: Some(3_600),
        batch_size: Some(100),
        parallelization_factor: Some(4),
        batching_window_ms: Some(2_000),
        on_failure_destination: Some("arn:aws:sqs:us-east-1:123456789012:dlq".into()),
        bisect_on_error: true,
        report_batch_item_failures: true,
        filters: Some(vec![
            json!({"data": {"type": ["click"]}}),
            json!({"partitionKey": [{"prefix": "vip-"}]}),
        ]),
        lambda_runtime_api: Some(SocketAddr::from(([127, 0, 0, 1], 9001))),
        lambda_function_arn: Some("arn:aws:lambda:us-east-1:123456789012:function:counter".into()),
    }
}

/// Only what the operator always sets.
fn minimal() -> WorkerSettings {
    WorkerSettings {
        stream: "Pageviews".into(),
        application: "counter".into(),
        app_address: "unix:///var/run/kinesis/processor.sock".into(),
        admin_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
        create_lease_table: true,
        log_format: LogFormat::Text,
        log_level: "info".into(),
        region: None,
        kinesis_endpoint: None,
        dynamodb_endpoint: None,
        initial_position: None,
        initial_timestamp: None,
        consumer_mode: None,
        consumer_arn: None,
        max_records: None,
        idle_time_ms: None,
        failover_time_ms: None,
        checkpoint_interval_ms: None,
        checkpoint_max_records: None,
        checkpoint_max_bytes: None,
        max_attempts: None,
        max_record_age_seconds: None,
        batch_size: None,
        parallelization_factor: None,
        batching_window_ms: None,
        on_failure_destination: None,
        bisect_on_error: false,
        report_batch_item_failures: false,
        filters: None,
        lambda_runtime_api: None,
        lambda_function_arn: None,
    }
}

/// Every variable of [`env`] is rendered when every setting is set, in the order of
/// [`env::RENDERED`], and every field of the settings is one of them: a new field that
/// `to_env` leaves out, or a name missing from the list, fails here.
#[test]
fn every_setting_has_its_variable() -> Result<()> {
    let settings = full();
    let names: Vec<&str> = settings.to_env().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, env::RENDERED);
    assert!(
        !names.contains(&env::WORKER_ID),
        "the pod's name, not a setting"
    );
    let fields = serde_json::to_value(&settings)?
        .as_object()
        .map_or(0, |fields| fields.len());
    assert_eq!(fields, names.len(), "one variable per field");
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "no name twice");
    assert_eq!(settings.effective(), settings, "every setting is set");
    Ok(())
}

#[test]
fn every_setting_reaches_the_worker_as_rendered() -> Result<()> {
    let settings = full();
    assert_eq!(worker_reads(&rendered(&settings))?, settings);
    Ok(())
}

/// Unset settings are the worker's own defaults, the ones the spec names.
#[test]
fn unset_settings_are_the_worker_s_defaults() -> Result<()> {
    let settings = minimal();
    assert_eq!(worker_reads(&rendered(&settings))?, settings.effective());
    // The other choices of each kind, and the flags off.
    let other = WorkerSettings {
        initial_position: Some(InitialPosition::Latest),
        consumer_mode: Some(ConsumerMode::Polling),
        ..minimal()
    };
    assert_eq!(worker_reads(&rendered(&other))?, other.effective());
    Ok(())
}

/// What the operator puts in the worker container's environment for a resource is what the
/// worker reads as the operator's [`deployment::worker_settings`].
#[test]
fn what_the_operator_renders_the_worker_reads() -> Result<()> {
    let app: KinesisApplication = serde_json::from_value(json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": "counter", "namespace": "shop", "uid": "0000-1111"},
        "spec": {
            "stream": {"name": "Pageviews", "region": "us-east-1", "endpoint": "http://10.250.0.1:4567"},
            "initialPosition": "AT_TIMESTAMP",
            "initialTimestamp": "2026-11-26T00:00:00Z",
            "consumer": {"mode": "EnhancedFanOut", "maxRecords": 500, "idleTimeBetweenReadsMs": 100,
                         "failoverTimeMs": 20000, "checkpointIntervalMs": 1000, "maxAttempts": 3},
            "delivery": {"onFailureDestination": "arn:aws:sqs:us-east-1:123456789012:dlq",
                         "bisectBatchOnError": true, "maximumRecordAgeSeconds": 3600,
                         "reportBatchItemFailures": true, "batchSize": 100, "parallelizationFactor": 4,
                         "maximumBatchingWindowSeconds": 2,
                         "filters": ["{\"data\": {\"type\": [\"click\"]}}"]},
            "processor": {"port": 50051},
            "worker": {"logLevel": "debug"},
            "template": {"spec": {"containers": [{"name": "app", "image": "pageview-counter:dev"}]}}
        }
    }))?;
    let operator = OperatorSettings {
        image: "localhost/kinesis-worker:dev".into(),
        pull_policy: None,
        default_region: Some("eu-west-1".into()),
        network_policy_from: None,
    };
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/Pageviews/consumer/counter:1";
    for (app, arn) in [(app.clone(), Some(arn)), (polling(app)?, None)] {
        let vars = rendered_by_operator(&app, &operator, arn)?;
        let expected = deployment::worker_settings(&app, &operator, arn).effective();
        assert_eq!(worker_reads(&vars)?, expected);
    }
    Ok(())
}

/// The resource accepts an `initialTimestamp` with an offset (RFC 3339 allows one): the
/// worker gets the same instant, in UTC, and starts.
#[test]
fn an_initial_timestamp_with_an_offset_reaches_the_worker_as_the_same_instant() -> Result<()> {
    let app: KinesisApplication = serde_json::from_value(json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": "counter", "namespace": "shop", "uid": "0000-1111"},
        "spec": {
            "stream": {"name": "Pageviews", "region": "us-east-1"},
            "initialPosition": "AT_TIMESTAMP",
            "initialTimestamp": "2026-11-26T02:30:00.250+02:00",
            "processor": {"port": 50051},
            "template": {"spec": {"containers": [{"name": "app", "image": "pageview-counter:dev"}]}}
        }
    }))?;
    let operator = OperatorSettings {
        image: "localhost/kinesis-worker:dev".into(),
        pull_policy: None,
        default_region: None,
        network_policy_from: None,
    };
    let read = worker_reads(&rendered_by_operator(&app, &operator, None)?)?;
    assert_eq!(
        read.initial_timestamp.as_deref(),
        Some("2026-11-26T00:30:00.25Z")
    );
    Ok(())
}

/// `app` reading by polling with no delivery policy, from a socket.
fn polling(mut app: KinesisApplication) -> Result<KinesisApplication> {
    app.spec.consumer = serde_json::from_value(json!({}))?;
    app.spec.delivery = serde_json::from_value(json!({}))?;
    app.spec.processor = serde_json::from_value(json!({"socket": "/tmp/kinesis/app.sock"}))?;
    app.spec.initial_position = None;
    app.spec.initial_timestamp = None;
    Ok(app)
}
