//! Kubernetes fixtures: the CRD installed, a namespace per test, and the operator running as a
//! process against the test cluster (watching only that namespace).

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinesis_operator::crd::KinesisApplication;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};

use std::collections::BTreeMap;

use serde_json::json;

use crate::process::{Proc, binary};
use crate::wait_for;
use crate::{TestEnv, unique_name};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const POLL: Duration = Duration::from_millis(500);

/// Applies the generated CRD (server-side) and waits until it is established.
///
/// # Errors
/// The API server refused it, or it was not established within 30 s.
pub async fn install_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = KinesisApplication::crd();
    let name = crd.metadata.name.clone().ok_or("crd name")?;
    crds.patch(
        &name,
        &PatchParams::apply("kinesis-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await??;
    Ok(())
}

/// Deletes every KinesisApplication behind `apps` while an operator still runs (its finalizer
/// cleans up), and waits until they are gone.
///
/// # Errors
/// The delete failed, or they were not gone within 60 s.
pub async fn delete_all(apps: &Api<KinesisApplication>) -> Result<()> {
    apps.delete_collection(&DeleteParams::default(), &kube::api::ListParams::default())
        .await?;
    wait_for(
        "applications deleted",
        Duration::from_secs(60),
        POLL,
        || async {
            apps.list(&kube::api::ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Creates a namespace named after `prefix`.
///
/// # Errors
/// The API server refused it.
pub async fn namespace(client: &Client, prefix: &str) -> Result<String> {
    let ns = unique_name(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    Ok(ns)
}

/// Deletes a namespace (and everything in it).
///
/// # Errors
/// The API server refused.
pub async fn delete_namespace(client: &Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(ns, &DeleteParams::default()).await?;
    Ok(())
}

/// The operator as a process with the admin kubeconfig, watching `ns` only, injecting the
/// locally built worker image, reconciling every `resync_seconds`.
///
/// # Errors
/// It could not be built or started.
pub fn operator(env: &TestEnv, ns: &str, resync_seconds: u64) -> Result<Operator> {
    operator_with(env, ns, resync_seconds, "operator", &[])
}

/// A running operator process and its admin address.
pub struct Operator {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT` of its admin port.
    pub admin: String,
}

impl Operator {
    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }
}

/// As [`operator`], named `name` (its log file and leader identity), with `extra` arguments.
///
/// # Errors
/// It could not be built or started.
pub fn operator_with(
    env: &TestEnv,
    ns: &str,
    resync_seconds: u64,
    name: &str,
    extra: &[&str],
) -> Result<Operator> {
    operator_as(env, ns, resync_seconds, name, extra, ("test", "test"))
}

/// As [`operator_with`], with the AWS access key `(id, secret)` as its own identity.
///
/// # Errors
/// It could not be built or started.
pub fn operator_as(
    env: &TestEnv,
    ns: &str,
    resync_seconds: u64,
    name: &str,
    extra: &[&str],
    key: (&str, &str),
) -> Result<Operator> {
    let port = crate::free_port()?;
    // A bench may run another build of the operator (KINESIS_OPERATOR_BIN: a release one).
    let program = match std::env::var_os("KINESIS_OPERATOR_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => binary("kinesis-operator")?,
    };
    let mut cmd = Command::new(program);
    cmd.env("KUBECONFIG", &env.kubeconfig)
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .env("LOG_LEVEL", "info,kinesis_operator=debug")
        .args(["--worker-image", &crate::image("kinesis-worker")])
        .args(["--worker-image-pull-policy", "Never"])
        .args(["--region", &env.region])
        .args(["--resync-seconds", &resync_seconds.to_string()])
        .args(["--admin-address", &format!("127.0.0.1:{port}")])
        .args(["--watch-namespace", ns, "--lease-namespace", ns])
        .args(["--log-format", "text", "--identity", name])
        // The local servers the test specs name (the operator refuses any other endpoint).
        .args([
            "--allowed-endpoints",
            &format!("{},{}", env.kinesis_endpoint, env.dynamodb_endpoint),
        ])
        .args(extra);
    // The test applications name their own lease tables (`unique_name`), outside the
    // namespace's prefix; a test of that rule passes the flag itself.
    if !extra.contains(&"--unprefixed-application-names") {
        cmd.args(["--unprefixed-application-names", "*"]);
    }
    let logs = crate::env_file()
        .parent()
        .map(|d| d.join("logs/test-operators"))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&logs)?;
    let proc = Proc::spawn(cmd, logs.join(format!("{ns}-{name}.log")))?;
    Ok(Operator {
        proc,
        admin: format!("127.0.0.1:{port}"),
    })
}

/// The pageview-counter KinesisApplication `name` on `stream`, counting into `counts_table`.
///
/// # Errors
/// Never for these literals.
pub fn application(
    name: &str,
    env: &TestEnv,
    stream: &str,
    counts_table: &str,
) -> Result<KinesisApplication> {
    let aws_env = json!([
        {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
    ]);
    Ok(serde_json::from_value(json!({
        "apiVersion": "kinesis-operator.io/v1alpha1",
        "kind": "KinesisApplication",
        "metadata": {"name": name},
        "spec": {
            "stream": {
                "name": stream,
                "region": env.region,
                "endpoint": env.kinesis_endpoint,
                "dynamoDbEndpoint": env.dynamodb_endpoint,
            },
            "applicationName": unique_name("counter"),
            "leaseTable": {"deletionPolicy": "Delete"},
            "consumer": {"idleTimeBetweenReadsMs": 100, "checkpointIntervalMs": 1000},
            "worker": {"env": aws_env},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "counter",
                    "image": crate::image("pageview-counter"),
                    "imagePullPolicy": "Never",
                    "env": [
                        {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
                        {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
                        {"name": "AWS_REGION", "value": env.region},
                        {"name": "DYNAMODB_ENDPOINT", "value": env.dynamodb_endpoint},
                        {"name": "COUNTS_TABLE", "value": counts_table},
                        {"name": "FLUSH_INTERVAL_MS", "value": "500"},
                    ],
                }]
            }}
        }
    }))?)
}

/// Puts `count` pageviews; returns the count per client.
///
/// # Errors
/// The producer failed.
pub fn produce(env: &TestEnv, stream: &str, count: u32) -> Result<BTreeMap<String, u64>> {
    let out = Command::new(binary("pageview-producer")?)
        .envs(env.worker_env())
        .args([
            "--stream",
            stream,
            "--count",
            &count.to_string(),
            "--clients",
            "8",
            "--rate",
            "0",
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("producer: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (c, n) = l.split_once(' ')?;
            Some((c.to_string(), n.parse().ok()?))
        })
        .collect())
}

/// Adds the counts per client `more` (as [`produce`] returns them) to `total`.
pub fn add_counts(total: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (k, v) in more {
        *total.entry(k).or_insert(0) += v;
    }
}

/// `kubectl <args>` against the test cluster: its stdout, or the error with stderr.
///
/// # Errors
/// kubectl could not be started or exited non-zero.
pub fn kubectl(env: &TestEnv, args: &[&str]) -> Result<String> {
    let out = Command::new(&env.kubectl)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// client id → pageviews in a counts table.
pub async fn counts(env: &TestEnv, table: &str) -> Option<BTreeMap<String, u64>> {
    let out = env
        .dynamodb()
        .await
        .scan()
        .table_name(table)
        .send()
        .await
        .ok()?;
    Some(
        out.items()
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("client_id")?.as_s().ok()?.clone(),
                    i.get("pageviews")?.as_n().ok()?.parse().ok()?,
                ))
            })
            .collect(),
    )
}

/// Waits until the counts table holds `expected`.
///
/// # Errors
/// Not within 120 s (with what was there and `logs`).
pub async fn until_counts(
    env: &TestEnv,
    table: &str,
    expected: &BTreeMap<String, u64>,
    logs: &str,
) -> Result<()> {
    let res = wait_for(
        "pageview counts",
        Duration::from_secs(120),
        POLL,
        || async { (counts(env, table).await.as_ref() == Some(expected)).then_some(()) },
    )
    .await;
    match res {
        Ok(()) => Ok(()),
        Err(e) => {
            let got = counts(env, table).await;
            Err(format!("{e}: got {got:?}, expected {expected:?}\n{logs}").into())
        }
    }
}

/// Restarts the test node's kubelet as a node's restart of it does: SIGTERM to the running one
/// (the pid in the environment's pid file, checked against its program), then the same
/// program, arguments, environment and working folder started again in its own process group,
/// its output appended to its log, its pid written back so `cargo xtask env down` stops it.
/// The pods keep running under containerd meanwhile. Returns once the new kubelet's health
/// port answers.
///
/// # Errors
/// No running kubelet recorded, it did not stop within 30 s, or the new one did not answer
/// within 60 s.
pub async fn restart_kubelet() -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let env_dir = crate::env_file()
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or("environment folder")?;
    let pid_file = env_dir.join("pids/kubelet.pid");
    let text = std::fs::read_to_string(&pid_file)?;
    let mut lines = text.lines();
    let pid: u32 = lines.next().ok_or("pid")?.trim().parse()?;
    let exe = lines.next().ok_or("program")?.trim().to_string();
    let running = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    if running.to_string_lossy().trim_end_matches(" (deleted)") != exe {
        return Err(format!("pid {pid} is not the kubelet ({exe})").into());
    }
    let split = |bytes: Vec<u8>| -> Vec<std::ffi::OsString> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| std::ffi::OsStr::from_bytes(s).to_os_string())
            .collect()
    };
    let argv = split(std::fs::read(format!("/proc/{pid}/cmdline"))?);
    let environ = split(std::fs::read(format!("/proc/{pid}/environ"))?);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    wait_for(
        "the kubelet stopped",
        Duration::from_secs(30),
        POLL,
        || async { (!std::path::Path::new(&format!("/proc/{pid}/exe")).exists()).then_some(()) },
    )
    .await?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(env_dir.join("logs/kubelet.log"))?;
    let (program, args) = argv.split_first().ok_or("kubelet command line")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    for pair in &environ {
        if let Some((k, v)) = pair.to_string_lossy().split_once('=') {
            cmd.env(k, v);
        }
    }
    let child = cmd.spawn()?;
    std::fs::write(&pid_file, format!("{}\n{exe}\n", child.id()))?;
    wait_for(
        "the kubelet answers",
        Duration::from_secs(60),
        POLL,
        || async {
            let (status, _) = crate::pipeline::http_get("127.0.0.1:10248", "/healthz")
                .await
                .ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    Ok(())
}
