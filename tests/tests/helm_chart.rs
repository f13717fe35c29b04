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
        (
            "aws.identity=everyone",
            "aws.identity: aws.identity must be one of the following",
        ),
        (
            "aws.namespaceRoles.team-a=arn:aws:iam::123456789012:user/x",
            "aws.namespaceRoles.team-a: Does not match pattern",
        ),
        (
            "podDisruptionBudget.minAvailable=0",
            "podDisruptionBudget.minAvailable: Must be greater than or equal to 1",
        ),
        (
            "podDisruptionBudget.maxUnavailable=half",
            "podDisruptionBudget.maxUnavailable: Does not match pattern",
        ),
        (
            "metrics.serviceMonitor.labels.release=1",
            "metrics.serviceMonitor.labels.release: Invalid type. Expected: string",
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

/// Every document `helm template` renders with `sets`.
fn render(env: &TestEnv, sets: &[&str]) -> Result<Vec<serde_json::Value>> {
    let chart = chart();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", "ko", &chart, "--namespace", "ops"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = ok(run(env, &env.helm, &args)?, "helm template")?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kinds(docs: &[serde_json::Value]) -> Vec<(String, String)> {
    docs.iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// What users of KEDA's and cert-manager's charts expect to set: the names
/// (`nameOverride`, `fullnameOverride`), extra pod labels, the pod's and the container's
/// security contexts (restricted by default, with no fixed `runAsUser` for OpenShift's SCC to
/// refuse), a PriorityClass and topology spread constraints.
#[tokio::test]
async fn the_chart_takes_the_usual_overrides_and_fixes_no_uid() -> Result<()> {
    let env = TestEnv::require();
    let deployment = |docs: &[serde_json::Value]| -> Result<serde_json::Value> {
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .cloned()
            .ok_or_else(|| "no Deployment".into())
    };
    // Defaults: restricted, and the uid is the image's (65532), not the chart's.
    let d = deployment(&render(&env, &[])?)?;
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        pod["securityContext"]["runAsUser"].is_null(),
        "{}",
        pod["securityContext"]
    );
    let c = &pod["containers"][0]["securityContext"];
    assert!(c["runAsUser"].is_null(), "{c}");
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert!(pod["priorityClassName"].is_null());
    // Overrides (two replicas: with one there is no PodDisruptionBudget to name).
    let docs = render(
        &env,
        &[
            "replicaCount=2",
            "fullnameOverride=kop",
            "podLabels.team=payments",
            "podSecurityContext.runAsUser=1000710000",
            "podSecurityContext.runAsNonRoot=true",
            "securityContext.readOnlyRootFilesystem=false",
            "priorityClassName=system-cluster-critical",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        ],
    )?;
    let d = deployment(&docs)?;
    assert_eq!(d["metadata"]["name"], "kop");
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "payments");
    assert!(
        d["spec"]["selector"]["matchLabels"]["team"].is_null(),
        "extra labels stay out of the immutable selector"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 1000710000);
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        false
    );
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["spec"]["topologySpreadConstraints"][0]["maxSkew"], 1);
    // Every object the chart names after itself takes the override.
    let names = kinds(&docs);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
    ] {
        assert!(
            names.iter().any(|(k, n)| k == kind && n == "kop"),
            "{kind} kop in {names:?}"
        );
    }
    assert!(names.contains(&("Service".into(), "kop-metrics".into())));
    // nameOverride: RELEASE-NAME, and the name label.
    let docs = render(&env, &["nameOverride=kinesis"])?;
    let d = deployment(&docs)?;
    assert_eq!(d["metadata"]["name"], "ko-kinesis");
    assert_eq!(
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "kinesis"
    );
    Ok(())
}

