//! Leader election on a `coordination.k8s.io/v1` Lease: of several operator replicas one
//! reconciles; another takes over within the lease duration when it stops renewing.
//!
//! # Guarantees
//! A replica acts only while it holds the Lease and its last successful renewal is less than
//! [`renew_deadline`] ago on its own monotonic clock. Every write to the Lease is a create or
//! a replace conditioned on the resourceVersion it read, so of two replicas that try in the
//! same round one gets 409 Conflict and stays a standby.
//!
//! # Clocks
//! As client-go's `leaderelection`, no replica compares another's `renewTime` with its own
//! wall clock (skew between nodes would make two leaders, or none). A standby notes, on its
//! own [`Instant`] clock, when it last saw the Lease record change ([`observe`]) and takes over
//! only once the record stayed the same for the lease duration ([`decide`]); the holder's
//! timestamps are compared only for change.
//!
//! # Why not a crate
//! kube-lease-manager 0.13.1, though built on kube 5.0.0 / k8s-openapi 0.29, judges expiry
//! as the holder's `renewTime` plus `leaseDurationSeconds` against the local wall clock
//! (`SystemTime::now()`), the skew defect this module avoids; the others need another kube:
//! kubert 0.25.0's lease kube 1.1 (k8s-openapi 0.25), kube-leader-election 0.44.0 kube 4,
//! kube-coordinate 2.0.0-rc.0 kube 2.
//!
//! The decisions ([`observe`], [`decide`], [`next_spec`], [`keep_leading`], [`taken_over`],
//! [`lost_the_round`]) are pure functions over plain data; [`Election::acquire`] and
//! [`Leadership::keep`] do the I/O around them.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

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

/// The fields of a Lease whose change shows that its holder is alive. Timestamps are kept
/// as written and only compared for equality, never with a local clock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// `spec.holderIdentity` (empty: nobody).
    pub holder: String,
    /// `spec.renewTime`, as written by the holder.
    pub renew_time: Option<String>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `spec.leaseDurationSeconds`, as the holder declared it.
    pub duration_seconds: Option<i32>,
    /// `metadata.resourceVersion`: changes with every write.
    pub resource_version: Option<String>,
}

impl Record {
    /// The record of `lease`.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Record {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default(),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// A [`Record`] and the moment (this replica's monotonic clock) it was first seen as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What the Lease said.
    pub record: Record,
    /// When this replica first read it so.
    pub since: Instant,
}

/// What to do with the Lease this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it, held by this replica.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Nobody holds it, or its holder stopped renewing: take it over.
    Acquire,
    /// Another replica holds it and renewed within the lease duration.
    Wait,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// The Lease names another holder.
    #[error("{holder} holds the leader Lease now")]
    Taken {
        /// The new holder.
        holder: String,
    },
    /// No renewal succeeded within the renew deadline.
    #[error("no renewal of the leader Lease succeeded for {0:?}")]
    Unrenewed(Duration),
}

/// The Lease as it was read now (`None`: there is none), remembered with the moment it last
/// changed: `previous.since` if the record is unchanged, else `now`.
pub fn observe(previous: Option<&Observed>, record: Record, now: Instant) -> Observed {
    let since = match previous {
        Some(p) if p.record == record => p.since,
        _ => now,
    };
    Observed { record, since }
}

/// What replica `me` does with the Lease it observed (`None`: there is none). Another
/// holder's Lease expires once its record stayed unchanged for the lease duration (the
/// longer of `duration` and the holder's declared one) on this replica's clock.
pub fn decide(observed: Option<&Observed>, me: &str, now: Instant, duration: Duration) -> Action {
    let Some(observed) = observed else {
        return Action::Create;
    };
    let record = &observed.record;
    if record.holder == me {
        return Action::Renew;
    }
    if record.holder.is_empty() {
        return Action::Acquire;
    }
    let declared = record
        .duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    if now.saturating_duration_since(observed.since) >= duration.max(declared) {
        Action::Acquire
    } else {
        Action::Wait
    }
}

/// The spec `me` writes at wall time `now`: itself as holder, renewed now; on a takeover
/// (the holder was another, or nobody) also acquired now with one more transition; on a
/// new Lease (`current` `None`) zero transitions. Other fields are kept.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let now = MicroTime(now);
    if current.is_none() {
        spec.lease_transitions = Some(0);
        spec.acquire_time = Some(now.clone());
    } else if spec.holder_identity.as_deref() != Some(me) {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(seconds(duration));
    spec.renew_time = Some(now);
    spec
}

