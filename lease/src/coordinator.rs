//! The lease coordinator: one task per worker that keeps the worker's heartbeat, discovers
//! shards, takes, hands over and releases leases, and tells the record pipeline what it owns.
//!
//! Every `scan_interval` it scans the table, updates its liveness observations, decides with
//! [`super::balance`] and acts; every `shard_sync_interval` (and when a shard ends) it lists
//! the stream's shards. The heartbeat item is rewritten every `heartbeat_interval` by a task
//! of its own, so no slow scan, lease creation, checkpoint or shutdown delays it.
//!
//! # Guarantees
//! - A lease is held by at most one worker at a time as far as writes go: every write that
//!   depends on ownership is fenced by the lease counter (see [`super::table`]).
//! - A worker that cannot confirm its own heartbeat within `failover_time` minus one
//!   `scan_interval` revokes all its leases by itself ([`ShardLease::is_valid`] turns false
//!   and [`LeaseEvent::Lost`] is sent), before any other worker may consider it dead. A lease
//!   held across such a lapse stays invalid after the heartbeat lands again (it is taken
//!   back with a new counter, or lost).
//! - The heartbeat depends on no other call: each write has its own timeout, and it goes on
//!   while the worker drains, until every lease is released.
//! - Every lease this worker holds has a running record processor, or is released: a
//!   processor that stops by itself (its lease looked invalid, the shard ended, it failed)
//!   gives its lease back at the next round.
//! - A transient DynamoDB failure never drops a lease: only a failed ownership condition does.
//! - On [`CoordinatorHandle::shutdown`], in-flight work is asked to finish
//!   ([`LeaseEvent::ShutdownRequested`]), then every lease is released and the heartbeat
//!   removed, so other workers take the shards on their next scan.
//!
//! Layout: this file holds the configuration, the events and the loop; `heartbeat` the
//! worker's own liveness and the heartbeat task; `handles` the [`ShardLease`]s the pipeline
//! holds; `peer` and `assigned` the rounds of each [`Coordination`]. The rounds only read,
//! call a pure decision ([`super::balance`], [`super::assign`], [`super::liveness`],
//! [`super::handoff`]) and write.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use super::assign::{self, ASSIGNER_REREAD_ROUNDS, HeldState, OwnedLease, Watch};
use super::balance::{self, Fleet};
use super::checkpoint::Checkpoint;
use super::cleanup;
use super::discovery::{self, StreamRef};
use super::handoff;
use super::liveness::{self, Observer, heartbeat_key};
use super::model::{AssignerItem, Heartbeat, Lease, TableSnapshot};
use super::table::{HeldLease, LeaseError, LeaseTable};

mod assigned;
mod handles;
mod heartbeat;
mod peer;

pub use assigned::ACT_CONCURRENCY;
use handles::LeaseHandle;
pub use handles::ShardLease;
pub use heartbeat::FAST_BEATS;
use heartbeat::{Beater, SelfLiveness};

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This worker's id: unique in the fleet (in Kubernetes, the pod name).
    pub worker_id: String,
    /// A worker whose heartbeat has not changed for this long is dead (KCL default 10 s).
    pub failover_time: Duration,
    /// How often the table is scanned: bounds how fast released or requested leases move.
    pub scan_interval: Duration,
    /// How often the heartbeat is written (default `failover_time / 3`, as KCL renews).
    pub heartbeat_interval: Duration,
    /// How long a hand-over request waits for the owner before the lease is taken anyway.
    pub handoff_timeout: Duration,
    /// Hand-over requests per round at most.
    pub max_handoffs_per_round: usize,
    /// How often the stream's shards are listed.
    pub shard_sync_interval: Duration,
    /// Where a new lease starts.
    pub initial_position: Checkpoint,
    /// How long shutdown waits for in-flight work before releasing anyway.
    pub shutdown_timeout: Duration,
    /// Per-shard lag the record pipeline reports, written with every heartbeat.
    pub lag: LagBoard,
    /// How the fleet decides who takes what (every worker of a fleet must use the same).
    pub coordination: Coordination,
}

/// How a fleet coordinates (see docs/LEASES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coordination {
    /// Every worker scans the whole table every `scan_interval` and decides for itself
    /// ([`super::balance`]): reads grow with workers × shards.
    Peer,
    /// One elected worker (the assigner) scans, eventually consistent, and decides for the
    /// fleet ([`super::assign`]); every other worker reads only its own leases (a query on
    /// the owner index) and, if it is one of the assigner's successors, the assigner's
    /// heartbeat: reads grow with shards + workers. The default.
    #[default]
    Assigner,
}

