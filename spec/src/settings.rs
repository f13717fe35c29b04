//! The worker's settings as the operator hands them over: one environment variable each on
//! the injected `kinesis-worker` container, rendered by [`WorkerSettings::to_env`] and read
//! by `kinesis-worker run` (every one of its flags that the operator sets takes its `env`
//! name from [`env`]).
//!
//! Adding a setting: a field here (with its name in [`env`], its line in
//! [`WorkerSettings::to_env`] and, if the worker has a default for it, in [`defaults`]), the
//! value the operator puts in it (`operator/src/deployment.rs`), and the flag that reads it
//! with its line in `settings_of` (`worker/src/main.rs`). The compiler asks for every one
//! but the flag; the round trip (`tests/tests/worker_settings.rs`: rendered here, read by
//! the worker binary's `run --print-settings`, compared) asks for that.
//!
//! Values are rendered as the operator always rendered them; a variable left unset means
//! the worker's default ([`WorkerSettings::effective`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An `initialTimestamp` that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{given}` is not an RFC 3339 time with an offset (e.g. 2026-11-26T00:00:00Z or 2026-11-26T02:00:00+02:00): {why}"
)]
pub struct BadTimestamp {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

/// `initialTimestamp` as the worker reads it: the same instant in UTC (`…Z`), whatever
/// offset it was written with.
///
/// # Errors
/// [`BadTimestamp`]: not RFC 3339, no offset, or a date that does not exist.
pub fn utc_timestamp(given: &str) -> Result<String, BadTimestamp> {
    given
        .trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.to_string())
        .map_err(|e| BadTimestamp {
            given: given.to_string(),
            why: e.to_string(),
        })
}

/// The names of the worker's environment variables.
pub mod env {
    /// The stream's name or ARN.
    pub const STREAM: &str = "KINESIS_STREAM";
    /// The application name (the lease table's).
    pub const APPLICATION: &str = "KINESIS_APPLICATION";
    /// The worker's id in its fleet. The operator sets it from the pod's name (Downward API),
    /// so it is no field of [`super::WorkerSettings`].
    pub const WORKER_ID: &str = "WORKER_ID";
    /// Where the app serves the record processor.
    pub const APP_ADDRESS: &str = "APP_ADDRESS";
    /// The admin HTTP address.
    pub const ADMIN_ADDRESS: &str = "ADMIN_ADDRESS";
    /// Whether the worker creates a missing lease table.
    pub const CREATE_LEASE_TABLE: &str = "CREATE_LEASE_TABLE";
    /// The log line format.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// The log filter.
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
    /// The AWS region.
    pub const REGION: &str = "AWS_REGION";
    /// The Kinesis endpoint override.
    pub const KINESIS_ENDPOINT: &str = "KINESIS_ENDPOINT";
    /// The DynamoDB endpoint override.
    pub const DYNAMODB_ENDPOINT: &str = "DYNAMODB_ENDPOINT";
    /// Where new leases start.
    pub const INITIAL_POSITION: &str = "INITIAL_POSITION";
    /// The time new leases start at, with `AT_TIMESTAMP`.
    pub const INITIAL_TIMESTAMP: &str = "INITIAL_TIMESTAMP";
    /// Polling or enhanced fan-out.
    pub const CONSUMER_MODE: &str = "CONSUMER_MODE";
    /// The fan-out consumer the operator registered.
    pub const CONSUMER_ARN: &str = "CONSUMER_ARN";
    /// Records per GetRecords call.
    pub const MAX_RECORDS: &str = "MAX_RECORDS";
    /// Sleep between reads of a shard at its tip.
    pub const IDLE_TIME_MS: &str = "IDLE_TIME_MS";
    /// How long a silent worker is alive.
    pub const FAILOVER_TIME_MS: &str = "FAILOVER_TIME_MS";
    /// Longest time between two checkpoint writes of a shard with acknowledged records.
    pub const CHECKPOINT_INTERVAL_MS: &str = "CHECKPOINT_INTERVAL_MS";
    /// Records delivered since a shard's last checkpoint write that make the next one due.
    pub const CHECKPOINT_MAX_RECORDS: &str = "CHECKPOINT_MAX_RECORDS";
    /// Record bytes delivered since a shard's last checkpoint write that make the next one due.
    pub const CHECKPOINT_MAX_BYTES: &str = "CHECKPOINT_MAX_BYTES";
    /// Failed deliveries before the on-failure destination.
    pub const MAX_ATTEMPTS: &str = "MAX_ATTEMPTS";
    /// Age past which records go to the on-failure destination.
    pub const MAX_RECORD_AGE_SECONDS: &str = "MAX_RECORD_AGE_SECONDS";
    /// Most records in one call to the app.
    pub const BATCH_SIZE: &str = "BATCH_SIZE";
    /// Lanes per shard.
    pub const PARALLELIZATION_FACTOR: &str = "PARALLELIZATION_FACTOR";
    /// How long records are gathered before a call to the app.
    pub const BATCHING_WINDOW_MS: &str = "BATCHING_WINDOW_MS";
    /// Where records go that the app keeps failing.
    pub const ON_FAILURE_DESTINATION: &str = "ON_FAILURE_DESTINATION";
    /// Split failing batches.
    pub const BISECT_ON_ERROR: &str = "BISECT_ON_ERROR";
    /// Honour partial batch failures.
    pub const REPORT_BATCH_ITEM_FAILURES: &str = "REPORT_BATCH_ITEM_FAILURES";
    /// The record filters.
    pub const FILTERS: &str = "FILTERS";
    /// Where the worker serves the Lambda Runtime API (`spec.processor.protocol: lambda`).
    pub const LAMBDA_RUNTIME_API: &str = "LAMBDA_RUNTIME_API";
    /// The function ARN handlers are told they run as (`Lambda-Runtime-Invoked-Function-Arn`).
    pub const LAMBDA_FUNCTION_ARN: &str = "LAMBDA_FUNCTION_ARN";

