//! A fleet of `kinesis-worker leases` processes (separate processes, as in pods) against the
//! local Kinesis and DynamoDB servers: shards shared with one live owner each, failover after
//! SIGKILL, hand-off on SIGTERM, a joining worker, a paused worker fencing itself.
//!
//! Timings are printed, not asserted (the bench measures them); the deadlines here only stop
//! a broken fleet from hanging the test.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use kinesis_operator_tests::fleet::{DEADLINE, FAILOVER_MS, Fleet, POLL, shared_by};
use kinesis_operator_tests::wait_for;
use kinesis_worker::lease::model::TableSnapshot;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Seconds since the epoch of a log line's RFC 3339 timestamp (its first word).
fn at(line: &str) -> Option<f64> {
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    let ts = line.split_whitespace().next()?;
    DateTime::from_str(ts, DateTimeFormat::DateTime)
        .ok()
        .map(|t| t.as_secs_f64())
}

fn shard_of(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("shard="))
        .map(String::from)
}

/// When a worker held each lease, from its log: `(shard, from, until)`, `until` = `None` while
/// still held at the end of the log. A lease ends when it is revoked for a hand-over,
/// released, lost or dropped, or when the worker fences itself.
fn holdings(log: &str) -> Vec<(String, f64, Option<f64>)> {
    let mut out: Vec<(String, f64, Option<f64>)> = Vec::new();
    let ends = [
        "lease revoked for hand-over",
        "lease released",
        "lease lost",
        "lease no longer valid",
    ];
    for line in log.lines() {
        let Some(t) = at(line) else { continue };
        if line.contains("lease acquired") {
            if let Some(s) = shard_of(line) {
                out.push((s, t, None));
            }
        } else if ends.iter().any(|e| line.contains(e)) {
            if let Some(s) = shard_of(line)
                && let Some(open) = out.iter_mut().find(|(o, _, u)| *o == s && u.is_none())
            {
                open.2 = Some(t);
            }
        } else if line.contains("stopping all shards") {
            for open in out.iter_mut().filter(|(_, _, u)| u.is_none()) {
                open.2 = Some(t);
            }
        }
    }
    out
}

#[tokio::test]
async fn every_shard_gets_one_live_owner_and_a_killed_workers_shards_move() -> Result<()> {
    let fleet = Fleet::new(8).await?;
    let w1 = fleet.worker("w1", &[])?;
    let w2 = fleet.worker("w2", &[])?;
    let w3 = fleet.worker("w3", &[])?;
    let (t, _) = fleet
        .until(
            "8 shards shared 3/3/2",
            shared_by(8, &["w1", "w2", "w3"], 2, 3),
        )
        .await?;
    eprintln!("fleet of 3 balanced 8 shards in {t:?}");

    w1.signal("KILL");
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let (t, _) = fleet
        .until(
            "w1's shards taken by w2 and w3",
            shared_by(8, &["w2", "w3"], 4, 4),
        )
        .await?;
    eprintln!("after SIGKILL, shards resumed in {t:?} (failover time {FAILOVER_MS} ms)");

    // One owner at a time, as the workers themselves saw it: on every shard, a worker took
    // the lease only after the previous holder stopped holding it (w1's holdings end at the
    // kill at the latest).
    let mut by_shard: BTreeMap<String, Vec<(f64, f64, &str)>> = BTreeMap::new();
    for (name, w) in [("w1", &w1), ("w2", &w2), ("w3", &w3)] {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        for (shard, from, until) in holdings(&log) {
            let until = until.unwrap_or(if name == "w1" { killed } else { f64::INFINITY });
            by_shard.entry(shard).or_default().push((from, until, name));
        }
    }
    assert_eq!(by_shard.len(), 8, "every shard was held: {by_shard:?}");
    let mut moves = 0;
    for (shard, mut spans) in by_shard {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in spans.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            assert!(
                start >= end,
                "{shard}: {b} took it at {start:.3} while {a} held it until {end:.3}"
            );
            moves += 1;
        }
    }
    eprintln!("{moves} moves of a lease between workers, none overlapping");
    assert!(moves >= 3, "w1's shards moved");
    fleet.cleanup().await
}

#[tokio::test]
async fn sigterm_releases_every_lease_for_the_others_to_take_at_once() -> Result<()> {
    let fleet = Fleet::new(6).await?;
    let mut w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    fleet
        .until("6 shards shared 3/3", shared_by(6, &["w1", "w2"], 3, 3))
        .await?;

    w1.signal("TERM");
    let (t, _) = fleet
        .until("w1's shards taken by w2", shared_by(6, &["w2"], 6, 6))
        .await?;
    eprintln!("after SIGTERM, shards resumed in {t:?} (failover time {FAILOVER_MS} ms)");
    let code = wait_for("w1 exits", DEADLINE, POLL, || {
        let exited = w1.exited();
        async move { exited }
    })
    .await?;
    assert_eq!(code, Some(0), "graceful exit; log:\n{}", w1.log_tail());
    assert!(
        w1.lines().iter().any(|l| l == "stopped"),
        "{:?}",
        w1.lines()
    );
    // It exits only after removing its heartbeat: a scan now must not find it.
    let snap = fleet.snapshot().await.ok_or("scan")?;
    assert!(
        !snap.heartbeats.iter().any(|h| h.worker_id == "w1"),
        "w1 removed its heartbeat: {:?}",
        snap.heartbeats
    );
    fleet.cleanup().await
}

