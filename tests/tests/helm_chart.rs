//! The Helm chart on the real cluster: lint, schema errors, install (the operator runs under
//! the chart's ServiceAccount and RBAC, not admin, and an application counts records), the
//! RBAC allows what the operator does and forbids Secrets, upgrade with changed values, and
//! uninstall keeps the CRD.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kinesis_operator::crd::KinesisApplication;
use kinesis_operator_tests::cluster::{
    application, delete_all, delete_namespace, install_crd, namespace, produce, until_counts,
};
use kinesis_operator_tests::{TestEnv, unique_name};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kinesis-operator")
}

fn run(env: &TestEnv, program: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(program)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(args)
        .output()?)
}

fn ok(out: Output, what: &str) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

#[tokio::test]
async fn lint_is_clean_and_bad_values_are_rejected() -> Result<()> {
    let env = TestEnv::require();
    let chart = chart();
    let chart = chart.to_string_lossy();
    let lint = ok(
        run(&env, &env.helm, &["lint", "--strict", &chart])?,
        "helm lint --strict",
    )?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    for (set, expect) in [
        (
            "replicaCount=two",
            "replicaCount: Invalid type. Expected: integer",
        ),
        (
            "logFormat=xml",
            "logFormat: logFormat must be one of the following",
        ),
        (
            "image.pullPolicy=Sometimes",
            "image.pullPolicy: image.pullPolicy must be one of the following",
        ),
        (
            "resyncSeconds=0",
            "resyncSeconds: Must be greater than or equal to 1",
        ),
        (
            "nosuchvalue=1",
            "Additional property nosuchvalue is not allowed",
        ),
    ] {
        let out = run(&env, &env.helm, &["template", "x", &chart, "--set", set])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "--set {set}: {err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_chart_runs_the_operator_under_its_own_rbac_upgrades_and_keeps_the_crd() -> Result<()> {
    let env = TestEnv::require();
    for image in ["kinesis-operator", "kinesis-worker", "pageview-counter"] {
        env.require_image(image)?;
    }
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "helm").await?;
    let release = unique_name("ko");
    // Other tests install the CRD too: let this release adopt it (Helm's ownership marks).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "kinesisapplications.kinesis-operator.io",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns}
        }})),
    )
    .await?;
    // No kube-proxy on the test node: the operator reaches the API server at the node's
    // address instead of the `kubernetes` Service.
    let extra_env = json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": env.node_ip},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
    ])
    .to_string();
    let chart = chart();
    let chart = chart.to_string_lossy().to_string();
    let install = ok(
        run(
            &env,
            &env.helm,
            &[
                "install",
                &release,
                &chart,
                "--namespace",
                &ns,
                "--wait",
                "--timeout",
                "180s",
                "--set",
                "image.repository=localhost/kinesis-operator",
                "--set",
                "image.tag=dev",
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "worker.image=localhost/kinesis-worker:dev",
                "--set",
                "worker.imagePullPolicy=Never",
                "--set",
                &format!("region={}", env.region),
                "--set",
                &format!("watchNamespace={ns}"),
                "--set",
                "resyncSeconds=3",
                "--set",
                "logFormat=text",
                "--set-json",
                &format!("extraEnv={extra_env}"),
            ],
        )?,
        "helm install",
    )?;
    assert!(install.contains("Next steps"), "NOTES.txt shown: {install}");

    // The operator runs under the chart's ServiceAccount.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let name = format!("{release}-kinesis-operator");
    let d = deployments.get(&name).await?;
    let sa = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.service_account_name.clone());
    assert_eq!(sa.as_deref(), Some(name.as_str()));
    let who = format!("system:serviceaccount:{ns}:{name}");
    let kubectl = env.kubectl.clone();
    let can = |verb: &str, resource: &str| -> Result<String> {
        let out = run(
            &env,
            &kubectl,
            &[
                "auth",
                "can-i",
                verb,
                resource,
                "--as",
                &who,
                "--all-namespaces",
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(
        can("get", "secrets")?,
        "no",
        "the operator may not read Secrets"
    );
    assert_eq!(can("list", "pods")?, "no");
    assert_eq!(can("patch", "deployments.apps")?, "yes");
    assert_eq!(
        can("patch", "kinesisapplications.kinesis-operator.io/status")?,
        "yes"
    );

    // And it does its job with that: an application counts records.
    let stream = unique_name("pageviews");
    env.create_stream(&stream, 2).await?;
    let table = unique_name("counts");
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    apps.create(
        &PostParams::default(),
        &application("counter", &env, &stream, &table)?,
    )
    .await?;
    let expected = produce(&env, &stream, 200)?;
    let logs = String::from_utf8_lossy(
        &run(
            &env,
            &kubectl,
            &[
                "logs",
                "-n",
                &ns,
                &format!("deployment/{name}"),
                "--tail",
                "20",
            ],
        )?
        .stdout,
    )
    .to_string();
    until_counts(&env, &table, &expected, &logs).await?;

    // Upgrade with changed values: the Deployment follows.
    ok(
        run(
            &env,
            &env.helm,
            &[
                "upgrade",
                &release,
                &chart,
                "--namespace",
                &ns,
                "--reuse-values",
                "--wait",
                "--timeout",
                "180s",
                "--set",
                "logFormat=json",
            ],
        )?,
        "helm upgrade",
    )?;
    let d = deployments.get(&name).await?;
    let env_of = d
        .spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env_of
            .iter()
            .any(|e| e.name == "LOG_FORMAT" && e.value.as_deref() == Some("json")),
        "{env_of:?}"
    );

    // Uninstall (applications first, while the operator runs its finalizer): the CRD stays.
    delete_all(&apps).await?;
    ok(
        run(
            &env,
            &env.helm,
            &["uninstall", &release, "--namespace", &ns, "--wait"],
        )?,
        "helm uninstall",
    )?;
    assert!(
        crds.get_opt("kinesisapplications.kinesis-operator.io")
            .await?
            .is_some(),
        "the CRD is kept"
    );
    assert!(
        deployments.get_opt(&name).await?.is_none(),
        "the operator is gone"
    );

    delete_namespace(&client, &ns).await?;
    env.remove(Some(&stream), &[&table]).await;
    Ok(())
}
