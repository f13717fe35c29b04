//! The polling shard reader against the local Kinesis server: plain and KPL-aggregated
//! records in order, resuming after a checkpoint inside an aggregated record without a
//! duplicate or a gap, and the end of a split parent with its children (through each GetRecords
//! client: the SDK, ours in CBOR and in JSON).

use aws_sdk_kinesis::primitives::Blob;
use kinesis_operator_tests::reading::{every_client, from_trim_horizon, read_to_tip};
use kinesis_operator_tests::{TestEnv, unique_name};
use kinesis_worker::lease::checkpoint::{Checkpoint, SequenceNumber};
use kinesis_worker::lease::discovery::StreamRef;
use kinesis_worker::records::aggregation::{UserRecord, aggregate};
use kinesis_worker::records::reader::{Batch, ReaderConfig, ShardReader};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const SHARD: &str = "shardId-000000000000";

fn texts(records: &[UserRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

#[tokio::test]
async fn reads_in_order_and_resumes_inside_an_aggregated_record() -> Result<()> {
    let env = TestEnv::require();
    let kinesis = env.kinesis().await;
    let stream = unique_name("reader");
    env.create_stream(&stream, 1).await?;
    let put = |data: Vec<u8>, key: &str| {
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(key)
            .data(Blob::new(data))
            .send()
    };
    let r0 = put(b"r0".to_vec(), "k").await?;
    let agg = aggregate(&[
        ("k1".into(), None, b"a0".to_vec()),
        ("k2".into(), None, b"a1".to_vec()),
        ("k1".into(), None, b"a2".to_vec()),
    ]);
    let a = put(agg, "k").await?;
    put(b"r4".to_vec(), "k").await?;
    let reader = |cp: Checkpoint| {
        ShardReader::new(
            kinesis.clone(),
            StreamRef::Name(stream.clone()),
            SHARD,
            cp,
            None,
            ReaderConfig::default(),
        )
    };

    let (all, end) = read_to_tip(&mut reader(Checkpoint::TrimHorizon)).await?;
    assert_eq!(texts(&all), ["r0", "a0", "a1", "a2", "r4"]);
    assert_eq!(end, None);
    let subs: Vec<u64> = all.iter().map(|r| r.sub_sequence_number).collect();
    assert_eq!(subs, [0, 0, 1, 2, 0]);
    assert_eq!(
        all[2].partition_key, "k2",
        "a user record keeps its own partition key"
    );

    // A checkpoint at sub-record 1 of the aggregated record: a2 is next.
    let cp = Checkpoint::Sequence {
        sequence: SequenceNumber::parse(a.sequence_number())?,
        sub_sequence: 1,
    };
    let (rest, _) = read_to_tip(&mut reader(cp)).await?;
    assert_eq!(texts(&rest), ["a2", "r4"]);

    // A checkpoint at a plain record: the next record is next.
    let cp = Checkpoint::Sequence {
        sequence: SequenceNumber::parse(r0.sequence_number())?,
        sub_sequence: 0,
    };
    let (rest, _) = read_to_tip(&mut reader(cp)).await?;
    assert_eq!(texts(&rest), ["a0", "a1", "a2", "r4"]);

    kinesis.delete_stream().stream_name(&stream).send().await?;
    Ok(())
}

#[tokio::test]
async fn a_split_parent_ends_after_its_last_record_with_its_children() -> Result<()> {
    let env = TestEnv::require();
    let kinesis = env.kinesis().await;
    let stream = unique_name("reader");
    env.create_stream(&stream, 1).await?;
    kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(Blob::new(b"before".to_vec()))
        .send()
        .await?;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(SHARD)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    env.wait_stream_active(&stream).await?;

    // The same end through every GetRecords client.
    for (name, config) in every_client(&env, 10_000).await? {
        let mut reader = from_trim_horizon(&kinesis, &stream, SHARD, config);
        let (records, end) = read_to_tip(&mut reader).await?;
        assert_eq!(texts(&records), ["before"], "{name}");
        let mut children = end.ok_or_else(|| format!("{name}: the closed parent must end"))?;
        children.sort();
        assert_eq!(
            children,
            ["shardId-000000000001", "shardId-000000000002"],
            "{name}"
        );
        // And it stays ended.
        assert!(
            matches!(reader.next_batch().await?, Batch::ShardEnd { .. }),
            "{name}"
        );
    }
    kinesis.delete_stream().stream_name(&stream).send().await?;
    Ok(())
}

/// The page target (`ReaderConfig::page_bytes`, `--max-page-kib`) cuts pages of large records
/// to fit, through every client, without losing or reordering one. Without it, one call
/// would bring all 30 records.
#[tokio::test]
async fn pages_of_large_records_are_cut_to_the_page_target() -> Result<()> {
    let env = TestEnv::require();
    let kinesis = env.kinesis().await;
    let stream = unique_name("pages");
    env.create_stream(&stream, 1).await?;
    let mut expected = Vec::new();
    for i in 0..30 {
        let mut data = format!("{i:04}").into_bytes();
        data.resize(1024, b'x');
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(Blob::new(data.clone()))
            .send()
            .await?;
        expected.push(String::from_utf8_lossy(&data).into_owned());
    }
    for (name, mut config) in every_client(&env, 10_000).await? {
        // 8 records of 1 KiB before the first page tells the size, then 8192 / 1154 = 7.
        config.page_bytes = 8 * 1024;
        let mut reader = from_trim_horizon(&kinesis, &stream, SHARD, config);
        let mut all = Vec::new();
        let mut pages = Vec::new();
        while all.len() < expected.len() && pages.len() < 100 {
            match reader.next_batch().await? {
                Batch::Records { records, .. } => {
                    if !records.is_empty() {
                        pages.push(records.len());
                    }
                    all.extend(records);
                }
                Batch::ShardEnd { .. } => return Err(format!("{name}: the shard ended").into()),
            }
        }
        assert_eq!(texts(&all), expected, "{name}: every record, in order");
        assert!(
            pages.first().is_some_and(|n| *n <= 8) && pages.iter().skip(1).all(|n| *n <= 7),
            "{name}: pages of {pages:?} records, beyond the 8 KiB target"
        );
    }
    Ok(())
}
