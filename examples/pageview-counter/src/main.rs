//! pageview-counter: the record processor of the kinesis-operator example.
//!
//! Counts pageviews per client id from JSON records (`{"client_id": "...", "page": "..."}`),
//! adds the counts to a DynamoDB table every `--flush-interval-ms`, and asks the worker to
//! checkpoint only the records whose counts were written. Records that are not such JSON are
//! counted as malformed, logged and skipped: they never stop the shard.
//!
//! Delivery is at least once: after a crash between a write and its checkpoint, the records
//! since the checkpoint are counted again (as with KCL).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use clap::Parser;
use kinesis_processor::tonic::{Request, Response, Status};
use kinesis_processor::v1;
use tokio::sync::Mutex;

/// Counts pageviews per client id into DynamoDB (the kinesis-operator example app).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where to serve the record processor (the worker's --app-address).
    #[arg(long, env = "APP_ADDRESS", default_value = kinesis_processor::DEFAULT_SOCKET)]
    address: String,
    /// DynamoDB table of the counts (created if missing; key `client_id`).
    #[arg(long, env = "COUNTS_TABLE", default_value = "pageview-counts")]
    table: String,
    /// How often counts are written (and then checkpointed), in milliseconds.
    #[arg(long, env = "FLUSH_INTERVAL_MS", default_value_t = 10_000)]
    flush_interval_ms: u64,
    /// DynamoDB endpoint override (local servers).
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    dynamodb_endpoint: Option<String>,
    /// Simulated work per record, in microseconds (load tests): one batch at a time per
    /// process, as a CPU-bound app, so a pod processes at most 1,000,000 / this records a
    /// second whatever shards it holds. 0 (default): none.
    #[arg(long, env = "RECORD_COST_US", default_value_t = 0)]
    record_cost_us: u64,
}

/// Counts of one shard not yet written.
#[derive(Default)]
struct ShardCounts {
    counts: HashMap<String, u64>,
    /// The last record counted.
    last: Option<v1::RecordPosition>,
    /// The last record whose count is written (may be checkpointed).
    written: Option<v1::RecordPosition>,
    /// The last position handed to the worker as a checkpoint.
    reported: Option<v1::RecordPosition>,
    last_flush: Option<Instant>,
    malformed: u64,
}

impl ShardCounts {
    /// A checkpoint up to what was written, if not asked for yet.
    fn checkpoint(&mut self) -> Option<v1::Checkpoint> {
        if self.written == self.reported {
            return None;
        }
        self.reported = self.written.clone();
        self.written.clone().map(v1::Checkpoint::up_to)
    }
}

/// The processor served to the worker; a background task shares its state to write counts
/// on time even when no more records come.
#[derive(Clone)]
struct Counter {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Counter {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

struct Inner {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    flush_interval: Duration,
    shards: std::sync::Mutex<HashMap<String, Arc<Mutex<ShardCounts>>>>,
    /// `--record-cost-us`, and the process's one "CPU" it is spent on.
    record_cost: Duration,
    cpu: Mutex<()>,
}

#[derive(serde::Deserialize)]
struct Pageview {
    client_id: String,
}

impl Inner {
    fn shard(&self, id: &str) -> Arc<Mutex<ShardCounts>> {
        let mut map = match self.shards.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id.to_string()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        if let Ok(mut map) = self.shards.lock() {
            map.remove(id);
        }
    }

    /// Adds the shard's counts to the table. On success the counts are cleared and the last
    /// counted record may be checkpointed.
    async fn flush(&self, shard: &str, s: &mut ShardCounts) -> Result<(), Status> {
        for (client, n) in &s.counts {
            self.dynamodb
                .update_item()
                .table_name(&self.table)
                .key("client_id", AttributeValue::S(client.clone()))
                .update_expression("ADD pageviews :n")
                .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
                .send()
                .await
                .map_err(|e| {
                    let e = aws_sdk_dynamodb::error::DisplayErrorContext(e);
                    tracing::warn!(shard, error = %e, "writing counts failed; retried at the next flush");
                    Status::unavailable(format!("writing counts to {}: {e}", self.table))
                })?;
        }
        if !s.counts.is_empty() {
            tracing::info!(
                shard,
                clients = s.counts.len(),
                pageviews = s.counts.values().sum::<u64>(),
                malformed = s.malformed,
                "counts written"
            );
        }
        s.counts.clear();
        s.written = s.last.clone();
        s.last_flush = Some(Instant::now());
        Ok(())
    }

    /// Writes the counts of every shard whose interval has passed (errors are retried at the
    /// next round; they were logged by `flush`).
    async fn flush_due(&self) {
        let shards: Vec<(String, Arc<Mutex<ShardCounts>>)> = match self.shards.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        for (id, shard) in shards {
            let mut s = shard.lock().await;
            let due = s
                .last_flush
                .is_none_or(|t| t.elapsed() >= self.flush_interval);
            if due && !s.counts.is_empty() {
                let _ = self.flush(&id, &mut s).await;
            }
        }
    }
}

#[kinesis_processor::tonic::async_trait]
impl v1::record_processor_server::RecordProcessor for Counter {
    async fn initialize(
        &self,
        r: Request<v1::InitializeRequest>,
    ) -> Result<Response<v1::InitializeResponse>, Status> {
        let r = r.into_inner();
        tracing::info!(shard = %r.shard_id, worker = %r.worker_id, "counting shard");
        // A fresh start: whatever an earlier owner counted but did not write is redelivered.
        self.forget(&r.shard_id);
        Ok(Response::new(v1::InitializeResponse {}))
    }

