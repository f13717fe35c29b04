//! The `kinesis-worker` binary.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kinesis_processor::Address;
use kinesis_spec::settings::{self as contract, env as var};
use kinesis_worker::admin::{self, Drain};
use kinesis_worker::aws::GetRecordsClients;
use kinesis_worker::aws::{AwsSettings, AwsTimeouts};
use kinesis_worker::lease::checkpoint::Checkpoint;
use kinesis_worker::lease::coordinator::{
    Coordination, Coordinator, CoordinatorConfig, LeaseEvent,
};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::lease::table::LeaseTable;
use kinesis_worker::metrics::Metrics;
use kinesis_worker::pipeline::{App, CheckpointPolicy, Pipeline, PipelineConfig};
use kinesis_worker::preflight;
use kinesis_worker::records::wire::WireFormat;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// kinesis-worker: the KCL part of kinesis-operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// AWS region (default: the SDK's provider chain).
    #[arg(long, env = var::REGION, global = true)]
    region: Option<String>,
    /// Kinesis endpoint override, e.g. http://10.250.0.1:4567.
    #[arg(long, env = var::KINESIS_ENDPOINT, global = true)]
    kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override.
    #[arg(long, env = var::DYNAMODB_ENDPOINT, global = true)]
    dynamodb_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// What `import` reads.
