//! Cross-field rules of a `KinesisApplication` spec that the schema cannot express
//! (Kubernetes 1.20 has no CEL). A violation becomes `Ready=False`, reason `InvalidSpec`, and
//! a Warning Event whose message names the field and the fix.

use crate::crd::{InitialPosition, KinesisApplication};

/// Name of the container the operator injects.
pub const WORKER_CONTAINER: &str = "kinesis-worker";
/// `spec.processor.protocol` and the fields that go with it.
fn protocol(processor: &crate::crd::ProcessorSpec) -> Vec<Invalid> {
    use crate::crd::AppProtocol;
    let mut out = Vec::new();
    let protocol = processor.protocol.unwrap_or_default();
    let command = processor.command.as_deref().unwrap_or_default();
    match protocol {
        AppProtocol::KclMultilang => {
            if command.iter().all(|w| w.trim().is_empty()) {
                out.push(invalid(
                    "spec.processor.command",
                    "protocol kcl-multilang needs the app's command line, KCL's executableName as a list: e.g. [python3, sample_kclpy_app.py]",
                ));
            }
        }
        AppProtocol::Grpc | AppProtocol::Lambda => {
            if !command.is_empty() {
                out.push(invalid(
                    "spec.processor.command",
                    "only protocol kcl-multilang runs a command: set protocol: kcl-multilang, or put the command in the container",
                ));
            }
        }
    }
    if processor.handler.is_some() && protocol != AppProtocol::Lambda {
        out.push(invalid(
            "spec.processor.handler",
            "only protocol lambda has a handler: set protocol: lambda, or remove it",
        ));
    }
    out
}

/// Name of the volume holding the processor socket.
pub const SOCKET_VOLUME: &str = "kinesis-processor";

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as a path: `spec.stream.name`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The region in a stream ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
pub fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

/// The stream name in a stream ARN.
pub fn arn_stream_name(arn: &str) -> Option<&str> {
    arn.rsplit_once(":stream/")
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty())
}

