//! KCL MultiLang apps, unchanged: amazon-kclpy's own sample app (from its PyPI sdist, not a
//! line changed) and a Node.js consumer on npm's aws-kcl, each behind `kinesis-bridge
//! multilang`, fed by `kinesis-worker run` from kinesis-mock, with leases and checkpoints in
//! moto's DynamoDB.
//!
//! The sample prints `Record (Partition Key: K, Sequence Number: S, …` to stderr for each
//! record; the bridge logs its children's stderr, and the test accounts for every record put
//! from that log: none lost, each key in order, every duplicate explained by a fault.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use kinesis_operator_tests::accounting::account;
use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, until_metric, until_socket};
use kinesis_operator_tests::process::{Proc, binary};
use kinesis_operator_tests::records::{Put, checkpoints, last_per_shard, put};
use kinesis_operator_tests::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The sequence numbers the sample app printed, in the order it printed them.
fn printed_sequence_numbers(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = log;
    while let Some(at) = rest.find("Sequence Number: ") {
        rest = &rest[at + "Sequence Number: ".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        out.push(digits);
    }
    out
}

/// `(shard, pid)` of each child the bridge started, in order.
fn children(log: &str) -> Vec<(String, u32)> {
    log.lines()
        .filter(|l| l.contains("started the app's process"))
        .filter_map(|l| {
            let field = |name: &str| {
                let at = l.find(&format!("{name}="))? + name.len() + 1;
                Some(l[at..].split_whitespace().next()?.to_string())
            };
            Some((
                field("shard")?,
                field("pid")?.trim_end_matches(':').parse().ok()?,
            ))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The third field is the state; a zombie has exited.
    stat.split_whitespace()
        .nth(2)
        .is_some_and(|state| state != "Z")
}

async fn until_printed(bridge: &Proc, n: usize) -> Result<()> {
    wait_for(
        &format!("{n} records printed by the sample app"),
        DEADLINE,
        POLL,
        || async {
            let seen: std::collections::HashSet<String> =
                printed_sequence_numbers(&bridge.log_text())
                    .into_iter()
                    .collect();
            (seen.len() >= n).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", bridge.log_tail()).into())
}

/// Starts `kinesis-bridge multilang` on a socket of `p`'s folder with `env`, its `flags`,
/// running `command`; waits for its socket. The bridge and the address it serves.
async fn start_bridge(
    p: &Pipeline,
    env: &[(&str, &std::ffi::OsStr)],
    flags: &[&str],
    command: &[&std::ffi::OsStr],
) -> Result<(Proc, String)> {
    let socket = p.dir.join("bridge.sock");
    let address = format!("unix://{}", socket.display());
    let mut cmd = Command::new(binary("kinesis-bridge")?);
    cmd.envs(env.iter().copied())
        .env("LOG_LEVEL", "info")
        .args(["multilang", "--address", &address])
        .args(flags)
        .arg("--")
        .args(command);
    let bridge = Proc::spawn(cmd, p.dir.join("bridge.log"))?;
    until_socket(&socket)
        .await
        .map_err(|e| format!("{e}: {}", bridge.log_tail()))?;
    Ok((bridge, address))
}

/// Waits until the worker acknowledged at least `n` records.
async fn until_acknowledged(
    worker: &kinesis_operator_tests::pipeline::Worker,
    n: usize,
) -> Result<()> {
    until_metric(
        &worker.admin,
        &format!("{n} records acknowledged"),
        "kinesis_worker_records_delivered_total",
        n as f64,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_kclpy_sample_app_gets_every_record_in_order_through_a_crash_and_a_hang() -> Result<()>
{
    let p = Pipeline::new(2).await?;
    let kclpy = p
        .env
        .kclpy
        .clone()
        .ok_or("env.json names no amazon_kclpy: run `cargo xtask env up`")?;
    // The sample writes its log without newlines: unbuffered, each record's line reaches
    // the bridge's log when it is written (buffered, a killed child's last lines would be
    // lost with it and look like lost records).
    let sample = kclpy.join("samples/sample_kclpy_app.py");
    let (bridge, address) = start_bridge(
        &p,
        &[
            ("PYTHONPATH", kclpy.as_os_str()),
            ("PYTHONUNBUFFERED", "1".as_ref()),
        ],
        &["--timeout-seconds", "3"],
        &[p.env.python.as_os_str(), sample.as_os_str()],
    )
    .await?;
    let worker = p.worker("w1", &address, &[])?;

    let keys = 6;
    let mut puts = put(&p.env, &p.stream, keys, 0, 20).await?;
    until_printed(&bridge, puts.len()).await?;

    // A crash: one shard's child killed between batches. Its next batch fails, the worker
    // retries it, and the bridge starts a new child at the last checkpoint.
    let started = children(&bridge.log_text());
    assert_eq!(started.len(), 2, "one child per shard: {started:?}");
    let (crashed_shard, crashed) = started[0].clone();
    Command::new("kill")
        .args(["-KILL", &crashed.to_string()])
        .status()?;
    puts.extend(put(&p.env, &p.stream, keys, 20, 20).await?);
    until_printed(&bridge, puts.len()).await?;

    // A hang: the other child stopped (SIGSTOP). Its next batch gets no status within the
    // bridge's 3 s timeout: the child is killed and only that shard's call fails.
    let (hung_shard, hung) = started[1].clone();
    Command::new("kill")
        .args(["-STOP", &hung.to_string()])
        .status()?;
    puts.extend(put(&p.env, &p.stream, keys, 40, 20).await?);
    until_printed(&bridge, puts.len()).await?;

    let log = bridge.log_text();
    let all = children(&log);
    assert!(
        all.iter()
            .any(|(s, pid)| *s == crashed_shard && *pid != crashed)
            && all.iter().any(|(s, pid)| *s == hung_shard && *pid != hung),
        "a new child for each failed shard: {all:?}"
    );
    assert!(
        !alive(crashed) && !alive(hung),
        "the failed children are gone"
    );
    assert!(
        log.contains("exited") && log.contains("did not finish processRecords within 3s"),
        "the crash and the hang are named in the bridge's log:\n{}",
        bridge.log_tail()
    );

    // Every record accounted for, per key in order.
    let by_seq: HashMap<&str, &Put> = puts.iter().map(|r| (r.seq.as_str(), r)).collect();
    let deliveries: Vec<(String, usize)> = printed_sequence_numbers(&log)
        .iter()
        .filter_map(|s| by_seq.get(s.as_str()).map(|r| (r.key.clone(), r.index)))
        .collect();
    let key_names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let accounting = account(&deliveries, &key_names, 60);
    assert!(accounting.holds(), "{accounting:?}");
    // A replacement child starts over from the last checkpoint (the sample checkpoints on
    // its first batch, then every 30 s), so records come twice only on the two shards whose
    // child failed.
    let mut seen = std::collections::HashSet::new();
    for s in printed_sequence_numbers(&log) {
        if !seen.insert(s.clone())
            && let Some(r) = by_seq.get(s.as_str())
        {
            assert!(
                r.shard == crashed_shard || r.shard == hung_shard,
                "{}:{} came twice on shard {}, whose child never failed",
                r.key,
                r.index,
                r.shard
            );
        }
    }
    eprintln!("crash and hang: {accounting:?}");

    // A graceful stop: shutdownRequested to each child, whose checkpoint() the worker writes
    // before it lets the leases go. Each shard's checkpoint is its last record.
    let code = worker.stop(Duration::from_secs(30)).await?;
    assert_eq!(code, Some(0));
    let checkpoints = checkpoints(&p.env, &p.app).await?;
    for (shard, seq) in &last_per_shard(&puts) {
        assert_eq!(
            checkpoints.get(shard),
            Some(seq),
            "shard {shard}: {checkpoints:?}"
        );
    }
    assert!(
        bridge
            .log_text()
            .contains("Shutdown has been requested, checkpointing."),
        "the sample's shutdown_requested ran"
    );
    // The bridge outlives the worker and stops on its own SIGTERM, leaving no child.
    let pids: Vec<u32> = children(&bridge.log_text()).iter().map(|c| c.1).collect();
    bridge.signal("TERM");
    let mut bridge = bridge;
    wait_for("the bridge to exit", Duration::from_secs(20), POLL, || {
        let exited = bridge.exited();
        async move { exited.map(drop) }
    })
    .await?;
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "no child left: {pids:?}"
    );
    p.cleanup().await
}

/// npm's aws-kcl (2.3.2, pure JavaScript, installed unchanged) with a consumer written against
/// its public API the way the upstream sample is (tests/kcl/sample_kcl_app.js). It logs on
/// stdout, the protocol's own channel: those lines are skipped, every record arrives in key
/// order, and its per-batch checkpoints reach the table.
#[tokio::test]
async fn the_aws_kcl_node_consumer_gets_every_record_in_order_and_its_stdout_logs_are_skipped()
-> Result<()> {
    let p = Pipeline::new(2).await?;
    let node_path = p
        .env
        .aws_kcl
        .clone()
        .ok_or("env.json names no aws-kcl: run `cargo xtask env up`")?;
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kcl/sample_kcl_app.js");
    let (bridge, address) = start_bridge(
        &p,
        &[("NODE_PATH", node_path.as_os_str())],
        &[],
        &["node".as_ref(), app.as_os_str()],
    )
    .await?;
    let worker = p.worker("w1", &address, &[])?;
    let keys = 6;
    let puts = put(&p.env, &p.stream, keys, 0, 30).await?;
    until_printed(&bridge, puts.len()).await?;

    let log = bridge.log_text();
    assert!(
        log.contains("not a protocol message, skipped") && log.contains("initialize shardId-"),
        "the consumer's own stdout lines are logged and skipped:\n{}",
        bridge.log_tail()
    );
    let by_seq: HashMap<&str, &Put> = puts.iter().map(|r| (r.seq.as_str(), r)).collect();
    let deliveries: Vec<(String, usize)> = printed_sequence_numbers(&log)
        .iter()
        .filter_map(|s| by_seq.get(s.as_str()).map(|r| (r.key.clone(), r.index)))
        .collect();
    let key_names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let accounting = account(&deliveries, &key_names, 30);
    assert!(accounting.holds(), "{accounting:?}");
    assert_eq!(accounting.duplicates, 0, "{accounting:?}");

    // Each batch's checkpoint (the consumer names its last sequence number) is written at
    // the next flush; a graceful stop writes the rest.
    let code = worker.stop(Duration::from_secs(30)).await?;
    assert_eq!(code, Some(0));
    let cps = checkpoints(&p.env, &p.app).await?;
    for (shard, seq) in &last_per_shard(&puts) {
        assert_eq!(cps.get(shard), Some(seq), "shard {shard}: {cps:?}");
    }
    assert!(
        bridge.log_text().contains("shutdown requested shardId-"),
        "the consumer's shutdownRequested ran"
    );
    p.cleanup().await
}

/// An app that buffers (tests/kcl/buffering_kclpy_app.py: it writes what it got, then
/// checkpoints, every third batch) loses its child between two flushes. The worker retries
/// only the failed batch; the replacement child must get every batch acknowledged since the
/// last checkpoint again first, or the buffered records are never processed.
#[tokio::test]
async fn a_replacement_child_starts_over_from_the_checkpoint_so_a_buffering_app_loses_nothing()
-> Result<()> {
    let p = Pipeline::new(1).await?;
    let kclpy = p
        .env
        .kclpy
        .clone()
        .ok_or("env.json names no amazon_kclpy: run `cargo xtask env up`")?;
    let out = p.dir.join("processed.txt");
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kcl/buffering_kclpy_app.py");
    let (bridge, address) = start_bridge(
        &p,
        &[("PYTHONPATH", kclpy.as_os_str()), ("OUT", out.as_os_str())],
        &[],
        &[p.env.python.as_os_str(), app.as_os_str()],
    )
    .await?;
    let worker = p.worker("w1", &address, &["--batch-size", "4"])?;
    let processed = || std::fs::read_to_string(&out).unwrap_or_default();

    // 4 batches of 4: the app wrote the first 3 and checkpointed; the 4th is buffered.
    let mut puts = Vec::new();
    for i in 0..4 {
        puts.extend(put(&p.env, &p.stream, 4, i, 1).await?);
        until_acknowledged(&worker, puts.len()).await?;
    }
    assert_eq!(
        processed().lines().count(),
        12,
        "three batches flushed:\n{}",
        processed()
    );
    let (_, pid) = children(&bridge.log_text())
        .first()
        .cloned()
        .ok_or("no child started")?;
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    puts.extend(put(&p.env, &p.stream, 4, 4, 2).await?);

    // Every record acknowledged (the last ones by the replacement child), then a graceful
    // stop flushes what that child holds.
    until_acknowledged(&worker, puts.len()).await?;
    assert!(
        children(&bridge.log_text()).len() >= 2,
        "a replacement child"
    );
    let code = worker.stop(Duration::from_secs(30)).await?;
    assert_eq!(code, Some(0));
    let seen: std::collections::HashSet<String> = processed()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect();
    let lost: Vec<String> = puts
        .iter()
        .filter(|r| !seen.contains(&r.seq))
        .map(|r| format!("{}:{}", r.key, r.index))
        .collect();
    assert!(
        lost.is_empty(),
        "records the killed child had buffered were never processed: {lost:?}\n{}",
        bridge.log_tail()
    );
    p.cleanup().await
}
