//! pageview-admin: the demo's helper. `counts --table T` prints the pageview counts a counter
//! wrote; `reshard --stream S --shards N` changes the stream's shard count (UpdateShardCount,
//! uniform scaling) and waits until the stream is ACTIVE again.

use std::time::Duration;

use aws_sdk_kinesis::types::{ScalingType, StreamStatus};
use clap::{Parser, Subcommand};

/// Looks at and reshapes the pageview example's data.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kinesis endpoint override (local servers).
    #[arg(long, env = "KINESIS_ENDPOINT", global = true)]
    kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override (local servers).
    #[arg(long, env = "DYNAMODB_ENDPOINT", global = true)]
    dynamodb_endpoint: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the counts table: client id and pageviews, and the total.
    Counts {
        /// The counts table.
        #[arg(long, default_value = "pageview-counts")]
        table: String,
    },
    /// Delete the stream and the counts table (a fresh start), waiting until both are gone.
    Reset {
        /// The stream.
        #[arg(long, default_value = "Pageviews")]
        stream: String,
        /// The counts table.
        #[arg(long, default_value = "pageview-counts")]
        table: String,
    },
    /// Change the stream's shard count.
    Reshard {
        /// The stream.
        #[arg(long, default_value = "Pageviews")]
        stream: String,
        /// The new shard count.
        #[arg(long)]
        shards: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    match args.command {
        Cmd::Counts { table } => {
            let mut conf = aws_sdk_dynamodb::config::Builder::from(&sdk);
            if let Some(url) = &args.dynamodb_endpoint {
                conf = conf.endpoint_url(url);
            }
            let client = aws_sdk_dynamodb::Client::from_conf(conf.build());
            let out = client.scan().table_name(&table).send().await.map_err(|e| {
                anyhow::anyhow!(
                    "reading `{table}`: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            })?;
            let mut rows: Vec<(String, u64)> = out
                .items()
                .iter()
                .filter_map(|i| {
                    Some((
                        i.get("client_id")?.as_s().ok()?.clone(),
                        i.get("pageviews")?.as_n().ok()?.parse().ok()?,
                    ))
                })
                .collect();
            rows.sort();
            let line: Vec<String> = rows.iter().map(|(c, n)| format!("{c}={n}")).collect();
            let total: u64 = rows.iter().map(|(_, n)| n).sum();
            println!("counts: {} | total {total}", line.join(" "));
        }
        Cmd::Reset { stream, table } => {
            let mut k = aws_sdk_kinesis::config::Builder::from(&sdk);
            if let Some(url) = &args.kinesis_endpoint {
                k = k.endpoint_url(url);
            }
            let kinesis = aws_sdk_kinesis::Client::from_conf(k.build());
            let mut d = aws_sdk_dynamodb::config::Builder::from(&sdk);
            if let Some(url) = &args.dynamodb_endpoint {
                d = d.endpoint_url(url);
            }
            let dynamodb = aws_sdk_dynamodb::Client::from_conf(d.build());
            // DeleteStream only for a stream that exists: kinesis-mock (0.6.2) removes the
            // stream of that name 500 ms after *any* DeleteStream call, even one answered
            // ResourceNotFound, so deleting a missing stream would remove the one the demo
            // creates right after. Missing already is fine: the point is that they are gone.
            let exists = kinesis
                .describe_stream_summary()
                .stream_name(&stream)
                .send()
                .await
                .is_ok();
            if exists {
                let _ = kinesis
                    .delete_stream()
                    .stream_name(&stream)
                    .enforce_consumer_deletion(true)
                    .send()
                    .await;
            }
            let _ = dynamodb.delete_table().table_name(&table).send().await;
            for _ in 0..600 {
                let stream_gone = kinesis
                    .describe_stream_summary()
                    .stream_name(&stream)
                    .send()
                    .await
                    .is_err();
                let table_gone = dynamodb
                    .describe_table()
                    .table_name(&table)
                    .send()
                    .await
                    .is_err();
                if stream_gone && table_gone {
                    println!("stream {stream} and table {table} removed");
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("`{stream}` or `{table}` still there after 60 s");
        }
        Cmd::Reshard { stream, shards } => {
            let mut conf = aws_sdk_kinesis::config::Builder::from(&sdk);
            if let Some(url) = &args.kinesis_endpoint {
                conf = conf.endpoint_url(url);
            }
            let client = aws_sdk_kinesis::Client::from_conf(conf.build());
            client
                .update_shard_count()
                .stream_name(&stream)
                .target_shard_count(shards)
                .scaling_type(ScalingType::UniformScaling)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "resharding `{stream}`: {}",
                        aws_sdk_kinesis::error::DisplayErrorContext(e)
                    )
                })?;
            for _ in 0..600 {
                let active = client
                    .describe_stream_summary()
                    .stream_name(&stream)
                    .send()
                    .await
                    .ok()
                    .and_then(|o| o.stream_description_summary)
                    .is_some_and(|s| s.stream_status == StreamStatus::Active);
                if active {
                    println!("stream {stream} now has {shards} open shards");
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("stream `{stream}` not ACTIVE 60 s after resharding");
        }
    }
    Ok(())
}
