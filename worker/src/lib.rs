//! kinesis-worker: the KCL part of kinesis-operator. It runs as a sidecar next to the user's
//! app container (or on its own), holds shard leases in DynamoDB, reads shards and hands
//! record batches to the app over gRPC.
//!
//! Today it holds the AWS connection settings ([`aws`]) and the preflight check
//! ([`preflight`]) that proves the Kinesis and DynamoDB endpoints answer; leases, shard
//! readers and delivery come with their issues.
#![deny(missing_docs)]

pub mod aws;
pub mod lease;
pub mod preflight;
pub mod records;
