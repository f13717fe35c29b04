//! The reconciler: validate the spec, read the stream, make sure the lease table exists,
//! size and apply the worker Deployment (server-side apply), and report status, conditions
//! and Events. Failures become conditions and a requeue with backoff; the Deployment is never
//! deleted because of one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kinesis_lease::backoff::Backoff;
use kinesis_lease::discovery::{DiscoveryError, ShardInfo, StreamRef, list_shards};
use kinesis_lease::model::attr;
use kinesis_lease::table::{LeaseError, LeaseTable, ScanBounds};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::claims;
use crate::crd::{Condition, ConsumerMode, KinesisApplication, KinesisApplicationStatus, labels};
use crate::deployment::{WorkerSettings, deployment, region, service_account_name};
use crate::identity::{Bounded, Identity, Mode, RoleMap};
use crate::metrics::Metrics;
use crate::ownership::{Owner, TableCleanup, table_cleanup};
use crate::plan::{self, already_reported, set_condition_at};
use crate::sizing::SIZED_ANNOTATION;
use crate::validate::{
    AllowedEndpoints, UnprefixedNames, application_name, arn_stream_name, validate,
};

mod observe;
mod rewind;

use observe::{Problem, Stop, observe};

/// Field manager of everything the operator applies.
pub const MANAGER: &str = "kinesis-operator";
/// The finalizer that lets the operator clean up (the lease table with
/// `deletionPolicy: Delete`).
pub const FINALIZER: &str = "kinesis-operator.io/cleanup";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Cleaning up (before the finalizer is removed) failed.
    #[error("cleanup: {0}")]
    Cleanup(String),
    /// A status that cannot be serialized (never expected).
    #[error("status: {0}")]
    Serde(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Cleanup(_) => "cleanup",
            Self::Serde(_) => "serde",
        }
    }
}

/// AWS clients for one (region, endpoints) combination.
#[derive(Clone, Debug)]
struct AwsClients {
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Worker image and defaults.
    pub settings: WorkerSettings,
    /// How often each application is reconciled anyway (resharding is noticed this fast).
    pub resync: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event reporter.
    pub reporter: Reporter,
    /// This cluster's name, recorded as the owner of what the operator creates (unique per
    /// cluster that shares an AWS account).
    pub cluster: String,
    /// Where and as whom each application's AWS calls go.
    pub identity: IdentitySettings,
    /// The administrator's namespace-to-role mapping as last read (`None`: no ConfigMap).
    roles: Mutex<Option<RoleMap>>,
    aws: Mutex<Bounded<ClientKey, AwsClients>>,
    failures: Mutex<HashMap<(String, String), Backoff>>,
    /// Lease tables described once (key schema checked, ACTIVE): not described again.
    tables: Mutex<HashSet<(AwsKey, Option<Identity>, String)>>,
    /// Open shards of each application as its last healthy reconcile saw them.
    open_shards: Mutex<HashMap<(String, String), i32>>,
    /// The fan-out consumer each application uses, as last described or registered (see
    /// [`Context::known_consumer`]).
    consumers: Mutex<HashMap<(String, String), KnownConsumer>>,
}

/// How long a fan-out consumer found or registered by a reconcile is taken as it is before
/// it is described again (DescribeStreamSummary allows 20 calls a second per account,
/// DescribeStreamConsumer 20 per stream: 500 fan-out applications, reconciled 17.6 times a
/// second as measured, made 17.6 of each a second; now 0.83, one per application per 10
/// minutes).
pub const CONSUMER_RECHECK: Duration = Duration::from_secs(600);

/// What makes an application's fan-out consumer: endpoints, identity, stream, name, and the
/// object's uid (an object deleted and made again under the same name is another one: it must
/// not inherit what the operator registered for the first).
type ConsumerKey = (AwsKey, Option<Identity>, String, String, Option<String>);

/// A fan-out consumer as a reconcile found it: for which stream, table, endpoints and
/// identity, and when.
#[derive(Debug, Clone)]
struct KnownConsumer {
    /// Everything that, changed, makes it another consumer.
    key: ConsumerKey,
    found: claims::Consumer,
    at: std::time::Instant,
}

impl KnownConsumer {
    /// The consumer, if it was found for `key` less than [`CONSUMER_RECHECK`] before `now`
    /// (pure).
    fn serves(&self, key: &ConsumerKey, now: std::time::Instant) -> Option<&claims::Consumer> {
        (self.key == *key && now.saturating_duration_since(self.at) < CONSUMER_RECHECK)
            .then_some(&self.found)
    }
}

/// (region, Kinesis endpoint, DynamoDB endpoint).
pub type AwsKey = (Option<String>, Option<String>, Option<String>);

/// The keys of `known` that are not in `live` (pure).
pub fn gone<'a, K: Clone + Eq + std::hash::Hash + 'a>(
    known: impl Iterator<Item = &'a K>,
    live: &HashSet<K>,
) -> Vec<K> {
    known.filter(|k| !live.contains(*k)).cloned().collect()
}

/// Endpoints, (role, namespace) and stream: see [`Context::listing_key`].
pub type ListingKey = (AwsKey, Option<(String, String)>, String);

/// One set of clients: where they go and as whom.
type ClientKey = (AwsKey, Identity);

/// Where and as whom the operator makes applications' AWS calls (see [`crate::identity`]).
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// The endpoint overrides a spec may name (see [`AllowedEndpoints`]).
    pub allowed_endpoints: AllowedEndpoints,
    /// The namespaces that may name any application name (see [`UnprefixedNames`]).
    pub unprefixed_names: UnprefixedNames,
    /// The operator's own, or the role mapped to each namespace.
    pub mode: Mode,
    /// The mapping's ConfigMap as `NAMESPACE/NAME` (named in conditions).
    pub roles_source: String,
    /// Where AssumeRole goes (`None`: the SDK's default, e.g. `AWS_ENDPOINT_URL_STS`).
    pub sts_endpoint: Option<String>,
    /// At most this many sets of AWS clients (each with its own credentials) are kept.
    pub max_clients: usize,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            allowed_endpoints: AllowedEndpoints::default(),
            unprefixed_names: UnprefixedNames::default(),
            mode: Mode::Operator,
            roles_source: String::new(),
            sts_endpoint: None,
            max_clients: 2048,
        }
    }
}

/// Why the operator makes no AWS call for an application: a condition reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `InvalidSpec` (an endpoint not allowed) or `NoAwsIdentity`.
    pub reason: &'static str,
    /// One sentence naming what is wrong and the fix.
    pub message: String,
    /// Likely to pass (the mapping's ConfigMap is missing, e.g. during an upgrade): a cleanup
    /// waits for it rather than give up.
    pub transient: bool,
}

