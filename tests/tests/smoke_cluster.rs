//! Cluster smoke tests: pods on the real node run our locally built image, their logs are
//! readable through the API, and from inside a pod the Kinesis and DynamoDB servers answer.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// A namespace of its own for one test (deleted at its end).
async fn namespace(client: &Client) -> Result<String> {
    let name = unique_name("smoke");
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    // The controller-manager creates the default ServiceAccount shortly after; pods are
    // refused until it exists.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_for(
        "default ServiceAccount",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await?;
    Ok(name)
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// A pod running `kinesis-worker` with `args`, pointed at the local servers.
fn worker_pod(
    env: &TestEnv,
    name: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
    restart: &str,
) -> Result<Pod> {
    let mut vars = env.worker_env();
    for (k, v) in extra_env {
        vars.retain(|(key, _)| key != k);
        vars.push(((*k).to_string(), (*v).to_string()));
    }
    let vars: Vec<_> = vars
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "worker",
                "image": env.require_image("kinesis-worker")?,
                "imagePullPolicy": "Never",
                "args": args,
                "env": vars,
            }],
        },
    }))?)
}

async fn logs(pods: &Api<Pod>, name: &str) -> String {
    pods.logs(name, &LogParams::default())
        .await
        .unwrap_or_default()
}

async fn run_to_completion(pods: &Api<Pod>, pod: &Pod, name: &str) -> Result<(String, String)> {
    pods.create(&PostParams::default(), pod).await?;
    let done = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    };
    let pod = tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(pods.clone(), name, done),
    )
    .await
    .map_err(|_| format!("pod {name} did not finish within 90 s"))??;
    let phase = pod
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
        .unwrap_or_default();
    Ok((phase, logs(pods, name).await))
}

#[tokio::test]
async fn locally_built_image_runs_and_its_logs_are_readable() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    let ns = namespace(&client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = worker_pod(
        &env,
        "worker",
        &["preflight", "--interval", "1"],
        &[],
        "Always",
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(pods.clone(), "worker", conditions::is_pod_running()),
    )
    .await
    .map_err(|_| "pod with the local kinesis-worker image not Running within 90 s")??;
    // The first report is printed within a second of the start; wait for it in the logs.
    let text = wait_for(
        "a preflight report in the pod's logs",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async {
            let text = logs(&pods, "worker").await;
            text.contains("dynamodb:").then_some(text)
        },
    )
    .await?;
    assert!(text.contains("kinesis: ok"), "logs: {text}");
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn kinesis_and_dynamodb_answer_from_inside_a_pod() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    let ns = namespace(&client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = worker_pod(&env, "preflight", &["preflight"], &[], "Never")?;
    let (phase, text) = run_to_completion(&pods, &pod, "preflight").await?;
    assert_eq!(phase, "Succeeded", "logs: {text}");
    assert!(text.contains("kinesis: ok"), "logs: {text}");
    assert!(text.contains("dynamodb: ok"), "logs: {text}");
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn preflight_in_a_pod_names_an_unreachable_endpoint() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    let ns = namespace(&client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Port 1 on the node's own address: nothing listens there.
    let wrong = format!("http://{}:1", env.node_ip);
    let pod = worker_pod(
        &env,
        "preflight",
        &["preflight", "--timeout", "5"],
        &[("KINESIS_ENDPOINT", &wrong)],
        "Never",
    )?;
    let (phase, text) = run_to_completion(&pods, &pod, "preflight").await?;
    assert_eq!(phase, "Failed", "logs: {text}");
    assert!(
        text.contains(&format!("kinesis: FAILED: kinesis at {wrong}")),
        "logs: {text}"
    );
    assert!(text.contains("dynamodb: ok"), "logs: {text}");
    delete_namespace(&client, &ns).await
}
