//! The operator's Prometheus metrics (`/metrics` on its admin port).

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use kinesis_lease::metrics::{AwsCallCounter, AwsErrorLabels, AwsLabels};

/// Labels naming a failed reconcile's cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `kube`, `finalizer`, …
    pub error: String,
}

/// Labels naming an application.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub application: String,
}

/// Labels naming a Kubernetes API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeLabels {
    /// `watch` for a watch, else the HTTP method (`get`, `patch`, …).
    pub verb: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    open_shards: Family<AppLabels, Gauge>,
    workers_desired: Family<AppLabels, Gauge>,
    workers_ready: Family<AppLabels, Gauge>,
    lag: Family<AppLabels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
    aws_calls: Family<AwsLabels, Counter>,
    aws_errors: Family<AwsErrorLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
    reshard_polls: Counter,
    reshard_rounds: Counter,
    reshards_noticed: Counter,
}

impl Metrics {
    /// A registry with every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kinesis_operator");
        let m = Self {
            registry: Registry::default(),
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            open_shards: Family::default(),
            workers_desired: Family::default(),
            workers_ready: Family::default(),
            lag: Family::default(),
            leader: Gauge::default(),
            aws_calls: Family::default(),
            aws_errors: Family::default(),
            kube_requests: Family::default(),
            reshard_polls: Counter::default(),
            reshard_rounds: Counter::default(),
            reshards_noticed: Counter::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by cause",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.duration.clone(),
        );
        registry.register(
            "open_shards",
            "Open shards of each application's stream",
            m.open_shards.clone(),
        );
        registry.register(
            "workers_desired",
            "Workers each application's shard count calls for",
            m.workers_desired.clone(),
        );
        registry.register(
            "workers_ready",
            "Ready worker pods of each application",
            m.workers_ready.clone(),
        );
        registry.register(
            "max_behind_latest_seconds",
            "The largest lag of any shard of each application (seconds), from the workers' heartbeats",
            m.lag.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the active one",
            m.leader.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls the operator made, by service and operation",
            m.aws_calls.clone(),
        );
        registry.register(
            "aws_errors",
            "AWS API calls that failed, by service, operation and HTTP status",
            m.aws_errors.clone(),
        );
        registry.register(
            "kube_requests",
            "Kubernetes API requests the operator made (watch: one per watch started)",
            m.kube_requests.clone(),
        );
        registry.register(
            "reshard_polls",
            "Applications the reshard watch checked (one listing serves every application of a stream and identity)",
            m.reshard_polls.clone(),
        );
        registry.register(
            "reshard_rounds",
            "Rounds of the reshard watch (one every --shard-poll-seconds)",
            m.reshard_rounds.clone(),
        );
        registry.register(
            "reshards_noticed",
            "Reconciles the reshard watch triggered (open shards changed)",
            m.reshards_noticed.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// A reconcile finished (`error`: its cause, if it failed).
    pub fn reconciled(&self, took: Duration, error: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors
                .get_or_create(&ErrorLabels { error: e.into() })
                .inc();
        }
    }

    /// An application's figures.
    pub fn application(
        &self,
        namespace: &str,
        application: &str,
        open: i32,
        desired: i32,
        ready: i32,
        lag_ms: i64,
    ) {
        let l = AppLabels {
            namespace: namespace.into(),
            application: application.into(),
        };
        self.open_shards.get_or_create(&l).set(i64::from(open));
        self.workers_desired
            .get_or_create(&l)
            .set(i64::from(desired));
        self.workers_ready.get_or_create(&l).set(i64::from(ready));
        self.lag.get_or_create(&l).set(lag_ms as f64 / 1000.0);
    }

    /// A reconcile that could not finish for a reason outside Kubernetes (AWS: the stream,
    /// the lease table, the consumer), counted with the reconcile errors.
    pub fn failed(&self, cause: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: cause.into(),
            })
            .inc();
    }

    /// Drops an application's series (it was deleted).
    pub fn forget(&self, namespace: &str, application: &str) {
        let l = AppLabels {
            namespace: namespace.into(),
            application: application.into(),
        };
        self.open_shards.remove(&l);
        self.workers_desired.remove(&l);
        self.workers_ready.remove(&l);
        self.lag.remove(&l);
    }

    /// A counter for the AWS clients' calls (an SDK interceptor).
    pub fn aws_counter(&self) -> AwsCallCounter {
        AwsCallCounter::into_families(self.aws_calls.clone(), self.aws_errors.clone())
    }

    /// A Kubernetes API request went out (`watch`: it starts a watch).
    pub fn kube_request(&self, method: &str, watch: bool) {
        let verb = if watch {
            "watch".to_string()
        } else {
            method.to_ascii_lowercase()
        };
        self.kube_requests.get_or_create(&KubeLabels { verb }).inc();
    }

    /// The reshard watch listed one application's shards (`noticed`: they changed).
    pub fn reshard_poll(&self, noticed: bool) {
        self.reshard_polls.inc();
        if noticed {
            self.reshards_noticed.inc();
        }
    }

    /// The reshard watch started a round.
    pub fn reshard_round(&self) {
        self.reshard_rounds.inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }
}
