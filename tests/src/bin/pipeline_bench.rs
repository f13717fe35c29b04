//! Record pipeline benchmark on the local environment: a release `kinesis-worker run` process
//! delivering to a do-nothing `record-app`, measured from /proc (the worker's own CPU time
//! and memory, not the emulator's).
//!
//! - CPU-seconds of the worker and of the app per million records delivered, for 100-byte
//!   and 1 KB records (records put first, then read as fast as the worker and kinesis-mock
//!   go), for each GetRecords client (`--clients sdk,cbor,json`);
//! - the worker's RSS holding 64 shard leases, idle and after a record through every shard;
//! - put → app latency (p50/p99) at the tip with the default idle time, per app protocol.
//!
//! Run: `cargo xtask env up && cargo run --release -p kinesis-operator-tests --bin pipeline_bench`
//! Options: `--records N` (put once per size, default 20000: kinesis-mock takes ~3 ms per
//! record to put; `--records-1k N` for the 1 KB records, default the same), `--passes N`
//! (reads of them, default 5), `--clients LIST` (default
//! `sdk,cbor,json`), `--latency-records N` (default 300) for each of `--latency-protocols LIST`
//! (default `grpc,kcl-multilang,lambda`: record-app, the bridge with the do-nothing kclpy app,
//! the Runtime API with the do-nothing handler; the Python apps write their receive times
//! when `LATENCY_OUT` is set); `--callgrind DIR`: instead, one read
//! of `--records` 100-byte records per client by a worker under valgrind's callgrind (from
//! the synthetic endpoint with `--synthetic`).
//! `--only throughput|synthetic|memory|latency|lanes|protocols|shared-tip` runs one part.
//! `shared-tip`: two applications at the tip of a one-shard stream through a proxy enforcing
//! Kinesis's read limit of a shard (5 calls, 2 MB a second), `--latency-records` records put
//! one every 37 ms: each app's put → app latency and the reads refused (`--worker-binary
//! PATH` for another build of the worker, `--worker-args "…"`). `protocols`:
//! the synthetic endpoint's 8 shards of `--per-shard N` 100-byte records (default 25000) read
//! once per app protocol: gRPC to the do-nothing `record-app`, KCL MultiLang through
//! `kinesis-bridge` to a do-nothing kclpy app (`tests/kcl/nothing_kclpy_app.py`), and Lambda
//! through the worker's Runtime API (the adapter called in the worker's process) to a
//! do-nothing handler under awslambdaric
//! (`tests/lambda/nothing_handler.py`); the CPU of the worker, the bridge and the app
//! processes per million records. `synthetic`: the same
//! reads from `tests/src/synthetic.rs` (8 shards of `--per-shard N` records, default 100000,
//! a quarter of that for 1 KB; `--indefinite` for indefinite-length CBOR; `--app python` for
//! the Python example instead of the do-nothing Rust app; `--size 100|1024` for one size;
//! `--worker-args "…"` adds flags to each worker), at the worker's speed. `lanes`: one shard, a slow app (`--delay-ms 50` per call), `--batch-size 10`, read with 1, 2, 5 and 10 lanes
//! (`--parallelization-factor`): records/s of each (`--lanes-records N`, default 2000).

use std::time::{Duration, Instant};

use kinesis_operator_tests::pipeline::{
    App, Pipeline, Worker, http_get, metric, received, until_listening, until_socket,
};
use kinesis_operator_tests::process::{Proc, binary};
use kinesis_operator_tests::synthetic::{Config as SyntheticConfig, Shape, SyntheticKinesis};
use kinesis_operator_tests::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// (utime + stime) of `pid` in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).ok_or("utime")?.parse::<f64>()? + f.get(12).ok_or("stime")?.parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks / 100.0)
}

/// (VmRSS, VmHWM) of `pid` in MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| -> Result<f64> {
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .ok_or(format!("{name} missing"))?
            .parse::<f64>()?)
    };
    Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

async fn delivered(w: &Worker) -> f64 {
    match http_get(&w.admin, "/metrics").await {
        Ok((200, page)) => metric(&page, "kinesis_worker_records_delivered_total"),
        _ => 0.0,
    }
}

async fn leases(w: &Worker) -> f64 {
    match http_get(&w.admin, "/metrics").await {
        Ok((200, page)) => metric(&page, "kinesis_worker_leases_held"),
        _ => 0.0,
    }
}

