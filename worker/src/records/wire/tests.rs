//! Fixed bytes for the shapes real Kinesis sends and kinesis-mock does not (byte-string data,
//! tag-1 timestamps, indefinite lengths, JSON error bodies), and fuzzing of both decoders.

use minicbor::Encoder;
use proptest::prelude::*;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

/// One record as real Kinesis writes it: an indefinite map, `Data` a byte string, the
/// timestamp tag 1 + integer milliseconds.
fn real_record(e: &mut Encoder<Vec<u8>>, data: &[u8], key: &str, seq: &str, ms: u64) -> TestResult {
    e.begin_map()?
        .str("SequenceNumber")?
        .str(seq)?
        .str("ApproximateArrivalTimestamp")?
        .tag(minicbor::data::Tag::new(1))?
        .u64(ms)?
        .str("Data")?
        .bytes(data)?
        .str("PartitionKey")?
        .str(key)?
        .str("EncryptionType")?
        .str("NONE")?
        .end()?;
    Ok(())
}

fn real_page(
    records: &[(Vec<u8>, String, String, u64)],
    next: Option<&str>,
) -> Result<Bytes, Box<dyn std::error::Error>> {
    let mut e = Encoder::new(Vec::new());
    e.begin_map()?.str("Records")?.begin_array()?;
    for (data, key, seq, ms) in records {
        real_record(&mut e, data, key, seq, *ms)?;
    }
    e.end()?;
    match next {
        Some(n) => e.str("NextShardIterator")?.str(n)?,
        None => e.str("NextShardIterator")?.null()?,
    };
    e.str("MillisBehindLatest")?.u64(1234)?;
    if next.is_none() {
        e.str("ChildShards")?.begin_array()?;
        for child in ["shardId-000000000002", "shardId-000000000003"] {
            e.begin_map()?
                .str("ShardId")?
                .str(child)?
                .str("ParentShards")?
                .array(1)?
                .str("shardId-000000000000")?
                .str("HashKeyRange")?
                .map(2)?
                .str("StartingHashKey")?
                .str("0")?
                .str("EndingHashKey")?
                .str("1")?
                .end()?;
        }
        e.end()?;
    }
    e.end()?;
    Ok(Bytes::from(e.into_writer()))
}

#[test]
fn real_kinesis_cbor_is_read_and_data_is_a_slice_of_the_answer() -> TestResult {
    let body = real_page(
        &[
            (
                b"first".to_vec(),
                "k1".into(),
                SEQ.into(),
                1_700_000_000_123,
            ),
            (
                vec![0, 255, 1, 254],
                "k2".into(),
                format!("{SEQ}9"),
                1_700_000_000_456,
            ),
        ],
        Some("AAAA-next"),
    )?;
    let page = WireFormat::Cbor.decode_page(&body)?;
    assert_eq!(page.records.len(), 2);
    let r = &page.records[0];
    assert_eq!(r.data, &b"first"[..]);
    assert_eq!(r.partition_key, "k1");
    assert_eq!(r.sequence_number, SEQ);
    assert_eq!(r.approximate_arrival_ms, Some(1_700_000_000_123));
    assert_eq!(page.records[1].data, &[0u8, 255, 1, 254][..]);
    assert_eq!(page.next_shard_iterator.as_deref(), Some("AAAA-next"));
    assert_eq!(page.millis_behind_latest, Some(1234));
    assert!(page.child_shard_ids.is_empty());
    // No copy: the data points into the answer's buffer.
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    for r in &page.records {
        assert!(
            range.contains(&(r.data.as_ptr() as usize)),
            "data was copied"
        );
    }
    Ok(())
}

#[test]
fn a_closed_shards_last_page_gives_its_children() -> TestResult {
    let body = real_page(&[], None)?;
    let page = WireFormat::Cbor.decode_page(&body)?;
    assert!(page.records.is_empty());
    assert_eq!(page.next_shard_iterator, None);
    assert_eq!(
        page.child_shard_ids,
        ["shardId-000000000002", "shardId-000000000003"]
    );
    Ok(())
}

#[test]
fn kinesis_mock_cbor_base64_text_data_and_untagged_millis() -> TestResult {
    let mut e = Encoder::new(Vec::new());
    e.map(4)?
        .str("ChildShards")?
        .null()?
        .str("MillisBehindLatest")?
        .u64(0)?
        .str("NextShardIterator")?
        .str("it")?
        .str("Records")?
        .array(1)?
        .map(4)?
        .str("Data")?
        .str("aGVsbG8=")?
        .str("PartitionKey")?
        .str("pk")?
        .str("SequenceNumber")?
        .str(SEQ)?
        .str("ApproximateArrivalTimestamp")?
        .u64(1_700_000_000_999)?;
    let body = Bytes::from(e.into_writer());
    let page = WireFormat::Cbor.decode_page(&body)?;
    assert_eq!(page.records[0].data, &b"hello"[..]);
    assert_eq!(
        page.records[0].approximate_arrival_ms,
        Some(1_700_000_000_999)
    );
    assert_eq!(page.millis_behind_latest, Some(0));
    Ok(())
}

