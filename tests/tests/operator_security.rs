//! A shared cluster, tried as an attacker would: every `KinesisApplication` is a request to
//! act with the operator's AWS identity, so each test points one at something it does not
//! own and checks that the operator refuses, with a condition and an Event, and deletes
//! nothing that is not the object's own.
//!
//! Operators run as processes watching one namespace each; `--cluster-name` stands in for a
//! second cluster sharing the AWS account.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kinesis_operator::crd::{Condition, KinesisApplication};
use kinesis_operator_tests::cluster::{
    Operator, application, delete_all, delete_namespace, install_crd, namespace, operator_with,
    produce, until_counts,
};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const POLL: Duration = Duration::from_millis(500);

/// The test application `name`, patched with `spec` (merged one level down).
fn app(
    name: &str,
    env: &TestEnv,
    stream: &str,
    counts: &str,
    spec: Value,
) -> Result<KinesisApplication> {
    let mut v = serde_json::to_value(application(name, env, stream, counts)?)?;
    if let (Some(base), Some(patch)) = (v["spec"].as_object_mut(), spec.as_object()) {
        for (k, val) in patch {
            match (base.get_mut(k), val) {
                (Some(Value::Object(old)), Value::Object(new)) => old.extend(new.clone()),
                (_, Value::Null) => {
                    base.remove(k);
                }
                _ => {
                    base.insert(k.clone(), val.clone());
                }
            }
        }
    }
    Ok(serde_json::from_value(v)?)
}