async fn put_bulk(p: &Pipeline, n: usize, size: usize) -> Result<Duration> {
    let kinesis = p.env.kinesis().await;
    let started = Instant::now();
    let payload = "x".repeat(size);
    let mut i = 0;
    while i < n {
        let mut req = kinesis.put_records().stream_name(&p.stream);
        let m = 500.min(n - i);
        for j in i..i + m {
            req = req.records(
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{}", j % 1000))
                    .data(aws_sdk_kinesis::primitives::Blob::new(payload.as_bytes()))
                    .build()?,
            );
        }
        let out = req.send().await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err("put failed".into());
        }
        i += m;
    }
    Ok(started.elapsed())
}

/// CPU of one GetRecords client over the passes.
#[derive(Default)]
struct Tally {
    worker_cpu: f64,
    app_cpu: f64,
    records: f64,
    wall: Duration,
    peak_rss: f64,
    /// CPU-s per second of the worker idle at the tip afterwards (lease rounds, reads of
    /// empty shards), summed over the passes.
    idle_rate: f64,
}

/// How long the idle worker is watched after each read.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// Puts `n` records of `size` bytes once, then reads them `passes` times with each of
/// `clients` (`--get-records-client`), the clients taking turns within each pass; each read
/// has a fresh application (its own lease table, from TRIM_HORIZON) and worker process. The
/// worker's and the app's CPU are summed over the delivery windows (first record to last).
async fn throughput(n: usize, size: usize, passes: usize, clients: &[String]) -> Result<()> {
    let mut p = Pipeline::new(8).await?;
    p.test_timings = false;
    let put = put_bulk(&p, n, size).await?;
    // No output file: the app acknowledges and drops every batch.
    let app = p.app_with("nothing", false, &[]).await?;
    let tallies = read_passes(&p, &app, n, passes, clients, &[], None).await?;
    let source = format!(
        "kinesis-mock, {n} records put once in {:.1} s",
        put.as_secs_f64()
    );
    report(&source, size, passes, clients, &tallies);
    drop(app);
    p.cleanup().await
}

/// As [`throughput`], but from the synthetic endpoint (`tests/src/synthetic.rs`): 8 shards
/// of `per_shard` records each, served as fast as the worker asks, in the CBOR `shape`.
async fn synthetic(
    per_shard: u64,
    size: usize,
    passes: usize,
    clients: &[String],
    shape: Shape,
    app_kind: AppKind,
    worker_args: &str,
) -> Result<()> {
    let mut p = Pipeline::new(1).await?;
    p.test_timings = false;
    let server = SyntheticKinesis::start(SyntheticConfig {
        shards: 8,
        per_shard,
        record_size: size,
        page: 10_000,
        shape,
        keys: 1000,
    })
    .await?;
    let app = match app_kind {
        AppKind::Rust => p.app_with("nothing", false, &[]).await?,
        AppKind::Python => python_counter(&p).await?,
    };
    let n = (per_shard * 8) as usize;
    let mut extra = vec!["--kinesis-endpoint", server.endpoint.as_str()];
    // The synthetic endpoint has no read limit: measure the worker at its own speed, not
    // paced to Kinesis's 2 MB/s a shard.
    if !worker_args.contains("--read-kb-per-second") {
        extra.extend(["--read-kb-per-second", "0"]);
    }
    extra.extend(worker_args.split_whitespace());
    let tallies = read_passes(&p, &app, n, passes, clients, &extra, Some(&server)).await?;
    let source =
        format!("synthetic endpoint, {shape:?} CBOR, {n} records a pass, {app_kind:?} app");
    report(&source, size, passes, clients, &tallies);
    drop(app);
    drop(server);
    p.cleanup().await
}

/// The processes of one protocol's app side, and the worker flags it needs.
struct Side {
    /// Long-lived processes (record-app; the bridge; the handler's runtime client).
    procs: Vec<Proc>,
    /// The address the worker delivers to.
    address: String,
    /// The bridge's process, whose log names its children.
    bridge: Option<usize>,
    /// Where the app writes what it received (the latency part).
    out: Option<std::path::PathBuf>,
}

/// The pids of the children the bridge's log names.
fn bridge_children(bridge: &Proc) -> Vec<u32> {
    bridge
        .log_text()
        .lines()
        .filter(|l| l.contains("started the app's process"))
        .filter_map(|l| l.rsplit("pid=").next()?.trim().parse().ok())
        .collect()
}

/// CPU seconds of `pids`, those that are gone counting 0.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

