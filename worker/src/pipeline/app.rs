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

/// Largest message the worker sends or accepts (a 10 MB GetRecords page fits).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A connection to the app's record processor.
#[derive(Debug, Clone)]
pub struct App {
    address: Address,
    processor: RecordProcessorClient<Channel>,
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