#[derive(Subcommand, Debug)]
enum ImportFrom {
    /// A KCL MultiLangDaemon `.properties` file: the same applicationName, so the same lease
    /// table and its checkpoints.
    KclProperties {
        /// The properties file.
        file: std::path::PathBuf,
    },
    /// The JSON of `aws lambda get-event-source-mapping --uuid …`.
    LambdaEsm {
        /// The JSON file (`-` for stdin).
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that Kinesis and DynamoDB answer with these settings; exit 1 if either does not.
    Preflight {
        /// Repeat the check every this many seconds instead of exiting (a diagnostics pod).
        #[arg(long)]
        interval: Option<u64>,
        /// Seconds each service may take to answer.
        #[arg(long, default_value_t = preflight::DEFAULT_TIMEOUT.as_secs())]
        timeout: u64,
    },
    /// Run the worker: hold shard leases, read the shards and deliver their records to the
    /// app's record processor over gRPC (the sidecar's job; also usable on its own).
    ///
    /// Minimal: `kinesis-worker run --stream Pageviews --application counter
    /// --app-address unix:///tmp/processor.sock`. Credentials come from the standard AWS
    /// chain (environment, profile, IRSA web identity, instance role).
    Run(Box<RunArgs>),
    /// Hold and balance the stream's shard leases without reading records: a dry run of a
    /// fleet's lease coordination, printing `acquired|lost|shutdown-requested SHARD` lines.
    Leases(LeaseArgs),
    /// Print one application's shards: state, owner, checkpoint and lag (from the owner's
    /// last heartbeat), from one ListShards and one scan of its lease table. Works anywhere
    /// the lease table and the stream can be read (dynamodb:Scan, kinesis:ListShards).
    Status {
        /// Application name: the lease table's name (`kubectl get kapp NAME -o
        /// jsonpath={.status.applicationName}`).
        #[arg(long, env = var::APPLICATION)]
        application: String,
        /// Stream name, or its ARN.
        #[arg(long, env = var::STREAM)]
        stream: String,
        /// One JSON object, `{"shards": [{"shardId", "state", "owner", "checkpoint",
        /// "lagMs", "stalled"}]}`, instead of the table (`kubectl kinesis status` reads it
        /// with `kubectl exec` in a worker container).
        #[arg(long)]
        json: bool,
    },
    /// Print the KinesisApplication for an existing consumer's configuration
    /// (docs/MIGRATING.md): the manifest on stdout, every setting that has no equivalent on
    /// stderr.
    #[command(subcommand)]
    Import(ImportFrom),
    /// Wait until something listens on ADDRESS (TCP), then exit 0; exit 1 after --timeout
    /// seconds. The postStart hook of a `lambda` application's worker container: the kubelet
    /// starts the function's container only once the Runtime API is up.
    WaitListening {
        /// `host:port`, e.g. 127.0.0.1:9001.
        address: std::net::SocketAddr,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Ask the worker running beside this command to hand every lease over and exit
    /// (`POST /drain` on its local admin port); answers once it has drained.
    Drain {
        /// The worker's local admin address.
        #[arg(long, env = "LOCAL_ADMIN_ADDRESS", default_value = "127.0.0.1:8081")]
        address: std::net::SocketAddr,
    },
}

/// How records are read.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ConsumerMode {
    /// GetRecords in a loop (shares the shard's 2 MB/s with other consumers).
    Polling,
    /// SubscribeToShard through a registered stream consumer (2 MB/s per shard of its own).
    EnhancedFanOut,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    leases: LeaseArgs,
    /// Where the app serves the record processor: unix:///path/to.sock or http://127.0.0.1:PORT.
    #[arg(long, env = var::APP_ADDRESS, default_value = kinesis_processor::DEFAULT_SOCKET)]
    app_address: String,
    /// Admin HTTP address (/metrics, /healthz, /readyz, /drained); changes nothing.
    #[arg(long, env = var::ADMIN_ADDRESS, default_value = "0.0.0.0:8080")]
    admin_address: std::net::SocketAddr,
    /// Local admin address for `POST /drain` (loopback only: it stops consumption).
    #[arg(long, env = "LOCAL_ADMIN_ADDRESS", default_value = "127.0.0.1:8081")]
    local_admin_address: std::net::SocketAddr,
    /// Polling (GetRecords) or enhanced-fan-out (SubscribeToShard; needs
    /// kinesis:RegisterStreamConsumer, DescribeStreamConsumer, SubscribeToShard).
    #[arg(long, env = var::CONSUMER_MODE, value_enum, default_value_t = ConsumerMode::Polling)]
    consumer_mode: ConsumerMode,
    /// Name of the fan-out consumer (default: the application name).
    #[arg(long, env = "CONSUMER_NAME")]
    consumer_name: Option<String>,
    /// ARN of a fan-out consumer registered already (the operator registers it and passes
    /// it in): the worker only waits for it to be ACTIVE and registers nothing.
    #[arg(long, env = var::CONSUMER_ARN)]
    consumer_arn: Option<String>,
    /// Records per GetRecords call (1-10000).
    #[arg(long, env = var::MAX_RECORDS, default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    max_records: i32,
    /// The GetRecords page size to aim for (KiB): each call's Limit is this divided by the
    /// size of a record of the shard's last page (at most --max-records). A shard is served at
    /// most 2 MB/s, so 2048 loses no throughput; it bounds what each shard holds in memory
    /// (a page is held more than once while it is read and delivered).
    #[arg(long, env = "MAX_PAGE_KIB", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(16..=10_240))]
    max_page_kib: u32,
    /// Most record bytes read from one shard a second, in kB (1,000 bytes, data and keys):
    /// each GetRecords call waits until the last page's bytes are paid at this rate. Kinesis
    /// serves a shard 2 MB/s across all polling applications of the stream and refuses
    /// (ProvisionedThroughputExceeded) past it; lower this when several read one stream.
    /// 0: no limit but the 5 calls a second.
    #[arg(long, env = "READ_KB_PER_SECOND", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    read_kb_per_second: u64,
    /// The wait between reads of a shard at its tip while records come (milliseconds): every
    /// application polling the stream shares a shard's 5 calls a second.
    #[arg(long, env = var::IDLE_TIME_MS, default_value_t = 500)]
    idle_time_ms: u64,
    /// The longest wait between reads of a shard at its tip (milliseconds): an idle shard
    /// backs off to it, and so does one whose reads were throttled.
    #[arg(long, env = "IDLE_TIME_MAX_MS", default_value_t = 1_000)]
    idle_time_max_ms: u64,
    /// Enhanced fan-out: how often a shard at its tip may ask the worker's shared ListShards
    /// view whether it closed (milliseconds). Kinesis ends a shard's subscription with its
    /// child shards; this is only the net for an end that never came (and for emulators
    /// that send none, such as kinesis-mock): one listing per worker per interval.
    #[arg(long, env = "FAN_OUT_END_CHECK_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    fan_out_end_check_ms: u64,
    /// A shard's acknowledged records are checkpointed at least this often (milliseconds),
    /// and sooner once `--checkpoint-max-records` records or `--checkpoint-max-bytes` bytes
    /// were delivered since its last write; flushed on every hand-over, lease release, shard
    /// end and shutdown anyway, so only a crash (or a lease lost to failover) redelivers what
    /// was acknowledged since: at most a minute of a shard at its write limits, and at most
    /// this interval.
    #[arg(long, env = var::CHECKPOINT_INTERVAL_MS, default_value_t = 600_000)]
    checkpoint_interval_ms: u64,
    /// Records delivered since a shard's last checkpoint write that make the next one due.
    #[arg(long, env = var::CHECKPOINT_MAX_RECORDS, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_max_records: u64,
    /// Record bytes delivered since a shard's last checkpoint write that make the next one due.
    #[arg(long, env = var::CHECKPOINT_MAX_BYTES, default_value_t = 60_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_max_bytes: u64,
    /// The longest the app may take to answer one call (Initialize, ProcessRecords,
    /// ShardEnded; milliseconds). A call past it is cancelled and counts as a failed
    /// attempt (retried, then the failure policy), so a hung app holds its shard for at
    /// most this long; a lost lease cancels a call at once. Each send to the on-failure
    /// destination is bounded by it too.
    #[arg(long, env = "APP_CALL_TIMEOUT_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(100..))]
    app_call_timeout_ms: u64,
    /// Tests only: shifts this worker's wall clock by this much (milliseconds), as a worker
    /// whose clock is wrong; pins and record ages follow Kinesis's clock all the same.
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    test_clock_offset_ms: i64,
    /// Send a batch to --on-failure-destination after this many failed deliveries; 0 retries
    /// forever. Needs a destination: records are never just skipped.
    #[arg(long, env = var::MAX_ATTEMPTS, default_value_t = 0)]
    max_attempts: u32,
    /// Where records go that exhausted --max-attempts or exceeded --max-record-age-seconds,
    /// before the worker moves past them: an SQS queue ARN or a Kinesis stream ARN.
    #[arg(long, env = var::ON_FAILURE_DESTINATION)]
    on_failure_destination: Option<String>,
    /// Split a failing batch in halves before retrying it, down to single records (a
    /// poison record then holds back only itself).
    #[arg(long, env = var::BISECT_ON_ERROR, default_value_t = false)]
    bisect_on_error: bool,
    /// Records older than this (by arrival time) go to the destination, not to the app; 0:
    /// no limit. Needs --on-failure-destination.
    #[arg(long, env = var::MAX_RECORD_AGE_SECONDS, default_value_t = 0)]
    max_record_age_seconds: u64,
    /// Honour partial batch failures: an app answer with `failed_from` acknowledges the
    /// records before it, and only the rest is retried (Lambda's ReportBatchItemFailures).
    /// Off: such an answer fails the whole call.
    #[arg(long, env = var::REPORT_BATCH_ITEM_FAILURES, default_value_t = false)]
    report_batch_item_failures: bool,
    /// Only records matching one of these patterns reach the app; the rest count as
    /// processed. A JSON array of EventBridge-style patterns over partitionKey,
    /// sequenceNumber, explicitHashKey and data, e.g. '[{"data": {"type": ["click"]}}]'
    /// (docs/PROCESSOR.md "Filters").
    #[arg(long, env = var::FILTERS)]
    filters: Option<String>,
    /// Serve the Lambda Runtime API (2018-06-01) here and deliver each batch to a Lambda
    /// handler as a Kinesis event (spec.processor.protocol: lambda); the app container's
    /// AWS_LAMBDA_RUNTIME_API names the same address. The worker then calls the adapter in
    /// its own process; --app-address is not used.
    #[arg(long, env = var::LAMBDA_RUNTIME_API)]
    lambda_runtime_api: Option<std::net::SocketAddr>,
    /// With --lambda-runtime-api: the function ARN the handler is told it runs as.
    #[arg(long, env = var::LAMBDA_FUNCTION_ARN)]
    lambda_function_arn: Option<String>,
    /// Most records in one ProcessRecords call (1-10000); default: a GetRecords page.
    #[arg(long, env = var::BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: Option<u32>,
    /// Gather records for up to this long (milliseconds, at most 300000) before calling the
    /// app, until --batch-size records are there; 0: call with each page as it is read.
    #[arg(long, env = var::BATCHING_WINDOW_MS, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    batching_window_ms: u64,
    /// Lanes per shard (1-10): each batch is split by partition key into this many parts
    /// delivered at once; per-key order holds, and the app sees concurrent calls for one
    /// shard (Lambda's ParallelizationFactor).
    #[arg(long, env = var::PARALLELIZATION_FACTOR, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    parallelization_factor: u32,
    /// SQS endpoint override (for the on-failure destination), e.g. a local server.
    #[arg(long, env = "SQS_ENDPOINT")]
    sqs_endpoint: Option<String>,
    /// Most records read ahead of delivery across all shards (MiB): their data and 128 bytes
    /// per record for the record itself.
    #[arg(long, env = "MAX_BUFFERED_MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_buffered_mib: u32,
    /// Log format.
    #[arg(long, env = var::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How GetRecords is sent and read: our own client in CBOR (as KCL reads Kinesis; the
    /// fastest), our own in JSON, or the AWS SDK's (JSON). Fall back to `sdk` if an endpoint
    /// behaves differently.
    #[arg(long, env = "GET_RECORDS_CLIENT", value_enum, default_value_t = GetRecordsClient::Cbor)]
    get_records_client: GetRecordsClient,
    /// Print the settings read (flags and environment) as JSON, as the operator renders them
    /// (`kinesis_spec::settings::WorkerSettings`), and exit without starting anything.
    #[arg(long, hide = true)]
    print_settings: bool,
}

/// Which client sends GetRecords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GetRecordsClient {
    /// `application/x-amz-cbor-1.1`, decoded without copying record data.
    Cbor,
    /// `application/x-amz-json-1.1`, decoded by us.
    Json,
    /// The AWS SDK for Rust (JSON).
    Sdk,
}

