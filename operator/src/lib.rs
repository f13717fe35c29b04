//! kinesis-operator: reconciles `KinesisApplication` resources into worker Deployments.
//!
//! The pure decisions live here, each in its own module and tested without a server: the
//! resource ([`crd`]), its cross-field rules ([`validate`]), how many workers a stream calls
//! for ([`sizing`]) and how the worker Deployment looks ([`deployment`]). The reconciler
//! ([`controller`]) applies them to a cluster; [`leader`] elects the active replica. What an
//! object may touch in AWS is decided in [`ownership`] and read and written by [`claims`].
#![deny(missing_docs)]

pub mod claims;
pub mod controller;
pub mod crd;
pub mod deployment;
pub mod identity;
pub mod leader;
pub mod message;
pub mod metrics;
pub mod netpol;
pub mod ownership;
pub mod plan;
pub mod report;
pub mod reshard;
pub mod sizing;
pub mod validate;

/// The CRD as YAML, as `crdgen` prints it and `crds/` holds it.
///
/// # Errors
/// Serialization failed (never for these types).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&crd::KinesisApplication::crd())
}
