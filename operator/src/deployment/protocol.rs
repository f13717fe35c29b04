//! What `spec.processor.protocol` changes in the pod (docs/MIGRATING.md): a pure function of
//! the resource, applied by [`super::deployment`] to the app container.
//!
//! - `kcl-multilang`: an init container copies the static `kinesis-bridge` binary from the
//!   worker's image into an `emptyDir`, which the app container mounts read-only; the app
//!   container's command becomes `kinesis-bridge multilang -- <spec.processor.command>`. The
//!   user's image is not changed and needs nothing of ours: the bridge is one static file.
//! - `lambda`: the worker serves the Lambda Runtime API on the pod's loopback; the app
//!   container gets `AWS_LAMBDA_RUNTIME_API` and the variables Lambda sets for a function,
//!   so an unchanged function image (or `python -m awslambdaric module.handler`) starts as it
//!   does on Lambda.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::crd::{AppProtocol, KinesisApplication};

/// The volume that carries the bridge into the app container.
pub const BRIDGE_VOLUME: &str = "kinesis-bridge";
/// Where the app container finds the bridge.
pub const BRIDGE_DIR: &str = "/opt/kinesis-bridge";
/// The bridge's path in the worker's image.
pub const BRIDGE_IN_IMAGE: &str = "/kinesis-bridge";
/// The init container that installs the bridge.
pub const BRIDGE_INIT_CONTAINER: &str = "kinesis-bridge-install";
/// Where the worker serves the Lambda Runtime API (the pod's loopback: every container of
/// the pod shares it, nothing outside the pod reaches it).
pub const LAMBDA_RUNTIME_API: &str = "127.0.0.1:9001";

/// The protocol of `app`'s app container.
pub fn protocol(app: &KinesisApplication) -> AppProtocol {
    app.spec.processor.protocol.unwrap_or_default()
}

/// The ARN the Lambda handler is told it runs as: the application's name in the stream's
/// account and region (`000000000000` when the spec names no account).
pub fn function_arn(app: &KinesisApplication, region: Option<&str>) -> String {
    let account = app
        .spec
        .stream
        .arn
        .as_deref()
        .or(app.spec.aws.as_ref().and_then(|a| a.role_arn.as_deref()))
        .and_then(|arn| arn.split(':').nth(4))
        .filter(|a| !a.is_empty())
        .unwrap_or("000000000000");
    let name = kube::ResourceExt::name_any(app);
    format!(
        "arn:aws:lambda:{}:{account}:function:{name}",
        region.unwrap_or_default()
    )
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Adds `vars` to `container`'s environment, keeping any the user set.
fn add_env(container: &mut Container, vars: Vec<EnvVar>) {
    let list = container.env.get_or_insert_with(Vec::new);
    for var in vars {
        if !list.iter().any(|e| e.name == var.name) {
            list.push(var);
        }
    }
}

/// The app container's memory limit in MiB, as Lambda's `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`
/// (128, Lambda's smallest, when the container has no limit in Mi or Gi).
fn memory_mib(container: &Container) -> i64 {
    let limit = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.as_str());
    let parse = |s: &str, suffix: &str, factor: i64| {
        s.strip_suffix(suffix)
            .and_then(|n| n.parse::<i64>().ok())
            .map(|n| n * factor)
    };
    limit
        .and_then(|s| parse(s, "Mi", 1).or_else(|| parse(s, "Gi", 1024)))
        .unwrap_or(128)
}

/// Applies the protocol to the pod: `app_container` is the container named by
/// `spec.processor.container` (or the first); `worker_image` the worker's.
pub fn apply(
    app: &KinesisApplication,
    pod: &mut PodSpec,
    app_container: Option<&str>,
    worker_image: &str,
    pull_policy: Option<&String>,
    region: Option<&str>,
) {
    let Some(container) = pod
        .containers
        .iter_mut()
        .find(|c| Some(c.name.as_str()) == app_container)
    else {
        return;
    };
    match protocol(app) {
        AppProtocol::Grpc => {}
        AppProtocol::KclMultilang => {
            let mut command = vec![
                format!("{BRIDGE_DIR}/kinesis-bridge"),
                "multilang".into(),
                "--".into(),
            ];
            command.extend(app.spec.processor.command.clone().unwrap_or_default());
            container.command = Some(command);
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(VolumeMount {
                    name: BRIDGE_VOLUME.into(),
                    mount_path: BRIDGE_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            pod.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: BRIDGE_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            pod.init_containers
                .get_or_insert_with(Vec::new)
                .push(install_bridge(worker_image, pull_policy));
        }
        AppProtocol::Lambda => {
            let mut vars = vec![
                env("AWS_LAMBDA_RUNTIME_API", LAMBDA_RUNTIME_API),
                env("AWS_LAMBDA_FUNCTION_NAME", kube::ResourceExt::name_any(app)),
                env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
                env(
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    memory_mib(container).to_string(),
                ),
            ];
            if let Some(region) = region {
                vars.push(env("AWS_REGION", region));
                vars.push(env("AWS_DEFAULT_REGION", region));
            }
            if let Some(handler) = &app.spec.processor.handler {
                vars.push(env("_HANDLER", handler.clone()));
            }
            add_env(container, vars);
        }
    }
}

/// The init container that copies the bridge out of the worker's image.
fn install_bridge(worker_image: &str, pull_policy: Option<&String>) -> Container {
    Container {
        name: BRIDGE_INIT_CONTAINER.into(),
        image: Some(worker_image.into()),
        image_pull_policy: pull_policy.cloned(),
        command: Some(vec![
            BRIDGE_IN_IMAGE.into(),
            "install".into(),
            BRIDGE_DIR.into(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: BRIDGE_VOLUME.into(),
            mount_path: BRIDGE_DIR.into(),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity("10m".into())),
                    ("memory".to_string(), Quantity("16Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
            ..Default::default()
        }),
        security_context: Some(super::restricted()),
        ..Default::default()
    }
}
