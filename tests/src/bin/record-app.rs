//! A record processor for the tests and benchmarks: appends every delivered record as a JSON
//! line to a file (or discards it), prints its lifecycle calls on stdout, and fails on demand.
//!
//! ```text
//! record-app --address unix:///tmp/x.sock [--out records.jsonl] [--fail-first N]
//!            [--crash-at-batch N] [--checkpoint all|now|none|first|idle] [--slow-lease-lost-ms N]
//!            [--fail-shard SHARD] [--delay-ms N] [--poison DATA] [--fail-from DATA]
//!            [--hang-on-empty] [--hang-on DATA]
//! ```
//!
//! `--fail-from DATA` answers a batch holding a record with that data as a partial batch
//! failure: the records before it are written out and acknowledged, `failed_from` names it.
//!
//! The output file (`--out`) holds three kinds of JSON lines (read by `pipeline::received`,
//! `pipeline::acks` and `pipeline::app_events`):
//! - a record: `{"shard", "key", "seq", "data", "attempt", "owner", "counter", "recv", "call",
//!   …}`, one per record a `ProcessRecords` call delivered (written before the app answers);
//! - an acknowledgement, `{"ack": CALL, "shard", "owner", "counter", "attempt", "n", "recv"}`,
//!   once the call's records are written and the app is about to answer it successfully: it
//!   acknowledges exactly the records written with that `call` id (a call that fails, or an
//!   app killed before answering, leaves its records received and not acknowledged);
//! - a lifecycle call, `{"event": "shutdown-requested" | "lease-lost" | "shard-ended",
//!   "reason", "shard", "owner", "counter", "recv"}`, with the fencing token of the app's last
//!   `ProcessRecords` call for the shard since its `Initialize` (none: owner "", counter 0).
//!
//! Two calls for the same shard in flight at once break the contract (docs/PROCESSOR.md):
//! the app prints `overlap <shard> <call> <call in flight>` when it sees one.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kinesis_processor::tonic::{Request, Response, Status};
use kinesis_processor::v1;

struct RecordApp {
    out: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    fail_first: u64,
    /// Fail every call that carries a record with exactly this data (a poison record).
    poison: Option<String>,
    /// Acknowledge only the records before one with exactly this data (partial failure).
    fail_from: Option<String>,
    /// Fail every ProcessRecords call with records for this shard (a stuck shard).
    fail_shard: Option<String>,
    crash_at: Option<u64>,
    checkpoint: String,
    calls: AtomicU64,
    slow_lease_lost: std::time::Duration,
    /// Time taken by every ProcessRecords call with records (a slow app).
    delay: std::time::Duration,
    /// Never answer a ProcessRecords call without records (a hung app; `--hang-on-empty`).
    hang_on_empty: bool,
    /// Never answer a call that carries a record with exactly this data (`--hang-on DATA`).
    hang_on: Option<String>,
    /// Shard → the call in flight for it.
    in_flight: std::sync::Arc<Mutex<std::collections::HashMap<String, &'static str>>>,
    /// Names this process in call ids (pid and start time): a restarted app appends to the
    /// same file, and its call numbers start again at 1.
    instance: String,
    /// Shard → the fencing token (owner, counter) of its last `ProcessRecords` call since its
    /// `Initialize`: what a lifecycle line names as the tenure that ended.
    tokens: Mutex<std::collections::HashMap<String, (String, u64)>>,
}

/// Marks a call for a shard in flight until dropped.
struct InFlight {
    shard: String,
    map: std::sync::Arc<Mutex<std::collections::HashMap<String, &'static str>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&self.shard);
        }
    }
}

impl RecordApp {
    /// Appends JSON lines to the output, if any, and flushes it.
    fn write(&self, lines: &[serde_json::Value]) -> Result<(), Status> {
        let Some(out) = &self.out else {
            return Ok(());
        };
        let mut out = out
            .lock()
            .map_err(|_| Status::internal("output lock poisoned"))?;
        for line in lines {
            writeln!(out, "{line}").map_err(|e| Status::internal(e.to_string()))?;
        }
        out.flush().map_err(|e| Status::internal(e.to_string()))
    }

    /// Appends a lifecycle line: the app's tenure of `shard` ended by `event` (with `reason`),
    /// naming the fencing token of its last call for the shard (and forgetting it).
    fn ended(&self, shard: &str, event: &str, reason: &str) -> Result<(), Status> {
        let (owner, counter) = self
            .tokens
            .lock()
            .ok()
            .and_then(|mut m| m.remove(shard))
            .unwrap_or_default();
        self.write(&[serde_json::json!({
            "event": event,
            "reason": reason,
            "shard": shard,
            "owner": owner,
            "counter": counter,
            "recv": now_ns().to_string(),
        })])
    }

