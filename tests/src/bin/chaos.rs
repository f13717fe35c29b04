//! The chaos suite's long form (see `kinesis_operator_tests::chaos`):
//!
//! ```text
//! cargo run -p kinesis-operator-tests --bin chaos -- [--seed N] [--faults N] [--shards N]
//!     [--workers N] [--keys N] [--rate N] [--spacing-ms N] [--latest] [--fan-out] [--lanes N]
//!     [--peer]
//! ```
//!
//! Needs the environment up (`cargo xtask env up`). Prints the report; exits 1 if an
//! invariant does not hold.

use std::time::Duration;

use kinesis_operator_tests::chaos::{ChaosConfig, arg, run};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "chaos [--seed N] [--faults N] [--shards N] [--workers N] [--keys N] [--rate N] [--spacing-ms N] [--latest] [--fan-out] [--lanes N] [--peer]"
        );
        return Ok(());
    }
    let d = ChaosConfig::default();
    let config = ChaosConfig {
        seed: arg(&args, "--seed")?.unwrap_or(d.seed),
        faults: arg(&args, "--faults")?.unwrap_or(60),
        shards: arg(&args, "--shards")?.unwrap_or(d.shards),
        workers: arg(&args, "--workers")?.unwrap_or(d.workers),
        keys: arg(&args, "--keys")?.unwrap_or(d.keys),
        rate: arg(&args, "--rate")?.unwrap_or(d.rate),
        spacing: arg::<u64>(&args, "--spacing-ms")?.map_or(d.spacing, Duration::from_millis),
        latest: args.iter().any(|a| a == "--latest"),
        fan_out: args.iter().any(|a| a == "--fan-out"),
        lanes: arg(&args, "--lanes")?.unwrap_or(d.lanes),
        peer: args.iter().any(|a| a == "--peer"),
        started: None,
        worker_args: Vec::new(),
    };
    eprintln!("{config:?}");
    let report = run(&config).await?;
    println!("{report}");
    if !report.holds() {
        std::process::exit(1);
    }
    Ok(())
}
