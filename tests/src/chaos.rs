//! The chaos suite: the real worker (`kinesis-worker run` processes, each with its own
//! `record-app`) against the local emulators, behind fault-injecting proxies, under a seeded
//! schedule of faults, while a producer writes per-key counters. Then an invariant checker
//! accounts for every record produced.
//!
//! What it reports ([`Report`]): records lost (must be 0), per-key order violations (0),
//! checkpoint regressions in the lease table (0, from a sampler that scans the table every
//! 200 ms past the proxies), duplicates and the faults they are attributed to (graceful
//! faults: 0). A duplicate is attributed to the last fault that started before it was
//! delivered (faults are spaced so that each one's effects are over before the next).
//!
//! Used by `tests/tests/chaos.rs` (the short form, in `cargo xtask test`) and by the `chaos`
//! binary (the long form: `cargo run -p kinesis-operator-tests --bin chaos -- --help`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_worker::lease::checkpoint::Checkpoint;
use kinesis_worker::lease::table::LeaseTable;

use crate::faults::{FaultProxy, Mode};
use crate::pipeline::{App, Pipeline, Worker, received};
use crate::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

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
    /// Time between two faults (each fault's effects should be over by the next).
    pub spacing: Duration,
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
            spacing: Duration::from_secs(5),
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
    /// Kinesis throttles every second call for 3 s.
    KinesisThrottle,
    /// Kinesis answers every second call with 500 for 3 s.
    KinesisErrors,
    /// DynamoDB throttles every second call for 3 s.
    DynamoThrottle,
    /// DynamoDB answers every second call with 500 for 3 s.
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

/// What the invariant checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Records the producer wrote.
    pub produced: usize,
    /// Distinct records delivered.
    pub delivered: usize,
    /// Produced, never delivered.
    pub lost: usize,
    /// Keys whose records were first delivered out of order.
    pub order_violations: usize,
    /// Deliveries beyond the first of a record.
    pub duplicates: usize,
    /// Duplicates by the fault they are attributed to (`None`: before any fault).
    pub duplicates_by_fault: BTreeMap<String, usize>,
    /// Duplicates attributed to graceful faults.
    pub graceful_duplicates: usize,
    /// Times a lease's checkpoint went backwards between two samples.
    pub checkpoint_regressions: usize,
    /// A few duplicates attributed to graceful faults: the record and every delivery of it
    /// (time in ns, shard, lease owner, lease counter), to tell why.
    pub graceful_examples: Vec<String>,
    /// The first lost records (key, index).
    pub lost_records: Vec<(usize, usize)>,
    /// The first lost records: where the producer wrote each (shard, sequence number) and
    /// the deliveries on that shard just before and after it, to tell why.
    pub lost_examples: Vec<String>,
    /// Where the failed run's logs were kept (worker and app logs, app outputs).
    pub logs_kept: Option<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Table samples taken.
    pub samples: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "faults injected: {:?}", self.faults)?;
        writeln!(
            f,
            "produced {}, delivered {}, lost {}",
            self.produced, self.delivered, self.lost
        )?;
        writeln!(f, "per-key order violations: {}", self.order_violations)?;
        writeln!(
            f,
            "checkpoint regressions: {} (in {} table samples)",
            self.checkpoint_regressions, self.samples
        )?;
        writeln!(
            f,
            "duplicates: {} (graceful faults: {}), by fault: {:?}",
            self.duplicates, self.graceful_duplicates, self.duplicates_by_fault
        )?;
        for e in &self.graceful_examples {
            writeln!(f, "  graceful duplicate: {e}")?;
        }
        for e in &self.lost_examples {
            writeln!(f, "  lost: {e}")?;
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(f, "logs kept in {dir}")?;
        }
        Ok(())
    }
}

impl Report {
    /// Lost = 0, order violations = 0, regressions = 0, graceful duplicates = 0.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.order_violations == 0
            && self.checkpoint_regressions == 0
            && self.graceful_duplicates == 0
    }
}

/// A lease tenure: shard, owner, counter (the fencing token every delivery carries).
type Token = (String, String, u64);

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