/// Waits until condition `type_` of `name` has `status` and `reason`.
async fn until_condition(
    apps: &Api<KinesisApplication>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    op: &Operator,
) -> Result<Condition> {
    let c = wait_for(
        &format!("{name}: {type_}={status} {reason}"),
        Duration::from_secs(90),
        POLL,
        || async {
            let s = apps.get(name).await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    Ok(c)
}

/// Every Event in `ns`: (type, reason, note).
async fn events(client: &kube::Client, ns: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

async fn table_exists(env: &TestEnv, table: &str) -> bool {
    env.dynamodb()
        .await
        .describe_table()
        .table_name(table)
        .send()
        .await
        .is_ok()
}

async fn create_table(env: &TestEnv, table: &str, key: &str) -> Result<()> {
    env.dynamodb()
        .await
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await?;
    Ok(())
}

async fn tags(env: &TestEnv, table: &str) -> Result<HashMap<String, String>> {
    let d = env.dynamodb().await;
    let arn = d
        .describe_table()
        .table_name(table)
        .send()
        .await?
        .table
        .and_then(|t| t.table_arn)
        .ok_or("table arn")?;
    Ok(d.list_tags_of_resource()
        .resource_arn(arn)
        .send()
        .await?
        .tags()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect())
}

/// Deletes one application while its operator runs, and waits until it is gone.
async fn delete_app(apps: &Api<KinesisApplication>, name: &str) -> Result<()> {
    apps.delete(name, &DeleteParams::default()).await?;
    wait_for(
        &format!("{name} deleted"),
        Duration::from_secs(60),
        POLL,
        || async { apps.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await?;
    Ok(())
}

/// The attack of the issue: a tenant names somebody else's table (not even a lease table)
/// with `deletionPolicy: Delete` and deletes its KinesisApplication. The table and its data
/// stay. An adopted lease table stays too; only a table the operator created for this very
/// object is deleted, and it carries the owner's tags.
#[tokio::test]
async fn deleting_an_application_deletes_only_what_the_operator_created_for_it() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "tenant-b").await?;
    let op = operator_with(&env, &ns, 3, "operator", &["--cluster-name", "c1"])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let stream = unique_name("orders");
    env.create_stream(&stream, 1).await?;

    // Somebody's order table, with data.
    let precious = unique_name("precious-orders");
    create_table(&env, &precious, "orderId").await?;
    env.dynamodb()
        .await
        .put_item()
        .table_name(&precious)
        .item("orderId", AttributeValue::S("o-1".into()))
        .send()
        .await?;
    // A KCL lease table of another team, adopted by name.
    let kcl = unique_name("kcl-app");
    create_table(&env, &kcl, "leaseKey").await?;

    let zero = |table: &str| json!({"applicationName": table, "replicas": 0, "leaseTable": {"deletionPolicy": "Delete"}});
    let own = unique_name("own");
    for (name, spec) in [
        ("thief", zero(&precious)),
        ("adopter", zero(&kcl)),
        ("owner", zero(&own)),
    ] {
        apps.create(
            &PostParams::default(),
            &app(name, &env, &stream, "unused", spec)?,
        )
        .await?;
    }
    until_condition(&apps, "thief", "Ready", "False", "WrongKeySchema", &op).await?;
    assert!(
        apps.get("thief")
            .await?
            .metadata
            .finalizers
            .unwrap_or_default()
            .is_empty(),
        "an object that owns nothing gets no finalizer"
    );
    until_condition(
        &apps,
        "adopter",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op,
    )
    .await?;
    until_condition(
        &apps,
        "owner",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op,
    )
    .await?;
    assert!(deployments.get_opt("thief").await?.is_none());

    // The table the operator created is marked as this object's.
    let owner_uid = apps
        .get("owner")
        .await?
        .metadata
        .uid
        .ok_or("uid of owner")?;
    let t = tags(&env, &own).await?;
    for (k, v) in [
        ("kinesis-operator.io/managed", "true"),
        ("kinesis-operator.io/cluster", "c1"),
        ("kinesis-operator.io/namespace", ns.as_str()),
        ("kinesis-operator.io/name", "owner"),
        ("kinesis-operator.io/uid", owner_uid.as_str()),
    ] {
        assert_eq!(
            t.get(k).map(String::as_str),
            Some(v),
            "tag {k} of {own}: {t:?}"
        );
    }
    assert!(
        tags(&env, &kcl).await?.is_empty(),
        "an adopted table is not tagged"
    );

    delete_all(&apps).await?;
    assert!(
        table_exists(&env, &precious).await,
        "the operator deleted `{precious}`, a table it did not create\n{}",
        op.log_tail()
    );
    let item = env
        .dynamodb()
        .await
        .get_item()
        .table_name(&precious)
        .key("orderId", AttributeValue::S("o-1".into()))
        .send()
        .await?;
    assert!(item.item.is_some(), "its data is untouched");
    assert!(
        table_exists(&env, &kcl).await,
        "an adopted lease table is kept despite deletionPolicy Delete"
    );
    assert!(!table_exists(&env, &own).await, "its own table is deleted");
    let ev = events(&client, &ns).await?;
    // The thief never claimed anything: it had no finalizer and was deleted at once; the
    // adopter's cleanup says why it kept the table.
    assert!(
        ev.iter()
            .any(|(t, r, n)| t == "Warning" && r == "WrongKeySchema" && n.contains(&precious)),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(t, r, n)| t == "Warning" && r == "LeaseTableKept" && n.contains(&kcl)),
        "a Warning Event says why `{kcl}` was kept: {ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(_, r, n)| r == "LeaseTableDeleted" && n.contains(&own)),
        "{ev:?}"
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&precious, &kcl]).await;
    Ok(())
}

/// Two namespaces' objects of one name get two tables; an object that names a table another
/// object claims (same cluster, or another cluster in the account) is refused with
/// `LeaseTableConflict` and gets no Deployment; once the owner is deleted (Retain) the table
/// may be adopted.
#[tokio::test]
async fn two_applications_never_share_a_lease_table() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let stream = unique_name("shared");
    env.create_stream(&stream, 1).await?;
    let ns_a = namespace(&client, "team-a").await?;
    let ns_b = namespace(&client, "team-b").await?;
    let ns_c = namespace(&client, "other-cluster").await?;
    let op_a = operator_with(&env, &ns_a, 3, "op-a", &["--cluster-name", "c1"])?;
    let op_b = operator_with(&env, &ns_b, 3, "op-b", &["--cluster-name", "c1"])?;
    let op_c = operator_with(&env, &ns_c, 3, "op-c", &["--cluster-name", "c2"])?;
    let api = |ns: &str| -> Api<KinesisApplication> { Api::namespaced(client.clone(), ns) };
    let (apps_a, apps_b, apps_c) = (api(&ns_a), api(&ns_b), api(&ns_c));

    // The default names differ per namespace.
    let default_spec = json!({"applicationName": null, "replicas": 0});
    for apps in [&apps_a, &apps_b] {
        apps.create(
            &PostParams::default(),
            &app("counter", &env, &stream, "unused", default_spec.clone())?,
        )
        .await?;
    }
    until_condition(
        &apps_a,
        "counter",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op_a,
    )
    .await?;
    until_condition(
        &apps_b,
        "counter",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op_b,
    )
    .await?;
    let name_of = |a: KinesisApplication| a.status.and_then(|s| s.application_name);
    let (table_a, table_b) = (
        name_of(apps_a.get("counter").await?).ok_or("name a")?,
        name_of(apps_b.get("counter").await?).ok_or("name b")?,
    );
    assert_eq!(table_a, format!("{ns_a}.counter"));
    assert_eq!(table_b, format!("{ns_b}.counter"));

    // team-b, then a second cluster, point at team-a's table.
    let intrude = json!({"applicationName": table_a, "replicas": 0});
    apps_b
        .create(
            &PostParams::default(),
            &app("intruder", &env, &stream, "unused", intrude.clone())?,
        )
        .await?;
    apps_c
        .create(
            &PostParams::default(),
            &app("counter", &env, &stream, "unused", intrude)?,
        )
        .await?;
    for (apps, name, ns, op) in [
        (&apps_b, "intruder", &ns_b, &op_b),
        (&apps_c, "counter", &ns_c, &op_c),
    ] {
        let c = until_condition(apps, name, "Ready", "False", "LeaseTableConflict", op).await?;
        assert!(
            !c.message.contains(&format!("{ns_a}/counter"))
                && !c.message.contains("uid")
                && c.message.contains("claimed by another application")
                && c.message.contains("spec.applicationName"),
            "the message names the fix, and not another namespace's owner: {}",
            c.message
        );
        let d: Api<Deployment> = Api::namespaced(client.clone(), ns);
        assert!(d.get_opt(name).await?.is_none(), "{name}: no Deployment");
        assert!(
            apps.get(name)
                .await?
                .metadata
                .finalizers
                .unwrap_or_default()
                .is_empty(),
            "{name}: a refused object owns nothing and gets no finalizer"
        );
        let ev = events(&client, ns).await?;
        assert!(
            ev.iter()
                .any(|(t, r, _)| t == "Warning" && r == "LeaseTableConflict"),
            "{ev:?}"
        );
    }
    // Deleting a refused object deletes nothing (it never owned the table).
    delete_app(&apps_c, "counter").await?;
    assert!(table_exists(&env, &table_a).await);

    // The owner goes (Retain): its claim is released and team-b may adopt the table.
    let retain = json!({"leaseTable": {"deletionPolicy": "Retain"}});
    apps_a
        .patch(
            "counter",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": retain})),
        )
        .await?;
    wait_for("Retain observed", Duration::from_secs(30), POLL, || async {
        let a = apps_a.get("counter").await.ok()?;
        (a.status?.observed_generation == a.metadata.generation).then_some(())
    })
    .await?;
    delete_app(&apps_a, "counter").await?;
    assert!(table_exists(&env, &table_a).await, "Retain keeps the table");
    until_condition(
        &apps_b,
        "intruder",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op_b,
    )
    .await?;

    delete_all(&apps_b).await?;
    drop((op_a, op_b, op_c));
    for ns in [&ns_a, &ns_b, &ns_c] {
        delete_namespace(&client, ns).await?;
    }
    env.remove(Some(&stream), &[&table_a, &table_b]).await;
    Ok(())
}

