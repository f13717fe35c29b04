//! The worker Deployment of a `KinesisApplication`: the template's app containers plus the
//! injected `kinesis-worker`, a shared socket volume, the app's preStop hook, and a
//! termination grace period that covers the drain. A pure function of the resource.
//!
//! Stopping a pod: the worker gets SIGTERM at once and hands its leases over; the app's
//! preStop hook (`GET /drained` on the worker's admin port) waits until that is done, so the
//! app serves (and may checkpoint on `ShutdownRequested`) until the worker has released every
//! lease, and only then gets its own SIGTERM. The worker is a regular container, not a native
//! sidecar (Kubernetes ≥ 1.29): a native sidecar is stopped *after* the app, the wrong order
//! for a hand-over that needs the app serving. `/drained` starts nothing, so no request from
//! outside the pod can stop consumption.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kinesis_spec::settings as contract;
use kube::{Resource, ResourceExt};

use crate::crd::{AppProtocol, ConsumerMode, InitialPosition, KinesisApplication, labels};
use crate::validate::{SOCKET_VOLUME, WORKER_CONTAINER, application_name, arn_region};

/// The worker's admin port (metrics, probes, drain).
pub const ADMIN_PORT: i32 = 8080;
/// The worker's admin address: every interface, [`ADMIN_PORT`].
const ADMIN_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ADMIN_PORT as u16));
/// Default socket of the record processor.
pub const DEFAULT_SOCKET: &str = "/var/run/kinesis/processor.sock";

/// What the operator knows beyond the resource.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Default worker image.
    pub image: String,
    /// Image pull policy of the worker.
    pub pull_policy: Option<String>,
    /// Region when the resource names none (the operator's own).
    pub default_region: Option<String>,
    /// The peers the worker pods' admin port admits (see [`crate::netpol`]); `None`: no
    /// NetworkPolicy is made.
    pub network_policy_from: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

/// The Deployment's name: the resource's.
pub fn name(app: &KinesisApplication) -> String {
    app.name_any()
}

/// The ServiceAccount created for `aws.roleArn`.
pub fn service_account_name(app: &KinesisApplication) -> String {
    format!("{}-kinesis", app.name_any())
}

