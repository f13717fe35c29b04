//! GetRecords in CBOR (`application/x-amz-cbor-1.1`), read with `minicbor`'s borrowing
//! decoder: record data that arrives as a byte string becomes a slice of the answer's buffer.

use std::borrow::Cow;

use bytes::Bytes;
use minicbor::Decoder;
use minicbor::data::Type;

use super::{
    DecodeError, RecordsPage, ServiceError, bare_error_code, base64_bytes, seconds_to_millis,
};
use crate::records::aggregation::{KinesisRecord, Str};

/// The most records a page may announce that we reserve room for up front (Kinesis sends at
/// most 10,000; a hostile length must not allocate more).
const MAX_PREALLOCATED: u64 = 10_000;

fn malformed(offset: usize, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        format: "CBOR",
        offset,
        reason: reason.into(),
    }
}

/// `d`'s next item's type.
fn peek(d: &Decoder<'_>) -> Result<Type, DecodeError> {
    let pos = d.position();
    d.datatype()
        .map_err(|e| malformed(e.position().unwrap_or(pos), e.to_string()))
}

/// Consumes a break byte if one is next (end of an indefinite map or array).
fn at_break(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    if d.input().get(d.position()) == Some(&0xff) {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    if peek(d)? == Type::Break {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

fn skip(d: &mut Decoder<'_>) -> Result<(), DecodeError> {
    let pos = d.position();
    if let Some((major, arg, head)) = head_at(d.input(), pos) {
        let end = match major {
            0 | 1 => Some(pos + head),
            2 | 3 => usize::try_from(arg)
                .ok()
                .and_then(|len| (pos + head).checked_add(len)),
            _ => None,
        };
        if let Some(end) = end.filter(|&e| e <= d.input().len()) {
            d.set_position(end);
            return Ok(());
        }
    }
    d.skip()
        .map_err(|e| malformed(e.position().unwrap_or(pos), e.to_string()))
}

/// Calls `field` with each text key of the map at `d` (definite or indefinite length), as
/// bytes; `field` consumes the value. Entries with other keys are skipped.
fn each_entry<'b>(
    d: &mut Decoder<'b>,
    mut field: impl FnMut(&[u8], &mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let pos = d.position();
    let len = d
        .map()
        .map_err(|e| malformed(e.position().unwrap_or(pos), e.to_string()))?;
    let mut seen = 0u64;
    loop {
        match len {
            Some(n) if seen >= n => return Ok(()),
            None if at_break(d)? => return Ok(()),
            _ => {}
        }
        seen += 1;
        if let Some(raw) = raw_text(d) {
            field(raw, d)?;
        } else if matches!(peek(d)?, Type::String | Type::StringIndef) {
            let key = key(d)?;
            field(&key, d)?;
        } else {
            skip(d)?;
            skip(d)?;
        }
    }
}

/// Calls `item` for each element of the array at `d` (definite or indefinite); null stands
/// for an empty array (kinesis-mock sends `ChildShards: null`).
fn each_item<'b>(
    d: &mut Decoder<'b>,
    mut item: impl FnMut(&mut Decoder<'b>) -> Result<(), DecodeError>,
) -> Result<Option<u64>, DecodeError> {
    if matches!(peek(d)?, Type::Null | Type::Undefined) {
        skip(d)?;
        return Ok(Some(0));
    }
    let pos = d.position();
    let len = d
        .array()
        .map_err(|e| malformed(e.position().unwrap_or(pos), e.to_string()))?;
    let mut seen = 0u64;
    loop {
        match len {
            Some(n) if seen >= n => return Ok(len),
            None if at_break(d)? => return Ok(len),
            _ => {}
        }
        seen += 1;
        item(d)?;
    }
}

/// The definite-length head at `pos` of `input`: (major type, argument, head length).
/// `None` for anything else (indefinite lengths, floats, simple values, truncation): the
/// callers then take `minicbor`'s general path. The fast path for the few shapes a
/// GetRecords record has; it reads nothing `minicbor` would not.
fn head_at(input: &[u8], pos: usize) -> Option<(u8, u64, usize)> {
    let initial = *input.get(pos)?;
    let major = initial >> 5;
    let arg = match initial & 0x1f {
        n @ 0..=23 => return Some((major, u64::from(n), 1)),
        24 => return Some((major, u64::from(*input.get(pos + 1)?), 2)),
        25 => (
            u64::from(u16::from_be_bytes(
                input.get(pos + 1..pos + 3)?.try_into().ok()?,
            )),
            3,
        ),
        26 => (
            u64::from(u32::from_be_bytes(
                input.get(pos + 1..pos + 5)?.try_into().ok()?,
            )),
            5,
        ),
        27 => (
            u64::from_be_bytes(input.get(pos + 1..pos + 9)?.try_into().ok()?),
            9,
        ),
        _ => return None,
    };
    Some((major, arg.0, arg.1))
}

/// The bytes of a definite-length string of major type `major` (2: bytes, 3: text) at `d`,
/// and where they start; `None` when the next item is not one.
fn raw_string<'b>(d: &mut Decoder<'b>, major: u8) -> Option<(&'b [u8], usize)> {
    let input = d.input();
    let pos = d.position();
    let (m, len, head) = head_at(input, pos)?;
    if m != major {
        return None;
    }
    let start = pos + head;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let bytes = input.get(start..end)?;
    d.set_position(end);
    Some((bytes, start))
}

/// The bytes of a definite-length text string at `d`, not checked for UTF-8 (for map keys,
/// compared with known names, and base64 data, checked by its own decoder); `None` when the
/// next item is not one (the caller falls back to [`text`]).
fn raw_text<'b>(d: &mut Decoder<'b>) -> Option<&'b [u8]> {
    raw_string(d, 3).map(|(bytes, _)| bytes)
}

