//! kinesis-lease: the domain core that the worker and the operator share. Shard leases in
//! DynamoDB (which worker processes which shard, and where each shard's processing has got
//! to), the stream's shards, the status views built from them, and how both reach AWS. No
//! Kubernetes and no record pipeline in it.
//!
//! - [`checkpoint`]: positions in a shard, in KCL's representation.
//! - [`model`]: the table's items (leases with KCL's attributes, worker heartbeats).
//! - [`liveness`]: "is this worker still alive?" without trusting clocks across machines.
//! - [`assign`]: the elected assigner's decisions and each member's (assigner mode).
//! - [`balance`]: which leases to take or ask for, and which hand-overs to grant.
//! - [`handoff`]: following hand-over requests: over, or taken after the owner's grant timed out.
//! - [`cleanup`]: which finished leases and dead workers' heartbeats can be deleted.
//! - [`rewind`]: which checkpoints go back, and to what, to deliver again from a time.
//! - [`coordinator`]: the loop that runs it all and tells the record pipeline what it owns.
//! - [`discovery`]: the stream's shards become leases.
//! - [`table`]: the DynamoDB I/O, every ownership-dependent write fenced by the counter.
//! - [`status`]: per-shard views of a table snapshot (`kinesis-worker status`, the
//!   operator's `status.shards`).
//! - [`aws`], [`metrics`], [`clock`], [`backoff`]: AWS clients with timeouts, counted calls,
//!   Kinesis's clock, retry delays.
#![deny(missing_docs)]

pub mod assign;
pub mod balance;
pub mod checkpoint;
pub mod cleanup;
pub mod coordinator;
pub mod discovery;
pub mod handoff;
pub mod liveness;
pub mod model;
pub mod rewind;
pub mod table;

pub mod aws;
pub mod backoff;
pub mod clock;
pub mod metrics;
pub mod status;
