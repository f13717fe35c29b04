//! The operator on the real cluster: a KinesisApplication becomes a Deployment of worker +
//! pageview-counter pods (locally built images) that count records end to end, follows
//! resharding 4 → 8 → 4 with no lost records (4 → 8 while the operator is killed, two pods are
//! deleted without a drain and the kubelet restarts), and reports status; bad specs and a missing
//! stream become conditions and Warning Events, never a Deployment.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::cluster::{
    add_counts as add, application, delete_all, delete_namespace, kubectl, operator, produce,
    restart_kubelet, until_counts,
};
use kinesis_operator_tests::fixtures::{OperatorTest, crd_and_namespace, until_replicas};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const POLL: Duration = Duration::from_millis(500);

async fn reshard(env: &TestEnv, stream: &str, to: i32) -> Result<()> {
    env.kinesis()
        .await
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(to)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await?;
    env.wait_stream_active(stream).await
}

#[tokio::test]
async fn an_application_counts_end_to_end_and_follows_resharding() -> Result<()> {
    let t = OperatorTest::with_stream("e2e", "pageviews", 4, 3).await?;
    let table = unique_name("counts");
    t.counter(&table, 4).await?;
    let OperatorTest {
        env,
        client,
        ns,
        stream,
        op,
        apps,
        deployments,
    } = t;
    let mut expected = produce(&env, &stream, 400)?;
    until_counts(&env, &table, &expected, &op.log_tail()).await?;

    // Status: 4 open shards, each leased, with lag; the printer columns.
    let status = wait_for(
        "status with 4 leased shards",
        Duration::from_secs(60),
        POLL,
        || async {
            let s = apps.get("counter").await.ok()?.status?;
            let leased = s
                .shard_status
                .iter()
                .filter(|x| x.owner.is_some() && x.millis_behind_latest.is_some())
                .count();
            (s.shards.as_ref()?.open == 4 && leased == 4 && s.max_lag.is_some()).then_some(s)
        },
    )
    .await?;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    let table_text = kubectl(&env, &["get", "kapp", "-n", &ns])?;
    for col in ["NAME", "STREAM", "SHARDS", "WORKERS", "LAG", "READY", "AGE"] {
        assert!(table_text.contains(col), "{col} in:\n{table_text}");
    }
    assert!(
        table_text.contains(&stream) && table_text.contains("4/4"),
        "{table_text}"
    );
    eprintln!("{table_text}");

    // 4 → 8 with the operator, the pods and the node failing during the reshard (issue 26):
    // the operator is killed (SIGKILL) as the reshard starts, two worker pods are deleted
    // without a drain (grace 0), the kubelet restarts, records keep coming; a new operator
    // process takes over. Every record is counted once: the totals are exact.
    env.kinesis()
        .await
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(8)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await?;
    op.proc.signal("KILL");
    add(&mut expected, produce(&env, &stream, 200)?);
    let deleted = delete_pods_at_once(&client, &ns, 2).await?;
    restart_kubelet().await?;
    add(&mut expected, produce(&env, &stream, 200)?);
    env.wait_stream_active(&stream).await?;
    drop(op);
    let op = operator(&env, &ns, 3)?;
    until_replicas(&deployments, "counter", 8, false)
        .await
        .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    add(&mut expected, produce(&env, &stream, 400)?);
    until_replicas(&deployments, "counter", 8, true).await?;
    until_counts(&env, &table, &expected, &op.log_tail()).await?;
    eprintln!(
        "operator killed, pods {deleted:?} deleted at once, kubelet restarted during 4 → 8: counts exact"
    );

    // 8 → 4: the workers shrink, leases move through /drain, nothing is lost.
    reshard(&env, &stream, 4).await?;
    until_replicas(&deployments, "counter", 4, true).await?;
    add(&mut expected, produce(&env, &stream, 400)?);
    until_counts(&env, &table, &expected, &op.log_tail()).await?;
    let s = apps.get("counter").await?.status.ok_or("status")?;
    assert_eq!(s.shards.as_ref().map(|x| x.open), Some(4));
    assert_eq!(s.workers.as_ref().map(|w| w.desired), Some(4));

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("Scaled: workers 4 → 8")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("Scaled: workers 8 → 4")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("Resharded")),
        "{reasons:?}"
    );

    // deletionPolicy Delete: the finalizer deletes the lease table.
    let lease_table = s
        .application_name
        .clone()
        .ok_or("applicationName in status")?;
    let series = |page: &str| {
        page.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("namespace=\"{ns}\"")))
            .count()
    };
    let (_, head, page) =
        kinesis_operator_tests::pipeline::http_exchange(&op.admin, "GET", "/metrics").await?;
    assert!(series(&page) >= 4, "per-application series: {page}");
    // Base units and the OpenMetrics format, as Prometheus expects them.
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(
        page.contains("kinesis_operator_max_behind_latest_seconds{"),
        "{page}"
    );
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    delete_all(&apps).await?;
    let (_, page) = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics").await?;
    assert_eq!(
        series(&page),
        0,
        "a deleted application's series are dropped: {page}"
    );
    let gone = env
        .dynamodb()
        .await
        .describe_table()
        .table_name(&lease_table)
        .send()
        .await;
    assert!(gone.is_err(), "lease table {lease_table} deleted");
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&table]).await;
    Ok(())
}

