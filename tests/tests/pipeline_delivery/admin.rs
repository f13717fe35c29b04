//! The worker's admin side: readiness, drain, the admin port under a flood, and the
//! `kinesis-worker status` command.

use std::time::Duration;

use kinesis_operator_tests::fleet::{DEADLINE, POLL};
use kinesis_operator_tests::pipeline::{Pipeline, http_get, http_request, until_received};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::table::LeaseTable;

use super::{Result, owners, until_owned};

#[tokio::test]
async fn an_unready_app_holds_the_worker_back_and_drain_hands_everything_over() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let socket = p.dir.join("late.sock");
    let address = format!("unix://{}", socket.display());
    let w = p.worker("w", &address, &[])?;
    let (status, body) = wait_for("the admin port", DEADLINE, POLL, || async {
        http_get(&w.admin, "/readyz").await.ok()
    })
    .await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&address) && body.contains("grpc.health.v1"),
        "{body}"
    );
    let (status, _) = http_get(&w.admin, "/healthz").await?;
    assert_eq!(status, 200);

    let app = p.app("late", &[]).await?;
    until_owned(&p, "w owns both shards once the app answers", |o| {
        o.len() == 2 && o.iter().all(|w| w == "w")
    })
    .await?;
    let (status, _) = http_get(&w.admin, "/readyz").await?;
    assert_eq!(status, 200);
    p.put_sequence(2, 0, 5).await?;
    until_received(&[app.out.as_path()], 10).await?;

    // The admin port (reachable from other pods) cannot start a drain.
    for path in ["/drain", "/drain?now=1"] {
        let (status, body) = http_get(&w.admin, path).await?;
        assert_eq!(status, 404, "GET {path} on the admin port: {body}");
    }
    let (status, _) = http_request(&w.admin, "POST", "/drain").await?;
    assert_eq!(status, 404, "POST /drain on the admin port");
    assert_eq!(
        owners(&p).await?.values().flatten().count(),
        2,
        "still owned"
    );
    // The app's preStop hook waits on /drained, which starts nothing by itself. The kubelet
    // of Kubernetes 1.20 asks for `//drained` (it joins "/" and the hook's path); that waits
    // too, instead of a 404 that would let the app stop before the hand-over.
    let wait_on = |path: &'static str| {
        let admin = w.admin.clone();
        tokio::spawn(async move { http_get(&admin, path).await.map_err(|e| e.to_string()) })
    };
    let waiting = wait_on("/drained");
    let waiting_kubelet = wait_on("//drained");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "/drained waits for a drain");
    assert!(
        !waiting_kubelet.is_finished(),
        "//drained (the kubelet's path) waits for a drain"
    );
    assert_eq!(
        owners(&p).await?.values().flatten().count(),
        2,
        "still owned"
    );
    // ...and answers once the worker drained, here through the local port from inside the
    // "pod" (`kinesis-worker drain`), with the app told first.
    let out =
        std::process::Command::new(kinesis_operator_tests::process::binary("kinesis-worker")?)
            .args(["drain", "--address", &w.local])
            .output()?;
    assert!(
        out.status.success(),
        "kinesis-worker drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    let (status, body) = waiting.await??;
    assert_eq!(
        (status, body.as_str()),
        (200, "drained: every lease handed over or released\n")
    );
    let (status, body) = waiting_kubelet.await??;
    assert_eq!(
        (status, body.as_str()),
        (200, "drained: every lease handed over or released\n")
    );
    let o = owners(&p).await?;
    assert!(o.values().all(Option::is_none), "released: {o:?}");
    let lines = app.proc.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("shutdown-requested"))
            .count(),
        2,
        "{lines:?}"
    );
    // A drained worker exits (in a pod, the container restarts and rejoins).
    let mut w = w;
    let code = w.until_exit(DEADLINE).await?;
    assert_eq!(code, Some(0), "{}", w.proc.log_tail());
    // The final checkpoints cover everything delivered.
    let table = LeaseTable::open(p.env.dynamodb().await, &p.app, false).await?;
    let snap = table.scan().await?;
    assert!(
        snap.leases.iter().all(|l| l.checkpoint.is_progress()),
        "{:?}",
        snap.leases
    );
    drop(w);
    p.cleanup().await
}

