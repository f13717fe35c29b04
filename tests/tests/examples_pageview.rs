//! The pageview-counter examples end to end: the producer puts pageviews into a 4-shard
//! stream; the Rust and the Python counter, each behind its own `kinesis-worker run` (two
//! applications reading the same stream independently), write the same per-client counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, until_socket};
use kinesis_operator_tests::process::{Proc, binary};
use kinesis_operator_tests::{unique_name, wait_for};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// client id → pageviews in a counts table.
async fn counts(client: &aws_sdk_dynamodb::Client, table: &str) -> Option<BTreeMap<String, u64>> {
    let out = client.scan().table_name(table).send().await.ok()?;
    Some(
        out.items()
            .iter()
            .filter_map(|item| {
                let id = item.get("client_id")?.as_s().ok()?.clone();
                let n = item.get("pageviews")?.as_n().ok()?.parse().ok()?;
                Some((id, n))
            })
            .collect(),
    )
}

#[tokio::test]
async fn the_rust_and_the_python_counter_count_every_pageview() -> Result<()> {
    let p = Pipeline::new(4).await?;
    let env = p.env.clone();
    let aws_env = |cmd: &mut Command| {
        for (k, v) in env.worker_env() {
            cmd.env(k, v);
        }
        cmd.env("AWS_DEFAULT_REGION", &env.region);
    };
    let (rust_table, python_table) = (unique_name("counts-rs"), unique_name("counts-py"));
    let rust_sock = p.dir.join("rust.sock");
    let python_sock = p.dir.join("python.sock");

    let mut cmd = Command::new(binary("pageview-counter")?);
    aws_env(&mut cmd);
    cmd.args(["--address", &format!("unix://{}", rust_sock.display())])
        .args(["--table", &rust_table, "--flush-interval-ms", "500"]);
    let rust_app = Proc::spawn(cmd, p.dir.join("rust-counter.log"))?;

    let mut cmd = Command::new(&env.python);
    aws_env(&mut cmd);
    cmd.arg(repo_root().join("examples/pageview-counter-python/counter.py"))
        .env("APP_ADDRESS", format!("unix://{}", python_sock.display()))
        .env("COUNTS_TABLE", &python_table)
        .env("FLUSH_INTERVAL_MS", "500");
    let python_app = Proc::spawn(cmd, p.dir.join("python-counter.log"))?;
    until_socket(&rust_sock)
        .await
        .map_err(|e| format!("{e}: {}", rust_app.log_tail()))?;
    until_socket(&python_sock)
        .await
        .map_err(|e| format!("{e}: {}", python_app.log_tail()))?;

    let rust_application = unique_name("counter-rs");
    let python_application = unique_name("counter-py");
    let _w1 = p.worker_for(
        &rust_application,
        "w",
        &format!("unix://{}", rust_sock.display()),
        &[],
    )?;
    let _w2 = p.worker_for(
        &python_application,
        "w",
        &format!("unix://{}", python_sock.display()),
        &[],
    )?;

    // A record that is no pageview: reported by the apps, never stopping them.
    let kinesis = env.kinesis().await;
    p.put(&kinesis, "client-0", b"this is not json").await?;

    let mut cmd = Command::new(binary("pageview-producer")?);
    aws_env(&mut cmd);
    cmd.args([
        "--stream",
        &p.stream,
        "--count",
        "500",
        "--clients",
        "10",
        "--rate",
        "0",
    ]);
    let out = cmd.output()?;
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (c, n) = l.split_once(' ')?;
            Some((c.to_string(), n.parse().ok()?))
        })
        .collect();
    assert_eq!(expected.len(), 10);
    assert_eq!(expected.values().sum::<u64>(), 500);

    let dynamodb = env.dynamodb().await;
    for (name, table, app) in [
        ("Rust", &rust_table, &rust_app),
        ("Python", &python_table, &python_app),
    ] {
        let res = wait_for(&format!("{name} counts"), DEADLINE, POLL, || async {
            (counts(&dynamodb, table).await? == expected).then_some(())
        })
        .await;
        if let Err(e) = res {
            return Err(format!(
                "{e}: got {:?}, expected {expected:?}\n{}",
                counts(&dynamodb, table).await,
                app.log_tail()
            )
            .into());
        }
    }
    for (app, file) in [(&rust_app, "rust"), (&python_app, "python")] {
        let log = std::fs::read_to_string(&app.log)?;
        assert!(
            log.contains("not a pageview"),
            "{file} reported the malformed record: {}",
            app.log_tail()
        );
    }
    env.remove(
        None,
        &[
            &rust_table,
            &python_table,
            &rust_application,
            &python_application,
        ],
    )
    .await;
    p.cleanup().await
}
