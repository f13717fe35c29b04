//! A rewind (`spec.rewind`): stop the workers, move the checkpoints back to a time, start the
//! workers again. The decisions are pure ([`pending`], [`check_time`], and
//! [`kinesis_lease::rewind::plan`] for what each lease becomes); [`step`] reads, calls them
//! and writes, one reconcile at a time.
//!
//! # Guarantees
//! - No checkpoint moves while a worker pod of the application exists: the Deployment is
//!   held at 0 replicas and the leases are rewritten only once the pods are gone (counted by
//!   their labels, terminating ones included — a Deployment stops counting a pod once it is
//!   terminating, while it is still flushing its checkpoints and releasing its leases).
//! - Only the application's own lease table is written (the one [`super::observe`] just
//!   claimed for this object), with the identity every other call for the object uses.
//! - Done once per `toTimestamp`: `status.rewind` records it (or why it was refused), so a
//!   spec applied again by GitOps does not rewind again; and so does the item
//!   `kinesis-operator:rewind` of the lease table ([`RewindRecord`], written after the last
//!   lease and before the status), so an object recreated without its status (restored from
//!   a backup, deleted and applied again by GitOps, moved to another cluster) does not rewind
//!   its table again either. A rewind interrupted (the operator restarted, a write refused)
//!   is planned again from the table as it then is.
//!
//! Cost: ListShards as every reconcile; DescribeStreamSummary once; per shard that has
//! progress (or a deleted finished lease) one GetShardIterator and usually one GetRecords of
//! one record, 16 at a time (10,000 shards: ≈ 20,000 calls, well inside each shard's 5 a
//! second); one consistent Scan; one conditional PutItem per lease moved back; one
//! consistent GetItem of the record per reconcile while a rewind is pending, one PutItem once
//! it is done.

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kinesis_lease::discovery::{ShardInfo, StreamRef, first_since};
use kinesis_lease::rewind::{RewindPlan, Rewrite, plan};
use kinesis_lease::table::LeaseTable;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{AwsClients, Context, Error, apply_workers, event, patch_status, stream_ref};
use crate::crd::{KinesisApplication, KinesisApplicationStatus, RewindSpec, RewindStatus, labels};
use crate::plan::{now, set_condition};

/// `status.rewind.phase` while the workers stop.
pub(super) const STOPPING: &str = "Stopping";
/// `status.rewind.phase` once the checkpoints were moved back.
pub(super) const REWOUND: &str = "Rewound";
/// `status.rewind.phase` for a time that cannot be rewound to.
pub(super) const REFUSED: &str = "Refused";

/// Calls on the stream (probes) and the table (writes) at once, per application.
const CONCURRENCY: usize = 16;

/// The rewind `app` asks for and has not had: `spec.rewind`, unless `status.rewind` says that
/// very time was rewound to or refused.
pub(super) fn pending(app: &KinesisApplication) -> Option<&RewindSpec> {
    let want = app.spec.rewind.as_ref()?;
    let had = app.status.as_ref().and_then(|s| s.rewind.as_ref());
    match had {
        Some(h) if h.to_timestamp == want.to_timestamp && h.phase != STOPPING => None,
        _ => Some(want),
    }
}

/// `leaseKey` of the item recording the last rewind done to a lease table.
pub const RECORD_KEY: &str = "kinesis-operator:rewind";

/// Attributes of the rewind record.
mod record_attr {
    /// The time rewound to, epoch milliseconds.
    pub const TO_MS: &str = "koRewoundToMs";
    /// The time rewound to, as spec.rewind.toTimestamp gave it.
    pub const TO: &str = "koRewoundTo";
    /// When the checkpoints were rewritten (RFC 3339).
    pub const AT: &str = "koRewoundAt";
    /// Shards moved back.
    pub const SHARDS: &str = "koRewoundShards";
    /// The object that asked (namespace/name, uid), for people.
    pub const BY: &str = "koRewoundBy";
    /// Its uid, compared.
    pub const UID: &str = "koRewoundUid";
}