    /// Every variable [`super::WorkerSettings::to_env`] renders, in its order (all of them
    /// when every setting is set): every name above but [`WORKER_ID`].
    pub const RENDERED: &[&str] = &[
        STREAM,
        APPLICATION,
        APP_ADDRESS,
        ADMIN_ADDRESS,
        CREATE_LEASE_TABLE,
        LOG_FORMAT,
        LOG_LEVEL,
        REGION,
        KINESIS_ENDPOINT,
        DYNAMODB_ENDPOINT,
        INITIAL_POSITION,
        INITIAL_TIMESTAMP,
        CONSUMER_MODE,
        CONSUMER_ARN,
        MAX_RECORDS,
        IDLE_TIME_MS,
        FAILOVER_TIME_MS,
        CHECKPOINT_INTERVAL_MS,
        CHECKPOINT_MAX_RECORDS,
        CHECKPOINT_MAX_BYTES,
        MAX_ATTEMPTS,
        MAX_RECORD_AGE_SECONDS,
        BATCH_SIZE,
        PARALLELIZATION_FACTOR,
        BATCHING_WINDOW_MS,
        ON_FAILURE_DESTINATION,
        BISECT_ON_ERROR,
        REPORT_BATCH_ITEM_FAILURES,
        FILTERS,
        LAMBDA_RUNTIME_API,
        LAMBDA_FUNCTION_ARN,
    ];
}

/// What the worker does with a setting left unset (its flags' defaults; the round trip of
/// unset settings checks them against the worker binary).
pub mod defaults {
    use super::{ConsumerMode, InitialPosition};

