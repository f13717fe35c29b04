//! Lease coordination benchmark against the local environment's Kinesis and DynamoDB:
//! 64 shards on 4 in-process workers (defaults), counted at the client.
//!
//! - steady-state DynamoDB requests per second (heartbeats, scans, items read), all workers;
//! - time for a 5th worker to reach its fair share (floor(64/5) leases);
//! - time for a killed worker's shards (task aborted: no release) to be owned again;
//! - time for a gracefully stopped worker's shards to be owned again.
//!
//! Run: `cargo xtask env up && cargo run --release -p kinesis-operator-tests --bin lease_bench`
//! Options: `--shards N --workers N --steady-secs N --failover-ms N --scan-ms N
//! --coordination peer|assigner`.
//!
//! Request units are computed at the client from the sizes of the items each request
//! returned or wrote, as DynamoDB bills them (see `TableCounters`), and priced at on-demand
//! rates ($0.125 per million read units, $0.625 per million write units, us-east-1).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kinesis_worker::lease::coordinator::{
    Coordination, Coordinator, CoordinatorConfig, CoordinatorHandle, LeaseEvent,
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
    coordination: Coordination,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        shards: 64,
        workers: 4,
        steady_secs: 30,
        failover_ms: 10_000,
        scan_ms: 1_000,
        coordination: Coordination::Assigner,
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
            "--coordination" => {
                o.coordination = match value.as_str() {
                    "peer" => Coordination::Peer,
                    "assigner" => Coordination::Assigner,
                    other => return Err(format!("--coordination {other}: peer or assigner").into()),
                }
            }
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
    config.coordination = o.coordination;
    if o.coordination == Coordination::Assigner {
        table.ensure_owner_index().await?;
    }
    let (tx, mut rx) = mpsc::channel(4096);
    let (coordinator, handle) = Coordinator::new(
        table.clone(),
        Some((env.kinesis().await, StreamRef::Name(stream.to_string()))),
        config,
        tx,
    );
    let task = tokio::spawn(coordinator.run());
    // No record pipeline: every lease is "processed" while held (a lease whose
    // `ShardLease` is dropped counts as a stopped processor and is released), and shutdown
    // requests are answered at once.
    let events = tokio::spawn(async move {
        let mut processing = HashMap::new();
        while let Some(e) = rx.recv().await {
            match e {
                LeaseEvent::Acquired(lease) => {
                    processing.insert(lease.shard_id.clone(), lease);
                }
                LeaseEvent::Lost { shard_id } => {
                    processing.remove(&shard_id);
                }
                LeaseEvent::ShutdownRequested { shard_id, done, .. } => {
                    let _ = done.send(());
                    processing.remove(&shard_id);
                }
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
    // Owned = accepted: a lease given but not accepted yet (assigner mode) is not processed.
    for l in &snap.leases {
        if let Some(o) = l.owner.as_ref().filter(|_| !l.assigned) {
            *counts.entry(o.clone()).or_insert(0) += 1;
        }
    }
    let owned: usize = counts.values().sum();
    (owned == snap.leases.len() && !snap.leases.is_empty()).then_some(counts)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    // The coordinators' own logs, with LOG_LEVEL=info (or a filter such as
    // kinesis_worker::lease=debug).
    if let Ok(filter) = std::env::var("LOG_LEVEL") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let env = TestEnv::load()?;
    let kinesis = env.kinesis().await;
    let stream = unique_name("bench");
    let app = unique_name("bench-app");
    env.create_stream(&stream, o.shards).await?;
    let observer = LeaseTable::open(env.dynamodb().await, &app, true).await?;
    let shards = o.shards as usize;
    println!(
        "lease bench: {} shards, {} workers, failover {} ms, scan {} ms, {:?} coordination",
        o.shards, o.workers, o.failover_ms, o.scan_ms, o.coordination
    );

    let mut workers = Vec::new();
    // All at once, as a Deployment's pods start.
    let ids: Vec<String> = (0..o.workers).map(|i| format!("w{i}")).collect();
    for w in
        futures::future::join_all(ids.iter().map(|id| start(&env, &app, &stream, id, &o))).await
    {
        workers.push(w?);
    }
    let fair = shards.div_ceil(o.workers);
    // The bench's own strongly consistent scans load moto too: poll a big table less often
    // (timings are then good to one poll interval).
    let poll = Duration::from_millis((shards as u64 / 2).clamp(50, 500));
    let deadline = Duration::from_secs(120).max(Duration::from_millis(shards as u64 * 300));
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
    wait_for("initial balance", deadline, poll, || async {
        let c = owners(&observer).await?;
        (c.len() == o.workers && c.values().all(|n| *n + 1 >= fair && *n <= fair)).then_some(())
    })
    .await?;
    progress.abort();
    println!("initial balance: {:.2} s", t0.elapsed().as_secs_f64());

    // Steady state: counters over a window with nothing changing.
    let snap = |ws: &Vec<Worker>| -> [u64; 9] {
        let c = |w: &Worker| {
            let k = w.table.counters();
            [
                k.writes.load(Ordering::Relaxed),
                k.heartbeat_writes.load(Ordering::Relaxed),
                k.reads.load(Ordering::Relaxed),
                k.items_read.load(Ordering::Relaxed),
                k.read_half_units.load(Ordering::Relaxed),
                k.write_units.load(Ordering::Relaxed),
                k.index_writes.load(Ordering::Relaxed),
                k.queries.load(Ordering::Relaxed),
                k.gets.load(Ordering::Relaxed),
            ]
        };
        ws.iter().map(c).fold([0; 9], |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        })
    };
    let before = snap(&workers);
    let start_window = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.steady_secs)).await;
    let after = snap(&workers);
    let secs = start_window.elapsed().as_secs_f64();
    let rate = |i: usize| (after[i] - before[i]) as f64 / secs;
    println!(
        "steady state over {secs:.0} s, all workers: {:.2} writes/s ({:.2} heartbeats/s), {:.2} scan pages/s, {:.2} queries/s, {:.2} gets/s, {:.1} items scanned/s",
        rate(0),
        rate(1),
        rate(2),
        rate(7),
        rate(8),
        rate(3)
    );
    let (rru, wru) = (rate(4) / 2.0, rate(5) + rate(6));
    let month = 30.0 * 24.0 * 3600.0;
    println!(
        "request units: {rru:.1} RRU/s, {wru:.1} WRU/s ({:.1} table + {:.1} owner index); ${:.2}/month on demand",
        rate(5),
        rate(6),
        (rru * 0.125 + wru * 0.625) * month / 1e6
    );

    // A joining worker.
    let joiner = format!("w{}", o.workers);
    let t = Instant::now();
    workers.push(start(&env, &app, &stream, &joiner, &o).await?);
    let floor = shards / (o.workers + 1);
    wait_for("joiner at fair share", deadline, poll, || async {
        let c = owners(&observer).await?;
        (c.get(&joiner).copied().unwrap_or(0) >= floor).then_some(())
    })
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
        deadline,
        poll,
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
        deadline,
        poll,
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