/// The last rewind done to a lease table, as its item `kinesis-operator:rewind` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindRecord {
    /// The time rewound to, epoch milliseconds.
    pub to_ms: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Shards moved back.
    pub shards: i64,
    /// Who asked, for people.
    pub by: String,
    /// The uid of the object that asked.
    pub uid: String,
}

/// The item recording `r`, a rewind to `to` (as the spec gave it). It reads as a finished
/// lease to a worker that does not know the key (as the claim item does), and current
/// workers skip every `kinesis-operator:` key.
pub fn record_item(
    to: &str,
    r: &RewindRecord,
) -> HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let s = |v: &str| AttributeValue::S(v.to_string());
    HashMap::from([
        ("leaseKey".to_string(), s(RECORD_KEY)),
        ("checkpoint".to_string(), s("SHARD_END")),
        ("leaseCounter".to_string(), AttributeValue::N("0".into())),
        (record_attr::TO.to_string(), s(to)),
        (
            record_attr::TO_MS.to_string(),
            AttributeValue::N(r.to_ms.to_string()),
        ),
        (record_attr::AT.to_string(), s(&r.at)),
        (
            record_attr::SHARDS.to_string(),
            AttributeValue::N(r.shards.to_string()),
        ),
        (record_attr::BY.to_string(), s(&r.by)),
        (record_attr::UID.to_string(), s(&r.uid)),
    ])
}

/// What a rewind to `to` that the table already records becomes: the Event's reason and the
/// status message. Recorded by this very object (`uid`: its status write failed after the
/// record), it is this rewind done; by another (a former object of the same name, before a
/// restore), it is not done again.
pub fn recorded_outcome(r: &RewindRecord, to: &str, uid: Option<&str>) -> (&'static str, String) {
    let text = if uid == Some(r.uid.as_str()) {
        (
            "Rewound",
            format!(
                "{} shard(s) back to {to} at {} (as the lease table's item `{RECORD_KEY}` records)",
                r.shards, r.at
            ),
        )
    } else {
        (
            "RewindAlreadyDone",
            format!(
                "already rewound to {to} at {} ({} shard(s), asked by {}), as the lease table's item `{RECORD_KEY}` records: not again; to deliver again from that time, give a new toTimestamp (e.g. one millisecond later)",
                r.at, r.shards, r.by
            ),
        )
    };
    (text.0, crate::message::bounded(&text.1))
}

/// The most characters of a text attribute of the record taken into a message.
const RECORD_TEXT_MAX: usize = 200;

/// Reads a rewind record; `None` if the item is not one (no time). Its texts keep printable
/// ASCII only, cut to [`RECORD_TEXT_MAX`] characters.
pub fn parse_record(
    item: &HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> Option<RewindRecord> {
    // The table is writable by the tenant's worker role: what goes on into a status message
    // and an Event is cut short.
    let text = |k: &str| {
        item.get(k).and_then(|v| v.as_s().ok()).map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(RECORD_TEXT_MAX)
                .collect::<String>()
        })
    };
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
    };
    Some(RewindRecord {
        to_ms: number(record_attr::TO_MS)?,
        at: text(record_attr::AT).unwrap_or_default(),
        shards: number(record_attr::SHARDS).unwrap_or(0),
        by: text(record_attr::BY).unwrap_or_default(),
        uid: text(record_attr::UID).unwrap_or_default(),
    })
}

/// Was the table already rewound to `to_ms` (the same instant, however the time is written)?
/// Then the record, for the status message.
pub fn done_before(record: Option<&RewindRecord>, to_ms: i64) -> Option<&RewindRecord> {
    record.filter(|r| r.to_ms == to_ms)
}

/// The record of the last rewind of `table` (a consistent read: it was written just before a
/// status that may be lost).
async fn read_record(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Option<RewindRecord>, String> {
    let key = HashMap::from([(
        "leaseKey".to_string(),
        aws_sdk_dynamodb::types::AttributeValue::S(RECORD_KEY.into()),
    )]);
    let out = dynamodb
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| crate::message::aws_error(&format!("GetItem {RECORD_KEY}"), &e))?;
    Ok(out.item.as_ref().and_then(parse_record))
}

