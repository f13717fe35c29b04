//! A Lambda handler as a record processor.
//!
//! [`start`] gives two things the worker runs in its own process: the Lambda Runtime API
//! (2018-06-01) on the pod's loopback, where the app container's runtime interface client
//! (AWS's base images with `AWS_LAMBDA_RUNTIME_API` set, `python -m awslambdaric
//! module.handler`, a custom runtime) long-polls for invocations; and the record processor
//! the worker calls directly ([`run`] serves it on an address instead). Each `ProcessRecords` call with records becomes one invocation whose
//! event is exactly Lambda's Kinesis event ([`event::kinesis_event_bytes`]); the handler's
//! return value is read as Lambda reads a partial batch response ([`event::outcome`]).
//!
//! What Lambda does, this does: a handler that raises fails the batch (the worker retries,
//! bisects or sends it to the on-failure destination, as configured); `batchItemFailures`
//! acknowledges the records before the lowest failed one; a successful invocation checkpoints
//! the batch. Lambda has no shard hooks, so `LeaseLost`, `ShardEnded` and `ShutdownRequested`
//! succeed at once.

pub mod event;

mod api;
mod queue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kinesis_processor::v1;
use kinesis_processor::v1::record_processor_server::RecordProcessor;

use self::event::{EventSource, Outcome};
use self::queue::{Dispatcher, InvokeError, Reply};
use tonic::{Request, Response, Status};

/// Settings of the Lambda adapter.
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    /// Where the Runtime API listens: the app container's `AWS_LAMBDA_RUNTIME_API` (the
    /// operator uses `127.0.0.1:9001`).
    pub runtime_api: SocketAddr,
    /// `Lambda-Runtime-Invoked-Function-Arn` of every invocation (the handler's
    /// `context.invoked_function_arn`).
    pub function_arn: String,
    /// `eventSourceARN` of each event record: the stream's ARN.
    pub event_source_arn: String,
    /// `awsRegion` of each event record.
    pub region: String,
    /// `invokeIdentityArn` of each event record.
    pub invoke_identity_arn: String,
    /// How long the handler may take for one invocation, from the moment a runtime client
    /// takes it (`Lambda-Runtime-Deadline-Ms`).
    pub invocation_timeout: Duration,
    /// Read the handler's `batchItemFailures` (Lambda's `ReportBatchItemFailures`); off,
    /// any answer is a success, as Lambda ignores a partial response it was not asked for.
    pub report_batch_item_failures: bool,
}

/// Why [`run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The Runtime API's address could not be bound.
    #[error(
        "cannot serve the Lambda Runtime API on {address}: {source}; set --lambda-runtime-api (and the app's AWS_LAMBDA_RUNTIME_API) to a free port"
    )]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// [`LambdaConfig::function_arn`] cannot be sent as an HTTP header value.
    #[error(
        "the function ARN {0:?} cannot be sent in the Lambda-Runtime-Invoked-Function-Arn header (it has control characters)"
    )]
    FunctionArn(String),
    /// The Runtime API's HTTP server failed.
    #[error("the Lambda Runtime API server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The record processor's gRPC server failed (or could not bind its address).
    #[error(transparent)]
    Serve(#[from] kinesis_processor::ServeError),
}

/// Milliseconds since the Unix epoch (the pod's clock, shared with the worker).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The answer to a `ProcessRecords` call whose handler returned `outcome`.
#[allow(clippy::result_large_err)]
fn records_response(
    outcome: Outcome,
    records: &[v1::Record],
) -> Result<v1::ProcessRecordsResponse, Status> {
    match outcome {
        Outcome::Success => Ok(v1::ProcessRecordsResponse {
            checkpoint: Some(v1::Checkpoint::all_delivered()),
            failed_from: None,
        }),
        Outcome::FailedFrom(index) => {
            let failed = records.get(index).ok_or_else(|| {
                Status::internal(format!(
                    "the handler's failed record {index} is outside the batch of {}",
                    records.len()
                ))
            })?;
            // The records before the failed one are done: checkpoint them, as Lambda does.
            let checkpoint = index
                .checked_sub(1)
                .and_then(|before| records.get(before))
                .map(|r| v1::Checkpoint::up_to(r.position()));
            Ok(v1::ProcessRecordsResponse {
                checkpoint,
                failed_from: Some(failed.position()),
            })
        }
        Outcome::Invalid(why) => Err(Status::internal(format!(
            "the handler's batchItemFailures are invalid, so the whole batch failed (as in Lambda): {why}"
        ))),
    }
}

