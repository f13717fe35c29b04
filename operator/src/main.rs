//! The `kinesis-operator` binary: watches KinesisApplications (and the Deployments it owns)
//! and reconciles them; one active replica by leader election.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kinesis_operator::controller::{
    Context, IdentitySettings, desired_state, error_policy, reconcile,
};
use kinesis_operator::crd::KinesisApplication;
use kinesis_operator::deployment::WorkerSettings;
use kinesis_operator::identity::{Mode, RoleMap};
use kinesis_operator::leader::Election;
use kinesis_operator::metrics::Metrics;
use kube::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, reflector, watcher};

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

/// kinesis-operator: runs KinesisApplication consumers as worker Deployments sized to their
/// stream's shard count.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Worker image injected into every application's pods.
    #[arg(
        long,
        env = "WORKER_IMAGE",
        default_value = "ghcr.io/kinesis-operator/kinesis-worker:0.1.0"
    )]
    worker_image: String,
    /// Pull policy of the worker image (Always, IfNotPresent, Never).
    #[arg(long, env = "WORKER_IMAGE_PULL_POLICY")]
    worker_image_pull_policy: Option<String>,
    /// Region for applications whose spec names none.
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Every application is reconciled at least this often (seconds): how fresh its status
    /// (lag, shard owners) is. Each costs a Scan of its lease table and a status write.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// Every application's stream is listed this often (seconds), and the application
    /// reconciled at once when its open shards changed: how fast resharding is followed.
    /// 0 turns the reshard watch off (resharding is then followed at the next resync).
    #[arg(long, env = "SHARD_POLL_SECONDS", default_value_t = 5)]
    shard_poll_seconds: u64,
    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    admin_address: std::net::SocketAddr,
    /// Elect one active replica on a Lease.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_NAME",
        default_value = "kinesis-operator-leader"
    )]
    lease_name: String,
    /// A leader that stops renewing loses the Lease after this long (seconds).
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity (default: POD_NAME, else HOSTNAME-PID).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// This cluster's name, recorded (tags, claim items) as the owner of the lease tables and
    /// consumers the operator creates: every cluster that shares an AWS account needs its own.
    /// Default (unset or empty): `k8s-` and the uid of namespace kube-system, which no other
    /// cluster has.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Endpoints a KinesisApplication may name in spec.stream.endpoint/dynamoDbEndpoint
    /// (comma-separated URLs, e.g. local servers or VPC endpoints). The operator sends its own
    /// signed requests there, so by default none: a spec naming one is refused (InvalidSpec).
    #[arg(long, env = "ALLOWED_ENDPOINTS", value_delimiter = ',')]
    allowed_endpoints: Vec<String>,
    /// Namespaces whose KinesisApplications may set spec.applicationName outside their own
    /// `NAMESPACE.` prefix (comma-separated; `*`: all), e.g. to adopt an existing KCL table.
    /// Others get InvalidSpec: such a name reaches tables other teams own or will create.
    #[arg(long, env = "UNPREFIXED_APPLICATION_NAMES", value_delimiter = ',')]
    unprefixed_application_names: Vec<String>,
    /// Make a NetworkPolicy for each application's worker pods: their admin port (metrics,
    /// readiness, drain) admits only these peers (a JSON list of NetworkPolicy peers, e.g.
    /// `[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]`;
    /// `[]`: nobody); the app containers' declared ports stay open. Unset: no NetworkPolicy.
    #[arg(long, env = "WORKER_NETWORK_POLICY_FROM")]
    worker_network_policy_from: Option<String>,
    /// Whose AWS identity applications' calls use: `operator` (its own; every namespace
    /// that may create a KinesisApplication is trusted with it) or `namespace-role` (the role
    /// the ConfigMap --namespace-roles maps to the object's namespace, assumed per object;
    /// a namespace without one gets no AWS call).
    #[arg(long, env = "AWS_IDENTITY", value_enum, default_value_t = IdentityMode::Operator)]
    aws_identity: IdentityMode,
    /// The ConfigMap (in the operator's namespace, --lease-namespace) mapping namespace →
    /// IAM role ARN, read in `namespace-role` mode.
    #[arg(
        long,
        env = "NAMESPACE_ROLES",
        default_value = "kinesis-operator-namespace-roles"
    )]
    namespace_roles: String,
    /// STS endpoint for AssumeRole (default: the SDK's, e.g. the regional one).
    #[arg(long, env = "STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// At most this many sets of AWS clients (one per region, endpoints and identity; in
    /// `namespace-role` mode one per application) are kept; the least recently used goes.
    #[arg(long, env = "MAX_AWS_CLIENTS", default_value_t = 2048)]
    max_aws_clients: usize,
}

