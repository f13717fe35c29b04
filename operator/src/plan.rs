//! What a reconcile decides once it has read the stream and the lease table (pure): how many
//! workers, and the status and Events that report it. The reconciler ([`crate::controller`])
//! reads, calls these, and writes what they return.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kinesis_lease::checkpoint::Checkpoint;
use kinesis_lease::discovery::ShardInfo;
use kinesis_lease::model::{Lease, TableSnapshot};
use kinesis_lease::status::human_lag;

use crate::crd::{
    Condition, KinesisApplication, KinesisApplicationSpec, KinesisApplicationStatus, ScalingMode,
    ShardCounts, WorkerCounts, labels,
};
use crate::report::{SHARD_STATUS_LIMIT, shard_report};
use crate::sizing::{
    LagInputs, LagMove, LagScaling, Replicas, SIZED_ANNOTATION, desired_workers, lag_workers,
    replicas,
};

/// The current time as the status writes it (RFC 3339).
pub fn now() -> String {
    DateTime::from(SystemTime::now())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

/// Sets condition `type_` in `conditions` as of now, keeping its transition time when the
/// status did not change (see [`set_condition_at`]).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    set_condition_at(
        conditions,
        type_,
        ok,
        reason,
        message,
        generation,
        Time(Timestamp::now()),
    );
}

/// Sets condition `type_` in `conditions` (pure; `metav1.Condition` semantics, one condition
/// per type): status `True` when `ok`, else `False`; reason, message and generation replaced;
/// `lastTransitionTime` becomes `now` for a new condition or one whose status changes, and
/// is kept otherwise.
pub fn set_condition_at(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) {
    let status = if ok { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

/// Whether `conditions` already say `type_` with this `reason` and `message` (then the
/// Event was published when it was set, and is not again).
pub fn already_reported(
    conditions: &[Condition],
    type_: &str,
    reason: &str,
    message: &str,
) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.reason == reason && c.message == message)
}

/// The stream's shards as the sizing sees them, and the worker count decided from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Open shards (what the workers are sized to).
    pub open: i32,
    /// Closed shards whose lease has not reached SHARD_END yet.
    pub draining: i32,
    /// Every shard the stream lists.
    pub total: i32,
    /// The worker count and what to write for it.
    pub replicas: Replicas,
    /// With `scaling.mode: Lag`: the lag decision.
    pub lag: Option<LagScaling>,
}