/// The worker's admin port is reachable from every pod: another pod's drain request is
/// refused (the drain listens on the pod's loopback only) and the worker keeps its lease.
/// In fan-out mode the operator registers the consumer once and the pods get its ARN; the
/// records still count, and deleting the application deregisters the consumer the operator
/// registered, and only that one.
#[tokio::test]
async fn another_pod_cannot_drain_a_worker_and_fan_out_consumers_are_the_operator_s() -> Result<()>
{
    let env = TestEnv::require();
    env.require_image("kinesis-worker")?;
    env.require_image("pageview-counter")?;
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "drain").await?;
    let op = operator_with(&env, &ns, 3, "operator", &["--cluster-name", "c1"])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let stream = unique_name("fanout");
    env.create_stream(&stream, 1).await?;
    let kinesis = env.kinesis().await;
    let stream_arn = kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .ok_or("stream arn")?;
    // A consumer somebody registered before, under the name a second application will use.
    let foreign = unique_name("foreign");
    kinesis
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name(&foreign)
        .send()
        .await?;

    let counts = unique_name("counts");
    let efo = json!({"consumer": {"mode": "EnhancedFanOut", "idleTimeBetweenReadsMs": 100, "checkpointIntervalMs": 1000}});
    apps.create(
        &PostParams::default(),
        &app("counter", &env, &stream, &counts, efo)?,
    )
    .await?;
    apps.create(
        &PostParams::default(),
        &app(
            "reuser",
            &env,
            &stream,
            "unused",
            json!({"applicationName": foreign, "replicas": 0, "consumer": {"mode": "EnhancedFanOut"}}),
        )?,
    )
    .await?;

    // Registered by the operator, passed to the pods.
    let status = wait_for(
        "a consumer in status",
        Duration::from_secs(90),
        POLL,
        || async { apps.get("counter").await.ok()?.status?.consumer },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    assert!(status.registered_by_operator, "{status:?}");
    let reused = wait_for(
        "the reused consumer",
        Duration::from_secs(90),
        POLL,
        || async { apps.get("reuser").await.ok()?.status?.consumer },
    )
    .await?;
    assert!(!reused.registered_by_operator, "{reused:?}");
    let d: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = d.get("counter").await?;
    let env_arn = deployment
        .spec
        .template
        .spec
        .and_then(|p| {
            p.containers
                .into_iter()
                .find(|c| c.name == "kinesis-worker")
        })
        .and_then(|c| c.env)
        .and_then(|e| e.into_iter().find(|v| v.name == "CONSUMER_ARN"))
        .and_then(|v| v.value);
    assert_eq!(env_arn.as_deref(), Some(status.arn.as_str()));

    // The pod reads through it.
    let pod = wait_for(
        "a ready worker pod",
        Duration::from_secs(180),
        POLL,
        || async {
            let list = pods
                .list(&ListParams::default().labels("kinesis-operator.io/application=counter"))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    let mut expected = produce(&env, &stream, 100)?;
    until_counts(&env, &counts, &expected, &op.log_tail()).await?;
    let pod_name = pod.metadata.name.clone().ok_or("pod name")?;
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or("pod ip")?;
    let lease_table = apps
        .get("counter")
        .await?
        .status
        .and_then(|s| s.application_name)
        .ok_or("application name")?;
    let owner = || async {
        let table = kinesis_worker::lease::table::LeaseTable::open(
            env.dynamodb().await,
            &lease_table,
            false,
        )
        .await
        .ok()?;
        let snap = table.scan().await.ok()?;
        snap.leases.first().and_then(|l| l.owner.clone())
    };
    assert_eq!(owner().await.as_deref(), Some(pod_name.as_str()));

    // Another pod tries both ports.
    let attacker: Pod = serde_json::from_value(json!({
        "metadata": {"name": "attacker"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "local-port", "image": kinesis_operator_tests::image("kinesis-worker"),
                 "imagePullPolicy": "Never", "args": ["drain", "--address", format!("{pod_ip}:8081")]},
                {"name": "admin-port", "image": kinesis_operator_tests::image("kinesis-worker"),
                 "imagePullPolicy": "Never", "args": ["drain", "--address", format!("{pod_ip}:8080")]},
            ]
        }
    }))?;
    pods.create(&PostParams::default(), &attacker).await?;
    let exits = wait_for(
        "the attacker pod ends",
        Duration::from_secs(120),
        POLL,
        || async {
            let p = pods.get("attacker").await.ok()?;
            let statuses = p.status?.container_statuses?;
            let codes: Vec<(String, i32)> = statuses
                .iter()
                .filter_map(|s| {
                    Some((
                        s.name.clone(),
                        s.state.as_ref()?.terminated.as_ref()?.exit_code,
                    ))
                })
                .collect();
            (codes.len() == 2).then_some(codes)
        },
    )
    .await?;
    for (container, code) in &exits {
        assert_ne!(*code, 0, "{container}: the drain request was refused");
    }
    // The worker still holds the lease, never restarted, and still counts.
    assert_eq!(owner().await.as_deref(), Some(pod_name.as_str()));
    let p = pods.get(&pod_name).await?;
    let restarts: i32 = p
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0);
    kinesis_operator_tests::cluster::add_counts(&mut expected, produce(&env, &stream, 100)?);
    until_counts(&env, &counts, &expected, &op.log_tail()).await?;

    // Deleting: the operator's consumer goes, the foreign one stays.
    delete_all(&apps).await?;
    let listed = || async {
        let out = kinesis
            .list_stream_consumers()
            .stream_arn(&stream_arn)
            .send()
            .await
            .ok()?;
        Some(
            out.consumers()
                .iter()
                .filter(|c| {
                    c.consumer_status() != &aws_sdk_kinesis::types::ConsumerStatus::Deleting
                })
                .map(|c| c.consumer_name().to_string())
                .collect::<Vec<_>>(),
        )
    };
    let names = wait_for(
        "the operator's consumer deregistered",
        Duration::from_secs(30),
        POLL,
        || async { listed().await.filter(|n| !n.contains(&status.name)) },
    )
    .await?;
    assert!(
        names.contains(&foreign),
        "the foreign consumer stays: {names:?}"
    );
    let ev = events(&client, &ns).await?;
    assert!(
        ev.iter()
            .any(|(t, r, _)| t == "Warning" && r == "ConsumerKept"),
        "{ev:?}"
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&counts, &lease_table, &foreign])
        .await;
    Ok(())
}

/// A server of the tenant's: counts the connections it gets and answers each with a 500.
struct TenantServer {
    endpoint: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TenantServer {
    async fn start() -> Result<Self> {
        Self::answering(String::new()).await
    }

    /// A server that answers every request with HTTP 400 and `body`.
    async fn answering(body: String) -> Result<Self> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = if body.is_empty() {
                    "500 Internal Server Error"
                } else {
                    "400 Bad Request"
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Ok(Self {
            endpoint,
            hits,
            task,
        })
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TenantServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 27: nothing a tenant writes selects an endpoint the operator's credentials go to.
/// A spec naming a server of the tenant's as `dynamoDbEndpoint` is refused (`InvalidSpec`,
/// naming the field) and the server gets no connection; so is an
/// application that was healthy and then points `endpoint` at it (the reshard watch, which
/// lists its stream every few seconds, included). On the code before, the operator sent its
/// signed ListShards/DescribeTable/claim requests there (seen: no `InvalidSpec`, the
/// server counted connections).
#[tokio::test]
async fn an_endpoint_the_administrator_did_not_allow_gets_none_of_the_operators_requests()
-> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "endpoints").await?;
    let stream = unique_name("endpoints");
    env.create_stream(&stream, 1).await?;
    let tenant = TenantServer::start().await?;
    // An endpoint the administrator did allow that answers kilobytes of its own text.
    let junk = TenantServer::answering(format!(
        "<html><body><h1>Oops</h1>{}</body></html>",
        "team-b secret ".repeat(400)
    ))
    .await?;
    let op = operator_with(
        &env,
        &ns,
        3,
        "operator",
        &[
            "--shard-poll-seconds",
            "1",
            "--allowed-endpoints",
            &junk.endpoint,
        ],
    )?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);