/// The Prometheus Operator objects are rendered whenever enabled, by `helm template` too (no
/// `--api-versions`: the chart does not ask the cluster for their CRDs, as KEDA's and
/// cert-manager's charts do not), each labelled `release: RELEASE` for kube-prometheus-stack's
/// default selectors, plus the extra labels given, which win.
#[tokio::test]
async fn the_monitors_render_when_enabled_with_release_and_extra_labels() -> Result<()> {
    let env = TestEnv::require();
    let monitors = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
    let off = render(&env, &[])?;
    assert!(
        !off.iter().any(|d| monitors.iter().any(|m| d["kind"] == *m)),
        "no monitor unless asked for: {:?}",
        kinds(&off)
    );
    let docs = render(
        &env,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
        ],
    )?;
    for kind in monitors {
        let m = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .ok_or_else(|| format!("no {kind} in {:?}", kinds(&docs)))?;
        let labels = &m["metadata"]["labels"];
        assert_eq!(labels["release"], "ko", "{kind}: {labels}");
        assert_eq!(
            labels["app.kubernetes.io/instance"], "ko",
            "{kind}: {labels}"
        );
    }
    // The ServiceMonitor selects the metrics Service.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .ok_or("no Service")?;
    let selector = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .and_then(|d| d["spec"]["selector"]["matchLabels"].as_object().cloned())
        .unwrap_or_default();
    assert!(!selector.is_empty(), "the ServiceMonitor has a selector");
    for (k, v) in &selector {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "{k}: the Service's label"
        );
    }
    // Extra labels: kube-prometheus-stack selects on its own release's name.
    let docs = render(
        &env,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
            "metrics.podMonitor.enabled=true",
            "metrics.podMonitor.labels.team=observability",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.role=alert-rules",
        ],
    )?;
    let labels_of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .map(|d| d["metadata"]["labels"].clone())
            .unwrap_or_default()
    };
    let sm = labels_of("ServiceMonitor");
    assert_eq!(
        sm["release"], "kube-prometheus-stack",
        "the extra label wins: {sm}"
    );
    let pm = labels_of("PodMonitor");
    assert_eq!(pm["release"], "ko", "{pm}");
    assert_eq!(pm["team"], "observability", "{pm}");
    let pr = labels_of("PrometheusRule");
    assert_eq!(pr["release"], "ko", "{pr}");
    assert_eq!(pr["role"], "alert-rules", "{pr}");
    // A ServiceMonitor with no Service to scrape is refused, not rendered to select nothing.
    let err = render(
        &env,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.service.enabled=false",
        ],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("needs metrics.service.enabled"), "{err}");
    Ok(())
}

/// The PodDisruptionBudget protects something or is not made: none with one replica (a budget
/// would then block every node drain or protect nothing), `minAvailable: 1` by default with
/// two, `maxUnavailable` instead when set; a budget that lets no pod, or every pod, be evicted
/// fails the install.
#[tokio::test]
async fn the_pdb_protects_something_or_is_not_made() -> Result<()> {
    let env = TestEnv::require();
    let pdb = |docs: &[serde_json::Value]| {
        docs.iter()
            .find(|d| d["kind"] == "PodDisruptionBudget")
            .cloned()
    };
    assert!(
        pdb(&render(&env, &[])?).is_none(),
        "no PodDisruptionBudget with replicaCount 1"
    );
    assert!(
        pdb(&render(
            &env,
            &["replicaCount=2", "podDisruptionBudget.enabled=false"]
        )?)
        .is_none()
    );
    for (sets, field, value) in [
        (&["replicaCount=2"][..], "minAvailable", json!(1)),
        (
            &["replicaCount=3", "podDisruptionBudget.maxUnavailable=1"][..],
            "maxUnavailable",
            json!(1),
        ),
        (
            &["replicaCount=4", "podDisruptionBudget.minAvailable=50%"][..],
            "minAvailable",
            json!("50%"),
        ),
    ] {
        let docs = render(&env, sets)?;
        let p = pdb(&docs).ok_or_else(|| format!("no PodDisruptionBudget with {sets:?}"))?;
        let d = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .ok_or("no Deployment")?;
        let spec = &p["spec"];
        assert_eq!(spec[field], value, "{sets:?}: {spec}");
        let other = if field == "minAvailable" {
            "maxUnavailable"
        } else {
            "minAvailable"
        };
        assert!(spec[other].is_null(), "{sets:?}: one of the two: {spec}");
        assert_eq!(
            spec["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"],
            "{sets:?}: the budget covers the operator's pods"
        );
        // It protects: at least one pod stays and at least one may be evicted.
        let replicas = d["spec"]["replicas"].as_i64().ok_or("no replicas")?;
        assert!(replicas >= 2, "{sets:?}: {replicas} replicas");
        if let Some(n) = spec[field].as_i64() {
            let evictable = if field == "minAvailable" {
                replicas - n
            } else {
                n
            };
            assert!(
                (1..replicas).contains(&evictable),
                "{sets:?}: {evictable} of {replicas} pods evictable"
            );
        }
    }
    for (sets, expect) in [
        (
            ["replicaCount=2", "podDisruptionBudget.minAvailable=2"],
            "lets 0 of 2 pods be evicted",
        ),
        (
            ["replicaCount=2", "podDisruptionBudget.maxUnavailable=2"],
            "lets 2 of 2 pods be evicted",
        ),
        (
            ["replicaCount=3", "podDisruptionBudget.minAvailable=100%"],
            "lets 0 of 3 pods be evicted",
        ),
    ] {
        let err = render(&env, &sets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expect), "{sets:?}: {err}");
    }
    Ok(())
}

