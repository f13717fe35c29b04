//! kinesis-operator: reconciles `KinesisApplication` resources into worker Deployments.
//!
//! The CRD types and the reconciler arrive with the operator issue; this crate is the
//! place for them.
#![deny(missing_docs)]