/// A map key: its raw bytes if definite (no UTF-8 check needed to compare it), else joined.
fn key<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, [u8]>, DecodeError> {
    if let Some(raw) = raw_text(d) {
        return Ok(Cow::Borrowed(raw));
    }
    Ok(match text(d)? {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    })
}

/// A text string, definite (borrowed) or indefinite (joined).
fn text<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, str>, DecodeError> {
    let pos = d.position();
    if let Some(raw) = raw_text(d) {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|e| malformed(pos, format!("text is not UTF-8: {e}")));
    }
    let map = |e: minicbor::decode::Error| malformed(e.position().unwrap_or(pos), e.to_string());
    match peek(d)? {
        Type::String => d.str().map(Cow::Borrowed).map_err(map),
        Type::StringIndef => {
            let mut joined = String::new();
            for chunk in d.str_iter().map_err(map)? {
                joined.push_str(chunk.map_err(map)?);
            }
            Ok(Cow::Owned(joined))
        }
        t => Err(malformed(pos, format!("expected a text string, found {t}"))),
    }
}

/// A text string as a slice of `body` when definite (checked for UTF-8 once), else joined.
fn shared_text(body: &Bytes, d: &mut Decoder<'_>) -> Result<Str, DecodeError> {
    let pos = d.position();
    if let Some((raw, start)) = raw_string(d, 3) {
        let end = start + raw.len();
        let slice = body
            .get(start..end)
            .map(|_| body.slice(start..end))
            .ok_or_else(|| malformed(pos, "text string outside the body"))?;
        return Str::from_inner(slice)
            .map_err(|e| malformed(pos, format!("text is not UTF-8: {}", e.utf8_error())));
    }
    Ok(match text(d)? {
        Cow::Borrowed(s) => Str::from(s),
        Cow::Owned(s) => Str::from(s),
    })
}

/// Text, or `None` for null/undefined.
fn optional_text(d: &mut Decoder<'_>) -> Result<Option<String>, DecodeError> {
    if matches!(peek(d)?, Type::Null | Type::Undefined) {
        skip(d)?;
        return Ok(None);
    }
    text(d).map(|t| Some(t.into_owned()))
}