/// An RFC 3339 time of the status as epoch seconds.
fn epoch_s(t: Option<&String>) -> Option<i64> {
    t?.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// Epoch seconds as the status writes times.
fn rfc3339(s: i64) -> Option<String> {
    Timestamp::from_second(s).ok().map(|t| t.to_string())
}

/// Sizes the workers of `app` to `shards` (`snapshot` tells which closed shards are still
/// draining, and the owners' lag; without it none are counted), as of now.
pub fn size(
    app: &KinesisApplication,
    shards: &[ShardInfo],
    snapshot: Option<&TableSnapshot>,
) -> Sizing {
    size_at(app, shards, snapshot, Timestamp::now().as_second())
}

/// [`size`] at `now_s` (epoch seconds).
pub fn size_at(
    app: &KinesisApplication,
    shards: &[ShardInfo],
    snapshot: Option<&TableSnapshot>,
    now_s: i64,
) -> Sizing {
    let open = shards.iter().filter(|s| !s.closed).count() as i32;
    let leases: HashMap<&str, &Lease> = snapshot
        .iter()
        .flat_map(|s| s.leases.iter())
        .map(|l| (l.shard_id.as_str(), l))
        .collect();
    let draining = shards
        .iter()
        .filter(|s| s.closed)
        .filter(|s| {
            leases
                .get(s.shard_id.as_str())
                .is_some_and(|l| l.checkpoint != Checkpoint::ShardEnd)
        })
        .count() as i32;
    let packed = desired_workers(
        &KinesisApplicationSpec {
            replicas: None,
            ..app.spec.clone()
        },
        open,
    );
    let scaling = &app.spec.scaling;
    let lag = (scaling.mode == Some(ScalingMode::Lag)).then(|| {
        let previous = app.status.as_ref();
        lag_workers(&LagInputs {
            current: previous
                .and_then(|s| s.workers.as_ref())
                .map(|w| w.desired)
                .filter(|d| *d > 0),
            packed,
            spread: scaling.max_workers.map_or(open, |m| open.min(m.max(1))),
            // A shard that does not move (its app keeps failing its records, or the
            // destination refuses them) is left out: more workers would not move it, only
            // move leases.
            max_lag_ms: snapshot
                .map(|snap| kinesis_lease::status::shard_views(shards, snap))
                .into_iter()
                .flatten()
                .filter(|v| !v.stalled && !v.failing)
                .filter_map(|v| v.lag_ms)
                .max(),
            target_ms: i64::from(scaling.target_lag_seconds.unwrap_or(60)) * 1000,
            stabilization_s: i64::from(scaling.scale_down_stabilization_seconds.unwrap_or(300)),
            now_s,
            last_scale_s: epoch_s(previous.and_then(|s| s.last_scale_time.as_ref())),
            low_since_s: epoch_s(previous.and_then(|s| s.lag_low_since.as_ref())),
        })
    });
    let for_shards = lag.map_or(packed, |l| l.desired);
    let sized = app
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIZED_ANNOTATION))
        .and_then(|v| v.parse::<i32>().ok());
    let mut replicas = replicas(app.spec.replicas, sized, for_shards);
    // Paused: no pod, whoever set the count (spec.replicas keeps it for the resume).
    if app.spec.paused {
        replicas.desired = 0;
    }
    Sizing {
        open,
        draining,
        total: shards.len() as i32,
        replicas,
        lag,
    }
}

/// What the applied Deployment reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ready pods.
    pub ready: i32,
    /// Pods (any state).
    pub replicas: i32,
}

/// A Normal Event to publish: its reason and note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's note.
    pub text: String,
    /// A Warning Event (something needs the user), else Normal.
    pub warning: bool,
}

/// What a healthy reconcile reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// The status to write.
    pub status: KinesisApplicationStatus,
    /// Events for what changed since the previous status.
    pub notes: Vec<Note>,
    /// The largest lag of any shard (for the metrics).
    pub max_lag_ms: Option<i64>,
}