/// Where a new lease starts.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum InitialPosition {
    TrimHorizon,
    Latest,
    AtTimestamp,
}

/// How the fleet coordinates (see docs/LEASES.md); every worker of a fleet uses the same.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CoordinationArg {
    /// Every worker scans the whole lease table every scan interval.
    Peer,
    /// One elected worker scans and assigns; the others read only their own leases.
    Assigner,
}

#[derive(clap::Args, Debug)]
struct LeaseArgs {
    /// Application name: the lease table's name.
    #[arg(long, env = var::APPLICATION)]
    application: String,
    /// Stream name, or ARN (arn:aws:kinesis:…) for cross-account access.
    #[arg(long, env = var::STREAM)]
    stream: String,
    /// This worker's id, unique in the fleet (default: POD_NAME, else HOSTNAME-PID).
    #[arg(long, env = var::WORKER_ID)]
    worker_id: Option<String>,
    /// A worker silent for this long is dead (milliseconds).
    #[arg(long, env = var::FAILOVER_TIME_MS, default_value_t = 10_000)]
    failover_time_ms: u64,
    /// How often the lease table is scanned (milliseconds).
    #[arg(long, env = "LEASE_SCAN_INTERVAL_MS", default_value_t = 1_000)]
    scan_interval_ms: u64,
    /// How long a hand-over request waits for the owner (milliseconds).
    #[arg(long, env = "HANDOFF_TIMEOUT_MS", default_value_t = 5_000)]
    handoff_timeout_ms: u64,
    /// How often the stream's shards are listed (milliseconds).
    #[arg(long, env = "SHARD_SYNC_INTERVAL_MS", default_value_t = 30_000)]
    shard_sync_interval_ms: u64,
    /// Where new leases start.
    #[arg(long, env = var::INITIAL_POSITION, value_enum, default_value_t = InitialPosition::TrimHorizon)]
    initial_position: InitialPosition,
    /// With AT_TIMESTAMP: the time to start at, RFC 3339 (2026-11-26T00:00:00Z) or epoch
    /// milliseconds.
    #[arg(long, env = var::INITIAL_TIMESTAMP, value_parser = parse_timestamp, required_if_eq("initial_position", "AT_TIMESTAMP"))]
    initial_timestamp: Option<i64>,
    /// Create the lease table if it does not exist (needs dynamodb:CreateTable).
    #[arg(long, env = var::CREATE_LEASE_TABLE, default_value_t = true, action = clap::ArgAction::Set)]
    create_table: bool,
    /// How the fleet coordinates: `peer` (every worker scans the table) or `assigner` (one
    /// elected worker scans; needs the owner index, added with dynamodb:UpdateTable if
    /// missing). Every worker of one application must use the same.
    #[arg(long, env = "COORDINATION", value_enum, default_value_t = CoordinationArg::Assigner)]
    coordination: CoordinationArg,
}

