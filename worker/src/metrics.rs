//! The worker's Prometheus metrics (served on the admin port at `/metrics`). Every metric is
//! listed with its meaning in docs/OPERATIONS.md.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use kinesis_lease::metrics::{AwsCallCounter, AwsErrorLabels, AwsLabels};

use crate::lease::table::TableCounters;

/// Labels naming one app call (`Initialize`, `ProcessRecords`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The RPC.
    pub call: &'static str,
}

/// Labels naming a shard.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard id.
    pub shard: String,
}

/// Labels naming why records went to the on-failure destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `attempts_exhausted` or `record_age`.
    pub reason: &'static str,
}

/// Labels naming a lease event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `acquired`, `lost`, `shutdown_requested` or `shard_ended`.
    pub event: &'static str,
}

fn app_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

/// Every metric of the worker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The registry's labels, for the lease table's counters (encoded per scrape).
    const_labels: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    /// User records delivered to the app (acknowledged by it).
    pub records_delivered: Counter,
    /// Bytes of record data delivered to the app.
    pub bytes_delivered: Counter,
    /// Batches delivered to the app.
    pub batches_delivered: Counter,
    /// Deliveries of a batch that failed and were retried.
    pub batch_retries: Counter,
    /// Records sent to the on-failure destination, by reason.
    pub records_to_destination: Family<ReasonLabels, Counter>,
    /// Failed sends to the on-failure destination (each retried).
    pub destination_errors: Counter,
    /// App calls cancelled at their deadline (`--app-call-timeout-ms`).
    pub app_call_timeouts: Counter,
    /// gRPC health checks sent to the app (`/readyz` and the start-up wait).
    pub app_health_checks: Counter,
    /// Failing batches split in halves (bisect on error).
    pub bisections: Counter,
    /// Records that matched no filter: not sent to the app, counted as processed.
    pub records_filtered: Counter,
    /// Answers that acknowledged only part of a batch (`failed_from`).
    pub partial_batch_failures: Counter,
    /// Records gathered into one call by the batching window (a histogram of call sizes).
    pub records_per_call: Histogram,
    /// Lanes with a call to the app in flight (parallelism within a shard).
    pub lanes_busy: Gauge,
    /// Shards found gone from the stream (past its retention) and treated as ended.
    pub shards_expired: Counter,
    /// Seconds shards waited before a GetRecords call for the per-shard byte limit
    /// (`--read-kb-per-second`), beyond the 5-calls-a-second spacing.
    pub read_paced_seconds: Counter<f64, AtomicU64>,
    /// GetRecords calls refused for a read limit (`ProvisionedThroughputExceededException`
    /// and the like), retried: apart from `aws_errors`, where a 400 is also access denied.
    pub read_throttled: Counter,
    /// App call latency by RPC.
    pub app_call_seconds: Family<CallLabels, Histogram>,
    /// Failed app calls by RPC.
    pub app_call_errors: Family<CallLabels, Counter>,
    /// 1 while the app answers its health check.
    pub app_ready: Gauge,
    /// How far behind the tip each held shard's last read was.
    pub millis_behind_latest: Family<ShardLabels, Gauge<f64, AtomicU64>>,
    /// Leases held.
    pub leases_held: Gauge,
    /// Lease events seen by the record pipeline.
    pub lease_events: Family<EventLabels, Counter>,
    /// Checkpoints written to the lease table.
    pub checkpoints_written: Counter,
    /// Checkpoints the app asked for that were refused (beyond what was delivered, or
    /// backwards).
    pub checkpoints_refused: Counter,
    /// Checkpoint writes that failed (retried at the next interval).
    pub checkpoint_errors: Counter,
    /// AWS API calls by service and operation.
    pub aws_calls: Family<AwsLabels, Counter>,
    /// Failed AWS API calls (after the SDK's own retries) by service, operation and status.
    pub aws_errors: Family<AwsErrorLabels, Counter>,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Self> {
        Self::labelled(&[])
    }

    /// A registry whose every series carries `labels` (the worker passes `application` and
    /// `stream`, so a fleet's metrics group by application without relabelling).
    pub fn labelled(labels: &[(&str, &str)]) -> Arc<Self> {
        let const_labels: Vec<(Cow<'static, str>, Cow<'static, str>)> = labels
            .iter()
            .map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string())))
            .collect();
        let mut registry =
            Registry::with_prefix_and_labels(PREFIX, const_labels.clone().into_iter());
        let m = Self {
            const_labels: Vec::new(),
            records_delivered: Counter::default(),
            bytes_delivered: Counter::default(),
            batches_delivered: Counter::default(),
            batch_retries: Counter::default(),
            records_to_destination: Family::default(),
            destination_errors: Counter::default(),
            app_call_timeouts: Counter::default(),
            app_health_checks: Counter::default(),
            bisections: Counter::default(),
            records_filtered: Counter::default(),
            partial_batch_failures: Counter::default(),
            lanes_busy: Gauge::default(),
            records_per_call: Histogram::new([1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0]),
            shards_expired: Counter::default(),
            read_paced_seconds: Counter::default(),
            read_throttled: Counter::default(),
            app_call_seconds: Family::new_with_constructor(|| Histogram::new(app_buckets())),
            app_call_errors: Family::default(),
            app_ready: Gauge::default(),
            millis_behind_latest: Family::default(),
            leases_held: Gauge::default(),
            lease_events: Family::default(),
            checkpoints_written: Counter::default(),
            checkpoints_refused: Counter::default(),
            checkpoint_errors: Counter::default(),
            aws_calls: Family::default(),
            aws_errors: Family::default(),
            registry: Registry::default(),
        };
        // Series that alerts name exist from the start at 0: `increase()` then sees the
        // first record sent to the destination, and a dashboard shows 0 instead of nothing.
        for reason in crate::pipeline::destination::Reason::ALL {
            m.records_to_destination
                .get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .inc_by(0);
        }
        let r = &mut registry;
        r.register(
            "records_delivered",
            "User records delivered to and acknowledged by the app",
            m.records_delivered.clone(),
        );
        r.register(
            "delivered_bytes",
            "Bytes of record data delivered to the app",
            m.bytes_delivered.clone(),
        );
        r.register(
            "batches_delivered",
            "Batches delivered to the app",
            m.batches_delivered.clone(),
        );
        r.register(
            "batch_retries",
            "Failed batch deliveries that were retried",
            m.batch_retries.clone(),
        );
        r.register(
            "records_to_destination",
            "Records sent to the on-failure destination, by reason",
            m.records_to_destination.clone(),
        );
        r.register(
            "destination_errors",
            "Failed sends to the on-failure destination (retried; the shard waits)",
            m.destination_errors.clone(),
        );
        r.register(
            "app_call_timeouts",
            "App calls cancelled at their deadline (--app-call-timeout-ms); each counts as failed",
            m.app_call_timeouts.clone(),
        );
        r.register(
            "app_health_checks",
            "gRPC health checks sent to the app (/readyz answers from one check a second at most)",
            m.app_health_checks.clone(),
        );
        r.register(
            "bisections",
            "Failing batches split in halves before their retry",
            m.bisections.clone(),
        );
        r.register(
            "records_filtered",
            "Records that matched no filter: not sent to the app, counted as processed",
            m.records_filtered.clone(),
        );
        r.register(
            "partial_batch_failures",
            "App answers that acknowledged only the records before failed_from",
            m.partial_batch_failures.clone(),
        );
        r.register(
            "records_per_call",
            "Records in each ProcessRecords call that carried records",
            m.records_per_call.clone(),
        );
        r.register(
            "lanes_busy",
            "Lanes (parallelism within a shard) with a call to the app in flight",
            m.lanes_busy.clone(),
        );
        r.register(
            "shards_expired",
            "Shards no longer in the stream (past its retention) treated as ended",
            m.shards_expired.clone(),
        );
        r.register(
            "read_paced_seconds",
            "Seconds shards waited before a GetRecords call to stay within the shard read limit (--read-kb-per-second), beyond the 5-calls-a-second spacing",
            m.read_paced_seconds.clone(),
        );
        r.register(
            "read_throttled",
            "GetRecords calls refused for a read limit (the shard's 5 calls or 2 MB a second, shared by every application reading it), retried with backoff",
            m.read_throttled.clone(),
        );
        r.register(
            "app_call_duration_seconds",
            "Latency of calls to the app by RPC",
            m.app_call_seconds.clone(),
        );
        r.register(
            "app_call_errors",
            "Failed calls to the app by RPC",
            m.app_call_errors.clone(),
        );
        r.register(
            "app_ready",
            "1 while the app answers its gRPC health check",
            m.app_ready.clone(),
        );
        r.register(
            "behind_latest_seconds",
            "How far behind the tip of the shard the last read was (seconds; Kinesis' MillisBehindLatest / 1000)",
            m.millis_behind_latest.clone(),
        );
        r.register("leases_held", "Shard leases held", m.leases_held.clone());
        r.register(
            "lease_events",
            "Lease events: acquired, lost, shutdown_requested, shard_ended",
            m.lease_events.clone(),
        );
        r.register(
            "checkpoints_written",
            "Checkpoints written to the lease table",
            m.checkpoints_written.clone(),
        );
        r.register(
            "checkpoints_refused",
            "Checkpoints asked for by the app and refused (beyond delivered, or backwards)",
            m.checkpoints_refused.clone(),
        );
        r.register(
            "checkpoint_errors",
            "Checkpoint writes that failed and will be retried",
            m.checkpoint_errors.clone(),
        );
        r.register(
            "aws_calls",
            "AWS API calls by service and operation",
            m.aws_calls.clone(),
        );
        r.register(
            "aws_errors",
            "Failed AWS API calls by service, operation and HTTP status",
            m.aws_errors.clone(),
        );
        Arc::new(Self {
            registry,
            const_labels,
            ..m
        })
    }

    /// The text exposition of every metric, with the lease table's request counters.
    pub fn encode(&self, table: Option<&TableCounters>) -> String {
        use prometheus_client::encoding::text::encode_registry;
        let mut out = String::new();
        let mut ok = encode_registry(&mut out, &self.registry).is_ok();
        if let Some(t) = table {
            let mut per_scrape =
                Registry::with_prefix_and_labels(PREFIX, self.const_labels.clone().into_iter());
            per_scrape.register_collector(Box::new(TableCollector::of(t)));
            ok &= encode_registry(&mut out, &per_scrape).is_ok();
        }
        if !ok {
            return String::new();
        }
        out.push_str("# EOF\n");
        out
    }
}

