use super::*;
use kinesis_lease::model::{Heartbeat, Lease, TableSnapshot};

fn app(spec: serde_json::Value, annotations: serde_json::Value) -> KinesisApplication {
    let v = serde_json::json!({
        "apiVersion": "kinesis-operator.io/v1alpha1", "kind": "KinesisApplication",
        "metadata": {"name": "a", "namespace": "n", "uid": "u1", "generation": 3,
            "annotations": annotations},
        "spec": spec,
    });
    match serde_json::from_value(v) {
        Ok(a) => a,
        Err(e) => panic!("test object: {e}"),
    }
}

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut s = serde_json::json!({"stream": {"name": "s"},
        "template": {"spec": {"containers": [{"name": "app"}]}}});
    if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    s
}

fn shard(id: &str, closed: bool) -> ShardInfo {
    ShardInfo {
        shard_id: id.into(),
        parents: Vec::new(),
        hash_range: ("0".into(), "1".into()),
        closed,
    }
}

fn owned(id: &str, owner: &str, checkpoint: Checkpoint) -> Lease {
    let mut l = Lease::new(id, checkpoint, Vec::new());
    l.owner = Some(owner.into());
    l.counter = 1;
    l
}

#[test]
fn workers_follow_the_open_shards_and_draining_counts_only_unfinished_parents() {
    let a = app(
        spec(serde_json::json!({"scaling": {"shardsPerWorker": 2}})),
        serde_json::json!({}),
    );
    let shards = vec![
        shard("p0", true),
        shard("p1", true),
        shard("c0", false),
        shard("c1", false),
        shard("c2", false),
    ];
    let snapshot = TableSnapshot {
        leases: vec![
            owned("p0", "w1", Checkpoint::ShardEnd),
            owned("p1", "w1", Checkpoint::TrimHorizon),
        ],
        heartbeats: Vec::new(),
    };
    let s = size(&a, &shards, Some(&snapshot));
    assert_eq!((s.open, s.draining, s.total), (3, 1, 5));
    // Unset spec.replicas: sized (ceil(3 / 2) = 2) and written for /scale.
    assert_eq!(s.replicas.desired, 2);
    assert_eq!(s.replicas.write_sized, Some(2));
    // Without a snapshot nothing counts as draining; the size is the same.
    let s = size(&a, &shards, None);
    assert_eq!((s.draining, s.replicas.desired), (0, 2));
}

#[test]
fn a_count_set_by_someone_else_is_kept_and_the_annotation_released() {
    let a = app(
        spec(serde_json::json!({"replicas": 7})),
        serde_json::json!({SIZED_ANNOTATION: "2"}),
    );
    let s = size(&a, &[shard("s0", false), shard("s1", false)], None);
    assert_eq!(s.replicas.desired, 7);
    assert_eq!(s.replicas.write_sized, None);
    assert!(s.replicas.released);
    // Still the operator's own write: it follows the shards (2 open → 2 at one per worker).
    let a = app(
        spec(serde_json::json!({"replicas": 1})),
        serde_json::json!({SIZED_ANNOTATION: "1"}),
    );
    let s = size(&a, &[shard("s0", false), shard("s1", false)], None);
    assert_eq!((s.replicas.desired, s.replicas.write_sized), (2, Some(2)));
}