    async fn process_records(
        &self,
        r: Request<v1::ProcessRecordsRequest>,
    ) -> Result<Response<v1::ProcessRecordsResponse>, Status> {
        let r = r.into_inner();
        if !self.record_cost.is_zero() {
            let _cpu = self.cpu.lock().await;
            let n = u32::try_from(r.records.len()).unwrap_or(u32::MAX);
            tokio::time::sleep(self.record_cost.saturating_mul(n)).await;
        }
        let shard = self.shard(&r.shard_id);
        let mut s = shard.lock().await;
        for rec in &r.records {
            match serde_json::from_slice::<Pageview>(&rec.data) {
                Ok(p) => *s.counts.entry(p.client_id).or_insert(0) += 1,
                Err(e) => {
                    s.malformed += 1;
                    tracing::warn!(shard = %r.shard_id, sequence = %rec.sequence_number, error = %e, "not a pageview record; skipped");
                }
            }
        }
        if let Some(last) = r.records.last() {
            s.last = Some(last.position());
        }
        let due = s
            .last_flush
            .is_none_or(|t| t.elapsed() >= self.flush_interval);
        if due {
            // A failed write is retried later; nothing new is checkpointed meanwhile.
            let _ = self.flush(&r.shard_id, &mut s).await;
        }
        // Checkpoint up to the last record whose count is written (here or by the timer).
        let checkpoint = s.checkpoint();
        Ok(Response::new(v1::ProcessRecordsResponse {
            checkpoint,
            failed_from: None,
        }))
    }

    async fn lease_lost(
        &self,
        r: Request<v1::LeaseLostRequest>,
    ) -> Result<Response<v1::LeaseLostResponse>, Status> {
        let r = r.into_inner();
        // Not written, not checkpointed: the new owner counts these records.
        tracing::info!(shard = %r.shard_id, "lease lost: unwritten counts dropped");
        self.forget(&r.shard_id);
        Ok(Response::new(v1::LeaseLostResponse {}))
    }

    async fn shard_ended(
        &self,
        r: Request<v1::ShardEndedRequest>,
    ) -> Result<Response<v1::ShardEndedResponse>, Status> {
        let r = r.into_inner();
        let shard = self.shard(&r.shard_id);
        // An error makes the worker retry: SHARD_END is written only after the counts.
        self.flush(&r.shard_id, &mut *shard.lock().await).await?;
        self.forget(&r.shard_id);
        tracing::info!(shard = %r.shard_id, children = ?r.child_shard_ids, "shard ended");
        Ok(Response::new(v1::ShardEndedResponse {}))
    }

    async fn shutdown_requested(
        &self,
        r: Request<v1::ShutdownRequestedRequest>,
    ) -> Result<Response<v1::ShutdownRequestedResponse>, Status> {
        let r = r.into_inner();
        let shard = self.shard(&r.shard_id);
        let written = self
            .flush(&r.shard_id, &mut *shard.lock().await)
            .await
            .is_ok();
        self.forget(&r.shard_id);
        tracing::info!(shard = %r.shard_id, reason = r.reason().as_str_name(), written, "shard handed over");
        Ok(Response::new(v1::ShutdownRequestedResponse {
            checkpoint: written.then(v1::Checkpoint::all_delivered),
        }))
    }
}

async fn ensure_table(client: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    if client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let created = client
        .create_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("client_id")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("client_id")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another replica created it first.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "creating counts table `{table}`: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        )),
    }
}

fn main() -> anyhow::Result<()> {
    // Batches of up to 10 MB arrive: malloc tuned to keep their buffers in the heap, then
    // the runtime.
    kinesis_processor::run_app(run())?
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let address: kinesis_processor::Address = args.address.parse()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut conf = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(url) = &args.dynamodb_endpoint {
        conf = conf.endpoint_url(url);
    }
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(conf.build());
    ensure_table(&dynamodb, &args.table).await?;
    let counter = Counter {
        inner: Arc::new(Inner {
            dynamodb,
            table: args.table.clone(),
            flush_interval: Duration::from_millis(args.flush_interval_ms),
            shards: std::sync::Mutex::new(HashMap::new()),
            record_cost: Duration::from_micros(args.record_cost_us),
            cpu: Mutex::new(()),
        }),
    };
    // Counts reach the table on time even when a shard goes quiet; the checkpoint follows
    // with the shard's next batch (or its hand-over).
    let timer = counter.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(timer.flush_interval.max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            timer.flush_due().await;
        }
    });
    tracing::info!(%address, table = %args.table, "pageview-counter serving");
    kinesis_processor::serve(&address, counter, kinesis_processor::shutdown_signal()).await?;
    Ok(())
}