impl Coordination {
    /// Its name, as heartbeats record it (`peer`, `assigner`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Assigner => "assigner",
        }
    }
}

/// The workers whose heartbeats in `heartbeats` say they coordinate otherwise than `mine`
/// (a fleet that mixes modes: peer workers take leases by themselves and fight the
/// assigner's plan; every take is still fenced). Heartbeats that record no mode (older
/// workers) are not counted.
pub fn other_modes(heartbeats: &[Heartbeat], mine: Coordination) -> Vec<(&str, &str)> {
    heartbeats
        .iter()
        .filter_map(|h| {
            let mode = h.coordination.as_deref()?;
            (mode != mine.as_str()).then_some((h.worker_id.as_str(), mode))
        })
        .collect()
}

/// Milliseconds behind the tip per shard, and the shards stalled on the on-failure
/// destination, shared by the record pipeline (writer) and the coordinator (which publishes
/// both in the heartbeat item).
#[derive(Debug, Clone, Default)]
pub struct LagBoard(Arc<std::sync::Mutex<Board>>);

/// What a [`LagBoard`] holds.
#[derive(Debug, Default)]
struct Board {
    lag: std::collections::BTreeMap<String, i64>,
    /// Records the app is working on: the age of the oldest (ms) when its call started, when
    /// that was, and the calls in flight (lanes run several at once).
    delivering: std::collections::BTreeMap<String, (i64, std::time::Instant, usize)>,
    stalled: std::collections::BTreeSet<String>,
    /// Per shard, the calls (one per lane) whose records keep failing.
    failing: std::collections::BTreeMap<String, usize>,
}

impl LagBoard {
    /// Records `shard`'s lag.
    pub fn set(&self, shard: &str, millis: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.lag.insert(shard.to_string(), millis);
        }
    }

    /// The app was just given records of `shard`, the oldest `age_ms` old (Kinesis's now
    /// minus its arrival): until [`LagBoard::delivered`], the shard's lag is at least that
    /// age plus the time since. A read at the tip can be minutes ahead of what the app works
    /// on (the read-ahead buffer, a slow app): this is the lag the app sees.
    pub fn delivering(&self, shard: &str, age_ms: i64) {
        if let Ok(mut m) = self.0.lock() {
            // The oldest call in flight sets the lag: a later one holds younger records.
            m.delivering
                .entry(shard.to_string())
                .and_modify(|(_, _, calls)| *calls += 1)
                .or_insert((age_ms.max(0), std::time::Instant::now(), 1));
        }
    }

    /// The app answered a call of [`LagBoard::delivering`] (the last of the shard's calls in
    /// flight ends its entry; the oldest start stays until then, erring towards more lag).
    pub fn delivered(&self, shard: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some((_, _, calls)) = m.delivering.get_mut(shard)
        {
            *calls = calls.saturating_sub(1);
            if *calls == 0 {
                m.delivering.remove(shard);
            }
        }
    }

    /// Records whether `shard`'s delivery waits for the on-failure destination.
    pub fn set_stalled(&self, shard: &str, stalled: bool) {
        if let Ok(mut m) = self.0.lock() {
            if stalled {
                m.stalled.insert(shard.to_string());
            } else {
                m.stalled.remove(shard);
            }
        }
    }

    /// One more call of `shard` whose records the app keeps failing ([`Heartbeat::failing`]
    /// names the shard while any is); [`LagBoard::failing_end`] when it moves or ends.
    pub fn failing_start(&self, shard: &str) {
        if let Ok(mut m) = self.0.lock() {
            *m.failing.entry(shard.to_string()).or_insert(0) += 1;
        }
    }

    /// A call of [`LagBoard::failing_start`] moved again, or ended.
    pub fn failing_end(&self, shard: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some(n) = m.failing.get_mut(shard)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.failing.remove(shard);
            }
        }
    }

    /// Forgets `shard` (no longer processed here).
    pub fn remove(&self, shard: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.lag.remove(shard);
            m.delivering.remove(shard);
            m.stalled.remove(shard);
            m.failing.remove(shard);
        }
    }

    /// Every shard's lag: the read's, or the age of what the app works on if larger.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, i64> {
        self.0
            .lock()
            .map(|m| {
                let mut lag = m.lag.clone();
                for (shard, (age, since, _)) in &m.delivering {
                    if let Some(l) = lag.get_mut(shard) {
                        let now = age.saturating_add(
                            i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX),
                        );
                        *l = (*l).max(now);
                    }
                }
                lag
            })
            .unwrap_or_default()
    }

    /// The shards waiting for the on-failure destination.
    pub fn stalled(&self) -> std::collections::BTreeSet<String> {
        self.0.lock().map(|m| m.stalled.clone()).unwrap_or_default()
    }

    /// The shards whose app keeps failing their records.
    pub fn failing(&self) -> std::collections::BTreeSet<String> {
        self.0
            .lock()
            .map(|m| m.failing.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl CoordinatorConfig {
    /// Defaults: failover 10 s, scan 1 s, heartbeat every failover/3, hand-over timeout 5 s,
    /// 16 hand-overs per round, shard sync 30 s, start at `TRIM_HORIZON`, shutdown 20 s,
    /// assigner coordination.
    pub fn new(worker_id: impl Into<String>) -> Self {
        let failover_time = Duration::from_secs(10);
        Self {
            worker_id: worker_id.into(),
            failover_time,
            scan_interval: Duration::from_secs(1),
            heartbeat_interval: failover_time / 3,
            handoff_timeout: Duration::from_secs(5),
            max_handoffs_per_round: 16,
            shard_sync_interval: Duration::from_secs(30),
            initial_position: Checkpoint::TrimHorizon,
            shutdown_timeout: Duration::from_secs(20),
            lag: LagBoard::default(),
            coordination: Coordination::Assigner,
        }
    }
}

/// What the coordinator tells the record pipeline.
#[derive(Debug)]
pub enum LeaseEvent {
    /// This worker now owns the shard: resume after `lease.checkpoint`.
    Acquired(ShardLease),
    /// The shard is no longer ours: stop at once, do not checkpoint.
    Lost {
        /// The shard.
        shard_id: String,
    },
    /// Finish the batch in flight, checkpoint if wanted, then answer on `done`, all before
    /// `deadline`; the lease is then handed over or released (also when `done` is not
    /// answered in time: a forced hand-over, where the next owner may get records again).
    ShutdownRequested {
        /// The shard.
        shard_id: String,
        /// Answer when done.
        done: oneshot::Sender<()>,
        /// Answer by then (the app's ShutdownRequested call and the final checkpoint
        /// included).
        deadline: tokio::time::Instant,
    },
}

enum Command {
    Shutdown(oneshot::Sender<()>),
    ShardEnded,
    HandoffFinished(String),
}

/// Controls a running coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorHandle {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shutdown(_) => "Shutdown",
            Self::ShardEnded => "ShardEnded",
            Self::HandoffFinished(_) => "HandoffFinished",
        })
    }
}

