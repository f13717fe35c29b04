//! The soak (issue 26): the chaos run with its strict checker for an hour — ~500 records/s
//! over 16 shards, 4 workers, a fault every minute — beside an operator process that
//! reconciles a KinesisApplication on the same application (its status from the fleet's
//! lease table, its reshards followed; no pods of its own). Every minute it prints the resident memory of
//! each of our processes (workers, apps, the operator) and of kinesis-mock.
//!
//! ```text
//! cargo run -p kinesis-operator-tests --bin soak -- [--minutes 60] [--rate 500] [--keys 256]
//!     [--seed N]
//! ```
//!
//! Needs the environment up (`cargo xtask env up`). The binaries are copied to a private folder first, so building during the run
//! changes nothing it restarts. Prints the chaos report at the end; exits 1 if an invariant
//! does not hold.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::TestEnv;
use kinesis_operator_tests::chaos::{ChaosConfig, arg, run};
use kinesis_operator_tests::cluster::{
    application, delete_all, delete_namespace, install_crd, namespace, operator,
};
use kinesis_operator_tests::process::use_private_copies;
use kube::Api;
use kube::api::PostParams;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const BINS: [&str; 3] = ["kinesis-worker", "record-app", "kinesis-operator"];

/// Resident memory (MiB) of every live process whose program is in `dir`, by program name:
/// (pid, MiB), by pid.
fn rss_of_copies(dir: &Path) -> BTreeMap<String, Vec<(u32, f64)>> {
    let mut out: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if exe.parent() != Some(dir) {
            continue;
        }
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(mib) = rss_mib(pid) {
            out.entry(name).or_default().push((pid, mib));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|(pid, _)| *pid);
    }
    out
}

/// `VmRSS` of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// kinesis-mock's pid, from the environment's pid file.
fn kinesis_mock_pid() -> Option<u32> {
    let env_dir = kinesis_operator_tests::env_file().parent()?.to_path_buf();
    std::fs::read_to_string(env_dir.join("pids/kinesis-mock.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One minute's line: every copy's RSS, grouped by program.
fn sample_line(minute: u64, dir: &Path) -> String {
    let mut parts = Vec::new();
    for (name, procs) in rss_of_copies(dir) {
        let list: Vec<String> = procs
            .iter()
            .map(|(pid, mib)| format!("{pid}:{mib:.1}"))
            .collect();
        parts.push(format!("{name} [{}]", list.join(" ")));
    }
    if let Some(mib) = kinesis_mock_pid().and_then(rss_mib) {
        parts.push(format!("kinesis-mock {mib:.0}"));
    }
    format!(
        "soak minute {minute}: RSS MiB (pid:MiB) {}",
        parts.join("; ")
    )
}

/// The KinesisApplication the operator reconciles: the soak's own application (its lease
/// table, kept on delete) with no worker pods of its own (`replicas: 0`), so the operator
/// scans the chaos fleet's leases and heartbeats into its status and follows its reshards
/// every reconcile without adding a second consumer to the stream.
fn soak_application(
    env: &TestEnv,
    stream: &str,
    application_name: &str,
) -> Result<KinesisApplication> {
    let mut app = serde_json::to_value(application("soak", env, stream, "soak-unused")?)?;
    let spec = app.get_mut("spec").ok_or("spec")?;
    spec["applicationName"] = serde_json::json!(application_name);
    spec["replicas"] = serde_json::json!(0);
    spec["leaseTable"] = serde_json::json!({"deletionPolicy": "Retain"});
    Ok(serde_json::from_value(app)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("soak [--minutes N] [--rate N] [--keys N] [--seed N]");
        return Ok(());
    }
    let minutes: u64 = arg(&args, "--minutes")?.unwrap_or(60);
    let rate: usize = arg(&args, "--rate")?.unwrap_or(500);
    let seed: u64 = arg(&args, "--seed")?.unwrap_or(2606);
    // Keys per PutRecords round: kinesis-mock answers a put in ~0.5 s on this machine under
    // the run's load, so 500 records/s needs rounds of ~256 records.
    let keys: usize = arg(&args, "--keys")?.unwrap_or(256);
    let dir = std::env::temp_dir().join(kinesis_operator_tests::unique_name("soak-bin"));
    let dir = use_private_copies(&BINS, &dir)?;
    let env = TestEnv::require();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = ChaosConfig {
        seed,
        faults: minutes.saturating_sub(1).max(1) as usize,
        shards: 16,
        workers: 4,
        keys,
        rate,
        spacing: Duration::from_secs(60),
        started: Some(tx),
        ..ChaosConfig::default()
    };
    eprintln!(
        "soak: {minutes} min, {config:?}, binaries in {}",
        dir.display()
    );
    let mut chaos = tokio::spawn(async move { run(&config).await.map_err(|e| e.to_string()) });
    let (stream, application_name) = rx
        .recv()
        .await
        .ok_or("the chaos run ended before it started")?;

    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "soak").await?;
    let op = operator(&env, &ns, 30)?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    apps.create(
        &PostParams::default(),
        &soak_application(&env, &stream, &application_name)?,
    )
    .await?;

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let report = loop {
        tokio::select! {
            _ = tick.tick() => {
                println!("{}", sample_line(started.elapsed().as_secs() / 60, &dir));
            }
            done = &mut chaos => break done??,
        }
    };
    println!("{}", sample_line(started.elapsed().as_secs() / 60, &dir));
    let status = apps.get("soak").await.ok().and_then(|a| a.status).map(|s| {
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| format!("{} ({})", c.status, c.reason));
        format!(
            "shards {:?}, workers {:?}, Ready {ready:?}",
            s.shards, s.workers
        )
    });
    println!("soak: the operator's application at the end: {status:?}");
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    println!("{report}");
    if !report.holds() {
        std::process::exit(1);
    }
    Ok(())
}
