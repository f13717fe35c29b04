//! How the worker reaches Kinesis and DynamoDB: region and optional endpoint overrides (for
//! local servers or VPC endpoints), on top of the AWS SDK's default credential chain.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::metrics::AwsCallCounter;

/// Connection settings shared by every AWS client of the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// AWS region; `None` lets the SDK's provider chain decide (`AWS_REGION`, profile, …).
    pub region: Option<String>,
    /// Kinesis endpoint override, e.g. `http://10.250.0.1:4567`.
    pub kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint override.
    pub dynamodb_endpoint: Option<String>,
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
        let mut b = aws_sdk_kinesis::config::Builder::from(sdk);
        if let Some(url) = &self.kinesis_endpoint {
            b = b.endpoint_url(url);
        }
        if let Some(c) = counter {
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
        let mut b = aws_sdk_dynamodb::config::Builder::from(sdk);
        if let Some(url) = &self.dynamodb_endpoint {
            b = b.endpoint_url(url);
        }
        if let Some(c) = counter {
            b = b.interceptor(c.clone());
        }
        aws_sdk_dynamodb::Client::from_conf(b.build())
    }
}