/// The `DeliveryStalled` message: which shards wait for the on-failure destination (at most
/// five named), and what to check.
fn stalled_message(stalled: &[&str]) -> String {
    if stalled.is_empty() {
        return "no shard waits for the on-failure destination".into();
    }
    let named: Vec<&str> = stalled.iter().take(5).copied().collect();
    let more = stalled.len().saturating_sub(named.len());
    format!(
        "{} shard(s) wait for the on-failure destination, which refuses their records: {}{}; the workers retry and do not move past them (check spec.delivery.onFailureDestination exists and the pods' role may sqs:SendMessage / kinesis:PutRecord to it; kinesis_worker_destination_errors_total)",
        stalled.len(),
        named.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// The `DeliveryStalled` message for shards whose app keeps failing their records (at most
/// five named), and what to check.
fn failing_message(failing: &[&str]) -> String {
    let named: Vec<&str> = failing.iter().take(5).copied().collect();
    let more = failing.len().saturating_sub(named.len());
    format!(
        "{} shard(s) do not move: the app failed {} calls in a row without taking a record and the workers retry: {}{}; look for the error in the app's log (or the worker's `app ProcessRecords failed`) and fix the app (without spec.delivery.onFailureDestination nothing is ever passed over; with one, maxAttempts decides when); their lag is left out of lag scaling",
        failing.len(),
        kinesis_lease::model::FAILING_AFTER_ATTEMPTS,
        named.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// Whether `conditions` hold `type_` with `status`.
fn condition_is(conditions: &[Condition], type_: &str, status: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == status)
}

/// The `Paused` condition's reason and message: `paused` by the spec with `stopping` worker
/// pods left and `leased` shards still owned, or delivering.
pub fn pause_state(paused: bool, stopping: i32, leased: usize) -> (&'static str, String) {
    match (paused, stopping) {
        (false, _) => (
            "Delivering",
            "delivering; set spec.paused to true to pause".into(),
        ),
        (true, 0) => (
            "Paused",
            format!(
                "paused by spec.paused: no worker runs, checkpoints kept, {}; set spec.paused to false to resume",
                if leased == 0 {
                    "every lease released".to_string()
                } else {
                    format!("{leased} lease(s) not released (they expire after the failover time)")
                }
            ),
        ),
        (true, n) => (
            "Pausing",
            format!(
                "pausing: {n} worker pod(s) flushing their checkpoints and releasing their leases"
            ),
        ),
    }
}

/// The status of a healthy reconcile (stream and table reachable, Deployment applied) and
/// the Events for what changed since `previous`. `status` carries what the reads already set
/// (stream, application name, consumer, the StreamReady and LeaseTableReady conditions).
pub fn healthy_status(
    app: &KinesisApplication,
    previous: &KinesisApplicationStatus,
    mut status: KinesisApplicationStatus,
    shards: &[ShardInfo],
    snapshot: Option<&TableSnapshot>,
    sizing: &Sizing,
    applied: Applied,
) -> Report {
    let generation = app.metadata.generation;
    let name = app.metadata.name.clone().unwrap_or_default();
    let Sizing {
        open,
        draining,
        total,
        replicas,
        lag,
    } = *sizing;
    status.lag_low_since = lag.and_then(|l| l.low_since_s).and_then(rfc3339);
    let desired = replicas.desired;
    let Applied { ready, .. } = applied;
    // Lag only from each shard's current owner (a dead owner's heartbeat may linger).
    let views = snapshot
        .map(|snap| kinesis_lease::status::shard_views(shards, snap))
        .unwrap_or_default();
    let report = shard_report(&views, shards, SHARD_STATUS_LIMIT);
    let stalled: Vec<&str> = views
        .iter()
        .filter(|v| v.stalled)
        .map(|v| v.shard_id.as_str())
        .collect();
    let failing: Vec<&str> = views
        .iter()
        .filter(|v| v.failing && !v.stalled)
        .map(|v| v.shard_id.as_str())
        .collect();
    status.shard_status = report.listed;
    status.shard_status_omitted = (report.omitted > 0).then_some(report.omitted as i32);
    // Paused: no worker measures the lag; a last figure would read as current.
    status.max_lag = report
        .max_lag_ms
        .filter(|_| !app.spec.paused)
        .map(human_lag);
    let owned = report.leased;
    status.shards = Some(ShardCounts {
        open,
        draining,
        total,
        leased: owned as i32,
    });
    let previous_workers = previous.workers.as_ref().map(|w| w.desired);
    status.workers = Some(WorkerCounts {
        desired,
        ready,
        replicas: applied.replicas,
        summary: format!("{ready}/{desired}"),
    });
    status.selector = Some(
        labels(&name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    if previous_workers != Some(desired) {
        status.last_scale_time = Some(now());
    }
    let paused = app.spec.paused;
    let was_paused = condition_is(&previous.conditions, "Paused", "True");
    // Pods left while paused: each is flushing its checkpoints and releasing its leases.
    let stopping = applied.replicas;
    let progressing = ready < desired || (paused && stopping > 0);
    set_condition(
        &mut status.conditions,
        "Progressing",
        progressing,
        match (paused, progressing) {
            (true, true) => "Pausing",
            (true, false) => "Paused",
            (false, true) => "WorkersStarting",
            (false, false) => "WorkersReady",
        },
        format!("{ready} of {desired} workers ready"),
        generation,
    );
    if paused || status.conditions.iter().any(|c| c.type_ == "Paused") {
        let (reason, message) = pause_state(paused, stopping, owned);
        set_condition(
            &mut status.conditions,
            "Paused",
            paused,
            reason,
            message,
            generation,
        );
    }
    // Never an empty message: the API server (1.20) turns "" into null in a merge patch and
    // then rejects it as not a string.
    set_condition(
        &mut status.conditions,
        "Degraded",
        false,
        "AsExpected",
        "stream and lease table reachable",
        generation,
    );
    let leased = format!("{owned} of {} shards leased, {open} open", open + draining);
    if paused {
        // Ready once the fleet is down: the state the spec asks for (as KEDA's paused
        // ScaledObjects stay Ready), so a pause pages nobody.
        let (reason, message) = pause_state(true, stopping, owned);
        set_condition(
            &mut status.conditions,
            "Ready",
            stopping == 0,
            reason,
            format!("{message}; {leased}"),
            generation,
        );
    } else {
        let all_ready = ready >= desired && desired > 0;
        set_condition(
            &mut status.conditions,
            "Ready",
            all_ready,
            if all_ready {
                "WorkersReady"
            } else {
                "WorkersStarting"
            },
            format!("{ready}/{desired} workers ready, {leased}"),
            generation,
        );
    }

    let was_stalled = previous
        .conditions
        .iter()
        .any(|c| c.type_ == "DeliveryStalled" && c.status == "True");
    // The destination first (records were given up and cannot leave), then the app.
    let (reason, message) = match (stalled.is_empty(), failing.is_empty()) {
        (true, true) => ("Delivering", stalled_message(&stalled)),
        (false, true) => ("DestinationFailing", stalled_message(&stalled)),
        (true, false) => ("AppFailing", failing_message(&failing)),
        (false, false) => (
            "DestinationFailing",
            format!(
                "{}; also {}",
                stalled_message(&stalled),
                failing_message(&failing)
            ),
        ),
    };
    let stuck = !stalled.is_empty() || !failing.is_empty();
    set_condition(
        &mut status.conditions,
        "DeliveryStalled",
        stuck,
        reason,
        message.clone(),
        generation,
    );

    let mut notes = Vec::new();
    if stuck && !was_stalled {
        notes.push(Note {
            reason,
            text: message,
            warning: true,
        });
    }
    if let Some(before) = previous.shards.as_ref().map(|s| s.open)
        && before != open
    {
        notes.push(Note {
            reason: "Resharded",
            text: format!("open shards {before} → {open}"),
            warning: false,
        });
    }
    if paused != was_paused {
        notes.push(Note {
            reason: if paused { "Paused" } else { "Resumed" },
            text: if paused {
                format!(
                    "delivery paused: workers {} → 0, each flushing its checkpoints and releasing its leases",
                    previous_workers.unwrap_or(0)
                )
            } else {
                format!("delivery resumed from the checkpoints: workers 0 → {desired}")
            },
            warning: false,
        });
    } else if let Some(before) = previous_workers
        && before != desired
    {
        let why = match lag.and_then(|l| l.moved) {
            Some(LagMove::Up(ms)) => format!(
                "lag {} above the {} s target",
                human_lag(ms),
                app.spec.scaling.target_lag_seconds.unwrap_or(60)
            ),
            Some(LagMove::Down) => format!(
                "lag under half the {} s target for {} s",
                app.spec.scaling.target_lag_seconds.unwrap_or(60),
                app.spec
                    .scaling
                    .scale_down_stabilization_seconds
                    .unwrap_or(300)
            ),
            None => format!(
                "{open} open shards, shardsPerWorker {}",
                app.spec.scaling.shards_per_worker
            ),
        };
        notes.push(Note {
            reason: "Scaled",
            text: format!("workers {before} → {desired} ({why})"),
            warning: false,
        });
    }
    Report {
        status,
        notes,
        max_lag_ms: report.max_lag_ms.filter(|_| !app.spec.paused),
    }
}

#[cfg(test)]
mod tests;