/// The application name (the lease table, the fan-out consumer): `spec.applicationName`;
/// else the one already in use (`status.applicationName`, so objects made before the default
/// changed keep their table); else `NAMESPACE.NAME`, so `team-a/counter` and `team-b/counter`
/// never share a table by accident (a namespace holds no dot, so the name is unambiguous).
pub fn application_name(app: &KinesisApplication) -> String {
    app.spec
        .application_name
        .clone()
        .or_else(|| app.status.as_ref()?.application_name.clone())
        .unwrap_or_else(|| {
            format!(
                "{}.{}",
                app.metadata.namespace.as_deref().unwrap_or("default"),
                app.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// The endpoints the operator's administrator allows in `spec.stream` (`--allowed-endpoints`,
/// the chart's `aws.allowedEndpoints`): the operator sends its own signed requests to a
/// spec's endpoint, so a tenant must not choose one. Empty (the default): no override at
/// all; AWS's own endpoints only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedEndpoints(Vec<String>);

impl AllowedEndpoints {
    /// The allow-list (compared without case and trailing `/`).
    pub fn new<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self(
            endpoints
                .into_iter()
                .map(|e| normalize_endpoint(e.as_ref()))
                .filter(|e| !e.is_empty())
                .collect(),
        )
    }

    /// Is `endpoint` on the list?
    pub fn allows(&self, endpoint: &str) -> bool {
        let e = normalize_endpoint(endpoint);
        self.0.contains(&e)
    }
}

fn normalize_endpoint(e: &str) -> String {
    e.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The endpoint overrides of `app` that `allowed` does not list, each naming its field.
///
/// # Guarantees
/// Empty only when every endpoint the operator would call for `app` (with its own
/// identity) is AWS's default or one the administrator listed.
pub fn endpoints(app: &KinesisApplication, allowed: &AllowedEndpoints) -> Vec<Invalid> {
    let stream = &app.spec.stream;
    [
        ("spec.stream.endpoint", stream.endpoint.as_deref()),
        ("spec.stream.dynamoDbEndpoint", stream.dynamo_db_endpoint.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, e)| Some((field, e?)))
    .filter(|(_, e)| !allowed.allows(e))
    .map(|(field, e)| {
        let shown: String = e.chars().take(100).collect();
        invalid(
            field,
            format!("`{shown}` is not an endpoint the operator's administrator allowed: remove it to use AWS's own endpoint, or ask them to add it to the chart's aws.allowedEndpoints"),
        )
    })
    .collect()
}

/// The namespaces whose objects may name an `spec.applicationName` outside their own
/// `NAMESPACE.` prefix (`--unprefixed-application-names`, the chart's
/// `applicationNames.unprefixedAllowedIn`; `*`: every namespace). Such a name reaches a table
/// (or consumer) another team may own or be about to create — an existing KCL table to adopt,
/// a retained one, `team-b.orders` before team-b exists — so it needs an administrator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnprefixedNames(Vec<String>);

impl UnprefixedNames {
    /// The namespaces (blank entries ignored; `*` allows all).
    pub fn new<S: AsRef<str>>(namespaces: impl IntoIterator<Item = S>) -> Self {
        Self(
            namespaces
                .into_iter()
                .map(|n| n.as_ref().trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    fn allows(&self, namespace: &str) -> bool {
        self.0.iter().any(|n| n == "*" || n == namespace)
    }
}

/// The application name rule: `spec.applicationName` starts with `NAMESPACE.`, or is the one
/// this object already holds (`status.applicationName` with `LeaseTableReady=True`: an object
/// made before this rule keeps its table), or the administrator allowed the namespace any
/// name. The status is the operator's: nobody may be granted `kinesisapplications/status`.
///
/// # Guarantees
/// `None` only when the name cannot be another namespace's default (`OTHER.NAME`) or an
/// arbitrary table, unless an administrator allowed it.
pub fn application_name_refused(
    app: &KinesisApplication,
    unprefixed: &UnprefixedNames,
) -> Option<Invalid> {
    let name = app.spec.application_name.as_deref()?;
    let ns = app.metadata.namespace.as_deref().unwrap_or("default");
    // In use: the status names it *and* says this object holds its table (the name is
    // recorded before the claim, so a refused claim must not count).
    let in_use = app.status.as_ref().is_some_and(|s| {
        s.application_name.as_deref() == Some(name)
            && s.conditions.iter().any(|c| {
                c.type_ == "LeaseTableReady" && c.status == "True" && c.reason == "TableActive"
            })
    });
    if name.starts_with(&format!("{ns}.")) || in_use || unprefixed.allows(ns) {
        return None;
    }
    let shown: String = name.chars().take(100).collect();
    Some(invalid(
        "spec.applicationName",
        format!(
            "`{shown}` is outside this namespace's names: use `{ns}.<name>`, or leave it out (default `{ns}.{}`); to adopt an existing table (a KCL application's) ask the operator's administrator to allow this namespace (chart value applicationNames.unprefixedAllowedIn)",
            app.metadata.name.as_deref().unwrap_or_default()
        ),
    ))
}

/// Every rule `app` breaks (empty: valid).
pub fn validate(app: &KinesisApplication) -> Vec<Invalid> {
    let spec = &app.spec;
    let mut out = Vec::new();
    match (&spec.stream.name, &spec.stream.arn) {
        (None, None) => out.push(invalid(
            "spec.stream",
            "no stream: set spec.stream.name (with spec.stream.region) or spec.stream.arn",
        )),
        (Some(_), Some(_)) => out.push(invalid(
            "spec.stream",
            "both name and arn are set: keep one (arn for a stream in another account)",
        )),
        (None, Some(arn)) => {
            if arn_stream_name(arn).is_none() || arn_region(arn).is_none() {
                out.push(invalid(
                    "spec.stream.arn",
                    format!("`{arn}` is not a stream ARN: use arn:aws:kinesis:REGION:ACCOUNT:stream/NAME"),
                ));
            } else if let (Some(region), Some(arn_region)) = (&spec.stream.region, arn_region(arn))
                && region != arn_region
            {
                out.push(invalid(
                    "spec.stream.region",
                    format!("`{region}` differs from the ARN's region `{arn_region}`: remove spec.stream.region or fix it"),
                ));
            }
        }
        (Some(_), None) => {}
    }
    match (spec.initial_position, &spec.initial_timestamp) {
        (Some(InitialPosition::AtTimestamp), None) => out.push(invalid(
            "spec.initialTimestamp",
            "initialPosition AT_TIMESTAMP needs initialTimestamp (RFC 3339, e.g. 2026-11-26T00:00:00Z)",
        )),
        (Some(InitialPosition::Latest | InitialPosition::TrimHorizon) | None, Some(_)) => {
            out.push(invalid(
                "spec.initialTimestamp",
                "initialTimestamp is only used with initialPosition AT_TIMESTAMP: set that, or remove initialTimestamp",
            ))
        }
        (Some(InitialPosition::AtTimestamp), Some(t)) => {
            if let Err(e) = kinesis_spec::settings::utc_timestamp(t) {
                out.push(invalid("spec.initialTimestamp", e.to_string()));
            }
        }
        (_, None) => {}
    }
    let delivery = &spec.delivery;
    match &delivery.on_failure_destination {
        Some(arn) => {
            if let Err(e) = kinesis_spec::destination::Target::parse(arn) {
                out.push(invalid("spec.delivery.onFailureDestination", e.to_string()));
            }
        }
        None => {
            if spec.consumer.max_attempts.is_some() {
                out.push(invalid(
                    "spec.consumer.maxAttempts",
                    "passing records over needs somewhere to keep them: set spec.delivery.onFailureDestination (an SQS queue or Kinesis stream ARN), or remove maxAttempts to retry forever",
                ));
            }
            if delivery.maximum_record_age_seconds.is_some() {
                out.push(invalid(
                    "spec.delivery.maximumRecordAgeSeconds",
                    "stale records go to the on-failure destination: set spec.delivery.onFailureDestination, or remove maximumRecordAgeSeconds",
                ));
            }
        }
    }
    if let Err(e) = kinesis_spec::filter::Filters::parse(&delivery.filters) {
        out.push(invalid("spec.delivery.filters", e.to_string()));
    }
    let s = &spec.scaling;
    if s.shards_per_worker < 1 {
        out.push(invalid(
            "spec.scaling.shardsPerWorker",
            format!(
                "{} is less than 1: a worker serves at least one shard",
                s.shards_per_worker
            ),
        ));
    }
    if let Some(max) = s.max_workers
        && s.min_workers > max
    {
        out.push(invalid(
            "spec.scaling.minWorkers",
            format!("minWorkers {} is greater than maxWorkers {max}: lower minWorkers or raise maxWorkers", s.min_workers),
        ));
    }
    let containers = spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        out.push(invalid(
            "spec.template.spec.containers",
            "no app container: add the container that serves the record processor (docs/PROCESSOR.md)",
        ));
    }
    if containers.iter().any(|c| c.name == WORKER_CONTAINER) {
        out.push(invalid(
            "spec.template.spec.containers",
            format!("a container is named `{WORKER_CONTAINER}`, the name of the injected worker: rename it"),
        ));
    }
    if let Some(name) = &spec.processor.container
        && !containers.iter().any(|c| &c.name == name)
    {
        out.push(invalid(
            "spec.processor.container",
            format!(
                "no container `{name}` in spec.template: name one of {:?}",
                containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    out.extend(protocol(&spec.processor));
    if spec.processor.protocol == Some(crate::crd::AppProtocol::KclMultilang)
        && spec.delivery.parallelization_factor.is_some_and(|f| f > 1)
    {
        out.push(invalid(
            "spec.delivery.parallelizationFactor",
            "protocol kcl-multilang runs one process per shard, which takes one batch at a time: remove parallelizationFactor or set it to 1",
        ));
    }
    if spec.processor.socket.is_some() && spec.processor.port.is_some() {
        out.push(invalid(
            "spec.processor",
            "both socket and port are set: the app serves on one of them",
        ));
    }
    let volumes = spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(v) = volumes
        .iter()
        .find(|v| v.name == crate::deployment::protocol::BRIDGE_VOLUME)
    {
        out.push(invalid(
            "spec.template.spec.volumes",
            format!(
                "a volume is named `{}`, the operator's bridge volume: rename it",
                v.name
            ),
        ));
    }
    if volumes.iter().any(|v| v.name == SOCKET_VOLUME) {
        out.push(invalid(
            "spec.template.spec.volumes",
            format!("a volume is named `{SOCKET_VOLUME}`, the operator's socket volume: rename it"),
        ));
    }
    // A registered fan-out consumer belongs to the stream it was registered on: moving the
    // object to another stream would orphan it (and the cleanup would look on the new one).
    if let Some(status) = app.status.as_ref()
        && let (Some(consumer), Some(previous)) = (status.consumer.as_ref(), status.stream.as_ref())
    {
        let now = spec.stream.name.clone().or_else(|| {
            spec.stream
                .arn
                .as_deref()
                .and_then(arn_stream_name)
                .map(String::from)
        });
        if now.as_deref().is_some_and(|n| n != previous) {
            out.push(invalid(
                "spec.stream",
                format!("changed from `{previous}` while fan-out consumer `{}` is registered on it: set it back (another stream needs a new KinesisApplication)", consumer.name),
            ));
        }
    }
    let current = application_name(app);
    if let Some(previous) = app
        .status
        .as_ref()
        .and_then(|s| s.application_name.as_ref())
        && *previous != current
    {
        out.push(invalid(
            "spec.applicationName",
            format!("changed from `{previous}` to `{current}`: the leases and checkpoints live under `{previous}`; set it back (a new application needs a new KinesisApplication)"),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
