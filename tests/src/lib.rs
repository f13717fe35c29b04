//! Shared fixtures for the integration and end-to-end tests: the local environment that
//! `cargo xtask env up` starts, and clients for it.
//!
//! A test that needs the environment and finds it down fails with a message naming the
//! command to run; nothing is skipped silently.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod accounting;
pub mod chaos;
pub mod cluster;
pub mod faults;
pub mod fixtures;
pub mod fleet;
pub mod iam;
pub mod lease_model;
pub mod pipeline;
pub mod process;
pub mod reading;
pub mod records;
pub mod synthetic;

use aws_config::{BehaviorVersion, Region};
use serde::Deserialize;

/// The command that brings the environment up, named in every "environment down" error.
pub const ENV_UP: &str = "cargo xtask env up";

/// Why the environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No environment file: the environment was never brought up (or was taken down).
    #[error(
        "the test environment is not up ({path} is missing): run `{ENV_UP}` (as root), or `cargo xtask test` which does it for you"
    )]
    Missing {
        /// The file looked for.
        path: String,
    },
    /// The file exists but cannot be read as an environment description.
    #[error(
        "{path} is not a valid environment file ({reason}): run `cargo xtask env down && {ENV_UP}`"
    )]
    Invalid {
        /// The file.
        path: String,
        /// The parse error.
        reason: String,
    },
    /// A server of the environment does not answer.
    #[error(
        "{what} at {address} is not answering ({reason}): the environment is down or broken; `cargo xtask env status` shows what runs, `{ENV_UP}` restarts what is missing"
    )]
    NotAnswering {
        /// Which server.
        what: &'static str,
        /// Where it should be.
        address: String,
        /// The connection error.
        reason: String,
    },
}

/// Endpoints and files of the running environment (`env.json`, written by `env up`).
#[derive(Debug, Clone, Deserialize)]
pub struct TestEnv {
    /// Admin kubeconfig of the test cluster.
    pub kubeconfig: PathBuf,
    /// kubectl matching the cluster's version.
    pub kubectl: PathBuf,
    /// Helm 3 binary.
    pub helm: PathBuf,
    /// The node's containerd socket.
    pub containerd_socket: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The node's address: servers on it are reachable from the host and from pods.
    pub node_ip: String,
    /// Kinesis (kinesis-mock), reachable from the host and from pods.
    pub kinesis_endpoint: String,
    /// DynamoDB (moto), reachable from the host and from pods.
    pub dynamodb_endpoint: String,
    /// The region the emulators are addressed as.
    pub region: String,
    /// Python with the Python example app's packages (grpcio, grpcio-tools, boto3).
    pub python: PathBuf,
    /// moto's server program, for a test that runs a moto of its own (`None` in an
    /// environment brought up by an older `env up`).
    #[serde(default)]
    pub moto_server: Option<PathBuf>,
    /// amazon_kclpy's unpacked sdist (its package and `samples/`), for PYTHONPATH (`None` in
    /// an environment brought up by an older `env up`).
    #[serde(default)]
    pub kclpy: Option<PathBuf>,
    /// The `node_modules` folder holding npm's aws-kcl, for NODE_PATH (`None` in an
    /// environment brought up by an older `env up`).
    #[serde(default)]
    pub aws_kcl: Option<PathBuf>,
}

/// The environment file: `$KINESIS_OPERATOR_ENV_FILE`, else `env.json` in the environment
/// folder of `cargo xtask env up` (same rules as the xtask: `$KINESIS_OPERATOR_ENV_DIR`,
/// `$KINESIS_OPERATOR_CACHE/env`, `$XDG_CACHE_HOME/kinesis-operator/env`,
/// `~/.cache/kinesis-operator/env`).
pub fn env_file() -> PathBuf {
    if let Some(f) = std::env::var_os("KINESIS_OPERATOR_ENV_FILE") {
        return PathBuf::from(f);
    }
    let dir = if let Some(d) = std::env::var_os("KINESIS_OPERATOR_ENV_DIR") {
        PathBuf::from(d)
    } else if let Some(c) = std::env::var_os("KINESIS_OPERATOR_CACHE") {
        PathBuf::from(c).join("env")
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(x).join("kinesis-operator/env")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/kinesis-operator/env")
    };
    dir.join("env.json")
}

fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn probe(what: &'static str, address: &str) -> Result<(), EnvError> {
    let not_answering = |reason: String| EnvError::NotAnswering {
        what,
        address: address.to_string(),
        reason,
    };
    let addr: std::net::SocketAddr = address.parse().map_err(|e| not_answering(format!("{e}")))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| not_answering(e.to_string()))
}