/// The record processor whose every batch is a Lambda invocation (see [`start`]).
pub struct LambdaProcessor {
    dispatcher: Arc<Dispatcher>,
    source: EventSource,
    invocation_timeout: Duration,
    report_batch_item_failures: bool,
    /// For error messages: where the runtime client should be polling.
    runtime_api: SocketAddr,
}

impl LambdaProcessor {
    fn new(config: &LambdaConfig, dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            dispatcher,
            source: EventSource::new(
                config.event_source_arn.clone(),
                config.region.clone(),
                config.invoke_identity_arn.clone(),
            ),
            invocation_timeout: config.invocation_timeout,
            report_batch_item_failures: config.report_batch_item_failures,
            runtime_api: config.runtime_api,
        }
    }

    /// The status of a call whose invocation got no answer after `waited_ms`.
    fn unanswered(&self, error: InvokeError, shard_id: &str, waited_ms: i64) -> Status {
        match error {
            InvokeError::NeverTaken => {
                let init = self
                    .dispatcher
                    .init_error()
                    .map(|e| format!(" The function reported an init error: {e}"))
                    .unwrap_or_default();
                Status::deadline_exceeded(format!(
                    "no runtime client answered in time: no runtime client asked for the next invocation (a batch of {shard_id}) within {waited_ms} ms. Is the Lambda runtime running in the app container with AWS_LAMBDA_RUNTIME_API={}?{init}",
                    self.runtime_api
                ))
            }
            InvokeError::NoAnswer { id } => Status::deadline_exceeded(format!(
                "no runtime client answered in time: invocation {id} (a batch of {shard_id}) was taken from the Runtime API at AWS_LAMBDA_RUNTIME_API={} but neither a response nor an error was posted within {waited_ms} ms (its Lambda-Runtime-Deadline-Ms)",
                self.runtime_api
            )),
            InvokeError::Closed => {
                Status::unavailable("the Lambda Runtime API is shutting down: batch not delivered")
            }
        }
    }
}

#[tonic::async_trait]
impl RecordProcessor for LambdaProcessor {
    async fn initialize(
        &self,
        _request: Request<v1::InitializeRequest>,
    ) -> Result<Response<v1::InitializeResponse>, Status> {
        Ok(Response::new(v1::InitializeResponse {}))
    }

    async fn process_records(
        &self,
        request: Request<v1::ProcessRecordsRequest>,
    ) -> Result<Response<v1::ProcessRecordsResponse>, Status> {
        let request = request.into_inner();
        if request.records.is_empty() {
            // The idle call: Lambda never invokes without records, and every invocation that
            // succeeded has checkpointed already.
            return Ok(Response::new(v1::ProcessRecordsResponse {
                checkpoint: None,
                failed_from: None,
            }));
        }
        // The handler's timeout runs from when a runtime takes the invocation; the lease's
        // validity (a snapshot, renewed by heartbeats) is no deadline for it: the worker
        // cancels the call itself when the lease is really lost, and the app's server refuses
        // a call that arrives after it (`refuse_after_lease`).
        let timeout_ms = i64::try_from(self.invocation_timeout.as_millis()).unwrap_or(i64::MAX);
        let body = event::kinesis_event_bytes(&request.shard_id, &request.records, &self.source);
        let reply = self
            .dispatcher
            .invoke(body, self.invocation_timeout)
            .await
            .map_err(|e| self.unanswered(e, &request.shard_id, timeout_ms))?;
        match reply {
            Reply::Response(answer) => {
                let outcome = if self.report_batch_item_failures {
                    event::outcome(&answer, &request.records)
                } else {
                    Outcome::Success
                };
                records_response(outcome, &request.records).map(Response::new)
            }
            Reply::Error(message) => Err(Status::unknown(format!(
                "the Lambda handler failed on a batch of {} records of {}: {message}",
                request.records.len(),
                request.shard_id
            ))),
        }
    }