impl Context {
    /// A context with an empty AWS client cache.
    pub fn new(
        client: kube::Client,
        settings: WorkerSettings,
        resync: Duration,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        cluster: String,
        identity: IdentitySettings,
    ) -> Self {
        let max_clients = identity.max_clients;
        Self {
            client,
            settings,
            resync,
            metrics,
            reporter,
            cluster,
            identity,
            roles: Mutex::new(None),
            aws: Mutex::new(Bounded::new(max_clients)),
            failures: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashSet::new()),
            open_shards: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
        }
    }

    /// What makes `app`'s fan-out consumer (`table` is its name): endpoints, identity,
    /// stream and name.
    fn consumer_key(&self, app: &KinesisApplication, table: &str) -> ConsumerKey {
        (
            self.aws_key(app),
            self.identity_of(app).ok(),
            stream_ref(app).to_string(),
            table.to_string(),
            app.uid(),
        )
    }

    /// The fan-out consumer of `app` a reconcile found or registered less than
    /// [`CONSUMER_RECHECK`] ago, for the same stream, name, endpoints and identity; `None`:
    /// describe it again. A consumer deregistered meanwhile is noticed at the next check
    /// (its workers' subscriptions fail with ResourceNotFound until then).
    fn known_consumer(&self, app: &KinesisApplication, table: &str) -> Option<claims::Consumer> {
        let key = self.consumer_key(app, table);
        let consumers = self.consumers.lock().ok()?;
        consumers
            .get(&Self::key(app))?
            .serves(&key, std::time::Instant::now())
            .cloned()
    }

    /// Records the fan-out consumer a reconcile of `app` found or registered.
    fn saw_consumer(&self, app: &KinesisApplication, table: &str, found: &claims::Consumer) {
        let known = KnownConsumer {
            key: self.consumer_key(app, table),
            found: found.clone(),
            at: std::time::Instant::now(),
        };
        if let Ok(mut c) = self.consumers.lock() {
            c.insert(Self::key(app), known);
        }
    }

    /// Forgets `app`'s fan-out consumer (it is described again next time).
    fn forget_consumer(&self, app: &KinesisApplication) {
        if let Ok(mut c) = self.consumers.lock() {
            c.remove(&Self::key(app));
        }
    }

    /// The lease table `name` of `app`: described (and created, tagged as `owner`'s, if
    /// missing) the first time, then taken as it is.
    async fn table(
        &self,
        app: &KinesisApplication,
        aws: &AwsClients,
        name: &str,
        owner: &Owner,
    ) -> Result<LeaseTable, LeaseError> {
        let key = (
            self.aws_key(app),
            self.identity_of(app).ok(),
            name.to_string(),
        );
        if self.tables.lock().is_ok_and(|t| t.contains(&key)) {
            return Ok(LeaseTable::opened(aws.dynamodb.clone(), name));
        }
        let tags = crate::ownership::resource_tags(owner);
        let (table, _created) =
            LeaseTable::open_tagged(aws.dynamodb.clone(), name, Some(tags)).await?;
        if let Ok(mut t) = self.tables.lock() {
            t.insert(key);
        }
        Ok(table)
    }

    /// A call on table `name` failed: describe it again next time.
    fn forget_table(&self, app: &KinesisApplication, name: &str) {
        if let Ok(mut t) = self.tables.lock() {
            t.remove(&(
                self.aws_key(app),
                self.identity_of(app).ok(),
                name.to_string(),
            ));
        }
    }

    /// Records the open shards the last healthy reconcile of `app` sized to.
    fn saw_open_shards(&self, app: &KinesisApplication, open: i32) {
        if let Ok(mut m) = self.open_shards.lock() {
            m.insert(Self::key(app), open);
        }
    }

    /// The open shards the last healthy reconcile of `app` sized to, if any.
    pub fn open_shards_seen(&self, app: &KinesisApplication) -> Option<i32> {
        self.open_shards
            .lock()
            .ok()
            .and_then(|m| m.get(&Self::key(app)).copied())
    }

    /// `app` is gone: forget what was recorded of it.
    fn forget_application(&self, app: &KinesisApplication) {
        if let Ok(mut m) = self.open_shards.lock() {
            m.remove(&Self::key(app));
        }
        self.forget_consumer(app);
        self.forget_table(app, &application_name(app));
        // Its assumed-role session (keyed by namespace and name) is of no further use.
        let (ns, name) = Self::key(app);
        let session = crate::identity::session_name(&ns, &name);
        if let Ok(mut c) = self.aws.lock() {
            c.retain(|(_, id)| !matches!(id, Identity::Role(s) if s.namespace == ns && s.session_name == session));
        }
    }

    /// Forgets every application not in `live` (namespace, name): its metric series, backoff,
    /// sized shard count, lease-table check and assumed-role clients. The finalizer's cleanup
    /// does this for an object it sees go; this catches one deleted with its finalizer
    /// stripped (never reconciled again). Returns how many were forgotten.
    pub fn sweep(&self, live: &[Arc<KinesisApplication>]) -> usize {
        let keys: HashSet<(String, String)> = live.iter().map(|a| Self::key(a)).collect();
        let names: HashSet<String> = live.iter().map(|a| application_name(a)).collect();
        let gone: Vec<(String, String)> = self
            .open_shards
            .lock()
            .map(|m| gone(m.keys(), &keys))
            .unwrap_or_default();
        for (ns, name) in &gone {
            self.metrics.forget(ns, name);
        }
        if let Ok(mut m) = self.open_shards.lock() {
            m.retain(|k, _| keys.contains(k));
        }
        if let Ok(mut f) = self.failures.lock() {
            f.retain(|k, _| keys.contains(k));
        }
        if let Ok(mut c) = self.consumers.lock() {
            c.retain(|k, _| keys.contains(k));
        }
        if let Ok(mut t) = self.tables.lock() {
            t.retain(|(_, _, name)| names.contains(name));
        }
        let sessions: HashSet<(String, String)> = keys
            .iter()
            .map(|(ns, name)| (ns.clone(), crate::identity::session_name(ns, name)))
            .collect();
        if let Ok(mut c) = self.aws.lock() {
            c.retain(|(_, id)| match id {
                Identity::Operator => true,
                Identity::Role(s) => {
                    sessions.contains(&(s.namespace.clone(), s.session_name.clone()))
                }
            });
        }
        gone.len()
    }

    /// The administrator's namespace-to-role mapping changed (`None`: its ConfigMap is gone).
    pub fn set_roles(&self, roles: Option<RoleMap>) {
        if let Ok(mut r) = self.roles.lock() {
            *r = roles;
        }
    }

    /// The identity for `app`'s AWS calls.
    ///
    /// # Errors
    /// [`NoIdentity`](crate::identity::NoIdentity) when its namespace has no role.
    pub fn identity_of(
        &self,
        app: &KinesisApplication,
    ) -> Result<Identity, crate::identity::NoIdentity> {
        let (ns, name) = Self::key(app);
        let roles = self.roles.lock().ok().and_then(|r| r.clone());
        crate::identity::identity_for(
            self.identity.mode,
            roles.as_ref(),
            &self.identity.roles_source,
            &self.cluster,
            &ns,
            &name,
        )
    }

    /// What applications sharing one reshard-watch listing have in common: endpoints,
    /// identity (the role and namespace in `namespace-role` mode; everyone in `operator`
    /// mode) and stream.
    ///
    /// # Errors
    /// No AWS call may be made for `app` (why, as a sentence).
    pub fn listing_key(&self, app: &KinesisApplication) -> Result<ListingKey, String> {
        let refused = crate::validate::endpoints(app, &self.identity.allowed_endpoints);
        if !refused.is_empty() {
            return Err(refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "));
        }
        let who = match self.identity_of(app).map_err(|e| e.0)? {
            Identity::Operator => None,
            Identity::Role(s) => Some((s.role_arn, s.namespace)),
        };
        Ok((self.aws_key(app), who, stream_ref(app).to_string()))
    }

    /// Lists the shards of `app`'s stream (the reshard watch).
    ///
    /// # Errors
    /// As [`list_shards`].
    pub async fn list_shards(
        &self,
        app: &KinesisApplication,
    ) -> Result<Vec<ShardInfo>, DiscoveryError> {
        let aws = self
            .aws(app)
            .await
            .map_err(|refused| DiscoveryError::Kinesis {
                stream: stream_ref(app).to_string(),
                detail: refused.message,
            })?;
        list_shards(&aws.kinesis, &stream_ref(app)).await
    }

    fn aws_key(&self, app: &KinesisApplication) -> AwsKey {
        (
            region(app, &self.settings),
            app.spec.stream.endpoint.clone(),
            app.spec
                .stream
                .dynamo_db_endpoint
                .clone()
                .or_else(|| app.spec.stream.endpoint.clone()),
        )
    }

    fn key(app: &KinesisApplication) -> (String, String) {
        (app.namespace().unwrap_or_default(), app.name_any())
    }

    /// The next retry delay of `app` after a failure (exponential, full jitter, ≤ `max`).
    pub fn next_backoff(&self, app: &KinesisApplication, max: Duration) -> Duration {
        let mut failures = match self.failures.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        failures
            .entry(Self::key(app))
            .or_insert_with(|| Backoff::new(Duration::from_secs(1), Duration::from_secs(300)))
            .next_delay()
            .min(max)
            .max(Duration::from_millis(200))
    }

    /// `app` reconciled without failing: its backoff starts over.
    pub fn forget_failures(&self, app: &KinesisApplication) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&Self::key(app));
        }
    }

    /// The owner record of `app` in this cluster.
    pub fn owner(&self, app: &KinesisApplication) -> Owner {
        Owner {
            cluster: self.cluster.clone(),
            namespace: app.namespace().unwrap_or_default(),
            name: app.name_any(),
            uid: app.uid().unwrap_or_default(),
        }
    }

    /// The AWS clients for `app`'s region, endpoints and identity, made once per combination
    /// (at most [`IdentitySettings::max_clients`] kept; the least recently used goes first).
    ///
    /// # Guarantees
    /// No client is made for an endpoint the administrator did not allow, nor, in
    /// `namespace-role` mode, for a namespace without a role: no request of the operator's
    /// goes anywhere for such an object. An assumed role's credentials are fetched on first
    /// use and refreshed by the SDK's identity cache before they expire.
    ///
    /// # Errors
    /// A [`Refusal`]: an endpoint not on the list (`InvalidSpec`) or no role (`NoAwsIdentity`).
    async fn aws(&self, app: &KinesisApplication) -> Result<AwsClients, Refusal> {
        let refused = crate::validate::endpoints(app, &self.identity.allowed_endpoints);
        if !refused.is_empty() {
            return Err(Refusal {
                reason: "InvalidSpec",
                message: refused
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                transient: false,
            });
        }
        let identity = self.identity_of(app).map_err(|e| Refusal {
            reason: "NoAwsIdentity",
            message: e.0,
            transient: self.roles.lock().is_ok_and(|r| r.is_none()),
        })?;
        let key = (self.aws_key(app), identity);
        if let Some(c) = self.aws.lock().ok().and_then(|mut m| m.get(&key)) {
            return Ok(c);
        }
        let settings = kinesis_lease::aws::AwsSettings {
            region: key.0.0.clone(),
            kinesis_endpoint: key.0.1.clone(),
            dynamodb_endpoint: key.0.2.clone(),
            timeouts: kinesis_lease::aws::AwsTimeouts::default(),
        };
        let own = settings.sdk_config().await;
        let sdk = match &key.1 {
            Identity::Operator => own,
            Identity::Role(session) => {
                let mut base = own.clone().into_builder();
                if let Some(sts) = &self.identity.sts_endpoint {
                    base = base.endpoint_url(sts);
                }
                // STS in the operator's region (its endpoint, VPC endpoint and signature),
                // not the one the tenant's spec names for its stream.
                if let Some(r) = &self.settings.default_region {
                    base = base.region(aws_config::Region::new(r.clone()));
                }
                let provider = aws_config::sts::AssumeRoleProvider::builder(&session.role_arn)
                    .session_name(&session.session_name)
                    .tags(session.tags.clone())
                    .configure(&base.build())
                    .build()
                    .await;
                own.into_builder()
                    .credentials_provider(
                        aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                    )
                    .build()
            }
        };
        let counter = self.metrics.aws_counter();
        let clients = AwsClients {
            kinesis: settings.kinesis_counted(&sdk, Some(&counter)),
            dynamodb: settings.dynamodb_counted(&sdk, Some(&counter)),
        };
        if let Ok(mut m) = self.aws.lock() {
            m.insert(key, clients.clone());
        }
        Ok(clients)
    }
}

