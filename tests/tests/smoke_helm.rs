//! Helm smoke test: the Helm 3 of the environment installs, upgrades and uninstalls a chart
//! on the test cluster (the path the chart tests will take).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn helm(env: &TestEnv, args: &[&str]) -> Result<String> {
    let out = Command::new(&env.helm)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A chart with one ConfigMap whose data comes from a value.
fn write_chart(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\n",
    )?;
    std::fs::write(dir.join("values.yaml"), "greeting: hello\n")?;
    std::fs::write(
        dir.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )?;
    Ok(())
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_a_chart() -> Result<()> {
    let env = TestEnv::require();
    let client = env.kube().await?;
    let ns = unique_name("smoke-helm");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let chart = std::env::temp_dir().join(&ns);
    write_chart(&chart)?;
    let chart_path = chart.display().to_string();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let greeting = |cm: Option<ConfigMap>| {
        cm.and_then(|c| c.data)
            .and_then(|d| d.get("greeting").cloned())
    };

    helm(
        &env,
        &[
            "install",
            "smoke",
            &chart_path,
            "--namespace",
            &ns,
            "--wait",
        ],
    )?;
    assert_eq!(
        greeting(configmaps.get_opt("smoke").await?).as_deref(),
        Some("hello")
    );

    helm(
        &env,
        &[
            "upgrade",
            "smoke",
            &chart_path,
            "--namespace",
            &ns,
            "--set",
            "greeting=bonjour",
        ],
    )?;
    assert_eq!(
        greeting(configmaps.get_opt("smoke").await?).as_deref(),
        Some("bonjour")
    );
    let history = helm(
        &env,
        &["history", "smoke", "--namespace", &ns, "--output", "json"],
    )?;
    let revisions: serde_json::Value = serde_json::from_str(&history)?;
    assert_eq!(revisions.as_array().map(Vec::len), Some(2), "{history}");

    helm(&env, &["uninstall", "smoke", "--namespace", &ns])?;
    wait_for(
        "ConfigMap removed by uninstall",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            configmaps
                .get_opt("smoke")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await?;

    std::fs::remove_dir_all(&chart)?;
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}
