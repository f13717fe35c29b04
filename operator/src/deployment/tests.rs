use serde_json::json;

use super::*;

fn app(spec: serde_json::Value) -> KinesisApplication {
    let mut obj = json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": "counter", "namespace": "shop", "uid": "0000-1111"},
        "spec": {
            "stream": {"name": "Pageviews", "region": "us-east-1", "endpoint": "http://10.250.0.1:4567"},
            "template": {
                "metadata": {"labels": {"team": "web"}},
                "spec": {"containers": [{"name": "app", "image": "pageview-counter:dev"}]}
            }
        }
    });
    if let (Some(base), Some(patch)) = (obj["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in patch {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(obj).unwrap_or_else(|e| panic!("test spec: {e}"))
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        image: "localhost/kinesis-worker:dev".into(),
        pull_policy: Some("Never".into()),
        default_region: Some("eu-west-1".into()),
        network_policy_from: None,
    }
}

fn pod(d: &Deployment) -> PodSpec {
    d.spec.template.spec.clone().unwrap_or_default()
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

#[test]
fn the_worker_joins_the_app_with_a_shared_socket_and_a_drain_hook() {
    let d = deployment(&app(json!({})), 4, &settings(), None);
    assert_eq!(d.metadata.name.as_deref(), Some("counter"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("shop"));
    let owner = d.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].kind, "KinesisApplication");
    assert_eq!(owner[0].controller, Some(true));
    let spec = d.spec.clone();
    assert_eq!(spec.replicas, Some(4));
    let labels = spec
        .template
        .metadata
        .clone()
        .unwrap_or_default()
        .labels
        .unwrap_or_default();
    assert_eq!(
        labels.get("team").map(String::as_str),
        Some("web"),
        "user labels kept"
    );
    for (k, v) in spec.selector.match_labels.clone().unwrap_or_default() {
        assert_eq!(labels.get(&k), Some(&v), "the selector matches the pods");
    }

    let p = pod(&d);
    assert_eq!(p.containers.len(), 2);
    let (app_c, worker) = (&p.containers[0], &p.containers[1]);
    assert_eq!(worker.name, WORKER_CONTAINER);
    assert_eq!(
        worker.image.as_deref(),
        Some("localhost/kinesis-worker:dev")
    );
    assert_eq!(worker.args, Some(vec!["run".to_string()]));
    let env = env_of(worker);
    assert_eq!(
        env.get("KINESIS_STREAM").map(String::as_str),
        Some("Pageviews")
    );
    assert_eq!(
        env.get("KINESIS_APPLICATION").map(String::as_str),
        Some("shop.counter"),
        "the default application name holds the namespace"
    );
    assert_eq!(env.get("AWS_REGION").map(String::as_str), Some("us-east-1"));
    assert_eq!(
        env.get("KINESIS_ENDPOINT").map(String::as_str),
        Some("http://10.250.0.1:4567")
    );
    assert_eq!(
        env.get("DYNAMODB_ENDPOINT").map(String::as_str),
        Some("http://10.250.0.1:4567")
    );
    assert_eq!(
        env.get("CREATE_LEASE_TABLE").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        env.get("APP_ADDRESS").map(String::as_str),
        Some("unix:///var/run/kinesis/processor.sock")
    );
    let worker_id = worker.env.iter().flatten().find(|e| e.name == "WORKER_ID");
    assert_eq!(
        worker_id
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name"),
        "the worker id is the pod name"
    );
    // The app gets the socket folder, its address and the preStop drain.
    assert_eq!(
        env_of(app_c).get("APP_ADDRESS").map(String::as_str),
        Some("unix:///var/run/kinesis/processor.sock")
    );
    let mounts = |c: &Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| format!("{}:{}", m.name, m.mount_path))
            .collect()
    };
    assert_eq!(mounts(app_c), vec!["kinesis-processor:/var/run/kinesis"]);
    assert_eq!(mounts(worker), vec!["kinesis-processor:/var/run/kinesis"]);
    let pre_stop = app_c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .map(|g| (g.path.clone(), g.port.clone()));
    assert_eq!(
        pre_stop,
        Some((Some("/drained".into()), IntOrString::Int(ADMIN_PORT))),
        "the app's preStop waits for the worker's drain and starts nothing"
    );
    assert!(
        p.volumes
            .iter()
            .flatten()
            .any(|v| v.name == SOCKET_VOLUME && v.empty_dir.is_some())
    );
    assert_eq!(p.termination_grace_period_seconds, Some(40));
    assert!(p.init_containers.is_none());
    let sc = worker.security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}

