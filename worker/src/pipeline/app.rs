//! The worker's side of the gRPC contract: calls to the app, timed and counted.

use std::sync::Arc;
use std::time::Instant;

use kinesis_processor::Address;
use kinesis_processor::tonic::transport::Channel;
use kinesis_processor::tonic::{self, Status};
use kinesis_processor::tonic_health::pb::HealthCheckRequest;
use kinesis_processor::tonic_health::pb::health_check_response::ServingStatus;
use kinesis_processor::tonic_health::pb::health_client::HealthClient;
use kinesis_processor::v1;
use kinesis_processor::v1::record_processor_client::RecordProcessorClient;
use kinesis_processor::v1::record_processor_server::RecordProcessor;

use crate::metrics::{CallLabels, Metrics};

use crate::records::aggregation::UserRecord;
use kinesis_processor::tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use prost::Message;
use prost::encoding::WireType;

/// `ProcessRecordsRequest.attempt`'s field number.
const ATTEMPT_FIELD: u32 = 4;
const PROCESS_RECORDS: &str = "/kinesis_operator.processor.v1.RecordProcessor/ProcessRecords";

/// A `ProcessRecordsRequest` for records `range` of a shared batch: encoded straight into
/// tonic's send buffer on each attempt, so neither the records nor an encoded copy of them is
/// cloned, and the worker holds no second copy of the batch besides tonic's.
///
/// Each attempt writes its `attempt` field after the request (which has none): protobuf
/// parsers take the last value of a scalar field, so the app reads that attempt.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    parts: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    shard_id: String,
    records: Arc<Vec<UserRecord>>,
    range: std::ops::Range<usize>,
    /// Encoded size of each record's message.
    sizes: Vec<usize>,
    millis_behind_latest: i64,
    lease_owner: String,
    lease_counter: u64,
    /// Encoded size of the whole request (without the attempt field).
    len: usize,
}

impl BatchRequest {
    /// The request for `records[range]` (an empty range past the end is an empty batch):
    /// the same bytes prost writes for the request built with [`to_proto`] (fields in order,
    /// defaults left out), without building that request (no per-record strings or message
    /// to drop).
    pub fn from_records(
        shard_id: &str,
        records: Arc<Vec<UserRecord>>,
        range: std::ops::Range<usize>,
        millis_behind_latest: i64,
        lease_owner: &str,
        lease_counter: u64,
    ) -> Self {
        use prost::encoding::{encoded_len_varint, key_len};
        let part = records.get(range.clone()).unwrap_or(&[]);
        let sizes: Vec<usize> = part.iter().map(record_len).collect();
        let len = text_len(1, shard_id)
            + sizes
                .iter()
                .map(|n| key_len(2) + encoded_len_varint(*n as u64) + n)
                .sum::<usize>()
            + int_len(3, millis_behind_latest as u64)
            + text_len(5, lease_owner)
            + int_len(6, lease_counter);
        Self {
            parts: Arc::new(Parts {
                shard_id: shard_id.to_string(),
                records,
                range,
                sizes,
                millis_behind_latest,
                lease_owner: lease_owner.to_string(),
                lease_counter,
                len,
            }),
        }
    }

    /// Writes the request (without the attempt field): [`Self::len`] bytes.
    fn write(&self, buf: &mut impl bytes::BufMut) {
        use prost::encoding::encode_varint;
        let p = &*self.parts;
        let part = p.records.get(p.range.clone()).unwrap_or(&[]);
        put_text(1, p.shard_id.as_bytes(), buf);
        for (r, n) in part.iter().zip(&p.sizes) {
            prost::encoding::encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(*n as u64, buf);
            put_text(1, &r.data, buf);
            put_text(2, r.partition_key.as_bytes(), buf);
            put_text(3, r.sequence_number.as_bytes(), buf);
            put_int(4, r.sub_sequence_number, buf);
            put_int(5, r.approximate_arrival_ms.unwrap_or(0) as u64, buf);
            put_text(
                6,
                r.explicit_hash_key.as_deref().unwrap_or("").as_bytes(),
                buf,
            );
            put_int(7, u64::from(r.aggregated), buf);
        }
        put_int(3, p.millis_behind_latest as u64, buf);
        put_text(5, p.lease_owner.as_bytes(), buf);
        put_int(6, p.lease_counter, buf);
    }

