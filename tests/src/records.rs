//! Records put as `key-K:i` whose sequence numbers and shards are kept, and the lease table's
//! checkpoints: what the tests of unchanged consumers (which only print what they got) count
//! against.

use std::collections::BTreeMap;

use crate::TestEnv;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// A record put: its partition key, its index within that key, its sequence number and
/// shard.
#[derive(Clone, Debug)]
pub struct Put {
    /// `key-K`.
    pub key: String,
    /// `i` of the data `key-K:i`.
    pub index: usize,
    /// The sequence number Kinesis gave it.
    pub seq: String,
    /// The shard it went to.
    pub shard: String,
}

/// Puts `n` records per key for `keys` keys (`key-K:i`, `i` from `from`), round-robin over
/// the keys, in PutRecords calls of 50.
///
/// # Errors
/// A put failed, or one of its records did.
pub async fn put(
    env: &TestEnv,
    stream: &str,
    keys: usize,
    from: usize,
    n: usize,
) -> Result<Vec<Put>> {
    let kinesis = env.kinesis().await;
    let entries: Vec<(String, usize)> = (from..from + n)
        .flat_map(|i| (0..keys).map(move |k| (format!("key-{k}"), i)))
        .collect();
    let mut out = Vec::new();
    for batch in entries.chunks(50) {
        let mut req = kinesis.put_records().stream_name(stream);
        for (key, i) in batch {
            req = req.records(
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(aws_sdk_kinesis::primitives::Blob::new(format!("{key}:{i}")))
                    .build()?,
            );
        }
        let resp = req.send().await?;
        for ((key, i), r) in batch.iter().zip(resp.records()) {
            let (Some(seq), Some(shard)) = (r.sequence_number(), r.shard_id()) else {
                return Err(format!("put of {key}:{i} failed: {:?}", r.error_message()).into());
            };
            out.push(Put {
                key: key.clone(),
                index: *i,
                seq: seq.into(),
                shard: shard.into(),
            });
        }
    }
    Ok(out)
}

/// The highest sequence number put to each shard.
pub fn last_per_shard(puts: &[Put]) -> BTreeMap<String, String> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for p in puts {
        let e = last.entry(p.shard.clone()).or_default();
        if (p.seq.len(), p.seq.as_str()) > (e.len(), e.as_str()) {
            *e = p.seq.clone();
        }
    }
    last
}

/// `leaseKey → checkpoint` of lease table `table`.
///
/// # Errors
/// The scan failed.
pub async fn checkpoints(env: &TestEnv, table: &str) -> Result<BTreeMap<String, String>> {
    let out = env.dynamodb().await.scan().table_name(table).send().await?;
    Ok(out
        .items()
        .iter()
        .filter_map(|i| {
            Some((
                i.get("leaseKey")?.as_s().ok()?.clone(),
                i.get("checkpoint")?.as_s().ok()?.clone(),
            ))
        })
        .collect())
}
