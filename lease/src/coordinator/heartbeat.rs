//! The heartbeat: this worker's own view of its liveness ([`SelfLiveness`], shared with
//! every [`ShardLease`]) and the task that writes the heartbeat item ([`Beater`]), which
//! depends on no other call of the coordinator.

use super::*;

/// When this worker last confirmed it is alive (the send time of its last successful
/// heartbeat), shared by the coordinator and every [`ShardLease`].
#[derive(Debug)]
pub(super) struct SelfLiveness {
    pub(super) confirmed_at: Mutex<Instant>,
    /// `failover_time` minus a margin: past it, this worker must stop.
    pub(super) valid_for: Duration,
    /// Goes up at every lapse (a heartbeat confirmed after the previous one's validity had
    /// run out): a lease acquired in an earlier epoch is invalid for good, even though the
    /// worker is alive again. Others may have declared it dead in that moment.
    pub(super) epoch: AtomicU64,
}

impl SelfLiveness {
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A heartbeat sent at `sent_at` landed. If it lands after the last one's validity ran
    /// out, the epoch ends first: a heartbeat that lands late makes the worker alive again,
    /// never the leases it held while it was not.
    pub(super) fn confirm(&self, sent_at: Instant) {
        if let Ok(mut at) = self.confirmed_at.lock() {
            if Instant::now().saturating_duration_since(*at) >= self.valid_for {
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            if sent_at > *at {
                *at = sent_at;
            }
        }
    }

    /// Until when this worker may consider itself alive (from its last confirmed heartbeat).
    pub(super) fn alive_until(&self) -> Option<Instant> {
        self.confirmed_at
            .lock()
            .ok()
            .and_then(|at| at.checked_add(self.valid_for))
    }

    pub(super) fn is_alive(&self, now: Instant) -> bool {
        self.confirmed_at
            .lock()
            .map(|at| now.saturating_duration_since(*at) < self.valid_for)
            .unwrap_or(false)
    }
}

/// Writes the heartbeat item, on a task of its own.
pub(super) struct Beater {
    pub(super) table: LeaseTable,
    pub(super) worker_id: String,
    pub(super) interval: Duration,
    /// Retry delay after a failed heartbeat.
    pub(super) retry: Duration,
    /// Longest wait for one heartbeat write.
    pub(super) timeout: Duration,
    pub(super) counter: u64,
    pub(super) liveness: Arc<SelfLiveness>,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) lag: LagBoard,
    /// Beat now (e.g. to announce draining).
    pub(super) now: Arc<Notify>,
    /// Recorded in every heartbeat.
    pub(super) coordination: Coordination,
}

impl Beater {
    /// Writes one heartbeat; `true` if it landed in time.
    pub(super) async fn beat(&mut self) -> bool {
        let sent_at = Instant::now();
        self.counter += 1;
        let beat = Heartbeat {
            worker_id: self.worker_id.clone(),
            counter: self.counter,
            draining: self.draining.load(Ordering::SeqCst),
            lag: self.lag.snapshot(),
            coordination: Some(self.coordination.as_str().to_string()),
            stalled: self.lag.stalled(),
            failing: self.lag.failing(),
        };
        match tokio::time::timeout(self.timeout, self.table.heartbeat(&beat)).await {
            Ok(Ok(())) => {
                self.liveness.confirm(sent_at);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "heartbeat failed; retrying shortly");
                false
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "heartbeat timed out; retrying shortly");
                false
            }
        }
    }

    /// Beats until `stop` fires (or its sender is dropped). After a failed heartbeat the
    /// next try comes soon, not a whole interval later: under throttling a worker gets many
    /// tries before its own failover deadline instead of two or three.
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>, mut last_ok: bool) {
        let now = self.now.clone();
        loop {
            // The first heartbeats follow each other quickly (half a scan interval apart, for
            // more than a scan interval): a changed counter is the assigner's proof that a new
            // worker is alive (see `liveness::proven_alive`), so a joiner is proven within a
            // round.
            let wait = if !last_ok || self.counter < FAST_BEATS {
                self.retry
            } else {
                self.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = now.notified() => {}
                _ = &mut stop => return,
            }
            last_ok = self.beat().await;
        }
    }
}

/// A worker's first heartbeats come this many (minus one) half scan intervals apart, before
/// the regular interval: three extra writes per start.
pub const FAST_BEATS: u64 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(confirmed_ago: Duration, valid_for: Duration) -> SelfLiveness {
        SelfLiveness {
            confirmed_at: Mutex::new(Instant::now() - confirmed_ago),
            valid_for,
            epoch: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_heartbeat_landing_in_time_keeps_the_epoch_a_late_one_ends_it() {
        let l = liveness(Duration::from_millis(100), Duration::from_secs(5));
        l.confirm(Instant::now());
        assert_eq!(l.epoch(), 0);
        assert!(l.is_alive(Instant::now()));

        // The last confirmed heartbeat was sent 6 s ago (valid 5 s); this one was sent 1 s
        // ago and lands now: alive again, but in a new epoch.
        let l = liveness(Duration::from_secs(6), Duration::from_secs(5));
        assert!(!l.is_alive(Instant::now()));
        l.confirm(Instant::now() - Duration::from_secs(1));
        assert_eq!(l.epoch(), 1);
        assert!(l.is_alive(Instant::now()));
    }
}
