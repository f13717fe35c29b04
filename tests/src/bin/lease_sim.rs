//! Assigner-mode coordination at a scale this machine cannot run for real (10,000 shards, 500
//! workers): a discrete-time simulation that runs the **same decision code** as the worker
//! against a model of the lease table that counts request units as DynamoDB bills them
//! (`lease::table::item_size` over items shaped as the worker writes them).
//!
//! Every decision is a call of the function the coordinator calls, never a copy of it:
//! `lease::assign::assigner_decision` (liveness, proof of life, hand-over follow-up, the
//! plan, the successors), `lease::assign::member_decision`, `lease::assign::watch` and
//! `lease::liveness::Observer`. What is the simulation's own is the I/O: the table model the
//! decisions are applied to, the request units, the timing of rounds and heartbeats.
//!
//! What it models: one round per worker per second, all workers' rounds in the same tick
//! (assigner first); heartbeats every failover/3 at staggered phases; an owner index that is
//! never behind the table; apps that answer a hand-over at once; every write succeeds. What
//! it does not: request latency, throttling, DynamoDB's eventual consistency lag, a round
//! slower than its interval. Timings are therefore in whole rounds, and real ones add request
//! latency and up to one round of phase between workers.
//!
//! Options: `--round-secs S` (default 1), `--failover-secs S` (default 10).
//! Run: `cargo run --release -p kinesis-operator-tests --bin lease_sim -- --shards 10000
//! --workers 500`; `--bench-items` shapes items as `lease_bench` writes them (short worker
//! ids, no sequence numbers), to check the model against a measured run.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kinesis_operator_tests::lease_model::{MONTH, RRU_PRICE, Shapes, Units, WRU_PRICE, cost};
use kinesis_worker::lease::assign::{self, AssignerSettings, HeldState, OwnedLease, Watch};
use kinesis_worker::lease::checkpoint::Checkpoint;
use kinesis_worker::lease::coordinator::CoordinatorConfig;
use kinesis_worker::lease::handoff;
use kinesis_worker::lease::liveness::{Observer, heartbeat_key};
use kinesis_worker::lease::model::{Heartbeat, Lease, TableSnapshot};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Default failover time (seconds); `--failover-secs`.
const FAILOVER: f64 = 10.0;

/// `lease_sim`: assigner-mode coordination in whole rounds (the bill).
#[derive(clap::Parser)]
struct Opts {
    /// Shards (leases).
    #[arg(long, default_value_t = 10_000)]
    shards: usize,
    /// Workers.
    #[arg(long, default_value_t = 500)]
    workers: usize,
    /// Items shaped as `lease_bench` writes them.
    #[arg(long)]
    bench_items: bool,
    /// Seconds per round (the scan interval).
    #[arg(long = "round-secs", default_value_t = 1.0)]
    round: f64,
    /// Failover time (seconds); heartbeats every third of it.
    #[arg(long = "failover-secs", default_value_t = FAILOVER)]
    failover: f64,
}

struct Worker {
    id: String,
    alive: bool,
    held: HashMap<String, HeldState>,
    left: HashMap<String, u64>,
    beat: u64,
    next_beat: f64,
    /// This worker's own observation of the assigner's heartbeat.
    watch: Observer,
}

struct Sim {
    t: f64,
    round: f64,
    failover: f64,
    base: Instant,
    shapes: Shapes,
    leases: BTreeMap<String, Lease>,
    workers: Vec<Worker>,
    assigner: usize,
    observer: Observer,
    pending: HashMap<String, handoff::Request<Instant>>,
    units: Units,
    next_shard: usize,
    /// The assigner's successors (they watch it every round).
    successors: Vec<String>,
    rounds: u64,
}

impl Sim {
    fn new(o: &Opts) -> Self {
        let shapes = Shapes {
            bench: o.bench_items,
        };
        let mut s = Sim {
            t: 0.0,
            round: o.round,
            failover: o.failover,
            base: Instant::now(),
            leases: BTreeMap::new(),
            workers: Vec::new(),
            assigner: 0,
            observer: Observer::new(),
            pending: HashMap::new(),
            units: Units::default(),
            next_shard: 0,
            successors: Vec::new(),
            rounds: 0,
            shapes,
        };
        s.add_shards(o.shards);
        for _ in 0..o.workers {
            s.join();
        }
        s
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_secs_f64(self.t)
    }

