//! The `kinesis-worker` binary.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kinesis_worker::aws::AwsSettings;
use kinesis_worker::lease::checkpoint::Checkpoint;
use kinesis_worker::lease::coordinator::{Coordinator, CoordinatorConfig, LeaseEvent};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::lease::table::LeaseTable;
use kinesis_worker::preflight;
use tokio::sync::mpsc;

/// kinesis-worker: the KCL part of kinesis-operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// AWS region (default: the SDK's provider chain).
    #[arg(long, env = "AWS_REGION", global = true)]
    region: Option<String>,
    /// Kinesis endpoint override, e.g. http://10.250.0.1:4567.
    #[arg(long, env = "KINESIS_ENDPOINT", global = true)]
    kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override.
    #[arg(long, env = "DYNAMODB_ENDPOINT", global = true)]
    dynamodb_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
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
    /// Hold and balance the stream's shard leases without reading records: a dry run of a
    /// fleet's lease coordination, printing `acquired|lost|shutdown-requested SHARD` lines.
    Leases(LeaseArgs),
}

/// Where a new lease starts.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum InitialPosition {
    TrimHorizon,
    Latest,
}

#[derive(clap::Args, Debug)]
struct LeaseArgs {
    /// Application name: the lease table's name.
    #[arg(long, env = "KINESIS_APPLICATION")]
    application: String,
    /// Stream name, or ARN (arn:aws:kinesis:…) for cross-account access.
    #[arg(long, env = "KINESIS_STREAM")]
    stream: String,
    /// This worker's id, unique in the fleet (default: POD_NAME, else HOSTNAME-PID).
    #[arg(long, env = "WORKER_ID")]
    worker_id: Option<String>,
    /// A worker silent for this long is dead (milliseconds).
    #[arg(long, env = "FAILOVER_TIME_MS", default_value_t = 10_000)]
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
    #[arg(long, env = "INITIAL_POSITION", value_enum, default_value_t = InitialPosition::TrimHorizon)]
    initial_position: InitialPosition,
    /// Create the lease table if it does not exist (needs dynamodb:CreateTable).
    #[arg(long, env = "CREATE_LEASE_TABLE", default_value_t = true, action = clap::ArgAction::Set)]
    create_table: bool,
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

async fn run_leases(settings: &AwsSettings, args: LeaseArgs) -> anyhow::Result<()> {
    let sdk = settings.sdk_config().await;
    let table = LeaseTable::open(
        settings.dynamodb(&sdk),
        &args.application,
        args.create_table,
    )
    .await?;
    let stream = if args.stream.starts_with("arn:") {
        StreamRef::Arn(args.stream.clone())
    } else {
        StreamRef::Name(args.stream.clone())
    };
    let mut config = CoordinatorConfig::new(args.worker_id.unwrap_or_else(default_worker_id));
    config.failover_time = Duration::from_millis(args.failover_time_ms);
    config.heartbeat_interval = config.failover_time / 3;
    config.scan_interval = Duration::from_millis(args.scan_interval_ms);
    config.handoff_timeout = Duration::from_millis(args.handoff_timeout_ms);
    config.shard_sync_interval = Duration::from_millis(args.shard_sync_interval_ms);
    config.initial_position = match args.initial_position {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
    };
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
        // shutdowns are answered immediately.
        while let Some(event) = events.recv().await {
            match event {
                LeaseEvent::Acquired(lease) => {
                    println!("acquired {} {}", lease.shard_id, lease.checkpoint)
                }
                LeaseEvent::Lost { shard_id } => println!("lost {shard_id}"),
                LeaseEvent::ShutdownRequested { shard_id, done } => {
                    println!("shutdown-requested {shard_id}");
                    let _ = done.send(());
                }
            }
        }
    });
    shutdown_signal().await;
    handle.shutdown().await;
    running.await?;
    printer.abort();
    println!("stopped");
    Ok(())
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = AwsSettings {
        region: cli.region,
        kinesis_endpoint: cli.kinesis_endpoint,
        dynamodb_endpoint: cli.dynamodb_endpoint,
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
        Command::Leases(args) => match run_leases(&settings, args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