/// Writes the record of the rewind just done (unconditional: the last one wins).
async fn write_record(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    item: HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> Result<(), String> {
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .map_err(|e| crate::message::aws_error(&format!("PutItem {RECORD_KEY}"), &e))?;
    Ok(())
}

/// The time to rewind to, in epoch milliseconds, or why it is refused: not a time, in the
/// future, or older than the stream keeps records (`retention_hours`).
pub(super) fn check_time(to: &str, now_ms: i64, retention_hours: i64) -> Result<i64, String> {
    let ts: Timestamp = to.parse().map_err(|e| {
        format!("spec.rewind.toTimestamp {to:?} is not an RFC 3339 time ({e}); e.g. 2026-01-31T09:00:00Z")
    })?;
    let ms = ts.as_millisecond();
    if ms > now_ms {
        return Err(format!(
            "spec.rewind.toTimestamp {to} is in the future: give the time of the first record to deliver again"
        ));
    }
    let oldest = now_ms - retention_hours * 3_600_000;
    if ms < oldest {
        let oldest = Timestamp::from_millisecond(oldest)
            .map(|t| t.to_string())
            .unwrap_or_default();
        return Err(format!(
            "spec.rewind.toTimestamp {to} is beyond the stream's retention ({retention_hours} h): records that old are gone; give a time after {oldest}"
        ));
    }
    Ok(ms)
}

/// What the reconcile does after a rewind step.
pub(super) enum Step {
    /// The status is written; come back after this (the workers are stopping, or a call
    /// failed).
    Hold(Action),
    /// Done or refused (the status says which): go on as usual, workers back.
    Go,
}

/// The worker pods of `app` that exist, terminating ones included.
///
/// # Errors
/// The API server failed.
pub(super) async fn worker_pods(ctx: &Context, app: &KinesisApplication) -> Result<usize, Error> {
    let selector = labels(&app.name_any())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    // A Failed (evicted) or Succeeded pod runs nothing, and may stay until it is collected.
    let running = ListParams::default()
        .labels(&selector)
        .fields("status.phase!=Failed,status.phase!=Succeeded");
    Ok(pods.list_metadata(&running).await?.items.len())
}

/// What a stream and table read for the rewind gave.
pub(super) struct Inputs<'a> {
    /// The application's AWS clients.
    pub(super) aws: &'a AwsClients,
    /// Its lease table (claimed by this object in this reconcile).
    pub(super) table: &'a LeaseTable,
    /// The stream.
    pub(super) stream: StreamRef,
    /// The stream's shards.
    pub(super) shards: &'a [ShardInfo],
    /// The fan-out consumer, for the Deployment held at 0.
    pub(super) consumer_arn: Option<&'a str>,
}

