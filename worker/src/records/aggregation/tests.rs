use proptest::prelude::*;

use super::*;

fn record(data: Vec<u8>) -> KinesisRecord {
    KinesisRecord {
        data: data.into(),
        partition_key: "outer-key".into(),
        sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
        approximate_arrival_ms: Some(1_700_000_000_000),
    }
}

fn users(n: usize) -> Vec<(String, Option<String>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("key-{}", i % 3),
                None,
                format!("payload-{i}").into_bytes(),
            )
        })
        .collect()
}

#[test]
fn a_plain_record_passes_through() {
    let out = deaggregate(record(b"hello".to_vec()), None, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data, &b"hello"[..]);
    assert_eq!(out[0].partition_key, "outer-key");
    assert_eq!(out[0].sub_sequence_number, 0);
    assert!(!out[0].aggregated);
}

#[test]
fn an_aggregated_record_splits_with_sub_sequence_numbers() {
    let out = deaggregate(record(aggregate(&users(5))), None, None);
    assert_eq!(out.len(), 5);
    for (i, u) in out.iter().enumerate() {
        assert_eq!(u.sub_sequence_number, i as u64);
        assert_eq!(u.data, format!("payload-{i}").into_bytes());
        assert_eq!(u.partition_key, format!("key-{}", i % 3));
        assert!(u.aggregated);
        assert_eq!(
            u.sequence_number,
            "49590338271490256608559692538361571095921575989136588898"
        );
    }
}

#[test]
fn resuming_inside_an_aggregated_record_skips_exactly_the_processed_sub_records() {
    let out = deaggregate(record(aggregate(&users(5))), None, Some(2));
    let subs: Vec<u64> = out.iter().map(|u| u.sub_sequence_number).collect();
    assert_eq!(subs, vec![3, 4], "nothing redelivered, nothing skipped");
}

#[test]
fn a_bad_md5_passes_through_unchanged() {
    let mut data = aggregate(&users(3));
    let last = data.len() - 1;
    data[last] ^= 0xFF;
    let out = deaggregate(record(data.clone()), None, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data, data);
    assert!(!out[0].aggregated);
}

#[test]
fn sub_records_outside_the_shards_hash_range_are_dropped() {
    // Explicit hash keys put one record in each half of the key space.
    let low = "1".to_string();
    let high = u128::MAX.to_string();
    let recs = vec![
        ("a".to_string(), Some(low), b"low".to_vec()),
        ("b".to_string(), Some(high), b"high".to_vec()),
    ];
    let lower_half = HashRange {
        start: 0,
        end: u128::MAX / 2,
    };
    let out = deaggregate(record(aggregate(&recs)), Some(lower_half), None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data, &b"low"[..]);
    assert_eq!(out[0].sub_sequence_number, 0);
    // Without an explicit hash key, the partition key's MD5 decides.
    let pk = "some-partition-key";
    let key = hash_key_of(pk);
    let only_that = HashRange {
        start: key,
        end: key,
    };
    let out = deaggregate(
        record(aggregate(&[(pk.to_string(), None, b"x".to_vec())])),
        Some(only_that),
        None,
    );
    assert_eq!(out.len(), 1);
}

#[test]
fn hash_keys_match_kinesis() {
    // MD5("") = d41d8cd98f00b204e9800998ecf8427e, read as a big-endian number.
    assert_eq!(hash_key_of(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    assert_eq!(
        HashRange::parse("0", "340282366920938463463374607431768211455"),
        Some(HashRange {
            start: 0,
            end: u128::MAX
        })
    );
    assert_eq!(HashRange::parse("x", "1"), None);
}

proptest! {
    #[test]
    fn any_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let out = deaggregate(record(data), Some(HashRange { start: 0, end: u128::MAX / 3 }), Some(1));
        prop_assert!(out.len() <= 512);
    }

    #[test]
    fn any_bytes_behind_the_magic_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        // With a correct MD5, so the protobuf parser and the index checks are what get fuzzed.
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&body);
        data.extend_from_slice(&Md5::digest(&body));
        let out = deaggregate(record(data.clone()), None, None);
        let passed_through = out.len() == 1 && !out[0].aggregated && out[0].data == data;
        prop_assert!(passed_through || out.iter().all(|u| u.aggregated));
    }

    #[test]
    fn aggregate_then_deaggregate_is_the_identity(
        recs in proptest::collection::vec(("[a-z]{1,8}", proptest::option::of(any::<u128>()), proptest::collection::vec(any::<u8>(), 0..64)), 1..20)
    ) {
        let recs: Vec<(String, Option<String>, Vec<u8>)> =
            recs.into_iter().map(|(k, e, d)| (k, e.map(|e| e.to_string()), d)).collect();
        let out = deaggregate(record(aggregate(&recs)), None, None);
        prop_assert_eq!(out.len(), recs.len());
        for (i, (u, (k, e, d))) in out.iter().zip(&recs).enumerate() {
            prop_assert_eq!(u.sub_sequence_number, i as u64);
            prop_assert_eq!(&u.partition_key, k);
            prop_assert_eq!(&u.explicit_hash_key, e);
            prop_assert_eq!(&u.data, d);
        }
    }
}
