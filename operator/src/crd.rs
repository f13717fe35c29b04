//! The `KinesisApplication` custom resource (`kinesis-operator.io/v1alpha1`): what users
//! write, and the status the operator reports. Field docs become `kubectl explain` text.
//!
//! Kubernetes 1.20 has no CEL (`x-kubernetes-validations`): the schema carries enums,
//! minimums, patterns and required fields; cross-field rules are checked by
//! [`crate::validate`] and reported as `Ready=False`, reason `InvalidSpec`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec, ResourceRequirements};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A status condition: Kubernetes' own type (`metav1.Condition`): `type` (one per list),
/// `status` (True, False or Unknown), a CamelCase `reason`, `message`, `lastTransitionTime`
/// (when `status` last changed) and `observedGeneration`. Set with
/// [`crate::plan::set_condition`].
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A Kinesis consumer application: the worker Deployment that reads `stream` with the app
/// containers of `template`, sized to the stream's shard count.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kinesis-operator.io",
    version = "v1alpha1",
    kind = "KinesisApplication",
    plural = "kinesisapplications",
    shortname = "kapp",
    category = "kinesis",
    namespaced,
    status = "KinesisApplicationStatus",
    doc = "A Kinesis consumer application: the operator runs it as a Deployment of pods, each the app container(s) of spec.template plus an injected kinesis-worker that holds the shard leases (DynamoDB), reads the shards of spec.stream and delivers their records to the app over gRPC; sized to the stream's open shards.",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.workers.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Stream","type":"string","jsonPath":".status.stream"}"#,
    printcolumn = r#"{"name":"Shards","type":"integer","jsonPath":".status.shards.open"}"#,
    printcolumn = r#"{"name":"Workers","type":"string","jsonPath":".status.workers.summary"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.maxLag"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Paused","type":"string","jsonPath":".status.conditions[?(@.type==\"Paused\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Application","type":"string","priority":1,"jsonPath":".status.applicationName"}"#,
    printcolumn = r#"{"name":"Draining","type":"integer","priority":1,"jsonPath":".status.shards.draining"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KinesisApplicationSpec {
    /// The stream to consume.
    pub stream: StreamSpec,
    /// Name of the application: the DynamoDB lease table, and the fan-out consumer name.
    /// Defaults to NAMESPACE.NAME (objects created before 0.2 keep metadata.name). Cannot
    /// change once set (the leases and checkpoints live under it). A table claimed by another
    /// KinesisApplication (any namespace or cluster) is refused with LeaseTableConflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 255), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub application_name: Option<String>,
    /// Where shards without a checkpoint start: LATEST, TRIM_HORIZON (default) or
    /// AT_TIMESTAMP (then initialTimestamp is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_position: Option<InitialPosition>,
    /// With initialPosition AT_TIMESTAMP: the time to start at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
    ))]
    pub initial_timestamp: Option<String>,
    /// Fixed number of workers, set by `kubectl scale` or an autoscaler through the scale
    /// subresource. Unset: the operator sizes the Deployment to the shard count (scaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Pause delivery fleet-wide: the worker Deployment goes to 0 pods, each worker flushing
    /// its checkpoints and releasing its leases on the way out (a graceful hand-over to
    /// nobody); the object, the lease table and every checkpoint stay. `false` (or removed)
    /// resumes from the checkpoints. `kubectl patch kapp NAME --type merge -p
    /// '{"spec":{"paused":true}}'`. Wins over replicas and the scale subresource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Deliver again every record that arrived at or after a time (after a bug fix): the
    /// operator stops the workers (as a pause does), moves the checkpoints back to that time
    /// (a shard closed since gets its lease back, its children wait for it again), records
    /// it in the lease table, status.rewind and an Event, and starts the workers. Done once
    /// per toTimestamp and table, also for an object recreated without its status; refused,
    /// with the reason, for a time in the future or beyond the stream's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<RewindSpec>,
    /// How many workers the shard count calls for.
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// How records are read and checkpointed.
    #[serde(default)]
    pub consumer: ConsumerSpec,
    /// What happens to records the app keeps failing (Lambda's event source policies).
    #[serde(default, skip_serializing_if = "is_default")]
    pub delivery: DeliverySpec,
    /// The pod template holding the app container(s): image, env, resources, service
    /// account. The operator adds the worker container, the shared socket volume and the
    /// preStop drain hook.
    pub template: PodTemplateSpec,
    /// How the worker reaches the app's record processor.
    #[serde(default)]
    pub processor: ProcessorSpec,
    /// The injected worker container.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// The DynamoDB lease table.
    #[serde(default)]
    pub lease_table: LeaseTableSpec,
    /// AWS access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,
}