/// Deletes `n` of the application's pods at once (grace 0: no drain, as a node failure or
/// `kubectl delete --force` does); returns their names.
async fn delete_pods_at_once(client: &kube::Client, ns: &str, n: usize) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kinesis-operator"))
        .await?;
    let mut names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    names.sort();
    names.truncate(n);
    for name in &names {
        pods.delete(name, &kube::api::DeleteParams::default().grace_period(0))
            .await?;
    }
    Ok(names)
}

/// Patches `spec` into KinesisApplication `name` (JSON merge patch).
async fn patch_spec(apps: &Api<KinesisApplication>, name: &str, spec: Value) -> Result<()> {
    apps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_specs_and_a_missing_stream_become_conditions_and_events() -> Result<()> {
    let OperatorTest {
        env,
        client,
        ns,
        op,
        apps,
        deployments,
        ..
    } = OperatorTest::start("bad", 3).await?;

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "min-over-max",
            json!({"scaling": {"minWorkers": 3, "maxWorkers": 2}}),
            "InvalidSpec",
            "spec.scaling.minWorkers",
        ),
        (
            "no-timestamp",
            json!({"initialPosition": "AT_TIMESTAMP"}),
            "InvalidSpec",
            "spec.initialTimestamp",
        ),
        (
            "no-containers",
            json!({"template": {"spec": {"containers": []}}}),
            "InvalidSpec",
            "spec.template.spec.containers",
        ),
        (
            "both-name-and-arn",
            json!({"stream": {"arn": "arn:aws:kinesis:us-east-1:123456789012:stream/x"}}),
            "InvalidSpec",
            "spec.stream",
        ),
        (
            "unknown-stream",
            json!({}),
            "StreamNotFound",
            "not found in",
        ),
    ];
    for (name, patch, _, _) in &cases {
        let mut app =
            serde_json::to_value(application(name, &env, &unique_name("missing"), "unused")?)?;
        if let (Some(spec), Some(p)) = (app["spec"].as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                // Merge one level down (stream gets an arn beside its name).
                match (spec.get_mut(k), v) {
                    (Some(Value::Object(old)), Value::Object(new)) if k == "stream" => {
                        old.extend(new.clone())
                    }
                    _ => {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        apps.create(&PostParams::default(), &serde_json::from_value(app)?)
            .await?;
    }
    for (name, _, reason, text) in &cases {
        let ready = wait_for(
            &format!("{name}: Ready=False {reason}"),
            Duration::from_secs(60),
            POLL,
            || async {
                let s = apps.get(name).await.ok()?.status?;
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready" && c.status == "False" && c.reason == *reason)
            },
        )
        .await
        .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
        assert!(ready.message.contains(text), "{name}: {}", ready.message);
        assert!(
            deployments.get_opt(name).await?.is_none(),
            "{name}: no Deployment for a bad spec"
        );
        // It owns nothing, so nothing holds up its deletion.
        let a = apps.get(name).await?;
        assert!(
            !a.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "kinesis-operator.io/cleanup"),
            "{name}: no finalizer without anything to clean up"
        );
    }
    // The AWS side's failures count as failed reconciles.
    let errors = wait_for(
        "StreamNotFound in the reconcile errors",
        Duration::from_secs(30),
        POLL,
        || async {
            let (_, page) = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics")
                .await
                .ok()?;
            page.lines()
                .find(|l| {
                    l.starts_with("kinesis_operator_reconcile_errors_total")
                        && l.contains("error=\"StreamNotFound\"")
                })
                .map(String::from)
        },
    )
    .await?;
    assert!(!errors.ends_with(" 0"), "{errors}");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warnings: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    for (_, _, reason, text) in &cases {
        assert!(
            warnings
                .iter()
                .any(|(r, n)| r == reason && n.contains(text)),
            "a Warning Event {reason} naming {text}: {warnings:?}"
        );
    }
    // The application name cannot change once set.
    patch_spec(
        &apps,
        "unknown-stream",
        json!({"applicationName": "another-name"}),
    )
    .await?;
    let c = wait_for(
        "changed applicationName refused",
        Duration::from_secs(60),
        POLL,
        || async {
            let s = apps.get("unknown-stream").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
        },
    )
    .await?;
    assert!(
        c.message.contains("spec.applicationName: changed from"),
        "{}",
        c.message
    );

    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The value of `name` on an operator's /metrics page.
async fn metric(op: &kinesis_operator_tests::cluster::Operator, name: &str) -> Option<f64> {
    let (status, page) = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics")
        .await
        .ok()?;
    (status == 200).then(|| kinesis_operator_tests::pipeline::metric(&page, name))
}

#[tokio::test]
async fn one_of_two_operators_leads_and_the_other_takes_over() -> Result<()> {
    use kinesis_operator_tests::cluster::operator_with;
    let env = TestEnv::require();
    let (client, ns) = crd_and_namespace(&env, "leader").await?;
    let lease = ["--lease-duration-seconds", "4"];
    let a = operator_with(&env, &ns, 3, "op-a", &lease)?;
    let b = operator_with(&env, &ns, 3, "op-b", &lease)?;
    let leaders = wait_for("one leader", Duration::from_secs(60), POLL, || async {
        let (la, lb) = (
            metric(&a, "kinesis_operator_leader").await?,
            metric(&b, "kinesis_operator_leader").await?,
        );
        (la + lb == 1.0).then_some((la, lb))
    })
    .await?;
    // The leader keeps renewing (renewTime moves), and the standby does not take the live
    // lease meanwhile.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let renew_time = || async {
        let l = leases.get("kinesis-operator-leader").await.ok()?;
        serde_json::to_string(&l.spec?.renew_time?).ok()
    };
    let first = wait_for("a renewTime", Duration::from_secs(30), POLL, renew_time).await?;
    wait_for("two renewals", Duration::from_secs(30), POLL, || async {
        let now = renew_time().await?;
        (now != first).then_some(())
    })
    .await?;
    let (la, lb) = (
        metric(&a, "kinesis_operator_leader").await.unwrap_or(-1.0),
        metric(&b, "kinesis_operator_leader").await.unwrap_or(-1.0),
    );
    assert_eq!((la, lb), leaders, "the same single leader after renewals");
    let (leader, standby) = if leaders.0 == 1.0 { (a, b) } else { (b, a) };
    // The leader dies without a word: the standby takes over once the lease expires.
    leader.proc.signal("KILL");
    let started = std::time::Instant::now();
    wait_for(
        "the standby leads",
        Duration::from_secs(60),
        POLL,
        || async { (metric(&standby, "kinesis_operator_leader").await? == 1.0).then_some(()) },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}
{}",
            standby.log_tail()
        )
    })?;
    eprintln!(
        "standby took over {:?} after the leader was killed (lease 4 s)",
        started.elapsed()
    );
    drop(standby);
    drop(leader);
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// Leader election does not trust another node's clock: a leader whose clock is ten minutes
/// behind (every renewTime it writes is ten minutes old) keeps the Lease for as long as it
/// renews, and the operator takes over only once it stops.
#[tokio::test]
async fn a_live_leader_whose_clock_is_behind_keeps_the_lease() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kinesis_operator_tests::cluster::operator_with;

    const NAME: &str = "kinesis-operator-leader";
    let env = TestEnv::require();
    let (client, ns) = crd_and_namespace(&env, "skew").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let behind = || MicroTime(Timestamp::now() - SignedDuration::from_secs(600));
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("skewed-leader".into()),
                    lease_duration_seconds: Some(4),
                    acquire_time: Some(behind()),
                    renew_time: Some(behind()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await?;
    // The skewed leader renews every second, as a live one does.
    let renewals = Arc::new(AtomicU32::new(0));
    let renewer = tokio::spawn({
        let (leases, renewals) = (leases.clone(), renewals.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Ok(mut lease) = leases.get(NAME).await else {
                    continue;
                };
                if lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    != Some("skewed-leader")
                {
                    return;
                }
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(behind());
                }
                if leases
                    .replace(NAME, &PostParams::default(), &lease)
                    .await
                    .is_ok()
                {
                    renewals.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    let op = operator_with(&env, &ns, 3, "op-skew", &["--lease-duration-seconds", "4"])?;
    // Five lease durations of renewals: the operator stays a standby throughout (its
    // metric is read every poll; the Lease keeps its holder).
    let watched = wait_for(
        "20 renewals by the skewed leader",
        Duration::from_secs(60),
        POLL,
        || async {
            let leading = metric(&op, "kinesis_operator_leader").await;
            let holder = leases
                .get(NAME)
                .await
                .ok()
                .and_then(|l| l.spec?.holder_identity);
            Some((leading, holder, renewals.load(Ordering::SeqCst))).filter(
                |(leading, holder, n)| {
                    leading == &Some(1.0) || holder.as_deref() != Some("skewed-leader") || *n >= 20
                },
            )
        },
    )
    .await?;
    let (leading, holder, _) = watched;
    assert!(
        leading == Some(0.0) && holder.as_deref() == Some("skewed-leader"),
        "the operator took a live leader's Lease, or reports no standby (leader metric {leading:?}, holder {holder:?}):\n{}",
        op.log_tail()
    );
    // The skewed leader stops: the operator takes over once the Lease stops changing.
    renewer.abort();
    let stopped = std::time::Instant::now();
    wait_for(
        "the operator leads",
        Duration::from_secs(60),
        POLL,
        || async { (metric(&op, "kinesis_operator_leader").await? == 1.0).then_some(()) },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    let spec = leases.get(NAME).await?.spec.unwrap_or_default();
    assert_ne!(spec.holder_identity.as_deref(), Some("skewed-leader"));
    assert_eq!(spec.lease_transitions, Some(1));
    eprintln!(
        "took over {:?} after the skewed leader stopped renewing (lease 4 s)",
        stopped.elapsed()
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The scale subresource as HPA and KEDA use it: with `spec.replicas` unset it reports the
/// sized count (and the current replicas and selector); `kubectl scale` takes over the count
/// and the operator leaves it; an `autoscaling/v2beta2` HorizontalPodAutoscaler reads and
/// writes it (here it only applies its minReplicas: the test cluster has no metrics
/// server); removing `spec.replicas` hands sizing back to the operator.
#[tokio::test]
async fn the_scale_subresource_serves_kubectl_scale_and_a_horizontal_pod_autoscaler() -> Result<()>
{
    let OperatorTest {
        env,
        client,
        ns,
        stream,
        op,
        apps,
        deployments,
    } = OperatorTest::with_stream("scale", "scaled", 2, 3).await?;
    let app = application("counter", &env, &stream, &unique_name("counts"))?;
    assert!(app.spec.replicas.is_none());
    apps.create(&PostParams::default(), &app).await?;
    let scale_path = format!(
        "/apis/kinesis-operator.io/v1alpha1/namespaces/{ns}/kinesisapplications/counter/scale"
    );
    let scale = || -> Option<Value> {
        serde_json::from_str(&kubectl(&env, &["get", "--raw", &scale_path]).ok()?).ok()
    };
    let s = wait_for(
        "/scale with the sized count",
        Duration::from_secs(120),
        POLL,
        || async {
            let s = scale()?;
            (s["spec"]["replicas"] == 2 && s["status"]["replicas"] == 2).then_some(s)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    assert!(
        s["status"]["selector"]
            .as_str()
            .is_some_and(|x| x.contains("kinesis-operator.io/application=counter")),
        "{s}"
    );
    until_replicas(&deployments, "counter", 2, true).await?;

    // kubectl scale: the count is the user's now, and stays.
    kubectl(
        &env,
        &["scale", "kapp", "counter", "-n", &ns, "--replicas", "1"],
    )?;
    until_replicas(&deployments, "counter", 1, false).await?;
    // Three reconciles later (resync 3 s) the operator has not changed it back.
    let reconciles = metric(&op, "kinesis_operator_reconciles_total")
        .await
        .ok_or("reconciles metric")?;
    wait_for(
        "three more reconciles",
        Duration::from_secs(60),
        POLL,
        || async {
            (metric(&op, "kinesis_operator_reconciles_total").await? >= reconciles + 3.0)
                .then_some(())
        },
    )
    .await?;
    let d = deployments.get("counter").await?;
    assert_eq!(d.spec.replicas, Some(1), "kubectl scale's count is kept");
    let a = apps.get("counter").await?;
    assert!(
        !a.annotations()
            .contains_key("kinesis-operator.io/sized-replicas"),
        "the operator no longer sizes it"
    );

    // An HPA (v2beta2) drives it through /scale: minReplicas 3 applies without metrics.
    let hpa = json!({
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "counter", "namespace": ns},
        "spec": {
            "scaleTargetRef": {"apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication", "name": "counter"},
            "minReplicas": 3,
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    });
    let file = std::env::temp_dir().join(format!("{ns}-hpa.json"));
    std::fs::write(&file, hpa.to_string())?;
    kubectl(&env, &["apply", "-f", &file.to_string_lossy()])?;
    let _ = std::fs::remove_file(&file);
    wait_for(
        "the HPA sets 3 replicas",
        Duration::from_secs(120),
        POLL,
        || async {
            let a = apps.get("counter").await.ok()?;
            (a.spec.replicas == Some(3)).then_some(())
        },
    )
    .await?;
    until_replicas(&deployments, "counter", 3, false).await?;
    let hpa_status = wait_for(
        "the HPA reports the scale",
        Duration::from_secs(90),
        POLL,
        || async {
            let out = kubectl(
                &env,
                &[
                    "get",
                    "hpa.v2beta2.autoscaling",
                    "counter",
                    "-n",
                    &ns,
                    "-o",
                    "json",
                ],
            )
            .ok()?;
            let v: Value = serde_json::from_str(&out).ok()?;
            (v["status"]["currentReplicas"] == 3).then_some(v)
        },
    )
    .await?;
    let conditions = hpa_status["status"]["conditions"].to_string();
    assert!(
        conditions.contains("AbleToScale") && !conditions.contains("FailedGetScale"),
        "{conditions}"
    );

    // Hand sizing back: no HPA, no spec.replicas.
    kubectl(&env, &["delete", "hpa", "counter", "-n", &ns])?;
    patch_spec(&apps, "counter", json!({"replicas": null})).await?;
    until_replicas(&deployments, "counter", 2, false).await?;
    wait_for("sized again", Duration::from_secs(60), POLL, || async {
        let s = scale()?;
        (s["spec"]["replicas"] == 2).then_some(())
    })
    .await?;

    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// The operator's own status writes trigger no reconcile (issue 13). With a resync every 3 s
/// and records flowing (the workers checkpoint every second, so every reconcile writes a new
/// status, whose watch event used to trigger one more reconcile), the operator reconciles
/// once per resync, not twice; the status still follows the checkpoints; a change of the
/// object itself is reconciled at once.
#[tokio::test]
async fn its_own_status_writes_trigger_no_reconcile() -> Result<()> {
    let t = OperatorTest::with_stream("quiet", "quiet", 1, 3).await?;
    let table = unique_name("counts");
    t.counter(&table, 1).await?;
    let OperatorTest {
        env,
        client,
        ns,
        stream,
        op,
        apps,
        ..
    } = t;
    let expected = produce(&env, &stream, 50)?;
    until_counts(&env, &table, &expected, &op.log_tail()).await?;

    let before = metric(&op, "kinesis_operator_reconciles_total")
        .await
        .ok_or("reconciles metric")?;
    let lease_table = {
        let a = apps.get("counter").await?;
        let name = a
            .status
            .as_ref()
            .and_then(|s| s.application_name.clone())
            .ok_or("status.applicationName")?;
        kinesis_worker::lease::table::LeaseTable::open(env.dynamodb().await, &name, false).await?
    };
    let checkpoint = || async {
        let snap = lease_table.scan().await.ok()?;
        snap.leases.first().map(|l| l.checkpoint.to_string())
    };
    let first = checkpoint().await;
    let window = std::time::Instant::now();
    // Twenty rounds of records, a second apart: the checkpoint moves all the while.
    let mut total = expected;
    for _ in 0..20 {
        add(&mut total, produce(&env, &stream, 20)?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    until_counts(&env, &table, &total, &op.log_tail()).await?;
    let last = checkpoint().await;
    assert_ne!(first, last, "the checkpoint moved during the window");
    let after = metric(&op, "kinesis_operator_reconciles_total")
        .await
        .ok_or("reconciles metric")?;
    let resyncs = window.elapsed().as_secs_f64() / 3.0;
    eprintln!(
        "reconciles in {:?}: {} ({resyncs:.1} resyncs); checkpoint {first:?} -> {last:?}",
        window.elapsed(),
        after - before
    );
    assert!(
        after - before <= resyncs + 2.0,
        "{} reconciles in {resyncs:.1} resync periods: its own status writes trigger more\n{}",
        after - before,
        op.log_tail()
    );
    // The status followed the checkpoints all the same: it shows the table's checkpoint (the
    // worker may write one more after the counts arrived, so compare with the table now).
    wait_for(
        "the status showing the table's checkpoint",
        Duration::from_secs(30),
        POLL,
        || async {
            let a = apps.get("counter").await.ok()?;
            let shown = a.status?.shard_status.first()?.checkpoint.clone();
            (shown.is_some() && shown != first && shown == checkpoint().await).then_some(())
        },
    )
    .await?;

    // A change of the object (a label) is reconciled at once.
    apps.patch(
        "counter",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await?;
    wait_for(
        "a reconcile of the label change",
        Duration::from_secs(30),
        POLL,
        || async {
            (metric(&op, "kinesis_operator_reconciles_total").await? > after).then_some(())
        },
    )
    .await?;
    apps.delete("counter", &Default::default()).await?;
    wait_for(
        "the application deleted",
        Duration::from_secs(90),
        POLL,
        || async { apps.get_opt("counter").await.ok()?.is_none().then_some(()) },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// A reshard is followed before the next periodic reconcile (issue 13: reshard → replicas
/// ≤ 15 s). The resync is ten minutes, so only the reshard watch (ListShards every
/// `--shard-poll-seconds`, default 5) can resize the Deployment within the test's two-minute
/// wait; the Deployment is ready and quiet before each reshard, so no owned-object change
/// triggers the reconcile either. Prints how long each resize took (docs/BENCHMARKS.md).
#[tokio::test]
async fn a_reshard_resizes_the_workers_before_the_next_resync() -> Result<()> {
    let t = OperatorTest::with_stream("reshard", "reshard", 2, 600).await?;
    let table = unique_name("counts");
    t.counter(&table, 2).await?;
    let OperatorTest {
        env,
        client,
        ns,
        stream,
        op,
        apps,
        deployments,
    } = t;
    let mut figures = Vec::new();
    let mut from = 2;
    for to in [4, 2] {
        // Quiet first: the reconcile that follows the Deployment becoming ready is done.
        wait_for(
            &format!("status with {from}/{from} workers"),
            Duration::from_secs(60),
            POLL,
            || async {
                let w = apps.get("counter").await.ok()?.status?.workers?;
                (w.ready == from && w.desired == from).then_some(())
            },
        )
        .await
        .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
        from = to;
        let noticed = metric(&op, "kinesis_operator_reshards_noticed_total")
            .await
            .unwrap_or(0.0);
        let asked = std::time::Instant::now();
        reshard(&env, &stream, to).await?;
        let active = asked.elapsed();
        wait_for(
            &format!("deployment counter sized to {to}"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || async {
                let d = deployments.get_opt("counter").await.ok()??;
                (d.spec.replicas == Some(to)).then_some(())
            },
        )
        .await
        .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
        let resized = asked.elapsed();
        let after = metric(&op, "kinesis_operator_reshards_noticed_total")
            .await
            .unwrap_or(0.0);
        assert!(
            after > noticed,
            "the reshard watch triggered the resize ({noticed} -> {after})\n{}",
            op.log_tail()
        );
        eprintln!(
            "reshard to {to}: stream ACTIVE after {active:?}, Deployment replicas {to} after {resized:?} ({:?} after ACTIVE)",
            resized - active
        );
        figures.push(resized - active);
        until_replicas(&deployments, "counter", to, true)
            .await
            .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    }
    eprintln!("reshard -> replicas after ACTIVE: {figures:?}");
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&table]).await;
    Ok(())
}

/// `kubectl kinesis ARGS` against the test cluster, the plugin found on the PATH as kubectl
/// finds it: its stdout.
fn kubectl_kinesis(env: &TestEnv, args: &[&str]) -> Result<String> {
    let plugin = kinesis_operator_tests::process::binary("kubectl-kinesis")?;
    let dir = plugin.parent().ok_or("the plugin's folder")?;
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(&env.kubectl)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("KUBECTL", &env.kubectl)
        .env("PATH", path)
        .arg("kinesis")
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kinesis {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Issue 31, items 1 and 5: `spec.paused`, set with `kubectl kinesis pause` while pageviews
/// are being put, stops the fleet gracefully: every pod gone, every lease released by its
/// owner (no owner left, no heartbeat left: nothing waits for an expiry), `kubectl get kapp`
/// shows PAUSED True and Ready (reason Paused), one Paused Event. Records put while paused
/// wait in the stream; resuming delivers them, and the counts are exact: 0 lost, 0 delivered
/// twice (a record delivered before the pause but not checkpointed would count twice).
#[tokio::test]
async fn a_pause_releases_every_lease_and_a_resume_counts_exactly() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = OperatorTest::with_stream("pause", "pause", 2, 3).await?;
    let table = unique_name("counts");
    t.counter(&table, 2).await?;
    let mut expected = produce(&t.env, &t.stream, 200)?;
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;
    let lease_table = t
        .apps
        .get("counter")
        .await?
        .status
        .and_then(|s| s.application_name)
        .ok_or("applicationName in status")?;

    // Pageviews flowing while the pause starts.
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (env, stream, done) = (t.env.clone(), t.stream.clone(), done.clone());
        tokio::task::spawn_blocking(
            move || -> Result<std::collections::BTreeMap<String, u64>, String> {
                let mut put = std::collections::BTreeMap::new();
                while !done.load(Ordering::SeqCst) {
                    add(
                        &mut put,
                        produce(&env, &stream, 40).map_err(|e| e.to_string())?,
                    );
                }
                Ok(put)
            },
        )
    };
    // Every shard through the cluster: `kubectl kinesis status` (the plugin) runs
    // `kinesis-worker status --json` in a worker container with `kubectl exec`.
    let status = kubectl_kinesis(&t.env, &["status", "counter", "-n", &t.ns])?;
    eprintln!("{status}");
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let row = status
            .lines()
            .find(|l| l.starts_with(shard))
            .ok_or(format!("{shard} in {status}"))?;
        assert!(
            row.contains("processing") && row.contains("counter-"),
            "{row}"
        );
    }
    assert!(status.contains("2 shards: 2 processing"), "{status}");
    assert!(!status.contains("no worker runs"), "{status}");
    let pause = |on: bool| {
        kubectl_kinesis(
            &t.env,
            &[if on { "pause" } else { "resume" }, "counter", "-n", &t.ns],
        )
    };
    pause(true)?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(t.client.clone(), &t.ns);
    wait_for(
        "every worker pod gone",
        Duration::from_secs(180),
        POLL,
        || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    done.store(true, Ordering::SeqCst);
    add(&mut expected, producer.await??);
    // Released by their owners: no lease owned, no heartbeat left.
    let leases =
        kinesis_worker::lease::table::LeaseTable::opened(t.env.dynamodb().await, &lease_table);
    let snap = leases.scan().await?;
    assert_eq!(snap.leases.len(), 2, "{:?}", snap.leases);
    let owned: Vec<_> = snap.leases.iter().filter(|l| l.owner.is_some()).collect();
    assert!(
        owned.is_empty(),
        "leases still owned after the pause: {owned:?}"
    );
    assert!(snap.heartbeats.is_empty(), "{:?}", snap.heartbeats);
    // Nothing delivered while paused can be over the count.
    let now = kinesis_operator_tests::cluster::counts(&t.env, &table)
        .await
        .ok_or("counts")?;
    for (client, n) in &now {
        assert!(
            expected.get(client).is_some_and(|e| n <= e),
            "{client}: {n} counted, {:?} put",
            expected.get(client)
        );
    }
    let status = wait_for(
        "the Paused condition",
        Duration::from_secs(60),
        POLL,
        || async {
            let s = t.apps.get("counter").await.ok()?.status?;
            let paused = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Paused" && c.status == "True" && c.reason == "Paused");
            paused.then_some(s)
        },
    )
    .await?;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Paused"),
        "{:?}",
        status.conditions
    );
    let table_text = kubectl(&t.env, &["get", "kapp", "counter", "-n", &t.ns])?;
    eprintln!("{table_text}");
    // Columns by their header's position: an empty cell (LAG while paused) has no word.
    let mut lines = table_text.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let col = header.find("PAUSED").ok_or(table_text.clone())?;
    let cell = row.get(col..).unwrap_or_default().split_whitespace().next();
    assert_eq!(cell, Some("True"), "{table_text}");
    assert!(
        status.max_lag.is_none(),
        "no lag while no worker measures it: {status:?}"
    );
    let status = kubectl_kinesis(&t.env, &["status", "counter", "-n", &t.ns])?;
    assert!(status.contains("no worker runs"), "{status}");
    assert!(status.contains("Paused: True (Paused"), "{status}");
    // A paused object's records wait in the stream.
    add(&mut expected, produce(&t.env, &t.stream, 100)?);

    pause(false)?;
    until_replicas(&t.deployments, "counter", 2, true).await?;
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;
    let s = t.apps.get("counter").await?.status.ok_or("status")?;
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Paused" && c.status == "False"),
        "{:?}",
        s.conditions
    );
    let events: Api<Event> = Api::namespaced(t.client.clone(), &t.ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["Paused", "Resumed"] {
        assert_eq!(
            reasons.iter().filter(|x| *x == r).count(),
            1,
            "one {r} Event: {reasons:?}"
        );
    }
    let put: u64 = expected.values().sum();
    eprintln!("paused while putting, resumed: {put} pageviews counted exactly");
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    Ok(())
}

/// Issue 31, item 3: `scaling.mode: Lag`. Four shards packed on one pod (shardsPerWorker 4),
/// an app that processes 100 records a second per pod, then a burst of 4,000 pageviews: the
/// lag passes the 5 s target, the operator adds pods (up to one per shard), the lag falls back
/// under the target, and once it stayed low for the 15 s window the fleet is halved back to
/// one pod, through graceful hand-overs: the counts are exact (0 lost, 0 twice). The worker
/// count only rises then only falls (no flapping), and each move has its Scaled Event.
#[tokio::test]
async fn lag_scaling_spreads_a_burst_and_packs_again_when_quiet() -> Result<()> {
    use kinesis_operator::crd::ScalingMode;
    let t = OperatorTest::with_stream("lagscale", "lagscale", 4, 3).await?;
    let table = unique_name("counts");
    let mut app = application("counter", &t.env, &t.stream, &table)?;
    app.spec.scaling.shards_per_worker = 4;
    app.spec.scaling.min_workers = 1;
    app.spec.scaling.mode = Some(ScalingMode::Lag);
    app.spec.scaling.target_lag_seconds = Some(5);
    app.spec.scaling.scale_down_stabilization_seconds = Some(15);
    if let Some(spec) = app.spec.template.spec.as_mut()
        && let Some(c) = spec.containers.first_mut()
    {
        c.env
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(
                json!({"name": "RECORD_COST_US", "value": "10000"}),
            )?);
    }
    t.apps.create(&PostParams::default(), &app).await?;
    until_replicas(&t.deployments, "counter", 1, true)
        .await
        .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let mut expected = produce(&t.env, &t.stream, 100)?;
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;

    let burst = std::time::Instant::now();
    add(&mut expected, produce(&t.env, &t.stream, 4000)?);
    let history = std::sync::Mutex::new(Vec::<i32>::new());
    let record = |d: &k8s_openapi::api::apps::v1::Deployment| {
        let n = d.spec.replicas.unwrap_or(0);
        if let Ok(mut h) = history.lock()
            && h.last() != Some(&n)
        {
            h.push(n);
        }
    };
    // Spread: more than one pod while the backlog lasts.
    wait_for(
        "more workers for the lag",
        Duration::from_secs(180),
        POLL,
        || async {
            let d = t.deployments.get("counter").await.ok()?;
            record(&d);
            (d.spec.replicas? > 1).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    // Drained: every record counted, and the lag reported back under the target.
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;
    let drained = burst.elapsed();
    wait_for(
        "the lag under the target",
        Duration::from_secs(120),
        POLL,
        || async {
            let d = t.deployments.get("counter").await.ok()?;
            record(&d);
            let s = t.apps.get("counter").await.ok()?.status?;
            let lags: Vec<i64> = s
                .shard_status
                .iter()
                .filter_map(|x| x.millis_behind_latest)
                .collect();
            (!lags.is_empty() && lags.iter().all(|l| *l < 5_000)).then_some(())
        },
    )
    .await?;
    let under = burst.elapsed();
    // Quiet: packed again on one pod.
    wait_for(
        "one worker again",
        Duration::from_secs(240),
        POLL,
        || async {
            let d = t.deployments.get("counter").await.ok()?;
            record(&d);
            let s = d.status.as_ref()?;
            (d.spec.replicas? == 1 && s.replicas == Some(1) && s.ready_replicas == Some(1))
                .then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", t.op.log_tail()))?;
    let packed = burst.elapsed();
    // Nothing lost or counted twice through the scale-out and the scale-in.
    add(&mut expected, produce(&t.env, &t.stream, 100)?);
    until_counts(&t.env, &table, &expected, &t.op.log_tail()).await?;
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let top = history.iter().position(|n| Some(n) == history.iter().max());
    let rising = top.map_or(&history[..], |i| &history[..=i]);
    let falling = top.map_or(&history[..], |i| &history[i..]);
    assert!(
        rising.windows(2).all(|w| w[0] < w[1]) && falling.windows(2).all(|w| w[0] > w[1]),
        "workers only rise, then only fall: {history:?}"
    );
    let events: Api<Event> = Api::namespaced(t.client.clone(), &t.ns);
    let scaled: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scaled"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        scaled.iter().any(|n| n.contains("above the 5 s target"))
            && scaled
                .iter()
                .any(|n| n.contains("under half the 5 s target for 15 s")),
        "{scaled:?}"
    );
    eprintln!(
        "lag scaling: workers {history:?}; 4,000 records drained in {:.0} s, lag under 5 s at {:.0} s, one pod again at {:.0} s; counts exact; {scaled:?}",
        drained.as_secs_f64(),
        under.as_secs_f64(),
        packed.as_secs_f64()
    );
    delete_all(&t.apps).await?;
    delete_namespace(&t.client, &t.ns).await?;
    t.env.remove(Some(&t.stream), &[&table]).await;
    Ok(())
}
