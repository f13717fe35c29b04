//! The chaos suite: the real worker (`kinesis-worker run` processes, each with its own
//! `record-app`) against the local emulators, behind fault-injecting proxies, under a seeded
//! schedule of faults, while a producer writes per-key counters. Then a strict invariant
//! checker ([`check`], a pure function of a run's [`History`]) accounts for every record.
//!
//! What it judges, as plain data: every record the apps received, each call they
//! acknowledged (answered successfully), how each of their tenures of a shard ended (the
//! lifecycle call they got: `record-app`'s output file), the producer's log (the shard and
//! sequence number of every record), every shard's final checkpoint in the lease table, and
//! the faults injected. A lease tenure is (shard, owner, counter): the fencing token every
//! delivery carries. Each rule is a count in [`Report`], and [`Report::holds`] requires every
//! one to be 0:
//!
//! 1. **lost**: a record never received, or received, never acknowledged by any app and
//!    covered by its shard's final checkpoint (checkpointed past without being processed);
//! 2. **order**: within a tenure, per key, in receive order, every delivery (redeliveries
//!    included) is the previous index + 1, or a replay (index <= previous) at a higher
//!    attempt (a retry restarts from the failed part); a gap or a replay without a retry is a
//!    violation (a key's first delivery in a tenure may be any index). Across tenures, the
//!    first deliveries of each key's records are in index order;
//! 3. **two owners**: on a shard, a delivery under a lower lease counter after (in receive
//!    time) the first delivery under a higher one (a former owner still delivering, e.g. a
//!    worker resumed after SIGSTOP with a batch in flight);
//! 4. **graceful duplicates**: a record delivered again after the tenure of its earlier
//!    delivery ended by `ShutdownRequested` (a hand-over, a drain) or `ShardEnded`, as the app
//!    recorded it, whatever fault happened around it. Every duplicate is blamed on its cause,
//!    not on a time window: `lease-lost`, `no-word (killed)` (the tenure ended with no
//!    lifecycle call: its worker or app was killed), `retry (same tenure)`, each with the last
//!    non-graceful fault started before the redelivery;
//! 5. **stalls**: every shard's final checkpoint reaches its last record (or `SHARD_END`);
//!
//! and no checkpoint went backwards between two samples of the lease table (every 200 ms,
//! past the proxies).
//!
//! Used by `tests/tests/chaos.rs` (the short form, in `cargo xtask test`) and by the `chaos`
//! binary (the long form: `cargo run -p kinesis-operator-tests --bin chaos -- --help`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_worker::lease::checkpoint::{Checkpoint, SequenceNumber};
use kinesis_worker::lease::table::LeaseTable;

use crate::faults::{FaultProxy, Mode};
use crate::pipeline::{Ack, App, AppEvent, Pipeline, Received, Worker, acks, app_events, received};
use crate::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The value after `name` in a command line (`--seed 7`), parsed; `None` when absent.
///
/// # Errors
/// `name` without a value, or a value that does not parse.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: not a number")),
    }
}

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seeds the fault schedule (the same seed, the same schedule).
    pub seed: u64,
    /// Faults to inject.
    pub faults: usize,
    /// Shards at the start.
    pub shards: i32,
    /// Worker processes (each with its own app).
    pub workers: usize,
    /// Partition keys the producer writes (per-key counters).
    pub keys: usize,
    /// Records per second the producer aims for.
    pub rate: usize,
    /// Start new leases at `LATEST` (the producer starts once every lease is pinned).
    pub latest: bool,
    /// Read by enhanced fan-out instead of polling.
    pub fan_out: bool,
    /// Lanes per shard (`--parallelization-factor`); 1: one call per shard at a time.
    pub lanes: usize,
    /// Peer coordination (every worker scans the table) instead of the default assigner.
    pub peer: bool,
    /// Time between two faults (each fault's effects should be over by the next).
    pub spacing: Duration,
    /// Told (stream, application) once every lease is owned (the soak starts an operator
    /// on them).
    pub started: Option<tokio::sync::mpsc::UnboundedSender<(String, String)>>,
    /// More worker arguments (a timing given here overrides the test timing's).
    pub worker_args: Vec<String>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            faults: 20,
            shards: 16,
            workers: 4,
            keys: 64,
            rate: 200,
            latest: false,
            fan_out: false,
            lanes: 1,
            peer: false,
            spacing: Duration::from_secs(5),
            started: None,
            worker_args: Vec::new(),
        }
    }
}

/// A fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// `kill -9` of a worker; restarted (same id, as a container restart) after 1 s.
    Kill,
    /// SIGTERM: the worker drains and exits; restarted (same id).
    Term,
    /// SIGSTOP past the failover time, then SIGCONT.
    Pause,
    /// `kill -9` of a worker's app (a crash mid-batch); restarted after 1 s.
    AppCrash,
    /// A shard split in two.
    Split,
    /// Two adjacent shards merged.
    Merge,
    /// Kinesis throttles half the calls (a coin each) for 3 s.
    KinesisThrottle,
    /// Kinesis answers half the calls (a coin each) with 500 for 3 s.
    KinesisErrors,
    /// DynamoDB throttles half the calls (a coin each) for 3 s.
    DynamoThrottle,
    /// DynamoDB answers half the calls (a coin each) with 500 for 3 s.
    DynamoErrors,
}

impl Fault {
    const ALL: [Fault; 10] = [
        Fault::Kill,
        Fault::Term,
        Fault::Pause,
        Fault::AppCrash,
        Fault::Split,
        Fault::Merge,
        Fault::KinesisThrottle,
        Fault::KinesisErrors,
        Fault::DynamoThrottle,
        Fault::DynamoErrors,
    ];

    /// A graceful fault must cause no duplicate: a drain, a reshard.
    pub fn graceful(self) -> bool {
        matches!(self, Fault::Term | Fault::Split | Fault::Merge)
    }
}

/// A small deterministic generator (xorshift64*), so a seed replays a schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The seeded schedule: `n` faults, each kind at least once when `n` allows, each with the
/// worker slot it hits.
pub fn schedule(seed: u64, n: usize, workers: usize) -> Vec<(Fault, usize)> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<(Fault, usize)> = Fault::ALL
        .iter()
        .take(n)
        .map(|f| (*f, rng.below(workers)))
        .collect();
    while out.len() < n {
        out.push((Fault::ALL[rng.below(Fault::ALL.len())], rng.below(workers)));
    }
    // Shuffle (Fisher–Yates).
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

/// What a run left behind, as plain data: what [`check`] judges.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every record the apps received ([`received`]: by receive time, then file order).
    pub deliveries: Vec<Received>,
    /// Every call the apps acknowledged ([`acks`]).
    pub acks: Vec<Ack>,
    /// How the apps' tenures of shards ended ([`app_events`]).
    pub events: Vec<AppEvent>,
    /// The producer's log: per key, per index, where the record landed (shard, sequence
    /// number).
    pub written: Vec<Vec<(String, String)>>,
    /// Each shard's final checkpoint (a lease deleted once finished: `SHARD_END`).
    pub checkpoints: BTreeMap<String, Checkpoint>,
    /// The faults injected: (start, in ns since the epoch; kind).
    pub timeline: Vec<(u128, Fault)>,
}