#[test]
fn a_healthy_status_reports_counts_conditions_and_what_changed() {
    let a = app(spec(serde_json::json!({})), serde_json::json!({}));
    let shards = vec![shard("s0", false), shard("s1", false), shard("s2", false)];
    let snapshot = TableSnapshot {
        leases: vec![
            owned("s0", "w1", Checkpoint::TrimHorizon),
            owned("s1", "w1", Checkpoint::TrimHorizon),
            Lease::new("s2", Checkpoint::TrimHorizon, Vec::new()),
        ],
        heartbeats: Vec::<Heartbeat>::new(),
    };
    let sizing = size(&a, &shards, Some(&snapshot));
    let previous = KinesisApplicationStatus {
        shards: Some(ShardCounts {
            open: 2,
            draining: 0,
            total: 2,
            leased: 2,
        }),
        workers: workers(2),
        ..Default::default()
    };
    let Report { status, notes, .. } = healthy_status(
        &a,
        &previous,
        previous.clone(),
        &shards,
        Some(&snapshot),
        &sizing,
        Applied {
            ready: 2,
            replicas: 3,
        },
    );
    let counts = status.shards.clone().unwrap_or_default();
    assert_eq!((counts.open, counts.leased, counts.total), (3, 2, 3));
    let workers = status.workers.clone().unwrap_or_default();
    assert_eq!(
        (workers.desired, workers.ready, workers.summary.as_str()),
        (3, 2, "2/3")
    );
    assert!(status.last_scale_time.is_some());
    assert_eq!(status.shard_status.len(), 3);
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
    };
    assert_eq!(
        cond("Ready"),
        Some(("False".into(), "WorkersStarting".into(), Some(3)))
    );
    assert_eq!(
        cond("Progressing"),
        Some(("True".into(), "WorkersStarting".into(), Some(3)))
    );
    assert_eq!(
        cond("Degraded"),
        Some(("False".into(), "AsExpected".into(), Some(3)))
    );
    assert_eq!(
        notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        vec!["Resharded", "Scaled"]
    );
    assert_eq!(notes[0].text, "open shards 2 → 3");
    assert!(
        notes[1].text.starts_with("workers 2 → 3"),
        "{}",
        notes[1].text
    );

    assert_eq!(
        cond("DeliveryStalled"),
        Some(("False".into(), "Delivering".into(), Some(3)))
    );

    // The same again, everything ready: Ready, no Events, the scale time kept.
    let Report {
        status: again,
        notes,
        ..
    } = healthy_status(
        &a,
        &status,
        status.clone(),
        &shards,
        Some(&snapshot),
        &sizing,
        Applied {
            ready: 3,
            replicas: 3,
        },
    );
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(again.last_scale_time, status.last_scale_time);
    assert!(
        again
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}

/// A worker whose heartbeat names a shard stalled on the on-failure destination: the
/// `DeliveryStalled` condition turns True naming the shard, with one Event when it starts;
/// a heartbeat of a worker that no longer owns the shard does not count.
#[test]
fn a_shard_stalled_on_the_destination_sets_delivery_stalled_once() {
    let a = app(spec(serde_json::json!({})), serde_json::json!({}));
    let shards = vec![shard("s0", false), shard("s1", false)];
    let beat = |w: &str, stalled: &[&str]| heartbeat(w, &[], stalled, &[]);
    let snapshot = TableSnapshot {
        leases: vec![
            owned("s0", "w1", Checkpoint::TrimHorizon),
            owned("s1", "w2", Checkpoint::TrimHorizon),
        ],
        // w2's old claim on s0 says nothing: s0 is w1's now.
        heartbeats: vec![beat("w1", &[]), beat("w2", &["s1", "s0"])],
    };
    let sizing = size(&a, &shards, Some(&snapshot));
    let applied = Applied {
        ready: 1,
        replicas: 1,
    };
    let previous = KinesisApplicationStatus::default();
    let first = healthy_status(
        &a,
        &previous,
        previous.clone(),
        &shards,
        Some(&snapshot),
        &sizing,
        applied,
    );
    let Some(c) = first
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "DeliveryStalled")
        .cloned()
    else {
        panic!(
            "no DeliveryStalled condition: {:?}",
            first.status.conditions
        );
    };
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "DestinationFailing")
    );
    assert!(
        c.message.starts_with("1 shard(s)") && c.message.contains("s1"),
        "{}",
        c.message
    );
    assert!(!c.message.contains("s0,"), "{}", c.message);
    let events: Vec<&str> = first.notes.iter().map(|n| n.reason).collect();
    assert!(events.contains(&"DestinationFailing"), "{events:?}");
    // Still stalled at the next reconcile: no second Event.
    let second = healthy_status(
        &a,
        &first.status,
        first.status.clone(),
        &shards,
        Some(&snapshot),
        &sizing,
        applied,
    );
    assert!(
        second
            .notes
            .iter()
            .all(|n| n.reason != "DestinationFailing")
    );
}

fn at(seconds: i64) -> Time {
    match Timestamp::from_second(seconds) {
        Ok(t) => Time(t),
        Err(e) => panic!("test time: {e}"),
    }
}

