//! The start of an operator test on the cluster, written once: the CRD installed, a namespace,
//! a stream, the operator watching the namespace, the pageview-counter application running.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kinesis_operator::crd::KinesisApplication;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::cluster::{Operator, application, install_crd, namespace, operator};
use crate::{TestEnv, unique_name, wait_for};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const POLL: Duration = Duration::from_millis(500);

/// A client of the test cluster, the CRD installed, and a new namespace named after `prefix`.
///
/// # Errors
/// The cluster refused the CRD or the namespace.
pub async fn crd_and_namespace(env: &TestEnv, prefix: &str) -> Result<(Client, String)> {
    let client = env.kube().await?;
    install_crd(&client).await?;
    let ns = namespace(&client, prefix).await?;
    Ok((client, ns))
}

/// An operator test's start: the CRD, a namespace, the operator watching it, and (from
/// [`OperatorTest::with_stream`]) a stream. Meant to be destructured into the test's locals.
pub struct OperatorTest {
    /// The environment.
    pub env: TestEnv,
    /// A client of the test cluster.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    /// The stream ([`OperatorTest::with_stream`]; empty from [`OperatorTest::start`]).
    pub stream: String,
    /// The operator process, watching only `ns`.
    pub op: Operator,
    /// The KinesisApplications of `ns`.
    pub apps: Api<KinesisApplication>,
    /// The Deployments of `ns`.
    pub deployments: Api<Deployment>,
}

impl OperatorTest {
    /// The CRD, a namespace named after `prefix`, and the operator watching it, reconciling
    /// every `resync_seconds`. No stream, no image required.
    ///
    /// # Errors
    /// The cluster refused the CRD or the namespace, or the operator did not start.
    pub async fn start(prefix: &str, resync_seconds: u64) -> Result<Self> {
        let env = TestEnv::require();
        let (client, ns) = crd_and_namespace(&env, prefix).await?;
        Self::operate(env, client, ns, String::new(), resync_seconds)
    }

    /// As [`OperatorTest::start`], with the worker and pageview-counter images required and,
    /// before the operator starts, a stream named after `stream_prefix` with `shards` shards.
    ///
    /// # Errors
    /// An image is missing, the cluster refused the CRD or the namespace, the stream was not
    /// created, or the operator did not start.
    pub async fn with_stream(
        prefix: &str,
        stream_prefix: &str,
        shards: i32,
        resync_seconds: u64,
    ) -> Result<Self> {
        let env = TestEnv::require();
        env.require_image("kinesis-worker")?;
        env.require_image("pageview-counter")?;
        let (client, ns) = crd_and_namespace(&env, prefix).await?;
        let stream = unique_name(stream_prefix);
        env.create_stream(&stream, shards).await?;
        Self::operate(env, client, ns, stream, resync_seconds)
    }

    fn operate(
        env: TestEnv,
        client: Client,
        ns: String,
        stream: String,
        resync_seconds: u64,
    ) -> Result<Self> {
        let op = operator(&env, &ns, resync_seconds)?;
        let apps: Api<KinesisApplication> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        Ok(Self {
            env,
            client,
            ns,
            stream,
            op,
            apps,
            deployments,
        })
    }

    /// Creates the pageview-counter application `counter` on the stream, counting into
    /// `table`, and waits until its Deployment has `replicas` ready replicas.
    ///
    /// # Errors
    /// The create failed, or the replicas were not ready within 240 s (with the operator's
    /// log).
    pub async fn counter(&self, table: &str, replicas: i32) -> Result<()> {
        let app = application("counter", &self.env, &self.stream, table)?;
        self.apps.create(&PostParams::default(), &app).await?;
        until_replicas(&self.deployments, "counter", replicas, true)
            .await
            .map_err(|e| format!("{e}\n{}", self.op.log_tail()))?;
        Ok(())
    }
}

/// Waits until Deployment `name` asks for `n` replicas and, when `ready`, has `n` replicas,
/// all ready; prints how long that took.
///
/// # Errors
/// Not within 240 s.
pub async fn until_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    n: i32,
    ready: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    wait_for(
        &format!("deployment {name} with {n} replicas (ready: {ready})"),
        Duration::from_secs(240),
        POLL,
        || async {
            let d = deployments.get_opt(name).await.ok()??;
            let spec = d.spec.replicas == Some(n);
            let status = d.status.unwrap_or_default();
            let ok = if ready {
                status.ready_replicas == Some(n) && status.replicas == Some(n)
            } else {
                spec
            };
            (spec && ok).then_some(())
        },
    )
    .await?;
    eprintln!(
        "deployment {name}: {n} replicas (ready: {ready}) after {:?}",
        started.elapsed()
    );
    Ok(())
}