/// What the invariant checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Records the producer wrote.
    pub produced: usize,
    /// Distinct records received by an app.
    pub delivered: usize,
    /// Distinct records acknowledged by an app (a call delivering them answered successfully).
    pub acked: usize,
    /// Rule 1: records lost: never received, or received, never acknowledged and
    /// checkpointed past.
    pub lost: usize,
    /// Of `lost`: received, never acknowledged, covered by the shard's final checkpoint.
    pub lost_unacked: usize,
    /// Deliveries of records not in the producer's log (not judged): a put that failed yet
    /// landed writes a second record with the same data.
    pub unlogged: usize,
    /// Rule 2: keys whose records were first delivered out of order.
    pub order_violations: usize,
    /// Rule 2: deliveries out of per-key order within a tenure (a gap, or a replay without a
    /// retry).
    pub tenure_order_violations: usize,
    /// A few order violations of either kind, described.
    pub order_examples: Vec<String>,
    /// Rule 3: deliveries on a shard under a lower lease counter after the first delivery
    /// under a higher one.
    pub two_owner_deliveries: usize,
    /// A few of them, described.
    pub two_owner_examples: Vec<String>,
    /// Deliveries beyond the first of a record.
    pub duplicates: usize,
    /// Duplicates by cause (how the earlier delivery's tenure ended, and the last
    /// non-graceful fault before the redelivery).
    pub duplicates_by_cause: BTreeMap<String, usize>,
    /// Rule 4: duplicates whose earlier delivery's tenure ended gracefully
    /// (`ShutdownRequested`, `ShardEnded`).
    pub graceful_duplicates: usize,
    /// A few graceful duplicates: the record, every delivery of it (receive time in ns,
    /// shard, lease owner and counter, attempt) and the faults, to tell why.
    pub graceful_examples: Vec<String>,
    /// Rule 5: shards whose final checkpoint is short of the last record written to them.
    pub stalled_shards: usize,
    /// A few stalled shards, described.
    pub stall_examples: Vec<String>,
    /// Times a lease's checkpoint went backwards between two samples.
    pub checkpoint_regressions: usize,
    /// The first lost records (key, index).
    pub lost_records: Vec<(usize, usize)>,
    /// The first lost records: where the producer wrote each (shard, sequence number), whether
    /// it was received, the shard's final checkpoint, and the deliveries on that shard just
    /// before and after it, to tell why.
    pub lost_examples: Vec<String>,
    /// Where the failed run's logs were kept (worker and app logs, app outputs).
    pub logs_kept: Option<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Table samples taken.
    pub samples: usize,
    /// Hand-overs the workers logged as forced (`hand-over forced`: the record processor did
    /// not finish in time, so the lease moved without its final checkpoint). Reported, not
    /// judged: the app sees such a tenure end with `LeaseLost`, so its duplicates count as
    /// "lease-lost".
    pub forced_handovers: usize,
}

/// Lines of a worker's log that say a hand-over was forced.
fn forced_handovers(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("hand-over forced"))
        .count()
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "faults injected: {:?}", self.faults)?;
        writeln!(
            f,
            "produced {}, received {}, acknowledged {}; lost {} (never received {}, received but \
             never acknowledged and checkpointed past {}); not in the producer's log {}",
            self.produced,
            self.delivered,
            self.acked,
            self.lost,
            self.lost.saturating_sub(self.lost_unacked),
            self.lost_unacked,
            self.unlogged
        )?;
        writeln!(
            f,
            "per-key order violations: {} keys first delivered out of order, {} deliveries out of \
             order within a tenure",
            self.order_violations, self.tenure_order_violations
        )?;
        writeln!(
            f,
            "two owners on a shard: {} deliveries; stalled shards: {}",
            self.two_owner_deliveries, self.stalled_shards
        )?;
        writeln!(
            f,
            "checkpoint regressions: {} (in {} table samples)",
            self.checkpoint_regressions, self.samples
        )?;
        writeln!(
            f,
            "hand-overs forced (worker logs): {}",
            self.forced_handovers
        )?;
        writeln!(
            f,
            "duplicates: {} (graceful: {}), by cause: {:?}",
            self.duplicates, self.graceful_duplicates, self.duplicates_by_cause
        )?;
        let examples = [
            ("out of order", &self.order_examples),
            ("two owners", &self.two_owner_examples),
            ("graceful duplicate", &self.graceful_examples),
            ("stalled", &self.stall_examples),
            ("lost", &self.lost_examples),
        ];
        for (what, list) in examples {
            for e in list {
                writeln!(f, "  {what}: {e}")?;
            }
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(f, "logs kept in {dir}")?;
        }
        Ok(())
    }
}