/// A free port on 127.0.0.1 for the worker's Runtime API.
fn runtime_api_address() -> Result<String> {
    Ok(format!(
        "127.0.0.1:{}",
        kinesis_operator_tests::free_port()?
    ))
}

/// The app side of `protocol` before the worker starts: record-app (`grpc`; with an output
/// file when `out` is given, for the receive times), the bridge running the do-nothing kclpy
/// app (`kcl-multilang`), or nothing yet (`lambda`: the worker serves the Runtime API, and
/// [`start_handler`] starts the runtime client once it listens). The worker flags it needs
/// are added to `extra`. With `out`, the Python apps append their receive times there.
async fn protocol_side(
    p: &Pipeline,
    protocol: &str,
    runtime_api: &str,
    out: Option<&std::path::Path>,
    extra: &mut Vec<String>,
) -> Result<Side> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let socket = p.dir.join("app.sock");
    let address = format!("unix://{}", socket.display());
    Ok(match protocol {
        "grpc" => {
            let app = match out {
                Some(_) => p.app("latency", &[]).await?,
                None => p.app_with("nothing", false, &[]).await?,
            };
            Side {
                address: app.address.clone(),
                procs: vec![app.proc],
                bridge: None,
                out: out.map(|_| app.out),
            }
        }
        "kcl-multilang" => {
            let kclpy = p
                .env
                .kclpy
                .clone()
                .ok_or("env.json names no amazon_kclpy")?;
            let mut cmd = std::process::Command::new(binary("kinesis-bridge")?);
            cmd.env("PYTHONPATH", &kclpy)
                .args(["multilang", "--address", &address, "--"])
                .arg(&p.env.python)
                .arg(root.join("kcl/nothing_kclpy_app.py"));
            if let Some(out) = out {
                cmd.env("LATENCY_OUT", out);
            }
            let bridge = Proc::spawn(cmd, p.dir.join("bridge.log"))?;
            until_socket(&socket).await?;
            Side {
                procs: vec![bridge],
                address,
                bridge: Some(0),
                out: out.map(std::path::Path::to_path_buf),
            }
        }
        _ => {
            extra.extend(["--lambda-runtime-api".to_string(), runtime_api.to_string()]);
            Side {
                procs: Vec::new(),
                address,
                bridge: None,
                out: out.map(std::path::Path::to_path_buf),
            }
        }
    })
}