/// `metav1.Condition` semantics: one condition per type; `lastTransitionTime` moves only
/// when the status does; reason, message and generation always follow the latest call.
#[test]
fn a_condition_moves_its_transition_time_only_when_its_status_changes() {
    let mut c = Vec::new();
    set_condition_at(
        &mut c,
        "Ready",
        false,
        "WorkersStarting",
        "0/4",
        Some(1),
        at(10),
    );
    set_condition_at(
        &mut c,
        "Degraded",
        false,
        "AsExpected",
        "fine",
        Some(1),
        at(10),
    );
    // Same status, later: new reason, message and generation, same transition time.
    set_condition_at(
        &mut c,
        "Ready",
        false,
        "StreamNotFound",
        "gone",
        Some(2),
        at(20),
    );
    let ready = |c: &[Condition]| c.iter().find(|c| c.type_ == "Ready").cloned();
    let Some(r) = ready(&c) else {
        panic!("no Ready: {c:?}")
    };
    assert_eq!(
        (
            r.status.as_str(),
            r.reason.as_str(),
            r.message.as_str(),
            r.observed_generation,
            r.last_transition_time.clone()
        ),
        ("False", "StreamNotFound", "gone", Some(2), at(10))
    );
    // The status changes: the transition time is now.
    set_condition_at(
        &mut c,
        "Ready",
        true,
        "WorkersReady",
        "4/4",
        Some(2),
        at(30),
    );
    let Some(r) = ready(&c) else {
        panic!("no Ready: {c:?}")
    };
    assert_eq!(
        (r.status.as_str(), r.last_transition_time),
        ("True", at(30))
    );
    // Still one condition per type; the other one untouched.
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].last_transition_time, at(10));
}

#[test]
fn conditions_serialize_as_metav1_conditions_and_old_ones_still_parse() {
    let mut c = Vec::new();
    set_condition_at(&mut c, "Ready", true, "WorkersReady", "1/1", Some(3), at(0));
    let json = serde_json::to_value(&c).unwrap_or_default();
    assert_eq!(
        json,
        serde_json::json!([{
            "type": "Ready", "status": "True", "reason": "WorkersReady", "message": "1/1",
            "lastTransitionTime": "1970-01-01T00:00:00Z", "observedGeneration": 3
        }])
    );
    // What earlier versions wrote (fractional seconds, no observedGeneration) still reads.
    let old: Result<KinesisApplicationStatus, _> = serde_json::from_value(serde_json::json!({
        "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
            "message": "m", "lastTransitionTime": "2024-05-01T10:20:30.123Z"}]
    }));
    match old {
        Ok(s) => assert_eq!(
            (
                s.conditions[0].reason.as_str(),
                s.conditions[0].observed_generation
            ),
            ("InvalidSpec", None)
        ),
        Err(e) => panic!("an earlier status: {e}"),
    }
}

#[test]
fn an_event_is_not_repeated_for_a_condition_already_reported() {
    let mut c = Vec::new();
    set_condition_at(&mut c, "Ready", false, "InvalidSpec", "bad", Some(1), at(0));
    assert!(already_reported(&c, "Ready", "InvalidSpec", "bad"));
    assert!(!already_reported(&c, "Ready", "InvalidSpec", "worse"));
    assert!(!already_reported(&c, "Ready", "StreamNotFound", "bad"));
    assert!(!already_reported(&c, "StreamReady", "InvalidSpec", "bad"));
}

