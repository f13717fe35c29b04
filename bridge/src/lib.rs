//! Consumers written for other runtimes, run unchanged behind the record-processor contract
//! (`proto/kinesis_operator/processor/v1/processor.proto`).
//!
//! - [`multilang`]: a KCL MultiLangDaemon app (amazon-kclpy, aws-kcl, …). The bridge serves the
//!   contract on the pod's socket and runs the user's command once per leased shard, speaking
//!   the MultiLang protocol on the child's stdin/stdout. It runs in the app container (where
//!   the app's interpreter is), placed there by the operator through an init container.
//! - [`lambda`]: a Lambda handler. The worker serves the Lambda Runtime API (2018-06-01) on
//!   the pod's loopback and turns each batch into a Kinesis event invocation, so an unchanged
//!   Lambda image, or a handler run by a runtime interface client, consumes the stream.
//!
//! Both are record processors like any app: the worker's leases, reading, retries, bisection,
//! destinations and checkpoints apply unchanged.

mod json;
pub mod lambda;
pub mod multilang;