    let spec = json!({"stream": {"dynamoDbEndpoint": tenant.endpoint}});
    apps.create(
        &PostParams::default(),
        &app("tenant", &env, &stream, "unused", spec)?,
    )
    .await?;
    let c = until_condition(&apps, "tenant", "Ready", "False", "InvalidSpec", &op).await?;
    assert!(
        c.message.contains("spec.stream.dynamoDbEndpoint")
            && c.message.contains("allowedEndpoints"),
        "the condition names the setting and the fix: {}",
        c.message
    );
    assert!(
        events(&client, &ns)
            .await?
            .iter()
            .any(|(t, r, n)| t == "Warning"
                && r == "InvalidSpec"
                && n.contains("dynamoDbEndpoint")),
        "a Warning Event says so"
    );

    // A healthy application whose spec then names the tenant's server.
    apps.create(
        &PostParams::default(),
        &app("victim", &env, &stream, "unused", json!({}))?,
    )
    .await?;
    wait_for(
        "victim observed its stream",
        Duration::from_secs(90),
        POLL,
        || async { apps.get("victim").await.ok()?.status?.shards.map(|_| ()) },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    let patch = json!({"spec": {"stream": {"endpoint": tenant.endpoint}}});
    apps.patch(
        "victim",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    until_condition(&apps, "victim", "Ready", "False", "InvalidSpec", &op).await?;
    // The reshard watch (every second) kept the victim (it was healthy): three of its
    // rounds later, each refused before any call.
    wait_for(
        "three reshard-watch rounds refused",
        Duration::from_secs(60),
        POLL,
        || async {
            let refused = op
                .proc
                .log_text()
                .lines()
                .filter(|l| l.contains("reshard watch") && l.contains("not an endpoint"))
                .count();
            (refused >= 3).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    assert_eq!(
        tenant.hits(),
        0,
        "the tenant's server got the operator's requests\n{}",
        op.log_tail()
    );

    // Item 10: what the status repeats of a failed call is one bounded line, not the SDK's
    // Debug dump nor the endpoint's answer.
    let spec = json!({"stream": {"endpoint": junk.endpoint}});
    apps.create(
        &PostParams::default(),
        &app("junk", &env, &stream, "unused", spec)?,
    )
    .await?;
    let c = wait_for(
        "junk: Ready=False",
        Duration::from_secs(120),
        POLL,
        || async {
            let s = apps.get("junk").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    eprintln!("junk endpoint: Ready=False {}: {}", c.reason, c.message);
    assert!(junk.hits() > 0, "the allowed endpoint was called");
    assert!(
        c.message.chars().count() <= 512
            && !c.message.contains('\n')
            && !c.message.contains(" { ")
            && c.message.matches("team-b secret").count() <= 20,
        "a bounded line: {} chars: {}",
        c.message.chars().count(),
        c.message
    );
    delete_all(&apps).await?;
    assert_eq!(tenant.hits(), 0, "nor while deleting");
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Issue 27, attack 6: the operator never takes over an object of the same name it did not
/// create for this very KinesisApplication. A Deployment `counter` a user made, and a
/// ServiceAccount `billing-kinesis` (the name an application with `aws.roleArn` gets): the
/// applications `counter` and `billing` get `Ready=False`, reason `NameConflict`, naming the
/// object, and both objects stay as they were (no worker container, no role annotation, no
/// field of the operator's). On the code before, server-side apply with `force` took the
/// ServiceAccount over (seen: it got the role annotation) and tried the Deployment, which
/// survived only because its selector is immutable: the apply failed as an error, never a
/// condition (seen: no `NameConflict` within 90 s).
#[tokio::test]
async fn an_object_of_the_same_name_that_is_not_the_applications_is_never_taken_over() -> Result<()>
{
    use k8s_openapi::api::core::v1::ServiceAccount;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "takeover").await?;
    let stream = unique_name("takeover");
    env.create_stream(&stream, 1).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let theirs: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "counter", "labels": {"team": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "localhost/pageview-counter:dev",
                    "imagePullPolicy": "Never"}]}
            }
        }
    }))?;
    deployments.create(&PostParams::default(), &theirs).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "billing-kinesis"}}))?;
    accounts.create(&PostParams::default(), &account).await?;

    let op = operator_with(&env, &ns, 3, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    apps.create(
        &PostParams::default(),
        &app("counter", &env, &stream, "unused", json!({}))?,
    )
    .await?;
    let role = json!({"aws": {"roleArn": "arn:aws:iam::123456789012:role/billing"}});
    apps.create(
        &PostParams::default(),
        &app("billing", &env, &stream, "unused", role)?,
    )
    .await?;
    let c = until_condition(&apps, "counter", "Ready", "False", "NameConflict", &op).await?;
    assert!(c.message.contains("Deployment `counter`"), "{}", c.message);
    let c = until_condition(&apps, "billing", "Ready", "False", "NameConflict", &op).await?;
    assert!(
        c.message.contains("ServiceAccount `billing-kinesis`"),
        "{}",
        c.message
    );

    let d = deployments.get("counter").await?;
    let containers: Vec<String> = d
        .spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(containers, ["web"], "the user's Deployment is unchanged");
    assert_eq!(d.spec.replicas, Some(0));
    assert!(d.metadata.owner_references.is_none(), "not adopted");
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m.contains("kinesis-operator")),
        "no field of the operator's: {managers:?}"
    );
    let sa = accounts.get("billing-kinesis").await?;
    assert!(
        !sa.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("eks.amazonaws.com/role-arn"),
        "the ServiceAccount got no role"
    );
    assert!(
        deployments.get_opt("billing").await?.is_none(),
        "no Deployment for an application whose ServiceAccount is taken"
    );
    delete_all(&apps).await?;
    assert!(
        deployments.get_opt("counter").await?.is_some(),
        "the user's Deployment survives the application"
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Creates the fan-out application `efo` (no pods) on `stream` and waits until the operator
/// has registered its consumer.
async fn fan_out_app(
    apps: &Api<KinesisApplication>,
    env: &TestEnv,
    stream: &str,
    op: &Operator,
) -> Result<()> {
    let efo = json!({"replicas": 0, "consumer": {"mode": "EnhancedFanOut"}});
    apps.create(
        &PostParams::default(),
        &app("efo", env, stream, "unused", efo)?,
    )
    .await?;
    wait_for(
        "the consumer registered",
        Duration::from_secs(90),
        POLL,
        || async { apps.get("efo").await.ok()?.status?.consumer.map(|_| ()) },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    Ok(())
}

/// Issue 27, attack 5: a finalizer that never finishes. A fan-out application whose stream
/// was deleted: the consumer went with the stream, so deleting the application must not wait
/// on DescribeStreamSummary for ever — it is gone within a minute, with a `ConsumerGone`
/// Event (or `ConsumerDeregistered`, when kinesis-mock still knew the consumer). On the code before, the cleanup retried DescribeStreamSummary (ResourceNotFound)
/// for ever and the object stayed (seen: not deleted within 60 s).
#[tokio::test]
async fn a_fan_out_application_whose_stream_is_gone_can_still_be_deleted() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "gone").await?;
    let stream = unique_name("gone");
    env.create_stream(&stream, 1).await?;
    let op = operator_with(&env, &ns, 3, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    fan_out_app(&apps, &env, &stream, &op).await?;
    env.remove(Some(&stream), &[]).await;
    wait_for(
        "the stream deleted",
        Duration::from_secs(60),
        POLL,
        || async {
            env.kinesis()
                .await
                .describe_stream_summary()
                .stream_name(&stream)
                .send()
                .await
                .is_err()
                .then_some(())
        },
    )
    .await?;
    apps.delete("efo", &DeleteParams::default()).await?;
    wait_for("efo deleted", Duration::from_secs(60), POLL, || async {
        apps.get_opt("efo").await.ok()?.is_none().then_some(())
    })
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    assert!(
        events(&client, &ns)
            .await?
            .iter()
            .any(|(_, r, _)| r == "ConsumerGone" || r == "ConsumerDeregistered"),
        "an Event says what became of the consumer (gone with its stream, or deregistered while the stream was still being deleted)"
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The consumers registered on `stream`: their names.
async fn consumer_names(env: &TestEnv, stream: &str) -> Result<Vec<String>> {
    let kinesis = env.kinesis().await;
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .ok_or("stream arn")?;
    Ok(kinesis
        .list_stream_consumers()
        .stream_arn(arn)
        .send()
        .await?
        .consumers()
        .iter()
        .map(|c| c.consumer_name().to_string())
        .collect())
}

/// Issue 27, attack 1: deregistering another tenant's fan-out consumer. Team A's worker role
/// may write its lease table, so it rewrites its claim item to name team B's consumer, points
/// its spec at team B's stream and deletes its KinesisApplication. The stream change is
/// refused (`InvalidSpec`), and the cleanup deregisters only the consumer the operator
/// registered for team A — by the ARN recorded in the status, which tenants cannot write —
/// so team B's consumer stays and team A's own is gone (nothing orphaned). On the code
/// before, the cleanup deregistered the consumer the claim item named on the stream the spec
/// named (seen: team B's consumer deregistered).
#[tokio::test]
async fn a_tenant_cannot_make_the_operator_deregister_another_teams_consumer() -> Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "consumers").await?;
    let (stream_a, stream_b) = (unique_name("team-a"), unique_name("team-b"));
    env.create_stream(&stream_a, 1).await?;
    env.create_stream(&stream_b, 1).await?;
    let kinesis = env.kinesis().await;
    let arn_b = kinesis
        .describe_stream_summary()
        .stream_name(&stream_b)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .ok_or("stream arn")?;
    let theirs = unique_name("team-b-consumer");
    kinesis
        .register_stream_consumer()
        .stream_arn(&arn_b)
        .consumer_name(&theirs)
        .send()
        .await?;
    let op = operator_with(&env, &ns, 3, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let efo = json!({"replicas": 0, "consumer": {"mode": "EnhancedFanOut"}});
    apps.create(
        &PostParams::default(),
        &app("a", &env, &stream_a, "unused", efo)?,
    )
    .await?;
    let status = wait_for(
        "team A's consumer registered",
        Duration::from_secs(90),
        POLL,
        || async {
            let s = apps.get("a").await.ok()?.status?;
            s.consumer.as_ref()?.registered_by_operator.then_some(s)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    let table = status.application_name.clone().ok_or("applicationName")?;
    let ours = status.consumer.map(|c| c.name).ok_or("consumer")?;

    // The attack: the spec names team B's stream; once the operator has seen that, the
    // claim item names team B's consumer, and the object is deleted.
    let patch = json!({"spec": {"stream": {"name": stream_b}}});
    apps.patch(
        "a",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    // The operator has seen the new spec (whatever it made of it), then the object goes.
    let ready = wait_for(
        "the new spec observed",
        Duration::from_secs(90),
        POLL,
        || async {
            let s = apps.get("a").await.ok()?.status?;
            (s.observed_generation? >= 2).then(|| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| (c.reason, c.message))
            })
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    env.dynamodb()
        .await
        .update_item()
        .table_name(&table)
        .key(
            "leaseKey",
            AttributeValue::S("kinesis-operator:claim".into()),
        )
        .update_expression("SET koClaimConsumer = :c")
        .expression_attribute_values(":c", AttributeValue::S(theirs.clone()))
        .send()
        .await?;
    delete_app(&apps, "a").await?;

    assert!(
        consumer_names(&env, &stream_b).await?.contains(&theirs),
        "team B's consumer survives\n{}",
        op.log_tail()
    );
    let (reason, message) = ready.ok_or("a Ready condition")?;
    assert_eq!(
        reason, "InvalidSpec",
        "the stream change is refused: {message}"
    );
    assert!(message.contains("spec.stream"), "{message}");
    assert!(
        !consumer_names(&env, &stream_a).await?.contains(&ours),
        "team A's own consumer is deregistered, not orphaned"
    );
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream_a), &[]).await;
    env.remove(Some(&stream_b), &[]).await;
    Ok(())
}

/// `namespace-role` mode against a moto that enforces IAM: the operator's own user may only
/// assume roles. Without a mapping the application gets `NoAwsIdentity` and no AWS call;
/// with one, the operator creates the lease table as the namespace's role (it could not as
/// itself), and the role's missing `kinesis:RegisterStreamConsumer` — which the operator's
/// own user lacks too — leaves nothing registered and says so.
#[tokio::test]
async fn in_namespace_role_mode_the_namespaces_role_decides_and_an_unmapped_namespace_gets_no_call()
-> Result<()> {
    let env = TestEnv::require();
    let stream = unique_name("tenant");
    let moto = kinesis_operator_tests::iam::IamMoto::start(&env, &stream).await?;
    let p = moto.principals.clone();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "roles").await?;
    let roles = "namespace-roles";
    let op = kinesis_operator_tests::cluster::operator_as(
        &env,
        &ns,
        3,
        "operator",
        &[
            "--aws-identity",
            "namespace-role",
            "--namespace-roles",
            roles,
            "--sts-endpoint",
            &moto.url,
            "--allowed-endpoints",
            &moto.url,
        ],
        (&p.operator.id, &p.operator.secret),
    )?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let spec = json!({
        "replicas": 0,
        "consumer": {"mode": "EnhancedFanOut"},
        "stream": {"endpoint": moto.url, "dynamoDbEndpoint": moto.url},
    });
    apps.create(
        &PostParams::default(),
        &app("a", &env, &stream, "unused", spec)?,
    )
    .await?;

    // 1. No mapping: NoAwsIdentity, and not one AWS call.
    let c = until_condition(&apps, "a", "Ready", "False", "NoAwsIdentity", &op).await?;
    assert!(
        c.message.contains(&ns) && c.message.contains(roles),
        "{}",
        c.message
    );
    assert_eq!(
        operator_metric(&op, "kinesis_operator_aws_calls_total", "").await?,
        0.0,
        "{}",
        op.log_tail()
    );

    // 2. The administrator maps the namespace to a role that does not trust the operator:
    // AssumeRole fails, and the condition says where to look.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let untrusting = p.untrusting.clone();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": roles},
            "data": {ns.clone(): untrusting},
        }))?,
    )
    .await?;
    let failed = until_condition(&apps, "a", "Ready", "False", "AssumeRoleFailed", &op).await?;
    assert!(
        failed.message.contains("trust") && !failed.message.contains("arn:"),
        "{}",
        failed.message
    );
    // 3. The administrator maps it to the right role (a change the operator follows).
    cms.patch(
        roles,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {ns.clone(): p.role.clone()}})),
    )
    .await?;
    until_condition(&apps, "a", "LeaseTableReady", "True", "TableActive", &op).await?;
    let denied = until_condition(&apps, "a", "StreamReady", "False", "AccessDenied", &op).await?;
    assert!(
        denied.message.contains("RegisterStreamConsumer"),
        "the condition names the action: {}",
        denied.message
    );
    eprintln!("denied: {}", denied.message);
    assert!(
        denied.message.contains("access denied")
            && denied
                .message
                .contains(&format!("role mapped to namespace `{ns}`"))
            && !denied.message.contains('<')
            && !denied.message.contains(&p.role),
        "one sentence, the fix, no body and no ARN: {}",
        denied.message
    );
    let table = apps
        .get("a")
        .await?
        .status
        .and_then(|s| s.application_name)
        .ok_or("applicationName")?;

    // What the administrator sees: the table exists, no consumer was registered.
    let admin_kinesis = moto.kinesis(&env, &p.admin).await;
    let arn = admin_kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .ok_or("stream arn")?;
    let consumers = admin_kinesis
        .list_stream_consumers()
        .stream_arn(&arn)
        .send()
        .await?
        .consumers
        .unwrap_or_default();
    assert!(consumers.is_empty(), "{consumers:?}");
    let admin_dynamodb = moto.dynamodb(&env, &p.admin).await;
    admin_dynamodb
        .describe_table()
        .table_name(&table)
        .send()
        .await?;

    // The operator's own identity could have done neither.
    let own = moto.kinesis(&env, &p.operator).await;
    let register = own
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("own")
        .send()
        .await;
    assert!(
        register.is_err(),
        "the operator's own user may not register"
    );
    let own_dynamodb = moto.dynamodb(&env, &p.operator).await;
    assert!(
        own_dynamodb.list_tables().send().await.is_err(),
        "the operator's own user may not use DynamoDB"
    );

    // 4. Deleting the object cleans up as the role (deletionPolicy: Delete).
    delete_app(&apps, "a").await?;
    let gone = admin_dynamodb
        .describe_table()
        .table_name(&table)
        .send()
        .await;
    assert!(gone.is_err(), "the table was deleted as the role");
    drop(op);
    delete_namespace(&client, &ns).await?;
    Ok(())
}

