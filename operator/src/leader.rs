//! Leader election on a `coordination.k8s.io/v1` Lease: of several operator replicas one
//! reconciles; another takes over within the lease duration when it stops renewing.
//!
//! # Guarantees
//! A replica acts only while it holds an unexpired Lease it renewed itself; every write to the
//! Lease is a replace conditioned on the resourceVersion it read, so two replicas never both
//! believe they acquired it in the same round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// The Lease and this replica's identity.
#[derive(Debug, Clone)]
pub struct Election {
    /// Lease API in the operator's namespace.
    pub api: Api<Lease>,
    /// The Lease's name.
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub duration: Duration,
}

fn micro_time_now() -> String {
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    // MicroTime: RFC 3339 with microseconds.
    let now = DateTime::from(std::time::SystemTime::now());
    let secs = now.secs();
    let micros = now.subsec_nanos() / 1000;
    DateTime::from_secs(secs)
        .fmt(DateTimeFormat::DateTime)
        .map(|s| s.replace('Z', &format!(".{micros:06}Z")))
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    let t = DateTime::from_str(s, DateTimeFormat::DateTime).ok()?;
    std::time::SystemTime::try_from(t).ok()
}

impl Election {
    /// Tries once to acquire or renew the Lease; `true` while this replica holds it.
    pub async fn try_acquire(&self) -> bool {
        let secs = self.duration.as_secs().max(1) as i32;
        let existing = match self.api.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                return false;
            }
        };
        let Some(mut lease) = existing else {
            let lease: Lease = match serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": secs,
                    "acquireTime": micro_time_now(),
                    "renewTime": micro_time_now(),
                    "leaseTransitions": 0
                }
            })) {
                Ok(l) => l,
                Err(_) => return false,
            };
            return self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .is_ok();
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec
            .renew_time
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().and_then(parse_time));
        let lasts = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1) as u64);
        let expired = renewed.is_none_or(|t| t.elapsed().is_ok_and(|e| e > lasts));
        if holder != self.identity && !expired && !holder.is_empty() {
            return false;
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        let mut value = match serde_json::to_value(&spec) {
            Ok(v) => v,
            Err(_) => return false,
        };
        value["holderIdentity"] = json!(self.identity);
        value["leaseDurationSeconds"] = json!(secs);
        value["renewTime"] = json!(micro_time_now());
        value["leaseTransitions"] = json!(transitions);
        if holder != self.identity {
            value["acquireTime"] = json!(micro_time_now());
        }
        lease.spec = serde_json::from_value(value).ok();
        // Replace carries the resourceVersion read above: a concurrent writer makes this fail.
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .is_ok()
    }
}
