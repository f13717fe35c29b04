//! Lease coordination benchmark against the local environment's Kinesis and DynamoDB:
//! 64 shards on 4 in-process workers (defaults), counted at the client.
//!
//! - steady-state DynamoDB requests per second (heartbeats, scans, items read), all workers;
//! - time for a 5th worker to reach its fair share (floor(64/5) leases);
//! - time for a killed worker's shards (task aborted: no release) to be owned again;
//! - time for a gracefully stopped worker's shards to be owned again.
//!
//! Run: `cargo xtask env up && cargo run --release -p kinesis-operator-tests --bin lease_bench`
//! Options: `--shards N --workers N --steady-secs N --failover-ms N --scan-ms N`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kinesis_worker::lease::coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorHandle, LeaseEvent,
};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::lease::table::LeaseTable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

struct Opts {
    shards: i32,
    workers: usize,
    steady_secs: u64,
    failover_ms: u64,
    scan_ms: u64,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        shards: 64,
        workers: 4,
        steady_secs: 30,
        failover_ms: 10_000,
        scan_ms: 1_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--shards" => o.shards = value.parse()?,
            "--workers" => o.workers = value.parse()?,
            "--steady-secs" => o.steady_secs = value.parse()?,
            "--failover-ms" => o.failover_ms = value.parse()?,
            "--scan-ms" => o.scan_ms = value.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(o)
}

struct Worker {
    id: String,
    table: LeaseTable,
    handle: CoordinatorHandle,
    task: JoinHandle<()>,
    events: JoinHandle<()>,
}

async fn start(env: &TestEnv, app: &str, stream: &str, id: &str, o: &Opts) -> Result<Worker> {
    let table = LeaseTable::open(env.dynamodb().await, app, true).await?;
    let mut config = CoordinatorConfig::new(id);
    config.failover_time = Duration::from_millis(o.failover_ms);
    config.heartbeat_interval = config.failover_time / 3;
    config.scan_interval = Duration::from_millis(o.scan_ms);
    let (tx, mut rx) = mpsc::channel(4096);
    let (coordinator, handle) = Coordinator::new(
        table.clone(),
        Some((env.kinesis().await, StreamRef::Name(stream.to_string()))),
        config,
        tx,
    );
    let task = tokio::spawn(coordinator.run());
    // No record pipeline: answer shutdown requests at once.
    let events = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let LeaseEvent::ShutdownRequested { done, .. } = e {
                let _ = done.send(());
            }
        }
    });
    Ok(Worker {
        id: id.to_string(),
        table,
        handle,
        task,
        events,
    })
}

async fn owners(table: &LeaseTable) -> Option<HashMap<String, usize>> {
    let snap = table.scan().await.ok()?;
    let mut counts = HashMap::new();
    for l in &snap.leases {
        if let Some(o) = &l.owner {
            *counts.entry(o.clone()).or_insert(0) += 1;
        }
    }
    let owned: usize = counts.values().sum();
    (owned == snap.leases.len() && !snap.leases.is_empty()).then_some(counts)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let env = TestEnv::load()?;
    let kinesis = env.kinesis().await;
    let stream = unique_name("bench");
    let app = unique_name("bench-app");
    env.create_stream(&stream, o.shards).await?;
    let observer = LeaseTable::open(env.dynamodb().await, &app, true).await?;
    let shards = o.shards as usize;
    println!(
        "lease bench: {} shards, {} workers, failover {} ms, scan {} ms",
        o.shards, o.workers, o.failover_ms, o.scan_ms
    );

    let mut workers = Vec::new();
    for i in 0..o.workers {
        workers.push(start(&env, &app, &stream, &format!("w{i}"), &o).await?);
    }
    let fair = shards.div_ceil(o.workers);
    let t0 = Instant::now();
    // Progress while the fleet balances (a large table takes a while on moto).
    let progress = {
        let observer = observer.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(snap) = observer.scan().await {
                    let owned = snap.leases.iter().filter(|l| l.owner.is_some()).count();
                    eprintln!(
                        "  {:>5.1} s: {} leases, {} owned, {} heartbeats",
                        t0.elapsed().as_secs_f64(),
                        snap.leases.len(),
                        owned,
                        snap.heartbeats.len()
                    );
                }
            }
        })
    };
    wait_for(
        "initial balance",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async {
            let c = owners(&observer).await?;
            (c.len() == o.workers && c.values().all(|n| *n + 1 >= fair && *n <= fair)).then_some(())
        },
    )
    .await?;
    progress.abort();
    println!("initial balance: {:.2} s", t0.elapsed().as_secs_f64());

    // Steady state: counters over a window with nothing changing.
    let snap = |ws: &Vec<Worker>| -> [u64; 4] {
        let c = |w: &Worker| {
            let k = w.table.counters();
            [
                k.writes.load(Ordering::Relaxed),
                k.heartbeat_writes.load(Ordering::Relaxed),
                k.reads.load(Ordering::Relaxed),
                k.items_read.load(Ordering::Relaxed),
            ]
        };
        ws.iter().map(c).fold([0; 4], |a, b| {
            [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
        })
    };
    let before = snap(&workers);
    let start_window = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.steady_secs)).await;
    let after = snap(&workers);
    let secs = start_window.elapsed().as_secs_f64();
    let rate = |i: usize| (after[i] - before[i]) as f64 / secs;
    println!(
        "steady state over {secs:.0} s, all workers: {:.2} writes/s ({:.2} heartbeats/s), {:.2} read requests/s, {:.1} items read/s",
        rate(0),
        rate(1),
        rate(2),
        rate(3)
    );

    // A joining worker.
    let joiner = format!("w{}", o.workers);
    let t = Instant::now();
    workers.push(start(&env, &app, &stream, &joiner, &o).await?);
    let floor = shards / (o.workers + 1);
    wait_for(
        "joiner at fair share",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            let c = owners(&observer).await?;
            (c.get(&joiner).copied().unwrap_or(0) >= floor).then_some(())
        },
    )
    .await?;
    println!(
        "joining worker reached its fair share ({floor} leases): {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Killed: abort the task, nothing released.
    let victim = workers.remove(0);
    victim.task.abort();
    victim.events.abort();
    let t = Instant::now();
    wait_for(
        "killed worker's shards owned again",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            let c = owners(&observer).await?;
            (!c.contains_key(&victim.id)).then_some(())
        },
    )
    .await?;
    println!(
        "killed worker's shards resumed: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Graceful stop.
    let leaving = workers.remove(0);
    let t = Instant::now();
    leaving.handle.shutdown().await;
    wait_for(
        "stopped worker's shards owned again",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || async {
            let c = owners(&observer).await?;
            (!c.contains_key(&leaving.id)).then_some(())
        },
    )
    .await?;
    println!(
        "gracefully stopped worker's shards resumed: {:.2} s (including its own drain)",
        t.elapsed().as_secs_f64()
    );

    for w in workers {
        w.handle.shutdown().await;
        let _ = w.task.await;
    }
    kinesis.delete_stream().stream_name(&stream).send().await?;
    Ok(())
}
