//! Kinesis's clock, as the `Date` headers of its answers tell it.
//!
//! A `LATEST` lease is pinned to a time (`AT_TIMESTAMP`), and records are aged by their
//! arrival timestamps: both compare a time with Kinesis's clock, so both must use Kinesis's
//! time, not this worker's. A worker whose clock runs ahead of Kinesis's by more than the
//! pin's margin would otherwise pin in the future and skip what was put meanwhile.
//!
//! # Guarantees
//! Once Kinesis has answered one call of the client this interceptor is on,
//! [`KinesisClock::now_ms`] is not ahead of Kinesis's clock, except by this machine's
//! monotonic drift since the last answer (a `Date` header is truncated to the second and read
//! after the answer travelled, so each reading is a lower bound; the clock keeps the greatest
//! of the last minute's), and behind it by at most about a second plus the answer's travel
//! time. It advances with the monotonic clock between answers, so a jump of the wall clock
//! changes nothing. Before any answer it is the wall clock.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};

/// Kinesis's time, from its answers' `Date` headers (see the module's guarantees).
#[derive(Debug, Clone, Default)]
pub struct KinesisClock {
    /// The best lower bound of Kinesis's time: (its value in ms, when it was true).
    reading: Arc<Mutex<Option<(i64, Instant)>>>,
    /// Added to the wall clock (a test of a skewed worker clock; 0 otherwise).
    wall_offset_ms: i64,
}

/// A reading older than this is replaced by the next one even if it extrapolates later: this
/// machine's monotonic clock may run fast (a node without NTP), and an old reading carried
/// forward would drift ahead of Kinesis (50 ppm is 4 s a day). Within this age the drift is
/// at most a few ms.
const READING_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The better of two lower bounds of the same clock, each (ms, when it held), at `now`:
/// the later, unless the kept one `a` is older than [`READING_MAX_AGE`].
fn later(a: Option<(i64, Instant)>, b: (i64, Instant), now: Instant) -> (i64, Instant) {
    let at_now = |(ms, at): (i64, Instant)| ms.saturating_add(elapsed_ms(at, now));
    match a {
        Some(a)
            if now.saturating_duration_since(a.1) < READING_MAX_AGE && at_now(a) >= at_now(b) =>
        {
            a
        }
        _ => b,
    }
}

fn elapsed_ms(at: Instant, now: Instant) -> i64 {
    i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch of an HTTP `Date` header; `None` if it is not one.
fn parse_date(value: &str) -> Option<i64> {
    DateTime::from_str(value.trim(), Format::HttpDate)
        .ok()
        .and_then(|d| d.to_millis().ok())
}

impl KinesisClock {
    /// A clock whose wall-clock fallback is shifted by `wall_offset_ms` (tests of a worker
    /// clock that runs ahead or behind; Kinesis's answers correct it).
    pub fn with_wall_offset(wall_offset_ms: i64) -> Self {
        Self {
            reading: Arc::default(),
            wall_offset_ms,
        }
    }

    /// Kinesis's time now, in ms since the epoch (the wall clock until Kinesis answered).
    pub fn now_ms(&self) -> i64 {
        let now = Instant::now();
        match self.reading.lock().ok().and_then(|r| *r) {
            Some((ms, at)) => ms.saturating_add(elapsed_ms(at, now)),
            None => self.wall_ms(),
        }
    }

    /// Has Kinesis answered yet?
    pub fn is_known(&self) -> bool {
        self.reading.lock().ok().is_some_and(|r| r.is_some())
    }

    fn wall_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
            .saturating_add(self.wall_offset_ms)
    }

    /// Takes a `Date` header received now.
    pub fn observe(&self, date: &str) {
        let Some(ms) = parse_date(date) else {
            return;
        };
        let now = Instant::now();
        if let Ok(mut r) = self.reading.lock() {
            *r = Some(later(*r, (ms, now), now));
        }
    }
}

impl Intercept for KinesisClock {
    fn name(&self) -> &'static str {
        "kinesis-worker-clock"
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            self.observe(date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_http_date_is_read_and_anything_else_ignored() {
        assert_eq!(
            parse_date("Sun, 06 Dec 2026 04:30:00 GMT"),
            Some(1_796_531_400_000)
        );
        assert_eq!(parse_date("yesterday"), None);
        let c = KinesisClock::default();
        c.observe("not a date");
        assert!(!c.is_known());
    }

    #[test]
    fn the_clock_keeps_the_greatest_lower_bound_and_follows_kinesis_not_the_wall() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        // Read 1_000_000 at t0; at t1 a reading of 1_001_000 is worse (the first says
        // 1_002_000 by then), one of 1_003_000 better.
        assert_eq!(
            later(Some((1_000_000, t0)), (1_001_000, t1), t1),
            (1_000_000, t0)
        );
        assert_eq!(
            later(Some((1_000_000, t0)), (1_003_000, t1), t1),
            (1_003_000, t1)
        );
        assert_eq!(later(None, (5, t1), t1), (5, t1));
        // A reading past its age gives way to the next, even to a lower one.
        let t2 = t0 + READING_MAX_AGE + Duration::from_secs(1);
        assert_eq!(
            later(Some((1_000_000, t0)), (1_000_000, t2), t2),
            (1_000_000, t2)
        );
        // A worker clock an hour ahead: once Kinesis answered, its time is Kinesis's.
        let c = KinesisClock::with_wall_offset(3_600_000);
        let wall = KinesisClock::default().now_ms();
        assert!(c.now_ms() >= wall + 3_600_000);
        c.observe("Sun, 06 Dec 2026 04:30:00 GMT");
        assert!(c.is_known());
        let now = c.now_ms();
        assert!(
            (1_796_531_400_000..1_796_531_460_000).contains(&now),
            "{now}"
        );
    }
}