/// `spec.paused`: 0 workers whatever `spec.replicas` or the shards say (the sized count is
/// still written for the resume); Pausing while pods are left, then Paused and Ready; one
/// Paused Event and one Resumed Event, no Scaled Event for either; the Paused condition
/// turns False on the resume and stays there.
#[test]
fn a_pause_stops_every_worker_and_reports_pausing_paused_and_resumed() {
    let shards = vec![shard("s0", false), shard("s1", false)];
    let snapshot = TableSnapshot {
        leases: vec![
            owned("s0", "w1", Checkpoint::TrimHorizon),
            Lease::new("s1", Checkpoint::TrimHorizon, Vec::new()),
        ],
        heartbeats: Vec::<Heartbeat>::new(),
    };
    // Fixed by kubectl scale, and paused: the pause wins.
    let fixed = app(
        spec(serde_json::json!({"paused": true, "replicas": 5})),
        serde_json::json!({}),
    );
    assert_eq!(size(&fixed, &shards, None).replicas.desired, 0);
    let paused = app(
        spec(serde_json::json!({"paused": true})),
        serde_json::json!({}),
    );
    let sizing = size(&paused, &shards, Some(&snapshot));
    assert_eq!(sizing.replicas.desired, 0);
    assert_eq!(
        sizing.replicas.write_sized,
        Some(2),
        "/scale keeps the sized count"
    );
    let running = KinesisApplicationStatus {
        workers: workers(2),
        ..Default::default()
    };
    let step = |app: &KinesisApplication, previous: &KinesisApplicationStatus, pods: i32| {
        let sizing = size(app, &shards, Some(&snapshot));
        healthy_status(
            app,
            previous,
            previous.clone(),
            &shards,
            Some(&snapshot),
            &sizing,
            Applied {
                ready: pods,
                replicas: pods,
            },
        )
    };
    let cond = |s: &KinesisApplicationStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    // Two pods still shutting down.
    let pausing = step(&paused, &running, 2);
    assert_eq!(
        cond(&pausing.status, "Paused"),
        Some(("True".into(), "Pausing".into()))
    );
    assert_eq!(
        cond(&pausing.status, "Ready"),
        Some(("False".into(), "Pausing".into()))
    );
    assert_eq!(
        cond(&pausing.status, "Progressing"),
        Some(("True".into(), "Pausing".into()))
    );
    assert_eq!(
        pausing.notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        vec!["Paused"]
    );
    assert!(
        pausing.notes[0].text.contains("workers 2 → 0"),
        "{}",
        pausing.notes[0].text
    );
    // Every pod gone: Paused, Ready, and no second Event.
    let done = step(&paused, &pausing.status, 0);
    assert_eq!(
        cond(&done.status, "Paused"),
        Some(("True".into(), "Paused".into()))
    );
    assert_eq!(
        cond(&done.status, "Ready"),
        Some(("True".into(), "Paused".into()))
    );
    assert!(done.notes.is_empty(), "{:?}", done.notes);
    assert_eq!(done.status.max_lag, None, "no worker measures the lag");
    let ready = done
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(ready.contains("1 lease(s) not released"), "{ready}");
    // Resumed: one Event, Paused False, workers back.
    let resumed_app = app(spec(serde_json::json!({})), serde_json::json!({}));
    let resumed = step(&resumed_app, &done.status, 0);
    assert_eq!(
        cond(&resumed.status, "Paused"),
        Some(("False".into(), "Delivering".into()))
    );
    assert_eq!(
        resumed.notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        vec!["Resumed"]
    );
    assert_eq!(resumed.status.workers.map(|w| w.desired), Some(2));
    // An application never paused has no Paused condition.
    let never = step(&resumed_app, &running, 2);
    assert_eq!(cond(&never.status, "Paused"), None);
}

/// `scaling.mode: Lag` from the object as the operator reads it: the owners' heartbeat lag
/// above the target doubles the workers (Scaled Event naming the lag); the low-lag start is
/// written back and a quiet window halves them again.
#[test]
fn lag_mode_sizes_from_the_owners_lag_and_the_last_decision() {
    let shards = vec![
        shard("s0", false),
        shard("s1", false),
        shard("s2", false),
        shard("s3", false),
    ];
    let snapshot = |lag: i64| TableSnapshot {
        leases: ["s0", "s1", "s2", "s3"]
            .iter()
            .map(|s| owned(s, "w1", Checkpoint::TrimHorizon))
            .collect(),
        heartbeats: vec![heartbeat("w1", &[("s2", lag)], &[], &[])],
    };
    let mut a = app(
        spec(
            serde_json::json!({"scaling": {"mode": "Lag", "shardsPerWorker": 4,
            "targetLagSeconds": 5, "scaleDownStabilizationSeconds": 15}}),
        ),
        serde_json::json!({}),
    );
    let previous = KinesisApplicationStatus {
        workers: workers(1),
        last_scale_time: Some("2026-12-06T22:50:08.43869Z".into()),
        ..Default::default()
    };
    a.status = Some(previous.clone());
    let t0 = "2026-12-06T22:51:00Z"
        .parse::<Timestamp>()
        .map(|t| t.as_second())
        .unwrap_or(0);
    let up = size_at(&a, &shards, Some(&snapshot(8_000)), t0);
    assert_eq!(up.replicas.desired, 2, "{up:?}");
    let report = healthy_status(
        &a,
        &previous,
        previous.clone(),
        &shards,
        Some(&snapshot(8_000)),
        &up,
        Applied {
            ready: 1,
            replicas: 1,
        },
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.reason == "Scaled"
                && n.text == "workers 1 → 2 (lag 8.0s above the 5 s target)"),
        "{:?}",
        report.notes
    );
    // Quiet: the window starts, and 15 s later the workers are halved.
    let mut quiet = report.status.clone();
    quiet.last_scale_time = Some("2026-12-06T22:51:00Z".into());
    a.status = Some(quiet.clone());
    let start = size_at(&a, &shards, Some(&snapshot(100)), t0 + 10);
    assert_eq!(start.replicas.desired, 2);
    let started = healthy_status(
        &a,
        &quiet,
        quiet.clone(),
        &shards,
        Some(&snapshot(100)),
        &start,
        Applied {
            ready: 2,
            replicas: 2,
        },
    );
    assert_eq!(
        started.status.lag_low_since.as_deref(),
        Some("2026-12-06T22:51:10Z")
    );
    a.status = Some(started.status.clone());
    assert_eq!(
        size_at(&a, &shards, Some(&snapshot(100)), t0 + 24)
            .replicas
            .desired,
        2
    );
    assert_eq!(
        size_at(&a, &shards, Some(&snapshot(100)), t0 + 25)
            .replicas
            .desired,
        1
    );
}

