//! The operator with many KinesisApplications, in steady state, on the local cluster: its
//! RSS, CPU per minute, reconciles, and Kubernetes and AWS calls per minute (issue 13).
//!
//! Every application has `spec.replicas: 0` (a Deployment with no pods: this machine cannot
//! run 500 worker pods), its own lease table (created by the operator in moto), and reads one
//! of a few streams in kinesis-mock; everything else is what the operator does for any
//! application: ListShards, claim, Scan, server-side applies, status, reshard watch. The
//! operator is the binary the tests run (a debug build unless `--release` built it).
//!
//! Run: `cargo xtask env up && cargo build -p kinesis-operator && cargo run -p
//! kinesis-operator-tests --bin operator_scale -- --applications 500`
//! Options: `--applications N --streams N --shards N --resync-seconds N
//! --shard-poll-seconds N --steady-secs N --leases N`.
//!
//! `--leases N` (issue 30): once every application is reconciled, its lease table is filled
//! with N lease items as a worker fleet writes them (owner, counter, a checkpoint, hash
//! range, parents, ≈ 300 bytes each), so the operator's memory is measured against tables of
//! a 10,000-shard stream (or one in the middle of a reshard) while the stream itself stays
//! small (kinesis-mock is slow on large streams).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::cluster::{
    Operator, delete_namespace, install_crd, namespace, operator_with,
};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

struct Opts {
    applications: usize,
    streams: usize,
    shards: i32,
    resync: u64,
    shard_poll: u64,
    steady_secs: u64,
    leases: usize,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        applications: 500,
        streams: 10,
        shards: 4,
        resync: 30,
        shard_poll: 5,
        steady_secs: 180,
        leases: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args
            .get(i + 1)
            .ok_or(format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--applications" => o.applications = v.parse()?,
            "--streams" => o.streams = v.parse()?,
            "--shards" => o.shards = v.parse()?,
            "--resync-seconds" => o.resync = v.parse()?,
            "--shard-poll-seconds" => o.shard_poll = v.parse()?,
            "--steady-secs" => o.steady_secs = v.parse()?,
            "--leases" => o.leases = v.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
        i += 2;
    }
    Ok(o)
}

/// CPU seconds (user + system) and RSS, VmHWM (KiB) of process `pid`.
fn usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').ok_or("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).ok_or("utime")?.parse::<f64>()? + f.get(12).ok_or("stime")?.parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Ok((ticks / 100.0, kib("VmRSS:"), kib("VmHWM:")))
}

