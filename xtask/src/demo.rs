//! `cargo xtask demo`: the whole system on this machine, no cloud account. Brings the
//! environment up, builds and loads the images, helm-installs the operator, creates the
//! `Pageviews` stream (4 shards), applies the Counter KinesisApplication, produces pageviews
//! and shows counts next to `kubectl get kapp`; then reshards to 8 and shows the workers and
//! leases follow. Ends with where to look and how to tear down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::paths::Paths;
use crate::sh::{output, run, step};
use crate::{env, programs};

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
            root: programs::workspace_root(),
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

    /// The per-client counts the pods wrote (empty while the table does not exist).
    fn counts(&self) -> BTreeMap<String, u64> {
        let text = output(self.example("pageview-admin").args(["counts"])).unwrap_or_default();
        parse_counts(&text)
    }

    /// `kubectl get kapp counter` fields: Ready status, workers "ready/desired", open shards.
    fn app_state(&self) -> (String, String, String) {
        let out = output(self.kubectl().args([
            "get",
            CRD,
            "counter",
            "-n",
            NAMESPACE,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.workers.summary} {.status.shards.open}"#,
        ]))
        .unwrap_or_default();
        let mut f = out.split_whitespace().map(String::from);
        (
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
        )
    }

    /// Prints `kubectl get kapp`, the shard owners and the counts.
    fn show(&self) {
        let kapp = output(self.kubectl().args(["get", CRD, "-n", NAMESPACE]))
            .unwrap_or_else(|e| format!("{e:#}"));
        let owners = output(self.kubectl().args([
            "get",
            CRD,
            "counter",
            "-n",
            NAMESPACE,
            "-o",
            r#"jsonpath={range .status.shardStatus[*]}{.shardId}={.owner} {end}"#,
        ]))
        .unwrap_or_default();
        let counts = self.counts();
        println!("\n{}", kapp.trim_end());
        let owners: Vec<String> = owners
            .split_whitespace()
            .map(|o| o.replace("shardId-", "").replace("counter-", ""))
            .collect();
        println!("leases: {}", owners.join(" "));
        println!("counts: {}", line(&counts));
    }

    /// Shows the state every 5 s until `done` holds (checked every second); fails after
    /// `timeout` naming `what`.
    fn until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        let mut shown = None::<Instant>;
        loop {
            if done(self) {
                self.show();
                eprintln!("    ✓ {what} ({:.0} s)", started.elapsed().as_secs_f64());
                return Ok(());
            }
            if started.elapsed() > timeout {
                self.show();
                bail!(
                    "{what}: not within {timeout:?}; see `kubectl describe kapp counter -n {NAMESPACE}` and `kubectl get pods -n {NAMESPACE}`"
                );
            }
            if shown.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                self.show();
                shown = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Starts the producer: `count` pageviews at `rate` per second (0: at once).
    fn produce(&self, count: u64, rate: u64, create_shards: Option<u32>) -> Result<Child> {
        let mut c = self.example("pageview-producer");
        c.args([
            "--stream",
            STREAM,
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
        ]);
        if let Some(n) = create_shards {
            c.args(["--create-shards", &n.to_string()]);
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the producer")
    }

    /// Deletes the Counter application (its finalizer deletes the lease table the operator
    /// created for it) and waits until its pods are gone.
    fn remove_application(&self) -> Result<()> {
        run(self
            .kubectl()
            .args(["delete", CRD, "--all", "-n", NAMESPACE, "--wait=true"]))?;
        self.until_no_pods()
    }

    /// Waits until `n` of `n` workers are ready on `n` open shards.
    fn until_workers(&self, n: u32) -> Result<()> {
        let want = (n.to_string(), format!("{n}/{n}"));
        self.until(
            &format!("{n} of {n} workers ready on {n} open shards"),
            Duration::from_secs(300),
            |d| {
                let (ready, workers, open) = d.app_state();
                ready == "True" && workers == want.1 && open == want.0
            },
        )
    }

    /// Waits until the pods counted exactly `expected`.
    fn until_counted(&self, expected: &BTreeMap<String, u64>) -> Result<()> {
        let total: u64 = expected.values().sum();
        self.until(
            &format!("every one of the {total} pageviews counted once"),
            Duration::from_secs(180),
            |d| d.counts() == *expected,
        )
    }

    /// Waits (showing the state) until `producer` exits.
    fn until_put(&self, producer: &mut Child, what: &str) -> Result<()> {
        self.until(what, Duration::from_secs(300), |_| {
            matches!(producer.try_wait(), Ok(Some(_)))
        })
    }

    /// Fails unless the pods are all gone (a previous run's pods still flush their counts
    /// while they stop).
    fn until_no_pods(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let pods = output(self.kubectl().args([
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                "kinesis-operator.io/application=counter",
                "-o",
                "name",
            ]))
            .unwrap_or_default();
            if pods.trim().is_empty() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!("the previous run's pods are still there after 180 s: {pods}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The producer's output (`client-k N` lines) as counts.
fn finish(producer: Child) -> Result<BTreeMap<String, u64>> {
    let out = producer
        .wait_with_output()
        .context("waiting for the producer")?;
    if !out.status.success() {
        bail!("the producer failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (c, n) = l.split_once(' ')?;
            Some((c.to_string(), n.parse().ok()?))
        })
        .collect())
}

/// `counts: client-0=270 client-1=270 | total 540` as a map.
fn parse_counts(text: &str) -> BTreeMap<String, u64> {
    let body = text.trim().trim_start_matches("counts:");
    let body = body.split('|').next().unwrap_or_default();
    body.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "(none yet)".into();
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{c}={n}")).collect();
    format!(
        "{} | total {}",
        parts.join(" "),
        counts.values().sum::<u64>()
    )
}

fn add(total: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (k, v) in more {
        *total.entry(k).or_insert(0) += v;
    }
}

/// How much the demo does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything, with a reshard, watched at a human pace; keeps running at the end.
    Full,
    /// The same steps with fewer records and no reshard, then torn down: run by `cargo
    /// xtask test` so the front door cannot break unnoticed.
    Short,
}

/// Runs the demo: the environment and images first.
pub fn demo(paths: &Paths, mode: Mode) -> Result<()> {
    let started = Instant::now();
    step(
        "1/6 the environment: Kubernetes, Kinesis and DynamoDB servers (the first run builds Kubernetes: ~12 min)",
    );
    env::up(paths)?;
    step("2/6 building the programs and loading their images into the node");
    programs::images(paths, false)?;
    run_demo(paths, mode, started)
}

/// Steps 3–6 (the environment is up and the images are loaded).
pub fn run_demo(paths: &Paths, mode: Mode, started: Instant) -> Result<()> {
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
        .arg(format!("extraEnv={extra_env}"))
        // The local servers the example's spec names: the operator refuses other endpoints.
        .arg("--set-json")
        .arg(format!(
            "aws.allowedEndpoints={}",
            serde_json::json!([d.kinesis, d.dynamodb])
        )))?;
    // The CRD is a chart template: served only once Established.
    run(d.kubectl().args([
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        &format!("crd/{CRD}"),
    ]))?;

    let (count, rate) = match mode {
        Mode::Full => (2000, 100),
        Mode::Short => (200, 0),
    };
    step(format!(
        "4/6 stream {STREAM} (4 shards), the Counter application, {count} pageviews"
    ));
    // A fresh start when the demo ran before: the old application (its finalizer deletes the
    // lease table the operator created for it) and its pods (they flush counts while they
    // stop), then the stream and the counts.
    d.remove_application()?;
    run(d
        .example("pageview-admin")
        .args(["reset", "--stream", STREAM]))?;
    let mut expected = finish(d.produce(100, 0, Some(4))?)?;
    run(d.kubectl().args(["apply", "-n", NAMESPACE, "-f"]).arg(
        d.root
            .join("examples/pageview-counter/deploy/kinesisapplication.yaml"),
    ))?;
    d.until_workers(4)?;
    let mut producer = d.produce(count, rate, None)?;
    d.until_put(&mut producer, &format!("{count} pageviews put"))?;
    add(&mut expected, finish(producer)?);
    d.until_counted(&expected)?;

    if mode == Mode::Full {
        step(
            "5/6 resharding Pageviews 4 → 8 while pageviews keep coming: the operator scales the workers, leases move to the new pods",
        );
        let mut producer = d.produce(count, rate, None)?;
        let resharded = run(d
            .example("pageview-admin")
            .args(["reshard", "--stream", STREAM, "--shards", "8"]))
        .and_then(|()| d.until_workers(8))
        .and_then(|()| d.until_put(&mut producer, &format!("{count} more pageviews put")));
        if let Err(e) = resharded {
            let _ = producer.kill();
            let _ = producer.wait();
            return Err(e);
        }
        add(&mut expected, finish(producer)?);
        d.until_counted(&expected)?;
    } else {
        step("5/6 (short demo: no reshard)");
    }

    let counted = d.counts();
    step(format!(
        "6/6 done in {:.0} s: {} pageviews produced, {} counted by the pods, per client:",
        started.elapsed().as_secs_f64(),
        expected.values().sum::<u64>(),
        counted.values().sum::<u64>(),
    ));
    for (client, n) in &expected {
        let got = counted.get(client).copied().unwrap_or(0);
        println!(
            "    {client}: produced {n}, counted {got} {}",
            if got == *n { "✓" } else { "✗" }
        );
    }
    if counted != expected {
        bail!("the counts differ from what was produced");
    }
    if mode == Mode::Short {
        step("tearing the short demo down");
        d.remove_application()?;
        run(Command::new(&d.helm)
            .env("KUBECONFIG", &d.kubeconfig)
            .args(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"]))?;
        run(d
            .example("pageview-admin")
            .args(["reset", "--stream", STREAM]))?;
        run(d
            .kubectl()
            .args(["delete", "namespace", NAMESPACE, "--wait=false"]))?;
        return Ok(());
    }
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
  Every pageview was counted exactly once, through a reshard. The demo keeps running; look around:
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
    kubectl delete kapp --all -n {NAMESPACE} && helm uninstall {RELEASE} -n {NAMESPACE}
    cargo xtask env down                              # everything, machine restored",
        dynamodb = d.dynamodb,
        kinesis = d.kinesis,
        region = d.region,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_read_back() {
        let m = parse_counts("counts: client-0=270 client-1=30 | total 300\n");
        assert_eq!(
            m,
            BTreeMap::from([("client-0".to_string(), 270), ("client-1".to_string(), 30)])
        );
        assert_eq!(line(&m), "client-0=270 client-1=30 | total 300");
        assert!(parse_counts("").is_empty());
    }
}