/// For `lambda`, once the worker listens: `python -m awslambdaric nothing_handler.handle`
/// against its Runtime API.
async fn start_handler(p: &Pipeline, side: &mut Side, runtime_api: &str) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    until_listening(runtime_api).await?;
    let mut cmd = std::process::Command::new(&p.env.python);
    cmd.current_dir(root.join("lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .args(["-m", "awslambdaric", "nothing_handler.handle"]);
    if let Some(out) = &side.out {
        cmd.env("LATENCY_OUT", out);
    }
    side.procs
        .push(Proc::spawn(cmd, p.dir.join("handler.log"))?);
    Ok(())
}

/// One read of the synthetic endpoint per app protocol (`--only protocols`).
async fn protocols(per_shard: u64) -> Result<()> {
    for protocol in ["grpc", "kcl-multilang", "lambda"] {
        let mut p = Pipeline::new(1).await?;
        p.test_timings = false;
        let server = SyntheticKinesis::start(SyntheticConfig {
            shards: 8,
            per_shard,
            record_size: 100,
            page: 10_000,
            shape: Shape::Definite,
            keys: 1000,
        })
        .await?;
        server.set_open(false);
        let runtime_api = runtime_api_address()?;
        let mut extra: Vec<String> = [
            "--kinesis-endpoint",
            server.endpoint.as_str(),
            "--read-kb-per-second",
            "0",
            "--get-records-client",
            "cbor",
        ]
        .map(String::from)
        .to_vec();
        let mut side = protocol_side(&p, protocol, &runtime_api, None, &mut extra).await?;
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let w = p.worker_for(
            &kinesis_operator_tests::unique_name("bench"),
            "bench",
            &side.address,
            &extra,
        )?;
        if protocol == "lambda" {
            start_handler(&p, &mut side, &runtime_api).await?;
        }
        wait_for(
            "8 leases",
            Duration::from_secs(120),
            Duration::from_millis(20),
            || async { (leases(&w).await >= 8.0).then_some(()) },
        )
        .await?;
        let children = match side.bridge {
            Some(i) => {
                let bridge = &side.procs[i];
                wait_for(
                    "8 children",
                    Duration::from_secs(60),
                    Duration::from_millis(20),
                    || {
                        let n = bridge_children(bridge).len();
                        async move { (n >= 8).then_some(()) }
                    },
                )
                .await?;
                bridge_children(bridge)
            }
            None => Vec::new(),
        };
        let app_pids: Vec<u32> = side.procs.iter().map(Proc::pid).collect();
        let pid = w.proc.pid();
        let n = (per_shard * 8) as f64;
        let (cpu0, app0, kids0, t0) = (
            cpu_seconds(pid)?,
            cpu_of(&app_pids),
            cpu_of(&children),
            Instant::now(),
        );
        server.set_open(true);
        wait_for(
            "all records",
            Duration::from_secs(900),
            Duration::from_millis(50),
            || async { (delivered(&w).await >= n).then_some(()) },
        )
        .await?;
        let wall = t0.elapsed().as_secs_f64();
        let (worker, app, kids) = (
            cpu_seconds(pid)? - cpu0,
            cpu_of(&app_pids) - app0,
            cpu_of(&children) - kids0,
        );
        let per_m = |cpu: f64| cpu / n * 1e6;
        let (bridge_cpu, app_cpu) = match protocol {
            "kcl-multilang" => (app, kids),
            _ => (0.0, app),
        };
        println!(
            "protocol {protocol:>13}: {n:.0} records of 100 B in {wall:.2} s = {:.0} records/s; CPU per million records: worker {:.2} s, bridge {:.2} s, app {:.2} s, all {:.2} s",
            n / wall,
            per_m(worker),
            per_m(bridge_cpu),
            per_m(app_cpu),
            per_m(worker + bridge_cpu + app_cpu),
        );
        drop(w);
        drop(side);
        drop(server);
        p.cleanup().await?;
    }
    Ok(())
}

/// The app the synthetic reads deliver to (`--app rust|python`).
#[derive(Debug, Clone, Copy)]
enum AppKind {
    /// `record-app`, acknowledging every batch and doing nothing with it.
    Rust,
    /// `examples/pageview-counter-python/counter.py`: parses each record's JSON and counts
    /// it (its counts go to DynamoDB once a minute, so at most once a read).
    Python,
}

/// Starts the Python example on a socket of `p`'s folder, with its counts table in the
/// local DynamoDB.
async fn python_counter(p: &Pipeline) -> Result<App> {
    let socket = p.dir.join("python.sock");
    let address = format!("unix://{}", socket.display());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pageview-counter-python/counter.py");
    let mut cmd = std::process::Command::new(&p.env.python);
    for (k, v) in p.env.worker_env() {
        cmd.env(k, v);
    }
    cmd.env("AWS_DEFAULT_REGION", &p.env.region)
        .arg(script)
        .env("APP_ADDRESS", &address)
        .env(
            "COUNTS_TABLE",
            kinesis_operator_tests::unique_name("bench-counts"),
        )
        .env("FLUSH_INTERVAL_MS", "60000");
    let proc = Proc::spawn(cmd, p.dir.join("python.log"))?;
    until_socket(&socket)
        .await
        .map_err(|e| format!("{e}: {}", proc.log_tail()))?;
    Ok(App {
        proc,
        address,
        out: p.dir.join("python.jsonl"),
    })
}

/// Reads `n` records `passes` times with each client; see [`throughput`]. With `gate` (the
/// synthetic endpoint), the stream stays closed until the worker holds all 8 leases and the
/// window runs from opening it to the last record: the whole read is counted.
async fn read_passes(
    p: &Pipeline,
    app: &App,
    n: usize,
    passes: usize,
    clients: &[String],
    extra: &[&str],
    gate: Option<&SyntheticKinesis>,
) -> Result<Vec<Tally>> {
    let app_pid = app.proc.pid();
    let mut tallies: Vec<Tally> = clients.iter().map(|_| Tally::default()).collect();
    for pass in 0..passes {
        for (client, tally) in clients.iter().zip(tallies.iter_mut()) {
            let application = kinesis_operator_tests::unique_name("bench");
            let mut args = vec!["--get-records-client", client.as_str()];
            args.extend_from_slice(extra);
            let w = p.worker_for(&application, "bench", &app.address, &args)?;
            let pid = w.proc.pid();
            if let Some(server) = gate {
                server.set_open(false);
                wait_for(
                    "8 leases",
                    Duration::from_secs(120),
                    Duration::from_millis(20),
                    || async { (leases(&w).await >= 8.0).then_some(()) },
                )
                .await?;
                // Three empty reads a shard on average, so that start-up is behind us.
                let calls = server.calls();
                wait_for(
                    "empty reads at the tip",
                    Duration::from_secs(60),
                    Duration::from_millis(20),
                    || async { (server.calls() >= calls + 24).then_some(()) },
                )
                .await?;
            } else {
                wait_for(
                    "first record",
                    Duration::from_secs(120),
                    Duration::from_millis(5),
                    || async { (delivered(&w).await > 0.0).then_some(()) },
                )
                .await?;
            }
            let (cpu0, app0, t0, d0) = (
                cpu_seconds(pid)?,
                cpu_seconds(app_pid)?,
                Instant::now(),
                delivered(&w).await,
            );
            if let Some(server) = gate {
                server.set_open(true);
            }
            wait_for(
                "all records",
                Duration::from_secs(900),
                Duration::from_millis(50),
                || async { (delivered(&w).await >= n as f64).then_some(()) },
            )
            .await?;
            let (c, a, t) = (
                cpu_seconds(pid)? - cpu0,
                cpu_seconds(app_pid)? - app0,
                t0.elapsed(),
            );
            let (_, hwm) = memory_mib(pid)?;
            // The same worker idle at the tip: what it spends whatever the records.
            let idle0 = cpu_seconds(pid)?;
            tokio::time::sleep(IDLE_WINDOW).await;
            let idle = (cpu_seconds(pid)? - idle0) / IDLE_WINDOW.as_secs_f64();
            tally.idle_rate += idle;
            eprintln!(
                "  pass {pass} {client}: {:.0} records in {:.2} s, worker CPU {c:.2} s, app CPU {a:.2} s, worker idle {idle:.3} CPU-s/s",
                n as f64 - d0,
                t.as_secs_f64()
            );
            tally.worker_cpu += c;
            tally.app_cpu += a;
            tally.records += n as f64 - d0;
            tally.wall += t;
            tally.peak_rss = tally.peak_rss.max(hwm);
            drop(w);
            let _ = p
                .env
                .dynamodb()
                .await
                .delete_table()
                .table_name(&application)
                .send()
                .await;
        }
    }
    Ok(tallies)
}

fn report(source: &str, size: usize, passes: usize, clients: &[String], tallies: &[Tally]) {
    for (client, t) in clients.iter().zip(tallies) {
        let per_m = |cpu: f64| cpu / t.records * 1e6;
        let idle_rate = t.idle_rate / passes as f64;
        let marginal = (t.worker_cpu - idle_rate * t.wall.as_secs_f64()).max(0.0);
        println!(
            "throughput {size:>5} B, {client:>4} ({source}): {passes} passes delivered {:.0} records in {:.2} s = {:.0} records/s; CPU per million records: worker {:.2} s + app {:.2} s = {:.2} s; worker idle {idle_rate:.3} CPU-s/s, so above idle {:.2} s + app = {:.2} s; worker peak RSS {:.1} MiB",
            t.records,
            t.wall.as_secs_f64(),
            t.records / t.wall.as_secs_f64(),
            per_m(t.worker_cpu),
            per_m(t.app_cpu),
            per_m(t.worker_cpu + t.app_cpu),
            per_m(marginal),
            per_m(marginal + t.app_cpu),
            t.peak_rss,
        );
    }
}

/// One read of `n` 100-byte records by a worker under callgrind (`--callgrind DIR`), per
/// client: the profiles to read with `callgrind_annotate --inclusive=yes`.
/// With `synthetic`, the records come from the synthetic endpoint (8 shards of `n / 8`).
async fn profile(n: usize, clients: &[String], dir: &str, synthetic: bool) -> Result<()> {
    // valgrind cannot create it, and the worker would then never start.
    std::fs::create_dir_all(dir)?;
    let mut p = Pipeline::new(8).await?;
    p.test_timings = false;
    let server = if synthetic {
        Some(
            SyntheticKinesis::start(SyntheticConfig {
                shards: 8,
                per_shard: (n / 8) as u64,
                record_size: 100,
                page: 10_000,
                shape: Shape::Definite,
                keys: 1000,
            })
            .await?,
        )
    } else {
        put_bulk(&p, n, 100).await?;
        None
    };
    let app = p.app_with("nothing", false, &[]).await?;
    for client in clients {
        let out = format!("{dir}/callgrind.{client}.out");
        p.worker_wrapper = vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={out}"),
        ];
        let application = kinesis_operator_tests::unique_name("bench");
        let mut args = vec!["--get-records-client", client.as_str()];
        if let Some(server) = &server {
            args.extend(["--kinesis-endpoint", server.endpoint.as_str()]);
        }
        let w = p.worker_for(&application, "bench", &app.address, &args)?;
        wait_for(
            "all records",
            Duration::from_secs(1800),
            Duration::from_millis(200),
            || async { (delivered(&w).await >= n as f64).then_some(()) },
        )
        .await?;
        // A graceful stop, so that callgrind writes its profile.
        w.stop(Duration::from_secs(120)).await?;
        println!("profile {client}: {out}");
    }
    drop(app);
    p.cleanup().await
}

