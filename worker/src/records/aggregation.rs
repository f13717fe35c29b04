//! KPL de-aggregation.
//!
//! The Kinesis Producer Library packs many user records into one Kinesis record: the magic
//! bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the MD5 of the protobuf bytes.
//! Each user record gets the Kinesis record's sequence number plus a sub-sequence number
//! (its index), so a checkpoint can point inside an aggregated record.
//!
//! As KCL does: anything that is not an intact aggregated record (no magic, wrong MD5,
//! unparsable protobuf, an index out of its table) passes through unchanged as one record
//! with sub-sequence 0; user records whose hash key lies outside the shard's hash key range
//! (possible right after a reshard) are dropped. Nothing here panics on any input.

use bytes::Bytes;
pub use bytes_utils::Str;
use md5::{Digest, Md5};

/// The KPL's magic prefix.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const MD5_LEN: usize = 16;

/// The KPL's `AggregatedRecord` (proto2, `messages.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecord {
    /// Partition keys, referenced by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referenced by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedEntry>,
}

/// One user record inside an [`AggregatedRecord`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedEntry {
    /// Index into `partition_key_table`.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The payload (a slice of the Kinesis record's buffer when decoded from `Bytes`).
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    /// KPL tags (not used by consumers).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A KPL tag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tag {
    /// Key.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// A Kinesis record as GetRecords returns it (the parts de-aggregation needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    /// Payload (shared, not copied: a slice of the GetRecords answer where the wire allows).
    pub data: Bytes,
    /// Partition key (a slice of the answer where the wire allows).
    pub partition_key: Str,
    /// Sequence number (a slice of the answer where the wire allows).
    pub sequence_number: Str,
    /// Approximate arrival time, epoch milliseconds.
    pub approximate_arrival_ms: Option<i64>,
}

/// A record as the app receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Payload (a slice of the Kinesis record's buffer for a KPL sub-record).
    pub data: Bytes,
    /// Partition key (the user record's own, for aggregated records).
    pub partition_key: Str,
    /// Explicit hash key, if the producer set one.
    pub explicit_hash_key: Option<String>,
    /// The Kinesis record's sequence number.
    pub sequence_number: Str,
    /// Index inside an aggregated record; 0 otherwise.
    pub sub_sequence_number: u64,
    /// Approximate arrival time, epoch milliseconds.
    pub approximate_arrival_ms: Option<i64>,
    /// Did it come out of a KPL-aggregated record?
    pub aggregated: bool,
}

impl kinesis_spec::filter::FilterRecord for UserRecord {
    fn partition_key(&self) -> &str {
        &self.partition_key
    }
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }
    fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref()
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

/// A shard's hash key range, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    /// Lowest hash key.
    pub start: u128,
    /// Highest hash key.
    pub end: u128,
}

impl HashRange {
    /// Parses ListShards' decimal strings; `None` if either is not a 128-bit number.
    pub fn parse(start: &str, end: &str) -> Option<Self> {
        Some(Self {
            start: start.parse().ok()?,
            end: end.parse().ok()?,
        })
    }

    fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// The hash key Kinesis derives from a partition key: MD5 as a big-endian 128-bit number.
pub fn hash_key_of(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Does `data` start with the KPL magic (and so needs [`deaggregate`])? A record that does
/// not is delivered as it is ([`plain`]).
pub fn looks_aggregated(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + MD5_LEN && data[..MAGIC.len()] == MAGIC
}

/// A record that is not aggregated, as the app receives it.
pub fn plain(record: KinesisRecord) -> UserRecord {
    UserRecord {
        data: record.data,
        partition_key: record.partition_key,
        explicit_hash_key: None,
        sequence_number: record.sequence_number,
        sub_sequence_number: 0,
        approximate_arrival_ms: record.approximate_arrival_ms,
        aggregated: false,
    }
}

fn passthrough(record: KinesisRecord) -> Vec<UserRecord> {
    vec![plain(record)]
}

/// Parses an intact aggregated record, or `None`. The user records' data are slices of
/// `data` (no copy).
fn parse(data: &Bytes) -> Option<AggregatedRecord> {
    if !looks_aggregated(data) {
        return None;
    }
    let body_end = data.len() - MD5_LEN;
    let (body, digest) = (&data[MAGIC.len()..body_end], &data[body_end..]);
    if Md5::digest(body).as_slice() != digest {
        return None;
    }
    let agg: AggregatedRecord = prost::Message::decode(data.slice(MAGIC.len()..body_end)).ok()?;
    let indexes_valid = agg.records.iter().all(|r| {
        (r.partition_key_index as usize) < agg.partition_key_table.len()
            && r.explicit_hash_key_index
                .is_none_or(|i| (i as usize) < agg.explicit_hash_key_table.len())
    });
    indexes_valid.then_some(agg)
}

/// Splits `record` into the user records the app receives. Sub-records outside `range` (if
/// given) are dropped; `after_sub_sequence` skips the sub-records up to and including that
/// index (resuming from a checkpoint inside this record).
pub fn deaggregate(
    record: KinesisRecord,
    range: Option<HashRange>,
    after_sub_sequence: Option<u64>,
) -> Vec<UserRecord> {
    deaggregate_part(&record, range, after_sub_sequence, usize::MAX).0
}

/// As [`deaggregate`], at most `limit` (≥ 1) user records: with the index of the last
/// sub-record it went through when more remain (pass it as `after_sub_sequence` for the next
/// part), `None` when the record is done. A 1 MB aggregate can hold ~175,000 empty records,
/// tens of MB once decoded: taken in parts, only one part is held at a time.
pub fn deaggregate_part(
    record: &KinesisRecord,
    range: Option<HashRange>,
    after_sub_sequence: Option<u64>,
    limit: usize,
) -> (Vec<UserRecord>, Option<u64>) {
    let Some(agg) = parse(&record.data) else {
        return (passthrough(record.clone()), None);
    };
    let limit = limit.max(1);
    let total = agg.records.len();
    let mut out = Vec::with_capacity(total.min(limit));
    let keys: Vec<Str> = agg.partition_key_table.into_iter().map(Str::from).collect();
    for (index, entry) in agg.records.into_iter().enumerate() {
        let sub = index as u64;
        if after_sub_sequence.is_some_and(|after| sub <= after) {
            continue;
        }
        if out.len() == limit {
            // Full, and this sub-record (at least) is left for the next part.
            return (out, Some(sub - 1));
        }
        // Indexes were checked in `parse`; each key is shared by its sub-records.
        let partition_key = keys
            .get(entry.partition_key_index as usize)
            .cloned()
            .unwrap_or_default();
        let explicit_hash_key = entry
            .explicit_hash_key_index
            .and_then(|i| agg.explicit_hash_key_table.get(i as usize).cloned());
        if let Some(range) = range {
            let key = explicit_hash_key
                .as_deref()
                .and_then(|k| k.parse::<u128>().ok())
                .unwrap_or_else(|| hash_key_of(&partition_key));
            if !range.contains(key) {
                continue;
            }
        }
        out.push(UserRecord {
            data: entry.data,
            partition_key,
            explicit_hash_key,
            sequence_number: record.sequence_number.clone(),
            sub_sequence_number: sub,
            approximate_arrival_ms: record.approximate_arrival_ms,
            aggregated: true,
        });
    }
    (out, None)
}

/// Packs user records the way the KPL does (for tests and tools).
pub fn aggregate(records: &[(String, Option<String>, Vec<u8>)]) -> Vec<u8> {
    let mut agg = AggregatedRecord::default();
    for (pk, ehk, data) in records {
        let pk_index = position_or_push(&mut agg.partition_key_table, pk);
        let ehk_index = ehk
            .as_ref()
            .map(|e| position_or_push(&mut agg.explicit_hash_key_table, e));
        agg.records.push(AggregatedEntry {
            partition_key_index: pk_index,
            explicit_hash_key_index: ehk_index,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    let body = prost::Message::encode_to_vec(&agg);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

fn position_or_push(table: &mut Vec<String>, value: &str) -> u64 {
    match table.iter().position(|v| v == value) {
        Some(i) => i as u64,
        None => {
            table.push(value.to_string());
            (table.len() - 1) as u64
        }
    }
}

#[cfg(test)]
mod tests;
