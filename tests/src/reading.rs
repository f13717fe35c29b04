//! Reading a shard in the tests: to its tip or end, with each GetRecords client.

use std::time::Duration;

use kinesis_worker::records::aggregation::UserRecord;
use kinesis_worker::records::reader::{Batch, ReaderConfig, ShardReader};
use kinesis_worker::records::wire::WireFormat;

use crate::TestEnv;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// A reader of `shard` of `stream` from its oldest record (TRIM_HORIZON), with `config`.
pub fn from_trim_horizon(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    config: ReaderConfig,
) -> ShardReader {
    ShardReader::new(
        kinesis.clone(),
        kinesis_worker::lease::discovery::StreamRef::Name(stream.to_string()),
        shard,
        kinesis_worker::lease::checkpoint::Checkpoint::TrimHorizon,
        None,
        config,
    )
}

/// Reads until the tip (an empty read with no lag) or the shard's end (then its children).
///
/// # Errors
/// A read failed, a batch took over 60 s (the reader retries by itself, so an answer it
/// cannot read shows as a call that never ends), or 200 reads did not reach the tip.
pub async fn read_to_tip(
    reader: &mut ShardReader,
) -> Result<(Vec<UserRecord>, Option<Vec<String>>)> {
    let mut out = Vec::new();
    for _ in 0..200 {
        let batch = tokio::time::timeout(Duration::from_secs(60), reader.next_batch())
            .await
            .map_err(|_| "no batch in 60 s")??;
        match batch {
            Batch::Records {
                records,
                millis_behind_latest,
            } => {
                let at_tip = records.is_empty() && millis_behind_latest == Some(0);
                out.extend(records);
                if at_tip {
                    return Ok((out, None));
                }
            }
            Batch::ShardEnd { child_shard_ids } => return Ok((out, Some(child_shard_ids))),
        }
    }
    Err("the reader never reached the tip in 200 reads".into())
}

/// Reader settings for the three ways to read: the SDK, ours in CBOR, ours in JSON.
///
/// # Errors
/// Our client could not be set up.
pub async fn every_client(
    env: &TestEnv,
    max_records: i32,
) -> Result<Vec<(&'static str, ReaderConfig)>> {
    let mut out = Vec::new();
    for (name, format) in [
        ("sdk", None),
        ("cbor", Some(WireFormat::Cbor)),
        ("json", Some(WireFormat::Json)),
    ] {
        let mut config = ReaderConfig {
            max_records,
            ..ReaderConfig::default()
        };
        if let Some(f) = format {
            config.get_records = Some(env.get_records_client(f).await?);
        }
        out.push((name, config));
    }
    Ok(out)
}