/// Whether an object the operator is about to apply as `kind` `name` for `app` already
/// exists as somebody else's: it is `app`'s only if its controller owner reference is `app`
/// (by uid). Returns the `NameConflict` message (what to rename) if not.
///
/// # Guarantees
/// The operator never takes over (server-side apply with `force`) an object it did not
/// create for this very KinesisApplication: not another application's, not one a user made.
pub fn name_conflict(
    app: &KinesisApplication,
    kind: &str,
    name: &str,
    existing: Option<&ObjectMeta>,
) -> Option<String> {
    let meta = existing?;
    let uid = app.metadata.uid.as_deref()?;
    let ours = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    (!ours).then(|| {
        format!(
            "{kind} `{name}` already exists and was not created by the operator for this KinesisApplication: rename the KinesisApplication, or delete or rename that {kind}"
        )
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(ADMIN_PORT),
        ..Default::default()
    }
}

/// The stream's region: spec, ARN, else the operator's.
pub fn region(app: &KinesisApplication, settings: &WorkerSettings) -> Option<String> {
    app.spec
        .stream
        .region
        .clone()
        .or_else(|| {
            app.spec
                .stream
                .arn
                .as_deref()
                .and_then(arn_region)
                .map(String::from)
        })
        .or_else(|| settings.default_region.clone())
}

/// The worker's settings for `app`: the operator's side of the contract the worker reads
/// ([`kinesis_spec::settings`]), rendered into the worker container's environment by
/// [`deployment`]. `consumer_arn`: the fan-out consumer the operator registered (passed on
/// in fan-out mode only).
pub fn worker_settings(
    app: &KinesisApplication,
    settings: &WorkerSettings,
    consumer_arn: Option<&str>,
) -> contract::WorkerSettings {
    let spec = &app.spec;
    let c = &spec.consumer;
    let d = &spec.delivery;
    let fan_out = c.mode == ConsumerMode::EnhancedFanOut;
    contract::WorkerSettings {
        stream: spec
            .stream
            .arn
            .clone()
            .or_else(|| spec.stream.name.clone())
            .unwrap_or_default(),
        application: application_name(app),
        app_address: processor_address(app).0,
        admin_address: ADMIN_ADDRESS,
        // The operator creates the table: workers need no CreateTable permission.
        create_lease_table: false,
        log_format: contract::LogFormat::Json,
        log_level: spec
            .worker
            .log_level
            .clone()
            .unwrap_or_else(|| contract::defaults::LOG_LEVEL.into()),
        region: region(app, settings),
        kinesis_endpoint: spec.stream.endpoint.clone(),
        dynamodb_endpoint: spec
            .stream
            .dynamo_db_endpoint
            .clone()
            .or_else(|| spec.stream.endpoint.clone()),
        initial_position: spec.initial_position.map(|p| match p {
            InitialPosition::Latest => contract::InitialPosition::Latest,
            InitialPosition::TrimHorizon => contract::InitialPosition::TrimHorizon,
            InitialPosition::AtTimestamp => contract::InitialPosition::AtTimestamp,
        }),
        // The same instant in UTC: the worker reads no other offset (validation refused a
        // time that is not RFC 3339).
        initial_timestamp: spec
            .initial_timestamp
            .as_deref()
            .map(|t| kinesis_spec::settings::utc_timestamp(t).unwrap_or_else(|_| t.to_string())),
        consumer_mode: fan_out.then_some(contract::ConsumerMode::EnhancedFanOut),
        // Registered by the operator, once: the pods register nothing.
        consumer_arn: consumer_arn.filter(|_| fan_out).map(String::from),
        max_records: c.max_records.map(i64::from),
        idle_time_ms: c.idle_time_between_reads_ms,
        failover_time_ms: c.failover_time_ms,
        checkpoint_interval_ms: c.checkpoint_interval_ms,
        checkpoint_max_records: c.checkpoint_max_records,
        checkpoint_max_bytes: c.checkpoint_max_bytes,
        max_attempts: c.max_attempts.map(i64::from),
        max_record_age_seconds: d.maximum_record_age_seconds,
        batch_size: d.batch_size.map(i64::from),
        parallelization_factor: d.parallelization_factor.map(i64::from),
        batching_window_ms: d
            .maximum_batching_window_seconds
            .map(|s| s.saturating_mul(1000)),
        on_failure_destination: d.on_failure_destination.clone(),
        bisect_on_error: d.bisect_batch_on_error == Some(true),
        report_batch_item_failures: d.report_batch_item_failures == Some(true),
        filters: filter_patterns(&d.filters),
        lambda_runtime_api: (protocol::protocol(app) == AppProtocol::Lambda)
            .then(|| protocol::LAMBDA_RUNTIME_API.parse().ok())
            .flatten(),
        lambda_function_arn: (protocol::protocol(app) == AppProtocol::Lambda)
            .then(|| protocol::function_arn(app, region(app, settings).as_deref())),
    }
}

fn worker_env(
    app: &KinesisApplication,
    settings: &WorkerSettings,
    consumer_arn: Option<&str>,
) -> Vec<EnvVar> {
    let mut out: Vec<EnvVar> = worker_settings(app, settings, consumer_arn)
        .to_env()
        .into_iter()
        .map(|(name, value)| env(name, value))
        .collect();
    // The worker id is the pod's name, right after the application name where it always
    // was: another order would be another pod template, and restart every worker.
    let after_application = out
        .iter()
        .position(|e| e.name == contract::env::APPLICATION)
        .map_or(0, |i| i + 1);
    out.insert(
        after_application,
        EnvVar {
            name: contract::env::WORKER_ID.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    // The user's own settings last: they win over the operator's.
    let user_env = app.spec.worker.env.clone().unwrap_or_default();
    out.retain(|e| !user_env.iter().any(|u| u.name == e.name));
    out.extend(user_env);
    out
}

/// `spec.delivery.filters` as the worker's `FILTERS` patterns (rendered as one JSON array).
/// Patterns that are not JSON are left out here; validation refuses the spec before any
/// Deployment is written.
fn filter_patterns(filters: &[String]) -> Option<Vec<serde_json::Value>> {
    if filters.is_empty() {
        return None;
    }
    Some(
        filters
            .iter()
            .filter_map(|f| serde_json::from_str(f).ok())
            .collect(),
    )
}

/// Where the worker reaches the app (`APP_ADDRESS`), and the folder of the shared socket
/// volume (`None`: the app serves on TCP, no volume).
fn processor_address(app: &KinesisApplication) -> (String, Option<String>) {
    let processor = &app.spec.processor;
    match (&processor.port, &processor.socket) {
        (Some(port), _) => (format!("http://127.0.0.1:{port}"), None),
        (None, socket) => {
            let path = socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
            let dir = path
                .rsplit_once('/')
                .map(|(d, _)| {
                    if d.is_empty() {
                        "/".to_string()
                    } else {
                        d.to_string()
                    }
                })
                .unwrap_or_else(|| "/".into());
            (format!("unix://{path}"), Some(dir))
        }
    }
}

/// The worker container's resources when `spec.worker.resources` names none: 10m CPU and
/// 32Mi requested, and a memory limit of [`default_memory_limit_mib`].
fn default_resources(shards_per_worker: i32) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("10m".into())),
            ("memory".into(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity(format!("{}Mi", default_memory_limit_mib(shards_per_worker))),
        )])),
        ..Default::default()
    }
}

