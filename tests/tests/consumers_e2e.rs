//! Consumers people already have, in pods on the test cluster through the operator, unchanged:
//! amazon-kclpy's own sample app and an aws-kcl (npm) Node consumer
//! (`spec.processor.protocol: kcl-multilang`, behind the kinesis-bridge the operator copies
//! into the app container), and a Lambda handler under the real runtime interface client
//! (`protocol: lambda`, `python -m awslambdaric`), all in `localhost/consumers:dev` (a
//! CPython and a Node.js with the libraries from PyPI and npm, no bridge).
//!
//! Each run: records put, a reshard 2 → 4 while records keep coming, a rolling restart in the
//! middle, more records; every record accounted for from the app containers' logs (followed
//! with `kubectl logs -f` from each pod's start, so a replaced pod's last lines are kept):
//! none lost, each key in order across pods, duplicates only where a failure explains them;
//! and the checkpoints in the lease table. The kclpy run starts from a lease table written as
//! KCL writes it, and no record at or before its checkpoints comes again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use k8s_openapi::api::events::v1::Event;
use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::accounting::account;
use kinesis_operator_tests::cluster::{delete_all, delete_namespace};
use kinesis_operator_tests::fixtures::{OperatorTest, until_replicas};
use kinesis_operator_tests::records::{Put, checkpoints, last_per_shard, put};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const POLL: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(180);
const IMAGE: &str = "localhost/consumers:dev";