/// Scans the table (past the proxies) every 200 ms; counts checkpoints that went backwards.
async fn sample_checkpoints(table: LeaseTable, stop: Arc<AtomicBool>) -> (usize, usize) {
    let mut last: HashMap<String, Checkpoint> = HashMap::new();
    let (mut regressions, mut samples) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        if let Ok(snap) = table.scan().await {
            samples += 1;
            for l in snap.leases {
                if let Some(prev) = last.get(&l.shard_id)
                    && !prev.may_advance_to(&l.checkpoint)
                {
                    eprintln!(
                        "checkpoint regression on {}: {prev} -> {}",
                        l.shard_id, l.checkpoint
                    );
                    regressions += 1;
                }
                last.insert(l.shard_id, l.checkpoint);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (regressions, samples)
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
    let mut extra: Vec<String> = vec![
        "--kinesis-endpoint".into(),
        kinesis_proxy.endpoint.clone(),
        "--dynamodb-endpoint".into(),
        dynamodb_proxy.endpoint.clone(),
    ];
    if config.latest {
        extra.extend(["--initial-position".into(), "LATEST".into()]);
    }
    if config.fan_out {
        extra.extend(["--consumer-mode".into(), "enhanced-fan-out".into()]);
    }
    if config.lanes > 1 {
        // Small calls, so a page is spread over every lane.
        extra.extend([
            "--parallelization-factor".into(),
            config.lanes.to_string(),
            "--batch-size".into(),
            "10".into(),
        ]);
    }
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
    let sampler = tokio::spawn(sample_checkpoints(table.clone(), sampler_stop.clone()));

    let mut report = Report::default();
    let mut timeline: Vec<(u128, Fault)> = Vec::new();
    let mut rng = Rng::new(config.seed ^ 0xFA17);
    tokio::time::sleep(config.spacing).await;
    for (fault, slot) in schedule(config.seed, config.faults, config.workers) {
        eprintln!("chaos: {fault:?} on slot {slot}");
        *report.faults.entry(format!("{fault:?}")).or_insert(0) += 1;
        timeline.push((now_ns(), fault));
        let started = Instant::now();
        let s = &mut slots[slot];
        match fault {
            Fault::Kill => {
                s.worker.proc.signal("KILL");
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.worker = p.worker(&s.id, &s.app.address, &extra_ref)?;
            }
            Fault::Term => {
                s.worker.proc.signal("TERM");
                let _ = s.worker.until_exit(Duration::from_secs(40)).await;
                s.worker = p.worker(&s.id, &s.app.address, &extra_ref)?;
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
            Fault::Split | Fault::Merge => reshard(&p, fault, rng.below(1 << 16)).await?,
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
        // The spacing starts once the fault's own action is over (a pause, a restart).
        eprintln!("chaos: {fault:?} took {:?}", started.elapsed());
        tokio::time::sleep(config.spacing).await;
    }
    // Settle: the producer stops; every record must arrive.
    stop.store(true, Ordering::SeqCst);
    let written = producer.await??;
    let produced: Vec<usize> = written.iter().map(Vec::len).collect();
    report.produced = produced.iter().sum();
    let outs: Vec<std::path::PathBuf> = slots.iter().map(|s| s.app.out.clone()).collect();
    let out_refs: Vec<&std::path::Path> = outs.iter().map(|o| o.as_path()).collect();
    let want = report.produced;
    let _ = wait_for(
        "every record delivered",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || async {
            let distinct: std::collections::HashSet<String> =
                received(&out_refs).into_iter().map(|r| r.data).collect();
            (distinct.len() >= want).then_some(())
        },
    )
    .await;
    sampler_stop.store(true, Ordering::SeqCst);
    let (regressions, samples) = sampler.await.unwrap_or((0, 0));
    report.checkpoint_regressions = regressions;
    report.samples = samples;
    let deliveries = received(&out_refs);
    check(&mut report, &deliveries, &produced, &timeline);
    report.lost_examples = report
        .lost_records
        .iter()
        .map(|&(k, i)| explain_lost(k, i, &written, &deliveries))
        .collect();
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
    }
    drop(slots);
    p.cleanup().await?;
    Ok(report)
}

/// Where lost record `key-k:i` was written, and what was delivered on its shard around it.
fn explain_lost(
    k: usize,
    i: usize,
    written: &[Vec<(String, String)>],
    deliveries: &[crate::pipeline::Received],
) -> String {
    let Some((shard, seq)) = written.get(k).and_then(|w| w.get(i)) else {
        return format!("key-{k}:{i} (not in the producer's log)");
    };
    let at = |k2: usize, i2: usize| written.get(k2).and_then(|w| w.get(i2));
    // Deliveries on the same shard, by the sequence number the producer got for them.
    let mut around: Vec<(u128, String)> = deliveries
        .iter()
        .filter(|r| r.shard == *shard)
        .filter_map(|r| {
            let (key, idx) = r.data.split_once(':')?;
            let (k2, i2) = (key.strip_prefix("key-")?.parse().ok()?, idx.parse().ok()?);
            let (_, s2) = at(k2, i2)?;
            let n: u128 = s2.parse().ok()?;
            Some((
                n,
                format!("{} by {}#{} at {}", r.data, r.owner, r.counter, r.recv),
            ))
        })
        .collect();
    around.sort();
    let n: u128 = seq.parse().unwrap_or(0);
    let before = around.iter().rev().find(|(s, _)| *s < n).map(|(_, d)| d);
    let after = around.iter().find(|(s, _)| *s > n).map(|(_, d)| d);
    format!(
        "key-{k}:{i} on {shard} seq {seq}; delivered before it: {before:?}; after it: {after:?}"
    )
}

/// The invariant checker over every delivery (all apps' outputs) and what was produced.
pub fn check(
    report: &mut Report,
    deliveries: &[crate::pipeline::Received],
    produced: &[usize],
    timeline: &[(u128, Fault)],
) {
    // (key, index) -> (delivery time, the lease it was delivered under).
    let mut seen: HashMap<(usize, usize), Vec<(u128, Token)>> = HashMap::new();
    // A lease tenure (shard, owner, counter) -> its deliveries' times.
    let mut tenure: HashMap<Token, Vec<u128>> = HashMap::new();
    let mut how: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    for r in deliveries {
        let Some((key, i)) = r.data.split_once(':') else {
            continue;
        };
        let (Some(k), Ok(i)) = (
            key.strip_prefix("key-")
                .and_then(|k| k.parse::<usize>().ok()),
            i.parse::<usize>(),
        ) else {
            continue;
        };
        let token = (r.shard.clone(), r.owner.clone(), r.counter);
        let t = r.recv_ns();
        tenure.entry(token.clone()).or_default().push(t);
        seen.entry((k, i)).or_default().push((t, token));
        how.entry((k, i)).or_default().push(format!(
            "{} {} {}#{} attempt {}",
            r.recv, r.shard, r.owner, r.counter, r.attempt
        ));
    }
    report.delivered = seen.len();
    for times in tenure.values_mut() {
        times.sort_unstable();
    }
    for (k, n) in produced.iter().enumerate() {
        let mut first_times = Vec::with_capacity(*n);
        for i in 0..*n {
            match seen.get(&(k, i)) {
                None => {
                    report.lost += 1;
                    if report.lost_records.len() < 10 {
                        report.lost_records.push((k, i));
                    }
                }
                Some(times) => {
                    first_times.push(times.iter().map(|(t, _)| *t).min().unwrap_or(0));
                }
            }
        }
        if first_times.windows(2).any(|w| w[1] < w[0]) {
            report.order_violations += 1;
        }
    }
    for (record, times) in &seen {
        let mut times = times.clone();
        times.sort();
        for pair in times.windows(2) {
            let ((first, a), (again, b)) = (&pair[0], &pair[1]);
            report.duplicates += 1;
            // Delivered again under another lease: the cause is what ended the old tenure
            // (the last fault started before the old holder's last delivery, or just after
            // it: a kill). On one shard the old tenure is the lower lease counter, even when
            // it delivered last (a paused worker that resumed with a record in flight).
            // Under the same lease (a retry): what came before the retry.
            let (old, new) = if a.0 == b.0 && b.2 < a.2 {
                (b, a)
            } else {
                (a, b)
            };
            let at = if a == b {
                *again
            } else {
                // The old tenure's last delivery before the new one's first.
                let next_started = tenure.get(new).and_then(|t| t.first()).copied();
                tenure
                    .get(old)
                    .and_then(|t| {
                        t.iter()
                            .rev()
                            .find(|x| next_started.is_none_or(|n| **x < n))
                            .copied()
                    })
                    .unwrap_or(*first)
                    + 1_000_000_000
            };
            let cause = timeline
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .map(|(_, f)| *f);
            let name = cause.map_or_else(|| "none".to_string(), |f| format!("{f:?}"));
            if cause.is_some_and(Fault::graceful) {
                report.graceful_duplicates += 1;
                if report.graceful_examples.len() < 5 {
                    let faults: Vec<String> = timeline
                        .iter()
                        .map(|(at, f)| format!("{f:?}@{at}"))
                        .collect();
                    report.graceful_examples.push(format!(
                        "key-{}:{} delivered {:?}; faults {:?}",
                        record.0,
                        record.1,
                        how.get(record),
                        faults
                    ));
                }
            }
            *report.duplicates_by_fault.entry(name).or_insert(0) += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(data: &str, owner: &str, counter: u64, secs: u64) -> crate::pipeline::Received {
        let line = serde_json::json!({
            "shard": "s", "key": "k", "seq": format!("{secs}{counter}"), "sub": 0, "agg": false,
            "ehk": "", "arrival": 0, "data": data, "attempt": 1, "owner": owner,
            "counter": counter, "recv": (u128::from(secs) * 1_000_000_000).to_string(),
        });
        serde_json::from_value(line).unwrap_or_else(|_| unreachable!("a valid record"))
    }

    #[test]
    fn a_duplicate_is_blamed_on_what_ended_the_old_lease_not_on_the_next_fault() {
        let s = |n: u64| u128::from(n) * 1_000_000_000;
        let deliveries = vec![
            delivery("key-0:0", "w1", 1, 10),
            delivery("key-0:1", "w1", 1, 11),
            // w1 killed at 11.5 s, a split at 14 s, w2 takes over and delivers again at 15 s.
            delivery("key-0:0", "w2", 2, 15),
            delivery("key-0:1", "w2", 2, 15),
            delivery("key-0:2", "w2", 2, 15),
            // A retry under the same lease after an app crash at 20 s.
            delivery("key-0:2", "w2", 2, 21),
        ];
        let timeline = vec![
            (s(11) + 500_000_000, Fault::Kill),
            (s(14), Fault::Split),
            (s(20), Fault::AppCrash),
        ];
        let mut r = Report::default();
        check(&mut r, &deliveries, &[3], &timeline);
        assert_eq!((r.lost, r.order_violations, r.duplicates), (0, 0, 3));
        assert_eq!(r.graceful_duplicates, 0, "{:?}", r.duplicates_by_fault);
        assert_eq!(r.duplicates_by_fault.get("Kill"), Some(&2));
        assert_eq!(r.duplicates_by_fault.get("AppCrash"), Some(&1));

        // A worker paused at 30 s (w2#2) loses the lease to w3#3, which delivers key-0:3 at
        // 34 s; w2 resumes at 34.5 s with key-0:3 in flight and delivers it again; a merge
        // at 33 s (graceful) must not take the blame.
        let mut zombie = deliveries.clone();
        zombie.push(delivery("key-0:3", "w2", 2, 29));
        zombie.push(delivery("key-0:3", "w3", 3, 34));
        zombie.push(delivery("key-0:3", "w2", 2, 35));
        let mut timeline = timeline.clone();
        timeline.push((s(30), Fault::Pause));
        timeline.push((s(33), Fault::Merge));
        let mut r = Report::default();
        check(&mut r, &zombie, &[4], &timeline);
        assert_eq!(r.graceful_duplicates, 0, "{:?}", r.duplicates_by_fault);
        assert_eq!(r.duplicates_by_fault.get("Pause"), Some(&2));
        // A record never delivered is lost; one first delivered before its predecessor is
        // an order violation.
        let mut r = Report::default();
        let out_of_order = vec![
            delivery("key-0:1", "w1", 1, 1),
            delivery("key-0:0", "w1", 1, 2),
        ];
        check(&mut r, &out_of_order, &[3], &timeline);
        assert_eq!((r.lost, r.order_violations), (1, 1));
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
