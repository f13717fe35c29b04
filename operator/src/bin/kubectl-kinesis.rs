//! `kubectl kinesis`: a kubectl plugin (kubectl runs `kubectl-kinesis` from the PATH) for
//! KinesisApplications, through the cluster with the caller's own kubeconfig and rights — no
//! AWS credentials on the caller's machine.
//!
//! ```text
//! kubectl kinesis status NAME [-n NS] [--width N]   every shard: state, owner, checkpoint, lag (a bar)
//! kubectl kinesis pause NAME [-n NS]                spec.paused = true
//! kubectl kinesis resume NAME [-n NS]               spec.paused = false
//! kubectl kinesis rewind NAME --to TIME [-n NS]     spec.rewind.toTimestamp = TIME (RFC 3339)
//! ```
//!
//! `status` reads the application's object, then every shard by running `kinesis-worker
//! status --json` in a running worker container with `kubectl exec` (the caller needs
//! `create` on `pods/exec` in the namespace; the worker reads with the pod's own AWS
//! identity, and no port of the pod serves it to other pods); with no worker running
//! (paused) it shows the operator's `status.shardStatus` (at most 20 shards). kubectl is
//! `$KUBECTL`, else `kubectl` on the PATH.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kinesis_lease::status::{ShardLine, render_lines};
use kinesis_operator::crd::{KinesisApplication, labels};
use kinesis_operator::validate::WORKER_CONTAINER;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// KinesisApplications from kubectl.
#[derive(Parser)]
#[command(name = "kubectl kinesis", version)]
struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every shard of the application: state, owner, checkpoint and lag, with a bar.
    Status {
        /// The KinesisApplication.
        name: String,
        /// Cells of the widest lag bar.
        #[arg(long, default_value_t = 30)]
        width: usize,
    },
    /// Stop delivery: every worker writes its checkpoints and releases its leases.
    Pause {
        /// The KinesisApplication.
        name: String,
    },
    /// Start delivery again from the checkpoints.
    Resume {
        /// The KinesisApplication.
        name: String,
    },
    /// Deliver again every record that arrived at or after a time.
    Rewind {
        /// The KinesisApplication.
        name: String,
        /// The time, RFC 3339 (e.g. 2026-12-06T09:00:00Z).
        #[arg(long)]
        to: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("no Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
    match cli.command {
        Command::Status { name, width } => {
            let app = apps
                .get(&name)
                .await
                .with_context(|| format!("KinesisApplication {ns}/{name}"))?;
            print!("{}", summary(&app));
            let (lines, source) = match worker_status(&client, &ns, &name).await {
                Ok(Some(lines)) => (lines, None),
                Ok(None) => (
                    from_object(&app),
                    Some(
                        "no worker runs: from the operator's status (at most 20 shards)"
                            .to_string(),
                    ),
                ),
                Err(e) => (
                    from_object(&app),
                    Some(format!(
                        "the workers did not answer ({e:#}): from the operator's status (at most 20 shards)"
                    )),
                ),
            };
            if let Some(s) = source {
                println!("({s})");
            }
            print!("{}", render_lines(&lines, width));
        }
        Command::Pause { name } => {
            patch(&apps, &name, json!({"spec": {"paused": true}})).await?;
            println!(
                "{ns}/{name}: pausing (kubectl get kapp {name} -n {ns} shows PAUSED True once every worker is gone)"
            );
        }
        Command::Resume { name } => {
            patch(&apps, &name, json!({"spec": {"paused": false}})).await?;
            println!("{ns}/{name}: resuming from the checkpoints");
        }
        Command::Rewind { name, to } => {
            if to.parse::<k8s_openapi::jiff::Timestamp>().is_err() {
                bail!("--to {to:?} is not an RFC 3339 time, e.g. 2026-12-06T09:00:00Z");
            }
            patch(
                &apps,
                &name,
                json!({"spec": {"rewind": {"toTimestamp": to}}}),
            )
            .await?;
            println!(
                "{ns}/{name}: rewinding to {to} (kubectl kinesis status {name} -n {ns}; status.rewind says when it is done)"
            );
        }
    }
    Ok(())
}

/// Merge-patches `name` with `patch`.
async fn patch(apps: &Api<KinesisApplication>, name: &str, patch: serde_json::Value) -> Result<()> {
    apps.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching KinesisApplication {name}"))?;
    Ok(())
}

/// The object's lines above the shard table.
fn summary(app: &KinesisApplication) -> String {
    let status = app.status.clone().unwrap_or_default();
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| format!("{} ({}: {})", c.status, c.reason, c.message))
    };
    let mut out = format!(
        "{}/{}  stream {}  application {}\n",
        app.namespace().unwrap_or_default(),
        app.name_any(),
        status.stream.as_deref().unwrap_or("-"),
        status.application_name.as_deref().unwrap_or("-"),
    );
    if let Some(w) = &status.workers {
        out.push_str(&format!(
            "workers {} ready of {} wanted\n",
            w.ready, w.desired
        ));
    }
    for t in ["Ready", "Paused"] {
        if let Some(c) = cond(t) {
            out.push_str(&format!("{t}: {c}\n"));
        }
    }
    if let Some(r) = &status.rewind {
        out.push_str(&format!(
            "rewind to {}: {} ({})\n",
            r.to_timestamp, r.phase, r.message
        ));
    }
    out
}

/// The operator's `status.shardStatus` as lines (at most 20 shards).
fn from_object(app: &KinesisApplication) -> Vec<ShardLine> {
    app.status
        .iter()
        .flat_map(|s| s.shard_status.iter())
        .map(|s| ShardLine {
            shard_id: s.shard_id.clone(),
            state: if s.owner.is_some() {
                "processing".into()
            } else {
                "unowned".into()
            },
            owner: s.owner.clone(),
            checkpoint: s.checkpoint.clone(),
            lag_ms: s.millis_behind_latest,
            stalled: false,
            failing: false,
        })
        .collect()
}

/// Every shard from `kinesis-worker status --json` in a running worker container (`kubectl
/// exec`); `None` when no worker pod runs.
async fn worker_status(client: &Client, ns: &str, name: &str) -> Result<Option<Vec<ShardLine>>> {
    let selector = labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let running = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing the worker pods")?
        .items
        .into_iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
    let Some(pod) = running else {
        return Ok(None);
    };
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = tokio::process::Command::new(&kubectl)
        .args([
            "exec",
            "-n",
            ns,
            &pod.name_any(),
            "-c",
            WORKER_CONTAINER,
            "--",
        ])
        .args(["kinesis-worker", "status", "--json"])
        .output()
        .await
        .with_context(|| format!("running {kubectl}"))?;
    if !out.status.success() {
        bail!(
            "kubectl exec {} -c {WORKER_CONTAINER} -- kinesis-worker status: {}",
            pod.name_any(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    #[derive(serde::Deserialize)]
    struct Page {
        shards: Vec<ShardLine>,
    }
    let page: Page = serde_json::from_str(&text)
        .with_context(|| format!("the worker's /status: {text:.200}"))?;
    Ok(Some(page.shards))
}