impl TestEnv {
    /// Reads the environment file at `path` without contacting anything.
    ///
    /// # Errors
    /// [`EnvError::Missing`] or [`EnvError::Invalid`], naming the command that fixes it.
    pub fn from_file(path: &Path) -> Result<Self, EnvError> {
        let bytes = std::fs::read(path).map_err(|_| EnvError::Missing {
            path: path.display().to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| EnvError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads the environment file and checks that every server answers a TCP connect.
    ///
    /// # Errors
    /// An [`EnvError`] naming what is down and the command that brings it up.
    pub fn load() -> Result<Self, EnvError> {
        let env = Self::from_file(&env_file())?;
        probe("the Kubernetes apiserver", &format!("{}:6443", env.node_ip))?;
        probe("Kinesis (kinesis-mock)", host_port(&env.kinesis_endpoint))?;
        probe("DynamoDB (moto)", host_port(&env.dynamodb_endpoint))?;
        Ok(env)
    }

    /// [`TestEnv::load`], panicking with its message: the first line of every test that
    /// needs the environment.
    #[allow(clippy::panic)]
    pub fn require() -> Self {
        match Self::load() {
            Ok(env) => env,
            Err(e) => panic!("{e}"),
        }
    }

    async fn sdk_config(&self) -> aws_config::SdkConfig {
        // Static dummy credentials: the emulators accept any, and the SDK must never fall
        // back to the instance metadata service (a network address outside this machine).
        let creds = aws_sdk_kinesis::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "kinesis-operator-tests",
        );
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(creds)
            .load()
            .await
    }

    /// The worker's own GetRecords client (`format`: CBOR or JSON) for the local Kinesis
    /// server, as `kinesis-worker run --get-records-client` builds it.
    ///
    /// # Errors
    /// The client could not be set up.
    pub async fn get_records_client(
        &self,
        format: kinesis_worker::records::wire::WireFormat,
    ) -> Result<
        std::sync::Arc<kinesis_worker::records::wire::client::WireClient>,
        kinesis_worker::records::wire::client::SetupError,
    > {
        use kinesis_worker::aws::GetRecordsClients;
        let sdk = self.sdk_config().await;
        let settings = kinesis_worker::aws::AwsSettings {
            region: Some(self.region.clone()),
            kinesis_endpoint: Some(self.kinesis_endpoint.clone()),
            ..Default::default()
        };
        settings.get_records_client(&sdk, format, None)
    }

    /// A Kinesis client for the local Kinesis server.
    pub async fn kinesis(&self) -> aws_sdk_kinesis::Client {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(&self.kinesis_endpoint)
            .build();
        aws_sdk_kinesis::Client::from_conf(conf)
    }

    /// Creates stream `name` with `shards` shards and waits until it is ACTIVE.
    ///
    /// # Errors
    /// The create failed, or the stream was not ACTIVE within 60 s.
    pub async fn create_stream(
        &self,
        name: &str,
        shards: i32,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let kinesis = self.kinesis().await;
        kinesis
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await?;
        self.wait_stream_active(name).await
    }

    /// Waits until stream `name` is ACTIVE (after a create or a reshard).
    ///
    /// # Errors
    /// Not ACTIVE within 60 s.
    pub async fn wait_stream_active(&self, name: &str) -> Result<(), Box<dyn std::error::Error>> {
        let kinesis = self.kinesis().await;
        wait_for(
            &format!("stream {name} ACTIVE"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let out = kinesis
                    .describe_stream_summary()
                    .stream_name(name)
                    .send()
                    .await
                    .ok()?;
                (out.stream_description_summary()?.stream_status()
                    == &aws_sdk_kinesis::types::StreamStatus::Active)
                    .then_some(())
            },
        )
        .await?;
        Ok(())
    }

    /// Best-effort cleanup at the end of a passing test: deletes `stream` (with its fan-out
    /// consumers) and `tables`; what is already gone is fine.
    pub async fn remove(&self, stream: Option<&str>, tables: &[&str]) {
        if let Some(stream) = stream {
            let _ = self
                .kinesis()
                .await
                .delete_stream()
                .stream_name(stream)
                .enforce_consumer_deletion(true)
                .send()
                .await;
        }
        let dynamodb = self.dynamodb().await;
        for t in tables {
            let _ = dynamodb.delete_table().table_name(*t).send().await;
        }
    }

    /// A DynamoDB client for the local DynamoDB server.
    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&self.dynamodb_endpoint)
            .build();
        aws_sdk_dynamodb::Client::from_conf(conf)
    }

