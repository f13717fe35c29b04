//! `cargo xtask demo`: the whole system on this machine, no cloud account. Brings the
//! environment up, builds and loads the images, helm-installs the operator, creates the
//! `Pageviews` stream (4 shards), applies the Counter KinesisApplication, produces pageviews
//! and shows counts next to `kubectl get kapp`; then reshards to 8 and shows the workers and
//! leases follow. Ends with where to look and how to tear down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::paths::Paths;
use crate::sh::{output, run, step};
use crate::{env, test};

const NAMESPACE: &str = "kinesis-demo";
const RELEASE: &str = "kinesis-operator";
const STREAM: &str = "Pageviews";
const CRD: &str = "kinesisapplications.kinesis-operator.io";

struct Demo {
    root: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    helm: PathBuf,
    node_ip: String,
    kinesis: String,
    dynamodb: String,
    region: String,
}

impl Demo {
    fn load(paths: &Paths) -> Result<Self> {
        let text = std::fs::read_to_string(paths.env_file())
            .with_context(|| format!("reading {}", paths.env_file().display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let s = |k: &str| -> Result<String> {
            v[k].as_str()
                .map(String::from)
                .with_context(|| format!("{k} missing in env.json"))
        };
        Ok(Self {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            kubectl: s("kubectl")?.into(),
            kubeconfig: s("kubeconfig")?.into(),
            helm: s("helm")?.into(),
            node_ip: s("node_ip")?,
            kinesis: s("kinesis_endpoint")?,
            dynamodb: s("dynamodb_endpoint")?,
            region: s("region")?,
        })
    }

    fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    fn example(&self, bin: &str) -> Command {
        let mut c = Command::new(self.root.join("target/debug").join(bin));
        c.env("AWS_REGION", &self.region)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("KINESIS_ENDPOINT", &self.kinesis)
            .env("DYNAMODB_ENDPOINT", &self.dynamodb);
        c
    }

    /// Prints `kubectl get kapp`, the shard owners and the counts.
    fn show(&self) -> Result<()> {
        let kapp = output(self.kubectl().args(["get", "kapp", "-n", NAMESPACE]))?;
        let owners = output(self.kubectl().args([
            "get",
            "kapp",
            "counter",
            "-n",
            NAMESPACE,
            "-o",
            r#"jsonpath={range .status.shardStatus[*]}{.shardId}={.owner} {end}"#,
        ]))?;
        let counts = output(self.example("pageview-admin").args(["counts"]))
            .unwrap_or_else(|_| "counts: (no table yet)".into());
        println!("\n{}", kapp.trim_end());
        let owners: Vec<String> = owners
            .split_whitespace()
            .map(|o| o.replace("shardId-", "").replace("counter-", ""))
            .collect();
        println!("leases: {}", owners.join(" "));
        println!("{}", counts.trim_end());
        Ok(())
    }

    fn watch(&self, secs: u64) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            self.show()?;
            std::thread::sleep(Duration::from_secs(5));
        }
        Ok(())
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the demo.
pub fn demo(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    step(
        "1/6 the environment: Kubernetes, Kinesis and DynamoDB servers (the first run builds Kubernetes: ~12 min)",
    );
    env::up(paths)?;
    step("2/6 building the programs and loading their images into the node");
    test::images(paths, false)?;
    let d = Demo::load(paths)?;

    step(format!(
        "3/6 helm install {RELEASE} (namespace {NAMESPACE})"
    ));
    // Tests install the CRD too: let this release adopt it.
    if output(d.kubectl().args(["get", "crd", CRD, "-o", "name"])).is_ok() {
        run(d.kubectl().args([
            "label",
            "--overwrite",
            "crd",
            CRD,
            "app.kubernetes.io/managed-by=Helm",
        ]))?;
        run(d.kubectl().args([
            "annotate",
            "--overwrite",
            "crd",
            CRD,
            &format!("meta.helm.sh/release-name={RELEASE}"),
            &format!("meta.helm.sh/release-namespace={NAMESPACE}"),
        ]))?;
    }
    // No kube-proxy on the single node: the operator reaches the API server at the node's
    // address; the local servers accept any credentials.
    let extra_env = serde_json::json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": d.node_ip},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        {"name": "AWS_ACCESS_KEY_ID", "value": "test"},
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "test"},
    ]);
    run(Command::new(&d.helm)
        .env("KUBECONFIG", &d.kubeconfig)
        .args(["upgrade", "--install", RELEASE])
        .arg(d.root.join("charts/kinesis-operator"))
        .args([
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ])
        .args([
            "--set",
            "image.repository=localhost/kinesis-operator",
            "--set",
            "image.tag=dev",
        ])
        .args([
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "worker.image=localhost/kinesis-worker:dev",
        ])
        .args([
            "--set",
            "worker.imagePullPolicy=Never",
            "--set",
            "resyncSeconds=5",
        ])
        .args([
            "--set",
            &format!("region={}", d.region),
            "--set",
            "logFormat=text",
        ])
        .arg("--set-json")
        .arg(format!("extraEnv={extra_env}")))?;

    step(format!(
        "4/6 stream {STREAM} (4 shards), the Counter application, pageviews"
    ));
    // A fresh start when the demo ran before: the old application (its finalizer deletes the
    // lease table), stream and counts go first.
    run(d
        .kubectl()
        .args(["delete", "kapp", "--all", "-n", NAMESPACE, "--wait=true"]))?;
    run(d
        .example("pageview-admin")
        .args(["reset", "--stream", STREAM]))?;
    run(d
        .example("pageview-producer")
        .args([
            "--stream",
            STREAM,
            "--create-shards",
            "4",
            "--count",
            "200",
            "--rate",
            "0",
        ])
        .stdout(Stdio::null()))?;
    run(d.kubectl().args(["apply", "-n", NAMESPACE, "-f"]).arg(
        d.root
            .join("examples/pageview-counter/deploy/kinesisapplication.yaml"),
    ))?;
    let producer = KillOnDrop(
        d.example("pageview-producer")
            .args(["--stream", STREAM, "--count", "0", "--rate", "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the producer")?,
    );
    d.watch(40)?;

    step(
        "5/6 resharding Pageviews 4 → 8: the operator scales the workers, leases move to the new pods",
    );
    run(d
        .example("pageview-admin")
        .args(["reshard", "--stream", STREAM, "--shards", "8"]))?;
    d.watch(45)?;
    drop(producer);
    d.show()?;

    step(format!(
        "6/6 done in {:.0} s; the demo keeps running. Look around:",
        started.elapsed().as_secs_f64()
    ));
    let kubectl = d.kubectl.display();
    let kubeconfig = d.kubeconfig.display();
    let pod_ip = output(d.kubectl().args([
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "kinesis-operator.io/application=counter",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]))
    .unwrap_or_default();
    println!(
        "
    export KUBECONFIG={kubeconfig}
    export AWS_REGION={region} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    alias kubectl={kubectl}
    kubectl get kapp -n {NAMESPACE}                 # stream, shards, workers, lag, ready
    kubectl describe kapp counter -n {NAMESPACE}    # conditions and Events (Scaled, Resharded)
    kubectl get pods -n {NAMESPACE}                 # app + worker pods, one per shard
    curl -s http://{pod_ip}:8080/metrics | grep kinesis_worker_records_delivered
    target/debug/pageview-admin --dynamodb-endpoint {dynamodb} counts
    target/debug/pageview-admin --kinesis-endpoint {kinesis} reshard --shards 4
                                                    # and watch the workers shrink

  Tear down:
    helm uninstall {RELEASE} -n {NAMESPACE}   # after `kubectl delete kapp --all -n {NAMESPACE}`
    cargo xtask env down                              # everything, machine restored",
        dynamodb = d.dynamodb,
        kinesis = d.kinesis,
        region = d.region,
    );
    if pod_ip.is_empty() {
        bail!("no counter pod is running: see `kubectl get pods -n {NAMESPACE}`");
    }
    Ok(())
}