    fn add_shards(&mut self, n: usize) {
        for _ in 0..n {
            let id = format!("shardId-{:012}", self.next_shard);
            self.next_shard += 1;
            let lease = Lease::new(&id, Checkpoint::TrimHorizon, Vec::new());
            let size = self.shapes.lease_item(&lease);
            self.units.write(size, 0);
            self.leases.insert(id, lease);
        }
    }

    fn join(&mut self) -> usize {
        let i = self.workers.len();
        // The first heartbeat at start (seen by the next scan), the second about a round
        // after it (the proof of life; in the worker half a scan interval after the first),
        // then every third of the failover time; starts are spread a little, as pods' are.
        let phase = (i as f64 * 0.013) % self.round + self.round * 1.5;
        self.workers.push(Worker {
            id: self.shapes.worker_id(i),
            alive: true,
            held: HashMap::new(),
            left: HashMap::new(),
            beat: 1,
            next_beat: self.t + phase,
            watch: Observer::new(),
        });
        i
    }

    fn heartbeats(&self) -> Vec<Heartbeat> {
        self.workers
            .iter()
            .map(|w| Heartbeat {
                worker_id: w.id.clone(),
                counter: w.beat,
                draining: false,
                lag: BTreeMap::new(),
                coordination: Some("assigner".into()),
                stalled: Default::default(),
                failing: Default::default(),
            })
            .collect()
    }

    /// One round: heartbeats due, then every live worker's round (the assigner's first).
    fn tick(&mut self) {
        self.t += self.round;
        for i in 0..self.workers.len() {
            while self.workers[i].alive && self.workers[i].next_beat <= self.t {
                self.workers[i].beat += 1;
                self.workers[i].next_beat += self.failover / 3.0;
                let size = self
                    .shapes
                    .heartbeat_item(&self.workers[i].id, self.workers[i].held.len());
                self.units.write(size, 0);
            }
        }
        self.watch_role();
        if self.workers[self.assigner].alive {
            self.assigner_round();
        }
        // Every member reads its leases as the table is at the start of its round: a change
        // made by another worker in this same tick is seen next round (the index's lag).
        let mut by_owner: HashMap<String, Vec<OwnedLease>> = HashMap::new();
        for l in self.leases.values() {
            if let Some(o) = &l.owner {
                by_owner.entry(o.clone()).or_default().push(OwnedLease {
                    shard_id: l.shard_id.clone(),
                    counter: l.counter,
                    handoff_to: l.handoff_to.clone(),
                });
            }
        }
        for i in 0..self.workers.len() {
            if self.workers[i].alive {
                let mine = by_owner.remove(&self.workers[i].id).unwrap_or_default();
                self.member_round(i, mine);
            }
        }
    }

    fn watch_role(&mut self) {
        let now = self.now();
        let holder = self.workers[self.assigner].id.clone();
        let beat = self.workers[self.assigner].beat;
        self.rounds += 1;
        for i in 0..self.workers.len() {
            if i == self.assigner || !self.workers[i].alive {
                continue;
            }
            // Successors look every round, the others every ASSIGNER_REREAD_ROUNDS rounds (and
            // re-read the role item then), as `coordinator::assigned::check_role`.
            let successor = self.successors.contains(&self.workers[i].id);
            if !successor {
                let every = u64::from(assign::ASSIGNER_REREAD_ROUNDS);
                if !(self.rounds + i as u64).is_multiple_of(every) {
                    continue;
                }
                self.units.read(200, false);
            }
            // One eventually consistent GetItem of the holder's heartbeat.
            self.units.read(200, false);
            let w = &mut self.workers[i];
            w.watch.observe(&holder, beat, now);
            let stale = w
                .watch
                .is_stale(&holder, now, Duration::from_secs_f64(self.failover));
            if assign::watch(Some(&holder), stale, false) == Watch::Claim {
                // A strongly consistent read, then the conditional claim: this one wins.
                self.units.read(100, true);
                self.units.write(100, 2);
                self.assigner = i;
                // The new assigner's observer: its watch of the old one, nothing else yet.
                self.observer = Observer::new();
                self.observer.observe(
                    &heartbeat_key(&holder),
                    beat,
                    now - Duration::from_secs_f64(self.failover * 2.0),
                );
                self.pending.clear();
                eprintln!(
                    "  t={:.0}: {} became the assigner",
                    self.t, self.workers[i].id
                );
                return;
            }
        }
    }