pub use crate::plan::set_condition;
pub use kinesis_lease::status::human_lag;

/// Entry point for the controller: clean up an object being deleted (if it holds our
/// finalizer), else apply it. The finalizer is added only once the object owns something in
/// AWS (its lease table's claim), so an invalid or refused object is deleted at once.
///
/// # Errors
/// [`Error`] when the API server fails; the controller retries with backoff.
pub async fn reconcile(app: Arc<KinesisApplication>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let res = if app.metadata.deletion_timestamp.is_some() {
        if app.finalizers().iter().any(|f| f == FINALIZER) {
            match cleanup(&app, &ctx).await {
                Ok(action) => {
                    ctx.forget_application(&app);
                    set_finalizer(&ctx, &app, false).await.map(|()| action)
                }
                Err(e) => Err(e),
            }
        } else {
            Ok(Action::await_change())
        }
    } else {
        apply(&app, &ctx).await
    };
    ctx.metrics.reconciled(
        started.elapsed(),
        res.as_ref().err().map(Error::metric_label),
    );
    res
}

/// Adds (`on`) or removes our finalizer, with a JSON patch that fails if the list changed
/// meanwhile (the next reconcile tries again).
async fn set_finalizer(ctx: &Context, app: &KinesisApplication, on: bool) -> Result<(), Error> {
    let current: Vec<String> = app.finalizers().to_vec();
    let has = current.iter().any(|f| f == FINALIZER);
    if has == on {
        return Ok(());
    }
    let mut next: Vec<String> = current
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if on {
        next.push(FINALIZER.to_string());
    }
    let patch: json_patch::Patch = serde_json::from_value(if current.is_empty() {
        json!([{"op": "add", "path": "/metadata/finalizers", "value": next}])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": next},
        ])
    })?;
    let api: Api<KinesisApplication> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    api.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