/// Opens the lease table for `args`, with the owner index in assigner mode.
async fn open_table(
    dynamodb: aws_sdk_dynamodb::Client,
    args: &LeaseArgs,
) -> anyhow::Result<LeaseTable> {
    let table = LeaseTable::open(dynamodb, &args.application, args.create_table)
        .await
        .with_context(|| {
            format!(
                "opening lease table `{}` (application name)",
                args.application
            )
        })?;
    if matches!(args.coordination, CoordinationArg::Assigner) {
        table.ensure_owner_index().await.with_context(|| {
            format!(
                "lease table `{}`: the owner index {} (needed by --coordination assigner)",
                args.application,
                kinesis_worker::lease::model::OWNER_INDEX
            )
        })?;
    }
    Ok(table)
}

fn default_worker_id() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

fn parse_timestamp(s: &str) -> Result<i64, String> {
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    // Any offset: read as the same instant in UTC, the one form the SDK's parser takes.
    kinesis_spec::settings::utc_timestamp(s)
        .ok()
        .and_then(|utc| DateTime::from_str(&utc, DateTimeFormat::DateTime).ok())
        .and_then(|t| t.to_millis().ok())
        .ok_or_else(|| {
            format!("`{s}` is neither RFC 3339 (2026-11-26T00:00:00Z, or with an offset) nor epoch milliseconds")
        })
}

fn stream_ref(s: &str) -> StreamRef {
    if s.starts_with("arn:") {
        StreamRef::Arn(s.to_string())
    } else {
        StreamRef::Name(s.to_string())
    }
}

fn coordinator_config(args: &LeaseArgs) -> CoordinatorConfig {
    let mut config =
        CoordinatorConfig::new(args.worker_id.clone().unwrap_or_else(default_worker_id));
    config.failover_time = Duration::from_millis(args.failover_time_ms);
    config.heartbeat_interval = config.failover_time / 3;
    config.scan_interval = Duration::from_millis(args.scan_interval_ms);
    config.handoff_timeout = Duration::from_millis(args.handoff_timeout_ms);
    config.shard_sync_interval = Duration::from_millis(args.shard_sync_interval_ms);
    config.initial_position = match args.initial_position {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp => Checkpoint::AtTimestamp,
    };
    config.coordination = match args.coordination {
        CoordinationArg::Peer => Coordination::Peer,
        CoordinationArg::Assigner => Coordination::Assigner,
    };
    config
}

async fn run_leases(settings: &AwsSettings, args: LeaseArgs) -> anyhow::Result<()> {
    let sdk = settings.sdk_config().await;
    let table = open_table(settings.dynamodb(&sdk), &args).await?;
    let stream = stream_ref(&args.stream);
    let config = coordinator_config(&args);
    tracing::info!(worker = %config.worker_id, table = %args.application, stream = %stream, "lease coordinator starting");
    let (events_tx, mut events) = mpsc::channel(1024);
    let (coordinator, handle) = Coordinator::new(
        table,
        Some((settings.kinesis(&sdk), stream)),
        config,
        events_tx,
    );
    let running = tokio::spawn(coordinator.run());
    let printer = tokio::spawn(async move {
        // Without a record pipeline every shard is "processed" at once: hand-overs and
        // shutdowns are answered immediately. A lease is kept while "processed" (the
        // coordinator releases a lease whose processor dropped it).
        let mut processing = std::collections::HashMap::new();
        while let Some(event) = events.recv().await {
            match event {
                LeaseEvent::Acquired(lease) => {
                    println!("acquired {} {}", lease.shard_id, lease.checkpoint);
                    processing.insert(lease.shard_id.clone(), lease);
                }
                LeaseEvent::Lost { shard_id } => {
                    println!("lost {shard_id}");
                    processing.remove(&shard_id);
                }
                LeaseEvent::ShutdownRequested { shard_id, done, .. } => {
                    println!("shutdown-requested {shard_id}");
                    let _ = done.send(());
                    processing.remove(&shard_id);
                }
            }
        }
    });
    kinesis_processor::shutdown_signal().await;
    handle.shutdown().await;
    running.await?;
    printer.abort();
    println!("stopped");
    Ok(())
}

/// `--filters`: a JSON array of patterns.
fn parse_filters(text: Option<&str>) -> anyhow::Result<kinesis_worker::pipeline::filter::Filters> {
    use kinesis_worker::pipeline::filter::Filters;
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Filters::default());
    };
    let patterns: Vec<serde_json::Value> = serde_json::from_str(text).with_context(|| {
        format!("--filters must be a JSON array of patterns, e.g. '[{{\"data\": {{\"type\": [\"click\"]}}}}]', not {text}")
    })?;
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    Filters::parse(&patterns).context("--filters")
}

