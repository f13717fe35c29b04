//! How the worker reaches Kinesis and DynamoDB: region and optional endpoint overrides (for
//! local servers or VPC endpoints), on top of the AWS SDK's default credential chain.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::metrics::AwsCallCounter;
use crate::records::wire::WireFormat;
use crate::records::wire::client::{SetupError, WireClient, WireSettings, default_endpoint};

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

    /// The Kinesis endpoint the SDK's client would use, as far as our GetRecords client can
    /// follow it: the `--kinesis-endpoint` override, else `AWS_ENDPOINT_URL_KINESIS` /
    /// `AWS_ENDPOINT_URL` (or the profile's `endpoint_url`), else the region's public one.
    /// `None` for FIPS or dual-stack endpoints, which it does not build (use the SDK then).
    pub fn kinesis_endpoint_for(&self, sdk: &SdkConfig, region: &str) -> Option<String> {
        if let Some(url) = &self.kinesis_endpoint {
            return Some(url.clone());
        }
        let configured = if sdk.get_origin("endpoint_url").is_client_config() {
            sdk.endpoint_url().map(String::from)
        } else {
            aws_types::service_config::ServiceConfigKey::builder()
                .service_id("Kinesis")
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .ok()
                .and_then(|key| sdk.service_config()?.load_config(key))
                .or_else(|| sdk.endpoint_url().map(String::from))
        };
        if configured.is_some() {
            return configured;
        }
        if sdk.use_fips() == Some(true) || sdk.use_dual_stack() == Some(true) {
            return None;
        }
        Some(default_endpoint(region))
    }

    /// Our own GetRecords client in `format`, to the same endpoint as the SDK's Kinesis
    /// client ([`AwsSettings::kinesis_endpoint_for`]), with the SDK's credentials.
    ///
    /// # Errors
    /// [`SetupError`]: no region, an endpoint it cannot build (FIPS, dual-stack), no
    /// credentials provider, a bad endpoint, no TLS roots.
    pub fn get_records_client(
        &self,
        sdk: &SdkConfig,
        format: WireFormat,
        counter: Option<AwsCallCounter>,
    ) -> Result<std::sync::Arc<WireClient>, SetupError> {
        let region = self
            .region
            .clone()
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .ok_or(SetupError::NoRegion)?;
        let endpoint = self
            .kinesis_endpoint_for(sdk, &region)
            .ok_or(SetupError::UnsupportedEndpoint)?;
        let settings = WireSettings {
            format,
            endpoint,
            region,
            attempt_timeout: self.timeouts.kinesis_attempt,
            connect_timeout: self.timeouts.connect,
        };
        WireClient::new(settings, sdk, counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk(
        f: impl FnOnce(aws_types::sdk_config::Builder) -> aws_types::sdk_config::Builder,
    ) -> SdkConfig {
        f(SdkConfig::builder().region(Region::new("eu-west-1"))).build()
    }

    #[test]
    fn our_get_records_goes_where_the_sdk_would() {
        let plain = AwsSettings::default();
        assert_eq!(
            plain
                .kinesis_endpoint_for(&sdk(|b| b), "eu-west-1")
                .as_deref(),
            Some("https://kinesis.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            plain
                .kinesis_endpoint_for(&sdk(|b| b), "cn-north-1")
                .as_deref(),
            Some("https://kinesis.cn-north-1.amazonaws.com.cn")
        );
        // AWS_ENDPOINT_URL (or a client-configured endpoint) is followed.
        let vpc = "https://vpce-1.kinesis.eu-west-1.vpce.amazonaws.com";
        assert_eq!(
            plain
                .kinesis_endpoint_for(&sdk(|b| b.endpoint_url(vpc)), "eu-west-1")
                .as_deref(),
            Some(vpc)
        );
        // The override wins over everything.
        let local = AwsSettings {
            kinesis_endpoint: Some("http://127.0.0.1:4567".into()),
            ..AwsSettings::default()
        };
        assert_eq!(
            local
                .kinesis_endpoint_for(&sdk(|b| b.endpoint_url(vpc).use_fips(true)), "eu-west-1")
                .as_deref(),
            Some("http://127.0.0.1:4567")
        );
        // FIPS and dual-stack endpoints are the SDK's to build: none here.
        assert_eq!(
            plain.kinesis_endpoint_for(&sdk(|b| b.use_fips(true)), "eu-west-1"),
            None
        );
        assert_eq!(
            plain.kinesis_endpoint_for(&sdk(|b| b.use_dual_stack(true)), "eu-west-1"),
            None
        );
    }
}
