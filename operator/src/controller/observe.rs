//! What a reconcile reads before it decides: the stream, the lease table and its claim, the
//! fan-out consumer and the table's leases. [`observe`] is a thin shell of calls; what each
//! answer means — the condition a failure fails ([`Problem`]), what a success records in the
//! status — is decided by the pure functions below it.

use kinesis_lease::discovery::{DiscoveryError, ShardInfo, list_shards};
use kinesis_lease::model::TableSnapshot;
use kinesis_lease::table::{LeaseError, LeaseTable, ScanReport};

use super::{
    AwsClients, Context, Error, Refusal, STATUS_SCAN, patch_status, set_condition, set_finalizer,
    stream_arn_of, stream_ref,
};
use crate::claims::{self, ClaimOutcome, Consumer};
use crate::crd::{ConsumerMode, FanOutConsumer, KinesisApplication, KinesisApplicationStatus};
use crate::deployment::region;
use crate::ownership::{Claim, Owner};
use crate::validate::application_name;

/// What a reconcile read before deciding.
#[derive(Debug)]
pub(super) struct Observed {
    /// The stream's shards.
    pub(super) shards: Vec<ShardInfo>,
    /// The lease table (eventually consistent; `None` if the scan failed: the status then
    /// lists no owners or lag, the size is the same).
    pub(super) snapshot: Option<TableSnapshot>,
    /// The fan-out consumer's ARN, in fan-out mode.
    pub(super) consumer_arn: Option<String>,
    /// The AWS clients of this application.
    pub(super) aws: AwsClients,
    /// Its lease table, claimed by this object.
    pub(super) table: LeaseTable,
}

/// A stream or table that cannot be used: the condition it fails, its reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    /// The condition it fails (`Ready`, `StreamReady` or `LeaseTableReady`).
    pub(super) condition: &'static str,
    /// The condition's (and the Warning Event's) reason.
    pub(super) reason: &'static str,
    /// What is wrong and what to do.
    pub(super) message: String,
}

impl Problem {
    pub(super) fn new(condition: &'static str, reason: &'static str, message: String) -> Self {
        Self {
            condition,
            reason,
            message,
        }
    }
}

/// Why [`observe`] stopped before it had read everything.
#[derive(Debug)]
pub(super) enum Stop {
    /// The stream or table cannot be used: reported in the status (`degrade`), requeued with
    /// backoff; the reconcile itself did its job.
    Problem(Problem),
    /// The API server failed: the reconcile fails (and `error_policy` retries it).
    Failed(Error),
}

