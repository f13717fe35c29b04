//! Our own GetRecords path: the request signed with SigV4 and sent over hyper, the answer
//! decoded from CBOR (as the AWS SDK for Java and KCL read Kinesis) or JSON, with each
//! record's data a slice of the response buffer (no copy) where the wire carries raw bytes.
//!
//! The AWS SDK for Rust speaks only JSON to Kinesis and spends most of a polling worker's CPU
//! parsing it (docs/BENCHMARKS.md "Record pipeline"); the rest of the control plane stays on
//! the SDK. Credentials and region still come from the `aws-config` chain.
//!
//! # Guarantees
//! - A decoder never panics, on any input: a malformed answer is a [`DecodeError`] naming
//!   the byte offset, and the reader retries the call (the iterator is unchanged).
//! - Both shapes of every field are read: `Data` as a byte string (real Kinesis) or a base64
//!   text string (kinesis-mock, JSON); timestamps as tag 1 + integer milliseconds (real
//!   Kinesis), an untagged integer of milliseconds (kinesis-mock) or a number of seconds
//!   (JSON, RFC 8949 tag 1 with a float); definite and indefinite lengths.
//! - Unknown fields are skipped, so a new field in Kinesis's answer breaks nothing.

pub mod cbor;
pub mod client;
pub mod json;

use bytes::Bytes;

use super::aggregation::KinesisRecord;

/// The content type our GetRecords requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `application/x-amz-cbor-1.1`: record data as raw bytes, no base64.
    Cbor,
    /// `application/x-amz-json-1.1`, as the SDK sends.
    Json,
}

impl WireFormat {
    /// The `Content-Type` of requests in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Cbor => "application/x-amz-cbor-1.1",
            Self::Json => "application/x-amz-json-1.1",
        }
    }

    /// The format of an answer with this `Content-Type` (`None`: unknown, try the request's).
    pub fn of_content_type(content_type: &str) -> Option<Self> {
        let ct = content_type.to_ascii_lowercase();
        if ct.contains("cbor") {
            Some(Self::Cbor)
        } else if ct.contains("json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    /// The GetRecords request body.
    pub fn get_records_body(self, shard_iterator: &str, limit: i32) -> Bytes {
        match self {
            Self::Cbor => cbor::get_records_request(shard_iterator, limit),
            Self::Json => json::get_records_request(shard_iterator, limit),
        }
    }

    /// Decodes a GetRecords answer.
    ///
    /// # Errors
    /// [`DecodeError`] when `body` is not a GetRecords answer in this format.
    pub fn decode_page(self, body: &Bytes) -> Result<RecordsPage, DecodeError> {
        match self {
            Self::Cbor => cbor::records_page(body),
            Self::Json => json::records_page(body),
        }
    }

    /// Decodes an error answer (`__type` and `message`).
    ///
    /// # Errors
    /// [`DecodeError`] when `body` is not an error object in this format.
    pub fn decode_error(self, body: &[u8]) -> Result<ServiceError, DecodeError> {
        match self {
            Self::Cbor => cbor::service_error(body),
            Self::Json => json::service_error(body),
        }
    }
}

/// One GetRecords answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsPage {
    /// The records, in shard order.
    pub records: Vec<KinesisRecord>,
    /// `None` once the shard is closed and all of it has been read.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip this read was.
    pub millis_behind_latest: Option<i64>,
    /// The children of a closed shard (on its last page).
    pub child_shard_ids: Vec<String>,
}

/// An error Kinesis answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The exception's name, e.g. `ExpiredIteratorException` (namespace and URI suffixes
    /// removed).
    pub code: String,
    /// Kinesis's message.
    pub message: String,
}

/// An answer that is not what GetRecords returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {format} answer at byte {offset}: {reason}")]
pub struct DecodeError {
    /// `CBOR` or `JSON`.
    pub format: &'static str,
    /// Where in the body.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// The bare exception name of `__type` values such as
/// `com.amazonaws.kinesis.v20131202#ExpiredIteratorException` or
/// `ExpiredIteratorException:http://internal.amazon.com/coral/...`.
pub fn bare_error_code(raw: &str) -> &str {
    let after_hash = raw.rsplit('#').next().unwrap_or(raw);
    after_hash.split(':').next().unwrap_or(after_hash).trim()
}

/// Epoch milliseconds of a timestamp given as seconds (possibly fractional), rounded to the
/// millisecond; `None` when not finite or out of range.
fn seconds_to_millis(seconds: f64) -> Option<i64> {
    let ms = (seconds * 1000.0).round();
    (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
}

/// Base64 text as bytes.
fn base64_bytes(text: &[u8]) -> Option<Bytes> {
    base64_simd::STANDARD
        .decode_to_vec(text)
        .ok()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod http_tests;