/// One step of the rewind `want` of `app`; records it in `status` (written here when it
/// holds the reconcile).
///
/// # Errors
/// The API server failed.
pub(super) async fn step(
    app: &KinesisApplication,
    ctx: &Context,
    want: &RewindSpec,
    input: Inputs<'_>,
    status: &mut KinesisApplicationStatus,
) -> Result<Step, Error> {
    let to = want.to_timestamp.clone();
    let generation = app.metadata.generation;
    let was_stopping = status
        .rewind
        .as_ref()
        .is_some_and(|r| r.to_timestamp == to && r.phase == STOPPING);
    let retention = match retention_hours(input.aws, app).await {
        Ok(h) => h,
        Err(e) => {
            let message = format!("reading the stream's retention failed ({e}); retried");
            return failing(ctx, app, status, &to, message).await;
        }
    };
    let to_ms = match check_time(&to, Timestamp::now().as_millisecond(), retention) {
        Ok(ms) => ms,
        Err(message) => {
            status.rewind = Some(RewindStatus {
                to_timestamp: to,
                phase: REFUSED.into(),
                message: message.clone(),
                shards_rewound: None,
                finished_at: None,
            });
            event(ctx, app, EventType::Warning, "RewindRefused", message).await;
            return Ok(Step::Go);
        }
    };
    // Done already to this table (the status of an earlier object, now lost, said so): not
    // again, and nothing stops.
    let table_name = input.table.name().to_string();
    match read_record(&input.aws.dynamodb, &table_name).await {
        Ok(record) => {
            if let Some(r) = done_before(record.as_ref(), to_ms) {
                let (reason, message) = recorded_outcome(r, &to, app.uid().as_deref());
                status.rewind = Some(RewindStatus {
                    to_timestamp: to,
                    phase: REWOUND.into(),
                    message: message.clone(),
                    shards_rewound: i32::try_from(r.shards).ok(),
                    finished_at: Some(r.at.clone()),
                });
                patch_status(ctx, app, status).await?;
                event(ctx, app, EventType::Normal, reason, message).await;
                return Ok(Step::Go);
            }
        }
        Err(e) => {
            let message = format!("reading the lease table's rewind record failed ({e}); retried");
            return failing(ctx, app, status, &to, message).await;
        }
    }
    // The fleet stops first, and stays stopped until every pod is gone.
    apply_workers(app, ctx, 0, input.consumer_arn).await?;
    let pods = worker_pods(ctx, app).await?;
    if pods > 0 {
        if !was_stopping {
            event(
                ctx,
                app,
                EventType::Normal,
                "Rewinding",
                format!("rewinding to {to}: stopping {pods} worker pod(s) first"),
            )
            .await;
        }
        set_condition(
            &mut status.conditions,
            "Progressing",
            true,
            "Rewinding",
            format!("rewinding to {to}: {pods} worker pod(s) still stopping"),
            generation,
        );
        return hold(
            ctx,
            app,
            status,
            &to,
            format!("{pods} worker pod(s) stopping (each writes its last checkpoints and releases its leases); no checkpoint moves before they are gone"),
            Duration::from_secs(2),
        )
        .await;
    }
    let dynamodb = input.aws.dynamodb.clone();
    let done = match rewrite(input, to_ms).await {
        Ok(p) => p,
        Err(Failed::Retry(e)) => {
            return failing(ctx, app, status, &to, format!("{e}; retried")).await;
        }
        Err(Failed::Refuse(message)) => {
            status.rewind = Some(RewindStatus {
                to_timestamp: to,
                phase: REFUSED.into(),
                message: message.clone(),
                shards_rewound: None,
                finished_at: None,
            });
            event(ctx, app, EventType::Warning, "RewindRefused", message).await;
            return Ok(Step::Go);
        }
    };
    let message = format!(
        "{} shard(s) back to {to} ({} lease(s) made again, {} finished parent(s) kept finished), {} left as they were (nothing since then, or not processed that far)",
        done.rewound.len(),
        done.recreated,
        done.finished_parents,
        done.untouched
    );
    let finished_at = now();
    // Recorded in the table before the status: an object that loses its status does not
    // rewind the table again. A failed write plans the rewind again (the same end).
    let record = RewindRecord {
        to_ms,
        at: finished_at.clone(),
        shards: i64::try_from(done.rewound.len()).unwrap_or(i64::MAX),
        by: format!(
            "KinesisApplication {}/{}",
            app.namespace().unwrap_or_default(),
            app.name_any()
        ),
        uid: app.uid().unwrap_or_default(),
    };
    if let Err(e) = write_record(&dynamodb, &table_name, record_item(&to, &record)).await {
        return failing(
            ctx,
            app,
            status,
            &to,
            format!("recording the rewind in the lease table failed ({e}); retried"),
        )
        .await;
    }
    status.rewind = Some(RewindStatus {
        to_timestamp: to,
        phase: REWOUND.into(),
        message: message.clone(),
        shards_rewound: Some(i32::try_from(done.rewound.len()).unwrap_or(i32::MAX)),
        finished_at: Some(finished_at),
    });
    // Recorded before the workers start: a reconcile that fails after this does not rewind
    // again.
    patch_status(ctx, app, status).await?;
    event(
        ctx,
        app,
        EventType::Normal,
        "Rewound",
        format!("{message}; starting the workers"),
    )
    .await;
    Ok(Step::Go)
}

