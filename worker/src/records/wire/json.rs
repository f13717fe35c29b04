//! GetRecords in JSON (`application/x-amz-json-1.1`), as the SDK speaks it but decoded with
//! borrowed strings (one allocation per record for its data, none per field name).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use super::{
    DecodeError, RecordsPage, ServiceError, bare_error_code, base64_bytes, seconds_to_millis,
};
use crate::records::aggregation::{KinesisRecord, Str};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page<'a> {
    #[serde(borrow, default)]
    records: Option<Vec<Record<'a>>>,
    #[serde(default)]
    next_shard_iterator: Option<String>,
    #[serde(default)]
    millis_behind_latest: Option<i64>,
    #[serde(borrow, default)]
    child_shards: Option<Vec<Child<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(default, borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow)]
    sequence_number: Cow<'a, str>,
    #[serde(default)]
    approximate_arrival_timestamp: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Child<'a> {
    #[serde(borrow)]
    shard_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Error<'a> {
    #[serde(rename = "__type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, alias = "Message", borrow)]
    message: Option<Cow<'a, str>>,
}

fn malformed(e: &serde_json::Error, body: &[u8]) -> DecodeError {
    // serde_json reports line and column; the offset is the column on line 1 (the usual
    // one-line body), else the end.
    let offset = if e.line() <= 1 {
        e.column().saturating_sub(1)
    } else {
        body.len()
    };
    DecodeError {
        format: "JSON",
        offset,
        reason: e.to_string(),
    }
}

/// Decodes a GetRecords answer.
///
/// # Errors
/// [`DecodeError`] when `body` is not one (or a record's `Data` is not base64).
pub fn records_page(body: &Bytes) -> Result<RecordsPage, DecodeError> {
    let page: Page<'_> = serde_json::from_slice(body).map_err(|e| malformed(&e, body))?;
    let mut records = Vec::with_capacity(page.records.as_ref().map_or(0, Vec::len));
    for (i, r) in page.records.unwrap_or_default().into_iter().enumerate() {
        let data = base64_bytes(r.data.as_bytes()).ok_or_else(|| DecodeError {
            format: "JSON",
            offset: 0,
            reason: format!("record {i}: Data is not base64"),
        })?;
        records.push(KinesisRecord {
            data,
            partition_key: shared(body, r.partition_key),
            sequence_number: shared(body, r.sequence_number),
            approximate_arrival_ms: r.approximate_arrival_timestamp.and_then(seconds_to_millis),
        });
    }
    Ok(RecordsPage {
        records,
        next_shard_iterator: page.next_shard_iterator,
        millis_behind_latest: page.millis_behind_latest,
        child_shard_ids: page
            .child_shards
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.shard_id.into_owned())
            .collect(),
    })
}

/// A string serde borrowed from `body` as a slice of it (no copy); one it had to unescape
/// is its own.
fn shared(body: &Bytes, s: Cow<'_, str>) -> Str {
    match s {
        Cow::Borrowed(b) => {
            let start = (b.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
            start
                .checked_add(b.len())
                .filter(|end| *end <= body.len())
                .and_then(|end| Str::from_inner(body.slice(start..end)).ok())
                .unwrap_or_else(|| Str::from(b))
        }
        Cow::Owned(o) => Str::from(o),
    }
}

/// Decodes an error answer: `{"__type": …, "message": …}`.
///
/// # Errors
/// [`DecodeError`] when `body` is not such an object.
pub fn service_error(body: &[u8]) -> Result<ServiceError, DecodeError> {
    let e: Error<'_> = serde_json::from_slice(body).map_err(|e| malformed(&e, body))?;
    Ok(ServiceError {
        code: bare_error_code(&e.kind).to_string(),
        message: e.message.map(Cow::into_owned).unwrap_or_default(),
    })
}

/// The GetRecords request.
pub fn get_records_request(shard_iterator: &str, limit: i32) -> Bytes {
    let body = serde_json::json!({ "ShardIterator": shard_iterator, "Limit": limit.max(1) });
    Bytes::from(body.to_string())
}