    /// [`super::WorkerSettings::log_level`]'s when the resource names none.
    pub const LOG_LEVEL: &str = "info";
    /// Where new leases start.
    pub const INITIAL_POSITION: InitialPosition = InitialPosition::TrimHorizon;
    /// How records are read.
    pub const CONSUMER_MODE: ConsumerMode = ConsumerMode::Polling;
    /// Records per GetRecords call.
    pub const MAX_RECORDS: i64 = 10_000;
    /// The wait between reads of a shard at its tip while records come (milliseconds).
    pub const IDLE_TIME_MS: i64 = 500;
    /// How long a silent worker is alive (milliseconds).
    pub const FAILOVER_TIME_MS: i64 = 10_000;
    /// Longest time between two checkpoint writes of a shard with acknowledged records
    /// (milliseconds): 10 minutes.
    pub const CHECKPOINT_INTERVAL_MS: i64 = 600_000;
    /// Records delivered since a shard's last checkpoint write that make the next one due:
    /// what a shard takes in a minute at its write limit (1,000 records a second).
    pub const CHECKPOINT_MAX_RECORDS: i64 = 60_000;
    /// Record bytes delivered since a shard's last checkpoint write that make the next one
    /// due: what a shard takes in a minute at its write limit (1 MB a second).
    pub const CHECKPOINT_MAX_BYTES: i64 = 60_000_000;
    /// Failed deliveries before the on-failure destination: 0, retry forever.
    pub const MAX_ATTEMPTS: i64 = 0;
    /// Age past which records go to the on-failure destination: 0, no limit.
    pub const MAX_RECORD_AGE_SECONDS: i64 = 0;
    /// Lanes per shard.
    pub const PARALLELIZATION_FACTOR: i64 = 1;
    /// How long records are gathered before a call to the app: 0, not at all.
    pub const BATCHING_WINDOW_MS: i64 = 0;
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialPosition {
    /// At the newest record.
    Latest,
    /// At the oldest record still in the stream.
    TrimHorizon,
    /// At [`WorkerSettings::initial_timestamp`].
    AtTimestamp,
}

impl InitialPosition {
    /// As the worker reads it: `LATEST`, `TRIM_HORIZON`, `AT_TIMESTAMP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latest => "LATEST",
            Self::TrimHorizon => "TRIM_HORIZON",
            Self::AtTimestamp => "AT_TIMESTAMP",
        }
    }
}

/// How records are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerMode {
    /// GetRecords in a loop.
    Polling,
    /// SubscribeToShard through a registered stream consumer.
    EnhancedFanOut,
}

impl ConsumerMode {
    /// As the worker reads it: `polling`, `enhanced-fan-out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::EnhancedFanOut => "enhanced-fan-out",
        }
    }
}