/// Every counter series on the operator's metrics page whose name starts with `prefix`.
async fn counters(op: &Operator, prefix: &str) -> Result<BTreeMap<String, f64>> {
    let (_, page) = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics").await?;
    Ok(page
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            Some((n.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// Writes `n` lease items into `table`, 25 per BatchWriteItem, as a fleet of 500 workers
/// would hold them.
async fn fill(env: &TestEnv, table: &str, n: usize) -> Result<()> {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let dynamodb = env.dynamodb().await;
    let s = |v: String| AttributeValue::S(v);
    let items: Vec<WriteRequest> = (0..n)
        .map(|i| {
            let item = PutRequest::builder()
                .item("leaseKey", s(format!("shardId-{i:012}")))
                .item(
                    "leaseOwner",
                    s(format!("worker-{:03}-7c49bdfcdb-qfkpg", i % 500)),
                )
                .item("leaseCounter", AttributeValue::N((1000 + i).to_string()))
                .item(
                    "checkpoint",
                    s(format!("4965{:052}", i as u64 * 7_919_000_000_017)),
                )
                .item("checkpointSubSequenceNumber", AttributeValue::N("0".into()))
                .item(
                    "ownerSwitchesSinceCheckpoint",
                    AttributeValue::N("0".into()),
                )
                .item(
                    "parentShardIds",
                    AttributeValue::Ss(vec![format!("shardId-{:012}", n + i / 2)]),
                )
                .item(
                    "startingHashKey",
                    s(format!("{:039}", i as u128 * 34_028_236_692_093)),
                )
                .item(
                    "endingHashKey",
                    s(format!("{:039}", (i as u128 + 1) * 34_028_236_692_093)),
                )
                .build()?;
            Ok(WriteRequest::builder().put_request(item).build())
        })
        .collect::<Result<_>>()?;
    for chunk in items.chunks(25) {
        let mut pending = Some(chunk.to_vec());
        while let Some(batch) = pending.take().filter(|b| !b.is_empty()) {
            let out = dynamodb
                .batch_write_item()
                .request_items(table, batch)
                .send()
                .await?;
            pending = out.unprocessed_items.and_then(|mut m| m.remove(table));
            if pending.as_ref().is_some_and(|p| !p.is_empty()) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

fn app(i: usize, env: &TestEnv, stream: &str, run: &str) -> Result<KinesisApplication> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": format!("app-{i:04}")},
        "spec": {
            "stream": {
                "name": stream,
                "region": env.region,
                "endpoint": env.kinesis_endpoint,
                "dynamoDbEndpoint": env.dynamodb_endpoint,
            },
            "applicationName": format!("{run}-{i:04}"),
            "leaseTable": {"deletionPolicy": "Delete"},
            "replicas": 0,
            "template": {"spec": {"containers": [{"name": "app", "image": "example.invalid/none"}]}},
        }
    }))?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "scale").await?;
    let run = unique_name("scale");
    let streams: Vec<String> = (0..o.streams).map(|i| format!("{run}-s{i}")).collect();
    for s in &streams {
        env.create_stream(s, o.shards).await?;
    }
    let op = operator_with(
        &env,
        &ns,
        o.resync,
        "operator",
        &["--shard-poll-seconds", &o.shard_poll.to_string()],
    )?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    for i in 0..o.applications {
        apps.create(
            &PostParams::default(),
            &app(i, &env, &streams[i % streams.len()], &run)?,
        )
        .await?;
    }
    println!(
        "{} applications created in {:.1} s",
        o.applications,
        started.elapsed().as_secs_f64()
    );
    let settled = wait_for(
        "every application reconciled (LeaseTableReady, 0 workers)",
        Duration::from_secs(900),
        Duration::from_secs(2),
        || async {
            let list = apps.list(&ListParams::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|a| {
                    a.status.as_ref().is_some_and(|s| {
                        s.workers.as_ref().is_some_and(|w| w.desired == 0)
                            && s.conditions
                                .iter()
                                .any(|c| c.type_ == "LeaseTableReady" && c.status == "True")
                    })
                })
                .count();
            (done == o.applications).then_some(done)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    println!(
        "{settled} applications reconciled after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if o.leases > 0 {
        let filling = Instant::now();
        for i in 0..o.applications {
            fill(&env, &format!("{run}-{i:04}"), o.leases).await?;
        }
        println!(
            "{} lease items written into each table in {:.1} s",
            o.leases,
            filling.elapsed().as_secs_f64()
        );
    }
    // Let the first resync pass (the creation's burst is not steady state).
    tokio::time::sleep(Duration::from_secs(o.resync + o.resync / 10 + 2)).await;

    let pid = op.proc.pid();
    let (cpu0, _, _) = usage(pid)?;
    let before = counters(&op, "kinesis_operator_").await?;
    let t0 = Instant::now();
    let mut max_rss = 0;
    while t0.elapsed() < Duration::from_secs(o.steady_secs) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        max_rss = max_rss.max(usage(pid)?.1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, rss, hwm) = usage(pid)?;
    let after = counters(&op, "kinesis_operator_").await?;
    let per_min = 60.0 / secs;
    println!(
        "steady state {secs:.0} s, {} applications, {} streams x {} shards, resync {} s, shard poll {} s",
        o.applications, o.streams, o.shards, o.resync, o.shard_poll
    );
    println!(
        "operator: RSS {:.1} MiB now, {:.1} MiB max sampled, {:.1} MiB high-water; CPU {:.2} s/min",
        rss as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (cpu1 - cpu0) * per_min
    );
    for (k, v) in &after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        let interesting =
            (k.contains("_total") || k.contains("reconcile_duration_seconds_count")) && d > 0.0;
        if interesting {
            println!("{:>10.1}/min  {k}", d * per_min);
        }
    }

    // Clean up: the finalizers delete the lease tables.
    apps.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for(
        "applications deleted",
        Duration::from_secs(600),
        Duration::from_secs(2),
        || async {
            apps.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    for s in &streams {
        env.remove(Some(s), &[]).await;
    }
    Ok(())
}