#[test]
fn float_seconds_timestamps_tagged_or_not_and_chunked_strings() -> TestResult {
    for tagged in [false, true] {
        let mut e = Encoder::new(Vec::new());
        e.map(1)?.str("Records")?.array(1)?.map(3)?;
        e.str("SequenceNumber")?
            .begin_str()?
            .str("4959")?
            .str("0338")?
            .end()?;
        e.str("Data")?
            .begin_bytes()?
            .bytes(b"ab")?
            .bytes(b"cd")?
            .end()?;
        e.str("ApproximateArrivalTimestamp")?;
        if tagged {
            e.tag(minicbor::data::Tag::new(1))?;
        }
        e.f64(1_700_000_000.25)?;
        let body = Bytes::from(e.into_writer());
        let page = WireFormat::Cbor.decode_page(&body)?;
        let r = &page.records[0];
        assert_eq!(r.sequence_number, "49590338");
        assert_eq!(r.data, &b"abcd"[..]);
        assert_eq!(r.approximate_arrival_ms, Some(1_700_000_000_250));
        assert_eq!(r.partition_key, "");
    }
    Ok(())
}

#[test]
fn unknown_fields_are_skipped_whatever_their_shape() -> TestResult {
    let mut e = Encoder::new(Vec::new());
    e.begin_map()?
        .str("SomethingNew")?
        .begin_map()?
        .str("deep")?
        .begin_array()?
        .u8(1)?
        .map(1)?
        .u8(7)?
        .str("non-text key")?
        .end()?
        .end()?
        .u8(9)?
        .str("x")?
        .str("Records")?
        .array(0)?
        .end()?;
    let body = Bytes::from(e.into_writer());
    let page = WireFormat::Cbor.decode_page(&body)?;
    assert!(page.records.is_empty());
    Ok(())
}

#[test]
fn malformed_answers_are_errors_not_panics() -> TestResult {
    let good = real_page(&[(b"x".to_vec(), "k".into(), SEQ.into(), 1)], Some("it"))?;
    for cut in 0..good.len() {
        let truncated = good.slice(..cut);
        assert!(
            WireFormat::Cbor.decode_page(&truncated).is_err(),
            "cut at {cut}"
        );
    }
    let mut trailing = good.to_vec();
    trailing.push(0);
    let err = WireFormat::Cbor
        .decode_page(&Bytes::from(trailing))
        .err()
        .ok_or("trailing bytes accepted")?;
    assert_eq!(err.offset, good.len());
    assert!(err.to_string().contains("CBOR"));
    // A record without a sequence number cannot be checkpointed: refused.
    let mut e = Encoder::new(Vec::new());
    e.map(1)?
        .str("Records")?
        .array(1)?
        .map(1)?
        .str("Data")?
        .bytes(b"x")?;
    assert!(
        WireFormat::Cbor
            .decode_page(&Bytes::from(e.into_writer()))
            .is_err()
    );
    // A huge announced length with nothing behind it.
    let huge = Bytes::from_static(&[
        0xa1, 0x67, b'R', b'e', b'c', b'o', b'r', b'd', b's', 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff,
    ]);
    assert!(WireFormat::Cbor.decode_page(&huge).is_err());
    Ok(())
}

#[test]
fn error_bodies_in_cbor_and_json() -> TestResult {
    let mut e = Encoder::new(Vec::new());
    e.begin_map()?
        .str("__type")?
        .str("ExpiredIteratorException")?
        .str("message")?
        .str("Iterator expired")?
        .end()?;
    let cbor = e.into_writer();
    assert_eq!(
        WireFormat::Cbor.decode_error(&cbor)?,
        ServiceError {
            code: "ExpiredIteratorException".into(),
            message: "Iterator expired".into()
        }
    );
    let json = br#"{"__type":"com.amazonaws.kinesis.v20131202#ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}"#;
    let err = WireFormat::Json.decode_error(json)?;
    assert_eq!(err.code, "ProvisionedThroughputExceededException");
    assert_eq!(err.message, "Rate exceeded for shard");
    let coral = br#"{"__type":"ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.coral.service/","Message":"gone"}"#;
    let err = WireFormat::Json.decode_error(coral)?;
    assert_eq!(err.code, "ResourceNotFoundException");
    assert_eq!(err.message, "gone");
    // The Content-Type of the answer picks the decoder: JSON errors on a CBOR request.
    assert_eq!(
        WireFormat::of_content_type("application/x-amz-json-1.1"),
        Some(WireFormat::Json)
    );
    assert_eq!(
        WireFormat::of_content_type("application/x-amz-cbor-1.1"),
        Some(WireFormat::Cbor)
    );
    assert_eq!(WireFormat::of_content_type("text/html"), None);
    Ok(())
}