/// `--aws-identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "kebab-case")]
enum IdentityMode {
    Operator,
    NamespaceRole,
}

/// Reads the namespace-to-role ConfigMap before the first reconcile, then follows its
/// changes (a watch on that one object) into `ctx`.
async fn follow_role_map(client: &kube::Client, ns: &str, name: &str, ctx: &Arc<Context>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (store, writer) = reflector::store();
    let stream = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .reflect(writer);
    let (ns_for_log, name_for_log) = (ns.to_string(), name.to_string());
    let (ready, store_ready) = (ctx.clone(), store.clone());
    let name = name.to_string();
    let ns = ns.to_string();
    let apply = move || {
        let key = reflector::ObjectRef::<ConfigMap>::new(&name).within(&ns);
        let map = store_ready
            .get(&key)
            .map(|cm| RoleMap::parse(&cm.data.clone().unwrap_or_default()));
        tracing::info!(
            mapped = map.as_ref().map(RoleMap::len),
            "namespace roles read"
        );
        ready.set_roles(map);
    };
    let follow = apply.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        // Every event (applied, deleted, relisted) has reached the store when it comes out.
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => follow(),
                Err(e) => tracing::warn!(error = %e, "watching the namespace roles failed"),
            }
        }
    });
    // Without read access (RBAC) the first list never comes: say so and stop rather than
    // lead with no mapping.
    match tokio::time::timeout(Duration::from_secs(60), store.wait_until_ready()).await {
        Ok(Ok(())) => apply(),
        _ => {
            tracing::error!(configmap = %format!("{ns_for_log}/{name_for_log}"), "could not read the namespace roles within 60 s (may the operator get, list and watch ConfigMaps in its namespace?): stopping");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let metrics = Metrics::new();
    let client = connect(&metrics).await?;
    let version = client.apiserver_version().await?;
    let cluster_name = cluster_name(&client, args.cluster_name.as_deref()).await?;
    tracing::info!(server = %version.git_version, cluster = %cluster_name, "connected to the API server");
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into());
        format!("{host}-{}", std::process::id())
    });
    serve_admin(&metrics, args.admin_address).await?;
    if args.leader_election {
        if !lead(&client, &args, &identity, &metrics).await {
            return Ok(());
        }
    } else {
        metrics.set_leader(true);
    }
    let ctx = Arc::new(context(
        &args,
        client.clone(),
        metrics,
        identity,
        cluster_name,
    )?);
    if args.aws_identity == IdentityMode::NamespaceRole {
        follow_role_map(&client, &args.lease_namespace, &args.namespace_roles, &ctx).await;
    }
    run_controller(&args, &client, ctx).await;
    tracing::info!("stopped");
    Ok(())
}

/// Logs to stderr at `LOG_LEVEL` (default info), as text or JSON lines.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// A client of the API server whose every request is counted
/// (`kinesis_operator_kube_requests`).
async fn connect(metrics: &Arc<Metrics>) -> anyhow::Result<kube::Client> {
    let counted = metrics.clone();
    Ok(
        kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?
            .with_layer(&tower::util::MapRequestLayer::new(
                move |req: http::Request<kube::client::Body>| {
                    let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
                    counted.kube_request(req.method().as_str(), watch);
                    req
                },
            ))
            .build(),
    )
}

/// `--cluster-name`, else `k8s-` and namespace kube-system's uid.
async fn cluster_name(client: &kube::Client, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(name) = given.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "naming this cluster after namespace kube-system's uid failed ({e}): set --cluster-name (the chart's clusterName), or let the operator get namespace kube-system"
            )
        })?;
    kinesis_operator::identity::cluster_name_from_uid(ns.metadata.uid.as_deref())
        .ok_or_else(|| anyhow::anyhow!("namespace kube-system has no uid: set --cluster-name"))
}

/// `/metrics`, `/healthz` and `/readyz` on `address`, in the background.
async fn serve_admin(metrics: &Arc<Metrics>, address: std::net::SocketAddr) -> anyhow::Result<()> {
    let page = metrics.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = page.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(())
}