#[test]
fn settings_reach_the_worker_and_the_operator_s_consumer_arn_too() {
    let a = app(json!({
        "initialPosition": "AT_TIMESTAMP",
        "initialTimestamp": "2026-11-26T00:00:00Z",
        "consumer": {"mode": "EnhancedFanOut", "maxRecords": 500, "failoverTimeMs": 20000, "checkpointIntervalMs": 1000, "maxAttempts": 3},
        "delivery": {"onFailureDestination": "arn:aws:sqs:us-east-1:123456789012:dlq", "bisectBatchOnError": true, "maximumRecordAgeSeconds": 3600,
                     "reportBatchItemFailures": true, "batchSize": 100, "parallelizationFactor": 4, "maximumBatchingWindowSeconds": 2,
                     "filters": ["{\"data\": {\"type\": [\"click\"]}}", "{\"partitionKey\": [{\"prefix\": \"vip-\"}]}"]},
        "processor": {"port": 50051},
        "worker": {"image": "registry.example/kinesis-worker:1.2", "logLevel": "debug"},
        "aws": {"roleArn": "arn:aws:iam::123456789012:role/counter"},
        "template": {"spec": {"terminationGracePeriodSeconds": 120, "containers": [{"name": "app"}]}}
    }));
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/Pageviews/consumer/counter:1";
    let d = deployment(&a, 2, &settings(), Some(arn));
    let p = pod(&d);
    assert_eq!(p.containers.len(), 2, "the worker is a regular container");
    assert!(p.init_containers.is_none());
    let init = [p.containers[1].clone()];
    let env = env_of(&init[0]);
    assert_eq!(env.get("CONSUMER_ARN").map(String::as_str), Some(arn));
    for (k, v) in [
        ("INITIAL_POSITION", "AT_TIMESTAMP"),
        ("INITIAL_TIMESTAMP", "2026-11-26T00:00:00Z"),
        ("CONSUMER_MODE", "enhanced-fan-out"),
        ("MAX_RECORDS", "500"),
        ("FAILOVER_TIME_MS", "20000"),
        ("CHECKPOINT_INTERVAL_MS", "1000"),
        ("MAX_ATTEMPTS", "3"),
        (
            "ON_FAILURE_DESTINATION",
            "arn:aws:sqs:us-east-1:123456789012:dlq",
        ),
        ("BISECT_ON_ERROR", "true"),
        ("MAX_RECORD_AGE_SECONDS", "3600"),
        ("REPORT_BATCH_ITEM_FAILURES", "true"),
        ("BATCH_SIZE", "100"),
        ("PARALLELIZATION_FACTOR", "4"),
        ("BATCHING_WINDOW_MS", "2000"),
        (
            "FILTERS",
            r#"[{"data":{"type":["click"]}},{"partitionKey":[{"prefix":"vip-"}]}]"#,
        ),
        ("APP_ADDRESS", "http://127.0.0.1:50051"),
        ("LOG_LEVEL", "debug"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(
        init[0].image.as_deref(),
        Some("registry.example/kinesis-worker:1.2")
    );
    assert!(p.volumes.is_none(), "no socket volume with a TCP processor");
    assert_eq!(p.service_account_name.as_deref(), Some("counter-kinesis"));
    assert_eq!(
        p.termination_grace_period_seconds,
        Some(120),
        "the longer grace period wins"
    );
}

#[test]
fn the_region_comes_from_the_spec_the_arn_or_the_operator() {
    let s = settings();
    assert_eq!(region(&app(json!({})), &s).as_deref(), Some("us-east-1"));
    let by_arn =
        app(json!({"stream": {"arn": "arn:aws:kinesis:ap-south-1:123456789012:stream/P"}}));
    assert_eq!(region(&by_arn, &s).as_deref(), Some("ap-south-1"));
    let bare = app(json!({"stream": {"name": "P"}}));
    assert_eq!(region(&bare, &s).as_deref(), Some("eu-west-1"));
}

/// Every field Pod Security's "restricted" profile checks, on the injected worker: the
/// 1.20 test cluster has no Pod Security admission, so the rendered spec is checked here.
#[test]
fn the_worker_passes_the_restricted_pod_security_profile() {
    let d = deployment(&app(json!({})), 1, &settings(), None);
    let p = pod(&d);
    let worker = p
        .containers
        .iter()
        .find(|c| c.name == WORKER_CONTAINER)
        .cloned()
        .unwrap_or_default();
    let sc = worker.security_context.clone().unwrap_or_default();
    let pod_sc = p.security_context.clone().unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()]),
        "drop ALL, add nothing"
    );
    assert_eq!(sc.run_as_non_root, Some(true));
    // No fixed uid: the image's user (65532 in ours), or the one OpenShift's restricted SCC
    // assigns from the namespace's range (a fixed one outside it is refused).
    assert_eq!(sc.run_as_user, None);
    let seccomp = sc
        .seccomp_profile
        .or(pod_sc.seccomp_profile)
        .map(|s| s.type_);
    assert!(
        matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")),
        "{seccomp:?}"
    );
    // Nothing the operator adds uses the host.
    assert_ne!(p.host_network, Some(true));
    assert_ne!(p.host_pid, Some(true));
    assert_ne!(p.host_ipc, Some(true));
    for v in p.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "{}", v.name);
    }
    for port in worker.ports.iter().flatten() {
        assert!(port.host_port.is_none());
    }
}