/// The default memory limit of a worker (MiB): 64 and 10 for each shard it may read a backlog
/// of at once, twice `shardsPerWorker` (after a failover the others hold the dead worker's
/// shards too), at least 128 and at most 4096 (docs/OPERATIONS.md, "Memory and CPU of the
/// worker"). It follows the spec alone, never the stream's shard count, so a reshard never
/// changes the pod template (which would restart every worker).
fn default_memory_limit_mib(shards_per_worker: i32) -> i64 {
    let shards = i64::from(shards_per_worker.max(1)) * 2;
    (64 + 10 * shards).clamp(128, 4096)
}

/// The security context of the containers the operator adds (the worker, the bridge's
/// installer): Pod Security "restricted". No fixed uid: the image's numeric user (65532 in
/// ours) runs it, or the uid a platform assigns (OpenShift's restricted SCC refuses a pod
/// naming one outside the namespace's range).
pub(crate) fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        // Pod Security "restricted" asks for it on every container.
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The default of `spec.scaling.maxSurgePercent`.
pub const MAX_SURGE_PERCENT: i32 = 25;

/// How a Deployment of workers rolls: new pods before old ones stop (none unavailable: shards
/// move by hand-over, not failover), `maxSurgePercent` of them at a time (Kubernetes rounds
/// up: at least one pod). One pod at a time replaced a 500-pod fleet in 500 sequential steps.
pub fn rollout(app: &KinesisApplication) -> DeploymentStrategy {
    let percent = app
        .spec
        .scaling
        .max_surge_percent
        .unwrap_or(MAX_SURGE_PERCENT)
        .clamp(1, 100);
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::String(format!("{percent}%"))),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

/// Seconds a pod may take to stop: the worker's drain (hand-over timeout, final
/// checkpoints) with margin, or the template's own if longer.
pub fn grace_period(app: &KinesisApplication) -> i64 {
    let failover_s = app
        .spec
        .consumer
        .failover_time_ms
        .unwrap_or(contract::defaults::FAILOVER_TIME_MS)
        / 1000;
    let drain = 30 + failover_s;
    app.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map_or(drain, |t| t.max(drain))
}