#[tokio::test]
async fn a_joining_worker_reaches_its_fair_share_and_then_nothing_moves() -> Result<()> {
    let fleet = Fleet::new(12).await?;
    let _w1 = fleet.worker("w1", &[])?;
    let _w2 = fleet.worker("w2", &[])?;
    fleet
        .until("12 shards shared 6/6", shared_by(12, &["w1", "w2"], 6, 6))
        .await?;

    let _w3 = fleet.worker("w3", &[])?;
    let (t, balanced) = fleet
        .until(
            "w3 at its fair share",
            shared_by(12, &["w1", "w2", "w3"], 4, 4),
        )
        .await?;
    eprintln!("joining worker reached its fair share in {t:?}");

    // Stable: while every worker beats three more times, no lease changes hands.
    let beats: HashMap<String, u64> = balanced
        .heartbeats
        .iter()
        .map(|h| (h.worker_id.clone(), h.counter))
        .collect();
    let t_beats = Instant::now();
    let later = wait_for(
        "three more heartbeats from everyone",
        DEADLINE,
        POLL,
        || async {
            let snap = fleet.snapshot().await?;
            snap.heartbeats
                .iter()
                .all(|h| h.counter >= beats.get(&h.worker_id).copied().unwrap_or(0) + 3)
                .then_some(snap)
        },
    )
    .await?;
    eprintln!("three heartbeats: {:?}", t_beats.elapsed());
    let counters = |s: &TableSnapshot| -> BTreeMap<String, u64> {
        s.leases
            .iter()
            .map(|l| (l.shard_id.clone(), l.counter))
            .collect()
    };
    assert_eq!(
        counters(&balanced),
        counters(&later),
        "a balanced fleet makes no ownership change"
    );
    fleet.cleanup().await
}

/// SIGSTOP of a worker that runs real delivery (`kinesis-worker run` with its own app),
/// past the failover time, while records flow: the other worker takes its shards; after
/// SIGCONT the paused worker delivers nothing more under the leases it held (it may take
/// shards back under new leases, as any joining worker), it reports its shards lost, and
/// every record is delivered.
#[tokio::test]
async fn a_paused_worker_loses_its_shards_and_stops_by_itself() -> Result<()> {
    use kinesis_operator_tests::pipeline::{Pipeline, check_sequence, received};
    let p = Pipeline::new(4).await?;
    let a1 = p.app("a1", &[]).await?;
    let a2 = p.app("a2", &[]).await?;
    let w1 = p.worker("w1", &a1.address, &[])?;
    let dynamodb = p.env.dynamodb().await;
    let table = wait_for("w1 created the lease table", DEADLINE, POLL, || {
        let dynamodb = dynamodb.clone();
        let app = p.app.clone();
        async move {
            kinesis_worker::lease::table::LeaseTable::open(dynamodb, &app, false)
                .await
                .ok()
        }
    })
    .await?;
    let owned_by = |w: &'static str, n: usize| {
        let table = table.clone();
        move || {
            let table = table.clone();
            async move {
                let snap = table.scan().await.ok()?;
                let mine = snap
                    .leases
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(w))
                    .count();
                (snap.leases.len() == 4 && mine == n).then_some(())
            }
        }
    };
    wait_for("w1 owns all 4 shards", DEADLINE, POLL, owned_by("w1", 4)).await?;
    let _w2 = p.worker("w2", &a2.address, &[])?;
    wait_for("2 shards each", DEADLINE, POLL, owned_by("w2", 2)).await?;
    p.put_sequence(8, 0, 5).await?;

    w1.proc.signal("STOP");
    let stopped = Instant::now();
    p.put_sequence(8, 5, 5).await?;
    wait_for("w2 took w1's shards", DEADLINE, POLL, owned_by("w2", 4)).await?;
    eprintln!(
        "w2 owns every shard {:?} after the SIGSTOP",
        stopped.elapsed()
    );
    let cont_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    w1.proc.signal("CONT");
    p.put_sequence(8, 10, 5).await?;
    wait_for("w1 reports its shards lost", DEADLINE, POLL, || async {
        let log = std::fs::read_to_string(&w1.proc.log).unwrap_or_default();
        (log.matches("lease lost: processor stopped").count() >= 2
            || log.contains("stopping all shards"))
        .then_some(())
    })
    .await?;
    wait_for("every record delivered", DEADLINE, POLL, || async {
        let distinct: std::collections::HashSet<_> =
            received(&[a1.out.as_path(), a2.out.as_path()])
                .into_iter()
                .map(|r| (r.seq, r.sub))
                .collect();
        (distinct.len() >= 120).then_some(())
    })
    .await?;
    // After SIGCONT, w1 is alive again in a new liveness epoch and may take shards back
    // (2 of 4 are its fair share) under new leases: counter ≥ its own + 2 (w2's take was
    // + 1). Nothing may be delivered after SIGCONT under a lease it held before the pause.
    let mine = received(&[a1.out.as_path()]);
    let held_before: BTreeMap<String, u64> =
        mine.iter()
            .filter(|r| r.recv_ns() < cont_ns)
            .fold(BTreeMap::new(), |mut m, r| {
                let c = m.entry(r.shard.clone()).or_insert(0);
                *c = (*c).max(r.counter);
                m
            });
    let zombie: Vec<String> = mine
        .iter()
        .filter(|r| r.recv_ns() > cont_ns)
        .filter(|r| held_before.get(&r.shard).is_some_and(|c| r.counter < c + 2))
        .map(|r| format!("{} {} {}#{}", r.shard, r.data, r.owner, r.counter))
        .collect();
    assert!(
        zombie.is_empty(),
        "the paused worker delivered after SIGCONT under a lease it held before: {zombie:?} \
         (its leases before the pause: {held_before:?})"
    );
    check_sequence(&received(&[a1.out.as_path(), a2.out.as_path()]), 8, 15)?;
    p.cleanup().await
}