/// A rewind: where to deliver again from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewindSpec {
    /// The time (RFC 3339): every record that arrived at or after it is delivered again.
    /// Another value asks for another rewind.
    #[schemars(regex(
        pattern = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
    ))]
    pub to_timestamp: String,
}

/// The stream: by name (with region) or by ARN.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Stream name (one of name or arn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    pub name: Option<String>,
    /// Stream ARN, arn:aws:kinesis:REGION:ACCOUNT:stream/NAME (one of name or arn; for
    /// another account's stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^arn:aws[a-z-]*:kinesis:[a-z0-9-]+:\d{12}:stream/[a-zA-Z0-9_.-]+$"
    ))]
    pub arn: Option<String>,
    /// AWS region of the stream (default: the region in the ARN, else the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d$"))]
    pub region: Option<String>,
    /// Endpoint override for Kinesis and DynamoDB (local servers, VPC endpoints), e.g.
    /// http://10.250.0.1:4567. dynamoDbEndpoint overrides DynamoDB's separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// DynamoDB endpoint override (default: endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub dynamo_db_endpoint: Option<String>,
}

/// Where a shard without a checkpoint starts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialPosition {
    /// At the newest record.
    Latest,
    /// At the oldest record still in the stream.
    TrimHorizon,
    /// At initialTimestamp.
    AtTimestamp,
}

/// Workers per shard count.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// Open shards per worker (default 1): workers = ceil(open shards / shardsPerWorker).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub shards_per_worker: i32,
    /// Fewest workers (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub min_workers: i32,
    /// Most workers (default: no limit but the open shard count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_workers: Option<i32>,
    /// Workers started ahead of the old ones in a rollout, as a percentage of the workers
    /// (default 25, Kubernetes's own default; at least one pod). No old pod stops before its
    /// replacement is ready, and each hands its shards over before it stops: a fleet is
    /// replaced in about 100 / this waves (500 pods: 4 waves of 125, not 500 one at a time),
    /// at the cost of this many extra pods' room in the cluster while it rolls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_surge_percent: Option<i32>,
    /// Shards (default): workers follow the open shards as above. Lag: between
    /// max(minWorkers, ceil(open / shardsPerWorker)) (shards packed, for cost) and
    /// min(maxWorkers, open shards) (one per shard), following the lag: doubled when the
    /// largest lag is above targetLagSeconds (at most every 30 s), halved once it stayed
    /// under half the target for scaleDownStabilizationSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ScalingMode>,
    /// With mode Lag: the largest lag to keep under (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_lag_seconds: Option<i32>,
    /// With mode Lag: how long the lag must stay under half the target before workers are
    /// removed (default 300): no flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

/// What the worker count follows.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScalingMode {
    /// The open shard count.
    #[default]
    Shards,
    /// The lag, between packed and one worker per shard.
    Lag,
}

fn one() -> i32 {
    1
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            shards_per_worker: 1,
            min_workers: 1,
            max_workers: None,
            max_surge_percent: None,
            mode: None,
            target_lag_seconds: None,
            scale_down_stabilization_seconds: None,
        }
    }
}

/// How records are read.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConsumerMode {
    /// GetRecords in a loop (default).
    #[default]
    Polling,
    /// SubscribeToShard through a registered consumer: 2 MB/s per shard of its own.
    EnhancedFanOut,
}

