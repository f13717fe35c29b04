//! A fleet of `kinesis-worker leases` processes (separate processes, as in pods) on one
//! stream and lease table, and ways to wait for the table to reach a state.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use kinesis_worker::lease::model::TableSnapshot;
use kinesis_worker::lease::table::LeaseTable;

use crate::process::{Proc, binary};
use crate::{TestEnv, unique_name, wait_for};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Failover time of test fleets (short, so tests are quick).
pub const FAILOVER_MS: u64 = 3_000;
/// Scan interval of test fleets.
pub const SCAN_MS: u64 = 250;
/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How often the table is polled while waiting.
pub const POLL: Duration = Duration::from_millis(100);

/// A stream, its lease table, and the environment to start workers in.
pub struct Fleet {
    /// The environment.
    pub env: TestEnv,
    /// Application name (= lease table).
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// The lease table, for the test's own reads and writes.
    pub table: LeaseTable,
    /// Failover time of workers started from now on (default [`FAILOVER_MS`]).
    pub failover_ms: u64,
}

impl Fleet {
    /// Creates a stream with `shards` shards and an empty lease table.
    ///
    /// # Errors
    /// The stream or table could not be created.
    pub async fn new(shards: i32) -> Result<Self> {
        let env = TestEnv::require();
        let stream = unique_name("fleet");
        env.create_stream(&stream, shards).await?;
        let app = unique_name("app");
        let table = LeaseTable::open(env.dynamodb().await, &app, true).await?;
        Ok(Self {
            env,
            app,
            stream,
            table,
            failover_ms: FAILOVER_MS,
        })
    }

    /// Starts `kinesis-worker leases` as worker `id`, with `extra` arguments after the defaults.
    ///
    /// # Errors
    /// The binary could not be built or started.
    pub fn worker(&self, id: &str, extra: &[&str]) -> Result<Proc> {
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
            &self.failover_ms.to_string(),
            "--scan-interval-ms",
            &SCAN_MS.to_string(),
            "--handoff-timeout-ms",
            "2000",
            "--shard-sync-interval-ms",
            "500",
        ]);
        cmd.args(extra);
        // Logs go with the environment's own (moved to last-env-logs/ by `env down`).
        let logs = crate::env_file()
            .parent()
            .map(|d| d.join("logs/test-workers"))
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&logs)?;
        Ok(Proc::spawn(
            cmd,
            logs.join(format!("{}-{id}.log", self.app)),
        )?)
    }

    /// Deletes the stream and the lease table (kinesis-mock limits the shards of all
    /// streams together).
    ///
    /// # Errors
    /// A delete failed.
    pub async fn cleanup(self) -> Result<()> {
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

    /// One scan of the lease table, `None` on a failed scan.
    pub async fn snapshot(&self) -> Option<TableSnapshot> {
        self.table.scan().await.ok()
    }

    /// Waits until `check(owners, counts)` holds, where `owners` maps shard → owner; returns
    /// how long it took and the scan that satisfied it.
    ///
    /// # Errors
    /// Not within [`DEADLINE`].
    pub async fn until(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, Option<String>>, &HashMap<String, usize>) -> bool,
    ) -> Result<(Duration, TableSnapshot)> {
        let start = Instant::now();
        let snap = wait_for(what, DEADLINE, POLL, || async {
            let snap = self.snapshot().await?;
            // A lease given but not yet accepted (assigner mode) is not processed yet.
            let owners: BTreeMap<String, Option<String>> = snap
                .leases
                .iter()
                .map(|l| (l.shard_id.clone(), l.owner.clone().filter(|_| !l.assigned)))
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
pub fn shared_by(
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