    /// The request as a message, for attempt `attempt`: what the encoded bytes decode to,
    /// for an app called in-process.
    pub fn to_request(&self, attempt: u32) -> v1::ProcessRecordsRequest {
        let p = &*self.parts;
        v1::ProcessRecordsRequest {
            shard_id: p.shard_id.clone(),
            records: p
                .records
                .get(p.range.clone())
                .unwrap_or(&[])
                .iter()
                .map(to_proto)
                .collect(),
            millis_behind_latest: p.millis_behind_latest,
            attempt,
            lease_owner: p.lease_owner.clone(),
            lease_counter: p.lease_counter,
        }
    }

    /// The encoded size (without the attempt field).
    pub fn len(&self) -> usize {
        self.parts.len
    }

    /// Never true for a batch with records.
    pub fn is_empty(&self) -> bool {
        self.parts.len == 0
    }
}

/// A record as the contract's message (what [`BatchRequest::from_records`] encodes; the data
/// is shared, not copied).
fn to_proto(r: &UserRecord) -> v1::Record {
    v1::Record {
        data: r.data.clone(),
        partition_key: r.partition_key.to_string(),
        sequence_number: r.sequence_number.to_string(),
        sub_sequence_number: r.sub_sequence_number,
        approximate_arrival_timestamp_ms: r.approximate_arrival_ms.unwrap_or(0),
        explicit_hash_key: r.explicit_hash_key.clone().unwrap_or_default(),
        aggregated: r.aggregated,
    }
}

/// Encoded length of a length-delimited field (0 when empty: proto3 leaves it out).
fn text_len(tag: u32, s: &str) -> usize {
    bytes_len(tag, s.len())
}

fn bytes_len(tag: u32, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(n as u64) + n
    }
}

/// Encoded length of a varint field (0 when 0). Negative `int64`s are their two's
/// complement, as protobuf encodes them.
fn int_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(v)
    }
}

fn put_text(tag: u32, b: &[u8], buf: &mut impl bytes::BufMut) {
    if !b.is_empty() {
        prost::encoding::encode_key(tag, WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(b.len() as u64, buf);
        buf.put_slice(b);
    }
}

fn put_int(tag: u32, v: u64, buf: &mut impl bytes::BufMut) {
    if v != 0 {
        prost::encoding::encode_key(tag, WireType::Varint, buf);
        prost::encoding::encode_varint(v, buf);
    }
}

/// Encoded length of one `Record` message's fields.
fn record_len(r: &UserRecord) -> usize {
    bytes_len(1, r.data.len())
        + text_len(2, &r.partition_key)
        + text_len(3, &r.sequence_number)
        + int_len(4, r.sub_sequence_number)
        + int_len(5, r.approximate_arrival_ms.unwrap_or(0) as u64)
        + text_len(6, r.explicit_hash_key.as_deref().unwrap_or(""))
        + int_len(7, u64::from(r.aggregated))
}

/// Sends a [`BatchRequest`] of `size` bytes with its attempt number; reads the answer with
/// prost.
#[derive(Debug, Clone, Copy, Default)]
struct BatchCodec {
    size: usize,
}

/// Writes the encoded batch and then the attempt field.
#[derive(Debug, Clone, Copy, Default)]
struct BatchEncoder {
    size: usize,
}

impl Encoder for BatchEncoder {
    type Item = (BatchRequest, u32);
    type Error = Status;

    /// A buffer the batch fits in (gRPC's 5-byte header and the attempt field included), so
    /// that it is not grown step by step.
    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(self.size + 32, 32 * 1024)
    }

    fn encode(
        &mut self,
        (batch, attempt): Self::Item,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        write_attempt(&batch, attempt, dst);
        Ok(())
    }
}