/// A folder under the temporary directory, removed when dropped (a failing test too).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm package` makes the archive `helm push oci://…` takes (`NAME-VERSION.tgz`), holding
/// the README, the schema and the CRD and no stray files, with the metadata a published chart
/// carries; the packaged chart renders and checks its values like the folder.
#[tokio::test]
async fn helm_package_makes_a_complete_archive() -> Result<()> {
    let env = TestEnv::require();
    let dir = TempDir(std::env::temp_dir().join(unique_name("chartpkg")));
    std::fs::create_dir_all(&dir.0)?;
    let chart_dir = chart();
    let chart_path = chart_dir.to_string_lossy();
    let dest = dir.0.to_string_lossy();
    ok(
        run(
            &env,
            &env.helm,
            &["package", &chart_path, "--destination", &dest],
        )?,
        "helm package",
    )?;
    let meta: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir.join("Chart.yaml"))?)?;
    let version = meta["version"].as_str().ok_or("Chart.yaml: no version")?;
    let tgz = dir.0.join(format!("kinesis-operator-{version}.tgz"));
    assert!(tgz.is_file(), "{} made", tgz.display());
    let tgz_path = tgz.to_string_lossy();
    let listing = ok(
        Command::new("tar").arg("-tzf").arg(&tgz).output()?,
        "tar -tzf",
    )?;
    let entries: Vec<&str> = listing.lines().collect();
    for want in [
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        "templates/crds.yaml",
        "files/kinesisapplications.yaml",
        "files/grafana-dashboard.json",
    ] {
        let entry = format!("kinesis-operator/{want}");
        assert!(entries.contains(&entry.as_str()), "{entry} in {entries:?}");
    }
    for &e in &entries {
        let rest = e.strip_prefix("kinesis-operator/").unwrap_or_default();
        let known = [
            "Chart.yaml",
            "values.yaml",
            "values.schema.json",
            "README.md",
            ".helmignore",
        ]
        .contains(&rest)
            || rest.starts_with("templates/")
            || rest.starts_with("files/");
        assert!(known, "unexpected {e} in the package: {entries:?}");
    }
    // The metadata of a published chart, as `helm show` reads it from the archive.
    let shown: serde_json::Value = serde_yaml::from_str(&ok(
        run(&env, &env.helm, &["show", "chart", &tgz_path])?,
        "helm show chart",
    )?)?;
    assert_eq!(shown["apiVersion"], "v2");
    assert_eq!(shown["type"], "application");
    for key in [
        "version",
        "appVersion",
        "kubeVersion",
        "home",
        "description",
    ] {
        assert!(
            shown[key].as_str().is_some_and(|v| !v.is_empty()),
            "Chart.yaml {key}: {shown}"
        );
    }
    for key in ["sources", "maintainers", "keywords"] {
        assert!(
            shown[key].as_array().is_some_and(|v| !v.is_empty()),
            "Chart.yaml {key}: {shown}"
        );
    }
    let readme = ok(
        run(&env, &env.helm, &["show", "readme", &tgz_path])?,
        "helm show readme",
    )?;
    assert!(readme.contains("| `replicaCount` |"), "{readme}");
    let rendered = ok(
        run(&env, &env.helm, &["template", "x", &tgz_path])?,
        "helm template (the package)",
    )?;
    assert!(rendered.contains("kind: CustomResourceDefinition"));
    let out = run(
        &env,
        &env.helm,
        &["template", "x", &tgz_path, "--set", "replicaCount=two"],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("replicaCount: Invalid type"),
        "the packaged schema checks values: {err}"
    );
    Ok(())
}