impl Report {
    /// Every rule holds: nothing lost, no order violation of either kind, no two owners on a
    /// shard, no graceful duplicate, no stalled shard, no checkpoint regression.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.order_violations == 0
            && self.tenure_order_violations == 0
            && self.two_owner_deliveries == 0
            && self.graceful_duplicates == 0
            && self.stalled_shards == 0
            && self.checkpoint_regressions == 0
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Slot {
    id: String,
    app: App,
    worker: Worker,
    app_name: String,
}

/// The producer: one record per key per round, a key's next record only after its previous
/// one landed (so Kinesis holds each key's records in order), until `stop`.
async fn produce(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    keys: usize,
    rate: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Vec<(String, String)>>, String> {
    // Per key: where each of its records landed (shard, sequence number), in index order.
    let mut written: Vec<Vec<(String, String)>> = vec![Vec::new(); keys];
    let round = Duration::from_secs_f64(keys as f64 / rate.max(1) as f64);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut req = kinesis.put_records().stream_name(&stream);
        for (k, w) in written.iter().enumerate() {
            let i = w.len();
            req = req.records(
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{k}"))
                    .data(aws_sdk_kinesis::primitives::Blob::new(format!(
                        "key-{k}:{i}"
                    )))
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        match req.send().await {
            Ok(out) => {
                for (k, r) in out.records().iter().enumerate() {
                    if r.error_code().is_none()
                        && let Some(w) = written.get_mut(k)
                    {
                        w.push((
                            r.shard_id().unwrap_or_default().to_string(),
                            r.sequence_number().unwrap_or_default().to_string(),
                        ));
                    }
                }
            }
            Err(e) => eprintln!("producer: put failed, retrying: {e}"),
        }
        tokio::time::sleep(round.saturating_sub(started.elapsed())).await;
    }
    Ok(written)
}

/// The last checkpoint seen of every shard, published by the sampler.
type Seen = Arc<std::sync::Mutex<BTreeMap<String, Checkpoint>>>;

/// Merges one scan of the table (shard, checkpoint) into the last checkpoints seen; returns
/// the regressions (`shard: from -> to`). A lease seen before and absent now was deleted,
/// which the worker does only while its checkpoint is `SHARD_END` (a conditional delete:
/// `LeaseTable::delete_finished_lease`), so it stays at `SHARD_END`.
fn merge_scan(
    last: &mut BTreeMap<String, Checkpoint>,
    scan: Vec<(String, Checkpoint)>,
) -> Vec<String> {
    let present: HashSet<String> = scan.iter().map(|(shard, _)| shard.clone()).collect();
    let mut regressions = Vec::new();
    for (shard, cp) in scan {
        if let Some(prev) = last.get(&shard)
            && !prev.may_advance_to(&cp)
        {
            regressions.push(format!("{shard}: {prev} -> {cp}"));
        }
        last.insert(shard, cp);
    }
    for (shard, cp) in last.iter_mut() {
        if !present.contains(shard) {
            *cp = Checkpoint::ShardEnd;
        }
    }
    regressions
}

/// Scans the table (past the proxies) every 200 ms; counts checkpoints that went backwards
/// and publishes the last checkpoint seen of every shard in `seen`. Returns (regressions,
/// samples).
async fn sample_checkpoints(
    table: LeaseTable,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> (usize, usize) {
    let mut last: BTreeMap<String, Checkpoint> = BTreeMap::new();
    let (mut regressions, mut samples) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        if let Ok(snap) = table.scan().await {
            samples += 1;
            let scan = snap
                .leases
                .into_iter()
                .map(|l| (l.shard_id, l.checkpoint))
                .collect();
            for r in merge_scan(&mut last, scan) {
                eprintln!("checkpoint regression on {r}");
                regressions += 1;
            }
            if let Ok(mut m) = seen.lock() {
                m.clone_from(&last);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (regressions, samples)
}

/// A copy of the checkpoints the sampler last saw.
fn seen_now(seen: &Seen) -> BTreeMap<String, Checkpoint> {
    match seen.lock() {
        Ok(m) => m.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Has a run settled: every record of the producer's log acknowledged by an app, and every
/// shard's checkpoint at its end?
fn settled(h: &History) -> bool {
    let (ds, _) = logged(h);
    let acked: HashSet<Rec> = ds.iter().filter(|d| d.acked).map(|d| d.rec).collect();
    acked.len() >= h.written.iter().map(Vec::len).sum::<usize>() && stalls(h).is_empty()
}

/// Waits (`timeout` at most) until the run [`settled`], from the apps' outputs and the
/// checkpoints the sampler last saw; `h` holds the producer's log, and its deliveries, acks
/// and checkpoints are refreshed on every look. Whether it settled.
async fn settle(h: &mut History, outs: &[&Path], seen: &Seen, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        h.deliveries = received(outs);
        h.acks = acks(outs);
        h.checkpoints = seen_now(seen);
        if settled(h) {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn open_shards(p: &Pipeline) -> Result<Vec<(String, u128, u128)>> {
    let out = p
        .env
        .kinesis()
        .await
        .list_shards()
        .stream_name(&p.stream)
        .send()
        .await?;
    let mut open = Vec::new();
    for s in out.shards() {
        let closed = s
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some();
        if let (false, Some(r)) = (closed, s.hash_key_range()) {
            open.push((
                s.shard_id().to_string(),
                r.starting_hash_key().parse()?,
                r.ending_hash_key().parse()?,
            ));
        }
    }
    open.sort_by_key(|s| s.1);
    Ok(open)
}

async fn reshard(p: &Pipeline, fault: Fault, pick: usize) -> Result<()> {
    let open = open_shards(p).await?;
    let kinesis = p.env.kinesis().await;
    if fault == Fault::Split {
        let (id, start, end) = &open[pick % open.len()];
        kinesis
            .split_shard()
            .stream_name(&p.stream)
            .shard_to_split(id)
            .new_starting_hash_key((start + (end - start) / 2).to_string())
            .send()
            .await?;
    } else {
        if open.len() < 2 {
            return Ok(());
        }
        let i = pick % (open.len() - 1);
        kinesis
            .merge_shards()
            .stream_name(&p.stream)
            .shard_to_merge(&open[i].0)
            .adjacent_shard_to_merge(&open[i + 1].0)
            .send()
            .await?;
    }
    p.env.wait_stream_active(&p.stream).await
}

/// Runs the suite and returns what the checker found.
///
/// # Errors
/// The environment could not be set up, or a step of the schedule failed outright (not an
/// invariant: those are in the [`Report`]).
pub async fn run(config: &ChaosConfig) -> Result<Report> {
    let p = Pipeline::new(config.shards).await?;
    let upstream = |e: &str| e.trim_start_matches("http://").to_string();
    let kinesis_proxy = FaultProxy::start(&upstream(&p.env.kinesis_endpoint)).await?;
    let dynamodb_proxy = FaultProxy::start(&upstream(&p.env.dynamodb_endpoint)).await?;
    let extra = worker_args(config, &kinesis_proxy.endpoint, &dynamodb_proxy.endpoint);
    let extra_ref: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut slots = Vec::new();
    for n in 0..config.workers {
        let app_name = format!("app{n}");
        let app = p.app(&app_name, &[]).await?;
        let id = format!("w{n}");
        let worker = p.worker(&id, &app.address, &extra_ref)?;
        slots.push(Slot {
            id,
            app,
            worker,
            app_name,
        });
    }
    let dynamodb = p.env.dynamodb().await;
    let table = wait_for(
        "the lease table",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let (dynamodb, app) = (dynamodb.clone(), p.app.clone());
            async move { LeaseTable::open(dynamodb, &app, false).await.ok() }
        },
    )
    .await?;
    // Every shard owned (and, with LATEST, pinned) before the producer starts: records
    // written before an application's first start are not its to read.
    let shards = config.shards as usize;
    wait_for(
        "every lease owned",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let table = table.clone();
            let latest = config.latest;
            async move {
                let snap = table.scan().await.ok()?;
                let ready = snap.leases.len() >= shards
                    && snap.leases.iter().all(|l| {
                        l.owner.is_some() && (!latest || l.checkpoint != Checkpoint::Latest)
                    });
                ready.then_some(())
            }
        },
    )
    .await?;

    if let Some(tx) = &config.started {
        let _ = tx.send((p.stream.clone(), p.app.clone()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(
        p.env.kinesis().await,
        p.stream.clone(),
        config.keys,
        config.rate,
        stop.clone(),
    ));
    // Sampled until everything settled, not only while records are produced.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let sampler = tokio::spawn(sample_checkpoints(
        table.clone(),
        seen.clone(),
        sampler_stop.clone(),
    ));

    let mut report = Report::default();
    let mut timeline: Vec<(u128, Fault)> = Vec::new();
    let mut rng = Rng::new(config.seed ^ 0xFA17);
    tokio::time::sleep(config.spacing).await;
    for (fault, slot) in schedule(config.seed, config.faults, config.workers) {
        eprintln!("chaos: {fault:?} on slot {slot}");
        *report.faults.entry(format!("{fault:?}")).or_insert(0) += 1;
        timeline.push((now_ns(), fault));
        let started = Instant::now();
        let proxies = (&kinesis_proxy, &dynamodb_proxy);
        report.forced_handovers +=
            inject(&p, &mut slots[slot], fault, &extra_ref, proxies, &mut rng).await?;
        // The spacing starts once the fault's own action is over (a pause, a restart).
        eprintln!("chaos: {fault:?} took {:?}", started.elapsed());
        tokio::time::sleep(config.spacing).await;
    }
    // Settle: the producer stops; every record must be acknowledged and every checkpoint
    // reach the end.
    stop.store(true, Ordering::SeqCst);
    let history = History {
        written: producer.await??,
        timeline,
        ..History::default()
    };
    let outs: Vec<PathBuf> = slots.iter().map(|s| s.app.out.clone()).collect();
    let out_refs: Vec<&Path> = outs.iter().map(PathBuf::as_path).collect();
    let sampler = (sampler_stop, sampler);
    judge(&mut report, history, &out_refs, &table, &seen, sampler).await;
    if !report.holds() {
        let kept = std::env::temp_dir().join(format!("chaos-failed-{}", now_ns()));
        if std::fs::rename(&p.dir, &kept).is_ok() {
            report.logs_kept = Some(kept.display().to_string());
        }
    }
    for s in &mut slots {
        s.worker.proc.signal("TERM");
    }
    for s in &mut slots {
        let _ = s.worker.until_exit(Duration::from_secs(30)).await;
        report.forced_handovers += forced_handovers(&s.worker.proc.log_text());
    }
    drop(slots);
    p.cleanup().await?;
    Ok(report)
}

/// The workers' arguments beyond the pipeline's: the proxies' endpoints and the run's
/// options.
fn worker_args(config: &ChaosConfig, kinesis: &str, dynamodb: &str) -> Vec<String> {
    let mut extra: Vec<String> = vec![
        "--kinesis-endpoint".into(),
        kinesis.into(),
        "--dynamodb-endpoint".into(),
        dynamodb.into(),
    ];
    if config.latest {
        extra.extend(["--initial-position".into(), "LATEST".into()]);
    }
    if config.fan_out {
        extra.extend(["--consumer-mode".into(), "enhanced-fan-out".into()]);
    }
    if config.peer {
        extra.extend(["--coordination".into(), "peer".into()]);
    }
    extra.extend(config.worker_args.iter().cloned());
    if config.lanes > 1 {
        // Small calls, so a page is spread over every lane.
        extra.extend([
            "--parallelization-factor".into(),
            config.lanes.to_string(),
            "--batch-size".into(),
            "10".into(),
        ]);
    }
    extra
}

/// After the schedule (`history` holds the producer's log and the faults): waits until the
/// run settled (90 s at most), stops the sampler, reads the final checkpoints (the last the
/// sampler saw, then one more scan) and the apps' outputs, and [`check`]s.
async fn judge(
    report: &mut Report,
    mut history: History,
    outs: &[&Path],
    table: &LeaseTable,
    seen: &Seen,
    (sampler_stop, sampler): (Arc<AtomicBool>, tokio::task::JoinHandle<(usize, usize)>),
) {
    if !settle(&mut history, outs, seen, Duration::from_secs(90)).await {
        eprintln!("chaos: not settled within 90 s (records unacknowledged or checkpoints short)");
    }
    sampler_stop.store(true, Ordering::SeqCst);
    let (regressions, samples) = sampler.await.unwrap_or((0, 0));
    report.checkpoint_regressions = regressions;
    report.samples = samples;
    let mut finals = seen_now(seen);
    if let Ok(snap) = table.scan().await {
        let scan = snap
            .leases
            .into_iter()
            .map(|l| (l.shard_id, l.checkpoint))
            .collect();
        report.checkpoint_regressions += merge_scan(&mut finals, scan).len();
    }
    history.checkpoints = finals;
    history.deliveries = received(outs);
    history.acks = acks(outs);
    history.events = app_events(outs);
    check(report, &history);
}

/// Injects `fault` on slot `s` and waits until its own action is over (a restart, the end
/// of a pause or of an error window). Returns the forced hand-overs the log of a worker it
/// replaced holds (the restarted worker's log starts anew).
async fn inject(
    p: &Pipeline,
    s: &mut Slot,
    fault: Fault,
    extra: &[&str],
    (kinesis_proxy, dynamodb_proxy): (&FaultProxy, &FaultProxy),
    rng: &mut Rng,
) -> Result<usize> {
    let mut forced = 0;
    match fault {
        Fault::Kill => {
            s.worker.proc.signal("KILL");
            tokio::time::sleep(Duration::from_secs(1)).await;
            forced = forced_handovers(&s.worker.proc.log_text());
            s.worker = p.worker(&s.id, &s.app.address, extra)?;
        }
        Fault::Term => {
            s.worker.proc.signal("TERM");
            let _ = s.worker.until_exit(Duration::from_secs(40)).await;
            forced = forced_handovers(&s.worker.proc.log_text());
            s.worker = p.worker(&s.id, &s.app.address, extra)?;
        }
        Fault::Pause => {
            s.worker.proc.signal("STOP");
            // Past the test timings' failover time (3 s).
            tokio::time::sleep(Duration::from_secs(4)).await;
            s.worker.proc.signal("CONT");
        }
        Fault::AppCrash => {
            s.app.proc.signal("KILL");
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.app = p.app(&s.app_name, &[]).await?;
        }
        Fault::Split | Fault::Merge => reshard(p, fault, rng.below(1 << 16)).await?,
        Fault::KinesisThrottle | Fault::KinesisErrors => {
            kinesis_proxy.set(if fault == Fault::KinesisThrottle {
                Mode::ThrottleHalf
            } else {
                Mode::ServerErrorHalf
            });
            tokio::time::sleep(Duration::from_secs(3)).await;
            kinesis_proxy.set(Mode::Pass);
        }
        Fault::DynamoThrottle | Fault::DynamoErrors => {
            dynamodb_proxy.set(if fault == Fault::DynamoThrottle {
                Mode::ThrottleHalf
            } else {
                Mode::ServerErrorHalf
            });
            tokio::time::sleep(Duration::from_secs(3)).await;
            dynamodb_proxy.set(Mode::Pass);
        }
    }
    Ok(forced)
}

/// A record of the producer's log: key `k` and index `i` (its data is `key-k:i`).
type Rec = (usize, usize);

/// A lease tenure: shard, owner, counter (the fencing token every delivery carries).
type Tenure<'a> = (&'a str, &'a str, u64);

/// The tenure a record was delivered under.
fn tenure(r: &Received) -> Tenure<'_> {
    (r.shard.as_str(), r.owner.as_str(), r.counter)
}

/// Parses data `key-k:i`.
fn key_index(data: &str) -> Option<Rec> {
    let (key, i) = data.split_once(':')?;
    let k = key.strip_prefix("key-")?.parse::<usize>().ok()?;
    Some((k, i.parse::<usize>().ok()?))
}

/// The same sequence number (leading zeros aside)?
fn same_seq(a: &str, b: &str) -> bool {
    a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// Does checkpoint `cp` cover the record at sequence number `seq`: `SHARD_END`, or a
/// sequence number at or past it?
fn covers(cp: Option<&Checkpoint>, seq: &str) -> bool {
    match cp {
        Some(Checkpoint::ShardEnd) => true,
        Some(Checkpoint::Sequence { sequence, .. }) => {
            SequenceNumber::parse(seq).is_ok_and(|s| *sequence >= s)
        }
        _ => false,
    }
}

/// One delivery of a record of the producer's log.
struct Delivery<'a> {
    /// The record.
    rec: Rec,
    /// As the app wrote it.
    r: &'a Received,
    /// Receive time, ns.
    t: u128,
    /// Did the app acknowledge the call that delivered it?
    acked: bool,
}

/// The deliveries of records of the producer's log (the same shard and sequence number: a
/// put that failed yet landed wrote a second record with the same data), in receive order
/// (time, then the order given), each with whether its call was acknowledged; and how many
/// deliveries were of other records.
fn logged(h: &History) -> (Vec<Delivery<'_>>, usize) {
    let acked_calls: HashSet<&str> = h.acks.iter().map(|a| a.ack.as_str()).collect();
    let in_log = |r: &Received, (k, i): Rec| {
        h.written
            .get(k)
            .and_then(|w| w.get(i))
            .is_some_and(|(shard, seq)| *shard == r.shard && same_seq(seq, &r.seq))
    };
    let mut out = Vec::with_capacity(h.deliveries.len());
    for r in &h.deliveries {
        if let Some(rec) = key_index(&r.data)
            && in_log(r, rec)
        {
            out.push(Delivery {
                rec,
                r,
                t: r.recv_ns(),
                acked: !r.call.is_empty() && acked_calls.contains(r.call.as_str()),
            });
        }
    }
    let unlogged = h.deliveries.len() - out.len();
    out.sort_by_key(|d| d.t);
    (out, unlogged)
}

/// Rule 1: a record never received, or received, never acknowledged and covered by its
/// shard's final checkpoint, is lost. Also counts the records received and acknowledged.
fn find_lost(report: &mut Report, h: &History, ds: &[Delivery<'_>]) {
    // Record → acknowledged by any of its deliveries?
    let mut acked: HashMap<Rec, bool> = HashMap::new();
    for d in ds {
        *acked.entry(d.rec).or_insert(false) |= d.acked;
    }
    report.delivered = acked.len();
    report.acked = acked.values().filter(|a| **a).count();
    for (k, w) in h.written.iter().enumerate() {
        for (i, (shard, seq)) in w.iter().enumerate() {
            let lost = match acked.get(&(k, i)) {
                None => true,
                Some(true) => false,
                // Not checkpointed past: not lost, but its shard is stalled (rule 5).
                Some(false) => covers(h.checkpoints.get(shard), seq),
            };
            if !lost {
                continue;
            }
            report.lost += 1;
            if acked.contains_key(&(k, i)) {
                report.lost_unacked += 1;
            }
            if report.lost_records.len() < 10 {
                report.lost_records.push((k, i));
            }
        }
    }
}

/// Where lost record `key-k:i` was written, whether it was received, its shard's final
/// checkpoint, and what was delivered on its shard around it.
fn explain_lost(k: usize, i: usize, h: &History, ds: &[Delivery<'_>]) -> String {
    let Some((shard, seq)) = h.written.get(k).and_then(|w| w.get(i)) else {
        return format!("key-{k}:{i} (not in the producer's log)");
    };
    let status = if ds.iter().any(|d| d.rec == (k, i)) {
        "received, never acknowledged"
    } else {
        "never received"
    };
    let seq_of = |(k2, i2): Rec| {
        let (_, s) = h.written.get(k2)?.get(i2)?;
        SequenceNumber::parse(s).ok()
    };
    // Deliveries on the same shard, by the sequence number the producer got for them.
    let mut around: Vec<(SequenceNumber, String)> = ds
        .iter()
        .filter(|d| d.r.shard == *shard)
        .filter_map(|d| {
            let n = seq_of(d.rec)?;
            let r = d.r;
            Some((
                n,
                format!("{} by {}#{} at {}", r.data, r.owner, r.counter, r.recv),
            ))
        })
        .collect();
    around.sort();
    let n = SequenceNumber::parse(seq).ok();
    let before = n
        .as_ref()
        .and_then(|n| around.iter().rev().find(|(s, _)| s < n))
        .map(|(_, d)| d);
    let after = n
        .as_ref()
        .and_then(|n| around.iter().find(|(s, _)| s > n))
        .map(|(_, d)| d);
    let cp = h
        .checkpoints
        .get(shard)
        .map_or_else(|| "none".to_string(), ToString::to_string);
    format!(
        "key-{k}:{i} on {shard} seq {seq}, {status}, final checkpoint {cp}; delivered before \
         it: {before:?}; after it: {after:?}"
    )
}

/// Rule 2, across tenures: per key, the first deliveries of its records are in index
/// order. Returns the keys out of order, described.
fn first_order(ds: &[Delivery<'_>]) -> Vec<String> {
    // Record → its first receive time (`ds` is in time order).
    let mut first: BTreeMap<Rec, u128> = BTreeMap::new();
    for d in ds {
        first.entry(d.rec).or_insert(d.t);
    }
    let mut bad: BTreeMap<usize, String> = BTreeMap::new();
    let mut prev: Option<(Rec, u128)> = None;
    for (&(k, i), &t) in &first {
        if let Some(((pk, pi), pt)) = prev
            && pk == k
            && t < pt
        {
            bad.entry(k).or_insert_with(|| {
                format!("key-{k}: key-{k}:{i} first delivered before key-{k}:{pi}")
            });
        }
        prev = Some(((k, i), t));
    }
    bad.into_values().collect()
}

/// Rule 2, within each tenure: per key, in receive order, each delivery is the previous
/// index + 1, or a replay (index <= previous) at a higher attempt than the previous delivery
/// (a retry restarts from the failed part); a key's first delivery in a tenure may be any
/// index. Returns the violations (gaps, replays without a retry), described.
fn tenure_order(ds: &[Delivery<'_>]) -> Vec<String> {
    // (tenure, key) → the previous delivery's (index, attempt).
    let mut prev: HashMap<(Tenure<'_>, usize), (usize, u32)> = HashMap::new();
    let mut bad = Vec::new();
    for d in ds {
        let (k, i) = d.rec;
        let r = d.r;
        let at = (tenure(r), k);
        if let Some(&(p, attempt)) = prev.get(&at) {
            let fine = i == p + 1 || (i <= p && r.attempt > attempt);
            if !fine {
                let what = if i > p + 1 {
                    "gap"
                } else {
                    "replay without a retry"
                };
                bad.push(format!(
                    "{what} on {} under {}#{}: key-{k}:{i} attempt {} after key-{k}:{p} attempt \
                     {attempt}",
                    r.shard, r.owner, r.counter, r.attempt
                ));
            }
        }
        prev.insert(at, (i, r.attempt));
    }
    bad
}

/// Rule 3: per shard, deliveries under a lower lease counter after (in receive time) the
/// first delivery under a higher one: two owners delivering. Returns them, described.
fn two_owners(ds: &[Delivery<'_>]) -> Vec<String> {
    // Shard → counter → its first delivery (time, owner); `ds` is in time order.
    let mut first: HashMap<&str, BTreeMap<u64, (u128, &str)>> = HashMap::new();
    for d in ds {
        first
            .entry(d.r.shard.as_str())
            .or_default()
            .entry(d.r.counter)
            .or_insert((d.t, d.r.owner.as_str()));
    }
    let mut bad = Vec::new();
    for d in ds {
        let r = d.r;
        let newer = first.get(r.shard.as_str()).and_then(|m| {
            m.range((Bound::Excluded(r.counter), Bound::Unbounded))
                .find(|(_, (t, _))| *t < d.t)
        });
        if let Some((c, (t, owner))) = newer {
            bad.push(format!(
                "{} by {}#{} at {} on {}, after {owner}#{c} delivered from {t}",
                r.data, r.owner, r.counter, r.recv, r.shard
            ));
        }
    }
    bad
}

/// What a duplicate is blamed on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// The old tenure ended gracefully, as its app recorded it (`shutdown-requested REASON`,
    /// `shard-ended`): a failure.
    Graceful(String),
    /// `lease-lost`, `no-word (killed)`, `retry (same tenure)` or `replay (same tenure, no
    /// retry)`.
    Hard(&'static str),
}

/// How each tenure ended: its first lifecycle line (in time), by tenure.
fn endings(events: &[AppEvent]) -> HashMap<Tenure<'_>, &AppEvent> {
    let mut sorted: Vec<&AppEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.recv_ns());
    let mut out = HashMap::new();
    for e in sorted {
        out.entry((e.shard.as_str(), e.owner.as_str(), e.counter))
            .or_insert(e);
    }
    out
}

/// Blames the redelivery `next` of a record, after its previous delivery `prev`, on how the
/// old tenure ended (`ends`, from the apps' lifecycle lines), not on a time window.
fn cause<'a>(
    prev: &Delivery<'a>,
    next: &Delivery<'a>,
    ends: &HashMap<Tenure<'a>, &'a AppEvent>,
) -> Cause {
    let (a, b) = (tenure(prev.r), tenure(next.r));
    if a == b {
        return Cause::Hard(if next.r.attempt > prev.r.attempt {
            "retry (same tenure)"
        } else {
            "replay (same tenure, no retry)"
        });
    }
    // A record lives on one shard: the old tenure is the lower lease counter, even when it
    // delivered last (a paused worker resuming with a batch in flight).
    let old = if a.0 == b.0 && b.2 < a.2 { b } else { a };
    match ends
        .get(&old)
        .map(|e| (e.event.as_str(), e.reason.as_str()))
    {
        Some(("shutdown-requested", reason)) => {
            Cause::Graceful(format!("shutdown-requested {reason}"))
        }
        Some(("shard-ended", _)) => Cause::Graceful("shard-ended".to_string()),
        Some(("lease-lost", _)) => Cause::Hard("lease-lost"),
        _ => Cause::Hard("no-word (killed)"),
    }
}

/// The last non-graceful fault started at or before `t`.
fn last_hard_fault(timeline: &[(u128, Fault)], t: u128) -> String {
    timeline
        .iter()
        .filter(|(at, f)| *at <= t && !f.graceful())
        .max_by_key(|(at, _)| *at)
        .map_or_else(|| "no hard fault".to_string(), |(_, f)| format!("{f:?}"))
}

/// Every delivery of a record, described.
fn deliveries_of(list: &[&Delivery<'_>]) -> String {
    let each: Vec<String> = list
        .iter()
        .map(|d| {
            let r = d.r;
            let acked = if d.acked { "" } else { " (not acknowledged)" };
            format!(
                "{} on {} by {}#{} attempt {}{acked}",
                r.recv, r.shard, r.owner, r.counter, r.attempt
            )
        })
        .collect();
    each.join("; ")
}

/// Rule 4: counts the duplicates, blames each on how the old tenure ended ([`cause`]), and
/// counts the graceful ones (with a few examples).
fn blame(report: &mut Report, h: &History, ds: &[Delivery<'_>]) {
    let ends = endings(&h.events);
    let mut by_rec: BTreeMap<Rec, Vec<&Delivery<'_>>> = BTreeMap::new();
    for d in ds {
        by_rec.entry(d.rec).or_default().push(d);
    }
    for (&(k, i), list) in &by_rec {
        for pair in list.windows(2) {
            let [prev, next] = pair else {
                continue;
            };
            report.duplicates += 1;
            let name = match cause(prev, next, &ends) {
                Cause::Graceful(how) => {
                    report.graceful_duplicates += 1;
                    if report.graceful_examples.len() < 5 {
                        let faults: Vec<String> = h
                            .timeline
                            .iter()
                            .map(|(at, f)| format!("{f:?}@{at}"))
                            .collect();
                        report.graceful_examples.push(format!(
                            "key-{k}:{i}: the old tenure ended by {how}; delivered {}; faults {}",
                            deliveries_of(list),
                            faults.join(", ")
                        ));
                    }
                    format!("graceful: {how}")
                }
                Cause::Hard(how) => {
                    format!("{how} after {}", last_hard_fault(&h.timeline, next.t))
                }
            };
            *report.duplicates_by_cause.entry(name).or_insert(0) += 1;
        }
    }
}

/// Rule 5: every shard's final checkpoint covers the last record the producer wrote to it
/// (or is `SHARD_END`). Returns the stalled shards, described.
fn stalls(h: &History) -> Vec<String> {
    // Shard → its last record: (sequence number, as written, record).
    let mut last: BTreeMap<&str, (Option<SequenceNumber>, &str, Rec)> = BTreeMap::new();
    for (k, w) in h.written.iter().enumerate() {
        for (i, (shard, seq)) in w.iter().enumerate() {
            let n = SequenceNumber::parse(seq).ok();
            let e = last
                .entry(shard.as_str())
                .or_insert((None, seq.as_str(), (k, i)));
            if n > e.0 {
                *e = (n, seq.as_str(), (k, i));
            }
        }
    }
    last.into_iter()
        .filter(|(shard, (_, seq, _))| !covers(h.checkpoints.get(*shard), seq))
        .map(|(shard, (_, seq, (k, i)))| {
            let cp = h
                .checkpoints
                .get(shard)
                .map_or_else(|| "none (no lease)".to_string(), ToString::to_string);
            format!("{shard}: final checkpoint {cp}, its last record key-{k}:{i} at {seq}")
        })
        .collect()
}

/// The invariant checker: judges a run's [`History`] by the rules of the module docs and
/// fills `report` (its faults, samples and checkpoint regressions are the caller's). A pure
/// function.
pub fn check(report: &mut Report, h: &History) {
    report.produced = h.written.iter().map(Vec::len).sum();
    let (ds, unlogged) = logged(h);
    report.unlogged = unlogged;
    find_lost(report, h, &ds);
    report.lost_examples = report
        .lost_records
        .iter()
        .map(|&(k, i)| explain_lost(k, i, h, &ds))
        .collect();
    let first = first_order(&ds);
    let within = tenure_order(&ds);
    report.order_violations = first.len();
    report.tenure_order_violations = within.len();
    report.order_examples = first
        .into_iter()
        .take(5)
        .chain(within.into_iter().take(5))
        .collect();
    let two = two_owners(&ds);
    report.two_owner_deliveries = two.len();
    report.two_owner_examples = two.into_iter().take(5).collect();
    blame(report, h, &ds);
    let stalled = stalls(h);
    report.stalled_shards = stalled.len();
    report.stall_examples = stalled.into_iter().take(5).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u128 = 1_000_000_000;

    /// Where the producer's log puts `key-k:i`: sequence number 1000 + 10 i + k.
    fn seq_of(k: usize, i: usize) -> String {
        (1000 + 10 * i + k).to_string()
    }

    /// The producer's log: `per_key[k]` records of key `k`, all on shard `s`.
    fn log(per_key: &[usize]) -> Vec<Vec<(String, String)>> {
        per_key
            .iter()
            .enumerate()
            .map(|(k, n)| (0..*n).map(|i| ("s".to_string(), seq_of(k, i))).collect())
            .collect()
    }

    /// `data` (`key-k:i`) received on shard `s` under `owner#counter` at `secs`, at
    /// `attempt`, in a call of its own.
    fn at(data: &str, owner: &str, counter: u64, secs: u64, attempt: u32) -> Received {
        let (k, i) = key_index(data).unwrap_or_else(|| unreachable!("test data is key-k:i"));
        let line = serde_json::json!({
            "shard": "s", "key": format!("key-{k}"), "seq": seq_of(k, i), "sub": 0,
            "agg": false, "ehk": "", "arrival": 0, "data": data, "attempt": attempt,
            "owner": owner, "counter": counter, "recv": (u128::from(secs) * S).to_string(),
            "call": format!("{data}@{secs}/{attempt}"),
        });
        serde_json::from_value(line).unwrap_or_else(|_| unreachable!("a valid record"))
    }

    /// As [`at`], at attempt 1.
    fn delivery(data: &str, owner: &str, counter: u64, secs: u64) -> Received {
        at(data, owner, counter, secs, 1)
    }

    /// Every call of `deliveries` acknowledged.
    fn acks_of(deliveries: &[Received]) -> Vec<Ack> {
        deliveries
            .iter()
            .map(|r| Ack {
                ack: r.call.clone(),
                shard: r.shard.clone(),
                owner: r.owner.clone(),
                counter: r.counter,
                attempt: r.attempt,
                n: 1,
                recv: r.recv.clone(),
            })
            .collect()
    }

    /// An app's lifecycle line for the tenure `s`, `owner#counter`, at `secs`.
    fn event(event: &str, reason: &str, owner: &str, counter: u64, secs: u64) -> AppEvent {
        AppEvent {
            event: event.to_string(),
            reason: reason.to_string(),
            shard: "s".to_string(),
            owner: owner.to_string(),
            counter,
            recv: (u128::from(secs) * S).to_string(),
        }
    }

    /// A history of `deliveries` of `per_key` records, every call acknowledged, shard `s`
    /// ended (checkpoint `SHARD_END`), no fault, no lifecycle line.
    fn history(deliveries: Vec<Received>, per_key: &[usize]) -> History {
        History {
            acks: acks_of(&deliveries),
            deliveries,
            written: log(per_key),
            checkpoints: BTreeMap::from([("s".to_string(), Checkpoint::ShardEnd)]),
            ..History::default()
        }
    }

    fn checked(h: &History) -> Report {
        let mut r = Report::default();
        check(&mut r, h);
        r
    }

    /// A checkpoint at `key-k:i`'s sequence number.
    fn checkpoint_at(k: usize, i: usize) -> Checkpoint {
        Checkpoint::from_kcl(&seq_of(k, i), 0).unwrap_or_else(|_| unreachable!("a number"))
    }

    /// The clean history: w1#1 delivers key-0:0 and :1 and is killed (no word from its app);
    /// a split follows; w2#2 delivers :1 again, then :2 and :3; the app crashes and :3 is
    /// retried under the same lease (attempt 2). Two duplicates, both of hard faults.
    fn clean() -> History {
        let mut h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:1", "w1", 1, 11),
                delivery("key-0:1", "w2", 2, 15),
                delivery("key-0:2", "w2", 2, 15),
                delivery("key-0:3", "w2", 2, 16),
                at("key-0:3", "w2", 2, 21, 2),
            ],
            &[4],
        );
        h.timeline = vec![
            (11 * S + S / 2, Fault::Kill),
            (14 * S, Fault::Split),
            (20 * S, Fault::AppCrash),
        ];
        h
    }

    #[test]
    fn a_duplicate_is_blamed_on_what_ended_the_old_lease_not_on_the_next_fault() {
        let r = checked(&clean());
        assert!(r.holds(), "{r}");
        assert_eq!((r.produced, r.delivered, r.acked), (4, 4, 4));
        assert_eq!((r.duplicates, r.graceful_duplicates), (2, 0), "{r}");
        let by = &r.duplicates_by_cause;
        assert_eq!(by.get("no-word (killed) after Kill"), Some(&1), "{by:?}");
        assert_eq!(
            by.get("retry (same tenure) after AppCrash"),
            Some(&1),
            "{by:?}"
        );
        // The same with w1's app told its lease was lost.
        let mut h = clean();
        h.events = vec![event("lease-lost", "", "w1", 1, 12)];
        let r = checked(&h);
        assert!(r.holds(), "{r}");
        let by = &r.duplicates_by_cause;
        assert_eq!(by.get("lease-lost after Kill"), Some(&1), "{by:?}");
    }

    #[test]
    fn a_record_received_never_acknowledged_and_checkpointed_past_is_lost() {
        let mut h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:1", "w1", 1, 11),
                delivery("key-0:2", "w1", 1, 12),
            ],
            &[3],
        );
        h.acks.retain(|a| a.ack != "key-0:1@11/1");
        let r = checked(&h);
        assert_eq!((r.delivered, r.acked), (3, 2));
        assert_eq!((r.lost, r.lost_unacked), (1, 1), "{r}");
        assert_eq!(r.lost_records, vec![(0, 1)]);
        assert!(!r.holds());
        // Not checkpointed past: not lost, but the shard is stalled.
        h.checkpoints.insert("s".into(), checkpoint_at(0, 0));
        let r = checked(&h);
        assert_eq!((r.lost, r.stalled_shards), (0, 1), "{r}");
        assert!(!r.holds());
    }

    #[test]
    fn a_record_never_received_is_lost() {
        let h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:2", "w1", 1, 12),
            ],
            &[3, 2],
        );
        let r = checked(&h);
        // key-0:1, and both records of key-1.
        assert_eq!((r.lost, r.lost_unacked), (3, 0), "{r}");
        assert_eq!(r.lost_records, vec![(0, 1), (1, 0), (1, 1)]);
        assert!(r.lost_examples.iter().all(|e| e.contains("never received")));
        assert!(!r.holds());
    }

    #[test]
    fn a_redelivery_out_of_order_within_a_tenure_is_a_violation() {
        // A retry (attempt 2) restarts from the failed part: in order.
        let retried = vec![
            delivery("key-0:0", "w1", 1, 10),
            delivery("key-0:1", "w1", 1, 10),
            delivery("key-0:2", "w1", 1, 10),
            at("key-0:1", "w1", 1, 12, 2),
            at("key-0:2", "w1", 1, 12, 2),
        ];
        let r = checked(&history(retried.clone(), &[3]));
        assert!(r.holds(), "{r}");
        assert_eq!(r.duplicates, 2);
        // Then key-0:1 again at the same attempt, after key-0:2: out of order.
        let mut bad = retried;
        bad.push(at("key-0:1", "w1", 1, 13, 2));
        let r = checked(&history(bad, &[3]));
        assert_eq!(r.tenure_order_violations, 1, "{r}");
        assert!(!r.holds());
        // A replay at attempt 1 (no retry) is one too, even in order.
        let replay = vec![
            delivery("key-0:0", "w1", 1, 10),
            delivery("key-0:1", "w1", 1, 11),
            delivery("key-0:0", "w1", 1, 12),
            delivery("key-0:1", "w1", 1, 13),
            delivery("key-0:2", "w1", 1, 14),
        ];
        let r = checked(&history(replay, &[3]));
        assert_eq!(r.tenure_order_violations, 1, "{r}");
        assert_eq!(
            r.duplicates_by_cause
                .get("replay (same tenure, no retry) after no hard fault"),
            Some(&2)
        );
    }

    #[test]
    fn a_gap_within_a_tenure_is_a_violation() {
        let h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:1", "w1", 1, 11),
                delivery("key-0:3", "w1", 1, 12),
                delivery("key-0:2", "w2", 2, 15),
                delivery("key-0:3", "w2", 2, 15),
            ],
            &[4],
        );
        let r = checked(&h);
        assert_eq!(r.lost, 0, "{r}");
        assert_eq!(r.tenure_order_violations, 1, "{r}");
        assert!(r.order_examples.iter().any(|e| e.starts_with("gap")), "{r}");
        // key-0:3 was first delivered before key-0:2.
        assert_eq!(r.order_violations, 1, "{r}");
        assert!(!r.holds());
    }

    #[test]
    fn a_former_owner_delivering_after_its_successor_is_two_owners() {
        // w2#2 paused at 30 s loses the lease to w3#3, which delivers key-0:1 at 34 s; w2
        // resumes with key-0:1 in flight and delivers it at 35 s, then hears LeaseLost. A
        // merge at 33 s (graceful) takes no blame.
        let mut h = history(
            vec![
                delivery("key-0:0", "w2", 2, 29),
                delivery("key-0:1", "w3", 3, 34),
                delivery("key-0:1", "w2", 2, 35),
            ],
            &[2],
        );
        h.events = vec![event("lease-lost", "", "w2", 2, 36)];
        h.timeline = vec![(30 * S, Fault::Pause), (33 * S, Fault::Merge)];
        let r = checked(&h);
        assert_eq!(r.two_owner_deliveries, 1, "{r}");
        assert_eq!((r.duplicates, r.graceful_duplicates), (1, 0), "{r}");
        let by = &r.duplicates_by_cause;
        assert_eq!(by.get("lease-lost after Pause"), Some(&1), "{by:?}");
        assert!(!r.holds());
    }

    #[test]
    fn a_duplicate_after_shutdown_requested_is_graceful_even_right_after_a_kill() {
        // w1#1's app is asked to shut down (a hand-over) at 12 s; a kill (of some worker)
        // at 11 s does not excuse the redelivery of key-0:1 by w2#2.
        let mut h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:1", "w1", 1, 11),
                delivery("key-0:1", "w2", 2, 13),
                delivery("key-0:2", "w2", 2, 13),
            ],
            &[3],
        );
        h.timeline = vec![(11 * S, Fault::Kill)];
        h.events = vec![event("shutdown-requested", "REASON_HANDOFF", "w1", 1, 12)];
        let r = checked(&h);
        assert_eq!((r.duplicates, r.graceful_duplicates), (1, 1), "{r}");
        let by = &r.duplicates_by_cause;
        assert_eq!(
            by.get("graceful: shutdown-requested REASON_HANDOFF"),
            Some(&1)
        );
        assert_eq!(r.graceful_examples.len(), 1);
        assert!(!r.holds());
        // The same after ShardEnded.
        h.events = vec![event("shard-ended", "", "w1", 1, 12)];
        let r = checked(&h);
        assert_eq!(r.graceful_duplicates, 1, "{r}");
        assert!(!r.holds());
    }

    #[test]
    fn a_shard_whose_checkpoint_stops_short_of_its_last_record_is_stalled() {
        let mut h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                delivery("key-0:1", "w1", 1, 11),
                delivery("key-0:2", "w1", 1, 12),
            ],
            &[3],
        );
        for (cp, stalled) in [
            (Some(checkpoint_at(0, 1)), 1),
            (Some(Checkpoint::Latest), 1),
            (None, 1),
            (Some(checkpoint_at(0, 2)), 0),
            (Some(Checkpoint::ShardEnd), 0),
        ] {
            h.checkpoints = cp.iter().map(|c| ("s".to_string(), c.clone())).collect();
            let r = checked(&h);
            assert_eq!(r.stalled_shards, stalled, "{cp:?}: {r}");
            assert_eq!(r.lost, 0, "{cp:?}: {r}");
            assert_eq!(r.holds(), stalled == 0);
        }
    }