/// Reading and checkpointing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Polling (default) or EnhancedFanOut.
    #[serde(default)]
    pub mode: ConsumerMode,
    /// Records per GetRecords call (1-10000, default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_records: Option<i32>,
    /// The wait between reads of a shard at its tip while records come, in milliseconds
    /// (default 500; an idle or throttled shard backs off to 1 s): every application polling
    /// the stream shares a shard's 5 reads a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60000))]
    pub idle_time_between_reads_ms: Option<i64>,
    /// A worker silent this long is dead and its shards are taken, in milliseconds
    /// (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 600000))]
    pub failover_time_ms: Option<i64>,
    /// A shard's acknowledged records are checkpointed at least this often, in milliseconds
    /// (default 600000, 10 minutes), and sooner once `checkpointMaxRecords` records or
    /// `checkpointMaxBytes` bytes were delivered since the last write; every hand-over,
    /// release, shard end and shutdown writes the last one anyway, so only the successor of
    /// a crashed worker (or of a lease lost to failover) reads again what was processed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600000))]
    pub checkpoint_interval_ms: Option<i64>,
    /// Records delivered since a shard's last checkpoint write that make the next one due
    /// (default 60000: a minute of a shard at its write limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_max_records: Option<i64>,
    /// Record bytes delivered since a shard's last checkpoint write that make the next one
    /// due (default 60000000: a minute of a shard at its write limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub checkpoint_max_bytes: Option<i64>,
    /// Send a batch to `spec.delivery.onFailureDestination` after this many failed
    /// deliveries (needs it); unset retries forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<i32>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Delivery policies (docs/PROCESSOR.md "Delivery policies").
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Where records go that exhausted `spec.consumer.maxAttempts` or are older than
    /// `maximumRecordAgeSeconds`, before the worker moves past them: an SQS queue ARN or a
    /// Kinesis stream ARN. The worker sends with the pod's own AWS identity (the template's
    /// service account), never the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:[a-z-]+:(sqs|kinesis):[a-z0-9-]+:\d+:.+$"))]
    pub on_failure_destination: Option<String>,
    /// Split a failing batch in halves before retrying, down to single records: a poison
    /// record holds back only itself (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bisect_batch_on_error: Option<bool>,
    /// Records older than this many seconds go to the destination instead of the app
    /// (needs onFailureDestination); unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub maximum_record_age_seconds: Option<i64>,
    /// Honour partial batch failures: the app may answer `failed_from`, acknowledging only
    /// the records before it; the rest is retried (default false: such an answer fails the
    /// whole call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_batch_item_failures: Option<bool>,
    /// Only records matching one of these patterns reach the app; the others count as
    /// processed (checkpointed). Each is a JSON object in EventBridge's pattern language over
    /// `partitionKey`, `sequenceNumber`, `explicitHashKey` and `data`, e.g.
    /// `{"data": {"type": ["click"]}}` (docs/PROCESSOR.md "Filters").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub filters: Vec<String>,
    /// Most records in one call to the app (default: one GetRecords page, up to
    /// `spec.consumer.maxRecords`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: Option<i32>,
    /// Gather records for up to this many seconds before calling the app, until
    /// `batchSize` records are there (default 0: call with each page as it is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 300))]
    pub maximum_batching_window_seconds: Option<i64>,
    /// Lanes per shard: each batch is split by partition key into up to this many parts
    /// delivered at once; per-key order holds, the app sees concurrent calls for one shard
    /// (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub parallelization_factor: Option<i32>,
}

/// How the worker reaches the app.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorSpec {
    /// The app listens on a Unix socket at this path in a volume shared with the worker
    /// (default /var/run/kinesis/processor.sock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\s]+$"))]
    pub socket: Option<String>,
    /// The app listens on TCP at 127.0.0.1:port instead of a socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The app container that serves the processor and gets the preStop drain hook
    /// (default: the first container of the template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What the app container speaks (docs/MIGRATING.md): `grpc` (the default: it serves
    /// the record-processor contract, docs/PROCESSOR.md); `kcl-multilang` (an unchanged KCL
    /// MultiLangDaemon app: `command` runs once per shard behind the kinesis-bridge, which the
    /// operator places in the app container); `lambda` (an unchanged Lambda function image or
    /// runtime interface client: the worker serves the Lambda Runtime API on the pod's
    /// loopback and the operator sets AWS_LAMBDA_RUNTIME_API in the app container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<AppProtocol>,
    /// With `kcl-multilang`: the app's command line, KCL's `executableName` split into words
    /// (e.g. `[python3, sample_kclpy_app.py]`). It replaces the container's command; the
    /// container's `args` follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// With `lambda`: the function's handler (`_HANDLER`, e.g. `app.handler`), when the
    /// image does not name it itself (a Lambda base image takes it from its CMD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
}

/// What the app container speaks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AppProtocol {
    /// The record-processor gRPC contract.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// KCL's MultiLangDaemon protocol, one child process per shard.
    #[serde(rename = "kcl-multilang")]
    KclMultilang,
    /// The Lambda Runtime API, each batch a Kinesis event.
    #[serde(rename = "lambda")]
    Lambda,
}