/// A rewind step that failed: kept Stopping (the workers held at 0) and retried in 10 s; a
/// Warning Event `RewindFailing` when the reason is a new one (AccessDenied, throttling…),
/// so a rewind that cannot finish is seen (remove spec.rewind to start the workers again
/// with nothing moved).
async fn failing(
    ctx: &Context,
    app: &KinesisApplication,
    status: &mut KinesisApplicationStatus,
    to: &str,
    message: String,
) -> Result<Step, Error> {
    let said = status
        .rewind
        .as_ref()
        .is_some_and(|r| r.to_timestamp == to && r.message == message);
    if !said {
        event(
            ctx,
            app,
            EventType::Warning,
            "RewindFailing",
            format!(
                "{message}; the workers stay stopped until it succeeds or spec.rewind is removed"
            ),
        )
        .await;
    }
    hold(ctx, app, status, to, message, Duration::from_secs(10)).await
}

/// Why a rewrite did not happen.
enum Failed {
    /// A call failed or a lease changed: try again.
    Retry(String),
    /// It cannot be done as the table is: refused.
    Refuse(String),
}

/// Records a rewind still stopping (or retrying) with `message`, writes the status and
/// holds the reconcile for `after`.
async fn hold(
    ctx: &Context,
    app: &KinesisApplication,
    status: &mut KinesisApplicationStatus,
    to: &str,
    message: String,
    after: Duration,
) -> Result<Step, Error> {
    status.rewind = Some(RewindStatus {
        to_timestamp: to.to_string(),
        phase: STOPPING.into(),
        message,
        shards_rewound: None,
        finished_at: None,
    });
    patch_status(ctx, app, status).await?;
    Ok(Step::Hold(Action::requeue(after)))
}

/// The stream's retention in hours (DescribeStreamSummary).
async fn retention_hours(aws: &AwsClients, app: &KinesisApplication) -> Result<i64, String> {
    let req = aws.kinesis.describe_stream_summary();
    let req = match stream_ref(app) {
        StreamRef::Name(n) => req.stream_name(n),
        StreamRef::Arn(a) => req.stream_arn(a),
    };
    let out = req
        .send()
        .await
        .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string())?;
    out.stream_description_summary()
        .map(|s| i64::from(s.retention_period_hours()))
        .ok_or_else(|| "DescribeStreamSummary answered without a summary".to_string())
}