    fn enter(&self, shard: &str, call: &'static str) -> InFlight {
        if let Ok(mut m) = self.in_flight.lock()
            && let Some(other) = m.insert(shard.to_string(), call)
        {
            say(format!("overlap {shard} {call} {other}"));
        }
        InFlight {
            shard: shard.to_string(),
            map: self.in_flight.clone(),
        }
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[kinesis_processor::tonic::async_trait]
impl v1::record_processor_server::RecordProcessor for RecordApp {
    async fn initialize(
        &self,
        r: Request<v1::InitializeRequest>,
    ) -> Result<Response<v1::InitializeResponse>, Status> {
        let r = r.into_inner();
        let _call = self.enter(&r.shard_id, "initialize");
        // A new tenure: until its first call, no token to name.
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(&r.shard_id);
        }
        let start = match r.starting_position.and_then(|p| p.position) {
            Some(v1::starting_position::Position::After(p)) => {
                format!("after:{}/{}", p.sequence_number, p.sub_sequence_number)
            }
            Some(v1::starting_position::Position::Initial(i)) => i,
            None => "none".into(),
        };
        say(format!("initialize {} {start}", r.shard_id));
        Ok(Response::new(v1::InitializeResponse {}))
    }

    async fn process_records(
        &self,
        r: Request<v1::ProcessRecordsRequest>,
    ) -> Result<Response<v1::ProcessRecordsResponse>, Status> {
        let _call = self.enter(&r.get_ref().shard_id, "process_records");
        if let Ok(mut m) = self.tokens.lock() {
            let q = r.get_ref();
            m.insert(q.shard_id.clone(), (q.lease_owner.clone(), q.lease_counter));
        }
        if let Some(h) = &self.hang_on
            && r.get_ref().records.iter().any(|x| x.data == h.as_bytes())
        {
            say(format!("hanging {}", r.get_ref().shard_id));
            std::future::pending::<()>().await;
        }
        if self.hang_on_empty && r.get_ref().records.is_empty() {
            say(format!("hanging {}", r.get_ref().shard_id));
            std::future::pending::<()>().await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let call = format!("{}/{n}", self.instance);
        if self.crash_at == Some(n) {
            say(format!("crash at batch {n}"));
            std::process::exit(3);
        }
        if self
            .fail_shard
            .as_deref()
            .is_some_and(|s| s == r.get_ref().shard_id && !r.get_ref().records.is_empty())
        {
            return Err(Status::unavailable(
                "this shard always fails (--fail-shard)",
            ));
        }
        if let Some(p) = &self.poison
            && r.get_ref().records.iter().any(|x| x.data == p.as_bytes())
        {
            return Err(Status::invalid_argument(format!(
                "poison record `{p}` (--poison)"
            )));
        }
        if n <= self.fail_first {
            return Err(Status::unavailable(format!("failing call {n} on purpose")));
        }
        let valid_until: Option<i64> = r
            .metadata()
            .get(kinesis_processor::LEASE_VALID_UNTIL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut r = r.into_inner();
        if !r.records.is_empty() {
            tokio::time::sleep(self.delay).await;
        }
        let failed_from = self.fail_from.as_ref().and_then(|p| {
            let i = r.records.iter().position(|x| x.data == p.as_bytes())?;
            let failed = r.records.split_off(i);
            failed.first().map(v1::Record::position)
        });
        let recv = now_ns();
        if self.out.is_some() {
            let lines: Vec<serde_json::Value> = r
                .records
                .iter()
                .map(|rec| {
                    serde_json::json!({
                        "shard": r.shard_id,
                        "key": rec.partition_key,
                        "seq": rec.sequence_number,
                        "sub": rec.sub_sequence_number,
                        "agg": rec.aggregated,
                        "ehk": rec.explicit_hash_key,
                        "arrival": rec.approximate_arrival_timestamp_ms,
                        "data": String::from_utf8_lossy(&rec.data),
                        "attempt": r.attempt,
                        "owner": r.lease_owner,
                        "counter": r.lease_counter,
                        "recv": recv.to_string(),
                        "call": call,
                        "valid_until": valid_until,
                    })
                })
                .collect();
            self.write(&lines)?;
        }
        let checkpoint = match self.checkpoint.as_str() {
            "none" => None,
            // Only the first record: exercises `up_to`.
            "first" => r
                .records
                .first()
                .map(|f| v1::Checkpoint::up_to(f.position())),
            // Beyond the batch: must be refused by the worker.
            "beyond" => Some(v1::Checkpoint::up_to(v1::RecordPosition {
                sequence_number: "9".repeat(60),
                sub_sequence_number: 0,
            })),
            // Only on an empty call (an app that checkpoints from a timer).
            "idle" => r
                .records
                .is_empty()
                .then_some(v1::Checkpoint::all_delivered()),
            // Everything, written at once (`write_now`).
            "now" => Some(v1::Checkpoint::all_delivered().written_now()),
            _ => Some(v1::Checkpoint::all_delivered()),
        };
        // Answered successfully from here on: the records written above are acknowledged.
        if !r.records.is_empty() {
            self.write(&[serde_json::json!({
                "ack": call,
                "shard": r.shard_id,
                "owner": r.lease_owner,
                "counter": r.lease_counter,
                "attempt": r.attempt,
                "n": r.records.len(),
                "recv": recv.to_string(),
            })])?;
        }
        Ok(Response::new(v1::ProcessRecordsResponse {
            checkpoint,
            failed_from,
        }))
    }

    async fn lease_lost(
        &self,
        r: Request<v1::LeaseLostRequest>,
    ) -> Result<Response<v1::LeaseLostResponse>, Status> {
        let shard = r.into_inner().shard_id;
        let _call = self.enter(&shard, "lease_lost");
        self.ended(&shard, "lease-lost", "")?;
        tokio::time::sleep(self.slow_lease_lost).await;
        say(format!("lease-lost {shard}"));
        Ok(Response::new(v1::LeaseLostResponse {}))
    }

    async fn shard_ended(
        &self,
        r: Request<v1::ShardEndedRequest>,
    ) -> Result<Response<v1::ShardEndedResponse>, Status> {
        let r = r.into_inner();
        let _call = self.enter(&r.shard_id, "shard_ended");
        self.ended(&r.shard_id, "shard-ended", "")?;
        say(format!(
            "shard-ended {} {}",
            r.shard_id,
            r.child_shard_ids.join(",")
        ));
        Ok(Response::new(v1::ShardEndedResponse {}))
    }

    async fn shutdown_requested(
        &self,
        r: Request<v1::ShutdownRequestedRequest>,
    ) -> Result<Response<v1::ShutdownRequestedResponse>, Status> {
        let r = r.into_inner();
        let _call = self.enter(&r.shard_id, "shutdown_requested");
        self.ended(&r.shard_id, "shutdown-requested", r.reason().as_str_name())?;
        say(format!(
            "shutdown-requested {} {}",
            r.shard_id,
            r.reason().as_str_name()
        ));
        let checkpoint = (self.checkpoint != "none").then(v1::Checkpoint::all_delivered);
        Ok(Response::new(v1::ShutdownRequestedResponse { checkpoint }))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    // malloc tuned as the contract's docs advise a Rust app, before any thread starts
    // (`GLIBC_TUNABLES=`, even empty, keeps glibc's defaults: how the benchmarks measure what
    // this is worth), then the runtime.
    kinesis_processor::run_app(run(args))?
}

async fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let address: kinesis_processor::Address = arg(&args, "--address")
        .ok_or("--address unix:///path.sock or http://127.0.0.1:PORT is required")?
        .parse()?;
    let out = match arg(&args, "--out") {
        Some(p) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ))),
        None => None,
    };
    let app = RecordApp {
        out,
        fail_first: arg(&args, "--fail-first").map_or(Ok(0), |v| v.parse())?,
        poison: arg(&args, "--poison"),
        fail_from: arg(&args, "--fail-from"),
        fail_shard: arg(&args, "--fail-shard"),
        crash_at: arg(&args, "--crash-at-batch")
            .map(|v| v.parse())
            .transpose()?,
        checkpoint: arg(&args, "--checkpoint").unwrap_or_else(|| "all".into()),
        calls: AtomicU64::new(0),
        slow_lease_lost: std::time::Duration::from_millis(
            arg(&args, "--slow-lease-lost-ms").map_or(Ok(0), |v| v.parse())?,
        ),
        in_flight: std::sync::Arc::default(),
        delay: std::time::Duration::from_millis(
            arg(&args, "--delay-ms").map_or(Ok(0), |v| v.parse())?,
        ),
        hang_on_empty: args.iter().any(|a| a == "--hang-on-empty"),
        hang_on: arg(&args, "--hang-on"),
        instance: format!("{}.{}", std::process::id(), now_ns()),
        tokens: Mutex::default(),
    };
    say(format!("serving {address}"));
    kinesis_processor::serve(&address, app, kinesis_processor::shutdown_signal()).await?;
    Ok(())
}