/// The default memory limit grows with `shardsPerWorker` (10 MiB a shard for twice the
/// share, after a failover), from 128 MiB up to 4 GiB, and a spec's own resources win.
#[test]
fn the_default_memory_limit_follows_shards_per_worker() {
    let limit = |spec: serde_json::Value| {
        let d = deployment(&app(spec), 2, &settings(), None);
        let worker = pod(&d)
            .containers
            .into_iter()
            .find(|c| c.name == WORKER_CONTAINER)
            .unwrap_or_else(|| panic!("no worker container"));
        worker
            .resources
            .and_then(|r| r.limits)
            .and_then(|l| l.get("memory").cloned())
            .map(|q| q.0)
            .unwrap_or_default()
    };
    assert_eq!(limit(json!({})), "128Mi");
    assert_eq!(limit(json!({"scaling": {"shardsPerWorker": 3}})), "128Mi");
    assert_eq!(limit(json!({"scaling": {"shardsPerWorker": 4}})), "144Mi");
    assert_eq!(limit(json!({"scaling": {"shardsPerWorker": 20}})), "464Mi");
    assert_eq!(
        limit(json!({"scaling": {"shardsPerWorker": 100000}})),
        "4096Mi"
    );
    assert_eq!(
        limit(json!({
            "scaling": {"shardsPerWorker": 20},
            "worker": {"resources": {"limits": {"memory": "1Gi"}}}
        })),
        "1Gi"
    );
    // Never from the stream's shard count: the same spec, any replicas, the same limit.
    let d1 = deployment(&app(json!({})), 1, &settings(), None);
    let d9 = deployment(&app(json!({})), 9, &settings(), None);
    assert_eq!(d1.spec.template, d9.spec.template);
}

#[test]
fn an_object_of_the_same_name_is_taken_over_only_if_it_is_this_applications() {
    let a = app(json!({}));
    let meta = |owner: Option<(&str, bool)>| -> ObjectMeta {
        serde_json::from_value(json!({
            "name": "counter",
            "ownerReferences": owner.map(|(uid, controller)| vec![json!({
                "apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication",
                "name": "counter", "uid": uid, "controller": controller,
            })]),
        }))
        .unwrap_or_else(|e| panic!("meta: {e}"))
    };
    // None there yet: nothing in the way.
    assert_eq!(name_conflict(&a, "Deployment", "counter", None), None);
    // Ours (controller reference with this uid): applied as usual.
    let ours = meta(Some(("0000-1111", true)));
    assert_eq!(
        name_conflict(&a, "Deployment", "counter", Some(&ours)),
        None
    );
    // A user's, another object's (same name, other uid: deleted and recreated), or ours
    // only as a non-controller reference: refused, naming the object.
    for other in [
        meta(None),
        meta(Some(("9999", true))),
        meta(Some(("0000-1111", false))),
    ] {
        let msg = name_conflict(&a, "Deployment", "counter", Some(&other))
            .unwrap_or_else(|| panic!("{other:?} taken over"));
        assert!(
            msg.starts_with("Deployment `counter` already exists"),
            "{msg}"
        );
    }
}