#[test]
fn json_pages_as_the_sdk_reads_them() -> TestResult {
    let body = Bytes::from_static(
        br#"{"Records":[{"SequenceNumber":"49590338","ApproximateArrivalTimestamp":1.700000000123E9,"Data":"aGVsbG8=","PartitionKey":"pk","EncryptionType":"NONE"}],"NextShardIterator":"it","MillisBehindLatest":5,"ChildShards":[{"ShardId":"shardId-000000000001","ParentShards":["a"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"1"}}]}"#,
    );
    let page = WireFormat::Json.decode_page(&body)?;
    let r = &page.records[0];
    assert_eq!(r.data, &b"hello"[..]);
    assert_eq!(r.partition_key, "pk");
    assert_eq!(r.sequence_number, "49590338");
    assert_eq!(r.approximate_arrival_ms, Some(1_700_000_000_123));
    assert_eq!(page.next_shard_iterator.as_deref(), Some("it"));
    assert_eq!(page.millis_behind_latest, Some(5));
    assert_eq!(page.child_shard_ids, ["shardId-000000000001"]);
    let nulls =
        Bytes::from_static(br#"{"Records":null,"NextShardIterator":null,"ChildShards":null}"#);
    assert_eq!(
        WireFormat::Json.decode_page(&nulls)?,
        RecordsPage::default()
    );
    let bad = Bytes::from_static(br#"{"Records":[{"SequenceNumber":"1","Data":"%%%"}]}"#);
    assert!(WireFormat::Json.decode_page(&bad).is_err());
    Ok(())
}

#[test]
fn requests_carry_the_iterator_and_limit() -> TestResult {
    let body = WireFormat::Cbor.get_records_body("AAAA/iterator+==", 10_000);
    let mut d = minicbor::Decoder::new(&body);
    assert_eq!(d.map()?, Some(2));
    assert_eq!(d.str()?, "ShardIterator");
    assert_eq!(d.str()?, "AAAA/iterator+==");
    assert_eq!(d.str()?, "Limit");
    assert_eq!(d.u32()?, 10_000);
    assert_eq!(d.position(), body.len());
    let long = "x".repeat(300);
    let body = WireFormat::Cbor.get_records_body(&long, 1);
    let mut d = minicbor::Decoder::new(&body);
    d.map()?;
    d.str()?;
    assert_eq!(d.str()?, long);
    let json: serde_json::Value =
        serde_json::from_slice(&WireFormat::Json.get_records_body("it\"x", 5))?;
    assert_eq!(json["ShardIterator"], "it\"x");
    assert_eq!(json["Limit"], 5);
    Ok(())
}

fn arb_records() -> impl Strategy<Value = Vec<(Vec<u8>, String, String, u64)>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            "[a-z0-9]{1,12}",
            "[0-9]{1,56}",
            0u64..4_000_000_000_000,
        ),
        0..20,
    )
}

proptest! {
    #[test]
    fn real_pages_round_trip(records in arb_records()) {
        let body = real_page(&records, Some("next")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let page = WireFormat::Cbor.decode_page(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(page.records.len(), records.len());
        for (got, (data, key, seq, ms)) in page.records.iter().zip(&records) {
            prop_assert_eq!(&got.data[..], &data[..]);
            prop_assert_eq!(&got.partition_key, key);
            prop_assert_eq!(&got.sequence_number, seq);
            prop_assert_eq!(got.approximate_arrival_ms, Some(*ms as i64));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let body = Bytes::from(body);
        let _ = WireFormat::Cbor.decode_page(&body);
        let _ = WireFormat::Json.decode_page(&body);
        let _ = WireFormat::Cbor.decode_error(&body);
        let _ = WireFormat::Json.decode_error(&body);
    }

    #[test]
    fn mutated_pages_never_panic(records in arb_records(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let body = real_page(&records, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut bytes = body.to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = WireFormat::Cbor.decode_page(&Bytes::from(bytes));
    }
}