/// Requeue after a failed reconcile: exponential backoff with jitter per object, from 1 s
/// up to 5 minutes, reset by the next success.
pub fn error_policy(app: Arc<KinesisApplication>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(&app, Duration::from_secs(300));
    tracing::warn!(application = %app.name_any(), namespace = ?app.namespace(), error = %error, retry_in = ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// What the controller's stream yields: a reconciled object, or what failed.
pub type RunResult = Result<
    (ObjectRef<KinesisApplication>, Action),
    kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>,
>;

/// Whether an error of the controller's stream is said elsewhere or expected (pure): a failed
/// reconcile ([`error_policy`] logs it at warn), an object gone from the store before its
/// reconcile. Anything else — the watch failing (the CRD missing, RBAC that forbids list or
/// watch) or the runner — nothing else reports.
pub fn reported_elsewhere<Q: 'static>(e: &kube::runtime::controller::Error<Error, Q>) -> bool {
    use kube::runtime::controller::Error as RunError;
    matches!(
        e,
        RunError::ReconcilerFailed(..) | RunError::ObjectNotFound(..)
    )
}

/// Logs one item of the controller's stream: a success or an error said elsewhere at debug,
/// any other error (a watch that fails: a missing CRD, missing RBAC) at warn.
pub fn log_run_result(res: &RunResult) {
    match res {
        Ok((obj, _)) => tracing::debug!(application = %obj.name, "reconciled"),
        Err(e) if reported_elsewhere(e) => tracing::debug!(error = %e, "reconcile error"),
        Err(e) => {
            tracing::warn!(error = %e, "controller error (a failing watch: is the CRD installed, may the operator list and watch KinesisApplications and Deployments?)");
        }
    }
}

async fn event(
    ctx: &Context,
    app: &KinesisApplication,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &app.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing an Event failed");
    }
}