/// An integer, or `None` for null (or a value of another type, skipped).
fn optional_int(d: &mut Decoder<'_>) -> Result<Option<i64>, DecodeError> {
    let pos = d.position();
    if let Some((0, n, head)) = head_at(d.input(), pos)
        && let Ok(n) = i64::try_from(n)
    {
        d.set_position(pos + head);
        return Ok(Some(n));
    }
    match peek(d)? {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => d
            .i64()
            .map(Some)
            .map_err(|e| malformed(e.position().unwrap_or(pos), e.to_string())),
        Type::F32 | Type::F64 => d
            .f64()
            .map(|f| (f.is_finite() && f.abs() < 9.0e18).then_some(f as i64))
            .map_err(|e| malformed(pos, e.to_string())),
        _ => skip(d).map(|()| None),
    }
}

/// A record's data: a byte string (sliced out of `body`, no copy), an indefinite byte string
/// (joined), or base64 text (kinesis-mock).
fn data(body: &Bytes, d: &mut Decoder<'_>) -> Result<Bytes, DecodeError> {
    let pos = d.position();
    let map = |e: minicbor::decode::Error| malformed(e.position().unwrap_or(pos), e.to_string());
    if let Some((bytes, start)) = raw_string(d, 2) {
        return Ok(body.slice(start..start + bytes.len()));
    }
    match peek(d)? {
        Type::Bytes => {
            let len = d.bytes().map_err(map)?.len();
            let end = d.position();
            let start = end
                .checked_sub(len)
                .filter(|_| end <= body.len())
                .ok_or_else(|| malformed(pos, "byte string outside the body"))?;
            Ok(body.slice(start..end))
        }
        Type::BytesIndef => {
            let mut joined = Vec::new();
            for chunk in d.bytes_iter().map_err(map)? {
                joined.extend_from_slice(chunk.map_err(map)?);
            }
            Ok(Bytes::from(joined))
        }
        Type::String | Type::StringIndef => {
            // Base64 is ASCII: its own decoder checks every byte, UTF-8 need not.
            let decoded = match raw_text(d) {
                Some(raw) => base64_bytes(raw),
                None => base64_bytes(text(d)?.as_bytes()),
            };
            decoded.ok_or_else(|| malformed(pos, "Data is text but not base64"))
        }
        t => Err(malformed(pos, format!("Data: expected bytes, found {t}"))),
    }
}

/// A timestamp as epoch milliseconds: tag 1 + integer milliseconds (real Kinesis), tag 1 +
/// float seconds (RFC 8949), an untagged integer of milliseconds (kinesis-mock) or float
/// seconds. Anything else is skipped (`None`).
fn timestamp_ms(d: &mut Decoder<'_>) -> Result<Option<i64>, DecodeError> {
    let pos = d.position();
    if d.input().get(pos) == Some(&0xc1) {
        d.set_position(pos + 1);
        return timestamp_ms_untagged(d);
    }
    if peek(d)? == Type::Tag {
        let tag = d.tag().map_err(|e| malformed(pos, e.to_string()))?;
        if u64::from(tag) != 1 {
            return skip(d).map(|()| None);
        }
    }
    timestamp_ms_untagged(d)
}

/// A timestamp's value after its tag (if any): integer milliseconds or float seconds.
fn timestamp_ms_untagged(d: &mut Decoder<'_>) -> Result<Option<i64>, DecodeError> {
    let pos = d.position();
    if matches!(head_at(d.input(), pos), Some((0, _, _))) {
        return optional_int(d);
    }
    match peek(d)? {
        Type::F32 | Type::F64 => d
            .f64()
            .map(seconds_to_millis)
            .map_err(|e| malformed(pos, e.to_string())),
        _ => optional_int(d),
    }
}

