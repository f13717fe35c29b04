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

use crate::process::{Proc, binary};
use crate::{TestEnv, unique_name};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

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
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(binary("kinesis-operator")?);
    cmd.env("KUBECONFIG", &env.kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("LOG_LEVEL", "info,kinesis_operator=debug")
        .args(["--worker-image", &crate::image("kinesis-worker")])
        .args(["--worker-image-pull-policy", "Never"])
        .args(["--region", &env.region])
        .args(["--resync-seconds", &resync_seconds.to_string()])
        .args(["--admin-address", &format!("127.0.0.1:{port}")])
        .args(["--watch-namespace", ns, "--lease-namespace", ns])
        .args(["--log-format", "text", "--identity", name])
        .args(extra);
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
