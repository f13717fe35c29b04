//! A fleet of `kinesis-worker leases` processes (separate processes, as in pods) against the
//! local Kinesis and DynamoDB servers: shards shared with one live owner each, failover after
//! SIGKILL, hand-off on SIGTERM, a joining worker, a paused worker fencing itself.
//!
//! Timings are printed, not asserted (the bench measures them); the deadlines here only stop
//! a broken fleet from hanging the test.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::StreamStatus;
use kinesis_operator_tests::process::{Proc, binary};
use kinesis_operator_tests::{TestEnv, unique_name, wait_for};
use kinesis_worker::lease::model::TableSnapshot;
use kinesis_worker::lease::table::LeaseTable;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const FAILOVER_MS: u64 = 3_000;
const SCAN_MS: u64 = 250;
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

struct Fleet {
    env: TestEnv,
    app: String,
    stream: String,
    table: LeaseTable,
}

impl Fleet {
    async fn new(shards: i32) -> Result<Self> {
        let t = Instant::now();
        let env = TestEnv::require();
        let kinesis = env.kinesis().await;
        let stream = unique_name("fleet");
        kinesis
            .create_stream()
            .stream_name(&stream)
            .shard_count(shards)
            .send()
            .await?;
        wait_for("stream ACTIVE", Duration::from_secs(30), POLL, || async {
            let out = kinesis
                .describe_stream_summary()
                .stream_name(&stream)
                .send()
                .await
                .ok()?;
            (out.stream_description_summary()?.stream_status() == &StreamStatus::Active)
                .then_some(())
        })
        .await?;
        let app = unique_name("app");
        let table = LeaseTable::open(env.dynamodb().await, &app, true).await?;
        eprintln!("fleet setup: {:?}", t.elapsed());
        Ok(Self {
            env,
            app,
            stream,
            table,
        })
    }

    fn worker(&self, id: &str) -> Result<Proc> {
        let mut cmd = Command::new(binary("kinesis-worker")?);
        for (k, v) in self.env.worker_env() {
            cmd.env(k, v);
        }
        cmd.env("LOG_LEVEL", "info").args([
            "leases",
            "--application",
            &self.app,
            "--stream",
            &self.stream,
            "--worker-id",
            id,
            "--failover-time-ms",
            &FAILOVER_MS.to_string(),
            "--scan-interval-ms",
            &SCAN_MS.to_string(),
            "--handoff-timeout-ms",
            "2000",
        ]);
        Ok(Proc::spawn(
            cmd,
            std::env::temp_dir().join(format!("{}-{id}.log", self.app)),
        )?)
    }

    /// Deletes the stream and the lease table (kinesis-mock limits the shards of all
    /// streams together).
    async fn cleanup(self) -> Result<()> {
        self.env
            .kinesis()
            .await
            .delete_stream()
            .stream_name(&self.stream)
            .send()
            .await?;
        self.env
            .dynamodb()
            .await
            .delete_table()
            .table_name(&self.app)
            .send()
            .await?;
        Ok(())
    }

    async fn snapshot(&self) -> Option<TableSnapshot> {
        self.table.scan().await.ok()
    }

    /// Waits until `check(owners, counts)` holds, where `owners` maps shard → owner.
    async fn until(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, Option<String>>, &HashMap<String, usize>) -> bool,
    ) -> Result<(Duration, TableSnapshot)> {
        let start = Instant::now();
        let snap = wait_for(what, DEADLINE, POLL, || async {
            let snap = self.snapshot().await?;
            let owners: BTreeMap<String, Option<String>> = snap
                .leases
                .iter()
                .map(|l| (l.shard_id.clone(), l.owner.clone()))
                .collect();
            let mut counts = HashMap::new();
            for o in owners.values().flatten() {
                *counts.entry(o.clone()).or_insert(0) += 1;
            }
            check(&owners, &counts).then_some(snap)
        })
        .await?;
        eprintln!("{what}: {:?}", start.elapsed());
        Ok((start.elapsed(), snap))
    }
}

/// Every one of `n` shards owned, by the given workers only, each holding `min..=max`.
fn shared_by(
    n: usize,
    workers: &[&str],
    min: usize,
    max: usize,
) -> impl Fn(&BTreeMap<String, Option<String>>, &HashMap<String, usize>) -> bool {
    let workers: Vec<String> = workers.iter().map(|w| (*w).to_string()).collect();
    move |owners, counts| {
        owners.len() == n
            && owners
                .values()
                .all(|o| o.as_ref().is_some_and(|o| workers.contains(o)))
            && workers
                .iter()
                .all(|w| (min..=max).contains(&counts.get(w).copied().unwrap_or(0)))
    }
}

#[tokio::test]
async fn every_shard_gets_one_live_owner_and_a_killed_workers_shards_move() -> Result<()> {
    let fleet = Fleet::new(8).await?;
    let w1 = fleet.worker("w1")?;
    let _w2 = fleet.worker("w2")?;
    let _w3 = fleet.worker("w3")?;
    let (t, _) = fleet
        .until(
            "8 shards shared 3/3/2",
            shared_by(8, &["w1", "w2", "w3"], 2, 3),
        )
        .await?;
    eprintln!("fleet of 3 balanced 8 shards in {t:?}");

    w1.signal("KILL");
    let (t, _) = fleet
        .until(
            "w1's shards taken by w2 and w3",
            shared_by(8, &["w2", "w3"], 4, 4),
        )
        .await?;
    eprintln!("after SIGKILL, shards resumed in {t:?} (failover time {FAILOVER_MS} ms)");
    fleet.cleanup().await
}

#[tokio::test]
async fn sigterm_releases_every_lease_for_the_others_to_take_at_once() -> Result<()> {
    let fleet = Fleet::new(6).await?;
    let mut w1 = fleet.worker("w1")?;
    let _w2 = fleet.worker("w2")?;
    fleet
        .until("6 shards shared 3/3", shared_by(6, &["w1", "w2"], 3, 3))
        .await?;

    w1.signal("TERM");
    let (t, snap) = fleet
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
    let _w1 = fleet.worker("w1")?;
    let _w2 = fleet.worker("w2")?;
    fleet
        .until("12 shards shared 6/6", shared_by(12, &["w1", "w2"], 6, 6))
        .await?;

    let _w3 = fleet.worker("w3")?;
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

#[tokio::test]
async fn a_paused_worker_loses_its_shards_and_stops_by_itself() -> Result<()> {
    let fleet = Fleet::new(4).await?;
    let w1 = fleet.worker("w1")?;
    let _w2 = fleet.worker("w2")?;
    let (_, before) = fleet
        .until("4 shards shared 2/2", shared_by(4, &["w1", "w2"], 2, 2))
        .await?;
    let w1_shards: Vec<String> = before
        .leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some("w1"))
        .map(|l| l.shard_id.clone())
        .collect();

    w1.signal("STOP");
    fleet
        .until("w2 took w1's shards", shared_by(4, &["w2"], 4, 4))
        .await?;
    w1.signal("CONT");
    // Resumed, w1 first notices that it is stale and drops what it held.
    wait_for("w1 reports its shards lost", DEADLINE, POLL, || async {
        let lines = w1.lines();
        w1_shards
            .iter()
            .all(|s| lines.contains(&format!("lost {s}")))
            .then_some(())
    })
    .await?;
    // And the fleet settles back to 2/2 through hand-overs.
    fleet
        .until(
            "4 shards shared 2/2 again",
            shared_by(4, &["w1", "w2"], 2, 2),
        )
        .await?;
    fleet.cleanup().await
}
