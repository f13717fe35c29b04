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

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ConsumerMode, InitialPosition, KinesisApplication, labels};
use crate::validate::{SOCKET_VOLUME, WORKER_CONTAINER, application_name, arn_region};

/// The worker's admin port (metrics, probes, drain).
pub const ADMIN_PORT: i32 = 8080;
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

fn worker_env(
    app: &KinesisApplication,
    settings: &WorkerSettings,
    app_address: &str,
    consumer_arn: Option<&str>,
) -> Vec<EnvVar> {
    let spec = &app.spec;
    let stream = spec
        .stream
        .arn
        .clone()
        .or_else(|| spec.stream.name.clone())
        .unwrap_or_default();
    let mut out = vec![
        env("KINESIS_STREAM", stream),
        env("KINESIS_APPLICATION", application_name(app)),
        EnvVar {
            name: "WORKER_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("APP_ADDRESS", app_address),
        env("ADMIN_ADDRESS", format!("0.0.0.0:{ADMIN_PORT}")),
        // The operator creates the table: workers need no CreateTable permission.
        env("CREATE_LEASE_TABLE", "false"),
        env("LOG_FORMAT", "json"),
        env(
            "LOG_LEVEL",
            spec.worker
                .log_level
                .clone()
                .unwrap_or_else(|| "info".into()),
        ),
    ];
    if let Some(r) = region(app, settings) {
        out.push(env("AWS_REGION", r));
    }
    if let Some(e) = &spec.stream.endpoint {
        out.push(env("KINESIS_ENDPOINT", e.clone()));
    }
    // The user's own settings last: they win over the operator's.
    let user_env = spec.worker.env.clone().unwrap_or_default();
    if let Some(e) = spec
        .stream
        .dynamo_db_endpoint
        .as_ref()
        .or(spec.stream.endpoint.as_ref())
    {
        out.push(env("DYNAMODB_ENDPOINT", e.clone()));
    }
    if let Some(p) = spec.initial_position {
        let v = match p {
            InitialPosition::Latest => "LATEST",
            InitialPosition::TrimHorizon => "TRIM_HORIZON",
            InitialPosition::AtTimestamp => "AT_TIMESTAMP",
        };
        out.push(env("INITIAL_POSITION", v));
    }
    if let Some(t) = &spec.initial_timestamp {
        out.push(env("INITIAL_TIMESTAMP", t.clone()));
    }
    let c = &spec.consumer;
    if c.mode == ConsumerMode::EnhancedFanOut {
        out.push(env("CONSUMER_MODE", "enhanced-fan-out"));
        // Registered by the operator, once: the pods register nothing.
        if let Some(arn) = consumer_arn {
            out.push(env("CONSUMER_ARN", arn));
        }
    }
    for (name, v) in [
        ("MAX_RECORDS", c.max_records.map(i64::from)),
        ("IDLE_TIME_MS", c.idle_time_between_reads_ms),
        ("FAILOVER_TIME_MS", c.failover_time_ms),
        ("CHECKPOINT_INTERVAL_MS", c.checkpoint_interval_ms),
        ("MAX_ATTEMPTS", c.max_attempts.map(i64::from)),
        (
            "MAX_RECORD_AGE_SECONDS",
            spec.delivery.maximum_record_age_seconds,
        ),
        ("BATCH_SIZE", spec.delivery.batch_size.map(i64::from)),
        (
            "PARALLELIZATION_FACTOR",
            spec.delivery.parallelization_factor.map(i64::from),
        ),
        (
            "BATCHING_WINDOW_MS",
            spec.delivery
                .maximum_batching_window_seconds
                .map(|s| s.saturating_mul(1000)),
        ),
    ] {
        if let Some(v) = v {
            out.push(env(name, v.to_string()));
        }
    }
    if let Some(arn) = &spec.delivery.on_failure_destination {
        out.push(env("ON_FAILURE_DESTINATION", arn.clone()));
    }
    if spec.delivery.bisect_batch_on_error == Some(true) {
        out.push(env("BISECT_ON_ERROR", "true"));
    }
    if spec.delivery.report_batch_item_failures == Some(true) {
        out.push(env("REPORT_BATCH_ITEM_FAILURES", "true"));
    }
    if let Some(filters) = filters_env(&spec.delivery.filters) {
        out.push(env("FILTERS", filters));
    }
    out.retain(|e| !user_env.iter().any(|u| u.name == e.name));
    out.extend(user_env);
    out
}

/// `spec.delivery.filters` as the worker's `FILTERS`: one JSON array of the patterns.
/// Patterns that are not JSON are left out here; validation refuses the spec before any
/// Deployment is written.
fn filters_env(filters: &[String]) -> Option<String> {
    if filters.is_empty() {
        return None;
    }
    let patterns: Vec<serde_json::Value> = filters
        .iter()
        .filter_map(|f| serde_json::from_str(f).ok())
        .collect();
    Some(serde_json::Value::Array(patterns).to_string())
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

/// Seconds a pod may take to stop: the worker's drain (hand-over timeout, final
/// checkpoints) with margin, or the template's own if longer.
pub fn grace_period(app: &KinesisApplication) -> i64 {
    let failover_s = app.spec.consumer.failover_time_ms.unwrap_or(10_000) / 1000;
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
    let (app_address, socket_dir) = match (&spec.processor.port, &spec.processor.socket) {
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
    };
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
    if socket_dir.is_some() {
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: SOCKET_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    let worker = Container {
        name: WORKER_CONTAINER.into(),
        image: Some(
            spec.worker
                .image
                .clone()
                .unwrap_or_else(|| settings.image.clone()),
        ),
        image_pull_policy: settings.pull_policy.clone(),
        args: Some(vec!["run".into()]),
        env: Some(worker_env(app, settings, &app_address, consumer_arn)),
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
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
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
        }),
        ..Default::default()
    };
    pod.containers.push(worker);
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
            // One new pod before an old one stops: shards move by hand-over, not failover.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..Default::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests;
