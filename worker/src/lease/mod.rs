//! Shard leases in DynamoDB: which worker processes which shard, and where each shard's
//! processing has got to.
//!
//! - [`checkpoint`]: positions in a shard, in KCL's representation.
//! - [`model`]: the table's items (leases with KCL's attributes, worker heartbeats).
//! - [`liveness`]: "is this worker still alive?" without trusting clocks across machines.
//! - [`assign`]: the elected assigner's decisions and each member's (assigner mode).
//! - [`balance`]: which leases to take or ask for, and which hand-overs to grant.
//! - [`handoff`]: following hand-over requests: over, or taken after the owner's grant timed out.
//! - [`cleanup`]: which finished leases and dead workers' heartbeats can be deleted.
//! - [`coordinator`]: the loop that runs it all and tells the record pipeline what it owns.
//! - [`discovery`]: the stream's shards become leases.
//! - [`table`]: the DynamoDB I/O, every ownership-dependent write fenced by the counter.

pub mod assign;
pub mod balance;
pub mod checkpoint;
pub mod cleanup;
pub mod coordinator;
pub mod discovery;
pub mod handoff;
pub mod liveness;
pub mod model;
pub mod table;