/// `kinesis-worker status`: one line per shard with its state, owner, checkpoint and the
/// owner's lag, and a summary, read from the stream and the lease table only.
#[tokio::test]
async fn the_status_command_shows_every_shard_with_its_owner_and_lag() -> Result<()> {
    let p = Pipeline::new(2).await?;
    let app = p.app("a", &[]).await?;
    let _w = p.worker("w", &app.address, &[])?;
    p.put_sequence(2, 0, 5).await?;
    until_received(&[app.out.as_path()], 10).await?;
    let status = || -> Result<String> {
        let mut cmd =
            std::process::Command::new(kinesis_operator_tests::process::binary("kinesis-worker")?);
        for (k, v) in p.env.worker_env() {
            cmd.env(k, v);
        }
        let out = cmd
            .args(["status", "--application", &p.app, "--stream", &p.stream])
            .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string().into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    // The lag arrives with the owner's next heartbeat.
    let text = wait_for(
        "both shards processing with a lag",
        DEADLINE,
        POLL,
        || async {
            let text = status().ok()?;
            let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("shardId-")).collect();
            (rows.len() == 2
                && rows.iter().all(|r| {
                    let cols: Vec<&str> = r.split_whitespace().collect();
                    cols.len() == 5 && cols[1] == "processing" && cols[2] == "w" && cols[4] != "-"
                }))
            .then_some(text)
        },
    )
    .await?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SHARD") && lines[0].contains("LAG"),
        "{text}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("2 shards: 2 processing, 0 unowned")),
        "{text}"
    );
    // A table that does not exist is named.
    let mut cmd =
        std::process::Command::new(kinesis_operator_tests::process::binary("kinesis-worker")?);
    for (k, v) in p.env.worker_env() {
        cmd.env(k, v);
    }
    let out = cmd
        .args([
            "status",
            "--application",
            "no-such-app",
            "--stream",
            &p.stream,
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-app"));
    p.cleanup().await
}

/// Issue 27, attack 8: the admin port under a flood from another pod. 200 `/readyz` at once
/// send the app at most a couple of gRPC health checks (one a second, shared), and of 100
/// `/drained` long-polls at once all but a bounded few are refused at once (503) while
/// `/healthz` keeps answering. On the code before, every `/readyz` was a health call of its
/// own (seen: 200 more checks) and every `/drained` was held open.
#[tokio::test]
async fn the_admin_port_bounds_readiness_checks_and_drain_waiters() -> Result<()> {
    use kinesis_operator_tests::pipeline::{http_get, metric, until_metric};
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker("w", &app.address, &[])?;
    until_metric(
        &w.admin,
        "the app checked once",
        "kinesis_worker_app_health_checks_total",
        1.0,
    )
    .await?;
    let checks = |page: &str| metric(page, "kinesis_worker_app_health_checks_total");
    let (_, before) = http_get(&w.admin, "/metrics").await?;
    let floods: Vec<_> = (0..200)
        .map(|_| {
            let admin = w.admin.clone();
            tokio::spawn(async move { http_get(&admin, "/readyz").await.map(|(s, _)| s).ok() })
        })
        .collect();
    let mut ok = 0;
    for f in floods {
        if f.await.ok().flatten() == Some(200) {
            ok += 1;
        }
    }
    let (_, after) = http_get(&w.admin, "/metrics").await?;
    let sent = checks(&after) - checks(&before);
    eprintln!("200 /readyz: {ok} answered 200, {sent} health checks sent to the app");
    assert_eq!(ok, 200, "every /readyz answered ready");
    assert!(sent <= 3.0, "{sent} health checks for 200 /readyz");

    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let admin = w.admin.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), http_get(&admin, "/drained"))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|(s, _)| s)
            })
        })
        .collect();
    let (status, _) = http_get(&w.admin, "/healthz").await?;
    assert_eq!(status, 200, "the admin port still answers");
    let mut refused = 0;
    let mut held = 0;
    for wt in waiters {
        match wt.await.ok().flatten() {
            Some(503) => refused += 1,
            None => held += 1,
            Some(s) => return Err(format!("/drained answered {s} before any drain").into()),
        }
    }
    eprintln!("100 /drained: {refused} refused at once, {held} held open");
    assert!(held <= 16, "{held} /drained held open");
    assert_eq!(refused + held, 100);
    w.stop(DEADLINE).await?;
    p.cleanup().await
}