/// The worker's environment is [`worker_settings`] rendered, with the worker id from the pod's
/// name, in the order it always had: another order is another pod template, and an operator
/// upgrade would restart every worker. The names are spelled out here: the worker reads
/// them (`tests/tests/worker_settings.rs` checks that it does).
#[test]
fn the_worker_env_keeps_its_names_and_order() {
    let a = app(json!({
        "initialPosition": "AT_TIMESTAMP",
        "initialTimestamp": "2026-11-26T00:00:00Z",
        "consumer": {"mode": "EnhancedFanOut", "maxRecords": 500, "idleTimeBetweenReadsMs": 100, "failoverTimeMs": 20000,
                     "checkpointIntervalMs": 1000, "maxAttempts": 3},
        "delivery": {"onFailureDestination": "arn:aws:sqs:us-east-1:123456789012:dlq", "bisectBatchOnError": true, "maximumRecordAgeSeconds": 3600,
                     "reportBatchItemFailures": true, "batchSize": 100, "parallelizationFactor": 4, "maximumBatchingWindowSeconds": 2,
                     "filters": ["{\"data\": {\"type\": [\"click\"]}}"]},
        "worker": {"logLevel": "debug"}
    }));
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/Pageviews/consumer/counter:1";
    let d = deployment(&a, 1, &settings(), Some(arn));
    let worker = pod(&d)
        .containers
        .into_iter()
        .find(|c| c.name == WORKER_CONTAINER)
        .unwrap_or_else(|| panic!("no worker container"));
    let names: Vec<&str> = worker
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "KINESIS_STREAM",
            "KINESIS_APPLICATION",
            "WORKER_ID",
            "APP_ADDRESS",
            "ADMIN_ADDRESS",
            "CREATE_LEASE_TABLE",
            "LOG_FORMAT",
            "LOG_LEVEL",
            "AWS_REGION",
            "KINESIS_ENDPOINT",
            "DYNAMODB_ENDPOINT",
            "INITIAL_POSITION",
            "INITIAL_TIMESTAMP",
            "CONSUMER_MODE",
            "CONSUMER_ARN",
            "MAX_RECORDS",
            "IDLE_TIME_MS",
            "FAILOVER_TIME_MS",
            "CHECKPOINT_INTERVAL_MS",
            "MAX_ATTEMPTS",
            "MAX_RECORD_AGE_SECONDS",
            "BATCH_SIZE",
            "PARALLELIZATION_FACTOR",
            "BATCHING_WINDOW_MS",
            "ON_FAILURE_DESTINATION",
            "BISECT_ON_ERROR",
            "REPORT_BATCH_ITEM_FAILURES",
            "FILTERS",
        ]
    );
    let env = env_of(&worker);
    for (k, v) in [
        ("ADMIN_ADDRESS", "0.0.0.0:8080"),
        ("LOG_FORMAT", "json"),
        ("IDLE_TIME_MS", "100"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    let rendered: BTreeMap<String, String> = worker_settings(&a, &settings(), Some(arn))
        .to_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(env, rendered, "every value is the settings' own");
}

/// Polling: no consumer mode and no consumer ARN (even if one is passed), and the user's
/// own variables replace the operator's.
#[test]
fn polling_renders_no_consumer_and_the_user_s_env_wins() {
    let a = app(
        json!({"worker": {"env": [{"name": "MAX_RECORDS", "value": "42"}, {"name": "LOG_FORMAT", "value": "text"}]}}),
    );
    let d = deployment(
        &a,
        1,
        &settings(),
        Some("arn:aws:kinesis:us-east-1:1:stream/P/consumer/c:1"),
    );
    let worker = pod(&d)
        .containers
        .into_iter()
        .find(|c| c.name == WORKER_CONTAINER)
        .unwrap_or_else(|| panic!("no worker container"));
    let env = env_of(&worker);
    assert_eq!(env.get("CONSUMER_MODE"), None);
    assert_eq!(env.get("CONSUMER_ARN"), None);
    assert_eq!(env.get("MAX_RECORDS").map(String::as_str), Some("42"));
    assert_eq!(env.get("LOG_FORMAT").map(String::as_str), Some("text"));
    let log_formats = worker
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "LOG_FORMAT")
        .count();
    assert_eq!(log_formats, 1, "replaced, not doubled");
}