/// Waits to lead; `false` when shut down first. Once leading, a task keeps the Lease and
/// ends the process when it is lost, so this replica never acts beside a new leader (its
/// restart makes it a standby).
async fn lead(client: &kube::Client, args: &Args, identity: &str, metrics: &Arc<Metrics>) -> bool {
    let election = Election {
        api: Api::namespaced(client.clone(), &args.lease_namespace),
        name: args.lease_name.clone(),
        identity: identity.to_string(),
        duration: Duration::from_secs(args.lease_duration_seconds),
    };
    tracing::info!(identity = %identity, lease = %args.lease_name, "waiting to lead");
    let Some(leadership) = election.acquire(shutdown_signal()).await else {
        return false;
    };
    metrics.set_leader(true);
    tracing::info!(identity = %identity, "leading");
    let leading = metrics.clone();
    tokio::spawn(async move {
        let lost = leadership.keep().await;
        leading.set_leader(false);
        tracing::error!(reason = %lost, "lost the leader Lease: stopping");
        std::process::exit(1);
    });
    true
}

/// The reconciler's context from the flags.
fn context(
    args: &Args,
    client: kube::Client,
    metrics: Arc<Metrics>,
    identity: String,
    cluster_name: String,
) -> anyhow::Result<Context> {
    let network_policy_from = match args.worker_network_policy_from.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(json) => {
            Some(kinesis_operator::netpol::parse_peers(json).map_err(anyhow::Error::msg)?)
        }
    };
    let settings = WorkerSettings {
        network_policy_from,
        image: args.worker_image.clone(),
        pull_policy: args.worker_image_pull_policy.clone(),
        default_region: args.region.clone(),
    };
    Ok(Context::new(
        client,
        settings,
        Duration::from_secs(args.resync_seconds.max(1)),
        metrics,
        Reporter {
            controller: "kinesis-operator".into(),
            instance: Some(identity),
        },
        cluster_name,
        IdentitySettings {
            allowed_endpoints: kinesis_operator::validate::AllowedEndpoints::new(
                &args.allowed_endpoints,
            ),
            unprefixed_names: kinesis_operator::validate::UnprefixedNames::new(
                &args.unprefixed_application_names,
            ),
            mode: match args.aws_identity {
                IdentityMode::Operator => Mode::Operator,
                IdentityMode::NamespaceRole => Mode::NamespaceRole,
            },
            roles_source: format!("{}/{}", args.lease_namespace, args.namespace_roles),
            sts_endpoint: args.sts_endpoint.clone(),
            max_clients: args.max_aws_clients,
        },
    ))
}

/// Reconciles until shut down: on what the user (or an HPA through /scale) changed, never
/// on the operator's own status writes (`desired_state`), on a reshard, and on changes to
/// the Deployments it owns; at most 8 at once.
async fn run_controller(args: &Args, client: &kube::Client, ctx: Arc<Context>) {
    let (apps, deployments): (Api<KinesisApplication>, Api<Deployment>) =
        match &args.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let (reader, writer) = reflector::store();
    let (resharded, reshard_triggers) = futures::channel::mpsc::unbounded();
    if args.shard_poll_seconds > 0 {
        tokio::spawn(kinesis_operator::reshard::watch(
            reader.clone(),
            ctx.clone(),
            Duration::from_secs(args.shard_poll_seconds),
            resharded,
        ));
    }
    // What the operator keeps per application is dropped once the object is gone, even if
    // its finalizer was stripped (then no reconcile sees it go).
    {
        let (store, ctx) = (reader.clone(), ctx.clone());
        let every = Duration::from_secs(args.resync_seconds.max(1));
        // No `wait_until_ready` here: its future keeps one waker, and the controller waits on
        // the same store (this task was never woken). Nothing is kept of an application
        // before its first reconcile, which comes after the store is ready.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let live = store.state();
                let n = ctx.sweep(&live);
                if n > 0 {
                    tracing::info!(
                        forgotten = n,
                        "dropped what was kept of applications that are gone"
                    );
                }
            }
        });
    }
    let trigger = watcher(apps, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(desired_state, Default::default());
    Controller::for_stream(trigger, reader)
        .with_config(controller::Config::default().concurrency(8))
        .reconcile_on(reshard_triggers)
        .owns(
            deployments,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=kinesis-operator"),
        )
        .graceful_shutdown_on(shutdown_signal())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move { kinesis_operator::controller::log_run_result(&res) })
        .await;
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C. The operator's own copy of the worker's
/// (`kinesis_processor::shutdown_signal`): the app contract's crate, and gRPC with it, stays
/// out of the operator.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
