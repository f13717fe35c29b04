//! Our own GetRecords client (CBOR and JSON) against the SDK's, on the same stream of the
//! local Kinesis server: identical records (sequence numbers, keys, data, timestamps, KPL
//! sub-records, explicit hash keys) and the same resume inside an aggregated record. (The end
//! of a split parent, in every client: `shard_reader.rs`.)

use aws_sdk_kinesis::primitives::Blob;
use kinesis_operator_tests::reading::{every_client, from_trim_horizon, read_to_tip};
use kinesis_operator_tests::{TestEnv, unique_name};
use kinesis_worker::lease::checkpoint::{Checkpoint, SequenceNumber};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::records::aggregation::{UserRecord, aggregate};
use kinesis_worker::records::reader::ShardReader;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const SHARD: &str = "shardId-000000000000";

#[tokio::test]
async fn cbor_json_and_sdk_read_the_same_records() -> Result<()> {
    // The reader's warnings (a retried call) show in a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let env = TestEnv::require();
    let kinesis = env.kinesis().await;
    let stream = unique_name("wire");
    env.create_stream(&stream, 1).await?;
    let put = |data: Vec<u8>, key: String| {
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(key)
            .data(Blob::new(data))
            .send()
    };
    let every_byte: Vec<u8> = (0..=255u8).collect();
    put(every_byte.clone(), "binary".into()).await?;
    put(
        "ünïcødé ✓ \"quoted\" \\ /".as_bytes().to_vec(),
        "unicode-ключ".into(),
    )
    .await?;
    put(vec![b'x'; 100_000], "large".into()).await?;
    let agg = aggregate(&[
        ("k1".into(), None, b"a0".to_vec()),
        (
            "k2".into(),
            Some("12345678901234567890".into()),
            every_byte.clone(),
        ),
        ("k1".into(), None, b"a2".to_vec()),
    ]);
    let aggregated = put(agg, "agg".into()).await?;
    for i in 0..300 {
        put(format!("record-{i}").into_bytes(), format!("key-{}", i % 7)).await?;
    }

    let mut reads = Vec::new();
    // Small pages too, so that iterators chain across many calls.
    for max_records in [10_000, 7] {
        for (name, config) in every_client(&env, max_records).await? {
            let mut reader = from_trim_horizon(&kinesis, &stream, SHARD, config);
            let (records, end) = read_to_tip(&mut reader).await?;
            assert_eq!(end, None, "{name}: the open shard has no end");
            reads.push((format!("{name}/{max_records}"), records));
        }
    }
    let (first_name, first) = &reads[0];
    assert_eq!(first.len(), 3 + 3 + 300, "{first_name}: every record");
    assert_eq!(&first[0].data[..], &every_byte[..]);
    assert_eq!(
        first[4].explicit_hash_key.as_deref(),
        Some("12345678901234567890")
    );
    assert!(first.iter().all(|r| r.approximate_arrival_ms.is_some()));
    // Every field identical, but for one thing: the SDK reads the timestamp's JSON seconds
    // (1796314621.892) into a float and truncates, so it may be 1 ms early; CBOR carries
    // exact integer milliseconds, and our JSON decoder rounds. So the SDK may differ from
    // ours by at most 1 ms, and CBOR and our JSON agree exactly.
    let cbor = &reads[1].1;
    for (name, records) in &reads[1..] {
        assert_eq!(records.len(), first.len(), "{name} against {first_name}");
        for (i, (sdk, ours)) in first.iter().zip(records).enumerate() {
            let (s, o) = (
                sdk.approximate_arrival_ms.unwrap_or(0),
                ours.approximate_arrival_ms.unwrap_or(0),
            );
            assert!(
                (0..=1).contains(&(o - s)),
                "record {i}: {name} at {o} ms, the SDK at {s} ms"
            );
            let same_time = UserRecord {
                approximate_arrival_ms: sdk.approximate_arrival_ms,
                ..ours.clone()
            };
            assert_eq!(sdk, &same_time, "record {i}: {name} against {first_name}");
            if !name.starts_with("sdk") {
                assert_eq!(ours, &cbor[i], "record {i}: {name} against cbor");
            }
        }
    }

    // Resuming at sub-record 1 of the aggregated record, in every client: a2 is next.
    let cp = Checkpoint::Sequence {
        sequence: SequenceNumber::parse(aggregated.sequence_number())?,
        sub_sequence: 1,
    };
    for (name, config) in every_client(&env, 10_000).await? {
        let mut reader = ShardReader::new(
            kinesis.clone(),
            StreamRef::Name(stream.clone()),
            SHARD,
            cp.clone(),
            None,
            config,
        );
        let (rest, _) = read_to_tip(&mut reader).await?;
        assert_eq!(&rest[0].data[..], b"a2", "{name}");
        assert_eq!(rest.len(), 1 + 300, "{name}");
    }
    kinesis.delete_stream().stream_name(&stream).send().await?;
    Ok(())
}