/// Whether a leader whose last successful renewal began at `renewed` still leads at `now`
/// (both on its monotonic clock).
pub fn keep_leading(renewed: Instant, now: Instant, deadline: Duration) -> bool {
    now.saturating_duration_since(renewed) < deadline
}

/// As a leader: the other replica the observed Lease names as holder, if any (then this one
/// was taken over and must stop at once).
pub fn taken_over<'a>(observed: Option<&'a Observed>, me: &str) -> Option<&'a str> {
    let holder = observed?.record.holder.as_str();
    (!holder.is_empty() && holder != me).then_some(holder)
}

/// Whether a failed create or replace means another replica wrote the Lease first (409:
/// Conflict on a stale resourceVersion, AlreadyExists on create), not an error.
pub fn lost_the_round(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// How often the Lease is read and renewed: a third of its duration.
pub fn retry_period(duration: Duration) -> Duration {
    duration / 3
}

/// How long a leader goes on without a successful renewal: the duration less one retry
/// period, so it stops before any standby can take over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration.saturating_sub(retry_period(duration))
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)
}

/// What one round against the API server came to.
enum Round {
    /// This replica holds the Lease (created, renewed or acquired it).
    Holding,
    /// Another replica holds it.
    Held(String),
    /// Reading or writing failed (logged), or another replica won the round.
    Failed,
}

impl Election {
    /// The lease duration, at least one second.
    fn lasts(&self) -> Duration {
        self.duration.max(Duration::from_secs(1))
    }