    async fn lease_lost(
        &self,
        _request: Request<v1::LeaseLostRequest>,
    ) -> Result<Response<v1::LeaseLostResponse>, Status> {
        Ok(Response::new(v1::LeaseLostResponse {}))
    }

    async fn shard_ended(
        &self,
        _request: Request<v1::ShardEndedRequest>,
    ) -> Result<Response<v1::ShardEndedResponse>, Status> {
        Ok(Response::new(v1::ShardEndedResponse {}))
    }

    async fn shutdown_requested(
        &self,
        _request: Request<v1::ShutdownRequestedRequest>,
    ) -> Result<Response<v1::ShutdownRequestedResponse>, Status> {
        // Every successful invocation checkpointed its batch already.
        Ok(Response::new(v1::ShutdownRequestedResponse {
            checkpoint: None,
        }))
    }
}

/// The Lambda Runtime API's server, started by [`start`]: it runs until
/// [`RuntimeApi::close`] (or the end of the process).
pub struct RuntimeApi {
    dispatcher: Arc<Dispatcher>,
    server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
}

impl RuntimeApi {
    /// Answers the runtime's pending long polls (500: the runtime should exit) and lets the
    /// server stop; call it once no `ProcessRecords` call is in progress any more.
    pub fn close(&self) {
        self.dispatcher.close();
    }

    /// Serves the Runtime API until [`Self::close`].
    ///
    /// # Errors
    /// [`LambdaError::Http`] when the server fails, or stops without being closed.
    pub async fn serve(self) -> Result<(), LambdaError> {
        let closed = self.dispatcher.clone();
        let stopped = self.server.await;
        if closed.is_closed() {
            stopped.map_err(LambdaError::Http)
        } else {
            Err(LambdaError::Http(stopped.err().unwrap_or_else(|| {
                std::io::Error::other("the Runtime API server stopped on its own")
            })))
        }
    }

    /// A handle that closes it (for whoever serves it elsewhere).
    fn closer(&self) -> Arc<Dispatcher> {
        self.dispatcher.clone()
    }
}

