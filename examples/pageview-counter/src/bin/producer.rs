//! pageview-producer: puts pageview records (`{"client_id", "page", "timestamp"}`, partition
//! key = client id) into a Kinesis stream, and prints how many it put per client.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clap::Parser;

/// Puts pageviews into a Kinesis stream (the kinesis-operator example producer).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The stream.
    #[arg(long, env = "KINESIS_STREAM", default_value = "Pageviews")]
    stream: String,
    /// Pageviews to put (0: until stopped).
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Distinct client ids (`client-0` …).
    #[arg(long, default_value_t = 10)]
    clients: u64,
    /// Pageviews per second (0: as fast as possible).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Create the stream with this many shards if it does not exist (and wait until ACTIVE).
    #[arg(long)]
    create_shards: Option<i32>,
    /// Kinesis endpoint override (local servers).
    #[arg(long, env = "KINESIS_ENDPOINT")]
    kinesis_endpoint: Option<String>,
}

/// Creates `stream` unless it exists, and waits until it is ACTIVE.
async fn create_stream(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: i32,
) -> anyhow::Result<()> {
    let exists = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_ok();
    if !exists {
        kinesis
            .create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating stream `{stream}`: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(e)
                )
            })?;
        eprintln!("created stream {stream} with {shards} shards");
    }
    for _ in 0..600 {
        let active = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .ok()
            .and_then(|o| o.stream_description_summary)
            .is_some_and(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active);
        if active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("stream `{stream}` is not ACTIVE after 60 s")
}

const PAGES: [&str; 5] = ["/", "/pricing", "/docs", "/blog", "/signup"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut conf = aws_sdk_kinesis::config::Builder::from(&sdk);
    if let Some(url) = &args.kinesis_endpoint {
        conf = conf.endpoint_url(url);
    }
    let kinesis = aws_sdk_kinesis::Client::from_conf(conf.build());
    if let Some(shards) = args.create_shards {
        create_stream(&kinesis, &args.stream, shards).await?;
    }
    let clients = args.clients.max(1);
    let mut per_client: BTreeMap<String, u64> = BTreeMap::new();
    let batch = 100u64;
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    while args.count == 0 || sent < args.count {
        let n = if args.count == 0 {
            batch
        } else {
            batch.min(args.count - sent)
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut entries = Vec::new();
        for i in sent..sent + n {
            // A fixed spread: client k gets every clients-th pageview.
            let client = format!("client-{}", i % clients);
            let page = PAGES[(i % PAGES.len() as u64) as usize];
            let data = serde_json::json!({"client_id": client, "page": page, "timestamp": now});
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(&client)
                    .data(Blob::new(data.to_string()))
                    .build()?,
            );
            *per_client.entry(client).or_insert(0) += 1;
        }
        let mut pending = entries;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let out = kinesis
                .put_records()
                .stream_name(&args.stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "PutRecords to stream `{}`: {}",
                        args.stream,
                        aws_sdk_kinesis::error::DisplayErrorContext(e)
                    )
                })?;
            // Retry only the entries that failed (throttled), in order.
            pending = out
                .records()
                .iter()
                .zip(pending)
                .filter(|(r, _)| r.error_code().is_some())
                .map(|(_, e)| e)
                .collect();
            if !pending.is_empty() {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
        sent += n;
        if args.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    for (client, n) in &per_client {
        println!("{client} {n}");
    }
    eprintln!(
        "put {sent} pageviews into {} in {:.1} s",
        args.stream,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