/// Follows the `app` container's log of every pod of a namespace into one file per pod.
struct Logs {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Logs {
    fn follow(env: &TestEnv, ns: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (kubectl, kubeconfig) = (env.kubectl.clone(), env.kubeconfig.clone());
        let (ns, out) = (ns.to_string(), dir.to_path_buf());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut following: HashMap<String, Child> = HashMap::new();
            let kube = |args: &[&str]| {
                let mut c = Command::new(&kubectl);
                c.arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["-n", &ns])
                    .args(args);
                c
            };
            while !flag.load(Ordering::Relaxed) {
                let pods = kube(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                for pod in pods.split_whitespace() {
                    // The app's log is what the test counts; the worker's is kept to explain
                    // a failure.
                    for (container, suffix) in [("app", "log"), ("kinesis-worker", "worker")] {
                        let id = format!("{pod}.{suffix}");
                        let file = out.join(&id);
                        // A follower that ended with nothing written (the container had not
                        // started) is started again.
                        let retry = following.get_mut(&id).is_some_and(|c| {
                            matches!(c.try_wait(), Ok(Some(_)))
                                && std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0
                        });
                        if following.contains_key(&id) && !retry {
                            continue;
                        }
                        let Ok(sink) = std::fs::File::create(&file) else {
                            continue;
                        };
                        if let Ok(child) = kube(&[
                            "logs",
                            "-f",
                            "--timestamps",
                            "-c",
                            container,
                            "--pod-running-timeout=120s",
                            pod,
                        ])
                        .stdout(sink)
                        .stderr(Stdio::null())
                        .spawn()
                        {
                            following.insert(id, child);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            for (_, mut child) in following {
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        Ok(Self {
            dir: dir.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Every line of every pod, ordered by the time the container runtime stamped on it
    /// (one node, one clock), without the stamp.
    fn lines(&self) -> Vec<String> {
        let mut stamped: Vec<(String, usize, String)> = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                if let Some((stamp, rest)) = line.split_once(' ') {
                    stamped.push((sortable(stamp), n, rest.to_string()));
                }
            }
        }
        stamped.sort();
        stamped.into_iter().map(|(_, _, l)| l).collect()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An RFC 3339 stamp with its fraction padded to nanoseconds, so stamps sort as text.
fn sortable(stamp: &str) -> String {
    let stamp = stamp.trim_end_matches('Z');
    let (secs, frac) = stamp.split_once('.').unwrap_or((stamp, ""));
    format!("{secs}.{frac:0<9}")
}

/// The KinesisApplication `name` reading `stream` with `processor` and the app container
/// `app` (image, command, env), lease table `table`.
fn application(
    env: &TestEnv,
    name: &str,
    stream: &str,
    table: &str,
    processor: Value,
    app: Value,
) -> Result<KinesisApplication> {
    let creds = json!([
        {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
    ]);
    let mut container = json!({"name": "app", "image": IMAGE, "imagePullPolicy": "Never"});
    if let (Some(c), Some(extra)) = (container.as_object_mut(), app.as_object()) {
        c.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": name},
        "spec": {
            "stream": {"name": stream, "region": env.region, "endpoint": env.kinesis_endpoint,
                       "dynamoDbEndpoint": env.dynamodb_endpoint},
            "applicationName": table,
            "leaseTable": {"deletionPolicy": "Delete"},
            "consumer": {"idleTimeBetweenReadsMs": 100, "checkpointIntervalMs": 1000},
            "processor": processor,
            "worker": {"env": creds},
            "template": {"spec": {"terminationGracePeriodSeconds": 30, "containers": [container]}}
        }
    }))?)
}

/// Restarts every pod through the Deployment (as `kubectl rollout restart` does).
async fn rolling_restart(t: &OperatorTest, name: &str) -> Result<()> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kinesis-operator.io/restarted": unique_name("at")}}}}});
    t.apps
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the Deployment's pods are all of its newest template and ready.
async fn until_rolled_out(t: &OperatorTest, name: &str) -> Result<()> {
    wait_for(&format!("rollout of {name}"), DEADLINE, POLL, || async {
        let d = t.deployments.get_opt(name).await.ok()??;
        let want = d.spec.replicas?;
        let s = d.status?;
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.ready_replicas == Some(want)
            && s.replicas == Some(want);
        done.then_some(())
    })
    .await?;
    Ok(())
}

async fn reshard(env: &TestEnv, stream: &str, to: i32) -> Result<()> {
    env.kinesis()
        .await
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(to)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await?;
    Ok(())
}

/// Turns the ordered log lines into the records processed and the unexplained duplicates.
type Processed = fn(&[String], &HashMap<String, Put>) -> (Vec<(String, usize)>, usize);

/// The scenario both protocols go through; `processed` turns the ordered log lines into the
/// records the app processed, in order, and the duplicates no failure explains.
async fn scenario(
    t: &OperatorTest,
    name: &str,
    table: &str,
    logs: &Logs,
    processed: Processed,
    already: &[Put],
) -> Result<()> {
    let keys = 6;
    // The records of this run come after the ones put before it (their indexes follow).
    let start = already.iter().map(|p| p.index + 1).max().unwrap_or(0);
    let key_names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let mut puts: Vec<Put> = Vec::new();
    let until_all = |puts: Vec<Put>| async move {
        let by_seq: HashMap<String, Put> =
            puts.iter().map(|p| (p.seq.clone(), p.clone())).collect();
        let per_key = puts.iter().map(|p| p.index + 1).max().unwrap_or(0);
        wait_for(
            &format!("{} records processed", puts.len()),
            DEADLINE,
            POLL,
            || {
                let (done, _) = processed(&logs.lines(), &by_seq);
                let seen: HashSet<(String, usize)> = done.into_iter().collect();
                let all = puts
                    .iter()
                    .all(|p| seen.contains(&(p.key.clone(), p.index)));
                async move { all.then_some(()) }
            },
        )
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
        Ok::<usize, Box<dyn std::error::Error>>(per_key)
    };

    puts.extend(put(&t.env, &t.stream, keys, start, 10).await?);
    until_all(puts.clone()).await?;

    // A reshard 2 → 4 while records keep coming: parents are finished before children start.
    reshard(&t.env, &t.stream, 4).await?;
    puts.extend(put(&t.env, &t.stream, keys, start + 10, 10).await?);
    t.env.wait_stream_active(&t.stream).await?;
    until_replicas(&t.deployments, name, 4, true).await?;
    puts.extend(put(&t.env, &t.stream, keys, start + 20, 10).await?);
    until_all(puts.clone()).await?;

    // A rolling restart with records coming: every lease handed over gracefully.
    rolling_restart(t, name).await?;
    puts.extend(put(&t.env, &t.stream, keys, start + 30, 10).await?);
    until_rolled_out(t, name).await?;
    puts.extend(put(&t.env, &t.stream, keys, start + 40, 10).await?);
    let per_key = until_all(puts.clone()).await?;

    // Once more, with nothing coming: the graceful hand-overs checkpoint each shard's last
    // record; the parents are finished.
    rolling_restart(t, name).await?;
    until_rolled_out(t, name).await?;
    // The parents (shards 0 and 1) are finished: SHARD_END, or already deleted once their
    // children started (as KCL's cleanup does); every other shard is at its last record.
    let last = last_per_shard(&puts);
    let parents = ["shardId-000000000000", "shardId-000000000001"];
    let settled = |cps: &BTreeMap<String, String>| {
        last.iter().all(|(shard, seq)| {
            let cp = cps.get(shard).map(String::as_str);
            if parents.contains(&shard.as_str()) {
                cp.is_none() || cp == Some("SHARD_END")
            } else {
                cp == Some(seq.as_str())
            }
        })
    };
    let cps = wait_for(
        "each shard checkpointed at its last record",
        DEADLINE,
        POLL,
        || async {
            let cps = checkpoints(&t.env, table).await.ok()?;
            settled(&cps).then_some(())
        },
    )
    .await;
    if let Err(e) = cps {
        let now = checkpoints(&t.env, table).await?;
        return Err(format!("{e}: {now:?}, last records {last:?}").into());
    }

    // Every record accounted for: none of those put before the adopted checkpoints, each of
    // this run's (counted from `start`).
    let mut by_seq: HashMap<String, Put> =
        puts.iter().map(|p| (p.seq.clone(), p.clone())).collect();
    for p in already {
        by_seq.insert(p.seq.clone(), p.clone());
    }
    let (done, unexplained) = processed(&logs.lines(), &by_seq);
    let old: Vec<&(String, usize)> = done.iter().filter(|(_, i)| *i < start).collect();
    assert!(
        old.is_empty(),
        "records at or before the adopted checkpoints came again: {old:?}"
    );
    let done: Vec<(String, usize)> = done.into_iter().map(|(k, i)| (k, i - start)).collect();
    let accounting = account(&done, &key_names, per_key - start);
    eprintln!(
        "{name}: {} records, {accounting:?}, {unexplained} unexplained duplicates",
        puts.len()
    );
    assert!(accounting.holds(), "{accounting:?}");
    assert_eq!(unexplained, 0, "every duplicate explained by a failure");
    Ok(())
}

/// kclpy's sample prints `Sequence Number: S` for each record it processes (so does the
/// aws-kcl consumer, on stdout, which the bridge logs).
fn kclpy_processed(
    lines: &[String],
    by_seq: &HashMap<String, Put>,
) -> (Vec<(String, usize)>, usize) {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dups = 0;
    for line in lines {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("Sequence Number: ") {
            rest = &rest[at + "Sequence Number: ".len()..];
            let seq: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Some(p) = by_seq.get(&seq) {
                if !seen.insert(seq.clone()) {
                    dups += 1;
                }
                out.push((p.key.clone(), p.index));
            }
        }
    }
    (out, dups)
}

/// The handler prints one JSON line per invocation: what it received and where it failed.
fn lambda_processed(
    lines: &[String],
    by_seq: &HashMap<String, Put>,
) -> (Vec<(String, usize)>, usize) {
    let mut out = Vec::new();
    let mut explained: HashMap<String, bool> = HashMap::new();
    let mut received_before: HashSet<String> = HashSet::new();
    let mut unexplained = 0;
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(received) = v["received"].as_array() else {
            continue;
        };
        let seqs: Vec<String> = received
            .iter()
            .filter_map(|r| r["seq"].as_str().map(String::from))
            .collect();
        let fail_at = if !v["raised"].is_null() {
            Some(0)
        } else {
            v["failed_from"]
                .as_str()
                .and_then(|f| seqs.iter().position(|s| s == f))
        };
        for (pos, seq) in seqs.iter().enumerate() {
            if !received_before.insert(seq.clone()) && !explained.get(seq).copied().unwrap_or(false)
            {
                unexplained += 1;
            }
            explained.insert(seq.clone(), fail_at.is_some_and(|f| pos >= f));
            if fail_at.is_none_or(|f| pos < f)
                && let Some(p) = by_seq.get(seq)
            {
                out.push((p.key.clone(), p.index));
            }
        }
    }
    (out, unexplained)
}

#[tokio::test]
async fn a_kclpy_sample_app_in_pods_adopts_a_kcl_table_and_reads_through_a_reshard_and_a_rollout()
-> Result<()> {
    let t = OperatorTest::with_stream("kclpy", "kclpy", 2, 3).await?;
    t.env.require_image("consumers")?;
    let table = unique_name("kclpy");
    // Records KCL already processed, and the table it left: one lease per shard, checkpointed
    // at the last of them, owned by a KCL worker that is gone.
    let already = put(&t.env, &t.stream, 6, 0, 5).await?;
    let ddb = t.env.dynamodb().await;
    ddb.create_table()
        .table_name(&table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await?;
    for (shard, seq) in last_per_shard(&already) {
        ddb.put_item()
            .table_name(&table)
            .item("leaseKey", AttributeValue::S(shard))
            .item("leaseOwner", AttributeValue::S("kcl-worker-gone".into()))
            .item("leaseCounter", AttributeValue::N("42".into()))
            .item("checkpoint", AttributeValue::S(seq))
            .item("checkpointSubSequenceNumber", AttributeValue::N("0".into()))
            .item(
                "ownerSwitchesSinceCheckpoint",
                AttributeValue::N("0".into()),
            )
            .send()
            .await?;
    }
    let logs = Logs::follow(
        &t.env,
        &t.ns,
        &std::env::temp_dir().join(unique_name("kclpy-logs")),
    )?;
    let app = application(
        &t.env,
        "kclpy",
        &t.stream,
        &table,
        json!({"protocol": "kcl-multilang",
               "command": ["/usr/local/bin/python3", "/app/sample_kclpy_app.py"]}),
        json!({"env": [{"name": "PYTHONUNBUFFERED", "value": "1"}]}),
    )?;
    t.apps.create(&PostParams::default(), &app).await?;
    until_replicas(&t.deployments, "kclpy", 2, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let result = scenario(&t, "kclpy", &table, &logs, kclpy_processed, &already).await;
    drop(logs);
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    result
}

#[tokio::test]
async fn a_lambda_handler_in_pods_reads_through_a_reshard_and_a_rollout() -> Result<()> {
    let t = OperatorTest::with_stream("lambda", "lambda", 2, 3).await?;
    t.env.require_image("consumers")?;
    let table = unique_name("lambda");
    let logs = Logs::follow(
        &t.env,
        &t.ns,
        &std::env::temp_dir().join(unique_name("lambda-logs")),
    )?;
    let app = application(
        &t.env,
        "handler",
        &t.stream,
        &table,
        json!({"protocol": "lambda", "handler": "kinesis_handler.handle"}),
        json!({"workingDir": "/app", "args": ["-m", "awslambdaric", "kinesis_handler.handle"]}),
    )?;
    let mut app = app;
    app.spec.delivery.report_batch_item_failures = Some(true);
    app.spec.delivery.batch_size = Some(20);
    t.apps.create(&PostParams::default(), &app).await?;
    until_replicas(&t.deployments, "handler", 2, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let result = scenario(&t, "handler", &table, &logs, lambda_processed, &[]).await;
    drop(logs);
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    result
}

#[tokio::test]
async fn an_aws_kcl_node_app_in_pods_reads_through_a_reshard_and_a_rollout() -> Result<()> {
    let t = OperatorTest::with_stream("nodekcl", "nodekcl", 2, 3).await?;
    t.env.require_image("consumers")?;
    let table = unique_name("nodekcl");
    let logs = Logs::follow(
        &t.env,
        &t.ns,
        &std::env::temp_dir().join(unique_name("nodekcl-logs")),
    )?;
    // The consumer logs each record with console.log, on stdout (the protocol's channel):
    // the bridge logs those lines and skips them, which is where the accounting reads them.
    let app = application(
        &t.env,
        "nodekcl",
        &t.stream,
        &table,
        json!({"protocol": "kcl-multilang",
               "command": ["/usr/local/bin/node", "/app/sample_kcl_app.js"]}),
        json!({}),
    )?;
    t.apps.create(&PostParams::default(), &app).await?;
    until_replicas(&t.deployments, "nodekcl", 2, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let result = scenario(&t, "nodekcl", &table, &logs, kclpy_processed, &[]).await;
    drop(logs);
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    result
}

/// Waits until the Lambda handler's `logs` show every record of `puts` processed.
async fn until_seen(t: &OperatorTest, logs: &Logs, puts: &[Put]) -> Result<()> {
    let by_seq: HashMap<String, Put> = puts.iter().map(|p| (p.seq.clone(), p.clone())).collect();
    wait_for(
        &format!("{} records processed", puts.len()),
        DEADLINE,
        POLL,
        || {
            let (done, _) = lambda_processed(&logs.lines(), &by_seq);
            let seen: HashSet<(String, usize)> = done.into_iter().collect();
            let all = puts
                .iter()
                .all(|p| seen.contains(&(p.key.clone(), p.index)));
            async move { all.then_some(()) }
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    Ok(())
}

/// Every record of the stream with its arrival time (epoch ms), read from each shard's start.
async fn arrivals(env: &TestEnv, stream: &str) -> Result<HashMap<String, i64>> {
    let kinesis = env.kinesis().await;
    let listed = kinesis.list_shards().stream_name(stream).send().await?;
    let mut out = HashMap::new();
    for shard in listed.shards().iter().map(|s| s.shard_id().to_string()) {
        let mut it = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&shard)
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator()
            .map(str::to_string);
        while let Some(i) = it.take() {
            let page = kinesis.get_records().shard_iterator(i).send().await?;
            for r in page.records() {
                let at = r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok())
                    .ok_or("a record without its arrival time")?;
                out.insert(r.sequence_number().to_string(), at);
            }
            if page.records().is_empty() && page.millis_behind_latest() == Some(0) {
                break;
            }
            it = page.next_shard_iterator().map(str::to_string);
        }
    }
    Ok(out)
}

/// Issue 31, item 2: `spec.rewind.toTimestamp` after a bug fix, with a reshard 2 → 4 between
/// that time and now. The operator stops the workers, moves the checkpoints back (the closed
/// parents get their leases back, their children wait for them again) and starts the
/// workers: every record that arrived at or after the time is delivered again (lost = 0),
/// in per-key order across the reshard (parents before children), and none from before it.
/// status.rewind and the Rewinding/Rewound Events say what was done; a time beyond the
/// stream's retention is refused with the reason and stops nothing.
#[tokio::test]
async fn a_rewind_to_a_time_before_a_reshard_delivers_everything_since_again_in_order() -> Result<()>
{
    use kinesis_operator::crd::RewindSpec;
    let t = OperatorTest::with_stream("rewind", "rewind", 2, 3).await?;
    t.env.require_image("consumers")?;
    let table = unique_name("rewind");
    let first_logs = Logs::follow(
        &t.env,
        &t.ns,
        &std::env::temp_dir().join(unique_name("rewind-logs")),
    )?;
    let mut app = application(
        &t.env,
        "handler",
        &t.stream,
        &table,
        json!({"protocol": "lambda", "handler": "kinesis_handler.handle"}),
        json!({"workingDir": "/app", "args": ["-m", "awslambdaric", "kinesis_handler.handle"]}),
    )?;
    // The handler fails some records once (reported as partial batch failures).
    app.spec.delivery.report_batch_item_failures = Some(true);
    app.spec.delivery.batch_size = Some(20);
    // Kept when the object is deleted (the default), so that it can be created again on it
    // (below); the test removes it at the end.
    app.spec.lease_table.deletion_policy = kinesis_operator::crd::DeletionPolicy::Retain;
    t.apps.create(&PostParams::default(), &app).await?;
    until_replicas(&t.deployments, "handler", 2, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let keys = 6;
    let key_names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    // Before the time.
    let before = put(&t.env, &t.stream, keys, 0, 5).await?;
    until_seen(&t, &first_logs, &before).await?;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    // The time: later than every record put so far, earlier than every one put next (one
    // clock: kinesis-mock stamps arrivals on this machine).
    let to_ms = now_ms() + 2;
    wait_for("the clock past the time", DEADLINE, POLL, || async {
        (now_ms() > to_ms).then_some(())
    })
    .await?;
    let mut since = put(&t.env, &t.stream, keys, 5, 5).await?;
    reshard(&t.env, &t.stream, 4).await?;
    since.extend(put(&t.env, &t.stream, keys, 10, 5).await?);
    t.env.wait_stream_active(&t.stream).await?;
    until_replicas(&t.deployments, "handler", 4, true).await?;
    since.extend(put(&t.env, &t.stream, keys, 15, 5).await?);
    until_seen(&t, &first_logs, &since).await?;
    // The oracle from the stream itself: which records arrived at or after the time.
    let arrived = arrivals(&t.env, &t.stream).await?;
    for p in &before {
        assert!(
            arrived.get(&p.seq).is_some_and(|at| *at < to_ms),
            "{p:?} before the time"
        );
    }
    for p in &since {
        assert!(
            arrived.get(&p.seq).is_some_and(|at| *at >= to_ms),
            "{p:?} after the time"
        );
    }
    drop(first_logs);
    // A parent's lease is deleted once its children all started (as KCL's cleanup does; a
    // child no key hashes to never starts, so not always both): the rewind must make it
    // again, or its records since the time would be skipped.
    let parents = ["shardId-000000000000", "shardId-000000000001"];
    wait_for("a parent's lease deleted", DEADLINE, POLL, || async {
        let cps = checkpoints(&t.env, &table).await.ok()?;
        parents.iter().any(|p| !cps.contains_key(*p)).then_some(())
    })
    .await?;

    let to = k8s_openapi::jiff::Timestamp::from_millisecond(to_ms)?.to_string();
    let patch = json!({"spec": {"rewind": {"toTimestamp": to}}});
    t.apps
        .patch("handler", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let rewound = wait_for("status.rewind Rewound", DEADLINE, POLL, || async {
        let r = t.apps.get("handler").await.ok()?.status?.rewind?;
        (r.to_timestamp == to && r.phase == "Rewound").then_some(r)
    })
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    eprintln!("rewind: {}", rewound.message);
    // Both parents (closed since the time) and the four children.
    assert_eq!(rewound.shards_rewound, Some(6), "{rewound:?}");
    let made_again: usize = rewound
        .message
        .split_once(" lease(s) made again")
        .and_then(|(head, _)| head.rsplit('(').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        made_again >= 1,
        "a deleted parent's lease made again: {rewound:?}"
    );
    let replay_logs = Logs::follow(
        &t.env,
        &t.ns,
        &std::env::temp_dir().join(unique_name("rewind-replay")),
    )?;
    until_replicas(&t.deployments, "handler", 4, true).await?;
    until_seen(&t, &replay_logs, &since).await?;

    let mut by_seq: HashMap<String, Put> =
        since.iter().map(|p| (p.seq.clone(), p.clone())).collect();
    for p in &before {
        by_seq.insert(p.seq.clone(), p.clone());
    }
    let (done, unexplained) = lambda_processed(&replay_logs.lines(), &by_seq);
    let early: Vec<&(String, usize)> = done.iter().filter(|(_, i)| *i < 5).collect();
    assert!(
        early.is_empty(),
        "records from before the time came again: {early:?}"
    );
    let replayed: Vec<(String, usize)> = done.into_iter().map(|(k, i)| (k, i - 5)).collect();
    let accounting = account(&replayed, &key_names, 15);
    eprintln!(
        "replay of {} records since the time: {accounting:?}, {unexplained} unexplained duplicates",
        since.len()
    );
    assert!(accounting.holds(), "{accounting:?}");
    assert_eq!(unexplained, 0);
    drop(replay_logs);

    let events: Api<Event> = Api::namespaced(t.client.clone(), &t.ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["Rewinding", "Rewound"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // Beyond the retention (24 h): refused, and the workers keep running.
    let old =
        k8s_openapi::jiff::Timestamp::from_millisecond(now_ms() - 48 * 3_600_000)?.to_string();
    let mut spec = t.apps.get("handler").await?.spec;
    spec.rewind = Some(RewindSpec {
        to_timestamp: old.clone(),
    });
    let patch = json!({"spec": {"rewind": spec.rewind}});
    t.apps
        .patch("handler", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let refused = wait_for("status.rewind Refused", DEADLINE, POLL, || async {
        let r = t.apps.get("handler").await.ok()?.status?.rewind?;
        (r.to_timestamp == old && r.phase == "Refused").then_some(r)
    })
    .await?;
    assert!(refused.message.contains("retention"), "{refused:?}");
    let d = t.deployments.get("handler").await?;
    assert_eq!(d.spec.replicas, Some(4), "a refused rewind stops nothing");

    // The object deleted (the table kept: Retain) and created again without its status, the
    // same time in spec.rewind (a restore from a backup, GitOps applying it again): the table
    // records the rewind, so it is not rewound again.
    delete_all(&t.apps).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(t.client.clone(), &t.ns);
    let selector = kinesis_operator::crd::labels("handler")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    wait_for("the worker pods gone", DEADLINE, POLL, || async {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await?;
    let processed: Vec<String> = checkpoints(&t.env, &table)
        .await?
        .into_iter()
        .filter(|(k, v)| k.starts_with("shardId-") && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|(k, _)| k)
        .collect();
    assert!(!processed.is_empty(), "shards processed past the time");
    let mut again = app.clone();
    again.spec.rewind = Some(RewindSpec {
        to_timestamp: to.clone(),
    });
    t.apps.create(&PostParams::default(), &again).await?;
    let second = wait_for(
        "the recreated object's status.rewind",
        DEADLINE,
        POLL,
        || async {
            let r = t.apps.get("handler").await.ok()?.status?.rewind?;
            (r.to_timestamp == to && r.phase != "Stopping").then_some(r)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    eprintln!("recreated: {}", second.message);
    assert!(
        second.phase == "Rewound" && second.message.contains("already rewound"),
        "the recreated object rewound again: {second:?}"
    );
    let after = checkpoints(&t.env, &table).await?;
    let moved: Vec<&String> = processed
        .iter()
        .filter(|k| after.get(*k).is_none_or(|v| v == "AT_TIMESTAMP"))
        .collect();
    assert!(moved.is_empty(), "checkpoints moved back again: {moved:?}");
    // The Event follows the status.
    wait_for("Event RewindAlreadyDone", DEADLINE, POLL, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .any(|e| e.reason.as_deref() == Some("RewindAlreadyDone"))
            .then_some(())
    })
    .await?;
    until_replicas(&t.deployments, "handler", 4, true).await?;

    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    Ok(())
}
