//! kinesis-spec: the parts of a `KinesisApplication` that the operator checks and the worker
//! carries out, parsed by one piece of code so the two cannot disagree. Pure: no I/O, no AWS,
//! no Kubernetes.
//!
//! - [`filter`]: record filters (Lambda's `FilterCriteria`).
//! - [`destination`]: the on-failure destination's ARN.
//! - [`settings`]: the worker's settings, as the operator renders them into the worker
//!   container's environment and the worker reads them.
#![deny(missing_docs)]

pub mod destination;
pub mod filter;
pub mod settings;