async fn patch_status(
    ctx: &Context,
    app: &KinesisApplication,
    status: &KinesisApplicationStatus,
) -> Result<(), Error> {
    let api: Api<KinesisApplication> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let patch = json!({ "status": status });
    api.patch_status(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn stream_ref(app: &KinesisApplication) -> StreamRef {
    match (&app.spec.stream.arn, &app.spec.stream.name) {
        (Some(arn), _) => StreamRef::Arn(arn.clone()),
        (None, name) => StreamRef::Name(name.clone().unwrap_or_default()),
    }
}

/// The stream's name: the spec's, or the one in its ARN.
fn stream_name(app: &KinesisApplication) -> Option<String> {
    app.spec.stream.name.clone().or_else(|| {
        app.spec
            .stream
            .arn
            .as_deref()
            .and_then(arn_stream_name)
            .map(String::from)
    })
}

/// What is wrong with `app`'s spec, as one bounded message: its own rules, the endpoints the
/// operator would call with its own identity, and an application name its namespace may not
/// use. `None`: nothing.
fn invalid_spec(app: &KinesisApplication, identity: &IdentitySettings) -> Option<String> {
    let mut invalid = validate(app);
    invalid.extend(crate::validate::endpoints(app, &identity.allowed_endpoints));
    invalid.extend(crate::validate::application_name_refused(
        app,
        &identity.unprefixed_names,
    ));
    (!invalid.is_empty()).then(|| {
        crate::message::bounded(
            &invalid
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// Records `problem` in `conditions` as of `now` (pure): its condition and `Ready` False,
/// and, when `degraded` (the stream or table cannot be used, the workers may be stale),
/// `Degraded` True, all with its reason and message. Returns whether its condition said the
/// same already (then its Warning Event was published then, and is not again).
fn record_problem(
    conditions: &mut Vec<Condition>,
    problem: &Problem,
    degraded: bool,
    generation: Option<i64>,
    now: Time,
) -> bool {
    let Problem {
        condition,
        reason,
        message,
    } = problem;
    let already = already_reported(conditions, condition, reason, message);
    let mut types = vec![*condition, "Ready"];
    if degraded {
        types.push("Degraded");
    }
    for type_ in types {
        // Degraded is the one that is True when something is wrong.
        let is_true = type_ == "Degraded";
        set_condition_at(
            conditions,
            type_,
            is_true,
            reason,
            message.clone(),
            generation,
            now.clone(),
        );
    }
    already
}

/// The message of a problem reaching AWS as conditions and Events say it: for
/// `AccessDenied`, with whose permissions it is about and the fix; bounded.
fn problem_message(problem: Problem, mode: Mode, namespace: &str) -> Problem {
    let Problem {
        condition,
        reason,
        message,
    } = problem;
    let message = match reason {
        "AccessDenied" => format!("{message}; {}", access_hint(mode, namespace)),
        _ => message,
    };
    Problem::new(condition, reason, crate::message::bounded(&message))
}

async fn apply(app: &KinesisApplication, ctx: &Context) -> Result<Action, Error> {
    let generation = app.metadata.generation;
    let name = app.name_any();
    let previous = app.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.stream = stream_name(app);

    // 1. The spec, and the endpoints the operator would call with its own identity.
    if let Some(message) = invalid_spec(app, &ctx.identity) {
        let problem = Problem::new("Ready", "InvalidSpec", message);
        let already = record_problem(
            &mut status.conditions,
            &problem,
            false,
            generation,
            Time(Timestamp::now()),
        );
        patch_status(ctx, app, &status).await?;
        if !already {
            event(
                ctx,
                app,
                EventType::Warning,
                problem.reason,
                problem.message,
            )
            .await;
        }
        // A spec change triggers the next reconcile.
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    // 2., 3. The stream, the lease table, the fan-out consumer.
    let observed = match observe(app, ctx, &mut status).await {
        Ok(o) => o,
        Err(Stop::Problem(p)) => return degrade(ctx, app, status, p).await,
        Err(Stop::Failed(e)) => return Err(e),
    };

    // 4. Size and apply — never over an object of the same name that is not this one's.
    if let Some(message) = name_conflict_of(app, ctx).await? {
        let problem = Problem::new("Ready", "NameConflict", message);
        return degrade(ctx, app, status, problem).await;
    }
    // A rewind asked for: the workers stop, the checkpoints move back, the workers start.
    if let Some(want) = rewind::pending(app) {
        let input = rewind::Inputs {
            aws: &observed.aws,
            table: &observed.table,
            stream: stream_ref(app),
            shards: &observed.shards,
            consumer_arn: observed.consumer_arn.as_deref(),
        };
        if let rewind::Step::Hold(action) = rewind::step(app, ctx, want, input, &mut status).await?
        {
            return Ok(action);
        }
    }
    let sizing = plan::size(app, &observed.shards, observed.snapshot.as_ref());
    if let Some(lag) = sizing.lag {
        tracing::debug!(application = %name, ?lag, scanned = observed.snapshot.is_some(), "sized by the lag");
    }
    let desired = sizing.replicas.desired;
    if sizing.replicas.write_sized.is_some() || sizing.replicas.released {
        write_replicas(ctx, app, sizing.replicas).await?;
    }
    let mut applied = apply_workers(app, ctx, desired, observed.consumer_arn.as_deref()).await?;
    if app.spec.paused {
        // A Deployment stops counting a pod once it terminates; it is still flushing its
        // checkpoints and releasing its leases: Paused only once it is gone.
        let pods = rewind::worker_pods(ctx, app).await?;
        applied.replicas = applied
            .replicas
            .max(i32::try_from(pods).unwrap_or(i32::MAX));
    }

    // 5. Status, and Events for what changed.
    let report = plan::healthy_status(
        app,
        &previous,
        status,
        &observed.shards,
        observed.snapshot.as_ref(),
        &sizing,
        applied,
    );
    patch_status(ctx, app, &report.status).await?;
    ctx.forget_failures(app);
    ctx.saw_open_shards(app, sizing.open);
    let ns = app.namespace().unwrap_or_default();
    ctx.metrics.application(
        &ns,
        &name,
        sizing.open,
        desired,
        applied.ready,
        report.max_lag_ms.unwrap_or(0),
    );
    for note in report.notes {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        event(ctx, app, type_, note.reason, note.text).await;
    }
    Ok(Action::requeue(resync_after(
        ctx.resync,
        app.uid().as_deref(),
    )))
}

/// What the status scan of a lease table may read (attack: a tenant's worker role writes
/// 300 KB items or 200 MB of junk; the operator scans every application's table every resync,
/// eight at once). A lease of ours or KCL's is well under 2 KB without its
/// `pendingCheckpointState` (not read), a heartbeat about 40 bytes per shard its worker holds
/// (1,000 shards: 40 KB); 10,000 shards' leases are about 3 MB.
pub const STATUS_SCAN: ScanBounds = ScanBounds {
    attributes: Some(&[
        attr::LEASE_KEY,
        attr::LEASE_OWNER,
        attr::LEASE_COUNTER,
        attr::CHECKPOINT,
        attr::CHECKPOINT_SUB,
        attr::PENDING_CHECKPOINT,
        attr::PENDING_CHECKPOINT_SUB,
        attr::OWNER_SWITCHES,
        attr::PARENT_SHARD_IDS,
        attr::CHILD_SHARD_IDS,
        attr::STARTING_HASH_KEY,
        attr::ENDING_HASH_KEY,
        attr::HANDOFF_TO,
        attr::HANDOFF_GRANTED,
        attr::START_TIMESTAMP,
        attr::ASSIGNED,
        attr::HEARTBEAT,
        attr::DRAINING,
        attr::LAG,
        attr::COORDINATION,
        attr::STALLED,
    ]),
    max_item_bytes: 128 * 1024,
    max_total_bytes: 8 * 1024 * 1024,
    max_pages: 64,
    // ≈ 300 KB a page of projected leases: each page well inside the client's 3 s attempt
    // timeout (a 1 MB page of a 10,000-shard table took longer than that from moto, and the
    // status scan failed on every reconcile). The 8 MiB above is reached first: about
    // 25,000 leases (a 10,000-shard stream's 30,000 in the middle of a doubling are not
    // all read: no owners or lag in the status until the parents are cleaned up).
    page_items: Some(1_000),
};

/// Reads the Deployment (and, with `aws.roleArn`, the ServiceAccount) `app` would apply and
/// says if one is somebody else's ([`crate::deployment::name_conflict`]). One GET per
/// reconcile (two with a role).
async fn name_conflict_of(
    app: &KinesisApplication,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let ns = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let existing = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?;
    if let Some(m) = crate::deployment::name_conflict(
        app,
        "Deployment",
        &name,
        existing.as_ref().map(|d| &d.metadata),
    ) {
        return Ok(Some(m));
    }
    if ctx.settings.network_policy_from.is_some() {
        let np_name = crate::netpol::name(app);
        let existing = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&np_name)
            .await?;
        if let Some(m) = crate::deployment::name_conflict(
            app,
            "NetworkPolicy",
            &np_name,
            existing.as_ref().map(|n| &n.metadata),
        ) {
            return Ok(Some(m));
        }
    }
    if app
        .spec
        .aws
        .as_ref()
        .and_then(|a| a.role_arn.as_ref())
        .is_some()
    {
        let sa_name = service_account_name(app);
        let existing = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&sa_name)
            .await?;
        return Ok(crate::deployment::name_conflict(
            app,
            "ServiceAccount",
            &sa_name,
            existing.as_ref().map(|s| &s.metadata),
        ));
    }
    Ok(None)
}

/// Applies the worker Deployment with `desired` replicas (and the ServiceAccount, when the
/// spec names an IAM role), server-side; returns what the Deployment reports.
async fn apply_workers(
    app: &KinesisApplication,
    ctx: &Context,
    desired: i32,
    consumer_arn: Option<&str>,
) -> Result<plan::Applied, Error> {
    let name = app.name_any();
    let ns = app.namespace().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    if let Some(role) = app.spec.aws.as_ref().and_then(|a| a.role_arn.clone()) {
        let sa: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": service_account_name(app),
                "namespace": ns,
                "labels": labels(&name),
                "annotations": {"eks.amazonaws.com/role-arn": role},
                "ownerReferences": app.controller_owner_ref(&()).map(|o| vec![o]),
            }
        }))?;
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .patch(&service_account_name(app), &params, &Patch::Apply(&sa))
            .await?;
    }
    if let Some(from) = &ctx.settings.network_policy_from {
        let mut body = serde_json::to_value(crate::netpol::network_policy(app, from))?;
        if let Some(o) = body.as_object_mut() {
            o.insert("apiVersion".into(), json!("networking.k8s.io/v1"));
            o.insert("kind".into(), json!("NetworkPolicy"));
        }
        Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns)
            .patch(&crate::netpol::name(app), &params, &Patch::Apply(&body))
            .await?;
    }
    let mut d = deployment(app, desired, &ctx.settings, consumer_arn);
    // Server-side apply needs the kind on the object.
    d.metadata.managed_fields = None;
    let mut body = serde_json::to_value(&d)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("apiVersion".into(), json!("apps/v1"));
        o.insert("kind".into(), json!("Deployment"));
    }
    let applied = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &params, &Patch::Apply(&body))
        .await?;
    let status = applied.status.unwrap_or_default();
    Ok(plan::Applied {
        ready: status.ready_replicas.unwrap_or(0),
        replicas: status.replicas.unwrap_or(0),
    })
}

