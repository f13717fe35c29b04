//! Following hand-over requests (pure): when a request is over, and when its requester may
//! take the lease without the owner's hand-over. Peer mode's requesters, the assigner and the
//! lease simulation all decide with these functions.
//!
//! The rule: a request times out only after the owner **granted** it (`koHandoffGranted`),
//! and the timeout runs from when the requester first *saw* the grant. The owner starts its
//! own deadline before it writes the grant, and its deadline is shorter than the timeout, so
//! the owner's record processor has stopped (finished, or revoked) before any take by
//! timeout, however late the owner saw the request. A request that is never granted is
//! never taken by timeout: a live owner answers it (grant or decline), a dead one loses the
//! lease by failover.

use std::collections::HashMap;

use super::model::Lease;

/// An outstanding hand-over request, as its requester follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<T> {
    /// For whom (peer mode: the requester itself).
    pub to: String,
    /// The lease counter it was asked at.
    pub counter: u64,
    /// When the requester first saw the owner's grant, on its own clock.
    pub granted_seen: Option<T>,
}

impl<T> Request<T> {
    /// A request just written (not granted yet).
    pub fn new(to: impl Into<String>, counter: u64) -> Self {
        Self {
            to: to.into(),
            counter,
            granted_seen: None,
        }
    }
}

/// Adopts the requests found in the table that `pending` does not know (an earlier
/// assigner's), as seen at `now`: a granted one's timeout runs from now.
pub fn adopt<T: Copy>(pending: &mut HashMap<String, Request<T>>, leases: &[Lease], now: T) {
    for l in leases {
        if let Some(to) = &l.handoff_to {
            pending
                .entry(l.shard_id.clone())
                .or_insert_with(|| Request {
                    to: to.clone(),
                    counter: l.counter,
                    granted_seen: l.handoff_granted.then_some(now),
                });
        }
    }
}

/// Follows every request in `pending` against the leases as last read, at `now`:
/// forgets the ones that are over (answered by a hand-over, declined, superseded, the lease
/// gone), notes grants seen for the first time, and removes and returns the leases whose
/// owner granted the request and has not handed over within the timeout (`timed_out(seen)`:
/// has the timeout run out since the grant was seen at `seen`?), with their requester.
pub fn follow_up<T: Copy>(
    pending: &mut HashMap<String, Request<T>>,
    by_shard: &HashMap<&str, &Lease>,
    now: T,
    timed_out: impl Fn(T) -> bool,
) -> Vec<(Lease, String)> {
    let mut take = Vec::new();
    pending.retain(|shard, req| {
        let Some(lease) = by_shard.get(shard.as_str()) else {
            return false;
        };
        if lease.counter != req.counter || lease.handoff_to.as_deref() != Some(req.to.as_str()) {
            return false;
        }
        if !lease.handoff_granted {
            return true;
        }
        let seen = *req.granted_seen.get_or_insert(now);
        if timed_out(seen) {
            take.push(((*lease).clone(), req.to.clone()));
            return false;
        }
        true
    });
    take.sort_by(|a, b| a.0.shard_id.cmp(&b.0.shard_id));
    take
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    fn lease(shard: &str, counter: u64, to: Option<&str>, granted: bool) -> Lease {
        let mut l = Lease::new(shard, Checkpoint::TrimHorizon, Vec::new());
        l.owner = Some("owner".into());
        l.counter = counter;
        l.handoff_to = to.map(String::from);
        l.handoff_granted = granted;
        l
    }

    fn run(pending: &mut HashMap<String, Request<u32>>, leases: &[Lease], now: u32) -> Vec<String> {
        let by_shard: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        follow_up(pending, &by_shard, now, |seen| now - seen > 4)
            .into_iter()
            .map(|(l, to)| format!("{}→{to}", l.shard_id))
            .collect()
    }

    #[test]
    fn a_request_is_never_taken_by_timeout_before_the_owner_grants_it() {
        let mut pending: HashMap<String, Request<u32>> =
            [("s".to_string(), Request::new("me", 5))].into();
        let leases = [lease("s", 5, Some("me"), false)];
        // Long past any timeout since the request: still waiting, for the grant.
        assert!(run(&mut pending, &leases, 100).is_empty());
        assert_eq!(pending["s"].granted_seen, None);
    }

    #[test]
    fn the_timeout_runs_from_when_the_grant_was_first_seen() {
        let mut pending: HashMap<String, Request<u32>> =
            [("s".to_string(), Request::new("me", 5))].into();
        let leases = [lease("s", 5, Some("me"), true)];
        assert!(run(&mut pending, &leases, 100).is_empty());
        assert_eq!(pending["s"].granted_seen, Some(100));
        assert!(run(&mut pending, &leases, 104).is_empty());
        assert_eq!(run(&mut pending, &leases, 105), vec!["s→me"]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_request_is_over_when_handed_over_declined_superseded_or_gone() {
        let mut pending: HashMap<String, Request<u32>> = [
            ("handed", Request::new("me", 5)),
            ("declined", Request::new("me", 5)),
            ("other", Request::new("me", 5)),
            ("gone", Request::new("me", 5)),
            ("waiting", Request::new("me", 5)),
        ]
        .into_iter()
        .map(|(s, r)| (s.to_string(), r))
        .collect();
        let leases = [
            lease("handed", 6, None, false),
            lease("declined", 5, None, false),
            lease("other", 5, Some("you"), true),
            lease("waiting", 5, Some("me"), false),
        ];
        assert!(run(&mut pending, &leases, 1).is_empty());
        assert_eq!(pending.keys().collect::<Vec<_>>(), vec!["waiting"]);
    }

    #[test]
    fn adopted_requests_start_their_timeout_when_adopted() {
        let mut pending: HashMap<String, Request<u32>> = HashMap::new();
        let leases = [
            lease("granted", 5, Some("w"), true),
            lease("asked", 7, Some("w"), false),
            lease("none", 7, None, false),
        ];
        adopt(&mut pending, &leases, 10);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending["granted"].granted_seen, Some(10));
        assert_eq!(pending["asked"].granted_seen, None);
        assert!(run(&mut pending, &leases, 14).is_empty());
        assert_eq!(run(&mut pending, &leases, 15), vec!["granted→w"]);
    }
}