/// The values a README table lists, walking values.yaml along the schema: a row per value,
/// descending into the schema's sections (objects with `properties`); a free-form object
/// (`resources`, `securityContext`, `labels`…) is one row whose default holds its nested keys.
/// (path, the schema's type, default); a key the schema lacks is an error.
fn value_rows(
    values: &serde_json::Value,
    schema: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<(String, String, serde_json::Value)>,
) -> Result<()> {
    for (key, value) in values.as_object().into_iter().flatten() {
        let path = format!("{prefix}{key}");
        let s = &schema["properties"][key];
        if s.is_null() {
            return Err(format!("values.schema.json has no {path}").into());
        }
        if s["properties"].is_object() && value.is_object() {
            value_rows(value, s, &format!("{path}."), out)?;
        } else {
            let ty = match &s["type"] {
                serde_json::Value::Array(types) => types
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                t => t.as_str().unwrap_or("?").to_string(),
            };
            out.push((path, ty, value.clone()));
        }
    }
    Ok(())
}

/// The chart's README has a values table with every key of values.yaml (nested ones included),
/// its type in the schema and its default, and no row for a key values.yaml lacks.
#[test]
fn the_readme_lists_every_value_with_its_type_and_default() -> Result<()> {
    let values: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml"))?)?;
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        chart().join("values.schema.json"),
    )?)?;
    let readme = std::fs::read_to_string(chart().join("README.md"))?;
    // Rows: | `key` | type | `default as JSON` | description |
    let mut rows = std::collections::BTreeMap::new();
    for line in readme.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row
            .trim_end_matches('|')
            .splitn(4, " | ")
            .map(str::trim)
            .collect();
        let &[key, ty, default, description] = cells.as_slice() else {
            return Err(format!("README.md: a row without 4 cells: {line}").into());
        };
        let key = key.trim_end_matches('`');
        let default: serde_json::Value = serde_json::from_str(default.trim_matches('`'))
            .map_err(|e| format!("README.md, {key}: default {default}: {e}"))?;
        assert!(!description.is_empty(), "README.md, {key}: no description");
        assert!(
            rows.insert(key.to_string(), (ty.to_string(), default))
                .is_none(),
            "README.md lists {key} twice"
        );
    }
    let mut expected = Vec::new();
    value_rows(&values, &schema, "", &mut expected)?;
    assert!(expected.len() > 40, "{expected:?}");
    for (path, ty, default) in &expected {
        let (row_ty, row_default) = rows
            .get(path)
            .ok_or_else(|| format!("README.md: no row for {path}"))?;
        assert_eq!(row_ty, ty, "README.md, {path}: type");
        assert_eq!(row_default, default, "README.md, {path}: default");
    }
    let stale: Vec<&String> = rows
        .keys()
        .filter(|k| !expected.iter().any(|(p, _, _)| p == *k))
        .collect();
    assert!(
        stale.is_empty(),
        "README.md lists values that values.yaml lacks: {stale:?}"
    );
    Ok(())
}