    /// An SQS client for the local server (moto serves SQS beside DynamoDB).
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        let sdk = self.sdk_config().await;
        let conf = aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(&self.dynamodb_endpoint)
            .build();
        aws_sdk_sqs::Client::from_conf(conf)
    }

    /// Creates an SQS queue on the local server; its (URL, ARN).
    ///
    /// # Errors
    /// The queue could not be created or described.
    pub async fn create_queue(
        &self,
        name: &str,
    ) -> Result<(String, String), Box<dyn std::error::Error>> {
        let sqs = self.sqs().await;
        let url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await?
            .queue_url()
            .ok_or("CreateQueue answered no URL")?
            .to_string();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await?;
        let arn = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .ok_or("no QueueArn")?
            .to_string();
        Ok((url, arn))
    }

    /// Every message of the queue at `url` (received and deleted until it is empty).
    ///
    /// # Errors
    /// A receive failed.
    pub async fn drain_queue(&self, url: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let sqs = self.sqs().await;
        let mut out = Vec::new();
        loop {
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .send()
                .await?;
            let messages = got.messages();
            if messages.is_empty() {
                return Ok(out);
            }
            for m in messages {
                out.extend(m.body().map(String::from));
                if let Some(h) = m.receipt_handle() {
                    sqs.delete_message()
                        .queue_url(url)
                        .receipt_handle(h)
                        .send()
                        .await?;
                }
            }
        }
    }

    /// A Kubernetes client with the admin kubeconfig.
    ///
    /// # Errors
    /// The kubeconfig cannot be read or is invalid.
    pub async fn kube(&self) -> Result<kube::Client, kube::Error> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(kube::Error::InferKubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(kube::Error::InferKubeconfig)?;
        kube::Client::try_from(config)
    }

    /// Environment variables that point a `kinesis-worker` in a pod at the local servers.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("KINESIS_ENDPOINT".into(), self.kinesis_endpoint.clone()),
            ("DYNAMODB_ENDPOINT".into(), self.dynamodb_endpoint.clone()),
            ("SQS_ENDPOINT".into(), self.dynamodb_endpoint.clone()),
        ]
    }
}

/// The image reference of a project program built by `cargo xtask images`.
pub fn image(program: &str) -> String {
    format!("localhost/{program}:dev")
}

impl TestEnv {
    /// The image of `program`, after checking that the node has it (pods use
    /// `imagePullPolicy: Never`, so a missing image would only show as a pod that never
    /// starts).
    ///
    /// # Errors
    /// The node's containerd cannot be asked, or lacks the image: the message says to run
    /// `cargo xtask images`.
    pub fn require_image(&self, program: &str) -> Result<String, String> {
        let reference = image(program);
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io", "images", "ls", "-q"])
            .output()
            .map_err(|e| format!("cannot run ctr to list the node's images: {e}"))?;
        let listed = String::from_utf8_lossy(&out.stdout);
        if listed.lines().any(|l| l.trim() == reference) {
            Ok(reference)
        } else {
            Err(format!(
                "image {reference} is not on the test node (env up starts with none): run `cargo xtask images`, \
                 or `cargo xtask test` which does it for you"
            ))
        }
    }
}

/// A loopback port free now, for a process the test starts (which binds it itself): taken
/// below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by
/// default), where the local ends of outgoing connections never land. A port from `bind(0)`
/// is an ephemeral one: released, it could be taken by a connection some other test opens
/// before the process binds it (seen: a worker's admin port "already in use"). Ports are
/// handed out in turn from a per-process start, each checked free by a bind.
///
/// # Errors
/// No port of the range is free (falls back to an ephemeral port only if binding 0 works).
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low >= LOW + SPAN {
        // Start where another test binary (run one after the other) is unlikely to be.
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(7_919) % SPAN,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..SPAN {
            let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A name no other test run uses: `prefix-<hex>`, valid for streams, tables and
/// Kubernetes objects.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{prefix}-{:x}{n:x}",
        (nanos as u64) ^ u64::from(std::process::id()) << 32
    )
}

/// Polls `check` every `every` until it yields `Some`, or fails after `timeout` with
/// `what` in the message. For conditions on servers that offer no watch.
///
/// # Errors
/// The condition did not hold within `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_environment_names_the_command() {
        let err = TestEnv::from_file(Path::new("/nonexistent/kinesis-operator/env.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cargo xtask env up"), "{err}");
        assert!(
            err.contains("/nonexistent/kinesis-operator/env.json"),
            "{err}"
        );
    }

    #[test]
    fn dead_server_names_the_command() {
        // Port 1 on loopback: nothing listens there.
        let err = probe("Kinesis (kinesis-mock)", "127.0.0.1:1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("Kinesis (kinesis-mock) at 127.0.0.1:1"),
            "{err}"
        );
        assert!(err.contains("cargo xtask env up"), "{err}");
    }

    #[test]
    fn unique_names_differ_and_are_valid() {
        let a = unique_name("smoke");
        let b = unique_name("smoke");
        assert_ne!(a, b);
        assert!(
            a.len() < 64
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
    }

    #[test]
    fn host_port_strips_scheme_and_path() {
        assert_eq!(host_port("http://10.250.0.1:4567"), "10.250.0.1:4567");
        assert_eq!(host_port("http://10.250.0.1:4567/x"), "10.250.0.1:4567");
    }
}

#[cfg(test)]
mod port_tests {
    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).filter_map(|_| super::free_port().ok()).collect();
        assert_eq!(ports.len(), 50);
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), 50, "{ports:?}");
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
    }
}