/// The worker's log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// As the worker reads it: `text`, `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Everything the operator sets in the worker container's environment but the worker's id
/// ([`env::WORKER_ID`], the pod's name). `None` (or `false`): the variable is not set, the
/// worker's default applies. Numbers are `i64`, as the resource holds them; the worker
/// refuses what is out of its range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// The stream: its name, or its ARN for another account's ([`env::STREAM`]).
    pub stream: String,
    /// The application name: the lease table's ([`env::APPLICATION`]).
    pub application: String,
    /// Where the app serves the record processor: `unix:///path/to.sock` or
    /// `http://127.0.0.1:PORT` ([`env::APP_ADDRESS`]).
    pub app_address: String,
    /// The admin HTTP address: metrics, probes, `/drained` ([`env::ADMIN_ADDRESS`]).
    pub admin_address: SocketAddr,
    /// Whether the worker creates a missing lease table; needs dynamodb:CreateTable
    /// ([`env::CREATE_LEASE_TABLE`]).
    pub create_lease_table: bool,
    /// The log line format ([`env::LOG_FORMAT`]).
    pub log_format: LogFormat,
    /// The log filter, `tracing` `EnvFilter` directives such as `info` or
    /// `kinesis_worker=debug` ([`env::LOG_LEVEL`]).
    pub log_level: String,
    /// The AWS region ([`env::REGION`]); unset: the SDK's provider chain.
    pub region: Option<String>,
    /// Kinesis endpoint override ([`env::KINESIS_ENDPOINT`]).
    pub kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override ([`env::DYNAMODB_ENDPOINT`]).
    pub dynamodb_endpoint: Option<String>,
    /// Where new leases start ([`env::INITIAL_POSITION`]).
    pub initial_position: Option<InitialPosition>,
    /// With [`InitialPosition::AtTimestamp`]: the time to start at, RFC 3339 in UTC
    /// (`2026-11-26T00:00:00Z`) ([`env::INITIAL_TIMESTAMP`]).
    pub initial_timestamp: Option<String>,
    /// How records are read ([`env::CONSUMER_MODE`]).
    pub consumer_mode: Option<ConsumerMode>,
    /// The fan-out consumer registered already; the worker registers none
    /// ([`env::CONSUMER_ARN`]).
    pub consumer_arn: Option<String>,
    /// Records per GetRecords call, 1-10000 ([`env::MAX_RECORDS`]).
    pub max_records: Option<i64>,
    /// The wait between reads of a shard at its tip while records come, milliseconds
    /// ([`env::IDLE_TIME_MS`]).
    pub idle_time_ms: Option<i64>,
    /// A worker silent this long is dead, milliseconds ([`env::FAILOVER_TIME_MS`]).
    pub failover_time_ms: Option<i64>,
    /// A shard's acknowledged records are checkpointed at least this often, milliseconds
    /// ([`env::CHECKPOINT_INTERVAL_MS`]).
    pub checkpoint_interval_ms: Option<i64>,
    /// ... or once this many records were delivered since the last write
    /// ([`env::CHECKPOINT_MAX_RECORDS`]).
    pub checkpoint_max_records: Option<i64>,
    /// ... or once this many record bytes were delivered since the last write
    /// ([`env::CHECKPOINT_MAX_BYTES`]).
    pub checkpoint_max_bytes: Option<i64>,
    /// Failed deliveries before a batch goes to the on-failure destination; 0 retries
    /// forever ([`env::MAX_ATTEMPTS`]).
    pub max_attempts: Option<i64>,
    /// Records older than this go to the on-failure destination, seconds; 0: no limit
    /// ([`env::MAX_RECORD_AGE_SECONDS`]).
    pub max_record_age_seconds: Option<i64>,
    /// Most records in one call to the app, 1-10000; unset: a GetRecords page
    /// ([`env::BATCH_SIZE`]).
    pub batch_size: Option<i64>,
    /// Lanes per shard, 1-10 ([`env::PARALLELIZATION_FACTOR`]).
    pub parallelization_factor: Option<i64>,
    /// Gather records for up to this long before calling the app, milliseconds, at most
    /// 300000 ([`env::BATCHING_WINDOW_MS`]).
    pub batching_window_ms: Option<i64>,
    /// Where records go that exhausted the attempts or the age: an SQS queue or Kinesis
    /// stream ARN ([`env::ON_FAILURE_DESTINATION`]).
    pub on_failure_destination: Option<String>,
    /// Split a failing batch in halves before retrying it ([`env::BISECT_ON_ERROR`];
    /// rendered only when `true`).
    pub bisect_on_error: bool,
    /// Honour partial batch failures ([`env::REPORT_BATCH_ITEM_FAILURES`]; rendered only
    /// when `true`).
    pub report_batch_item_failures: bool,
    /// Record filters: EventBridge-style patterns ([`crate::filter`]), rendered as one JSON
    /// array ([`env::FILTERS`]).
    pub filters: Option<Vec<Value>>,
    /// Serve the Lambda Runtime API here and deliver each batch as a Lambda invocation
    /// (`spec.processor.protocol: lambda`); unset: the app serves the gRPC contract
    /// ([`env::LAMBDA_RUNTIME_API`]).
    pub lambda_runtime_api: Option<SocketAddr>,
    /// The function ARN the handler is told it runs as ([`env::LAMBDA_FUNCTION_ARN`]).
    pub lambda_function_arn: Option<String>,
}