/// The batch, then its attempt number.
fn write_attempt(batch: &BatchRequest, attempt: u32, dst: &mut impl bytes::BufMut) {
    batch.write(dst);
    if attempt != 0 {
        prost::encoding::uint32::encode(ATTEMPT_FIELD, &attempt, dst);
    }
}

/// Decodes a `ProcessRecordsResponse`.
#[derive(Debug, Clone, Copy, Default)]
struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = v1::ProcessRecordsResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        v1::ProcessRecordsResponse::decode(src)
            .map(Some)
            .map_err(|e| {
                Status::internal(format!(
                    "the app's ProcessRecords answer is not readable: {e}"
                ))
            })
    }
}

impl Codec for BatchCodec {
    type Encode = (BatchRequest, u32);
    type Decode = v1::ProcessRecordsResponse;
    type Encoder = BatchEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BatchEncoder { size: self.size }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

/// Largest message the worker sends or accepts (a 10 MB GetRecords page fits).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The app's record processor served in the worker's own process (the Lambda adapter).
pub type LocalProcessor = Arc<dyn RecordProcessor>;

/// How the worker reaches the app.
// One per worker, cloned only when a shard starts: the size of the gRPC variant is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Transport {
    /// The contract over gRPC (a Unix socket or TCP).
    Grpc {
        processor: RecordProcessorClient<Channel>,
        channel: Channel,
        health: HealthClient<Channel>,
    },
    /// A record processor in this process: called directly, nothing encoded; ready while
    /// the flag holds (what serves it for the app container is up).
    Local(LocalProcessor, Arc<std::sync::atomic::AtomicBool>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Grpc { .. } => f.write_str("Grpc"),
            Self::Local(..) => f.write_str("Local"),
        }
    }
}

/// A connection to the app's record processor.
#[derive(Debug, Clone)]
pub struct App {
    address: Address,
    transport: Transport,
    metrics: Arc<Metrics>,
}

impl App {
    /// Connects lazily to `address`: the app may start after the worker.
    ///
    /// # Errors
    /// Only for an address tonic cannot use.
    pub fn new(address: &Address, metrics: Arc<Metrics>) -> Result<Self, tonic::transport::Error> {
        let channel = kinesis_processor::connect(address)?;
        Ok(Self {
            address: address.clone(),
            transport: Transport::Grpc {
                processor: RecordProcessorClient::new(channel.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                channel: channel.clone(),
                health: HealthClient::new(channel),
            },
            metrics,
        })
    }

    /// A record processor in the worker's own process (`address` only names it in logs):
    /// every call goes straight to it, timed and counted as a remote one, and a batch whose
    /// lease validity passed is refused as the contract's server refuses it. It is ready
    /// while `alive` holds (for the Lambda adapter: while its Runtime API serves).
    pub fn local(
        address: &Address,
        processor: LocalProcessor,
        alive: Arc<std::sync::atomic::AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            address: address.clone(),
            transport: Transport::Local(processor, alive),
            metrics,
        }
    }

