//! How the worker and the operator reach Kinesis and DynamoDB: region and optional endpoint overrides (for
//! local servers or VPC endpoints), on top of the AWS SDK's default credential chain.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::metrics::AwsCallCounter;

/// Timeouts of AWS calls: without them one call that never answers (a half-open
/// connection, a stuck endpoint) blocks its caller forever.
///
/// An *attempt* is one HTTP request; an *operation* is the call with the SDK's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// One DynamoDB request. Lease-table calls are small (a Scan page is at most 1 MB).
    pub dynamodb_attempt: Duration,
    /// A DynamoDB call with its retries.
    pub dynamodb_operation: Duration,
    /// One Kinesis request (a GetRecords answer may be 10 MB).
    pub kinesis_attempt: Duration,
    /// A Kinesis call with its retries. `SubscribeToShard` (a stream that lasts five
    /// minutes) has no operation or attempt timeout, only `connect`.
    pub kinesis_operation: Duration,
}

impl Default for AwsTimeouts {
    /// connect 3 s; DynamoDB 3 s an attempt, 8 s in all; Kinesis 10 s / 25 s.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            dynamodb_attempt: Duration::from_secs(3),
            dynamodb_operation: Duration::from_secs(8),
            kinesis_attempt: Duration::from_secs(10),
            kinesis_operation: Duration::from_secs(25),
        }
    }
}

impl AwsTimeouts {
    fn dynamodb(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.dynamodb_attempt)
            .operation_timeout(self.dynamodb_operation)
            .build()
    }

    fn kinesis(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.kinesis_attempt)
            .operation_timeout(self.kinesis_operation)
            .build()
    }

    /// For a call that streams (SubscribeToShard): only the connect timeout.
    pub fn streaming(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .disable_operation_attempt_timeout()
            .disable_operation_timeout()
            .build()
    }
}

/// Connection settings shared by every AWS client of the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// AWS region; `None` lets the SDK's provider chain decide (`AWS_REGION`, profile, …).
    pub region: Option<String>,
    /// Kinesis endpoint override, e.g. `http://10.250.0.1:4567`.
    pub kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override.
    pub dynamodb_endpoint: Option<String>,
    /// Timeouts of every call.
    pub timeouts: AwsTimeouts,
}

impl AwsSettings {
    /// Loads the SDK configuration (credentials, retries) for these settings.
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        loader.load().await
    }

    /// A Kinesis client honouring the endpoint override.
    pub fn kinesis(&self, sdk: &SdkConfig) -> aws_sdk_kinesis::Client {
        self.kinesis_counted(sdk, None)
    }

    /// A Kinesis client whose calls are counted in the worker's metrics.
    pub fn kinesis_counted(
        &self,
        sdk: &SdkConfig,
        counter: Option<&AwsCallCounter>,
    ) -> aws_sdk_kinesis::Client {
        self.kinesis_with(sdk, counter, None)
    }

    /// A Kinesis client whose calls are counted, and whose answers set `clock` (Kinesis's
    /// time, for pins and record ages: [`crate::clock`]).
    pub fn kinesis_with(
        &self,
        sdk: &SdkConfig,
        counter: Option<&AwsCallCounter>,
        clock: Option<&crate::clock::KinesisClock>,
    ) -> aws_sdk_kinesis::Client {
        let mut b =
            aws_sdk_kinesis::config::Builder::from(sdk).timeout_config(self.timeouts.kinesis());
        if let Some(url) = &self.kinesis_endpoint {
            b = b.endpoint_url(url);
        }
        if let Some(c) = counter {
            b = b.interceptor(c.clone());
        }
        if let Some(c) = clock {
            b = b.interceptor(c.clone());
        }
        aws_sdk_kinesis::Client::from_conf(b.build())
    }

    /// A DynamoDB client honouring the endpoint override.
    pub fn dynamodb(&self, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
        self.dynamodb_counted(sdk, None)
    }

    /// A DynamoDB client whose calls are counted in the worker's metrics.
    pub fn dynamodb_counted(
        &self,
        sdk: &SdkConfig,
        counter: Option<&AwsCallCounter>,
    ) -> aws_sdk_dynamodb::Client {
        let mut b =
            aws_sdk_dynamodb::config::Builder::from(sdk).timeout_config(self.timeouts.dynamodb());
        if let Some(url) = &self.dynamodb_endpoint {
            b = b.endpoint_url(url);
        }
        if let Some(c) = counter {
            b = b.interceptor(c.clone());
        }
        aws_sdk_dynamodb::Client::from_conf(b.build())
    }
}