impl CoordinatorHandle {
    /// Drains: asks the pipeline to finish, releases every lease, removes the heartbeat, and
    /// returns when done.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A shard reached its end: list the shards now, so its children get leases.
    pub async fn shard_ended(&self) {
        let _ = self.commands.send(Command::ShardEnded).await;
    }
}

struct Held {
    handle: Arc<LeaseHandle>,
    /// The counter it was taken at (fixed for the tenure; the handle's lock need not be
    /// awaited in the round to know it).
    counter: u64,
    handing_over: bool,
    /// The record processor's token (see [`ShardLease`]).
    task: Weak<()>,
}

/// The coordinator's state; see the module docs.
pub struct Coordinator {
    table: LeaseTable,
    stream: Option<(aws_sdk_kinesis::Client, StreamRef)>,
    config: CoordinatorConfig,
    events: mpsc::Sender<LeaseEvent>,
    commands_tx: mpsc::Sender<Command>,
    commands: mpsc::Receiver<Command>,
    held: HashMap<String, Held>,
    /// This worker's outstanding hand-over requests: shard → request.
    pending: HashMap<String, handoff::Request<Instant>>,
    /// Workers of another coordination mode already reported (`worker/mode`).
    mixed_warned: HashSet<String>,
    observer: Observer,
    draining: bool,
    liveness: Arc<SelfLiveness>,
    /// The heartbeat writer until `run` starts it on its own task.
    beater: Option<Beater>,
    /// Shared with the heartbeat task: announce draining.
    draining_flag: Arc<AtomicBool>,
    beat_now: Arc<Notify>,
    /// Stops the heartbeat task (and waits for it).
    beating: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    last_snapshot: TableSnapshot,
    /// `last_snapshot` comes from a successful scan.
    scanned: bool,
    /// Live, non-draining workers as of the last round.
    last_live: BTreeSet<String>,
    /// Assigner mode's state.
    role: Role,
}