    /// Reads the Lease every [`retry_period`] until this replica holds it; `None` if
    /// `shutdown` completes first.
    pub async fn acquire(self, shutdown: impl Future<Output = ()>) -> Option<Leadership> {
        let every = retry_period(self.lasts());
        let mut shutdown = std::pin::pin!(shutdown);
        let mut seen = None;
        loop {
            let started = Instant::now();
            let round = tokio::select! {
                () = &mut shutdown => return None,
                round = self.round(&mut seen, false) => round,
            };
            if matches!(round, Round::Holding) {
                return Some(Leadership {
                    election: self,
                    seen,
                    renewed: started,
                });
            }
            tokio::select! {
                () = &mut shutdown => return None,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Reads the Lease, decides, and writes it if this replica should hold it. `seen` is
    /// what was observed before and is updated; `leading`: this replica led until now.
    async fn round(&self, seen: &mut Option<Observed>, leading: bool) -> Round {
        let current = match self.api.get_opt(&self.name).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "reading the leader Lease failed");
                return Round::Failed;
            }
        };
        let now = Instant::now();
        let observed = current
            .as_ref()
            .map(|l| observe(seen.as_ref(), Record::of(l), now));
        *seen = observed;
        if leading && let Some(holder) = taken_over(seen.as_ref(), &self.identity) {
            return Round::Held(holder.to_string());
        }
        let action = decide(seen.as_ref(), &self.identity, now, self.lasts());
        let spec = |current: Option<&LeaseSpec>| {
            next_spec(current, &self.identity, self.lasts(), Timestamp::now())
        };
        let written = match (action, current) {
            (Action::Wait, _) => {
                let holder = seen.as_ref().map(|o| o.record.holder.clone());
                return Round::Held(holder.unwrap_or_default());
            }
            (Action::Create, _) | (Action::Renew | Action::Acquire, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec(None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (Action::Renew | Action::Acquire, Some(mut lease)) => {
                lease.spec = Some(spec(lease.spec.as_ref()));
                // Conditioned on the resourceVersion read above: a concurrent writer gets 409.
                let params = PostParams::default();
                self.api.replace(&self.name, &params, &lease).await
            }
        };
        match written {
            Ok(lease) => {
                *seen = Some(observe(seen.as_ref(), Record::of(&lease), Instant::now()));
                Round::Holding
            }
            Err(e) if lost_the_round(&e) => {
                tracing::debug!(error = %e, ?action, "another replica wrote the leader Lease first");
                Round::Failed
            }
            Err(e) => {
                tracing::warn!(error = %e, ?action, lease = %self.name, "writing the leader Lease failed");
                Round::Failed
            }
        }
    }
}

/// This replica leads: it holds the Lease and renews it with [`Leadership::keep`].
#[derive(Debug)]
pub struct Leadership {
    election: Election,
    seen: Option<Observed>,
    /// When the last successful renewal began.
    renewed: Instant,
}

impl Leadership {
    /// Renews the Lease every [`retry_period`] for as long as this replica leads, and returns
    /// why it stopped: another replica holds the Lease, or no renewal succeeded within the
    /// [`renew_deadline`] (a renewal still under way then is abandoned).
    pub async fn keep(mut self) -> Lost {
        let lasts = self.election.lasts();
        let (every, deadline) = (retry_period(lasts), renew_deadline(lasts));
        loop {
            // Never past the deadline: a leader stops leading the moment it passes.
            let left = deadline.saturating_sub(self.renewed.elapsed());
            tokio::time::sleep(every.min(left)).await;
            let started = Instant::now();
            let left = deadline.saturating_sub(started.saturating_duration_since(self.renewed));
            let round = self.election.round(&mut self.seen, true);
            let outcome = tokio::time::timeout(left, round).await;
            match outcome {
                Ok(Round::Holding) => self.renewed = started,
                Ok(Round::Held(holder)) => return Lost::Taken { holder },
                Ok(Round::Failed) | Err(_) => {}
            }
            if !keep_leading(self.renewed, Instant::now(), deadline) {
                return Lost::Unrenewed(deadline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: &str, renew_time: Option<String>, version: &str) -> Record {
        Record {
            holder: holder.to_string(),
            renew_time,
            transitions: 3,
            duration_seconds: Some(15),
            resource_version: Some(version.to_string()),
        }
    }

    /// This machine's wall clock shifted by `secs`: another node's skewed renewTime.
    fn skewed(secs: i64) -> Option<String> {
        Timestamp::from_second(Timestamp::now().as_second() + secs)
            .ok()
            .map(|t| t.to_string())
    }

    fn seen_at(record: Record, since: Instant) -> Observed {
        observe(None, record, since)
    }

    #[test]
    fn a_holders_renew_time_minutes_ahead_or_behind_does_not_matter() {
        let t0 = Instant::now();
        for shift in [-600, -120, 0, 120, 600] {
            let o = seen_at(record("other", skewed(shift), "7"), t0);
            // Just seen: the holder is alive, however far its clock is from ours.
            assert_eq!(
                decide(Some(&o), "me", t0 + Duration::from_secs(1), LEASE),
                Action::Wait,
                "skew {shift}s"
            );
            // Unchanged for a whole duration on our clock: expired, however far ahead it is.
            assert_eq!(
                decide(Some(&o), "me", t0 + LEASE, LEASE),
                Action::Acquire,
                "skew {shift}s"
            );
        }
    }

    #[test]
    fn a_record_that_stopped_changing_for_the_duration_is_taken_over() {
        let t0 = Instant::now();
        let r = record("other", skewed(0), "7");
        let first = observe(None, r.clone(), t0);
        let again = observe(Some(&first), r, t0 + Duration::from_secs(10));
        assert_eq!(
            again.since, t0,
            "an unchanged record keeps when it was first seen"
        );
        assert_eq!(
            decide(Some(&again), "me", t0 + Duration::from_secs(14), LEASE),
            Action::Wait
        );
        assert_eq!(
            decide(Some(&again), "me", t0 + Duration::from_secs(15), LEASE),
            Action::Acquire
        );
    }

    #[test]
    fn a_record_still_changing_is_waited_on() {
        let t0 = Instant::now();
        let mut o = observe(None, record("other", skewed(0), "1"), t0);
        for i in 1..10u64 {
            let now = t0 + Duration::from_secs(5 * i);
            // Each renewal changes renewTime and resourceVersion.
            o = observe(
                Some(&o),
                record("other", skewed(i as i64), &i.to_string()),
                now,
            );
            assert_eq!(o.since, now);
            assert_eq!(decide(Some(&o), "me", now, LEASE), Action::Wait);
        }
    }

    #[test]
    fn any_changed_field_counts_as_a_change() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        let base = record("other", Some("a".into()), "1");
        let first = observe(None, base.clone(), t0);
        let changes = [
            Record {
                holder: "third".into(),
                ..base.clone()
            },
            Record {
                renew_time: Some("b".into()),
                ..base.clone()
            },
            Record {
                transitions: 4,
                ..base.clone()
            },
            Record {
                resource_version: Some("2".into()),
                ..base.clone()
            },
        ];
        for changed in changes {
            assert_eq!(
                observe(Some(&first), changed.clone(), t1).since,
                t1,
                "{changed:?}"
            );
        }
    }

    #[test]
    fn our_own_lease_is_renewed_however_old() {
        let t0 = Instant::now();
        let o = seen_at(record("me", skewed(-3600), "7"), t0);
        assert_eq!(decide(Some(&o), "me", t0, LEASE), Action::Renew);
        assert_eq!(
            decide(Some(&o), "me", t0 + Duration::from_secs(3600), LEASE),
            Action::Renew
        );
    }

    #[test]
    fn an_empty_holder_is_acquired_at_once_and_a_missing_lease_created() {
        let t0 = Instant::now();
        let o = seen_at(record("", None, "7"), t0);
        assert_eq!(decide(Some(&o), "me", t0, LEASE), Action::Acquire);
        assert_eq!(decide(None, "me", t0, LEASE), Action::Create);
    }

    #[test]
    fn the_holders_longer_declared_duration_is_honoured() {
        let t0 = Instant::now();
        let r = Record {
            duration_seconds: Some(60),
            ..record("other", skewed(0), "7")
        };
        let o = seen_at(r, t0);
        assert_eq!(
            decide(Some(&o), "me", t0 + Duration::from_secs(30), LEASE),
            Action::Wait
        );
        assert_eq!(
            decide(Some(&o), "me", t0 + Duration::from_secs(60), LEASE),
            Action::Acquire
        );
    }

    fn spec_of(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_transitions: Some(transitions),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_duration_seconds: Some(60),
            preferred_holder: Some("kept".into()),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_takeover_increments_lease_transitions_and_sets_acquire_time() {
        let now = Timestamp::now();
        for old in ["other", ""] {
            let spec = next_spec(Some(&spec_of(old, 3)), "me", LEASE, now);
            assert_eq!(spec.holder_identity.as_deref(), Some("me"));
            assert_eq!(spec.lease_transitions, Some(4), "from {old:?}");
            assert_eq!(spec.acquire_time, Some(MicroTime(now)));
            assert_eq!(spec.renew_time, Some(MicroTime(now)));
            assert_eq!(spec.lease_duration_seconds, Some(15));
            assert_eq!(spec.preferred_holder.as_deref(), Some("kept"));
        }
    }

    #[test]
    fn a_renewal_keeps_transitions_and_acquire_time() {
        let now = Timestamp::now();
        let spec = next_spec(Some(&spec_of("me", 3)), "me", LEASE, now);
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_new_lease_starts_at_zero_transitions() {
        let now = Timestamp::now();
        let spec = next_spec(None, "me", Duration::ZERO, now);
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(1), "at least a second");
    }

    #[test]
    fn a_record_is_read_from_a_lease() {
        let mut lease = Lease {
            spec: Some(spec_of("other", 3)),
            ..Lease::default()
        };
        lease.metadata.resource_version = Some("42".into());
        let r = Record::of(&lease);
        assert_eq!(r.holder, "other");
        assert_eq!(r.transitions, 3);
        assert_eq!(r.duration_seconds, Some(60));
        assert_eq!(r.resource_version.as_deref(), Some("42"));
        assert_eq!(r.renew_time, Some(Timestamp::UNIX_EPOCH.to_string()));
        assert_eq!(Record::of(&Lease::default()), Record::default());
    }

    #[test]
    fn a_leader_stops_at_the_renew_deadline() {
        assert_eq!(retry_period(LEASE), Duration::from_secs(5));
        assert_eq!(renew_deadline(LEASE), Duration::from_secs(10));
        let t0 = Instant::now();
        let deadline = renew_deadline(LEASE);
        assert!(keep_leading(t0, t0 + Duration::from_secs(9), deadline));
        assert!(!keep_leading(t0, t0 + Duration::from_secs(10), deadline));
        // A clock read before `renewed` (never on a monotonic clock) still leads.
        assert!(keep_leading(t0 + Duration::from_secs(1), t0, deadline));
    }

    #[test]
    fn a_leader_sees_when_another_holds_the_lease() {
        let t0 = Instant::now();
        let other = seen_at(record("other", None, "7"), t0);
        let mine = seen_at(record("me", None, "7"), t0);
        let nobody = seen_at(record("", None, "7"), t0);
        assert_eq!(taken_over(Some(&other), "me"), Some("other"));
        assert_eq!(taken_over(Some(&mine), "me"), None);
        assert_eq!(taken_over(Some(&nobody), "me"), None);
        assert_eq!(taken_over(None, "me"), None);
    }

    #[test]
    fn only_409_means_another_replica_won_the_round() {
        use kube::core::Status;
        let conflict =
            kube::Error::Api(Status::failure("stale", "Conflict").with_code(409).boxed());
        let exists = kube::Error::Api(
            Status::failure("exists", "AlreadyExists")
                .with_code(409)
                .boxed(),
        );
        let forbidden = kube::Error::Api(Status::failure("no", "Forbidden").with_code(403).boxed());
        assert!(lost_the_round(&conflict));
        assert!(lost_the_round(&exists));
        assert!(!lost_the_round(&forbidden));
    }
}