fn record(body: &Bytes, d: &mut Decoder<'_>) -> Result<KinesisRecord, DecodeError> {
    let start = d.position();
    let mut data_field = None;
    let mut partition_key = None;
    let mut sequence_number = None;
    let mut approximate_arrival_ms = None;
    each_entry(d, |key, d| {
        match key {
            b"Data" => data_field = Some(data(body, d)?),
            b"PartitionKey" => partition_key = Some(shared_text(body, d)?),
            b"SequenceNumber" => sequence_number = Some(shared_text(body, d)?),
            b"ApproximateArrivalTimestamp" => approximate_arrival_ms = timestamp_ms(d)?,
            _ => skip(d)?,
        }
        Ok(())
    })?;
    Ok(KinesisRecord {
        data: data_field.unwrap_or_default(),
        partition_key: partition_key.unwrap_or_default(),
        sequence_number: sequence_number
            .ok_or_else(|| malformed(start, "a record without SequenceNumber"))?,
        approximate_arrival_ms,
    })
}

fn child_shard_id(d: &mut Decoder<'_>) -> Result<Option<String>, DecodeError> {
    let mut id = None;
    each_entry(d, |key, d| {
        match key {
            b"ShardId" => id = optional_text(d)?,
            _ => skip(d)?,
        }
        Ok(())
    })?;
    Ok(id)
}

/// Decodes a GetRecords answer.
///
/// # Errors
/// [`DecodeError`] when `body` is not one (truncated, wrong types, a record without a
/// sequence number, trailing bytes).
pub fn records_page(body: &Bytes) -> Result<RecordsPage, DecodeError> {
    let mut d = Decoder::new(body);
    let mut page = RecordsPage::default();
    each_entry(&mut d, |key, d| {
        match key {
            b"Records" => {
                if matches!(peek(d)?, Type::Array) {
                    let mut probe = d.clone();
                    if let Ok(Some(n)) = probe.array() {
                        page.records.reserve(n.min(MAX_PREALLOCATED) as usize);
                    }
                }
                each_item(d, |d| {
                    page.records.push(record(body, d)?);
                    Ok(())
                })?;
            }
            b"NextShardIterator" => page.next_shard_iterator = optional_text(d)?,
            b"MillisBehindLatest" => page.millis_behind_latest = optional_int(d)?,
            b"ChildShards" => {
                each_item(d, |d| {
                    if let Some(id) = child_shard_id(d)? {
                        page.child_shard_ids.push(id);
                    }
                    Ok(())
                })?;
            }
            _ => skip(d)?,
        }
        Ok(())
    })?;
    if d.position() != body.len() {
        return Err(malformed(d.position(), "trailing bytes after the answer"));
    }
    Ok(page)
}

/// Decodes an error answer: a map with `__type` and `message` (or `Message`).
///
/// # Errors
/// [`DecodeError`] when `body` is not such a map.
pub fn service_error(body: &[u8]) -> Result<ServiceError, DecodeError> {
    let mut d = Decoder::new(body);
    let mut code = None;
    let mut message = String::new();
    each_entry(&mut d, |key, d| {
        match key {
            b"__type" | b"code" | b"Code" => {
                code = optional_text(d)?.map(|c| bare_error_code(&c).to_string());
            }
            b"message" | b"Message" => message = optional_text(d)?.unwrap_or_default(),
            _ => skip(d)?,
        }
        Ok(())
    })?;
    let code = code.ok_or_else(|| malformed(0, "an error without __type"))?;
    Ok(ServiceError { code, message })
}

/// Appends a CBOR head (major type and argument).
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text_item(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The GetRecords request: `{"ShardIterator": …, "Limit": …}`. (Two fields: written
/// directly rather than through an encoder.)
pub fn get_records_request(shard_iterator: &str, limit: i32) -> Bytes {
    let mut out = Vec::with_capacity(shard_iterator.len() + 32);
    head(&mut out, 5, 2);
    text_item(&mut out, "ShardIterator");
    text_item(&mut out, shard_iterator);
    text_item(&mut out, "Limit");
    head(&mut out, 0, u64::from(limit.max(1).unsigned_abs()));
    Bytes::from(out)
}