/// Assigner mode: the role as last read, and what the assigner and the member remember.
#[derive(Debug, Default)]
struct Role {
    /// The assigner item as last read.
    item: Option<AssignerItem>,
    /// Rounds since the item was last read (a follower re-reads it now and then).
    rounds_since_read: u32,
    /// This worker is the assigner.
    mine: bool,
    /// The assigner's outstanding hand-over requests: shard → request (for whom).
    pending: HashMap<String, handoff::Request<Instant>>,
    /// Shards this worker left (released, handed over, lost) → the counter it left them at.
    left: HashMap<String, u64>,
    /// A finished lease has children without a lease yet: list the shards soon.
    need_sync: bool,
    last_sync: Option<Instant>,
    /// The assigner's scan: in how many parallel segments (from the last scan's size).
    scan_segments: u32,
}

/// How long an owner gives its record processor to finish a granted hand-over (the batch in
/// flight, the app's ShutdownRequested, the final checkpoint) before it hands the lease over
/// anyway: the requester's `handoff_timeout`, which runs from when the requester *sees* the
/// owner's grant (written after this wait started, see [`handoff`](super::handoff)), minus
/// one scan interval and 500 ms for the rounds and the hand-over write, so the owner's
/// hand-over normally lands before the requester gives up waiting (at least half the
/// timeout). However late the owner saw the request, its processor stops before any take.
pub fn owner_wait(handoff_timeout: Duration, scan_interval: Duration) -> Duration {
    handoff_timeout
        .saturating_sub(scan_interval + Duration::from_millis(500))
        .max(handoff_timeout / 2)
}

/// Lease creations in flight at once during a shard sync.
const CREATE_CONCURRENCY: usize = 32;

impl Coordinator {
    /// A coordinator for `table`; with `stream` it also discovers shards. Events go to
    /// `events`.
    pub fn new(
        table: LeaseTable,
        stream: Option<(aws_sdk_kinesis::Client, StreamRef)>,
        config: CoordinatorConfig,
        events: mpsc::Sender<LeaseEvent>,
    ) -> (Self, CoordinatorHandle) {
        let (commands_tx, commands) = mpsc::channel(64);
        let valid_for = config.failover_time.saturating_sub(config.scan_interval);
        let liveness = Arc::new(SelfLiveness {
            // Not alive until the first heartbeat lands.
            confirmed_at: Mutex::new(
                Instant::now()
                    .checked_sub(valid_for * 2)
                    .unwrap_or_else(Instant::now),
            ),
            valid_for,
            epoch: AtomicU64::new(0),
        });
        let draining_flag = Arc::new(AtomicBool::new(false));
        let beat_now = Arc::new(Notify::new());
        let beater = Beater {
            table: table.clone(),
            worker_id: config.worker_id.clone(),
            interval: config.heartbeat_interval,
            retry: (config.scan_interval / 2)
                .max(Duration::from_millis(100))
                .min(config.heartbeat_interval),
            timeout: config.heartbeat_interval.max(Duration::from_millis(500)),
            counter: 0,
            liveness: liveness.clone(),
            draining: draining_flag.clone(),
            lag: config.lag.clone(),
            now: beat_now.clone(),
            coordination: config.coordination,
        };
        let handle = CoordinatorHandle {
            commands: commands_tx.clone(),
        };
        (
            Self {
                table,
                stream,
                config,
                events,
                commands_tx,
                commands,
                held: HashMap::new(),
                pending: HashMap::new(),
                mixed_warned: HashSet::new(),
                observer: Observer::new(),
                draining: false,
                liveness,
                beater: Some(beater),
                draining_flag,
                beat_now,
                beating: None,
                last_snapshot: TableSnapshot::default(),
                scanned: false,
                last_live: BTreeSet::new(),
                role: Role::default(),
            },
            handle,
        )
    }

