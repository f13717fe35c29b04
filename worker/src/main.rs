//! The `kinesis-worker` binary.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kinesis_worker::aws::AwsSettings;
use kinesis_worker::preflight;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
}
