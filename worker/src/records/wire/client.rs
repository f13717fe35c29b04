//! The HTTP side of our GetRecords: one hyper connection pool per worker, SigV4 with the
//! credentials of the `aws-config` chain (refreshed before they expire), one attempt per call
//! (the shard reader backs off and retries, as it does for the SDK's errors).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{DecodeError, RecordsPage, ServiceError, WireFormat};
use crate::metrics::AwsCallCounter;

/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Why a GetRecords call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Kinesis answered with an error.
    #[error("Kinesis answered HTTP {status}: {}: {}", .error.code, .error.message)]
    Service {
        /// HTTP status.
        status: u16,
        /// Its `__type` and message.
        error: ServiceError,
    },
    /// No answer: connect, send, timeout, or the body broke off.
    #[error("GetRecords to {endpoint} failed: {detail}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// An answer we cannot read.
    #[error("GetRecords answer unreadable: {0}")]
    Decode(#[from] DecodeError),
    /// The credentials chain gave no credentials.
    #[error("no AWS credentials for GetRecords: {0}")]
    Credentials(String),
    /// The request could not be built or signed.
    #[error("GetRecords request could not be signed: {0}")]
    Signing(String),
}

impl CallError {
    /// The Kinesis error code, if Kinesis answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

/// Where and how to send GetRecords.
#[derive(Clone)]
pub struct WireSettings {
    /// The request format.
    pub format: WireFormat,
    /// e.g. `http://127.0.0.1:4568` or `https://kinesis.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// The signing region.
    pub region: String,
    /// One attempt: sending, and reading the whole answer.
    pub attempt_timeout: Duration,
    /// Connecting.
    pub connect_timeout: Duration,
}

impl fmt::Debug for WireSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireSettings")
            .field("format", &self.format)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The Kinesis endpoint of a region when none is configured (`.amazonaws.com.cn` in China).
pub fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://kinesis.{region}.{suffix}")
}

/// GetRecords, our way. Cheap to share (`Arc`) between all shard readers of a worker.
pub struct WireClient {
    settings: WireSettings,
    uri: http::Uri,
    host: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    credentials: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<Credentials>>,
    counter: Option<AwsCallCounter>,
}

impl fmt::Debug for WireClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A client that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The endpoint is not a URL.
    #[error("Kinesis endpoint `{0}` is not an http(s) URL with a host")]
    Endpoint(String),
    /// FIPS or dual-stack endpoints are configured: only the SDK builds those.
    #[error(
        "FIPS or dual-stack Kinesis endpoints are configured, which only the SDK's client builds: set --kinesis-endpoint, or --get-records-client sdk"
    )]
    UnsupportedEndpoint,
    /// No region to sign for.
    #[error("no AWS region: set --region or AWS_REGION")]
    NoRegion,
    /// No credentials provider in the SDK configuration.
    #[error(
        "the AWS configuration has no credentials provider; set credentials or use --get-records-client sdk"
    )]
    NoCredentials,
    /// TLS could not be set up.
    #[error(
        "TLS for {endpoint}: {detail} (no CA certificates? install them, or use --get-records-client sdk)"
    )]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The error.
        detail: String,
    },
}

