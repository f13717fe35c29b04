//! Record pipeline benchmark on the local environment: a release `kinesis-worker run` process
//! delivering to a do-nothing `record-app`, measured from /proc (the worker's own CPU time
//! and memory, not the emulator's).
//!
//! - CPU-seconds of the worker per million records delivered, for 100-byte and 1 KB records
//!   (records put first, then read as fast as the worker and kinesis-mock go);
//! - the worker's RSS holding 64 shard leases, idle and after a record through every shard;
//! - put → app latency (p50/p99) at the tip with the default idle time.
//!
//! Run: `cargo xtask env up && cargo run --release -p kinesis-operator-tests --bin pipeline_bench`
//! Options: `--records N` (put once per size, default 20000: kinesis-mock takes ~3 ms per
//! record to put), `--passes N` (reads of them, default 5), `--latency-records N` (default 300).

use std::time::{Duration, Instant};

use kinesis_operator_tests::pipeline::{Pipeline, Worker, http_get, metric, received};
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

/// Puts `n` records of `size` bytes once, then reads them `passes` times, each pass with a
/// fresh application (its own lease table, from TRIM_HORIZON) and worker process: the
/// worker's CPU is summed over the passes' delivery windows (first record to last).
async fn throughput(n: usize, size: usize, passes: usize) -> Result<()> {
    let mut p = Pipeline::new(4).await?;
    p.test_timings = false;
    let put = put_bulk(&p, n, size).await?;
    // No output file: the app acknowledges and drops every batch.
    let app = p.app_with("nothing", false, &[]).await?;
    let (mut cpu, mut counted, mut wall, mut peak) = (0.0, 0.0, Duration::ZERO, 0.0f64);
    for pass in 0..passes {
        let application = kinesis_operator_tests::unique_name("bench");
        let w = p.worker_for(&application, "bench", &app.address, &[])?;
        let pid = w.proc.pid();
        wait_for(
            "first record",
            Duration::from_secs(120),
            Duration::from_millis(5),
            || async { (delivered(&w).await > 0.0).then_some(()) },
        )
        .await?;
        let (cpu0, t0, d0) = (cpu_seconds(pid)?, Instant::now(), delivered(&w).await);
        wait_for(
            "all records",
            Duration::from_secs(900),
            Duration::from_millis(50),
            || async { (delivered(&w).await >= n as f64).then_some(()) },
        )
        .await?;
        let (c, t) = (cpu_seconds(pid)? - cpu0, t0.elapsed());
        let (_, hwm) = memory_mib(pid)?;
        eprintln!(
            "  pass {pass}: {:.0} records in {:.2} s, CPU {c:.2} s",
            n as f64 - d0,
            t.as_secs_f64()
        );
        cpu += c;
        counted += n as f64 - d0;
        wall += t;
        peak = peak.max(hwm);
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
    println!(
        "throughput {size:>5} B: {n} records put once in {:.1} s; {passes} passes delivered {counted:.0} records in {:.2} s = {:.0} records/s; worker CPU {cpu:.2} s = {:.2} CPU-s per million records; peak RSS {peak:.1} MiB",
        put.as_secs_f64(),
        wall.as_secs_f64(),
        counted / wall.as_secs_f64(),
        cpu / counted * 1e6,
    );
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

async fn latency(n: usize) -> Result<()> {
    let mut p = Pipeline::new(4).await?;
    p.test_timings = false;
    let app = p.app("a", &[]).await?;
    let w = p.worker("bench", &app.address, &[])?;
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
    println!(
        "latency put -> app at the tip ({} records, idle time 250 ms, 4 shards): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    drop(w);
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
    throughput(n, 100, passes).await?;
    throughput(n, 1024, passes).await?;
    memory_at_64_shards().await?;
    latency(get("--latency-records", 300)).await?;
    Ok(())
}