#[test]
fn kcl_multilang_runs_the_users_command_behind_the_bridge_copied_in_by_an_init_container() {
    let a = app(json!({
        "processor": {"protocol": "kcl-multilang", "command": ["python3", "sample_kclpy_app.py"]},
        "template": {"spec": {"containers": [
            {"name": "app", "image": "python:3.11-slim", "args": ["--verbose"]}
        ]}}
    }));
    let p = pod(&deployment(&a, 1, &settings(), None));
    let app_c = &p.containers[0];
    assert_eq!(
        app_c.command.clone().unwrap_or_default(),
        [
            "/opt/kinesis-bridge/kinesis-bridge",
            "multilang",
            "--",
            "python3",
            "sample_kclpy_app.py"
        ]
    );
    assert_eq!(
        app_c.args,
        Some(vec!["--verbose".to_string()]),
        "the container's args follow"
    );
    assert_eq!(
        app_c.image.as_deref(),
        Some("python:3.11-slim"),
        "the image is the user's"
    );
    let mounts = app_c.volume_mounts.clone().unwrap_or_default();
    assert!(
        mounts.iter().any(|m| m.name == "kinesis-bridge"
            && m.mount_path == "/opt/kinesis-bridge"
            && m.read_only == Some(true)),
        "{mounts:?}"
    );
    let init = p.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), 1);
    assert_eq!(
        init[0].image.as_deref(),
        Some("localhost/kinesis-worker:dev")
    );
    assert_eq!(
        init[0].command.clone().unwrap_or_default(),
        ["/kinesis-bridge", "install", "/opt/kinesis-bridge"]
    );
    assert!(
        p.volumes
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|v| v.name == "kinesis-bridge" && v.empty_dir.is_some())
    );
    // The worker is unchanged: the bridge serves the gRPC contract on the socket.
    let worker = env_of(&p.containers[1]);
    assert!(!worker.contains_key("LAMBDA_RUNTIME_API"));
}

#[test]
fn lambda_points_the_function_at_the_workers_runtime_api() {
    let a = app(json!({
        "stream": {"arn": "arn:aws:kinesis:us-east-2:123456789012:stream/Pageviews"},
        "processor": {"protocol": "lambda", "handler": "app.handler"},
        "template": {"spec": {"containers": [{"name": "app", "image": "my-function:1",
            "resources": {"limits": {"memory": "512Mi"}},
            "env": [{"name": "AWS_LAMBDA_FUNCTION_NAME", "value": "mine"}]}]}}
    }));
    let p = pod(&deployment(&a, 1, &settings(), None));
    let app_env = env_of(&p.containers[1]);
    assert_eq!(
        app_env.get("AWS_LAMBDA_RUNTIME_API").map(String::as_str),
        Some("127.0.0.1:9001")
    );
    assert_eq!(
        app_env.get("_HANDLER").map(String::as_str),
        Some("app.handler")
    );
    assert_eq!(
        app_env
            .get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .map(String::as_str),
        Some("512")
    );
    assert_eq!(
        app_env.get("AWS_REGION").map(String::as_str),
        Some("us-east-2")
    );
    assert_eq!(
        app_env.get("AWS_LAMBDA_FUNCTION_NAME").map(String::as_str),
        Some("mine"),
        "what the user set wins"
    );
    // The worker first, held by its postStart hook until the Runtime API listens: the
    // kubelet starts the function only then.
    assert_eq!(p.containers[0].name, "kinesis-worker");
    let post_start = p.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_default();
    assert_eq!(
        post_start,
        [
            "/usr/local/bin/kinesis-worker",
            "wait-listening",
            "127.0.0.1:9001"
        ]
    );
    assert_eq!(p.containers[1].name, "app");
    assert_eq!(
        p.containers[1].command, None,
        "the image starts as it does on Lambda"
    );
    assert!(p.init_containers.is_none());
    let worker = env_of(&p.containers[0]);
    assert_eq!(
        worker.get("LAMBDA_RUNTIME_API").map(String::as_str),
        Some("127.0.0.1:9001")
    );
    assert_eq!(
        worker.get("LAMBDA_FUNCTION_ARN").map(String::as_str),
        Some("arn:aws:lambda:us-east-2:123456789012:function:counter")
    );
}

#[test]
fn a_rollout_starts_a_quarter_of_the_fleet_at_a_time_and_stops_none_before() {
    let strategy = |spec: serde_json::Value| {
        deployment(&app(spec), 500, &settings(), None)
            .spec
            .strategy
            .and_then(|s| s.rolling_update)
            .map(|r| (r.max_surge, r.max_unavailable))
    };
    assert_eq!(
        strategy(json!({})),
        Some((
            Some(IntOrString::String("25%".into())),
            Some(IntOrString::Int(0))
        )),
        "Kubernetes's default surge, none unavailable"
    );
    assert_eq!(
        strategy(json!({"scaling": {"maxSurgePercent": 100}})),
        Some((
            Some(IntOrString::String("100%".into())),
            Some(IntOrString::Int(0))
        ))
    );
}