impl WireClient {
    /// A client for `settings`, with the credentials of `sdk`, counting its calls in
    /// `counter`.
    ///
    /// # Errors
    /// [`SetupError`]: a bad endpoint, no credentials provider, or no TLS roots for an
    /// https endpoint.
    pub fn new(
        settings: WireSettings,
        sdk: &SdkConfig,
        counter: Option<AwsCallCounter>,
    ) -> Result<Arc<Self>, SetupError> {
        let uri: http::Uri = settings
            .endpoint
            .parse()
            .map_err(|_| SetupError::Endpoint(settings.endpoint.clone()))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| SetupError::Endpoint(settings.endpoint.clone()))?;
        let https = uri.scheme_str() == Some("https");
        if !https && uri.scheme_str() != Some("http") {
            return Err(SetupError::Endpoint(settings.endpoint.clone()));
        }
        let credentials = sdk
            .credentials_provider()
            .ok_or(SetupError::NoCredentials)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let tls_error = |detail: String| SetupError::Tls {
            endpoint: settings.endpoint.clone(),
            detail,
        };
        let tls = if https {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| tls_error(e.to_string()))?
        } else {
            // A plain-HTTP endpoint (a local server, a proxy) needs no roots: none are loaded.
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = tls.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Arc::new(Self {
            settings,
            uri,
            host,
            http: client,
            credentials,
            cached: tokio::sync::Mutex::new(None),
            counter,
        }))
    }

    /// The request format.
    pub fn format(&self) -> WireFormat {
        self.settings.format
    }

    async fn credentials(&self) -> Result<Credentials, CallError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c
                .expiry()
                .is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE_EXPIRY);
            if fresh {
                return Ok(c.clone());
            }
        }
        let c = self.credentials.provide_credentials().await.map_err(|e| {
            CallError::Credentials(
                aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            )
        })?;
        *cached = Some(c.clone());
        Ok(c)
    }

    fn signed(
        &self,
        body: Bytes,
        credentials: Credentials,
    ) -> Result<http::Request<Full<Bytes>>, CallError> {
        let signing = |e: &dyn fmt::Display| CallError::Signing(e.to_string());
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.uri.clone())
            .header(http::header::HOST, &self.host)
            .header(
                http::header::CONTENT_TYPE,
                self.settings.format.content_type(),
            )
            .header("x-amz-target", "Kinesis_20131202.GetRecords")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(())
            .map_err(|e| signing(&e))?;
        let identity = Identity::from(credentials);
        let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.settings.region)
            .name("kinesis")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing(&e))?
            .into();
        let uri = self.uri.to_string();
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(&body))
            .map_err(|e| signing(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| signing(&e))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut req);
        Ok(req.map(|()| Full::new(body)))
    }

    fn count(&self, status: &str) {
        if let Some(c) = &self.counter {
            c.count("kinesis", "GetRecords", status);
        }
    }

    /// One GetRecords call.
    ///
    /// # Errors
    /// [`CallError`]: Kinesis's error (with its code: `ExpiredIteratorException`,
    /// `ProvisionedThroughputExceededException`, …), no answer in time, or an unreadable one.
    pub async fn get_records(
        &self,
        shard_iterator: &str,
        limit: i32,
    ) -> Result<RecordsPage, CallError> {
        let result = self.call(shard_iterator, limit).await;
        match &result {
            Ok(_) => self.count("200"),
            Err(CallError::Service { status, .. }) => self.count(&status.to_string()),
            // Answered, but not readable: counted apart from the HTTP statuses.
            Err(CallError::Decode(_)) => self.count("undecodable"),
            Err(_) => self.count("none"),
        }
        result
    }

    async fn call(&self, shard_iterator: &str, limit: i32) -> Result<RecordsPage, CallError> {
        let format = self.settings.format;
        let body = format.get_records_body(shard_iterator, limit);
        let credentials = self.credentials().await?;
        let req = self.signed(body, credentials)?;
        let transport = |detail: String| CallError::Transport {
            endpoint: self.settings.endpoint.clone(),
            detail,
        };
        let deadline = tokio::time::Instant::now() + self.settings.attempt_timeout;
        let response = tokio::time::timeout_at(deadline, self.http.request(req))
            .await
            .map_err(|_| transport(format!("no answer in {:?}", self.settings.attempt_timeout)))?
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let answer_format = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(WireFormat::of_content_type)
            .unwrap_or(format);
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|s| super::bare_error_code(s).to_string());
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = tokio::time::timeout_at(deadline, read_body(response.into_body(), length))
            .await
            .map_err(|_| {
                transport(format!(
                    "answer not complete in {:?}",
                    self.settings.attempt_timeout
                ))
            })?
            .map_err(|e| transport(error_chain(&e)))?;
        if status == 200 {
            return Ok(answer_format.decode_page(&body)?);
        }
        let error = answer_format
            .decode_error(&body)
            .ok()
            .or_else(|| {
                error_type.map(|code| ServiceError {
                    code,
                    message: String::new(),
                })
            })
            .unwrap_or_else(|| ServiceError {
                code: format!("HTTP{status}"),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        Err(CallError::Service { status, error })
    }
}

/// The whole body in one buffer, allocated once when the length is known (a GetRecords page
/// may be 10 MB, arriving in many chunks).
async fn read_body(
    mut body: hyper::body::Incoming,
    length: Option<usize>,
) -> Result<Bytes, hyper::Error> {
    /// A length beyond this is not trusted for the allocation up front.
    const MAX_PREALLOCATED: usize = 16 * 1024 * 1024;
    let mut out = bytes::BytesMut::with_capacity(length.unwrap_or(0).min(MAX_PREALLOCATED));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            // A single chunk that is the whole body is kept as it is, not copied.
            if out.is_empty() && length == Some(data.len()) {
                return Ok(data);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_credential_types::provider::future;

    use super::*;

    /// Hands out credentials that expire `ttl` from now, counting how often it is asked.
    #[derive(Debug)]
    struct Expiring {
        ttl: Duration,
        asked: Arc<AtomicU32>,
    }

    impl ProvideCredentials for Expiring {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.asked.fetch_add(1, Ordering::SeqCst);
            future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("key-{n}"),
                "secret",
                Some("token".into()),
                Some(SystemTime::now() + self.ttl),
                "test",
            )))
        }
    }

    fn client(ttl: Duration) -> Result<(Arc<WireClient>, Arc<AtomicU32>), SetupError> {
        let asked = Arc::new(AtomicU32::new(0));
        let sdk = SdkConfig::builder()
            .credentials_provider(SharedCredentialsProvider::new(Expiring {
                ttl,
                asked: asked.clone(),
            }))
            .build();
        let settings = WireSettings {
            format: WireFormat::Cbor,
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            attempt_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        Ok((WireClient::new(settings, &sdk, None)?, asked))
    }

    #[tokio::test]
    async fn credentials_are_cached_until_five_minutes_before_they_expire()
    -> Result<(), Box<dyn std::error::Error>> {
        // An hour left (IRSA's usual): asked once, then cached.
        let (c, asked) = client(Duration::from_secs(3600))?;
        for _ in 0..5 {
            assert_eq!(c.credentials().await?.access_key_id(), "key-0");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Four minutes left: inside the refresh window, so asked again on every call.
        let (c, asked) = client(Duration::from_secs(240))?;
        let keys: Vec<String> = [c.credentials().await?, c.credentials().await?]
            .iter()
            .map(|k| k.access_key_id().to_string())
            .collect();
        assert_eq!(keys, ["key-0", "key-1"]);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // The session token is signed along.
        let req = c.signed(Bytes::from_static(b"{}"), c.credentials().await?)?;
        assert_eq!(
            req.headers()
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok()),
            Some("token")
        );
        Ok(())
    }
}
