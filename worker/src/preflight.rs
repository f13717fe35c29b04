//! The preflight check: do Kinesis and DynamoDB answer with these settings and credentials?
//!
//! Run by `kinesis-worker preflight`, in a pod or on a laptop, it turns "the consumer does
//! nothing" into a named cause: a wrong endpoint, a missing region, credentials refused.

use std::fmt;
use std::time::Duration;

use aws_sdk_dynamodb::error::DisplayErrorContext;

use crate::aws::AwsSettings;

/// How long one service may take to answer before the check calls it unreachable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What each service said.
#[derive(Debug)]
pub struct Report {
    /// Kinesis: the number of streams listed on the first page, or why it failed.
    pub kinesis: Result<usize, PreflightError>,
    /// DynamoDB: the number of tables listed on the first page, or why it failed.
    pub dynamodb: Result<usize, PreflightError>,
}

impl Report {
    /// Did both services answer?
    pub fn ok(&self) -> bool {
        self.kinesis.is_ok() && self.dynamodb.is_ok()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kinesis {
            Ok(n) => writeln!(f, "kinesis: ok ({n} streams listed)")?,
            Err(e) => writeln!(f, "kinesis: FAILED: {e}")?,
        }
        match &self.dynamodb {
            Ok(n) => write!(f, "dynamodb: ok ({n} tables listed)"),
            Err(e) => write!(f, "dynamodb: FAILED: {e}"),
        }
    }
}

/// Why a service did not answer.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The request failed (connection refused, credentials rejected, …).
    #[error(
        "{service} at {endpoint} did not answer: {detail}; check the endpoint, region and credentials"
    )]
    Request {
        /// `kinesis` or `dynamodb`.
        service: &'static str,
        /// The endpoint used (or "the default endpoint").
        endpoint: String,
        /// The SDK's error, with its causes.
        detail: String,
    },
    /// No answer within the timeout.
    #[error(
        "{service} at {endpoint} did not answer within {timeout:?}; check that it is reachable from here"
    )]
    Timeout {
        /// `kinesis` or `dynamodb`.
        service: &'static str,
        /// The endpoint used.
        endpoint: String,
        /// The time allowed.
        timeout: Duration,
    },
}

fn endpoint_name(e: &Option<String>) -> String {
    e.clone().unwrap_or_else(|| "the default endpoint".into())
}

/// Asks each service for the first page of its streams or tables.
///
/// # Errors
/// Never fails as a whole: each service's failure is in its field of the [`Report`].
pub async fn check(settings: &AwsSettings, timeout: Duration) -> Report {
    let sdk = settings.sdk_config().await;
    let kinesis = settings.kinesis(&sdk);
    let dynamodb = settings.dynamodb(&sdk);
    let k_endpoint = endpoint_name(&settings.kinesis_endpoint);
    let d_endpoint = endpoint_name(&settings.dynamodb_endpoint);
    let kinesis_call = async {
        match tokio::time::timeout(timeout, kinesis.list_streams().limit(100).send()).await {
            Ok(Ok(out)) => Ok(out.stream_names().len()),
            Ok(Err(e)) => Err(PreflightError::Request {
                service: "kinesis",
                endpoint: k_endpoint.clone(),
                detail: DisplayErrorContext(e).to_string(),
            }),
            Err(_) => Err(PreflightError::Timeout {
                service: "kinesis",
                endpoint: k_endpoint.clone(),
                timeout,
            }),
        }
    };
    let dynamodb_call = async {
        match tokio::time::timeout(timeout, dynamodb.list_tables().limit(100).send()).await {
            Ok(Ok(out)) => Ok(out.table_names().len()),
            Ok(Err(e)) => Err(PreflightError::Request {
                service: "dynamodb",
                endpoint: d_endpoint.clone(),
                detail: DisplayErrorContext(e).to_string(),
            }),
            Err(_) => Err(PreflightError::Timeout {
                service: "dynamodb",
                endpoint: d_endpoint.clone(),
                timeout,
            }),
        }
    };
    let (kinesis, dynamodb) = tokio::join!(kinesis_call, dynamodb_call);
    Report { kinesis, dynamodb }
}
