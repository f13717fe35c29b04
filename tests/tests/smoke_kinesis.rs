//! Kinesis smoke test: the path the worker will use, against the local Kinesis server.
//! A stream is created, records are put with several partition keys and read back shard by
//! shard with `aws-sdk-kinesis`.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use kinesis_operator_tests::{TestEnv, unique_name};

#[tokio::test]
async fn records_put_are_read_back_in_order_per_key() -> Result<(), Box<dyn std::error::Error>> {
    let env = TestEnv::require();
    let kinesis = env.kinesis().await;
    let stream = unique_name("smoke");
    env.create_stream(&stream, 2).await?;

    // 4 keys × 5 records, put in two batches so order across calls matters too.
    let keys = ["alpha", "bravo", "charlie", "delta"];
    for batch in 0..2 {
        let entries = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                let key = keys[n % keys.len()];
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(format!("{key}:{n}")))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = kinesis
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await?;
        assert_eq!(
            out.failed_record_count(),
            Some(0),
            "no record of the batch may fail"
        );
    }

    let shards = kinesis.list_shards().stream_name(&stream).send().await?;
    let shard_ids: Vec<String> = shards
        .shards()
        .iter()
        .map(|s| s.shard_id().to_string())
        .collect();
    assert_eq!(shard_ids.len(), 2);

    // key -> (shards it was seen on, payload numbers in the order read)
    let mut seen: BTreeMap<String, (BTreeSet<String>, Vec<usize>)> = BTreeMap::new();
    for shard in &shard_ids {
        let it = kinesis
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?;
        let mut iterator = it.shard_iterator().map(String::from);
        // Read until the shard reports no lag (we are at its tip); 20 records need far
        // fewer than 100 calls, the bound only keeps a broken server from hanging the test.
        let mut calls = 0;
        while let Some(current) = iterator.take() {
            calls += 1;
            assert!(calls <= 100, "shard {shard} never reached its tip");
            let out = kinesis.get_records().shard_iterator(current).send().await?;
            for r in out.records() {
                let text = String::from_utf8(r.data().as_ref().to_vec())?;
                let (key, n) = text.split_once(':').ok_or("record data is key:n")?;
                assert_eq!(Some(key), r.partition_key());
                let entry = seen.entry(key.to_string()).or_default();
                entry.0.insert(shard.clone());
                entry.1.push(n.parse()?);
            }
            if out.millis_behind_latest() != Some(0) || !out.records().is_empty() {
                iterator = out.next_shard_iterator().map(String::from);
            }
        }
    }

    assert_eq!(seen.len(), keys.len(), "every key was read back: {seen:?}");
    for (key, (on_shards, numbers)) in &seen {
        assert_eq!(on_shards.len(), 1, "all records of {key} are on one shard");
        assert_eq!(numbers.len(), 5, "all 5 records of {key} were read");
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{key} read in put order: {numbers:?}"
        );
    }
    kinesis.delete_stream().stream_name(&stream).send().await?;
    Ok(())
}