    fn assigner_round(&mut self) {
        let now = self.now();
        // An eventually consistent scan of every item; the role item, strongly.
        let bytes: usize = self
            .leases
            .values()
            .map(|l| self.shapes.lease_item(l))
            .sum::<usize>()
            + self
                .workers
                .iter()
                .map(|w| self.shapes.heartbeat_item(&w.id, w.held.len()))
                .sum::<usize>();
        for page in 0..bytes.div_ceil(1 << 20) {
            let in_page = (bytes - page * (1 << 20)).min(1 << 20);
            self.units.read(in_page, false);
        }
        self.units.read(100, true);
        let snapshot = TableSnapshot {
            leases: self.leases.values().cloned().collect(),
            heartbeats: self.heartbeats(),
        };
        let me = self.workers[self.assigner].id.clone();
        // The coordinator's decision, called as the coordinator calls it (a scan answered at
        // once: asked and answered at the same instant).
        let settings = self.settings(&me);
        let decision = assign::assigner_decision(
            &snapshot,
            &mut self.observer,
            &mut self.pending,
            &settings,
            now,
            now,
        );
        if decision.successors != self.successors {
            self.successors = decision.successors;
            self.units.write(200, 0);
        }
        // The table model: every take lands (conditional on the scanned counter, which
        // nothing else changed in between).
        for take in &decision.takes {
            let (shard, to) = (&take.lease.shard_id, &take.to);
            self.pending.remove(shard);
            if let Some(l) = self.leases.get_mut(shard) {
                l.owner = Some(to.clone());
                l.counter += 1;
                l.handoff_to = None;
                l.assigned = to != &me;
            }
            self.units.write(300, 2);
            if to == &me {
                let c = self.leases[shard].counter;
                self.workers[self.assigner].held.insert(
                    shard.clone(),
                    HeldState {
                        counter: c,
                        handing_over: false,
                    },
                );
            }
        }
        for (lease, to) in &decision.requests {
            if let Some(l) = self.leases.get_mut(&lease.shard_id) {
                l.handoff_to = Some(to.clone());
                self.pending.insert(
                    lease.shard_id.clone(),
                    handoff::Request::new(to.clone(), l.counter),
                );
            }
            self.units.write(300, 1);
        }
    }

    /// The assigner's settings, as the worker derives them from its configuration: a scan
    /// every round, a heartbeat every third of the failover time.
    fn settings<'a>(&self, me: &'a str) -> AssignerSettings<'a> {
        // The hand-over timeout and moves per round: the worker's defaults.
        let defaults = CoordinatorConfig::new(me);
        AssignerSettings {
            me,
            draining: false,
            failover_time: Duration::from_secs_f64(self.failover),
            heartbeat_interval: Duration::from_secs_f64(self.failover / 3.0),
            scan_interval: Duration::from_secs_f64(self.round),
            handoff_timeout: defaults.handoff_timeout,
            max_handoffs_per_round: defaults.max_handoffs_per_round,
        }
    }

    fn member_round(&mut self, i: usize, mine: Vec<OwnedLease>) {
        let me = self.workers[i].id.clone();
        if i != self.assigner {
            // One Query on the owner index.
            let bytes: usize = mine
                .iter()
                .filter_map(|o| self.leases.get(&o.shard_id))
                .map(|l| self.shapes.index_entry(l))
                .sum();
            self.units.read(bytes, false);
        }
        let w = &mut self.workers[i];
        let plan = assign::member_decision(&me, &mine, &w.held, &mut w.left, false);
        for s in &plan.lost {
            w.held.remove(s);
        }
        for (shard, to) in &plan.grant {
            // The app answers at once: the owner grants (one write, not indexed) and hands
            // over in this round.
            if let (Some(l), Some(h)) = (self.leases.get_mut(shard), w.held.remove(shard)) {
                self.units.write(300, 0);
                l.owner = Some(to.clone());
                l.counter = h.counter + 1;
                l.handoff_to = None;
                l.assigned = true;
                w.left.insert(shard.clone(), h.counter);
                self.units.write(300, 2);
            }
        }
        for o in &plan.accept {
            let Some(l) = self.leases.get_mut(&o.shard_id) else {
                continue;
            };
            self.units.write(300, 2);
            if l.owner.as_deref() == Some(me.as_str()) && l.counter == o.counter {
                l.counter += 1;
                l.assigned = false;
                w.held.insert(
                    o.shard_id.clone(),
                    HeldState {
                        counter: l.counter,
                        handing_over: false,
                    },
                );
            } else {
                w.left.insert(o.shard_id.clone(), o.counter);
            }
        }
    }

    /// Accepted leases per live worker; panics on a lease accepted by two workers.
    fn accepted(&self) -> HashMap<String, usize> {
        let mut by: HashMap<String, usize> = HashMap::new();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for w in self.workers.iter().filter(|w| w.alive) {
            for (s, h) in &w.held {
                let l = &self.leases[s];
                if l.owner.as_deref() == Some(w.id.as_str()) && l.counter == h.counter {
                    if let Some(other) = seen.insert(s.as_str(), w.id.as_str()) {
                        panic!("{s} accepted by {other} and {}", w.id);
                    }
                    *by.entry(w.id.clone()).or_insert(0) += 1;
                }
            }
        }
        by
    }

    fn all_accepted(&self) -> bool {
        self.accepted().values().sum::<usize>() == self.leases.len()
    }

    /// Ticks until `done` holds; returns the seconds taken. `limit` is for the default
    /// timings, stretched with slower rounds or a longer failover time.
    fn until(&mut self, what: &str, limit: f64, done: impl Fn(&Sim) -> bool) -> Result<f64> {
        let limit = limit * (self.failover / FAILOVER).max(self.round).max(1.0);
        let t0 = self.t;
        while !done(self) {
            if self.t - t0 > limit {
                return Err(format!("{what}: not within {limit} s").into());
            }
            self.tick();
        }
        Ok(self.t - t0)
    }
}