/// Binds the Lambda Runtime API on `config.runtime_api` and returns the record processor
/// whose calls become its invocations, and the server to run. The worker calls the
/// processor in-process (`kinesis-worker run --lambda-runtime-api`): no gRPC hop; [`run`]
/// serves it on an address instead.
///
/// # Guarantees
/// - The Runtime API's address is bound before anything else: a taken port fails at once.
/// - Each `ProcessRecords` call with records is one invocation, handed to one
///   `GET …/invocation/next` (several runtime clients, or a runtime with concurrent polls,
///   each get different invocations; calls of different shards run concurrently). An idle
///   call (no records) invokes nothing.
/// - An invocation's deadline (`Lambda-Runtime-Deadline-Ms`) is `invocation_timeout` from
///   the moment a runtime takes it (time queued behind other shards' invocations does not
///   count; the worker's own call timeout bounds the whole call). Past it the call fails with
///   `DEADLINE_EXCEEDED`, and a late answer is accepted (202) and dropped: a 4xx would make
///   the runtime client exit.
/// - `batchItemFailures` are read only with `report_batch_item_failures`, as in Lambda.
/// - On `shutdown`, the record processor stops first (its calls in progress finish); then
///   the runtime's pending long polls are answered (500: the runtime should exit) and the
///   Runtime API stops.
///
/// - The Runtime API's address is bound before anything else: a taken port fails at once.
///
/// # Errors
/// [`LambdaError::Bind`] when the Runtime API's address cannot be bound;
/// [`LambdaError::FunctionArn`] for an ARN that is no valid header value.
pub async fn start(config: &LambdaConfig) -> Result<(LambdaProcessor, RuntimeApi), LambdaError> {
    let function_arn = axum::http::HeaderValue::from_str(&config.function_arn)
        .map_err(|_| LambdaError::FunctionArn(config.function_arn.clone()))?;
    let listener = tokio::net::TcpListener::bind(config.runtime_api)
        .await
        .map_err(|source| LambdaError::Bind {
            address: config.runtime_api,
            source,
        })?;
    let dispatcher = Arc::new(Dispatcher::new());
    let app = api::router(Arc::new(api::Api {
        dispatcher: dispatcher.clone(),
        function_arn,
    }));
    let http_stopped = {
        let dispatcher = dispatcher.clone();
        async move { dispatcher.closed().await }
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(http_stopped)
        .into_future();
    tracing::info!(
        runtime_api = %config.runtime_api,
        function = %config.function_arn,
        "serving the Lambda Runtime API"
    );
    Ok((
        LambdaProcessor::new(config, dispatcher.clone()),
        RuntimeApi {
            dispatcher,
            server: Box::pin(server),
        },
    ))
}

/// Serves the Lambda Runtime API on `config.runtime_api` and the record processor on
/// `processor` until `shutdown` completes (the adapter as a gRPC app of its own; see
/// [`start`] for the same in-process).
///
/// # Guarantees
/// Those of [`start`], and: on `shutdown`, the record processor stops first (its calls in
/// progress finish); then the runtime's pending long polls are answered (500: the runtime
/// should exit) and the Runtime API stops.
///
/// # Errors
/// Those of [`start`]; [`LambdaError::Serve`] when the record processor cannot be served on
/// `processor`; [`LambdaError::Http`] when the Runtime API's server fails.
pub async fn run(
    config: LambdaConfig,
    processor: &kinesis_processor::Address,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LambdaError> {
    let (lambda, api) = start(&config).await?;
    let closer = api.closer();
    let http = api.serve();
    let mut http = std::pin::pin!(http);
    let grpc = kinesis_processor::serve(processor, lambda, shutdown);
    let grpc = std::pin::pin!(grpc);
    tokio::select! {
        served = grpc => {
            // No call is in progress any more: release the runtime's long polls, which lets
            // the HTTP server's graceful shutdown finish.
            closer.close();
            let stopped = http.await;
            served?;
            stopped
        }
        stopped = &mut http => {
            closer.close();
            stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const SOON: Duration = Duration::from_secs(5);

    fn record(sequence: &str, sub: u64) -> v1::Record {
        v1::Record {
            data: format!("data-{sequence}-{sub}").into_bytes().into(),
            partition_key: "pk".into(),
            sequence_number: sequence.into(),
            sub_sequence_number: sub,
            approximate_arrival_timestamp_ms: 1_545_084_650_987,
            ..Default::default()
        }
    }

    fn adapter(timeout: Duration) -> (Arc<Dispatcher>, Arc<LambdaProcessor>) {
        let dispatcher = Arc::new(Dispatcher::new());
        let config = LambdaConfig {
            runtime_api: SocketAddr::from(([127, 0, 0, 1], 9001)),
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
            event_source_arn: "arn:aws:kinesis:us-east-1:123456789012:stream/s".into(),
            region: "us-east-1".into(),
            invoke_identity_arn: "arn:aws:iam::123456789012:role/r".into(),
            invocation_timeout: timeout,
            report_batch_item_failures: true,
        };
        let processor = Arc::new(LambdaProcessor::new(&config, dispatcher.clone()));
        (dispatcher, processor)
    }

    fn batch_request(records: Vec<v1::Record>) -> v1::ProcessRecordsRequest {
        v1::ProcessRecordsRequest {
            shard_id: "shardId-000000000001".into(),
            records,
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_become_responses() -> TestResult {
        let records = vec![record("10", 0), record("11", 0), record("11", 1)];
        let success = records_response(Outcome::Success, &records)?;
        assert_eq!(success.checkpoint, Some(v1::Checkpoint::all_delivered()));
        assert_eq!(success.failed_from, None);

        let partial = records_response(Outcome::FailedFrom(1), &records)?;
        assert_eq!(partial.failed_from, Some(records[1].position()));
        assert_eq!(
            partial.checkpoint,
            Some(v1::Checkpoint::up_to(records[0].position()))
        );

        let first = records_response(Outcome::FailedFrom(0), &records)?;
        assert_eq!(first.failed_from, Some(records[0].position()));
        assert_eq!(first.checkpoint, None);

        let invalid = records_response(Outcome::Invalid("why".into()), &records)
            .err()
            .ok_or("an invalid answer succeeded")?;
        assert_eq!(invalid.code(), tonic::Code::Internal);
        assert!(
            invalid.message().contains("batchItemFailures") && invalid.message().ends_with("why")
        );
        assert!(records_response(Outcome::FailedFrom(3), &records).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_is_invoked_and_its_partial_failure_reported() -> TestResult {
        let (dispatcher, processor) = adapter(Duration::from_secs(60));
        let records = vec![
            record("99", 0),
            record("100", 0),
            record("100", 1),
            record("101", 0),
        ];
        let lease_until = now_ms() + 30_000;
        let mut request = Request::new(batch_request(records.clone()));
        request.metadata_mut().insert(
            kinesis_processor::LEASE_VALID_UNTIL,
            lease_until.to_string().parse()?,
        );
        let call = {
            let processor = processor.clone();
            tokio::spawn(async move { processor.process_records(request).await })
        };
        let invocation = tokio::time::timeout(SOON, dispatcher.next())
            .await?
            .ok_or("closed")?;
        // The lease's validity (a snapshot the heartbeats renew) is no deadline for the
        // handler: its timeout runs from the take.
        let left = invocation.deadline_ms - now_ms();
        assert!(
            invocation.deadline_ms > lease_until && (50_000..=60_000).contains(&left),
            "{left}"
        );
        let event: serde_json::Value = serde_json::from_slice(&invocation.body)?;
        let ids: Vec<&str> = event["Records"]
            .as_array()
            .ok_or("no Records")?
            .iter()
            .filter_map(|r| r["eventID"].as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "shardId-000000000001:99",
                "shardId-000000000001:100",
                "shardId-000000000001:100",
                "shardId-000000000001:101"
            ]
        );
        let answer =
            br#"{"batchItemFailures":[{"itemIdentifier":"101"},{"itemIdentifier":"100"}]}"#;
        assert_eq!(
            dispatcher.complete(
                &invocation.id,
                Reply::Response(axum::body::Bytes::from_static(answer))
            ),
            queue::Completion::Delivered
        );
        let response = tokio::time::timeout(SOON, call).await???.into_inner();
        assert_eq!(response.failed_from, Some(records[1].position()));
        assert_eq!(
            response.checkpoint,
            Some(v1::Checkpoint::up_to(records[0].position()))
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_successful_invocation_checkpoints_and_an_error_fails_the_call() -> TestResult {
        let (dispatcher, processor) = adapter(Duration::from_secs(60));
        for (answer, expect_ok) in [
            (
                Reply::Response(axum::body::Bytes::from_static(b"null")),
                true,
            ),
            (Reply::Error("ValueError: bad".into()), false),
        ] {
            let call = {
                let processor = processor.clone();
                tokio::spawn(async move {
                    processor
                        .process_records(Request::new(batch_request(vec![record("1", 0)])))
                        .await
                })
            };
            let invocation = tokio::time::timeout(SOON, dispatcher.next())
                .await?
                .ok_or("closed")?;
            // The take + the invocation timeout.
            let left = invocation.deadline_ms - now_ms();
            assert!((50_000..=60_000).contains(&left), "{left}");
            assert_eq!(
                dispatcher.complete(&invocation.id, answer),
                queue::Completion::Delivered
            );
            let result = tokio::time::timeout(SOON, call).await??;
            if expect_ok {
                let response = result?.into_inner();
                assert_eq!(response.checkpoint, Some(v1::Checkpoint::all_delivered()));
                assert_eq!(response.failed_from, None);
            } else {
                let status = result.err().ok_or("a failed handler succeeded")?;
                assert_eq!(status.code(), tonic::Code::Unknown);
                assert!(status.message().ends_with("ValueError: bad"), "{status:?}");
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn without_report_batch_item_failures_a_partial_answer_is_a_success() -> TestResult {
        let dispatcher = Arc::new(Dispatcher::new());
        let config = LambdaConfig {
            runtime_api: SocketAddr::from(([127, 0, 0, 1], 9001)),
            function_arn: String::new(),
            event_source_arn: String::new(),
            region: String::new(),
            invoke_identity_arn: String::new(),
            invocation_timeout: Duration::from_secs(60),
            report_batch_item_failures: false,
        };
        let processor = Arc::new(LambdaProcessor::new(&config, dispatcher.clone()));
        let call = {
            let processor = processor.clone();
            tokio::spawn(async move {
                processor
                    .process_records(Request::new(batch_request(vec![
                        record("1", 0),
                        record("2", 0),
                    ])))
                    .await
            })
        };
        let invocation = tokio::time::timeout(SOON, dispatcher.next())
            .await?
            .ok_or("closed")?;
        let answer = br#"{"batchItemFailures":[{"itemIdentifier":"2"}]}"#;
        dispatcher.complete(
            &invocation.id,
            Reply::Response(axum::body::Bytes::from_static(answer)),
        );
        let response = tokio::time::timeout(SOON, call).await???.into_inner();
        assert_eq!(response.failed_from, None);
        assert_eq!(response.checkpoint, Some(v1::Checkpoint::all_delivered()));
        Ok(())
    }

    #[tokio::test]
    async fn the_idle_call_invokes_nothing() -> TestResult {
        let (dispatcher, processor) = adapter(Duration::from_secs(60));
        let response = tokio::time::timeout(
            SOON,
            processor.process_records(Request::new(batch_request(vec![]))),
        )
        .await??
        .into_inner();
        assert_eq!(response.checkpoint, None);
        assert_eq!(response.failed_from, None);
        assert_eq!((dispatcher.queued(), dispatcher.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn without_a_runtime_the_call_exceeds_its_deadline() -> TestResult {
        let (dispatcher, processor) = adapter(Duration::from_millis(50));
        let status = tokio::time::timeout(
            SOON,
            processor.process_records(Request::new(batch_request(vec![record("1", 0)]))),
        )
        .await?
        .err()
        .ok_or("succeeded without a runtime")?;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status
                .message()
                .contains("no runtime client asked for the next invocation"),
            "{status:?}"
        );
        assert!(
            status
                .message()
                .contains("AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001")
        );
        assert_eq!((dispatcher.queued(), dispatcher.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn a_runtime_that_takes_but_never_answers() -> TestResult {
        let (dispatcher, processor) = adapter(Duration::from_millis(100));
        let call = {
            let processor = processor.clone();
            tokio::spawn(async move {
                processor
                    .process_records(Request::new(batch_request(vec![record("1", 0)])))
                    .await
            })
        };
        let invocation = tokio::time::timeout(SOON, dispatcher.next())
            .await?
            .ok_or("closed")?;
        let status = tokio::time::timeout(SOON, call)
            .await??
            .err()
            .ok_or("succeeded without an answer")?;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status
                .message()
                .contains("no runtime client answered in time")
        );
        assert!(status.message().contains(&invocation.id));
        assert_eq!(
            dispatcher.complete(&invocation.id, Reply::Error("late".into())),
            queue::Completion::Late
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_shard_hooks_succeed_without_a_checkpoint() -> TestResult {
        let (_, processor) = adapter(Duration::from_secs(1));
        processor
            .initialize(Request::new(v1::InitializeRequest::default()))
            .await?;
        processor
            .lease_lost(Request::new(v1::LeaseLostRequest::default()))
            .await?;
        processor
            .shard_ended(Request::new(v1::ShardEndedRequest::default()))
            .await?;
        let shutdown = processor
            .shutdown_requested(Request::new(v1::ShutdownRequestedRequest::default()))
            .await?
            .into_inner();
        assert_eq!(shutdown.checkpoint, None);
        Ok(())
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error_that_names_the_fix() -> TestResult {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = LambdaConfig {
            runtime_api: taken.local_addr()?,
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".into(),
            event_source_arn: String::new(),
            region: String::new(),
            invoke_identity_arn: String::new(),
            invocation_timeout: Duration::from_secs(1),
            report_batch_item_failures: false,
        };
        let processor: kinesis_processor::Address = "127.0.0.1:1".parse()?;
        let error = tokio::time::timeout(SOON, run(config, &processor, std::future::pending()))
            .await?
            .err()
            .ok_or("bound a taken port")?;
        assert!(matches!(error, LambdaError::Bind { .. }), "{error:?}");
        assert!(
            error.to_string().contains("--lambda-runtime-api"),
            "{error}"
        );
        Ok(())
    }
}