/// `worker.networkPolicy.enabled`: the operator is told the peers and may manage
/// NetworkPolicies (and only then).
#[tokio::test]
async fn the_worker_network_policy_is_opt_in_with_its_own_rbac() -> Result<()> {
    let env = TestEnv::require();
    let rules_of = |docs: &[serde_json::Value]| {
        docs.iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "ko-kinesis-operator")
            .map(|d| d["rules"].to_string())
            .unwrap_or_default()
    };
    let off = render(&env, &[])?;
    assert!(!rules_of(&off).contains("networkpolicies"));
    let on = render(
        &env,
        &[
            "worker.networkPolicy.enabled=true",
            "worker.networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=mon",
        ],
    )?;
    assert!(
        rules_of(&on).contains("networkpolicies"),
        "{}",
        rules_of(&on)
    );
    let env_text = on
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].to_string())
        .unwrap_or_default();
    assert!(
        env_text.contains("WORKER_NETWORK_POLICY_FROM") && env_text.contains("team"),
        "{env_text}"
    );
    Ok(())
}

/// `aws.identity=namespace-role`: the mapping is a ConfigMap in the release's namespace, the
/// operator may only read ConfigMaps there (never write one), and it is told the mode.
#[tokio::test]
async fn namespace_role_mode_renders_the_mapping_and_only_read_access_to_it() -> Result<()> {
    let env = TestEnv::require();
    let role = "arn:aws:iam::123456789012:role/team-a";
    let docs = render(
        &env,
        &[
            "aws.identity=namespace-role",
            &format!("aws.namespaceRoles.team-a={role}"),
        ],
    )?;
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .cloned()
            .ok_or_else(|| format!("no {kind} {name}"))
    };
    let cm = find("ConfigMap", "ko-kinesis-operator-namespace-roles")?;
    assert_eq!(cm["metadata"]["namespace"], "ops");
    assert_eq!(cm["data"]["team-a"], role);
    let rules = find("Role", "ko-kinesis-operator-namespace-roles")?["rules"].clone();
    assert_eq!(
        rules,
        serde_json::json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}])
    );
    let deployment = find("Deployment", "ko-kinesis-operator")?;
    let env_of = |name: &str| {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    assert_eq!(env_of("AWS_IDENTITY"), Some("namespace-role".into()));
    assert_eq!(
        env_of("NAMESPACE_ROLES"),
        Some("ko-kinesis-operator-namespace-roles".into())
    );
    // The default is the operator's own identity, and no mapping is rendered.
    let default = render(&env, &[])?;
    assert!(
        !kinds(&default)
            .iter()
            .any(|(_, n)| n.ends_with("namespace-roles"))
    );
    Ok(())
}