/// The sum of the operator's samples of `name` whose line contains `label` ("" for all).
async fn operator_metric(op: &Operator, name: &str, label: &str) -> Result<f64> {
    let (_, page) = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics").await?;
    Ok(page
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Attack 2: many objects naming one stream (another team's, say) must not multiply the
/// operator's calls on it. In `operator` identity mode the reshard watch lists each stream
/// once a round, however many applications read it.
#[tokio::test]
async fn many_applications_on_one_stream_cost_it_one_shard_listing_a_round() -> Result<()> {
    const APPS: usize = 8;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "watch").await?;
    let stream = unique_name("shared");
    env.create_stream(&stream, 2).await?;
    // Reconciles far apart: the listings counted are the watch's.
    let op = operator_with(&env, &ns, 600, "operator", &["--shard-poll-seconds", "1"])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    for i in 0..APPS {
        apps.create(
            &PostParams::default(),
            &app(
                &format!("a{i}"),
                &env,
                &stream,
                "unused",
                json!({"replicas": 0}),
            )?,
        )
        .await?;
    }
    for i in 0..APPS {
        until_condition(
            &apps,
            &format!("a{i}"),
            "LeaseTableReady",
            "True",
            "TableActive",
            &op,
        )
        .await?;
    }
    // Every application has been sized (the watch checks it from the next round on).
    let r = operator_metric(&op, "kinesis_operator_reshard_rounds", "").await?;
    wait_for("two more rounds", Duration::from_secs(60), POLL, || async {
        let now = operator_metric(&op, "kinesis_operator_reshard_rounds", "")
            .await
            .ok()?;
        (now >= r + 2.0).then_some(())
    })
    .await?;
    let (calls0, rounds0, checked0) = (
        operator_metric(&op, "kinesis_operator_aws_calls_total", "ListShards").await?,
        operator_metric(&op, "kinesis_operator_reshard_rounds", "").await?,
        operator_metric(&op, "kinesis_operator_reshard_polls", "").await?,
    );
    wait_for("ten more rounds", Duration::from_secs(60), POLL, || async {
        let r = operator_metric(&op, "kinesis_operator_reshard_rounds", "")
            .await
            .ok()?;
        (r >= rounds0 + 10.0).then_some(())
    })
    .await?;
    let (calls1, rounds1, checked1) = (
        operator_metric(&op, "kinesis_operator_aws_calls_total", "ListShards").await?,
        operator_metric(&op, "kinesis_operator_reshard_rounds", "").await?,
        operator_metric(&op, "kinesis_operator_reshard_polls", "").await?,
    );
    let (calls, rounds, checked) = (calls1 - calls0, rounds1 - rounds0, checked1 - checked0);
    eprintln!("{rounds} rounds: {checked} applications checked, {calls} ListShards calls");
    assert!(
        checked >= (rounds - 1.0) * APPS as f64,
        "every application checked each round"
    );
    // One listing a round (one page: 2 shards), plus at most one in-flight round.
    assert!(
        calls <= rounds + 1.0,
        "{calls} ListShards for {rounds} rounds of {APPS} applications on one stream\n{}",
        op.log_tail()
    );
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Issue 30: a fan-out application's stream and consumer are described when it is first
/// reconciled, then taken as found for 10 minutes, not described on every reconcile
/// (DescribeStreamSummary allows 20 calls a second per account, DescribeStreamConsumer 20 per
/// stream: 500 applications reconciled every 5 minutes made 1.7 of each a second). The
/// operator reconciles every second here; the calls are counted from its metrics.
#[tokio::test]
async fn a_fan_out_application_is_not_described_again_on_every_reconcile() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "describe").await?;
    let stream = unique_name("described");
    env.create_stream(&stream, 1).await?;
    let op = operator_with(&env, &ns, 1, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    fan_out_app(&apps, &env, &stream, &op).await?;
    let describes = || async {
        Ok::<f64, Box<dyn std::error::Error>>(
            operator_metric(
                &op,
                "kinesis_operator_aws_calls_total",
                "DescribeStreamConsumer",
            )
            .await?
                + operator_metric(
                    &op,
                    "kinesis_operator_aws_calls_total",
                    "DescribeStreamSummary",
                )
                .await?,
        )
    };
    let (before, reconciles0) = (
        describes().await?,
        operator_metric(&op, "kinesis_operator_reconciles_total", "").await?,
    );
    wait_for(
        "ten more reconciles",
        Duration::from_secs(60),
        POLL,
        || async {
            let r = operator_metric(&op, "kinesis_operator_reconciles_total", "")
                .await
                .ok()?;
            (r >= reconciles0 + 10.0).then_some(())
        },
    )
    .await?;
    let (after, reconciles1) = (
        describes().await?,
        operator_metric(&op, "kinesis_operator_reconciles_total", "").await?,
    );
    let (calls, reconciles) = (after - before, reconciles1 - reconciles0);
    eprintln!("{reconciles} reconciles of a fan-out application: {calls} Describe calls");
    assert!(
        calls == 0.0,
        "{calls} DescribeStreamSummary/DescribeStreamConsumer calls in {reconciles} reconciles\n{}",
        op.log_tail()
    );
    // The consumer is still the one the workers are given.
    let consumer = apps.get("efo").await?.status.and_then(|s| s.consumer);
    assert!(consumer.is_some_and(|c| c.registered_by_operator));
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Attack 4: the tenant's worker role can write its lease table, and the operator scans every
/// application's table every resync. 36 MB of 300 KB `pendingCheckpointState` on lease items,
/// and 200 KB child-shard lists: the operator's peak memory grows by far less than that (only the
/// status's attributes are read, an oversized item is skipped, the scan is bounded), it keeps
/// reconciling, and another application is served.
#[tokio::test]
async fn a_lease_table_full_of_large_junk_neither_exhausts_the_operator_nor_stalls_others()
-> Result<()> {
    use aws_sdk_dynamodb::primitives::Blob;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "junk").await?;
    let stream = unique_name("junk");
    env.create_stream(&stream, 1).await?;
    let op = operator_with(&env, &ns, 2, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    apps.create(
        &PostParams::default(),
        &app("junk", &env, &stream, "unused", json!({"replicas": 0}))?,
    )
    .await?;
    until_condition(&apps, "junk", "LeaseTableReady", "True", "TableActive", &op).await?;
    let table = apps
        .get("junk")
        .await?
        .status
        .and_then(|s| s.application_name)
        .ok_or("applicationName")?;
    let reconciles = || operator_metric(&op, "kinesis_operator_reconciles", "");
    let more_reconciles = |n: f64| async move {
        let from = reconciles().await?;
        wait_for(
            "more reconciles",
            Duration::from_secs(120),
            POLL,
            || async { (reconciles().await.ok()? >= from + n).then_some(()) },
        )
        .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    more_reconciles(3.0).await?;
    let before = op.proc.peak_rss_mib()?;

    // The tenant's junk: lease items with 300 KB of checkpoint state, and 200 KB child lists.
    let dynamodb = env.dynamodb().await;
    let state = Blob::new(vec![7u8; 300 * 1024]);
    for i in 0..120 {
        dynamodb
            .put_item()
            .table_name(&table)
            .item(
                "leaseKey",
                AttributeValue::S(format!("shardId-junk-{i:04}")),
            )
            .item("checkpoint", AttributeValue::S("TRIM_HORIZON".into()))
            .item("leaseCounter", AttributeValue::N("1".into()))
            .item("pendingCheckpointState", AttributeValue::B(state.clone()))
            .send()
            .await?;
    }
    for i in 0..20 {
        dynamodb
            .put_item()
            .table_name(&table)
            .item("leaseKey", AttributeValue::S(format!("shardId-big-{i:04}")))
            .item(
                "childShardIds",
                AttributeValue::Ss(
                    (0..100)
                        .map(|c| format!("{c:04}{}", "c".repeat(2044)))
                        .collect(),
                ),
            )
            .send()
            .await?;
    }
    more_reconciles(10.0).await?;
    apps.create(
        &PostParams::default(),
        &app("other", &env, &stream, "unused", json!({"replicas": 0}))?,
    )
    .await?;
    until_condition(
        &apps,
        "other",
        "LeaseTableReady",
        "True",
        "TableActive",
        &op,
    )
    .await?;
    more_reconciles(5.0).await?;
    let after = op.proc.peak_rss_mib()?;
    let grown = after - before;
    eprintln!(
        "operator peak RSS {before:.1} → {after:.1} MiB (+{grown:.1} MiB) over a 40 MB table"
    );
    assert!(
        grown < 20.0,
        "the operator's peak memory grew {grown:.1} MiB scanning 40 MB of junk\n{}",
        op.log_tail()
    );
    assert!(
        op.proc.log_text().contains("skipping a lease table item"),
        "the oversized items are reported"
    );
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Attack 3: a tenant names a table outside its namespace's prefix — another team's default
/// name before that team exists, or an existing KCL table to adopt (and publish its owners
/// and checkpoints in its own status). Without the administrator's allowance the object gets
/// `InvalidSpec` naming the fix, and no table is created, claimed or read.
#[tokio::test]
async fn an_application_name_outside_the_namespace_is_refused_unless_the_administrator_allows_it()
-> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "names").await?;
    let stream = unique_name("names");
    env.create_stream(&stream, 1).await?;
    // An existing KCL application's table, with a lease in it.
    let kcl = unique_name("kcl-orders");
    create_table(&env, &kcl, "leaseKey").await?;
    let dynamodb = env.dynamodb().await;
    dynamodb
        .put_item()
        .table_name(&kcl)
        .item("leaseKey", AttributeValue::S("shardId-000000000000".into()))
        .item("leaseOwner", AttributeValue::S("kcl-worker-1".into()))
        .item(
            "checkpoint",
            AttributeValue::S("49590338271490256608559692538361571095921575989136588898".into()),
        )
        .send()
        .await?;
    let squatted = format!("{}.orders", unique_name("team-b"));
    // Only namespace `migration` may use any name.
    let op = operator_with(
        &env,
        &ns,
        3,
        "operator",
        &["--unprefixed-application-names", "migration"],
    )?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let replicas0 = |name: &str| json!({"replicas": 0, "applicationName": name});
    apps.create(
        &PostParams::default(),
        &app("squat", &env, &stream, "unused", replicas0(&squatted))?,
    )
    .await?;
    apps.create(
        &PostParams::default(),
        &app("adopt", &env, &stream, "unused", replicas0(&kcl))?,
    )
    .await?;
    let own = format!("{ns}.orders");
    apps.create(
        &PostParams::default(),
        &app("own", &env, &stream, "unused", replicas0(&own))?,
    )
    .await?;
    for name in ["squat", "adopt"] {
        let c = until_condition(&apps, name, "Ready", "False", "InvalidSpec", &op).await?;
        assert!(
            c.message.contains("spec.applicationName")
                && c.message.contains(&format!("{ns}.<name>")),
            "{name}: {}",
            c.message
        );
        let a = apps.get(name).await?;
        assert!(
            a.metadata.finalizers.unwrap_or_default().is_empty(),
            "{name}: a refused object owns nothing"
        );
        assert!(
            a.status.map(|s| s.shard_status.is_empty()).unwrap_or(true),
            "{name}: nothing of the table is published"
        );
    }
    // The object in its own names is served.
    until_condition(&apps, "own", "LeaseTableReady", "True", "TableActive", &op).await?;
    assert!(
        !table_exists(&env, &squatted).await,
        "no table made for the squatted name"
    );
    let claim = dynamodb
        .get_item()
        .table_name(&kcl)
        .key(
            "leaseKey",
            AttributeValue::S("kinesis-operator:claim".into()),
        )
        .consistent_read(true)
        .send()
        .await?;
    assert!(claim.item.is_none(), "the KCL table is not claimed");
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&kcl]).await;
    Ok(())
}

/// Attack 8, the chart's part: with `worker.networkPolicy` on, each application's worker pods
/// get a NetworkPolicy admitting only the chosen peers to the admin port (the app's own ports
/// stay open), made and kept by the operator — and one of that name that is not the
/// application's is never taken over. (The test cluster's network plugin enforces no
/// NetworkPolicy: what is checked is the object, not the packets.)
#[tokio::test]
async fn the_worker_admin_port_admits_only_the_chosen_peers() -> Result<()> {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "netpol").await?;
    let stream = unique_name("netpol");
    env.create_stream(&stream, 1).await?;
    let peers =
        r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#;
    let op = operator_with(
        &env,
        &ns,
        3,
        "operator",
        &["--worker-network-policy-from", peers],
    )?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    // Somebody else's policy under the name the second application's would have.
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "taken-workers"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
            }))?,
        )
        .await?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    let mut a = app("orders", &env, &stream, "unused", json!({"replicas": 0}))?;
    if let Some(c) = a
        .spec
        .template
        .spec
        .as_mut()
        .and_then(|p| p.containers.first_mut())
    {
        c.ports = Some(vec![serde_json::from_value(
            json!({"containerPort": 9000}),
        )?]);
    }
    apps.create(&PostParams::default(), &a).await?;
    apps.create(
        &PostParams::default(),
        &app("taken", &env, &stream, "unused", json!({"replicas": 0}))?,
    )
    .await?;
    let np = wait_for(
        "the workers' NetworkPolicy",
        Duration::from_secs(90),
        POLL,
        || async { policies.get_opt("orders-workers").await.ok()? },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    let spec = serde_json::to_value(np.spec)?;
    assert_eq!(
        spec["ingress"],
        json!([
            {"from": serde_json::from_str::<Value>(peers)?, "ports": [{"port": 8080, "protocol": "TCP"}]},
            {"ports": [{"port": 9000, "protocol": "TCP"}]},
        ]),
        "{spec}"
    );
    let d: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let selector = d
        .get("orders")
        .await?
        .spec
        .selector
        .match_labels
        .ok_or("the Deployment's selector")?;
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        serde_json::to_value(selector)?
    );
    let c = until_condition(&apps, "taken", "Ready", "False", "NameConflict", &op).await?;
    assert!(
        c.message.contains("NetworkPolicy `taken-workers`"),
        "{}",
        c.message
    );
    let theirs = policies.get("taken-workers").await?;
    assert_eq!(
        serde_json::to_value(theirs.spec)?["ingress"],
        json!([{}]),
        "the other policy is untouched"
    );
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[]).await;
    Ok(())
}