/// A shard whose app keeps failing its records (its owner's heartbeat names it failing): the
/// lag it piles up does not add workers (they would not move it, only move leases), and
/// `DeliveryStalled` turns True with reason `AppFailing`, one Event when it starts. The same
/// lag on a shard that moves does scale.
#[test]
fn a_shard_whose_app_keeps_failing_is_reported_and_does_not_scale_the_fleet() {
    let shards = vec![shard("s0", false), shard("s1", false)];
    let snapshot = |failing: &[&str]| TableSnapshot {
        leases: ["s0", "s1"]
            .iter()
            .map(|s| owned(s, "w1", Checkpoint::TrimHorizon))
            .collect(),
        heartbeats: vec![heartbeat("w1", &[("s1", 600_000)], &[], failing)],
    };
    let mut a = app(
        spec(
            serde_json::json!({"scaling": {"mode": "Lag", "shardsPerWorker": 2,
            "targetLagSeconds": 5}}),
        ),
        serde_json::json!({}),
    );
    let previous = KinesisApplicationStatus {
        workers: workers(1),
        ..Default::default()
    };
    a.status = Some(previous.clone());
    let now = 1_800_000_000;
    // Ten minutes behind on a shard that moves: more workers.
    assert_eq!(
        size_at(&a, &shards, Some(&snapshot(&[])), now)
            .replicas
            .desired,
        2
    );
    // The same lag on a shard whose app fails: none.
    let failing = snapshot(&["s1"]);
    let sizing = size_at(&a, &shards, Some(&failing), now);
    assert_eq!(sizing.replicas.desired, 1, "{sizing:?}");
    let applied = Applied {
        ready: 1,
        replicas: 1,
    };
    let first = healthy_status(
        &a,
        &previous,
        previous.clone(),
        &shards,
        Some(&failing),
        &sizing,
        applied,
    );
    let c = first
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "DeliveryStalled")
        .cloned();
    let Some(c) = c else {
        panic!("no DeliveryStalled: {:?}", first.status.conditions);
    };
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AppFailing")
    );
    assert!(
        c.message.starts_with("1 shard(s) do not move") && c.message.contains("s1"),
        "{}",
        c.message
    );
    assert_eq!(
        first
            .notes
            .iter()
            .filter(|n| n.reason == "AppFailing")
            .count(),
        1
    );
    let second = healthy_status(
        &a,
        &first.status,
        first.status.clone(),
        &shards,
        Some(&failing),
        &sizing,
        applied,
    );
    assert!(second.notes.iter().all(|n| n.reason != "AppFailing"));
}

/// `n` workers wanted, ready and running.
fn workers(n: i32) -> Option<WorkerCounts> {
    Some(WorkerCounts {
        desired: n,
        ready: n,
        replicas: n,
        summary: format!("{n}/{n}"),
    })
}

/// A heartbeat of `worker` reporting `lag` and naming `stalled` and `failing` shards.
fn heartbeat(worker: &str, lag: &[(&str, i64)], stalled: &[&str], failing: &[&str]) -> Heartbeat {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Heartbeat {
        worker_id: worker.into(),
        counter: 1,
        draining: false,
        lag: lag.iter().map(|(s, ms)| (s.to_string(), *ms)).collect(),
        coordination: None,
        stalled: set(stalled),
        failing: set(failing),
    }
}