/// The rendered chart: RBAC scoped by watchNamespace with only the verbs the operator uses,
/// aggregated roles for namespace users, and an operator pod that passes Pod Security's
/// "restricted" profile field by field (the 1.20 test cluster has no Pod Security admission).
#[tokio::test]
async fn the_rendered_chart_is_least_privilege_and_restricted() -> Result<()> {
    let env = TestEnv::require();
    let cluster_wide = kinds(&render(&env, &[])?);
    assert!(cluster_wide.contains(&("ClusterRole".into(), "ko-kinesis-operator".into())));
    assert!(cluster_wide.contains(&("ClusterRoleBinding".into(), "ko-kinesis-operator".into())));
    let docs = render(&env, &["watchNamespace=team-a"])?;
    let scoped = kinds(&docs);
    assert!(
        scoped.contains(&("Role".into(), "ko-kinesis-operator".into())),
        "{scoped:?}"
    );
    assert!(scoped.contains(&("RoleBinding".into(), "ko-kinesis-operator".into())));
    assert!(
        !scoped.contains(&("ClusterRole".into(), "ko-kinesis-operator".into()))
            && !scoped
                .iter()
                .any(|(k, n)| k == "ClusterRoleBinding" && n != "ko-kinesis-operator-cluster-name"),
        "no cluster-wide grant with watchNamespace but `get` on namespace kube-system (checked below): {scoped:?}"
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "ko-kinesis-operator")
        .ok_or("role")?;
    assert_eq!(role["metadata"]["namespace"], "team-a");
    let mut verbs = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for r in rule["resources"].as_array().into_iter().flatten() {
            for v in rule["verbs"].as_array().into_iter().flatten() {
                verbs.push(format!(
                    "{} {}",
                    v.as_str().unwrap_or_default(),
                    r.as_str().unwrap_or_default()
                ));
            }
        }
    }
    verbs.sort();
    assert_eq!(
        verbs,
        [
            "create deployments",
            "create events",
            "create serviceaccounts",
            "get deployments",
            "get serviceaccounts",
            "list deployments",
            "list kinesisapplications",
            "list pods",
            "patch deployments",
            "patch events",
            "patch kinesisapplications",
            "patch kinesisapplications/status",
            "patch serviceaccounts",
            "update kinesisapplications/finalizers",
            "watch deployments",
            "watch kinesisapplications",
        ],
        "only what the operator uses"
    );
    for (name, label) in [
        (
            "ko-kinesis-operator-view",
            "rbac.authorization.k8s.io/aggregate-to-view",
        ),
        (
            "ko-kinesis-operator-edit",
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ),
    ] {
        let r = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .ok_or(name)?;
        assert_eq!(r["metadata"]["labels"][label], "true", "{name}");
    }
    let off = kinds(&render(&env, &["rbac.aggregateToDefaultRoles=false"])?);
    assert!(
        !off.iter()
            .any(|(_, n)| n.ends_with("-view") || n.ends_with("-edit"))
    );

    // Pod Security "restricted", on the operator's pod.
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or("deployment")?;
    let pod = &d["spec"]["template"]["spec"];
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod[key].is_null() || pod[key] == false, "{key}");
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        assert!(v["hostPath"].is_null(), "{v}");
    }
    for c in pod["containers"].as_array().into_iter().flatten() {
        let sc = &c["securityContext"];
        let name = &c["name"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert!(sc["privileged"].is_null() || sc["privileged"] == false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"]["add"].is_null(), "{name}");
        let non_root = sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
        assert!(non_root, "{name}: runAsNonRoot");
        assert_ne!(sc["runAsUser"], 0, "{name}");
        let seccomp = if sc["seccompProfile"].is_null() {
            &pod["securityContext"]["seccompProfile"]["type"]
        } else {
            &sc["seccompProfile"]["type"]
        };
        assert!(
            seccomp == "RuntimeDefault" || seccomp == "Localhost",
            "{name}: {seccomp}"
        );
        for p in c["ports"].as_array().into_iter().flatten() {
            assert!(p["hostPort"].is_null(), "{name}: hostPort");
        }
    }
    let env_names: Vec<&str> = pod["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // No cluster name set: the operator names the cluster after kube-system's uid, and may get
    // that one namespace (and nothing else of namespaces).
    assert!(!env_names.contains(&"CLUSTER_NAME"), "{env_names:?}");
    let role = docs
        .iter()
        .chain(render(&env, &[])?.iter())
        .find(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["name"] == "ko-kinesis-operator-cluster-name"
        })
        .cloned()
        .ok_or("no ClusterRole ko-kinesis-operator-cluster-name")?;
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"], "verbs": ["get"]}])
    );
    let named = render(&env, &["clusterName=prod-eu-1"])?;
    assert!(
        !kinds(&named)
            .iter()
            .any(|(_, n)| n.ends_with("cluster-name")),
        "a named cluster needs no access to kube-system"
    );
    let named_env = named
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].to_string())
        .unwrap_or_default();
    assert!(named_env.contains("prod-eu-1"), "{named_env}");
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
                "--set-json",
                &format!(
                    "aws.allowedEndpoints={}",
                    serde_json::json!([env.kinesis_endpoint, env.dynamodb_endpoint])
                ),
            ],
        )?,
        "helm install",
    )?;
    assert!(install.contains("Next steps"), "NOTES.txt shown: {install}");
    assert!(
        install.contains("with its OWN identity")
            && install.contains(&format!(
                "Endpoint overrides allowed in specs: {}",
                env.kinesis_endpoint
            )),
        "NOTES.txt says which AWS identity and endpoints: {install}"
    );

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
    let can = |verb: &str, resource: &str, ns: Option<&str>| -> Result<String> {
        let mut args = vec!["auth", "can-i", verb, "--as", &who];
        match resource.split_once('/') {
            Some((r, sub)) => args.extend([r, "--subresource", sub]),
            None => args.push(resource),
        }
        match ns {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let out = run(&env, &kubectl, &args)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(
        can("get", "secrets", None)?,
        "no",
        "the operator may not read Secrets"
    );
    // Pods are only listed (a pause and a rewind wait until the worker pods are gone): not
    // read one by one, not exec'd into, not deleted.
    assert_eq!(can("list", "pods", Some(&ns))?, "yes");
    assert_eq!(can("get", "pods", Some(&ns))?, "no");
    assert_eq!(can("delete", "pods", Some(&ns))?, "no");
    assert_eq!(can("create", "pods/exec", Some(&ns))?, "no");
    assert_eq!(can("patch", "deployments.apps", Some(&ns))?, "yes");
    assert_eq!(
        can(
            "patch",
            "kinesisapplications.kinesis-operator.io/status",
            Some(&ns)
        )?,
        "yes"
    );
    // watchNamespace set: a Role in that namespace, nothing cluster-wide.
    assert_eq!(
        can("patch", "deployments.apps", None)?,
        "no",
        "with watchNamespace the operator acts in its namespace only"
    );
    assert_eq!(
        can(
            "list",
            "kinesisapplications.kinesis-operator.io",
            Some("default")
        )?,
        "no"
    );
    // Namespace users get KinesisApplications through the built-in roles: a user bound to
    // `edit` here may create them, but not write their status; `view` may only read.
    for (user, role) in [("tenant-editor", "edit"), ("tenant-viewer", "view")] {
        ok(
            run(
                &env,
                &kubectl,
                &[
                    "create",
                    "rolebinding",
                    user,
                    "-n",
                    &ns,
                    "--clusterrole",
                    role,
                    "--user",
                    user,
                ],
            )?,
            "create rolebinding",
        )?;
    }
    let user_can = |user: &str, verb: &str, resource: &str| -> Result<String> {
        // `can-i VERB RESOURCE/SUB` reads SUB as an object's name: use --subresource.
        let mut args = vec!["auth", "can-i", verb, "--as", user, "-n", &ns];
        match resource.split_once('/') {
            Some((r, sub)) => args.extend([r, "--subresource", sub]),
            None => args.push(resource),
        }
        let out = run(&env, &kubectl, &args)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let kapps = "kinesisapplications.kinesis-operator.io";
    kinesis_operator_tests::wait_for(
        "KinesisApplication rules aggregated into edit and view",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(500),
        || async {
            (user_can("tenant-editor", "create", kapps).ok()? == "yes"
                && user_can("tenant-viewer", "list", kapps).ok()? == "yes")
                .then_some(())
        },
    )
    .await?;
    assert_eq!(user_can("tenant-editor", "delete", kapps)?, "yes");
    assert_eq!(
        user_can("tenant-editor", "patch", &format!("{kapps}/status"))?,
        "no"
    );
    assert_eq!(user_can("tenant-viewer", "create", kapps)?, "no");

    // And it does its job with that: an application counts records.
    let stream = unique_name("pageviews");
    env.create_stream(&stream, 2).await?;
    let table = unique_name("counts");
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    // The chart's default: application names within the namespace's prefix only (the
    // default `NAMESPACE.counter`).
    let mut counter = application("counter", &env, &stream, &table)?;
    counter.spec.application_name = None;
    apps.create(&PostParams::default(), &counter).await?;
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

/// The `kinesis_…` metric names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("kinesis_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if name.starts_with("kinesis_worker_") || name.starts_with("kinesis_operator_") {
            out.insert(name.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The series names a `/metrics` page can have, from its `# TYPE` lines (even for families
/// with no series yet) and its samples.
fn series_names(page: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for l in page.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            let mut f = t.split_whitespace();
            let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !l.starts_with('#')
            && let Some(name) = l.split(['{', ' ']).next()
        {
            out.insert(name.to_string());
        }
    }
    out
}

/// The shipped dashboard and alerts name only metrics a real worker and a real operator
/// serve, and the worker's series carry `application` and `stream`.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_exists() -> Result<()> {
    use kinesis_operator_tests::pipeline::{Pipeline, http_get};
    let env = TestEnv::require();
    let p = Pipeline::new(1).await?;
    let app = p.app("a", &[]).await?;
    let w = p.worker("w", &app.address, &[])?;
    let page = kinesis_operator_tests::wait_for(
        "the worker's /metrics with its lease",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(200),
        || async {
            let (s, page) = http_get(&w.admin, "/metrics").await.ok()?;
            // Holding its lease (gauge ≥ 1) and reading it (lag reported): every worker
            // family has a series then.
            let holds = page
                .lines()
                .filter(|l| l.starts_with("kinesis_worker_leases_held{"))
                .any(|l| {
                    l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
                });
            (s == 200 && holds && page.contains("kinesis_worker_behind_latest_seconds{"))
                .then_some(page)
        },
    )
    .await?;
    let held = page
        .lines()
        .find(|l| l.starts_with("kinesis_worker_leases_held{"))
        .unwrap_or_default();
    assert!(
        held.contains(&format!("application=\"{}\"", p.app))
            && held.contains(&format!("stream=\"{}\"", p.stream)),
        "{held}"
    );
    let mut known = series_names(&page);
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, "metrics").await?;
    let op = kinesis_operator_tests::cluster::operator(&env, &ns, 3)?;
    // An application that reconciles (its per-application series) and one whose stream is
    // missing (a reconcile error): every family the operator has then has a series.
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    for (name, stream) in [
        ("ok", p.stream.clone()),
        ("missing", unique_name("missing")),
    ] {
        let mut a = application(name, &env, &stream, "unused")?;
        a.spec.replicas = Some(0);
        apps.create(&PostParams::default(), &a).await?;
    }
    let op_page = kinesis_operator_tests::wait_for(
        "the operator's /metrics with an application and an error",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(200),
        || async {
            let (s, page) = http_get(&op.admin, "/metrics").await.ok()?;
            (s == 200
                && page.contains("kinesis_operator_workers_desired{")
                && page.contains("kinesis_operator_reconcile_errors_total{"))
            .then_some(page)
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", op.log_tail()))?;
    known.extend(series_names(&op_page));

    let chart = chart();
    let chart = chart.to_string_lossy();
    let rendered = ok(
        run(
            &env,
            &env.helm,
            &[
                "template",
                "x",
                &chart,
                "--api-versions",
                "monitoring.coreos.com/v1",
                "--set",
                "metrics.podMonitor.enabled=true",
                "--set",
                "metrics.prometheusRule.enabled=true",
                "--set",
                "metrics.grafanaDashboard.enabled=true",
            ],
        )?,
        "helm template",
    )?;
    let mut rule_exprs = String::new();
    let mut dashboard = String::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        match v["kind"].as_str() {
            Some("PrometheusRule") => {
                for g in v["spec"]["groups"].as_array().into_iter().flatten() {
                    for r in g["rules"].as_array().into_iter().flatten() {
                        rule_exprs.push_str(r["expr"].as_str().unwrap_or_default());
                        rule_exprs.push('\n');
                    }
                }
            }
            Some("ConfigMap") => {
                let json = v["data"]["kinesis-operator.json"]
                    .as_str()
                    .unwrap_or_default();
                let d: serde_json::Value = serde_json::from_str(json)?;
                assert!(
                    d["templating"]["list"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|x| x["name"] == "application")
                            && l.iter().any(|x| x["name"] == "namespace")),
                    "namespace and application variables"
                );
                for panel in d["panels"].as_array().into_iter().flatten() {
                    for t in panel["targets"].as_array().into_iter().flatten() {
                        dashboard.push_str(t["expr"].as_str().unwrap_or_default());
                        dashboard.push('\n');
                    }
                }
            }
            _ => {}
        }
    }
    for (what, text) in [("alert", &rule_exprs), ("dashboard query", &dashboard)] {
        let names = metric_names(text);
        assert!(names.len() >= 8, "{what}s name metrics: {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !known.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{what}s name metrics nobody serves: {missing:?}\nknown: {known:?}"
        );
    }
    delete_all(&apps).await?;
    drop(op);
    delete_namespace(&client, &ns).await?;
    drop(w);
    p.cleanup().await
}