/// The periodic requeue of one object: `resync` plus up to a tenth of it, fixed per object
/// (its uid), so 500 applications created together do not resync together.
pub fn resync_after(resync: Duration, uid: Option<&str>) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut h);
    let tenth = resync.as_millis() as u64 / 10;
    resync + Duration::from_millis(h.finish() % tenth.max(1))
}

/// What a change of a `KinesisApplication` must change to trigger a reconcile: its spec
/// (the generation), labels, annotations, finalizers, deletion, identity. Status is left
/// out: the operator's own status writes (lag, checkpoints) trigger nothing; the periodic
/// resync and the owned Deployments' changes bring the status up to date.
pub fn desired_state(app: &KinesisApplication) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let m = &app.metadata;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.uid.hash(&mut h);
    m.generation.hash(&mut h);
    m.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    Some(h.finish())
}

/// Writes the sized `spec.replicas` with its annotation, or drops the annotation once
/// someone else owns the count (a merge patch; the next reconcile sees the result).
async fn write_replicas(
    ctx: &Context,
    app: &KinesisApplication,
    decision: crate::sizing::Replicas,
) -> Result<(), Error> {
    let patch = match decision.write_sized {
        Some(n) => json!({
            "metadata": {"annotations": {SIZED_ANNOTATION: n.to_string()}},
            "spec": {"replicas": n},
        }),
        None => json!({"metadata": {"annotations": {SIZED_ANNOTATION: null}}}),
    };
    let api: Api<KinesisApplication> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    api.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Whose permissions an `AccessDenied` of an application in `namespace` is about, and the
/// fix (never an ARN).
fn access_hint(mode: Mode, namespace: &str) -> String {
    match mode {
        Mode::Operator => "grant the action to the operator's own AWS identity (aws-identity: operator; docs/IAM.md)".into(),
        Mode::NamespaceRole => format!(
            "grant the action to the IAM role mapped to namespace `{namespace}` (docs/IAM.md)"
        ),
    }
}

/// Reports a failure to reach the stream or the table: the condition, Ready=False,
/// Degraded=True, a Warning Event when new; the Deployment stays as it is.
async fn degrade(
    ctx: &Context,
    app: &KinesisApplication,
    mut status: KinesisApplicationStatus,
    problem: Problem,
) -> Result<Action, Error> {
    let namespace = app.namespace().unwrap_or_default();
    let problem = problem_message(problem, ctx.identity.mode, &namespace);
    let already = record_problem(
        &mut status.conditions,
        &problem,
        true,
        app.metadata.generation,
        Time(Timestamp::now()),
    );
    patch_status(ctx, app, &status).await?;
    if !already {
        event(
            ctx,
            app,
            EventType::Warning,
            problem.reason,
            problem.message,
        )
        .await;
    }
    // Counted as a failed reconcile, retried with backoff (at most a minute, so a stream
    // created later is found soon).
    ctx.metrics.failed(problem.reason);
    Ok(Action::requeue(ctx.next_backoff(
        app,
        Duration::from_secs(60).max(ctx.resync),
    )))
}

/// The ARN of `app`'s stream; `None` if the stream (named) does not exist any more.
async fn stream_arn_of(
    app: &KinesisApplication,
    kinesis: &aws_sdk_kinesis::Client,
) -> Result<Option<String>, String> {
    match (&app.spec.stream.arn, &app.spec.stream.name) {
        (Some(arn), _) => Ok(Some(arn.clone())),
        (None, Some(name)) => claims::stream_arn(kinesis, name).await,
        (None, None) => Err("no stream".into()),
    }
}

/// A failed cleanup step: the finalizer stays and the cleanup is retried.
fn retry(detail: String) -> Error {
    Error::Cleanup(detail)
}

/// Deletes what this object owns, and only that (see [`crate::ownership`]): the fan-out
/// consumer the operator registered for it, and the lease table the operator created for it
/// when `deletionPolicy` is `Delete`. Everything else is left, with a Warning Event that
/// says why.
async fn cleanup(app: &KinesisApplication, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics
        .forget(&app.namespace().unwrap_or_default(), &app.name_any());
    let aws = match ctx.aws(app).await {
        Ok(aws) => aws,
        // An endpoint the administrator does not allow (now), or no identity for this
        // namespace (now): the operator calls nothing for it, so it cannot clean up; the
        // object may go.
        Err(refused) if refused.transient => {
            return Err(retry(format!(
                "cleanup waits: {} (the finalizer stays until it is back)",
                refused.message
            )));
        }
        Err(refused) => {
            event(
                ctx,
                app,
                EventType::Warning,
                "CleanupSkipped",
                format!(
                    "no AWS cleanup (no lease table or consumer deleted): {}",
                    refused.message
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    cleanup_consumer(app, ctx, &aws).await?;
    cleanup_table(app, ctx, &aws).await?;
    Ok(Action::await_change())
}

/// The fan-out consumer (it costs money while registered): only the one the operator
/// registered for this very object, by the ARN it recorded in the status — which tenants
/// cannot write, unlike the claim item — and an ARN names one registration, so a consumer
/// made again under the same name, or another team's, is never it.
async fn cleanup_consumer(
    app: &KinesisApplication,
    ctx: &Context,
    aws: &AwsClients,
) -> Result<(), Error> {
    let recorded = app
        .status
        .as_ref()
        .and_then(|s| s.consumer.as_ref())
        .filter(|c| c.registered_by_operator);
    if let Some(c) = recorded {
        let found = claims::deregister_consumer_arn(&aws.kinesis, &c.arn)
            .await
            .map_err(retry)?;
        let (reason, note) = consumer_cleaned(&c.name, found);
        event(ctx, app, EventType::Normal, reason, note).await;
    } else if app.spec.consumer.mode == ConsumerMode::EnhancedFanOut {
        event(
            ctx,
            app,
            EventType::Warning,
            "ConsumerKept",
            format!(
                "fan-out consumer `{}` is kept: the operator did not register it for this application",
                application_name(app)
            ),
        )
        .await;
    }
    Ok(())
}

/// The Event for a deregistration the operator asked for: `found` is whether the consumer
/// still existed.
fn consumer_cleaned(name: &str, found: bool) -> (&'static str, String) {
    if found {
        (
            "ConsumerDeregistered",
            format!(
                "fan-out consumer `{name}` deregistered (the operator registered it for this application)"
            ),
        )
    } else {
        (
            "ConsumerGone",
            format!("fan-out consumer `{name}` no longer exists (a consumer goes with its stream)"),
        )
    }
}

/// The lease table: kept, released or deleted as [`table_cleanup`] decides from the table's
/// tags and claim.
async fn cleanup_table(
    app: &KinesisApplication,
    ctx: &Context,
    aws: &AwsClients,
) -> Result<(), Error> {
    let app_name = application_name(app);
    let owner = ctx.owner(app);
    let info = claims::table_info(&aws.dynamodb, &app_name)
        .await
        .map_err(retry)?;
    let Some(info) = info else {
        // No table: nothing of this object's can exist (the claim lives in the table).
        return Ok(());
    };
    // A table with another key (not a lease table) holds no claim: it is never ours.
    let claim = if info.lease_table {
        claims::read_claim(&aws.dynamodb, &app_name, true)
            .await
            .map_err(retry)?
    } else {
        None
    };
    match table_cleanup(
        app.spec.lease_table.deletion_policy,
        &app_name,
        &info.tags,
        claim.as_ref(),
        &owner,
    ) {
        TableCleanup::Keep { reason, warn } => {
            if warn {
                event(ctx, app, EventType::Warning, "LeaseTableKept", reason).await;
            }
        }
        TableCleanup::KeepAndRelease => {
            claims::release(&aws.dynamodb, &app_name, &owner)
                .await
                .map_err(retry)?;
        }
        TableCleanup::Delete => match aws
            .dynamodb
            .delete_table()
            .table_name(&app_name)
            .send()
            .await
        {
            Ok(_) => {
                event(
                    ctx,
                    app,
                    EventType::Normal,
                    "LeaseTableDeleted",
                    format!("lease table `{app_name}` deleted (deletionPolicy: Delete; the operator created it for this application)"),
                )
                .await;
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) => {}
            Err(e) => {
                let detail = crate::message::aws_error("DeleteTable", &e);
                event(
                    ctx,
                    app,
                    EventType::Warning,
                    "LeaseTableNotDeleted",
                    format!("deleting lease table `{app_name}`: {detail}"),
                )
                .await;
                return Err(retry(detail));
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_consumer_serves_its_own_stream_and_identity_for_ten_minutes_only() {
        let t0 = std::time::Instant::now();
        let key: ConsumerKey = (
            (Some("us-east-1".into()), None, None),
            Some(Identity::Operator),
            "orders".into(),
            "app".into(),
            Some("uid-1".into()),
        );
        let known = KnownConsumer {
            key: key.clone(),
            found: claims::Consumer {
                arn: "arn:aws:kinesis:us-east-1:1:stream/orders/consumer/app:1".into(),
                registered_by_operator: true,
            },
            at: t0,
        };
        assert!(known.serves(&key, t0).is_some());
        assert!(
            known
                .serves(&key, t0 + CONSUMER_RECHECK - Duration::from_secs(1))
                .is_some()
        );
        assert!(
            known.serves(&key, t0 + CONSUMER_RECHECK).is_none(),
            "described again"
        );
        let mut other = key.clone();
        other.2 = "payments".into();
        assert!(
            known.serves(&other, t0).is_none(),
            "the spec's stream changed"
        );
        let mut other = key.clone();
        other.0 = (None, Some("http://x".into()), None);
        assert!(known.serves(&other, t0).is_none(), "the endpoints changed");
        let mut other = key.clone();
        other.3 = "app2".into();
        assert!(
            known.serves(&other, t0).is_none(),
            "the application name changed"
        );
        let mut other = key.clone();
        other.4 = Some("uid-2".into());
        assert!(
            known.serves(&other, t0).is_none(),
            "an object made again under the same name inherits nothing"
        );
    }

    #[test]
    fn a_deregistration_is_told_as_done_or_as_already_gone() {
        let (reason, note) = consumer_cleaned("orders", true);
        assert_eq!(reason, "ConsumerDeregistered");
        assert!(note.contains("`orders` deregistered"), "{note}");
        let (reason, note) = consumer_cleaned("orders", false);
        assert_eq!(reason, "ConsumerGone");
        assert!(note.contains("no longer exists"), "{note}");
    }

    fn object(status: Option<serde_json::Value>) -> KinesisApplication {
        let mut v = serde_json::json!({
            "apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "generation": 1,
                "finalizers": ["kinesis-operator.io/cleanup"]},
            "spec": {"stream": {"name": "s"},
                "template": {"spec": {"containers": [{"name": "app"}]}}}
        });
        if let Some(st) = status {
            v["status"] = st;
        }
        match serde_json::from_value(v) {
            Ok(a) => a,
            Err(e) => panic!("test object: {e}"),
        }
    }

    #[test]
    fn the_operators_own_status_writes_trigger_no_reconcile() {
        let before = object(None);
        let with_status = object(Some(serde_json::json!({
            "maxLag": "1.2s",
            "shardStatus": [{"shardId": "shardId-000000000000", "checkpoint": "49"}]
        })));
        assert_eq!(desired_state(&before), desired_state(&with_status));
        // Everything else a user changes does.
        let changes: Vec<fn(&mut KinesisApplication)> = vec![
            |a| a.metadata.generation = Some(2),
            |a| {
                a.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ))
            },
            |a| {
                a.annotations_mut()
                    .insert("kinesis-operator.io/sized-replicas".into(), "2".into());
            },
            |a| {
                a.labels_mut().insert("team".into(), "a".into());
            },
            |a| a.metadata.finalizers = None,
            |a| a.metadata.uid = Some("u2".into()),
        ];
        for change in changes {
            let mut a = before.clone();
            change(&mut a);
            assert_ne!(
                desired_state(&before),
                desired_state(&a),
                "{:?}",
                a.metadata
            );
        }
    }

    #[test]
    fn periodic_requeues_are_spread_over_a_tenth_of_the_resync() {
        let resync = Duration::from_secs(60);
        let delays: Vec<Duration> = (0..500)
            .map(|i| resync_after(resync, Some(&format!("uid-{i}"))))
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= resync && *d < resync + resync / 10)
        );
        let distinct: std::collections::HashSet<_> = delays.iter().map(|d| d.as_secs()).collect();
        assert!(distinct.len() >= 5, "{distinct:?}");
        // Fixed per object.
        assert_eq!(
            resync_after(resync, Some("x")),
            resync_after(resync, Some("x"))
        );
    }

    #[test]
    fn what_is_no_longer_live_is_gone() {
        let live: HashSet<(String, String)> =
            [("a".to_string(), "x".to_string())].into_iter().collect();
        let known = [
            ("a".to_string(), "x".to_string()),
            ("a".to_string(), "y".to_string()),
        ];
        assert_eq!(
            gone(known.iter(), &live),
            vec![("a".to_string(), "y".to_string())]
        );
    }

    #[test]
    fn lag_reads_well() {
        assert_eq!(human_lag(0), "0ms");
        assert_eq!(human_lag(350), "350ms");
        assert_eq!(human_lag(1234), "1.2s");
        assert_eq!(human_lag(184_000), "3m4s");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let earlier = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "WorkersStarting", "0/4", Some(1));
        let t0 = c[0].last_transition_time.clone();
        c[0].last_transition_time = earlier.clone();
        set_condition(&mut c, "Ready", false, "WorkersStarting", "2/4", Some(1));
        assert_eq!(c[0].last_transition_time, earlier);
        assert_eq!(c[0].message, "2/4");
        set_condition(&mut c, "Ready", true, "WorkersReady", "4/4", Some(2));
        assert_ne!(c[0].last_transition_time, earlier);
        assert!(t0 > earlier);
        assert_eq!((c.len(), c[0].status.as_str()), (1, "True"));
    }

    fn at(seconds: i64) -> Time {
        match Timestamp::from_second(seconds) {
            Ok(t) => Time(t),
            Err(e) => panic!("test time: {e}"),
        }
    }

    /// (type, status, reason) of each condition.
    fn said(c: &[Condition]) -> Vec<(&str, &str, &str)> {
        c.iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_problem_fails_its_condition_and_ready_and_degrades_once() {
        let p = Problem::new("StreamReady", "StreamNotFound", "no stream".into());
        let mut c = Vec::new();
        assert!(!record_problem(&mut c, &p, true, Some(4), at(1)));
        assert_eq!(
            said(&c),
            vec![
                ("StreamReady", "False", "StreamNotFound"),
                ("Ready", "False", "StreamNotFound"),
                ("Degraded", "True", "StreamNotFound"),
            ]
        );
        assert!(
            c.iter()
                .all(|c| c.message == "no stream" && c.observed_generation == Some(4))
        );
        // The same again: reported already (no second Event), nothing moves.
        let before = c.clone();
        assert!(record_problem(&mut c, &p, true, Some(4), at(2)));
        assert_eq!(c, before);
        // Another message is new.
        let p2 = Problem::new("StreamReady", "StreamNotFound", "still no stream".into());
        assert!(!record_problem(&mut c, &p2, true, Some(4), at(3)));
        assert_eq!(c[0].last_transition_time, at(1));
    }

    #[test]
    fn an_invalid_spec_fails_ready_only() {
        let p = Problem::new("Ready", "InvalidSpec", "bad".into());
        let mut c = Vec::new();
        set_condition_at(&mut c, "Ready", true, "WorkersReady", "1/1", Some(1), at(1));
        assert!(!record_problem(&mut c, &p, false, Some(2), at(5)));
        assert_eq!(said(&c), vec![("Ready", "False", "InvalidSpec")]);
        assert_eq!(c[0].last_transition_time, at(5));
        assert!(record_problem(&mut c, &p, false, Some(2), at(6)));
    }

    #[test]
    fn access_denied_says_whose_permissions_and_the_fix() {
        let p = Problem::new(
            "LeaseTableReady",
            "AccessDenied",
            "lease table `t`: no".into(),
        );
        let op = problem_message(p.clone(), Mode::Operator, "team-a");
        assert_eq!(
            op.message,
            "lease table `t`: no; grant the action to the operator's own AWS identity (aws-identity: operator; docs/IAM.md)"
        );
        let ns = problem_message(p, Mode::NamespaceRole, "team-a");
        assert!(
            ns.message
                .ends_with("the IAM role mapped to namespace `team-a` (docs/IAM.md)"),
            "{}",
            ns.message
        );
        // Other reasons: the message as it is, bounded to one line.
        let t = problem_message(
            Problem::new("StreamReady", "Throttled", "slow\n down".into()),
            Mode::Operator,
            "team-a",
        );
        assert_eq!((t.reason, t.message.as_str()), ("Throttled", "slow down"));
        let long = problem_message(
            Problem::new("Ready", "Unavailable", "x".repeat(2000)),
            Mode::Operator,
            "team-a",
        );
        assert!(long.message.chars().count() <= crate::message::MESSAGE_LIMIT);
    }

    #[test]
    fn the_spec_is_checked_with_the_administrators_rules() {
        let ok = object(None);
        assert_eq!(invalid_spec(&ok, &IdentitySettings::default()), None);
        assert_eq!(stream_name(&ok).as_deref(), Some("s"));
        let mut by_arn = ok.clone();
        by_arn.spec.stream.name = None;
        by_arn.spec.stream.arn =
            Some("arn:aws:kinesis:eu-west-1:123456789012:stream/orders".into());
        assert_eq!(stream_name(&by_arn).as_deref(), Some("orders"));
        // An endpoint the administrator did not allow.
        let mut local = ok.clone();
        local.spec.stream.endpoint = Some("http://10.0.0.1:4567".into());
        let Some(message) = invalid_spec(&local, &IdentitySettings::default()) else {
            panic!("an endpoint not allowed was accepted")
        };
        assert!(!message.is_empty());
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn watch_failures_are_loud_and_reconcile_failures_are_not_logged_twice() {
        use kube::runtime::controller::Error as RunError;
        use kube::runtime::watcher;
        let gone: RunError<Error, watcher::Error> =
            RunError::ObjectNotFound(Box::new(ObjectRef::<KinesisApplication>::new("a").erase()));
        assert!(reported_elsewhere(&gone));
        let failed: RunError<Error, watcher::Error> = RunError::ReconcilerFailed(
            Error::Cleanup("x".into()),
            Box::new(ObjectRef::<KinesisApplication>::new("a").erase()),
        );
        assert!(reported_elsewhere(&failed));
        let watch: RunError<Error, watcher::Error> =
            RunError::QueueError(watcher::Error::NoResourceVersion);
        assert!(!reported_elsewhere(&watch));
    }
}