fn main() -> Result<()> {
    let o = <Opts as clap::Parser>::parse();
    let mut sim = Sim::new(&o);
    println!(
        "lease sim: {} shards, {} workers, failover {} s, {} s rounds, {} items",
        o.shards,
        o.workers,
        o.failover,
        o.round,
        if o.bench_items {
            "lease_bench-shaped"
        } else {
            "production-shaped"
        }
    );
    let t = sim.until("initial balance", 600.0, |s| {
        let fair = s.leases.len().div_ceil(s.workers.len());
        s.all_accepted() && s.accepted().values().all(|n| *n + 1 >= fair && *n <= fair)
    })?;
    println!("initial balance: {t:.0} s");

    let before = sim.units;
    let t0 = sim.t;
    // 60 s at the default timings: 18 heartbeats a worker; as many with a longer failover.
    let window = 60.0 * (o.failover / FAILOVER).max(1.0);
    while sim.t - t0 < window {
        sim.tick();
    }
    let secs = sim.t - t0;
    let steady = sim.units.minus(before);
    let (rru, wru, month) = cost(steady, secs);
    println!(
        "steady state ({secs:.0} s): {rru:.1} RRU/s, {wru:.1} WRU/s ({:.1} table + {:.1} owner index); ${month:.2}/month on demand",
        steady.write as f64 / secs,
        steady.index as f64 / secs
    );
    // Peer mode on the same items: every worker, every second, a strongly consistent scan.
    let scan_bytes: usize = sim
        .leases
        .values()
        .map(|l| sim.shapes.lease_item(l))
        .sum::<usize>()
        + sim
            .workers
            .iter()
            .map(|w| sim.shapes.heartbeat_item(&w.id, w.held.len()))
            .sum::<usize>();
    let peer_rru = (o.workers * 2 * scan_bytes.div_ceil(4096)) as f64 / 2.0 / o.round;
    let peer_wru = steady.write as f64 / secs;
    println!(
        "peer mode, same fleet (arithmetic): {peer_rru:.0} RRU/s (strongly consistent scans of {} KB by every worker), {peer_wru:.1} WRU/s; ${:.2}/month",
        scan_bytes / 1024,
        (peer_rru * RRU_PRICE + peer_wru * WRU_PRICE) * MONTH / 1e6
    );
    let kcl_wru = o.shards as f64 * 0.3;
    println!(
        "KCL 3.x, same fleet (arithmetic: every lease renewed every ~3.3 s): {kcl_wru:.0} WRU/s; ${:.2}/month",
        kcl_wru * WRU_PRICE * MONTH / 1e6
    );

    // A worker joins.
    let j = sim.join();
    let jid = sim.workers[j].id.clone();
    let live = sim.workers.iter().filter(|w| w.alive).count();
    let floor = sim.leases.len() / live;
    let before = sim.units;
    let t0 = sim.t;
    let t = sim.until("joiner at its fair share", 120.0, |s| {
        s.accepted().get(&jid).copied().unwrap_or(0) >= floor
    })?;
    let moved = sim.units.minus(before);
    println!(
        "a joining worker reaches its fair share ({floor} leases): {t:.0} s, {} write units",
        moved.write + moved.index
    );
    let _ = t0;

    // A worker (not the assigner) killed: its leases accepted elsewhere.
    let victim = (sim.assigner + 1) % sim.workers.len();
    sim.workers[victim].alive = false;
    let vid = sim.workers[victim].id.clone();
    let t = sim.until("killed worker's leases moved", 120.0, |s| {
        s.all_accepted() && !s.accepted().contains_key(&vid)
    })?;
    println!(
        "kill -9 of a worker → its shards accepted by others: {t:.0} s (failover {} s)",
        o.failover
    );

    // The assigner killed.
    let a = sim.assigner;
    let aid = sim.workers[a].id.clone();
    sim.workers[a].alive = false;
    eprintln!("  t={:.0}: {aid} (the assigner) killed", sim.t);
    let t = sim.until("assigner's leases moved", 120.0, |s| {
        s.all_accepted() && !s.accepted().contains_key(&aid)
    })?;
    println!("kill -9 of the assigner → a new assigner, its shards accepted by others: {t:.0} s");
    // The new assigner takes the dead one's leases itself at first (up to twice the share)
    // and hands the surplus on once it has seen the others alive.
    let balanced = |s: &Sim| {
        let live = s.workers.iter().filter(|w| w.alive).count();
        let fair = s.leases.len().div_ceil(live);
        s.all_accepted() && s.accepted().values().all(|n| *n + 1 >= fair && *n <= fair)
    };
    let t = sim.until("balanced after the assigner's death", 300.0, balanced)?;
    println!("  … and the fleet balanced again {t:.0} s later");

    // A reshard adds shards (once the new assigner has had a heartbeat interval and more to
    // see every worker alive, as in the runs before it took the dead one's leases itself).
    for _ in 0..10 {
        sim.tick();
    }
    let add = (o.shards / 10).max(1);
    let first_new = sim.next_shard;
    sim.add_shards(add);
    let new: Vec<String> = (first_new..sim.next_shard)
        .map(|i| format!("shardId-{i:012}"))
        .collect();
    let t = sim.until("new shards leased", 120.0, |s| {
        let held: std::collections::HashSet<&String> = s
            .workers
            .iter()
            .filter(|w| w.alive)
            .flat_map(|w| w.held.keys())
            .collect();
        new.iter().all(|n| held.contains(n))
    })?;
    println!("a reshard adds {add} shards → every one accepted by a worker: {t:.0} s");
    let counts = sim.accepted();
    eprintln!(
        "  leases per worker then: {}..{} over {} workers",
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
        counts.len()
    );
    let t = sim.until("balanced again", 300.0, balanced)?;
    println!("  … and the fleet balanced again {t:.0} s later");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The simulation cannot decide otherwise than the coordinator: both call
    // `assign::assigner_decision`, `assign::member_decision` and `assign::watch` (there is no
    // copy of them here to drift). What this test guards is the simulation's own part, the
    // table model the decisions are applied to: a small fleet must still balance, and lose
    // nothing when a worker, then the assigner, is killed.
    #[test]
    fn a_small_fleet_balances_and_survives_a_worker_and_the_assigner_killed() -> Result<()> {
        let mut sim = Sim::new(&Opts {
            shards: 24,
            workers: 4,
            bench_items: false,
            round: 1.0,
            failover: FAILOVER,
        });
        let balanced = |s: &Sim| {
            let live = s.workers.iter().filter(|w| w.alive).count();
            let fair = s.leases.len().div_ceil(live);
            s.all_accepted() && s.accepted().values().all(|n| *n + 1 >= fair && *n <= fair)
        };
        sim.until("initial balance", 120.0, balanced)?;

        let victim = (sim.assigner + 1) % sim.workers.len();
        sim.workers[victim].alive = false;
        let vid = sim.workers[victim].id.clone();
        let t = sim.until("killed worker's leases moved", 120.0, |s| {
            s.all_accepted() && !s.accepted().contains_key(&vid)
        })?;
        // Not before its last heartbeat (at most a heartbeat interval old) went stale.
        assert!(t > FAILOVER * 2.0 / 3.0, "declared dead after {t} s");

        let a = sim.assigner;
        let aid = sim.workers[a].id.clone();
        sim.workers[a].alive = false;
        sim.until("assigner's leases moved", 120.0, |s| {
            s.all_accepted() && !s.accepted().contains_key(&aid)
        })?;
        assert_ne!(sim.assigner, a, "a new assigner");
        sim.until("balanced after the assigner's death", 300.0, balanced)?;
        Ok(())
    }
}