    /// Where the app is.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Does the app answer its health check with SERVING? Updates `app_ready`. A local
    /// processor is ready while its flag holds.
    pub async fn is_ready(&self) -> bool {
        self.metrics.app_health_checks.inc();
        let ready = match &self.transport {
            Transport::Grpc { health, .. } => {
                let mut health = health.clone();
                matches!(
                    tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        health.check(HealthCheckRequest { service: String::new() }),
                    )
                    .await,
                    Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
                )
            }
            Transport::Local(_, alive) => alive.load(std::sync::atomic::Ordering::SeqCst),
        };
        self.metrics.app_ready.set(i64::from(ready));
        ready
    }

    async fn timed<T, F>(&self, call: &'static str, f: F) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let res = f.await;
        let labels = CallLabels { call };
        self.metrics
            .app_call_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => {
                self.metrics.app_call_errors.get_or_create(&labels).inc();
                Err(e)
            }
        }
    }

    /// `Initialize`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn initialize(&self, req: v1::InitializeRequest) -> Result<(), Status> {
        let call = async {
            match &self.transport {
                Transport::Grpc { processor, .. } => processor.clone().initialize(req).await,
                Transport::Local(p, _) => p.initialize(tonic::Request::new(req)).await,
            }
        };
        self.timed("Initialize", call).await.map(drop)
    }

    /// `ProcessRecords`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn process_records(
        &self,
        req: v1::ProcessRecordsRequest,
    ) -> Result<v1::ProcessRecordsResponse, Status> {
        let call = async {
            match &self.transport {
                Transport::Grpc { processor, .. } => processor.clone().process_records(req).await,
                Transport::Local(p, _) => p.process_records(tonic::Request::new(req)).await,
            }
        };
        self.timed("ProcessRecords", call).await
    }

    /// `ProcessRecords` with `batch` as attempt `attempt`: each attempt encodes the records
    /// straight into tonic's buffer (a local processor gets the request as a message).
    ///
    /// # Errors
    /// The app's error or the transport's.
    ///
    /// `valid_until_ms` (ms since the epoch, the lease's validity) travels as
    /// [`kinesis_processor::LEASE_VALID_UNTIL`]: the app refuses the call once it passed.
    pub async fn process_encoded(
        &self,
        batch: &BatchRequest,
        attempt: u32,
        valid_until_ms: Option<i64>,
    ) -> Result<v1::ProcessRecordsResponse, Status> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(until) = valid_until_ms
            && let Ok(value) = until.to_string().parse()
        {
            metadata.insert(kinesis_processor::LEASE_VALID_UNTIL, value);
        }
        let channel = match &self.transport {
            Transport::Grpc { channel, .. } => channel.clone(),
            Transport::Local(p, _) => {
                let call = async {
                    // What the contract's server checks before the app sees the call.
                    let checked = kinesis_processor::refuse_after_lease(
                        tonic::Request::from_parts(metadata, tonic::Extensions::default(), ()),
                    )?;
                    let (metadata, extensions, ()) = checked.into_parts();
                    p.process_records(tonic::Request::from_parts(
                        metadata,
                        extensions,
                        batch.to_request(attempt),
                    ))
                    .await
                };
                return self.timed("ProcessRecords", call).await;
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let call = async {
            grpc.ready().await.map_err(|e| {
                Status::unavailable(format!("the app's connection is not ready: {e}"))
            })?;
            let path = http::uri::PathAndQuery::from_static(PROCESS_RECORDS);
            let mut request = tonic::Request::new((batch.clone(), attempt));
            *request.metadata_mut() = metadata;
            grpc.unary(request, path, BatchCodec { size: batch.len() })
                .await
        };
        self.timed("ProcessRecords", call).await
    }

    /// `LeaseLost`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn lease_lost(&self, shard_id: &str) -> Result<(), Status> {
        let req = v1::LeaseLostRequest {
            shard_id: shard_id.into(),
        };
        let call = async {
            match &self.transport {
                Transport::Grpc { processor, .. } => processor.clone().lease_lost(req).await,
                Transport::Local(p, _) => p.lease_lost(tonic::Request::new(req)).await,
            }
        };
        self.timed("LeaseLost", call).await.map(drop)
    }

    /// `ShardEnded`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn shard_ended(&self, req: v1::ShardEndedRequest) -> Result<(), Status> {
        let call = async {
            match &self.transport {
                Transport::Grpc { processor, .. } => processor.clone().shard_ended(req).await,
                Transport::Local(p, _) => p.shard_ended(tonic::Request::new(req)).await,
            }
        };
        self.timed("ShardEnded", call).await.map(drop)
    }

    /// `ShutdownRequested`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn shutdown_requested(
        &self,
        req: v1::ShutdownRequestedRequest,
    ) -> Result<v1::ShutdownRequestedResponse, Status> {
        let call = async {
            match &self.transport {
                Transport::Grpc { processor, .. } => {
                    processor.clone().shutdown_requested(req).await
                }
                Transport::Local(p, _) => p.shutdown_requested(tonic::Request::new(req)).await,
            }
        };
        self.timed("ShutdownRequested", call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn user_record() -> impl Strategy<Value = UserRecord> {
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            ".{0,8}",
            "[0-9]{0,30}",
            any::<u64>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of("[0-9]{0,40}"),
            any::<bool>(),
        )
            .prop_map(
                |(data, partition_key, sequence_number, sub, ts, ehk, aggregated)| UserRecord {
                    data: Bytes::from(data),
                    partition_key: partition_key.into(),
                    explicit_hash_key: ehk,
                    sequence_number: sequence_number.into(),
                    sub_sequence_number: sub,
                    approximate_arrival_ms: ts,
                    aggregated,
                },
            )
    }

    proptest! {
        /// The hand-written encoding is byte for byte prost's, defaults, negative numbers
        /// and empty batches included.
        #[test]
        fn records_encode_as_prost_encodes_the_request(
            records in proptest::collection::vec(user_record(), 0..6),
            shard in ".{0,12}",
            behind in any::<i64>(),
            owner in ".{0,12}",
            counter in any::<u64>(),
        ) {
            let all = Arc::new(records.clone());
            let ours = BatchRequest::from_records(&shard, all, 0..records.len(), behind, &owner, counter);
            let mut bytes = Vec::new();
            ours.write(&mut bytes);
            prop_assert_eq!(bytes.len(), ours.len());
            let prost = v1::ProcessRecordsRequest {
                shard_id: shard,
                records: records.iter().map(to_proto).collect(),
                millis_behind_latest: behind,
                attempt: 0,
                lease_owner: owner,
                lease_counter: counter,
            }
            .encode_to_vec();
            prop_assert_eq!(&bytes[..], &prost[..]);
        }
    }

    #[test]
    fn each_attempt_is_read_with_its_own_number_and_the_records_of_its_range()
    -> Result<(), prost::DecodeError> {
        let records: Vec<UserRecord> = (0..5)
            .map(|i| UserRecord {
                data: Bytes::from(format!("record-{i}")),
                partition_key: format!("k{i}").into(),
                explicit_hash_key: None,
                sequence_number: format!("4959{i}").into(),
                sub_sequence_number: 0,
                approximate_arrival_ms: Some(1_700_000_000_000 + i),
                aggregated: false,
            })
            .collect();
        let all = Arc::new(records.clone());
        let batch =
            BatchRequest::from_records("shardId-000000000001", all.clone(), 1..4, 42, "w1", 7);
        let want = v1::ProcessRecordsRequest {
            shard_id: "shardId-000000000001".into(),
            records: records[1..4].iter().map(to_proto).collect(),
            millis_behind_latest: 42,
            attempt: 0,
            lease_owner: "w1".into(),
            lease_counter: 7,
        };
        for attempt in [1, 2, 300, u32::MAX] {
            let mut wire = Vec::new();
            write_attempt(&batch, attempt, &mut wire);
            let got = v1::ProcessRecordsRequest::decode(&wire[..])?;
            assert_eq!(
                batch.to_request(attempt),
                got,
                "in-process, the same request"
            );
            assert_eq!(
                got,
                v1::ProcessRecordsRequest {
                    attempt,
                    ..want.clone()
                }
            );
        }
        // A range past the end is an empty batch, not a panic.
        let empty = BatchRequest::from_records("s", all, 7..9, 0, "", 0);
        let mut wire = Vec::new();
        write_attempt(&empty, 0, &mut wire);
        assert_eq!(wire.len(), empty.len());
        assert_eq!(
            v1::ProcessRecordsRequest::decode(&wire[..])?.records,
            Vec::<v1::Record>::new()
        );
        assert_eq!(empty.to_request(0).records, Vec::<v1::Record>::new());
        Ok(())
    }

    /// An in-process processor that keeps what it was asked.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<v1::ProcessRecordsRequest>>);

    #[tonic::async_trait]
    impl RecordProcessor for Recording {
        async fn initialize(
            &self,
            _: tonic::Request<v1::InitializeRequest>,
        ) -> Result<tonic::Response<v1::InitializeResponse>, Status> {
            Ok(tonic::Response::new(v1::InitializeResponse {}))
        }
        async fn process_records(
            &self,
            request: tonic::Request<v1::ProcessRecordsRequest>,
        ) -> Result<tonic::Response<v1::ProcessRecordsResponse>, Status> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(request.into_inner());
            Ok(tonic::Response::new(v1::ProcessRecordsResponse::default()))
        }
        async fn lease_lost(
            &self,
            _: tonic::Request<v1::LeaseLostRequest>,
        ) -> Result<tonic::Response<v1::LeaseLostResponse>, Status> {
            Ok(tonic::Response::new(v1::LeaseLostResponse {}))
        }
        async fn shard_ended(
            &self,
            _: tonic::Request<v1::ShardEndedRequest>,
        ) -> Result<tonic::Response<v1::ShardEndedResponse>, Status> {
            Ok(tonic::Response::new(v1::ShardEndedResponse {}))
        }
        async fn shutdown_requested(
            &self,
            _: tonic::Request<v1::ShutdownRequestedRequest>,
        ) -> Result<tonic::Response<v1::ShutdownRequestedResponse>, Status> {
            Ok(tonic::Response::new(
                v1::ShutdownRequestedResponse::default(),
            ))
        }
    }

    #[tokio::test]
    async fn a_local_processor_gets_the_batch_as_a_message_and_nothing_after_the_lease()
    -> Result<(), Box<dyn std::error::Error>> {
        let recording = Arc::new(Recording::default());
        let metrics = Metrics::labelled(&[]);
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let app = App::local(
            &"unix:///unused.sock".parse()?,
            recording.clone(),
            alive.clone(),
            metrics.clone(),
        );
        assert!(app.is_ready().await, "an in-process processor is ready");
        alive.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!app.is_ready().await, "not once what serves it stopped");
        alive.store(true, std::sync::atomic::Ordering::SeqCst);
        let records: Vec<UserRecord> = (0..3)
            .map(|i| UserRecord {
                data: Bytes::from(format!("record-{i}")),
                partition_key: format!("k{i}").into(),
                explicit_hash_key: None,
                sequence_number: format!("4959{i}").into(),
                sub_sequence_number: 0,
                approximate_arrival_ms: Some(1_700_000_000_000 + i),
                aggregated: false,
            })
            .collect();
        let batch = BatchRequest::from_records("s-1", Arc::new(records), 0..3, 5, "w1", 9);
        let later = chrono_now_ms() + 60_000;
        app.process_encoded(&batch, 2, Some(later)).await?;
        let earlier = chrono_now_ms() - 1;
        let refused = app.process_encoded(&batch, 3, Some(earlier)).await;
        assert_eq!(
            refused.map_err(|s| s.code()).err(),
            Some(tonic::Code::FailedPrecondition),
            "a call past the lease's validity is refused, as the contract's server refuses it"
        );
        let got = recording
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(
            got,
            vec![batch.to_request(2)],
            "only the call within the lease"
        );
        assert_eq!(got[0].records.len(), 3);
        Ok(())
    }

    fn chrono_now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}