impl WorkerSettings {
    /// The worker container's environment: the variables of the settings that are set, in
    /// the order of [`env::RENDERED`] (a stable order: a new one would be a new pod template,
    /// which restarts every worker).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        // Every field by name: a field added to the struct does not compile until it is
        // rendered here.
        let Self {
            stream,
            application,
            app_address,
            admin_address,
            create_lease_table,
            log_format,
            log_level,
            region,
            kinesis_endpoint,
            dynamodb_endpoint,
            initial_position,
            initial_timestamp,
            consumer_mode,
            consumer_arn,
            max_records,
            idle_time_ms,
            failover_time_ms,
            checkpoint_interval_ms,
            checkpoint_max_records,
            checkpoint_max_bytes,
            max_attempts,
            max_record_age_seconds,
            batch_size,
            parallelization_factor,
            batching_window_ms,
            on_failure_destination,
            bisect_on_error,
            report_batch_item_failures,
            filters,
            lambda_runtime_api,
            lambda_function_arn,
        } = self;
        let number = |n: &Option<i64>| n.map(|n| n.to_string());
        let flag = |on: bool| on.then(|| "true".to_string());
        let mut out = vec![
            (env::STREAM, stream.clone()),
            (env::APPLICATION, application.clone()),
            (env::APP_ADDRESS, app_address.clone()),
            (env::ADMIN_ADDRESS, admin_address.to_string()),
            (env::CREATE_LEASE_TABLE, create_lease_table.to_string()),
            (env::LOG_FORMAT, log_format.as_str().to_string()),
            (env::LOG_LEVEL, log_level.clone()),
        ];
        let optional = [
            (env::REGION, region.clone()),
            (env::KINESIS_ENDPOINT, kinesis_endpoint.clone()),
            (env::DYNAMODB_ENDPOINT, dynamodb_endpoint.clone()),
            (
                env::INITIAL_POSITION,
                initial_position.map(|p| p.as_str().to_string()),
            ),
            (env::INITIAL_TIMESTAMP, initial_timestamp.clone()),
            (
                env::CONSUMER_MODE,
                consumer_mode.map(|m| m.as_str().to_string()),
            ),
            (env::CONSUMER_ARN, consumer_arn.clone()),
            (env::MAX_RECORDS, number(max_records)),
            (env::IDLE_TIME_MS, number(idle_time_ms)),
            (env::FAILOVER_TIME_MS, number(failover_time_ms)),
            (env::CHECKPOINT_INTERVAL_MS, number(checkpoint_interval_ms)),
            (env::CHECKPOINT_MAX_RECORDS, number(checkpoint_max_records)),
            (env::CHECKPOINT_MAX_BYTES, number(checkpoint_max_bytes)),
            (env::MAX_ATTEMPTS, number(max_attempts)),
            (env::MAX_RECORD_AGE_SECONDS, number(max_record_age_seconds)),
            (env::BATCH_SIZE, number(batch_size)),
            (env::PARALLELIZATION_FACTOR, number(parallelization_factor)),
            (env::BATCHING_WINDOW_MS, number(batching_window_ms)),
            (env::ON_FAILURE_DESTINATION, on_failure_destination.clone()),
            (env::BISECT_ON_ERROR, flag(*bisect_on_error)),
            (
                env::REPORT_BATCH_ITEM_FAILURES,
                flag(*report_batch_item_failures),
            ),
            (
                env::FILTERS,
                filters
                    .as_ref()
                    .map(|f| Value::Array(f.clone()).to_string()),
            ),
            (
                env::LAMBDA_RUNTIME_API,
                lambda_runtime_api.map(|a| a.to_string()),
            ),
            (env::LAMBDA_FUNCTION_ARN, lambda_function_arn.clone()),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?))),
        );
        out
    }

    /// What the worker runs with: every unset setting the worker has a default for, set to
    /// it ([`defaults`]). What `kinesis-worker run --print-settings` prints.
    pub fn effective(&self) -> Self {
        Self {
            initial_position: self.initial_position.or(Some(defaults::INITIAL_POSITION)),
            consumer_mode: self.consumer_mode.or(Some(defaults::CONSUMER_MODE)),
            max_records: self.max_records.or(Some(defaults::MAX_RECORDS)),
            idle_time_ms: self.idle_time_ms.or(Some(defaults::IDLE_TIME_MS)),
            failover_time_ms: self.failover_time_ms.or(Some(defaults::FAILOVER_TIME_MS)),
            checkpoint_interval_ms: self
                .checkpoint_interval_ms
                .or(Some(defaults::CHECKPOINT_INTERVAL_MS)),
            checkpoint_max_records: self
                .checkpoint_max_records
                .or(Some(defaults::CHECKPOINT_MAX_RECORDS)),
            checkpoint_max_bytes: self
                .checkpoint_max_bytes
                .or(Some(defaults::CHECKPOINT_MAX_BYTES)),
            max_attempts: self.max_attempts.or(Some(defaults::MAX_ATTEMPTS)),
            max_record_age_seconds: self
                .max_record_age_seconds
                .or(Some(defaults::MAX_RECORD_AGE_SECONDS)),
            parallelization_factor: self
                .parallelization_factor
                .or(Some(defaults::PARALLELIZATION_FACTOR)),
            batching_window_ms: self
                .batching_window_ms
                .or(Some(defaults::BATCHING_WINDOW_MS)),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_timestamp_with_any_offset_is_the_same_instant_in_utc() {
        for (given, utc) in [
            ("2026-11-26T00:00:00Z", "2026-11-26T00:00:00Z"),
            ("2026-11-26T02:30:00+02:00", "2026-11-26T00:30:00Z"),
            ("2026-11-25T19:00:00.5-05:00", "2026-11-26T00:00:00.5Z"),
        ] {
            assert_eq!(utc_timestamp(given).as_deref(), Ok(utc), "{given}");
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-11-26T00:00:00",
            "yesterday",
            "",
        ] {
            assert!(utc_timestamp(bad).is_err(), "{bad}");
        }
    }

    fn minimal() -> WorkerSettings {
        WorkerSettings {
            stream: "Pageviews".into(),
            application: "shop.counter".into(),
            app_address: "unix:///var/run/kinesis/processor.sock".into(),
            admin_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            create_lease_table: false,
            log_format: LogFormat::Json,
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

    #[test]
    fn unset_settings_render_no_variable() {
        let names: Vec<&str> = minimal().to_env().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                env::STREAM,
                env::APPLICATION,
                env::APP_ADDRESS,
                env::ADMIN_ADDRESS,
                env::CREATE_LEASE_TABLE,
                env::LOG_FORMAT,
                env::LOG_LEVEL
            ]
        );
    }

    #[test]
    fn values_are_rendered_as_the_worker_reads_them() {
        let s = WorkerSettings {
            initial_position: Some(InitialPosition::AtTimestamp),
            consumer_mode: Some(ConsumerMode::EnhancedFanOut),
            batching_window_ms: Some(2_000),
            bisect_on_error: true,
            filters: Some(vec![
                json!({"data": {"type": ["click"]}}),
                json!({"partitionKey": [{"prefix": "vip-"}]}),
            ]),
            ..minimal()
        };
        let vars: Vec<(&str, String)> = s.to_env();
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(env::ADMIN_ADDRESS), Some("0.0.0.0:8080"));
        assert_eq!(get(env::CREATE_LEASE_TABLE), Some("false"));
        assert_eq!(get(env::LOG_FORMAT), Some("json"));
        assert_eq!(get(env::INITIAL_POSITION), Some("AT_TIMESTAMP"));
        assert_eq!(get(env::CONSUMER_MODE), Some("enhanced-fan-out"));
        assert_eq!(get(env::BATCHING_WINDOW_MS), Some("2000"));
        assert_eq!(get(env::BISECT_ON_ERROR), Some("true"));
        assert_eq!(get(env::REPORT_BATCH_ITEM_FAILURES), None);
        assert_eq!(
            get(env::FILTERS),
            Some(r#"[{"data":{"type":["click"]}},{"partitionKey":[{"prefix":"vip-"}]}]"#)
        );
    }

    #[test]
    fn settings_survive_json() {
        let s = WorkerSettings {
            consumer_mode: Some(ConsumerMode::EnhancedFanOut),
            filters: Some(vec![json!({"data": [{"prefix": "x"}]})]),
            ..minimal()
        }
        .effective();
        let text = serde_json::to_string(&s).unwrap_or_else(|e| panic!("to JSON: {e}"));
        let back: WorkerSettings =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("from JSON: {e}"));
        assert_eq!(back, s);
    }
}
