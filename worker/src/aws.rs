//! How the worker reaches Kinesis: the SDK clients ([`kinesis_lease::aws`]) and our own
//! GetRecords client, to the same endpoint.

use aws_config::SdkConfig;

pub use kinesis_lease::aws::{AwsSettings, AwsTimeouts};

use crate::metrics::AwsCallCounter;
use crate::records::wire::WireFormat;
use crate::records::wire::client::{SetupError, WireClient, WireSettings, default_endpoint};

/// Our own GetRecords client, built from the same [`AwsSettings`] as the SDK's clients.
pub trait GetRecordsClients {
    /// The Kinesis endpoint the SDK's client would use, as far as our GetRecords client can
    /// follow it: the `--kinesis-endpoint` override, else `AWS_ENDPOINT_URL_KINESIS` /
    /// `AWS_ENDPOINT_URL` (or the profile's `endpoint_url`), else the region's public one.
    /// `None` for FIPS or dual-stack endpoints, which it does not build (use the SDK then).
    fn kinesis_endpoint_for(&self, sdk: &SdkConfig, region: &str) -> Option<String>;

    /// Our own GetRecords client in `format`, to the same endpoint as the SDK's Kinesis
    /// client ([`GetRecordsClients::kinesis_endpoint_for`]), with the SDK's credentials.
    ///
    /// # Errors
    /// [`SetupError`]: no region, an endpoint it cannot build (FIPS, dual-stack), no
    /// credentials provider, a bad endpoint, no TLS roots.
    fn get_records_client(
        &self,
        sdk: &SdkConfig,
        format: WireFormat,
        counter: Option<AwsCallCounter>,
    ) -> Result<std::sync::Arc<WireClient>, SetupError>;
}

impl GetRecordsClients for AwsSettings {
    fn kinesis_endpoint_for(&self, sdk: &SdkConfig, region: &str) -> Option<String> {
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

    fn get_records_client(
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
    use aws_config::Region;

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
