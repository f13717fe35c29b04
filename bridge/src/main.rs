//! `kinesis-bridge`: runs a KCL MultiLang app, unchanged, as the record processor of a
//! KinesisApplication (`spec.processor.protocol: kcl-multilang`).
//!
//! - `kinesis-bridge install DIR`: copies this (static) binary into DIR. The operator runs it
//!   in an init container from the worker's image, with DIR on a volume the app container
//!   mounts, so the user's image stays unchanged.
//! - `kinesis-bridge multilang -- COMMAND...`: the app container's command. Serves the
//!   record-processor contract on `APP_ADDRESS` and runs COMMAND (KCL's `executableName`) once
//!   per shard.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kinesis_bridge::multilang::{Config, MultiLang};
use kinesis_processor::Address;

#[derive(Parser, Debug)]
#[command(name = "kinesis-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy this binary into DIR (the operator's init container does this).
    Install {
        /// Where to put `kinesis-bridge`.
        dir: PathBuf,
    },
    /// Serve the record-processor contract and run COMMAND once per shard, speaking KCL's
    /// MultiLang protocol on its stdin and stdout.
    Multilang {
        /// Where the worker reaches the app.
        #[arg(long, env = "APP_ADDRESS", default_value = kinesis_processor::DEFAULT_SOCKET)]
        address: Address,
        /// Seconds a child may take for one action (initialize, a batch, a shutdown) before
        /// it counts as hung: it is killed and only its shard's call fails. Keep it below the
        /// worker's --app-call-timeout-ms (300 s by default).
        #[arg(long, env = "KCL_TIMEOUT_SECONDS", default_value_t = 240)]
        timeout_seconds: u64,
        /// MiB of records kept per shard that the app acknowledged but has not checkpointed:
        /// a process that replaces a failed one gets them again (an app may buffer until it
        /// checkpoints). Beyond it, new batches wait until the app checkpoints.
        #[arg(long, env = "KCL_MAX_RETAINED_MIB", default_value_t = 256)]
        max_retained_mib: usize,
        /// The app's command: KCL's `executableName`, e.g. `python3 sample_kclpy_app.py`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Install { dir } => install(&dir),
        Command::Multilang {
            address,
            timeout_seconds,
            max_retained_mib,
            command,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(multilang(
                address,
                timeout_seconds,
                max_retained_mib,
                command,
            ))
        }
    }
}

/// Copies the running binary to `dir/kinesis-bridge`, executable by everyone.
fn install(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().context("finding this binary")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let to = dir.join("kinesis-bridge");
    std::fs::copy(&me, &to).with_context(|| format!("copying to {}", to.display()))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    println!("installed {}", to.display());
    Ok(())
}

async fn multilang(
    address: Address,
    timeout_seconds: u64,
    max_retained_mib: usize,
    command: Vec<String>,
) -> Result<()> {
    let bridge = MultiLang::new(Config {
        command: command.clone(),
        timeout: Duration::from_secs(timeout_seconds.max(1)),
        max_retained_bytes: max_retained_mib.saturating_mul(1 << 20),
    });
    tracing::info!(%address, command = %command.join(" "), "serving KCL MultiLang app");
    // SIGTERM reaches the app container after its preStop hook waited for the worker to hand
    // every shard over: the children have had their last call; end any that remain.
    kinesis_processor::serve(
        &address,
        bridge.clone(),
        kinesis_processor::shutdown_signal(),
    )
    .await
    .with_context(|| format!("serving the record processor on {address}"))?;
    bridge.finish_all().await;
    Ok(())
}