/// What `run` read (flags and environment) as the operator's side of the contract names it
/// ([`contract::WorkerSettings`]): what `run --print-settings` prints. A setting the worker
/// defaults is given as it runs with it (as [`contract::WorkerSettings::effective`] does).
fn settings_of(aws: &AwsSettings, args: &RunArgs) -> anyhow::Result<contract::WorkerSettings> {
    let leases = &args.leases;
    let number = |name: &str, n: u64| {
        i64::try_from(n).with_context(|| format!("{name}: {n} is out of range"))
    };
    let filters = match args.filters.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(text) => Some(
            serde_json::from_str::<Vec<serde_json::Value>>(text)
                .context("--filters must be a JSON array of patterns")?,
        ),
        None => None,
    };
    let initial_timestamp = leases.initial_timestamp.map(|ms| {
        use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
        DateTime::from_millis(ms)
            .fmt(DateTimeFormat::DateTime)
            .unwrap_or_else(|_| ms.to_string())
    });
    Ok(contract::WorkerSettings {
        stream: leases.stream.clone(),
        application: leases.application.clone(),
        app_address: args.app_address.clone(),
        admin_address: args.admin_address,
        create_lease_table: leases.create_table,
        log_format: match args.log_format {
            LogFormat::Text => contract::LogFormat::Text,
            LogFormat::Json => contract::LogFormat::Json,
        },
        // Read by the log filter, not by a flag (see `run`).
        log_level: std::env::var(var::LOG_LEVEL)
            .unwrap_or_else(|_| contract::defaults::LOG_LEVEL.into()),
        region: aws.region.clone(),
        kinesis_endpoint: aws.kinesis_endpoint.clone(),
        dynamodb_endpoint: aws.dynamodb_endpoint.clone(),
        initial_position: Some(match leases.initial_position {
            InitialPosition::TrimHorizon => contract::InitialPosition::TrimHorizon,
            InitialPosition::Latest => contract::InitialPosition::Latest,
            InitialPosition::AtTimestamp => contract::InitialPosition::AtTimestamp,
        }),
        initial_timestamp,
        consumer_mode: Some(match args.consumer_mode {
            ConsumerMode::Polling => contract::ConsumerMode::Polling,
            ConsumerMode::EnhancedFanOut => contract::ConsumerMode::EnhancedFanOut,
        }),
        consumer_arn: args.consumer_arn.clone(),
        max_records: Some(i64::from(args.max_records)),
        idle_time_ms: Some(number(var::IDLE_TIME_MS, args.idle_time_ms)?),
        failover_time_ms: Some(number(var::FAILOVER_TIME_MS, leases.failover_time_ms)?),
        checkpoint_interval_ms: Some(number(
            var::CHECKPOINT_INTERVAL_MS,
            args.checkpoint_interval_ms,
        )?),
        checkpoint_max_records: Some(number(
            var::CHECKPOINT_MAX_RECORDS,
            args.checkpoint_max_records,
        )?),
        checkpoint_max_bytes: Some(number(
            var::CHECKPOINT_MAX_BYTES,
            args.checkpoint_max_bytes,
        )?),
        max_attempts: Some(i64::from(args.max_attempts)),
        max_record_age_seconds: Some(number(
            var::MAX_RECORD_AGE_SECONDS,
            args.max_record_age_seconds,
        )?),
        batch_size: args.batch_size.map(i64::from),
        parallelization_factor: Some(i64::from(args.parallelization_factor)),
        batching_window_ms: Some(number(var::BATCHING_WINDOW_MS, args.batching_window_ms)?),
        on_failure_destination: args.on_failure_destination.clone(),
        bisect_on_error: args.bisect_on_error,
        report_batch_item_failures: args.report_batch_item_failures,
        filters,
        lambda_runtime_api: args.lambda_runtime_api,
        lambda_function_arn: args.lambda_function_arn.clone(),
    })
}

/// With `--lambda-runtime-api`: starts the Lambda adapter ([`kinesis_bridge::lambda`]) in
/// this process: the Runtime API for the app container, and the record processor the
/// pipeline calls directly (no gRPC hop). The receiver gets the Runtime API's error if it
/// stops.
///
/// # Errors
/// The Runtime API's address cannot be bound, or the function ARN is no valid header.
async fn start_lambda(
    aws: &AwsSettings,
    args: &RunArgs,
) -> anyhow::Result<
    Option<(
        kinesis_worker::pipeline::LocalProcessor,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        tokio::sync::oneshot::Receiver<anyhow::Error>,
    )>,
