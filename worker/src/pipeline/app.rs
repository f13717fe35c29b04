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

use crate::metrics::{CallLabels, Metrics};

use bytes::Bytes;
use kinesis_processor::tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use prost::Message;

/// `ProcessRecordsRequest.attempt`'s field number.
const ATTEMPT_FIELD: u32 = 4;
const PROCESS_RECORDS: &str = "/kinesis_operator.processor.v1.RecordProcessor/ProcessRecords";

/// A `ProcessRecordsRequest` encoded once, sent again on every attempt without cloning or
/// encoding its records again.
///
/// Each attempt appends its `attempt` field after the encoded request (which has none):
/// protobuf parsers take the last value of a scalar field, so the app reads that attempt.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    body: Bytes,
}

impl EncodedBatch {
    /// Encodes `req` (its `attempt` is dropped: each call sets its own).
    pub fn new(mut req: v1::ProcessRecordsRequest) -> Self {
        req.attempt = 0;
        Self {
            body: Bytes::from(req.encode_to_vec()),
        }
    }

    /// The encoded size (without the attempt field).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Never true for a batch with records.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// Sends an [`EncodedBatch`] of `size` bytes with its attempt number; reads the answer with
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
    type Item = (Bytes, u32);
    type Error = Status;

    /// A buffer the batch fits in (gRPC's 5-byte header and the attempt field included), so
    /// that it is not grown step by step.
    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(self.size + 32, 32 * 1024)
    }

    fn encode(
        &mut self,
        (body, attempt): Self::Item,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        write_attempt(&body, attempt, dst);
        Ok(())
    }
}

/// The encoded batch, then its attempt number.
fn write_attempt(body: &[u8], attempt: u32, dst: &mut impl bytes::BufMut) {
    dst.put_slice(body);
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
    type Encode = (Bytes, u32);
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

/// A connection to the app's record processor.
#[derive(Debug, Clone)]
pub struct App {
    address: Address,
    processor: RecordProcessorClient<Channel>,
    channel: Channel,
    health: HealthClient<Channel>,
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
            processor: RecordProcessorClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            channel: channel.clone(),
            health: HealthClient::new(channel),
            metrics,
        })
    }

    /// Where the app is.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Does the app answer its health check with SERVING? Updates `app_ready`.
    pub async fn is_ready(&self) -> bool {
        let mut health = self.health.clone();
        let ready = matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                health.check(HealthCheckRequest { service: String::new() }),
            )
            .await,
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
        );
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
        let mut c = self.processor.clone();
        self.timed("Initialize", c.initialize(req)).await.map(drop)
    }

    /// `ProcessRecords`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn process_records(
        &self,
        req: v1::ProcessRecordsRequest,
    ) -> Result<v1::ProcessRecordsResponse, Status> {
        let mut c = self.processor.clone();
        self.timed("ProcessRecords", c.process_records(req)).await
    }

    /// `ProcessRecords` with a batch encoded once, as attempt `attempt`: a retry copies
    /// nothing but the encoded bytes into the HTTP/2 frame.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn process_encoded(
        &self,
        batch: &EncodedBatch,
        attempt: u32,
    ) -> Result<v1::ProcessRecordsResponse, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let call = async {
            grpc.ready().await.map_err(|e| {
                Status::unavailable(format!("the app's connection is not ready: {e}"))
            })?;
            let path = http::uri::PathAndQuery::from_static(PROCESS_RECORDS);
            grpc.unary(
                tonic::Request::new((batch.body.clone(), attempt)),
                path,
                BatchCodec {
                    size: batch.body.len(),
                },
            )
            .await
        };
        self.timed("ProcessRecords", call).await
    }

    /// `LeaseLost`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn lease_lost(&self, shard_id: &str) -> Result<(), Status> {
        let mut c = self.processor.clone();
        let req = v1::LeaseLostRequest {
            shard_id: shard_id.into(),
        };
        self.timed("LeaseLost", c.lease_lost(req)).await.map(drop)
    }

    /// `ShardEnded`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn shard_ended(&self, req: v1::ShardEndedRequest) -> Result<(), Status> {
        let mut c = self.processor.clone();
        self.timed("ShardEnded", c.shard_ended(req)).await.map(drop)
    }

    /// `ShutdownRequested`.
    ///
    /// # Errors
    /// The app's error or the transport's.
    pub async fn shutdown_requested(
        &self,
        req: v1::ShutdownRequestedRequest,
    ) -> Result<v1::ShutdownRequestedResponse, Status> {
        let mut c = self.processor.clone();
        self.timed("ShutdownRequested", c.shutdown_requested(req))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_is_read_with_its_own_number_and_the_same_records()
    -> Result<(), prost::DecodeError> {
        let req = v1::ProcessRecordsRequest {
            shard_id: "shardId-000000000001".into(),
            records: (0..3)
                .map(|i| v1::Record {
                    data: Bytes::from(format!("record-{i}")),
                    partition_key: format!("k{i}"),
                    sequence_number: format!("4959{i}"),
                    ..Default::default()
                })
                .collect(),
            millis_behind_latest: 42,
            attempt: 9,
            lease_owner: "w1".into(),
            lease_counter: 7,
        };
        let batch = EncodedBatch::new(req.clone());
        for attempt in [1, 2, 300, u32::MAX] {
            let mut wire = Vec::new();
            write_attempt(&batch.body, attempt, &mut wire);
            let got = v1::ProcessRecordsRequest::decode(&wire[..])?;
            assert_eq!(
                got,
                v1::ProcessRecordsRequest {
                    attempt,
                    ..req.clone()
                }
            );
        }
        Ok(())
    }
}
