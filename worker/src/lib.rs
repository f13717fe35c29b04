//! kinesis-worker: the KCL part of kinesis-operator. It runs as a sidecar next to the user's
//! app container (or on its own), holds shard leases in DynamoDB ([`lease`]), reads shards
//! ([`records`]) and hands record batches to the app over gRPC ([`pipeline`]); its admin HTTP
//! port ([`admin`]) serves metrics, health, readiness and the drain used during rollouts.
#![deny(missing_docs)]

pub mod admin;
pub mod aws;
pub mod import;
pub mod metrics;
pub mod pipeline;
pub mod preflight;
pub mod records;

/// Shard leases in DynamoDB: the [`kinesis_lease`] crate, which the operator shares.
pub use kinesis_lease as lease;
pub use kinesis_lease::{backoff, clock, status};