/// Item 9: an object deleted with its finalizer stripped is never reconciled again; what the
/// operator kept of it (its metric series, caches, assumed-role clients) goes anyway.
#[tokio::test]
async fn what_the_operator_keeps_of_an_application_goes_with_it_even_without_its_finalizer()
-> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "stripped").await?;
    let stream = unique_name("stripped");
    env.create_stream(&stream, 1).await?;
    let op = operator_with(&env, &ns, 2, "operator", &[])?;
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    apps.create(
        &PostParams::default(),
        &app("gone", &env, &stream, "unused", json!({"replicas": 0}))?,
    )
    .await?;
    let series = r#"application="gone""#;
    wait_for(
        "its metric series",
        Duration::from_secs(90),
        POLL,
        || async {
            let page = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics")
                .await
                .ok()?
                .1;
            page.contains(series).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    // Strip the finalizer, then delete: the operator never reconciles it again.
    apps.patch(
        "gone",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    apps.delete("gone", &DeleteParams::default()).await?;
    wait_for(
        "its series dropped",
        Duration::from_secs(60),
        POLL,
        || async {
            let page = kinesis_operator_tests::pipeline::http_get(&op.admin, "/metrics")
                .await
                .ok()?
                .1;
            (!page.contains(series)).then_some(())
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    // Its lease table stays (no cleanup ran): removed here.
    env.remove(Some(&stream), &[]).await;
    Ok(())
}