    #[test]
    fn a_deleted_lease_stays_finished_and_a_backward_checkpoint_is_a_regression() {
        let mut last = BTreeMap::new();
        let regressions = merge_scan(
            &mut last,
            vec![
                ("a".into(), Checkpoint::TrimHorizon),
                ("b".into(), checkpoint_at(0, 5)),
            ],
        );
        assert!(regressions.is_empty());
        // b deleted (only ever while at SHARD_END); a moves on.
        let regressions = merge_scan(&mut last, vec![("a".into(), checkpoint_at(0, 3))]);
        assert!(regressions.is_empty());
        assert_eq!(last.get("b"), Some(&Checkpoint::ShardEnd));
        let regressions = merge_scan(&mut last, vec![("a".into(), Checkpoint::TrimHorizon)]);
        assert_eq!(regressions.len(), 1, "{regressions:?}");
    }

    #[test]
    fn a_record_of_a_failed_put_that_landed_is_not_judged() {
        // key-0:1 also landed at another sequence number (a put that failed, then retried).
        let mut ghost = delivery("key-0:1", "w1", 1, 11);
        ghost.seq = "999".into();
        let h = history(
            vec![
                delivery("key-0:0", "w1", 1, 10),
                ghost,
                delivery("key-0:1", "w1", 1, 12),
            ],
            &[2],
        );
        let r = checked(&h);
        assert_eq!((r.unlogged, r.duplicates), (1, 0), "{r}");
        assert!(r.holds(), "{r}");
    }

    #[test]
    fn forced_hand_overs_are_counted_from_the_worker_log() {
        let log = "INFO lease acquired shard=a\n\
                   WARN hand-over forced: the record processor did not finish shard=a\n\
                   INFO lease revoked for hand-over shard=a\n\
                   WARN hand-over forced: the record processor did not finish shard=b\n";
        assert_eq!(forced_handovers(log), 2);
        assert_eq!(forced_handovers("INFO lease handed over shard=a"), 0);
    }

    #[test]
    fn a_seed_replays_its_schedule_and_every_kind_is_in_it() {
        let a = schedule(7, 20, 4);
        assert_eq!(a, schedule(7, 20, 4));
        assert_ne!(a, schedule(8, 20, 4));
        assert_eq!(a.len(), 20);
        for f in Fault::ALL {
            assert!(a.iter().any(|(g, _)| *g == f), "{f:?} in the schedule");
        }
        assert!(a.iter().all(|(_, s)| *s < 4));
    }
}