async fn memory_at_64_shards() -> Result<()> {
    let mut p = Pipeline::new(64).await?;
    p.test_timings = false;
    let app = p.app("a", &[]).await?;
    let w = p.worker("bench", &app.address, &[])?;
    let pid = w.proc.pid();
    wait_for(
        "64 leases",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || async { (leases(&w).await >= 64.0).then_some(()) },
    )
    .await?;
    let (idle_rss, _) = memory_mib(pid)?;
    // One round of 1 KB records through every shard (1000 keys spread over 64 shards).
    put_bulk(&p, 6400, 1024).await?;
    wait_for(
        "6400 records",
        Duration::from_secs(300),
        Duration::from_millis(100),
        || async { (delivered(&w).await >= 6400.0).then_some(()) },
    )
    .await?;
    let (rss, hwm) = memory_mib(pid)?;
    println!(
        "memory with 64 leased shards: RSS idle {idle_rss:.1} MiB; after 6400 x 1 KB records RSS {rss:.1} MiB, peak {hwm:.1} MiB"
    );
    drop(w);
    drop(app);
    p.cleanup().await
}

async fn latency(n: usize, protocols: &[String]) -> Result<()> {
    for protocol in protocols {
        let mut p = Pipeline::new(4).await?;
        p.test_timings = false;
        let runtime_api = runtime_api_address()?;
        let out = p.dir.join("latency.txt");
        let mut extra = Vec::new();
        let mut side = protocol_side(&p, protocol, &runtime_api, Some(&out), &mut extra).await?;
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let w = p.worker_for(
            &kinesis_operator_tests::unique_name("bench"),
            "bench",
            &side.address,
            &extra,
        )?;
        if protocol == "lambda" {
            start_handler(&p, &mut side, &runtime_api).await?;
        }
        wait_for(
            "4 leases",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || async { (leases(&w).await >= 4.0).then_some(()) },
        )
        .await?;
        // Let every shard reach the tip: one record through each first.
        p.put_sequence(8, 0, 1).await?;
        wait_for(
            "warm-up",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { (delivered(&w).await >= 8.0).then_some(()) },
        )
        .await?;
        let kinesis = p.env.kinesis().await;
        for i in 0..n {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos();
            p.put(
                &kinesis,
                &format!("lat-{i}"),
                format!("lat:{now}").as_bytes(),
            )
            .await?;
            // Spread over time so reads happen at the tip, not in bulk.
            tokio::time::sleep(Duration::from_millis(37)).await;
        }
        wait_for(
            "latency records",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { (delivered(&w).await >= (n + 8) as f64).then_some(()) },
        )
        .await?;
        // record-app writes its own output file; the Python apps write to `out`.
        let written = side.out.clone().unwrap_or(out);
        let mut lat = match protocol.as_str() {
            "grpc" => received(&[written.as_path()])
                .iter()
                .filter_map(|r| {
                    let put: u128 = r.data.strip_prefix("lat:")?.parse().ok()?;
                    Some((r.recv_ns().saturating_sub(put)) as f64 / 1e6)
                })
                .collect(),
            // The Python apps write `<put ns> <receive ns>` lines; each batch is acknowledged
            // after its lines are written, so all are there once the worker counts them.
            _ => std::fs::read_to_string(&written)?
                .lines()
                .filter_map(|l| {
                    let (put, recv) = l.split_once(' ')?;
                    let (put, recv): (u128, u128) = (put.parse().ok()?, recv.parse().ok()?);
                    Some(recv.saturating_sub(put) as f64 / 1e6)
                })
                .collect::<Vec<f64>>(),
        };
        lat.sort_by(f64::total_cmp);
        let q = |f: f64| {
            lat.get(((lat.len() as f64 - 1.0) * f).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "latency put -> app at the tip, {protocol:>13} ({} records, the default waits at the tip, 4 shards): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            lat.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
        drop(w);
        drop(side);
        p.cleanup().await?;
    }
    Ok(())
}

/// Two applications polling one shard at its tip through a proxy that enforces Kinesis's
/// read limit of a shard (5 calls and 2 MB a second; the stream has one shard, so the
/// proxy's limit is that shard's): `n` records put one every 37 ms, each app's put → app
/// latency and the calls the proxy refused (`--only shared-tip`). `--worker-binary PATH`
/// runs another build of the worker (the one before a change), `--worker-args "…"` adds
/// flags to both workers.
async fn shared_tip(n: usize, worker_binary: Option<&str>, worker_args: &str) -> Result<()> {
    let mut p = Pipeline::new(1).await?;
    p.test_timings = false;
    if let Some(binary) = worker_binary {
        // The wrapper gets the current worker's path first: run `binary` instead.
        p.worker_wrapper = ["sh", "-c", "shift; exec \"$0\" \"$@\""]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(binary.to_string()))
            .collect();
    }
    let upstream = p
        .env
        .kinesis_endpoint
        .trim_start_matches("http://")
        .to_string();
    let proxy = kinesis_operator_tests::faults::FaultProxy::start(&upstream).await?;
    proxy.limit_reads(5, 2_000_000);
    let mut extra = vec!["--kinesis-endpoint", proxy.endpoint.as_str()];
    extra.extend(worker_args.split_whitespace());
    let apps = [p.app("a", &[]).await?, p.app("b", &[]).await?];
    let workers = [
        p.worker_for(
            &kinesis_operator_tests::unique_name("tip-a"),
            "wa",
            &apps[0].address,
            &extra,
        )?,
        p.worker_for(
            &kinesis_operator_tests::unique_name("tip-b"),
            "wb",
            &apps[1].address,
            &extra,
        )?,
    ];
    for w in &workers {
        wait_for(
            "the lease",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || async { (leases(w).await >= 1.0).then_some(()) },
        )
        .await?;
    }
    p.put_sequence(2, 0, 1).await?;
    for w in &workers {
        wait_for(
            "warm-up",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { (delivered(w).await >= 2.0).then_some(()) },
        )
        .await?;
    }
    // Both at the tip: from here on, every refusal is one at the tip.
    let refused_before = proxy.reads_throttled();
    let throttled_before = [
        worker_metric(&workers[0], "kinesis_worker_read_throttled_total").await,
        worker_metric(&workers[1], "kinesis_worker_read_throttled_total").await,
    ];
    let started = Instant::now();
    let kinesis = p.env.kinesis().await;
    for i in 0..n {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        p.put(
            &kinesis,
            &format!("tip-{i}"),
            format!("lat:{now}").as_bytes(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    for w in &workers {
        wait_for(
            "every record",
            Duration::from_secs(120),
            Duration::from_millis(50),
            || async { (delivered(w).await >= (n + 2) as f64).then_some(()) },
        )
        .await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let refused = proxy.reads_throttled() - refused_before;
    println!(
        "two applications at the tip of one shard, {n} records over {secs:.1} s, reads limited to 5 calls and 2 MB a second: {refused} GetRecords refused ({:.2} a second), {} forwarded in all",
        refused as f64 / secs,
        proxy.forwarded()
    );
    for (i, (app, w)) in apps.iter().zip(&workers).enumerate() {
        let mut lat: Vec<f64> = received(&[app.out.as_path()])
            .iter()
            .filter_map(|r| {
                let put: u128 = r.data.strip_prefix("lat:")?.parse().ok()?;
                Some((r.recv_ns().saturating_sub(put)) as f64 / 1e6)
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let q = |f: f64| {
            lat.get(((lat.len() as f64 - 1.0) * f).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let throttled =
            worker_metric(w, "kinesis_worker_read_throttled_total").await - throttled_before[i];
        println!(
            "  app {}: {} records, put -> app p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; its worker counted {throttled:.0} throttled reads",
            ["a", "b"][i],
            lat.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
    drop(workers);
    p.cleanup().await
}

/// A worker's metric (0 when it cannot be read).
async fn worker_metric(w: &Worker, name: &str) -> f64 {
    match http_get(&w.admin, "/metrics").await {
        Ok((200, page)) => metric(&page, name),
        _ => 0.0,
    }
}

/// Parallel lanes against a slow app: one shard holding `n` records of 1,000 keys, an app
/// that takes 50 ms per call, calls of at most 10 records; each factor reads them all with
/// a fresh application. The wall time runs from the first record delivered to the last.
async fn lanes(n: usize) -> Result<()> {
    let mut p = Pipeline::new(1).await?;
    p.test_timings = false;
    put_bulk(&p, n, 100).await?;
    let app = p.app_with("slow", false, &["--delay-ms", "50"]).await?;
    let mut base = None;
    for factor in ["1", "2", "5", "10"] {
        let application = kinesis_operator_tests::unique_name("lanes");
        let w = p.worker_for(
            &application,
            "bench",
            &app.address,
            &["--parallelization-factor", factor, "--batch-size", "10"],
        )?;
        wait_for(
            "first record",
            Duration::from_secs(120),
            Duration::from_millis(5),
            || async { (delivered(&w).await > 0.0).then_some(()) },
        )
        .await?;
        let (t0, d0) = (Instant::now(), delivered(&w).await);
        wait_for(
            "all records",
            Duration::from_secs(600),
            Duration::from_millis(20),
            || async { (delivered(&w).await >= n as f64).then_some(()) },
        )
        .await?;
        let rate = (n as f64 - d0) / t0.elapsed().as_secs_f64();
        let base = *base.get_or_insert(rate);
        println!(
            "lanes {factor:>2}: {:.0} records in {:.2} s = {rate:.0} records/s ({:.1}x one lane)",
            n as f64 - d0,
            t0.elapsed().as_secs_f64(),
            rate / base
        );
        drop(w);
        p.env.remove(None, &[&application]).await;
    }
    drop(app);
    p.cleanup().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = get("--records", 20_000);
    let passes = get("--passes", 5);
    let clients: Vec<String> = args
        .iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .map_or("sdk,cbor,json", String::as_str)
        .split(',')
        .map(String::from)
        .collect();
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--callgrind")
        .and_then(|i| args.get(i + 1))
    {
        let synthetic = args.iter().any(|a| a == "--synthetic");
        return profile(n, &clients, dir, synthetic).await;
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let run = |part: &str| only.is_none_or(|o| o == part);
    if run("throughput") {
        throughput(n, 100, passes, &clients).await?;
        throughput(get("--records-1k", n), 1024, passes, &clients).await?;
    }
    if run("synthetic") {
        let shape = if args.iter().any(|a| a == "--indefinite") {
            Shape::Indefinite
        } else {
            Shape::Definite
        };
        let per_shard = get("--per-shard", 100_000) as u64;
        let app_kind = match args
            .iter()
            .position(|a| a == "--app")
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
        {
            None | Some("rust") => AppKind::Rust,
            Some("python") => AppKind::Python,
            Some(other) => return Err(format!("--app {other}: rust or python").into()),
        };
        let worker_args = args
            .iter()
            .position(|a| a == "--worker-args")
            .and_then(|i| args.get(i + 1))
            .map_or("", String::as_str);
        let sizes = match args
            .iter()
            .position(|a| a == "--size")
            .and_then(|i| args.get(i + 1))
        {
            Some(s) => vec![s.parse::<usize>()?],
            None => vec![100, 1024],
        };
        for size in sizes {
            let per = if size >= 1024 {
                per_shard / 4
            } else {
                per_shard
            };
            synthetic(per, size, passes, &clients, shape, app_kind, worker_args).await?;
        }
    }
    if run("memory") {
        memory_at_64_shards().await?;
    }
    if run("latency") {
        let protocols: Vec<String> = args
            .iter()
            .position(|a| a == "--latency-protocols")
            .and_then(|i| args.get(i + 1))
            .map_or("grpc,kcl-multilang,lambda", String::as_str)
            .split(',')
            .map(String::from)
            .collect();
        latency(get("--latency-records", 300), &protocols).await?;
    }
    if run("protocols") {
        protocols(get("--per-shard", 25_000) as u64).await?;
    }
    if run("shared-tip") {
        let binary = args
            .iter()
            .position(|a| a == "--worker-binary")
            .and_then(|i| args.get(i + 1))
            .map(String::as_str);
        let worker_args = args
            .iter()
            .position(|a| a == "--worker-args")
            .and_then(|i| args.get(i + 1))
            .map_or("", String::as_str);
        shared_tip(get("--latency-records", 300), binary, worker_args).await?;
    }
    if run("lanes") {
        lanes(get("--lanes-records", 2_000)).await?;
    }
    Ok(())
}