/// Reads the table and the stream, plans, and writes the plan: finished parents' `SHARD_END`
/// leases first (so that nothing ever finds a rewound child without them), then the rest.
async fn rewrite(input: Inputs<'_>, to_ms: i64) -> Result<RewindPlan, Failed> {
    // Consistent (the workers' last checkpoints, written as they stopped), and bounded as
    // the status scan is (a tenant's worker role can fill its own table with junk).
    let (snapshot, report) = input
        .table
        .scan_bounded(true, &super::STATUS_SCAN)
        .await
        .map_err(|e| Failed::Retry(format!("scanning the lease table failed ({e})")))?;
    if report.truncated || report.oversized > 0 {
        return Err(Failed::Refuse(format!(
            "the lease table holds more than the operator reads for a rewind ({} pages, {} bytes read, {} items over 128 KB): refused, nothing moved",
            report.pages, report.bytes, report.oversized
        )));
    }
    // Owned values in the futures: the reconcile's future must be Send for any lifetime.
    let probe: Vec<String> = kinesis_lease::rewind::to_probe(input.shards, &snapshot.leases)
        .into_iter()
        .map(str::to_string)
        .collect();
    let firsts: HashMap<String, Option<kinesis_lease::checkpoint::SequenceNumber>> =
        stream::iter(probe)
            .map(|shard: String| {
                let kinesis = input.aws.kinesis.clone();
                let stream = input.stream.clone();
                async move {
                    first_since(&kinesis, &stream, &shard, to_ms, 20)
                        .await
                        .map(|first| (shard, first))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
            .map_err(|e| Failed::Retry(format!("reading the stream at the time failed ({e})")))?;
    let done = plan(input.shards, &firsts, &snapshot.leases, to_ms);
    // Parents before children: each depth lands before the next starts.
    let deepest = done.rewrites.iter().map(|r| r.depth).max().unwrap_or(0);
    for depth in 0..=deepest {
        let batch: Vec<Rewrite> = done
            .rewrites
            .iter()
            .filter(|r| r.depth == depth)
            .cloned()
            .collect();
        stream::iter(batch)
            .map(|r: Rewrite| {
                let table = input.table.clone();
                async move {
                    match table.rewrite_lease(&r.lease, r.seen).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(Failed::Retry(format!(
                            "the lease of {} changed during the rewind (a worker still running against this table?)",
                            r.lease.shard_id
                        ))),
                        Err(e) => Err(Failed::Retry(format!(
                            "writing the lease of {} failed ({e})",
                            r.lease.shard_id
                        ))),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn the_table_s_record_says_a_rewind_to_the_same_instant_was_done() {
        let to_ms = NOW - 60_000;
        let written = RewindRecord {
            to_ms,
            at: "2027-01-15T08:30:00Z".into(),
            shards: 6,
            by: "KinesisApplication ns/app".into(),
            uid: "u1".into(),
        };
        let item = record_item("2027-01-15T07:59:00Z", &written);
        let record = parse_record(&item);
        assert_eq!(record.as_ref(), Some(&written));
        // The same instant, whatever its spelling in the spec: done.
        assert!(done_before(record.as_ref(), to_ms).is_some());
        // Another time (one millisecond later): a new rewind.
        assert!(done_before(record.as_ref(), to_ms + 1).is_none());
        assert!(done_before(None, to_ms).is_none());
        // Reads as a finished lease to a worker that does not know the key, and is one of ours.
        assert_eq!(
            item.get("checkpoint")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str),
            Some("SHARD_END")
        );
        assert!(RECORD_KEY.starts_with(kinesis_lease::model::RESERVED_KEY_PREFIX));
        // A text the tenant's role wrote into the table is cut short, on one line, in
        // ASCII (an Event's note is at most 1 KiB) before any message.
        let mut long = item.clone();
        long.insert(
            "koRewoundBy".into(),
            aws_sdk_dynamodb::types::AttributeValue::S(format!(
                "a\nb\u{1F600}{}",
                "x".repeat(300_000)
            )),
        );
        let by = parse_record(&long).map(|r| r.by).unwrap_or_default();
        assert_eq!(by.len(), RECORD_TEXT_MAX);
        assert!(by.starts_with("abx"), "{by:?}");
        // Recorded by another object (before a restore): not again. By this very one (its
        // status write failed after the record): done, as a rewind.
        let (reason, message) = recorded_outcome(&written, "2027-01-15T07:59:00Z", Some("u2"));
        assert_eq!(reason, "RewindAlreadyDone");
        assert!(
            message.starts_with("already rewound to 2027-01-15T07:59:00Z"),
            "{message}"
        );
        assert!(message.contains("one millisecond later"), "{message}");
        let (reason, message) = recorded_outcome(&written, "2027-01-15T07:59:00Z", Some("u1"));
        assert_eq!(reason, "Rewound");
        assert!(message.starts_with("6 shard(s) back to"), "{message}");
        assert_eq!(recorded_outcome(&written, "t", None).0, "RewindAlreadyDone");
        // An item that is not a record (no time) is none.
        let mut other = item.clone();
        other.remove("koRewoundToMs");
        assert_eq!(parse_record(&other), None);
    }

    #[test]
    fn a_time_in_the_future_or_beyond_retention_is_refused_with_the_fix() {
        let iso = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        assert_eq!(check_time(&iso(NOW - 60_000), NOW, 24), Ok(NOW - 60_000));
        let refused = |to: &str, hours: i64| check_time(to, NOW, hours).err().unwrap_or_default();
        let future = refused(&iso(NOW + 1_000), 24);
        assert!(future.contains("in the future"), "{future}");
        let old = refused(&iso(NOW - 25 * 3_600_000), 24);
        assert!(
            old.contains("beyond the stream's retention (24 h)"),
            "{old}"
        );
        assert!(old.contains("give a time after"), "{old}");
        // A week's retention keeps it.
        assert!(check_time(&iso(NOW - 25 * 3_600_000), NOW, 168).is_ok());
        let bad = refused("yesterday", 24);
        assert!(bad.contains("not an RFC 3339 time"), "{bad}");
    }
}