    /// Runs until [`CoordinatorHandle::shutdown`] completes.
    pub async fn run(mut self) {
        if let Some(mut beater) = self.beater.take() {
            // The first heartbeat before the first round, so it may take leases at once.
            let ok = beater.beat().await;
            let (stop, stopped) = oneshot::channel();
            self.beating = Some((stop, tokio::spawn(beater.run(stopped, ok))));
        }
        // A scan first, so discovery writes only the leases that are missing.
        self.round().await;
        if self.syncs() {
            self.sync_shards().await;
        }
        let mut scan = tokio::time::interval(self.config.scan_interval);
        let mut sync = tokio::time::interval(self.config.shard_sync_interval);
        for t in [&mut scan, &mut sync] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // The first tick of an interval is immediate: sync just ran.
        sync.tick().await;
        loop {
            tokio::select! {
                _ = scan.tick() => self.round().await,
                _ = sync.tick() => if self.syncs() {
                    self.sync_shards().await;
                    self.clean_up().await;
                },
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Command::ShardEnded) => if self.syncs() {
                        self.sync_shards().await;
                    },
                    Some(Command::HandoffFinished(shard)) => {
                        if let Some(h) = self.held.remove(&shard) {
                            let counter = h.handle.held.lock().await.counter;
                            self.left_at(&shard, counter);
                        }
                    }
                    None => {
                        self.stop_heartbeat().await;
                        return;
                    }
                },
            }
        }
    }

    /// Stops the heartbeat task and waits until it has stopped.
    async fn stop_heartbeat(&mut self) {
        if let Some((stop, task)) = self.beating.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Revokes everything if our own heartbeat is too old (see the module guarantees).
    async fn fence_self(&mut self) {
        if self.held.is_empty() || self.liveness.is_alive(Instant::now()) {
            return;
        }
        tracing::warn!(
            leases = self.held.len(),
            "heartbeat not confirmed within failover time: stopping all shards"
        );
        for (shard, held) in self.held.drain() {
            held.handle.revoked.store(true, Ordering::SeqCst);
            let _ = self.events.send(LeaseEvent::Lost { shard_id: shard }).await;
        }
    }

    async fn sync_shards(&mut self) {
        let Some((client, stream)) = &self.stream else {
            return;
        };
        let shards = match discovery::list_shards(client, stream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "shard discovery failed; retrying later");
                return;
            }
        };
        if !self.scanned {
            // Which leases exist decides where new ones start: not before a scan succeeded.
            return;
        }
        let existing: HashSet<&str> = self
            .last_snapshot
            .leases
            .iter()
            .map(|l| l.shard_id.as_str())
            .collect();
        let started: HashSet<&str> = self
            .last_snapshot
            .leases
            .iter()
            .filter(|l| l.checkpoint.is_progress())
            .map(|l| l.shard_id.as_str())
            .collect();
        let new =
            discovery::new_leases(&shards, &existing, &started, &self.config.initial_position);
        // Parents before children, many at once: 1,000 new shards are ~32 writes deep, not
        // 1,000. A child whose parent could not be created waits for the next sync.
        let mut failed: HashSet<String> = HashSet::new();
        for wave in discovery::creation_waves(new) {
            let (ready, blocked): (Vec<Lease>, Vec<Lease>) = wave
                .into_iter()
                .partition(|l| !l.parent_shard_ids.iter().any(|p| failed.contains(p)));
            for l in blocked {
                tracing::debug!(shard = %l.shard_id, "not creating the lease: a parent's creation failed; next sync");
                failed.insert(l.shard_id);
            }
            for chunk in ready.chunks(CREATE_CONCURRENCY) {
                let mut creating = tokio::task::JoinSet::new();
                for lease in chunk {
                    let table = self.table.clone();
                    let lease = lease.clone();
                    creating.spawn(async move {
                        let res = table.create_lease(&lease).await;
                        (lease.shard_id, res)
                    });
                }
                let mut answered = HashSet::new();
                while let Some(done) = creating.join_next().await {
                    let Ok((shard, res)) = done else { continue };
                    answered.insert(shard.clone());
                    match res {
                        Ok(true) => tracing::info!(shard = %shard, "lease created"),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(shard = %shard, error = %e, "creating lease failed");
                            failed.insert(shard);
                        }
                    }
                }
                // A creation task that died unanswered counts as failed too.
                failed.extend(
                    chunk
                        .iter()
                        .filter(|l| !answered.contains(&l.shard_id))
                        .map(|l| l.shard_id.clone()),
                );
            }
        }
    }

    /// Deletes finished leases whose children all started and dead workers' heartbeat items
    /// (see [`super::cleanup`]), from the last scan. Rare writes: one per finished shard and
    /// one per dead worker, ever.
    async fn clean_up(&mut self) {
        if !self.scanned || self.draining || !self.liveness.is_alive(Instant::now()) {
            return;
        }
        let cleaner = match self.config.coordination {
            Coordination::Peer => cleanup::is_cleaner(&self.config.worker_id, &self.last_live),
            Coordination::Assigner => self.role.mine,
        };
        if !cleaner {
            return;
        }
        let now = Instant::now();
        let retention = self.config.failover_time * 3;
        let observer = &self.observer;
        let plan = cleanup::plan(
            &self.last_snapshot,
            &self.config.worker_id,
            &self.last_live,
            |w| observer.is_stale(&heartbeat_key(w), now, retention),
        );
        for (worker, counter) in plan.heartbeats {
            match self.table.delete_heartbeat_if(&worker, counter).await {
                Ok(true) => {
                    tracing::info!(worker = %worker, "dead worker's heartbeat item deleted")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(worker = %worker, error = %e, "deleting a dead worker's heartbeat failed")
                }
            }
        }
        for shard in plan.leases {
            match self.table.delete_finished_lease(&shard).await {
                Ok(true) => {
                    tracing::info!(shard = %shard, "finished lease deleted (its children all started)")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(shard = %shard, error = %e, "deleting a finished lease failed")
                }
            }
        }
    }

    /// Grants a hand-over of `shard` to `to`: the record processor is asked to finish, then
    /// the lease is handed over (see [`owner_wait`] for the timing).
    ///
    /// The deadline starts before the grant is written, and the requester's timeout only when
    /// it sees the grant: the processor is stopped before any take by timeout. A grant that
    /// does not land (the request is gone, the lease moved, DynamoDB failed) starts nothing;
    /// a request still there is answered next round.
    async fn start_handover(&mut self, shard: &str, to: &str) {
        let Some((handle, counter)) = self
            .held
            .get(shard)
            .filter(|h| !h.handing_over)
            .map(|h| (h.handle.clone(), h.counter))
        else {
            return;
        };
        let deadline = tokio::time::Instant::now()
            + owner_wait(self.config.handoff_timeout, self.config.scan_interval);
        match self
            .table
            .grant_handoff(shard, counter, &self.config.worker_id, to)
            .await
        {
            Ok(()) => {}
            // The request is gone or the lease moved: nothing to hand over.
            Err(LeaseError::LeaseLost { .. }) => {
                tracing::debug!(shard = %shard, to = %to, "hand-over request gone before the grant");
                return;
            }
            // The grant may have landed all the same (a retry whose answer was lost): go on
            // as granted, so the requester's timeout never runs while this processor
            // delivers. The hand-over itself does not need the grant.
            Err(e) => {
                tracing::info!(shard = %shard, to = %to, error = %e, "the grant's write failed; handing over all the same");
            }
        }
        if let Some(h) = self.held.get_mut(shard) {
            h.handing_over = true;
        }
        {
            let done = self.grant(shard.to_string(), handle, to.to_string(), deadline);
            let _ = self
                .events
                .send(LeaseEvent::ShutdownRequested {
                    shard_id: shard.to_string(),
                    done,
                    deadline,
                })
                .await;
        }
    }

    fn grant(
        &self,
        shard: String,
        lease_handle: Arc<LeaseHandle>,
        to: String,
        deadline: tokio::time::Instant,
    ) -> oneshot::Sender<()> {
        let (done_tx, done_rx) = oneshot::channel();
        let table = self.table.clone();
        let commands = self.commands_tx.clone();
        let mark = self.config.coordination == Coordination::Assigner;
        tokio::spawn(async move {
            // Answered (or the processor ended, dropping `done`) before the deadline: it
            // stopped and flushed; otherwise the hand-over is forced.
            if tokio::time::timeout_at(deadline, done_rx).await.is_err() {
                tracing::warn!(shard = %shard, to = %to, "hand-over forced: the record processor did not finish its batch, ShutdownRequested and checkpoint in time; the new owner may get records again");
            }
            lease_handle.revoked.store(true, Ordering::SeqCst);
            tracing::info!(shard = %shard, to = %to, "lease revoked for hand-over");
            let held = lease_handle.held.lock().await.clone();
            match table
                .hand_over(&held, &lease_handle.worker_id, &to, mark)
                .await
            {
                Ok(()) => tracing::info!(shard = %shard, to = %to, "lease handed over"),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "hand-over failed; the requester takes it after its timeout")
                }
            }
            let _ = commands.send(Command::HandoffFinished(shard)).await;
        });
        done_tx
    }

    /// Does this worker list shards, create leases and clean up? Every worker in peer mode;
    /// only the assigner in assigner mode.
    fn syncs(&self) -> bool {
        self.config.coordination == Coordination::Peer || self.role.mine
    }

    /// Remembers that this worker left `shard` at `counter` (assigner mode: the owner index
    /// may show it as ours for a moment longer).
    fn left_at(&mut self, shard: &str, counter: u64) {
        if self.config.coordination == Coordination::Assigner {
            self.role.left.insert(shard.to_string(), counter);
        }
    }

    async fn round(&mut self) {
        match self.config.coordination {
            Coordination::Peer => self.peer_round().await,
            Coordination::Assigner => self.assigned_round().await,
        }
    }

    /// Logs (an error, once per worker and mode) every worker of another coordination mode in
    /// `snapshot`.
    fn warn_of_other_modes(&mut self, snapshot: &TableSnapshot) {
        for (worker, mode) in other_modes(&snapshot.heartbeats, self.config.coordination) {
            if self.mixed_warned.insert(format!("{worker}/{mode}")) {
                tracing::error!(
                    worker,
                    its_mode = mode,
                    this_mode = self.config.coordination.as_str(),
                    "this fleet mixes coordination modes: start every worker of the application with the same --coordination (the workers fight over leases until then; every take stays fenced)"
                );
            }
        }
    }

    async fn acquired(&mut self, lease: &Lease, held: HeldLease, epoch: u64) {
        tracing::info!(shard = %lease.shard_id, checkpoint = %held.checkpoint, "lease acquired");
        let handle = Arc::new(LeaseHandle {
            table: self.table.clone(),
            worker_id: self.config.worker_id.clone(),
            held: tokio::sync::Mutex::new(held.clone()),
            revoked: AtomicBool::new(false),
            liveness: self.liveness.clone(),
            epoch,
        });
        let task = Arc::new(());
        self.held.insert(
            lease.shard_id.clone(),
            Held {
                handle: handle.clone(),
                counter: held.counter,
                handing_over: false,
                task: Arc::downgrade(&task),
            },
        );
        let event = LeaseEvent::Acquired(ShardLease {
            shard_id: lease.shard_id.clone(),
            checkpoint: held.checkpoint,
            pending_checkpoint: lease.pending_checkpoint.clone(),
            hash_range: lease.hash_range.clone(),
            start_timestamp_ms: held.start_timestamp_ms,
            inner: handle,
            _task: task,
        });
        let _ = self.events.send(event).await;
    }

    /// Leases whose record processor is gone (it stopped by itself, or never started) or
    /// that are no longer valid (revoked by a fenced write, or held across a heartbeat
    /// lapse) leave `held`: invalid ones are reported lost, the others are released, so no
    /// lease stays renewed by a heartbeat with nobody processing it.
    async fn drop_stopped(&mut self) {
        let mut lost = Vec::new();
        let mut stopped = Vec::new();
        for (shard, h) in &self.held {
            if h.handing_over {
                continue;
            }
            if !h.handle.is_valid() {
                lost.push(shard.clone());
            } else if h.task.strong_count() == 0 {
                stopped.push(shard.clone());
            }
        }
        for shard in lost {
            if let Some(h) = self.held.remove(&shard) {
                h.handle.revoked.store(true, Ordering::SeqCst);
                tracing::info!(shard = %shard, "lease no longer valid: dropped");
                let _ = self.events.send(LeaseEvent::Lost { shard_id: shard }).await;
            }
        }
        let me = self.config.worker_id.clone();
        let mut releases = tokio::task::JoinSet::new();
        for shard in stopped {
            if let Some(h) = self.held.remove(&shard) {
                h.handle.revoked.store(true, Ordering::SeqCst);
                let held = h.handle.held.lock().await.clone();
                let (table, me) = (self.table.clone(), me.clone());
                releases.spawn(async move {
                    // Left: released, or moved on already. A release that failed otherwise
                    // (throttling) is not left: the lease is still ours in the table, and the
                    // next member round takes it back rather than strand it (assigner mode:
                    // a lease left is never accepted again at that counter).
                    let left = match table.release(&held, &me).await {
                        Ok(()) => {
                            tracing::info!(shard = %shard, checkpoint = %held.checkpoint, "record processor stopped: lease released");
                            true
                        }
                        Err(LeaseError::LeaseLost { .. }) => {
                            tracing::info!(shard = %shard, "record processor stopped; its lease had moved already");
                            true
                        }
                        Err(e) => {
                            tracing::info!(shard = %shard, error = %e, "record processor stopped; releasing its lease failed (taken back next round)");
                            false
                        }
                    };
                    (shard, held.counter, left)
                });
            }
        }
        while let Some(done) = releases.join_next().await {
            if let Ok((shard, counter, true)) = done {
                self.left_at(&shard, counter);
            }
        }
    }

    async fn shutdown(&mut self) {
        tracing::info!(leases = self.held.len(), "shutting down: releasing leases");
        self.draining = true;
        self.step_down().await;
        // The heartbeat task announces it at once and goes on beating until the end.
        self.draining_flag.store(true, Ordering::SeqCst);
        self.beat_now.notify_one();
        let mut waits = Vec::new();
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        for (shard, held) in &self.held {
            if held.handing_over {
                continue;
            }
            let (done, rx) = oneshot::channel();
            let _ = self
                .events
                .send(LeaseEvent::ShutdownRequested {
                    shard_id: shard.clone(),
                    done,
                    deadline,
                })
                .await;
            waits.push(rx);
        }
        let _ = tokio::time::timeout(
            self.config.shutdown_timeout,
            futures_util::future::join_all(waits),
        )
        .await;
        let me = self.config.worker_id.clone();
        // Released concurrently: the fleet's wait for our shards is one write long, not one
        // write per lease.
        let mut releases = tokio::task::JoinSet::new();
        let releasing: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| !h.handing_over)
            .map(|(s, _)| s.clone())
            .collect();
        for shard in releasing {
            let Some(held) = self.held.remove(&shard) else {
                continue;
            };
            held.handle.revoked.store(true, Ordering::SeqCst);
            let h = held.handle.held.lock().await.clone();
            let table = self.table.clone();
            let me = me.clone();
            releases.spawn(async move {
                match table.release(&h, &me).await {
                    Ok(()) => tracing::info!(shard = %shard, "lease released"),
                    Err(e) => tracing::warn!(shard = %shard, error = %e, "release failed; others take it after failover time"),
                }
            });
        }
        while releases.join_next().await.is_some() {}
        // Hand-overs granted before the shutdown finish on their own tasks: wait for them.
        let handing = self.held.len();
        if handing > 0 {
            let until = tokio::time::Instant::now() + self.config.handoff_timeout;
            while !self.held.is_empty() {
                match tokio::time::timeout_at(until, self.commands.recv()).await {
                    Ok(Some(Command::HandoffFinished(shard))) => {
                        self.held.remove(&shard);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::info!(
                handing,
                left = self.held.len(),
                "hand-overs in flight finished"
            );
        }
        self.stop_heartbeat().await;
        if let Err(e) = self.table.remove_heartbeat(&me).await {
            tracing::warn!(error = %e, "removing the heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read at the tip while the app works on old records: the lag is their age (and
    /// grows while the call lasts), until the app answers.
    #[test]
    fn the_lag_is_the_age_of_what_the_app_works_on_while_it_works() {
        let board = LagBoard::default();
        board.set("s", 0);
        board.delivering("s", 42_000);
        let lag = board.snapshot().get("s").copied().unwrap_or(0);
        assert!((42_000..43_000).contains(&lag), "{lag}");
        board.set("s", 50_000);
        assert!(
            board.snapshot().get("s").is_some_and(|l| *l >= 50_000),
            "the larger of the two"
        );
        // Two lanes in flight: the lag holds until both answered.
        board.delivering("s", 1_000);
        board.set("s", 0);
        board.delivered("s");
        assert!(
            board.snapshot().get("s").is_some_and(|l| *l >= 42_000),
            "one call left"
        );
        board.delivered("s");
        assert_eq!(board.snapshot().get("s"), Some(&0));
        // A shard not read here any more is not reported.
        board.remove("s");
        board.delivering("s", 5);
        assert_eq!(board.snapshot().get("s"), None);
    }

    #[test]
    fn workers_of_another_mode_are_named_and_older_heartbeats_are_not() {
        let beat = |w: &str, mode: Option<&str>| Heartbeat {
            worker_id: w.into(),
            counter: 1,
            draining: false,
            lag: Default::default(),
            coordination: mode.map(String::from),
            stalled: Default::default(),
            failing: Default::default(),
        };
        let beats = [
            beat("a", Some("assigner")),
            beat("p", Some("peer")),
            beat("old", None),
        ];
        assert_eq!(
            other_modes(&beats, Coordination::Assigner),
            vec![("p", "peer")]
        );
        assert_eq!(
            other_modes(&beats, Coordination::Peer),
            vec![("a", "assigner")]
        );
        assert!(other_modes(&beats[..1], Coordination::Assigner).is_empty());
    }

    #[test]
    fn the_owners_wait_and_the_requesters_timeout_add_up() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Defaults: 5 s timeout, 1 s scans.
        assert_eq!(owner_wait(s(5), s(1)), ms(3_500));
        // The test timings: 2 s, 250 ms.
        assert_eq!(owner_wait(s(2), ms(250)), ms(1_250));
        for (timeout, scan) in [(s(5), s(1)), (s(4), ms(250)), (s(30), s(1))] {
            assert!(owner_wait(timeout, scan) + scan + ms(500) <= timeout);
        }
        // Never less than half the timeout.
        assert_eq!(owner_wait(s(1), s(1)), ms(500));
    }
}