impl From<Problem> for Stop {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// What the messages of one application name: its stream, the stream's region, its lease
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Names {
    /// The stream, by name or ARN as the spec gives it.
    pub(super) stream: String,
    /// The region, or "the operator's region".
    pub(super) region: String,
    /// The lease table (the application name).
    pub(super) table: String,
}

impl Names {
    /// The names of `app` (`region`: the stream's, if the spec or settings say one).
    pub(super) fn of(app: &KinesisApplication, region: Option<String>) -> Self {
        Self {
            stream: stream_ref(app).to_string(),
            region: region.unwrap_or_else(|| "the operator's region".into()),
            table: application_name(app),
        }
    }
}

/// Reads the stream, opens (first time: creates) and claims the lease table, registers the
/// fan-out consumer, and scans the table; records in `status` what it found. The finalizer is
/// added once the claim is this object's.
///
/// Calls per reconcile: ListShards (a page per 1,000 shards), GetItem (the claim, eventually
/// consistent), a Scan (eventually consistent: ≈ 1 read unit per 8 KB of leases), and, on an
/// application's first reconcile after the operator starts, DescribeTable.
///
/// # Errors
/// [`Stop::Problem`] when the stream, table or consumer cannot be used (nothing after it is
/// read); [`Stop::Failed`] when the API server fails.
pub(super) async fn observe(
    app: &KinesisApplication,
    ctx: &Context,
    status: &mut KinesisApplicationStatus,
) -> Result<Observed, Stop> {
    let generation = app.metadata.generation;
    let names = Names::of(app, region(app, &ctx.settings));
    status.application_name = Some(names.table.clone());
    // No call at all: an endpoint not allowed (`apply` refused such a spec already), or no
    // identity for this namespace.
    let aws = ctx.aws(app).await.map_err(refused)?;

    // 2. The stream.
    let shards = list_shards(&aws.kinesis, &stream_ref(app))
        .await
        .map_err(|e| {
            // A stream gone (or recreated: its consumers are new ones) is described again.
            ctx.forget_consumer(app);
            stream_problem(&e, &names)
        })?;
    set_condition(
        &mut status.conditions,
        "StreamReady",
        true,
        "StreamFound",
        stream_found(&names, shards.len()),
        generation,
    );

    // 3. The lease table (the operator creates it: workers need no CreateTable permission),
    // tagged as this object's, and claimed by this object before anything else uses it.
    let owner = ctx.owner(app);
    let table = ctx
        .table(app, &aws, &names.table, &owner)
        .await
        .map_err(|e| table_problem(&e, &names))?;
    let claim = claim_table(app, ctx, &aws, &names, &owner).await?;
    set_condition(
        &mut status.conditions,
        "LeaseTableReady",
        true,
        "TableActive",
        table_claimed(&names),
        generation,
    );

    // The fan-out consumer: registered once, here, not by every pod.
    let consumer_arn = if app.spec.consumer.mode == ConsumerMode::EnhancedFanOut {
        Some(fan_out_consumer(app, ctx, &aws, &names, &claim, status).await?)
    } else {
        status.consumer = None;
        None
    };
    let snapshot = status_scan(app, ctx, &table, &names.table).await;
    Ok(Observed {
        shards,
        snapshot,
        consumer_arn,
        aws,
        table,
    })
}

/// Claims the lease table for `owner` (then adds the finalizer: from now on there is
/// something to clean up).
async fn claim_table(
    app: &KinesisApplication,
    ctx: &Context,
    aws: &AwsClients,
    names: &Names,
    owner: &Owner,
) -> Result<Claim, Stop> {
    match claims::claim(&aws.dynamodb, &names.table, owner).await {
        Ok(ClaimOutcome::Ours(c)) => {
            set_finalizer(ctx, app, true).await?;
            Ok(c)
        }
        Ok(ClaimOutcome::Theirs(other)) => Err(claim_conflict(&other.owner, owner, names).into()),
        Err(detail) => {
            // Perhaps the table is gone: the next reconcile describes it again.
            ctx.forget_table(app, &names.table);
            Err(claim_failed(&detail, names).into())
        }
    }
}

/// Finds or registers the fan-out consumer and records it in `status` (written at once when
/// this reconcile registered it); returns its ARN.
async fn fan_out_consumer(
    app: &KinesisApplication,
    ctx: &Context,
    aws: &AwsClients,
    names: &Names,
    claim: &Claim,
    status: &mut KinesisApplicationStatus,
) -> Result<String, Stop> {
    // Described (DescribeStreamSummary, DescribeStreamConsumer) only every
    // `CONSUMER_RECHECK`, not on every reconcile.
    let consumer = match ctx.known_consumer(app, &names.table) {
        Some(found) => Ok(found),
        None => {
            let described = match stream_arn_of(app, &aws.kinesis).await {
                Ok(None) => Err(stream_gone(names)),
                Ok(Some(arn)) => {
                    claims::ensure_consumer(
                        &aws.kinesis,
                        &aws.dynamodb,
                        &names.table,
                        claim,
                        &arn,
                        &names.table,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            // Dated by this description: a consumer taken from memory does not renew it.
            if let Ok(found) = &described {
                ctx.saw_consumer(app, &names.table, found);
            }
            described
        }
    };
    let found = consumer.map_err(|detail| {
        ctx.forget_consumer(app);
        consumer_problem(&detail, names)
    })?;
    let (record, write_now) = consumer_record(status.consumer.as_ref(), &names.table, &found);
    status.consumer = Some(record);
    if write_now {
        patch_status(ctx, app, status).await?;
    }
    Ok(found.arn)
}

/// Scans the lease table for the status: an eventually consistent read (half the cost), of
/// the attributes it shows, within bounds (a tenant's worker role can write the table).
/// `None` (no owners or lag in the status) when the scan fails or stops at a bound.
async fn status_scan(
    app: &KinesisApplication,
    ctx: &Context,
    table: &LeaseTable,
    name: &str,
) -> Option<TableSnapshot> {
    match table.scan_bounded(false, &STATUS_SCAN).await {
        Ok((s, report)) if complete(&report) => Some(s),
        Ok((_, report)) => {
            tracing::warn!(table = %name, pages = report.pages, bytes = report.bytes, oversized = report.oversized, "the lease table is larger than the status scan reads: no shard owners or lag in the status");
            ctx.metrics.failed("StatusScanBounded");
            None
        }
        Err(e) => {
            tracing::warn!(table = %name, error = %e, "scanning the lease table for the status failed");
            ctx.forget_table(app, name);
            None
        }
    }
}

// The decisions (pure).

/// A problem reaching the stream or the table, as a condition reason, from the error's text.
pub(super) fn aws_problem(detail: &str) -> &'static str {
    if detail.contains("AssumeRole failed") || crate::message::is_credentials_failure(detail) {
        "AssumeRoleFailed"
    } else if detail.contains("AccessDenied")
        || detail.contains("access denied")
        || detail.contains("not authorized")
    {
        "AccessDenied"
    } else if detail.contains("Throttl") || detail.contains("LimitExceeded") {
        "Throttled"
    } else {
        "Unavailable"
    }
}

/// No AWS call may be made for the application: `Ready` fails with the refusal's reason.
fn refused(r: Refusal) -> Problem {
    Problem::new("Ready", r.reason, r.message)
}

/// Listing the stream's shards failed.
fn stream_problem(e: &DiscoveryError, names: &Names) -> Problem {
    let Names { stream, region, .. } = names;
    let (reason, message) = match e {
        DiscoveryError::StreamNotFound { .. } => (
            "StreamNotFound",
            format!(
                "stream `{stream}` not found in {region}: create it, or fix spec.stream.name / spec.stream.arn / spec.stream.region"
            ),
        ),
        DiscoveryError::Kinesis { detail, .. } => (
            aws_problem(detail),
            format!(
                "reading stream `{stream}` in {region} failed: {}",
                crate::message::readable(detail)
            ),
        ),
    };
    Problem::new("StreamReady", reason, message)
}

/// The `StreamReady=True` message.
fn stream_found(names: &Names, shards: usize) -> String {
    format!("stream `{}` has {shards} shards", names.stream)
}

/// Opening (or creating) the lease table failed.
fn table_problem(e: &LeaseError, names: &Names) -> Problem {
    let Names { region, table, .. } = names;
    let (reason, message) = match e {
        // Not the table's key schema: it may be another team's table.
        LeaseError::WrongKeySchema { .. } => (
            "WrongKeySchema",
            format!(
                "table `{table}` in {region} exists and is not a lease table (its key is not `leaseKey`): choose another spec.applicationName"
            ),
        ),
        _ => (
            match e {
                LeaseError::AccessDenied { .. } => "AccessDenied",
                _ => aws_problem(&e.to_string()),
            },
            format!(
                "lease table `{table}` in {region}: {}",
                crate::message::readable(&e.to_string())
            ),
        ),
    };
    Problem::new("LeaseTableReady", reason, message)
}

/// Another object holds the lease table's claim. Who is said only within the namespace (and
/// cluster): another tenant's objects are none of this one's business.
fn claim_conflict(holder: &Owner, owner: &Owner, names: &Names) -> Problem {
    let holder = if holder.namespace == owner.namespace && holder.cluster == owner.cluster {
        holder.to_string()
    } else {
        "another application".to_string()
    };
    Problem::new(
        "LeaseTableReady",
        "LeaseTableConflict",
        format!(
            "lease table `{}` is claimed by {holder}: two applications must not share a lease table (their checkpoints would mix); set spec.applicationName to a name of this application's own",
            names.table
        ),
    )
}

/// Reading or writing the claim failed.
fn claim_failed(detail: &str, names: &Names) -> Problem {
    Problem::new(
        "LeaseTableReady",
        aws_problem(detail),
        format!(
            "claiming lease table `{}` in {}: {}",
            names.table,
            names.region,
            crate::message::readable(detail)
        ),
    )
}

/// The `LeaseTableReady=True` message.
fn table_claimed(names: &Names) -> String {
    format!(
        "lease table `{}` is active and claimed by this application",
        names.table
    )
}

/// Why there is no fan-out consumer: the stream (named) does not exist any more.
fn stream_gone(names: &Names) -> String {
    format!(
        "stream `{}` not found: create it, or fix spec.stream",
        names.stream
    )
}

/// Finding or registering the fan-out consumer failed.
fn consumer_problem(detail: &str, names: &Names) -> Problem {
    Problem::new(
        "StreamReady",
        aws_problem(detail),
        format!(
            "fan-out consumer `{}` of stream `{}`: {}",
            names.table,
            names.stream,
            crate::message::readable(detail)
        ),
    )
}

/// The status record of the fan-out consumer `found`, and whether to write it at once.
///
/// It is the operator's when this reconcile registered it, or when `previous` (the status,
/// the only record tenants cannot write) already says so for the same ARN. Registered just
/// now and not recorded yet: written at once, so a failure later in the reconcile cannot
/// leave a consumer the status does not know as ours.
fn consumer_record(
    previous: Option<&FanOutConsumer>,
    name: &str,
    found: &Consumer,
) -> (FanOutConsumer, bool) {
    let recorded = previous.is_some_and(|p| p.arn == found.arn && p.registered_by_operator);
    (
        FanOutConsumer {
            name: name.to_string(),
            arn: found.arn.clone(),
            registered_by_operator: found.registered_by_operator || recorded,
        },
        found.registered_by_operator && !recorded,
    )
}

/// A status scan that read everything (no bound stopped it).
fn complete(report: &ScanReport) -> bool {
    !report.truncated
}

#[cfg(test)]
mod tests;