/// Every series' name starts with this.
const PREFIX: &str = "kinesis_worker";

/// The lease table's request counters, read at one scrape (they live in the table client,
/// which the metrics registry does not own).
#[derive(Debug)]
struct TableCollector {
    values: [(&'static str, &'static str, u64); 5],
}

impl TableCollector {
    fn of(t: &TableCounters) -> Self {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Self {
            values: [
                (
                    "lease_table_reads",
                    "Lease table read requests (Scan pages, DescribeTable).",
                    v(&t.reads),
                ),
                (
                    "lease_table_items_read",
                    "Items returned by lease table scans.",
                    v(&t.items_read),
                ),
                (
                    "lease_table_writes",
                    "Lease table write requests.",
                    v(&t.writes),
                ),
                (
                    "lease_table_heartbeat_writes",
                    "Heartbeat writes.",
                    v(&t.heartbeat_writes),
                ),
                (
                    "lease_table_bad_items",
                    "Lease table items skipped by scans because they cannot be read (each scan counts them).",
                    v(&t.bad_items),
                ),
            ],
        }
    }
}

impl Collector for TableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.values {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// An AWS call counter counting into these metrics.
    pub fn aws_counter(&self) -> AwsCallCounter {
        AwsCallCounter::into_families(self.aws_calls.clone(), self.aws_errors.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_the_table_counters_with_the_registry_labels() {
        // (prometheus-client does not escape label values; application and stream names
        // cannot hold a quote or a backslash.)
        let m = Metrics::labelled(&[("application", "orders-eu"), ("stream", "s")]);
        m.records_delivered.inc_by(3);
        let t = TableCounters::default();
        t.reads.fetch_add(7, Ordering::Relaxed);
        t.bad_items.fetch_add(2, Ordering::Relaxed);
        let page = m.encode(Some(&t));
        let labels = r#"{application="orders-eu",stream="s"}"#;
        for line in [
            format!("kinesis_worker_records_delivered_total{labels} 3"),
            format!("kinesis_worker_lease_table_reads_total{labels} 7"),
            format!("kinesis_worker_lease_table_bad_items_total{labels} 2"),
            format!("kinesis_worker_lease_table_writes_total{labels} 0"),
            "# TYPE kinesis_worker_lease_table_reads counter".to_string(),
            "# HELP kinesis_worker_lease_table_writes Lease table write requests.".to_string(),
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing in\n{page}");
        }
        assert_eq!(page.lines().last(), Some("# EOF"));
        assert_eq!(page.matches("# EOF").count(), 1);
        assert!(!m.encode(None).contains("lease_table"));
    }
}