> {
    let Some(runtime_api) = args.lambda_runtime_api else {
        return Ok(None);
    };
    let region = aws
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_default();
    let function_arn = args.lambda_function_arn.clone().unwrap_or_else(|| {
        format!(
            "arn:aws:lambda:{region}:000000000000:function:{}",
            args.leases.application
        )
    });
    let config = kinesis_bridge::lambda::LambdaConfig {
        runtime_api,
        event_source_arn: event_source_arn(&args.leases.stream, &region, &function_arn),
        function_arn,
        region,
        // IRSA's role, when the pod has one: what Lambda reports as the identity it
        // invokes with.
        invoke_identity_arn: std::env::var("AWS_ROLE_ARN").unwrap_or_default(),
        invocation_timeout: Duration::from_millis(args.app_call_timeout_ms),
        report_batch_item_failures: args.report_batch_item_failures,
    };
    let (processor, api) = kinesis_bridge::lambda::start(&config).await?;
    let (failed, on_failure) = tokio::sync::oneshot::channel();
    let alive = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let serving = alive.clone();
    tokio::spawn(async move {
        // The Runtime API lives as long as the worker: it stops with the process, after the
        // last hand-over. If it stops before, the app is no longer ready (the pod leaves
        // the Service, /readyz fails) and the failure is logged.
        let result = api.serve().await;
        serving.store(false, std::sync::atomic::Ordering::SeqCst);
        let e = match result {
            Ok(()) => anyhow::anyhow!("the Lambda Runtime API stopped"),
            Err(e) => anyhow::Error::new(e),
        };
        tracing::error!(error = %e, "the Lambda Runtime API stopped");
        let _ = failed.send(e);
    });
    Ok(Some((std::sync::Arc::new(processor), alive, on_failure)))
}

/// The stream's ARN as Lambda's event names it: the stream as given when it is an ARN,
/// else built from its name, the region and the function's account.
fn event_source_arn(stream: &str, region: &str, function_arn: &str) -> String {
    if stream.starts_with("arn:") {
        return stream.to_string();
    }
    let account = function_arn.split(':').nth(4).unwrap_or("000000000000");
    format!("arn:aws:kinesis:{region}:{account}:stream/{stream}")
}

/// `import`: reads the file, prints the manifest and reports what was not imported.
fn import(from: &ImportFrom) -> anyhow::Result<()> {
    let read = |file: &std::path::Path| -> anyhow::Result<String> {
        if file.as_os_str() == "-" {
            return std::io::read_to_string(std::io::stdin()).context("reading stdin");
        }
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    };
    let imported = match from {
        ImportFrom::KclProperties { file } => kinesis_worker::import::kcl_properties(&read(file)?),
        ImportFrom::LambdaEsm { file } => kinesis_worker::import::lambda_esm(&read(file)?),
    }?;
    let yaml = imported.to_yaml()?;
    println!("{}", yaml.trim_end());
    eprint!("{}", imported.report());
    Ok(())
}