/// The injected worker container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Worker image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Worker resources (default: requests 10m CPU / 32Mi; memory limit 64Mi + 20Mi per
    /// shardsPerWorker, between 128Mi and 4096Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment of the worker container (e.g. AWS_STS_REGIONAL_ENDPOINTS, a proxy,
    /// or credentials from a Secret where IRSA is not available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Worker log filter (default info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_=,:]+$"))]
    pub log_level: Option<String>,
}

/// What happens to the lease table.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the table (and its checkpoints) when the KinesisApplication is deleted (default).
    #[default]
    Retain,
    /// Delete the table with the KinesisApplication.
    Delete,
}

/// The lease table.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseTableSpec {
    /// Retain (default) or Delete. Delete removes only a table the operator created for
    /// this very object (tagged kinesis-operator.io/managed); an adopted table is kept, with
    /// a Warning Event.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// AWS access.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSpec {
    /// An IAM role for the pods: the operator creates a ServiceAccount annotated for IRSA
    /// (eks.amazonaws.com/role-arn) and runs the pods under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$"))]
    pub role_arn: Option<String>,
}

/// What the operator observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KinesisApplicationStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The stream's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The application name in use (the lease table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// The enhanced fan-out consumer in use (consumer.mode EnhancedFanOut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<FanOutConsumer>,
    /// Shard counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCounts>,
    /// Workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// Label selector of the worker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Per shard: owner, checkpoint, lag; at most 20 shards (all of a small stream, else the
    /// ones without an owner and the most lagging), the rest counted in shardStatusOmitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_status: Vec<ShardStatus>,
    /// Shards not listed in shardStatus (see `kinesis-worker status` for every shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_status_omitted: Option<i32>,
    /// The last rewind asked for (spec.rewind) and what became of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<RewindStatus>,
    /// The largest lag of any shard, e.g. "1.2s"; none while no worker reports one (paused).
    /// Written as null then, so a merge patch clears the last figure.
    #[serde(default)]
    pub max_lag: Option<String>,
    /// With scaling.mode Lag: since when the largest lag has stayed under half the target
    /// (RFC 3339); null while it is not.
    #[serde(default)]
    pub lag_low_since: Option<String>,
    /// When the worker count last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Ready, StreamReady, LeaseTableReady, Progressing, Degraded, DeliveryStalled: one
    /// each (a list keyed by type), as Kubernetes' own conditions (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What became of a rewind.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewindStatus {
    /// The spec.rewind.toTimestamp this is about.
    pub to_timestamp: String,
    /// Stopping (the workers stop before any checkpoint moves), Rewound, or Refused.
    pub phase: String,
    /// What was done, or why not.
    pub message: String,
    /// Shards moved back to the time (with their descendants). Written as null while
    /// stopping, so a merge patch clears an earlier rewind's.
    #[serde(default)]
    pub shards_rewound: Option<i32>,
    /// When the checkpoints were rewritten (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// The enhanced fan-out consumer of an application.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanOutConsumer {
    /// Consumer name (the application name).
    pub name: String,
    /// Consumer ARN, passed to the workers (they register nothing).
    pub arn: String,
    /// The operator registered it for this object and deregisters it when the object is
    /// deleted; false for a consumer that existed before (it is left alone).
    pub registered_by_operator: bool,
}

/// Shard counts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardCounts {
    /// Open shards (receiving records).
    pub open: i32,
    /// Closed shards whose records are not all processed yet.
    pub draining: i32,
    /// All shards the stream lists.
    pub total: i32,
    /// Open or draining shards whose lease has an owner.
    #[serde(default)]
    pub leased: i32,
}

/// Worker counts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Workers the shard count calls for.
    pub desired: i32,
    /// Worker pods ready.
    pub ready: i32,
    /// Worker pods that exist now (the Deployment's status.replicas; the scale
    /// subresource's status).
    #[serde(default)]
    pub replicas: i32,
    /// "ready/desired", for kubectl get.
    pub summary: String,
}

/// One shard.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard id.
    pub shard_id: String,
    /// Worker holding its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// How far behind the tip its worker last read, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis_behind_latest: Option<i64>,
}

/// Labels the operator puts on what it creates.
pub fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            "kinesis-operator".into(),
        ),
        ("kinesis-operator.io/application".into(), app.into()),
    ])
}
