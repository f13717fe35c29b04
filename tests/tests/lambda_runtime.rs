//! Lambda handlers, unchanged: `kinesis-worker run --lambda-runtime-api` serves the Lambda
//! Runtime API, and the real runtime interface client (PyPI awslambdaric, `python -m
//! awslambdaric module.handler`, as AWS's Python base image starts it) runs a handler written
//! for a Kinesis event source mapping (tests/lambda/kinesis_handler.py).
//!
//! The handler fails some records once through `batchItemFailures` and raises once; the test
//! accounts for every record from what the handler printed: none lost, each key in order,
//! and every record delivered twice explained by a failure of an earlier invocation at or
//! before it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kinesis_operator_tests::accounting::account;
use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, until_listening};
use kinesis_operator_tests::process::Proc;
use kinesis_operator_tests::records::{Put, checkpoints, last_per_shard, put};
use kinesis_operator_tests::wait_for;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// One invocation as the handler printed it.
#[derive(serde::Deserialize, Debug)]
struct Invocation {
    request: String,
    function: String,
    remaining_ms: i64,
    received: Vec<Received>,
    failed_from: Option<String>,
    raised: Option<String>,
}

#[derive(serde::Deserialize, Debug, Clone)]
struct Received {
    key: String,
    seq: String,
    data: String,
}

fn invocations(handler: &Proc) -> Vec<Invocation> {
    handler
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn an_unchanged_handler_under_awslambdaric_gets_every_record_through_partial_failures_and_errors()
-> Result<()> {
    let p = Pipeline::new(2).await?;
    let port = kinesis_operator_tests::free_port()?;
    let runtime_api = format!("127.0.0.1:{port}");
    let socket = p.dir.join("lambda.sock");
    let address = format!("unix://{}", socket.display());
    let function_arn = "arn:aws:lambda:us-east-1:123456789012:function:pageviews";
    let worker = p.worker(
        "w1",
        &address,
        &[
            "--lambda-runtime-api",
            &runtime_api,
            "--lambda-function-arn",
            function_arn,
            "--report-batch-item-failures",
            "--batch-size",
            "25",
        ],
    )?;
    // The worker calls the adapter in its own process: nothing listens on the app's
    // address, the Runtime API is what the handler waits for.
    until_listening(&runtime_api)
        .await
        .map_err(|e| format!("{e}: {}", worker.proc.log_tail()))?;

    let handler_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lambda");
    let mut cmd = Command::new(&p.env.python);
    cmd.current_dir(&handler_dir)
        .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("_HANDLER", "kinesis_handler.handle")
        .env("AWS_LAMBDA_FUNCTION_NAME", "pageviews")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .args(["-m", "awslambdaric", "kinesis_handler.handle"]);
    let handler = Proc::spawn(cmd, p.dir.join("handler.log"))?;

    let (keys, per_key) = (4, 40);
    let puts = put(&p.env, &p.stream, keys, 0, per_key).await?;
    let data_of = |r: &Put| format!("{}:{}", r.key, r.index);
    let by_seq: HashMap<&str, String> = puts.iter().map(|r| (r.seq.as_str(), data_of(r))).collect();
    let all_seen = || {
        let processed: std::collections::HashSet<String> = invocations(&handler)
            .iter()
            .flat_map(|i| {
                let end = match (&i.raised, &i.failed_from) {
                    (Some(_), _) => 0,
                    (None, Some(seq)) => i.received.iter().position(|r| &r.seq == seq).unwrap_or(0),
                    _ => i.received.len(),
                };
                i.received[..end].iter().map(|r| r.data.clone())
            })
            .collect();
        puts.iter().all(|r| processed.contains(&data_of(r)))
    };
    wait_for(
        "every record processed by the handler",
        DEADLINE,
        POLL,
        || {
            let done = all_seen();
            async move { done.then_some(()) }
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}\nhandler:\n{}\nworker:\n{}",
            handler.log_tail(),
            worker.proc.log_tail()
        )
    })?;

    let calls = invocations(&handler);
    // The event is Lambda's, the context the function's.
    for i in &calls {
        assert_eq!(i.function, function_arn);
        assert!(i.remaining_ms > 0, "a deadline in the future: {i:?}");
        assert!(!i.request.is_empty());
        for r in &i.received {
            assert_eq!(by_seq.get(r.seq.as_str()), Some(&r.data), "{r:?}");
        }
    }
    assert!(
        calls.iter().any(|i| i.failed_from.is_some()) && calls.iter().any(|i| i.raised.is_some()),
        "both failure paths were taken: {calls:?}"
    );

    // Every record processed, per key in order, none twice: a record counts as processed
    // when an invocation held it before its failure point (all of it on success, none of it
    // when the handler raised).
    let failure_point = |i: &Invocation| match (&i.raised, &i.failed_from) {
        (Some(_), _) => Some(0),
        (None, Some(seq)) => i.received.iter().position(|r| &r.seq == seq),
        _ => None,
    };
    let processed: Vec<(String, usize)> = calls
        .iter()
        .flat_map(|i| {
            let end = failure_point(i).unwrap_or(i.received.len());
            i.received[..end].iter()
        })
        .filter_map(|r| Some((r.key.clone(), r.data.split(':').nth(1)?.parse().ok()?)))
        .collect();
    let names: Vec<String> = (0..keys).map(|k| format!("key-{k}")).collect();
    let accounting = account(&processed, &names, per_key);
    assert!(accounting.holds(), "{accounting:?}");
    assert_eq!(accounting.duplicates, 0, "{accounting:?}");

    // Every duplicate explained: an earlier invocation holding the record failed at it or
    // before it (batchItemFailures) or raised.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut explained_until: HashMap<String, bool> = HashMap::new();
    let mut duplicates = 0;
    for i in &calls {
        for r in &i.received {
            let n = seen.entry(r.data.clone()).or_default();
            if *n > 0 {
                duplicates += 1;
                assert!(
                    explained_until.get(&r.data).copied().unwrap_or(false),
                    "{} came again with no failure to explain it",
                    r.data
                );
            }
            *n += 1;
        }
        let failed_at = failure_point(i);
        for (pos, r) in i.received.iter().enumerate() {
            explained_until.insert(r.data.clone(), failed_at.is_some_and(|f| pos >= f));
        }
    }
    assert!(duplicates > 0, "the failures made records come again");

    // A graceful stop checkpoints each shard at its last record.
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
    handler.signal("KILL");
    p.cleanup().await
}