/// `run --print-settings`: prints [`settings_of`] as JSON; starts nothing.
fn print_settings(aws: &AwsSettings, args: &RunArgs) -> ExitCode {
    let json = settings_of(aws, args)
        .and_then(|s| serde_json::to_string_pretty(&s).context("settings as JSON"));
    match json {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(settings: &AwsSettings, args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::labelled(&[
        ("application", &args.leases.application),
        ("stream", &args.leases.stream),
    ]);
    let counter = metrics.aws_counter();
    check_failure_policy(&args)?;
    let filters = parse_filters(args.filters.as_deref())?;
    let app_address: Address = args.app_address.parse()?;
    let (app, lambda_failed) = match start_lambda(settings, &args).await? {
        Some((processor, alive, failed)) => (
            App::local(&app_address, processor, alive, metrics.clone()),
            Some(failed),
        ),
        None => (App::new(&app_address, metrics.clone())?, None),
    };
    let (drain, drained) = Drain::new();
    let sdk = settings.sdk_config().await;
    let lease_args = &args.leases;
    let config = coordinator_config(lease_args);
    let worker_id = config.worker_id.clone();
    let stream = stream_ref(&lease_args.stream);
    let clock = kinesis_worker::clock::KinesisClock::with_wall_offset(args.test_clock_offset_ms);
    let kinesis = settings.kinesis_with(&sdk, Some(&counter), Some(&clock));
    let dynamodb = settings.dynamodb_counted(&sdk, Some(&counter));

    // The admin port first: probes and /metrics answer while the worker waits.
    let table = open_table(dynamodb, lease_args).await?;
    let admin = admin::serve(
        args.admin_address,
        args.local_admin_address,
        metrics.clone(),
        Some(table.clone()),
        Some(app.clone()),
        drain.clone(),
    )
    .await
    .context("starting the admin port")?;
    tracing::info!(admin = %args.admin_address, local = %args.local_admin_address, app = %app_address, "admin port listening");

    // Take no lease before the app answers: another worker may serve the shards meanwhile.
    let app_ready = match lambda_failed {
        Some(failed) => tokio::select! {
            ready = wait_for_app(&app, &app_address) => ready,
            Ok(e) = failed => {
                admin.stop().await;
                return Err(e);
            }
        },
        None => wait_for_app(&app, &app_address).await,
    };
    if !app_ready {
        admin.stop().await;
        return Ok(());
    }

    let mut pipeline_config = pipeline_config(&args, stream.clone(), worker_id.clone(), &config);
    pipeline_config.reader.get_records = get_records_client(settings, &sdk, &args, &counter)?;
    pipeline_config.filters = filters;
    pipeline_config.clock = clock;
    pipeline_config.destination = destination(settings, &sdk, &args).await?;
    pipeline_config.fan_out_consumer = fan_out_consumer(&kinesis, &stream, &args).await?;

    tracing::info!(worker = %worker_id, table = %lease_args.application, stream = %stream, app = %app_address, "worker starting");
    let (events_tx, events) = mpsc::channel(1024);
    let (coordinator, handle) =
        Coordinator::new(table, Some((kinesis.clone(), stream)), config, events_tx);
    let pipeline = Pipeline::new(pipeline_config, app, kinesis, handle.clone(), metrics);
    let draining = pipeline.draining_flag();
    let coordinating = tokio::spawn(coordinator.run());
    let delivering = tokio::spawn(pipeline.run(events));

    let by_signal = tokio::select! {
        _ = kinesis_processor::shutdown_signal() => true,
        _ = drain.requested() => false,
    };
    tracing::info!(by_signal, "draining: handing over every lease");
    draining.store(true, Ordering::SeqCst);
    handle.shutdown().await;
    coordinating.await?;
    delivering.await?;
    let _ = drained.send(true);
    tracing::info!("drained: every lease handed over or released; exiting");
    // Answers in flight (the app's preStop waiting on /drained) finish before the exit.
    admin.stop().await;
    Ok(())
}

/// `--max-attempts` and `--max-record-age-seconds` need a destination, and it must be one
/// the worker can send to.
fn check_failure_policy(args: &RunArgs) -> anyhow::Result<()> {
    if args.on_failure_destination.is_none()
        && (args.max_attempts > 0 || args.max_record_age_seconds > 0)
    {
        anyhow::bail!(
            "--max-attempts and --max-record-age-seconds pass records over, which needs somewhere to keep them: set --on-failure-destination (an SQS queue or Kinesis stream ARN), or leave both unset to retry forever"
        );
    }
    if let Some(arn) = &args.on_failure_destination {
        kinesis_worker::pipeline::destination::Target::parse(arn)?;
    }
    Ok(())
}

/// Waits until the app answers its health check; `false` when shut down first.
async fn wait_for_app(app: &App, app_address: &Address) -> bool {
    let mut waited = 0u64;
    loop {
        if app.is_ready().await {
            return true;
        }
        if waited.is_multiple_of(10) {
            tracing::info!(app = %app_address, "waiting for the app to answer its gRPC health check (grpc.health.v1)");
        }
        waited += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = kinesis_processor::shutdown_signal() => return false,
        }
    }
}

/// The pipeline's settings from the flags (what needs no connection).
fn pipeline_config(
    args: &RunArgs,
    stream: StreamRef,
    worker_id: String,
    config: &CoordinatorConfig,
) -> PipelineConfig {
    let lease_args = &args.leases;
    let mut pipeline_config =
        PipelineConfig::new(stream, lease_args.application.clone(), worker_id);
    pipeline_config.reader.max_records = args.max_records;
    pipeline_config.reader.page_bytes = args.max_page_kib as usize * 1024;
    pipeline_config.reader.initial_timestamp_ms = lease_args.initial_timestamp;
    pipeline_config.idle_time = Duration::from_millis(args.idle_time_ms);
    pipeline_config.idle_time_max = Duration::from_millis(args.idle_time_max_ms);
    pipeline_config.reader.fan_out_end_check = Duration::from_millis(args.fan_out_end_check_ms);
    pipeline_config.read_pace.bytes_per_second =
        (args.read_kb_per_second > 0).then(|| args.read_kb_per_second * 1_000);
    pipeline_config.checkpoint = CheckpointPolicy {
        interval: Duration::from_millis(args.checkpoint_interval_ms),
        max_records: args.checkpoint_max_records,
        max_bytes: args.checkpoint_max_bytes,
    };
    pipeline_config.app_call_timeout = Duration::from_millis(args.app_call_timeout_ms);
    pipeline_config.max_attempts = (args.max_attempts > 0).then_some(args.max_attempts);
    pipeline_config.bisect_on_error = args.bisect_on_error;
    pipeline_config.max_record_age =
        (args.max_record_age_seconds > 0).then(|| Duration::from_secs(args.max_record_age_seconds));
    pipeline_config.report_batch_item_failures = args.report_batch_item_failures;
    pipeline_config.batch_size = args.batch_size.map(|n| n as usize);
    pipeline_config.batching_window = Duration::from_millis(args.batching_window_ms);
    pipeline_config.parallelization = args.parallelization_factor as usize;
    pipeline_config.max_buffered_kib = args.max_buffered_mib.saturating_mul(1024);
    pipeline_config.shutdown_call_timeout = config.handoff_timeout / 2;
    pipeline_config.lag = config.lag.clone();
    pipeline_config
}

/// Our own GetRecords client (`--get-records-client`), or `None` to read through the SDK.
fn get_records_client(
    settings: &AwsSettings,
    sdk: &aws_config::SdkConfig,
    args: &RunArgs,
    counter: &kinesis_worker::metrics::AwsCallCounter,
) -> anyhow::Result<Option<std::sync::Arc<kinesis_worker::records::wire::client::WireClient>>> {
    let format = match args.get_records_client {
        GetRecordsClient::Cbor => WireFormat::Cbor,
        GetRecordsClient::Json => WireFormat::Json,
        GetRecordsClient::Sdk => return Ok(None),
    };
    match settings.get_records_client(sdk, format, Some(counter.clone())) {
        Ok(client) => Ok(Some(client)),
        // Reading works through the SDK: said, and not a reason to stop.
        Err(e @ kinesis_worker::records::wire::client::SetupError::UnsupportedEndpoint) => {
            tracing::warn!(error = %e, "reading through the SDK's GetRecords instead");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("setting up the GetRecords client (--get-records-client)")),
    }
}

/// The on-failure destination (`--on-failure-destination`), connected.
async fn destination(
    settings: &AwsSettings,
    sdk: &aws_config::SdkConfig,
    args: &RunArgs,
) -> anyhow::Result<Option<std::sync::Arc<kinesis_worker::pipeline::destination::Destination>>> {
    let Some(arn) = &args.on_failure_destination else {
        return Ok(None);
    };
    let destination = kinesis_worker::pipeline::destination::Destination::connect(
        arn,
        sdk,
        args.sqs_endpoint.as_deref(),
        settings.kinesis_endpoint.as_deref(),
    )
    .await
    .context("connecting to the on-failure destination (--on-failure-destination)")?;
    tracing::info!(destination = %arn, max_attempts = args.max_attempts, max_record_age_seconds = args.max_record_age_seconds, "on-failure destination ready");
    Ok(Some(std::sync::Arc::new(destination)))
}

/// The fan-out consumer's ARN with `--consumer-mode enhanced-fan-out`: the operator's
/// (`--consumer-arn`), once active, or one this worker registers.
async fn fan_out_consumer(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    args: &RunArgs,
) -> anyhow::Result<Option<String>> {
    if args.consumer_mode != ConsumerMode::EnhancedFanOut {
        return Ok(None);
    }
    let arn = match &args.consumer_arn {
        // Registered once by the operator: RegisterStreamConsumer allows 5 calls per
        // second per account, far fewer than a rollout of pods would make. Not described
        // either (DescribeStreamConsumer allows 20 a second per stream: a rollout of 500 pods
        // would queue behind it): a consumer still CREATING refuses SubscribeToShard with
        // ResourceInUse, which each shard retries with its back-off; one deregistered makes
        // the shard fail with Kinesis's ResourceNotFound.
        Some(arn) => arn.clone(),
        None => {
            let name = args
                .consumer_name
                .clone()
                .unwrap_or_else(|| args.leases.application.clone());
            kinesis_worker::records::fanout::register_consumer(kinesis, stream, &name)
                .await
                .with_context(|| format!("registering the fan-out consumer `{name}`"))?
        }
    };
    tracing::info!(consumer = %arn, "reading by enhanced fan-out");
    Ok(Some(arn))
}

async fn status(
    settings: &AwsSettings,
    application: &str,
    stream: &str,
    json: bool,
) -> anyhow::Result<String> {
    let sdk = settings.sdk_config().await;
    let table = LeaseTable::open(settings.dynamodb(&sdk), application, false)
        .await
        .with_context(|| format!("opening lease table `{application}`"))?;
    let stream = stream_ref(stream);
    let shards = kinesis_worker::lease::discovery::list_shards(&settings.kinesis(&sdk), &stream)
        .await
        .with_context(|| format!("listing the shards of `{stream}`"))?;
    let snapshot = table.scan().await?;
    let views = kinesis_worker::status::shard_views(&shards, &snapshot);
    if json {
        let lines = kinesis_worker::status::lines(&views);
        return Ok(format!("{}\n", serde_json::json!({ "shards": lines })));
    }
    let mut out = kinesis_worker::status::render(&views);
    let count =
        |st: kinesis_worker::status::ShardState| views.iter().filter(|v| v.state == st).count();
    use kinesis_worker::status::ShardState as S;
    let max = views.iter().filter_map(|v| v.lag_ms).max();
    out.push_str(&format!(
        "{} shards: {} processing, {} unowned, {} draining, {} finished; {} workers; max lag {}\n",
        views.len(),
        count(S::Processing),
        count(S::Unowned),
        count(S::Draining),
        count(S::Finished),
        snapshot.heartbeats.len(),
        max.map_or_else(|| "-".into(), kinesis_worker::status::human_lag),
    ));
    Ok(out)
}

fn main() -> ExitCode {
    // Before the runtime's threads exist: see `tune_for_batches`.
    let malloc = kinesis_processor::malloc::tune_for_batches();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(malloc)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(malloc: kinesis_processor::malloc::Tuning) -> ExitCode {
    let cli = Cli::parse();
    let json = matches!(&cli.command, Command::Run(a) if matches!(a.log_format, LogFormat::Json));
    let filter = tracing_subscriber::EnvFilter::try_from_env(var::LOG_LEVEL)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    tracing::debug!(?malloc, "glibc malloc thresholds for batch-sized buffers");
    let settings = AwsSettings {
        region: cli.region,
        kinesis_endpoint: cli.kinesis_endpoint,
        dynamodb_endpoint: cli.dynamodb_endpoint,
        timeouts: AwsTimeouts::default(),
    };
    match cli.command {
        Command::Preflight { interval, timeout } => {
            let timeout = Duration::from_secs(timeout);
            loop {
                let report = preflight::check(&settings, timeout).await;
                println!("{report}");
                match interval {
                    Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
                    None if report.ok() => return ExitCode::SUCCESS,
                    None => return ExitCode::FAILURE,
                }
            }
        }
        Command::Run(args) if args.print_settings => print_settings(&settings, &args),
        Command::Run(args) => match run_worker(&settings, *args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            application,
            stream,
            json,
        } => match status(&settings, &application, &stream, json).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Drain { address } => match admin::request_drain(address).await {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::WaitListening { address, timeout } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    return ExitCode::SUCCESS;
                }
                if tokio::time::Instant::now() >= deadline {
                    eprintln!("error: nothing listens on {address} after {timeout} s");
                    return ExitCode::FAILURE;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Command::Import(from) => match import(&from) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Leases(args) => match run_leases(&settings, args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