/// The Deployment for `app` with `replicas` workers; in fan-out mode `consumer_arn` is the
/// consumer the operator registered.
pub fn deployment(
    app: &KinesisApplication,
    replicas: i32,
    settings: &WorkerSettings,
    consumer_arn: Option<&str>,
) -> Deployment {
    let spec = &app.spec;
    let app_name = app.name_any();
    let selector = labels(&app_name);
    let (app_address, socket_dir) = processor_address(app);
    let mount = socket_dir.as_ref().map(|dir| VolumeMount {
        name: SOCKET_VOLUME.into(),
        mount_path: dir.clone(),
        ..Default::default()
    });

    let mut template: PodTemplateSpec = spec.template.clone();
    let mut meta = template.metadata.take().unwrap_or_default();
    let mut pod_labels = meta.labels.take().unwrap_or_default();
    pod_labels.extend(selector.clone());
    meta.labels = Some(pod_labels);
    let mut pod: PodSpec = template.spec.take().unwrap_or_default();
    let processor_container = spec
        .processor
        .container
        .clone()
        .or_else(|| pod.containers.first().map(|c| c.name.clone()));
    for c in &mut pod.containers {
        if Some(&c.name) != processor_container.as_ref() {
            continue;
        }
        if let Some(m) = &mount {
            c.volume_mounts.get_or_insert_with(Vec::new).push(m.clone());
        }
        let env_list = c.env.get_or_insert_with(Vec::new);
        if !env_list.iter().any(|e| e.name == "APP_ADDRESS") {
            env_list.push(env("APP_ADDRESS", app_address.clone()));
        }
        // The app keeps serving while the worker hands its shards over (it drains on its
        // own SIGTERM; /drained only waits for that).
        let lifecycle = c.lifecycle.get_or_insert_with(Lifecycle::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = Some(LifecycleHandler {
                http_get: Some(http_get("/drained")),
                ..Default::default()
            });
        }
    }
    let worker_image = spec
        .worker
        .image
        .clone()
        .unwrap_or_else(|| settings.image.clone());
    protocol::apply(
        app,
        &mut pod,
        processor_container.as_deref(),
        &worker_image,
        settings.pull_policy.as_ref(),
        region(app, settings).as_deref(),
    );
    if socket_dir.is_some() {
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: SOCKET_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    let worker = Container {
        name: WORKER_CONTAINER.into(),
        image: Some(worker_image),
        image_pull_policy: settings.pull_policy.clone(),
        args: Some(vec!["run".into()]),
        env: Some(worker_env(app, settings, consumer_arn)),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: ADMIN_PORT,
            ..Default::default()
        }]),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/healthz")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/readyz")),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(
            spec.worker
                .resources
                .clone()
                .unwrap_or_else(|| default_resources(spec.scaling.shards_per_worker)),
        ),
        volume_mounts: mount.clone().map(|m| vec![m]),
        security_context: Some(restricted()),
        ..Default::default()
    };
    if protocol::protocol(app) == AppProtocol::Lambda {
        // A Lambda runtime client exits when the Runtime API does not answer its first
        // `next`: the worker goes first, and the kubelet starts the app only once the
        // worker's postStart hook has seen the Runtime API listen (as Lambda has it up before
        // the runtime starts).
        let mut worker = worker;
        worker.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "/usr/local/bin/kinesis-worker".into(),
                        "wait-listening".into(),
                        protocol::LAMBDA_RUNTIME_API.into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        pod.containers.insert(0, worker);
    } else {
        pod.containers.push(worker);
    }
    pod.termination_grace_period_seconds = Some(grace_period(app));
    if spec
        .aws
        .as_ref()
        .and_then(|a| a.role_arn.as_ref())
        .is_some()
    {
        pod.service_account_name = Some(service_account_name(app));
    }
    template.metadata = Some(meta);
    template.spec = Some(pod);

    Deployment {
        metadata: ObjectMeta {
            name: Some(name(app)),
            namespace: app.namespace(),
            labels: Some(selector.clone()),
            owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            strategy: Some(rollout(app)),
            template,
            ..Default::default()
        },
        status: None,
    }
}

pub mod protocol;

#[cfg(test)]
mod tests;
