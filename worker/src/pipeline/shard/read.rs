//! A shard's reading task: reads ahead of delivery, within the worker's read-ahead budget
//! and Kinesis's read limits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::super::PipelineConfig;
use super::super::pace::{ReadPace, TipPolling};
use super::ledger::Ledger;
use crate::backoff::Backoff;
use crate::metrics::{Metrics, ShardLabels};
use crate::records::ShardSource;
use crate::records::aggregation::UserRecord;
use crate::records::reader::Batch;

/// Read ahead of delivery; its share of the worker's prefetch budget is in the shard's
/// [`Ledger`] under `ticket`.
pub(super) enum Item {
    Records {
        records: Vec<UserRecord>,
        millis_behind_latest: i64,
        ticket: u64,
    },
    End {
        children: Vec<String>,
    },
}

/// What a page of records costs: its share of the read-ahead budget in KiB (its data and
/// each record's own memory: a KPL aggregate of 170,000 empty records holds tens of MB and
/// no data; at most the whole budget, `max_kib`, so it can always be granted), and its bytes
/// against Kinesis's read limit (data and keys). One pass over the records.
fn page_cost(records: &[UserRecord], max_kib: u32) -> (u32, u64) {
    let (data_bytes, key_bytes) = records.iter().fold((0usize, 0usize), |(d, k), r| {
        (d + r.data.len(), k + r.partition_key.len())
    });
    let bytes = data_bytes.saturating_add(
        records
            .len()
            .saturating_mul(crate::records::reader::RECORD_OVERHEAD_BYTES),
    );
    let read = u64::try_from(data_bytes.saturating_add(key_bytes)).unwrap_or(u64::MAX);
    let kib = u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .min(max_kib);
    (kib, read)
}

/// After "not found" for `shard` (seen at `seen`): `Some(children)` if the stream exists
/// and a listing made after that answer no longer lists the shard (it expired), `None` if
/// it does, or the stream itself is gone or cannot be listed (then the read is retried,
/// nothing is given up). A cached listing from before the answer is never trusted: a child
/// created after it would be declared expired and ended with none of its records.
async fn expired(
    shards: &crate::lease::discovery::ShardCache,
    shard: &str,
    seen: std::time::Instant,
) -> Option<Vec<String>> {
    // A listing that has the shard settles it without a call (every shard of a stream
    // whose fan-out consumer was deleted answers "not found": no listing storm); only its
    // absence must be confirmed by a listing begun after the answer.
    let cached = shards.listed_after(None).await.ok()?;
    if cached.iter().any(|s| s.shard_id == shard) {
        return None;
    }
    let shards = shards.listed_after(Some(seen)).await.ok()?;
    if shards.iter().any(|s| s.shard_id == shard) {
        return None;
    }
    Some(
        shards
            .iter()
            .filter(|s| s.parents.iter().any(|p| p == shard))
            .map(|s| s.shard_id.clone())
            .collect(),
    )
}

/// Reads the shard ahead of delivery: one batch waits in the channel, the next is read
/// meanwhile; the worker-wide byte budget bounds what all shards hold.
pub(super) async fn read_ahead(
    mut reader: ShardSource,
    shards: crate::lease::discovery::ShardCache,
    tx: mpsc::Sender<Item>,
    config: Arc<PipelineConfig>,
    metrics: Arc<Metrics>,
    budget: Arc<Semaphore>,
    ledger: Arc<Ledger>,
) {
    let shard = reader.shard_id().to_string();
    let mut stalled = ledger.stalled.subscribe();
    let gauge = metrics
        .millis_behind_latest
        .get_or_create(&ShardLabels {
            shard: shard.clone(),
        })
        .clone();
    let mut errors = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut pace = CallPace::new(Instant::now());
    let mut tip = TipPolling::new(config.idle_time, config.idle_time_max);
    let mut throttles = reader.throttles();
    // The wait before the next call, once the page of the last call is all handed out.
    let mut tip_wait = Duration::ZERO;
    loop {
        // While delivery retries, read no further ahead.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let from_page = reader.has_pending();
        if !reader.pushes() && !from_page {
            let (at, paced) = pace.wait(&config.read_pace, Instant::now());
            if !paced.is_zero() {
                metrics.read_paced_seconds.inc_by(paced.as_secs_f64());
            }
            tokio::time::sleep_until(at).await;
        }
        if !from_page {
            pace.call_started(&config.read_pace, Instant::now());
        }
        match reader.next_batch().await {
            Ok(Batch::Records {
                records,
                millis_behind_latest,
            }) => {
                errors.reset();
                // Counted in `read_throttled` by the reader as they happen; here they slow
                // the shard down at the tip.
                let now_throttles = reader.throttles();
                for _ in throttles..now_throttles {
                    tip.throttled();
                }
                throttles = now_throttles;
                let (kib, read) = page_cost(&records, config.max_buffered_kib);
                pace.read(&config.read_pace, read);
                let behind = millis_behind_latest.unwrap_or(0);
                gauge.set(behind as f64 / 1000.0);
                config.lag.set(&shard, behind);
                // At the tip the next call waits, so that the shard's 5 calls a second stay
                // shared with the other applications reading it ([`TipPolling`]); a page
                // still being handed out in parts makes no call.
                if !reader.pushes() && !from_page {
                    tip_wait = tip.after_page(behind == 0, !records.is_empty());
                }
                if records.is_empty() {
                    let wait = std::mem::take(&mut tip_wait);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    continue;
                }
                let ticket = ledger.ticket();
                // The wait for budget ends when delivery stalls: a stuck shard must not
                // stand in the (fair, first-come) queue in front of the others.
                tokio::select! {
                    permit = budget.clone().acquire_many_owned(kib) => {
                        if let Ok(permit) = permit {
                            ledger.hold(ticket, permit);
                        }
                    }
                    _ = stalled.wait_for(|s| *s) => {}
                }
                let item = Item::Records {
                    records,
                    millis_behind_latest: behind,
                    ticket,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
                // Once the page is all handed out; not before the shard's end, which makes
                // no call and must not hold its children back.
                let wait = std::mem::take(&mut tip_wait);
                if !wait.is_zero() && !reader.has_pending() && !reader.ended() {
                    tokio::time::sleep(wait).await;
                }
            }
            Ok(Batch::ShardEnd { child_shard_ids }) => {
                let _ = tx
                    .send(Item::End {
                        children: child_shard_ids,
                    })
                    .await;
                return;
            }
            Err(e) => {
                let seen = std::time::Instant::now();
                if matches!(e, crate::records::reader::ReadError::NotFound { .. })
                    && let Some(children) = expired(&shards, &shard, seen).await
                {
                    // A closed shard past the stream's retention: nothing left to read. Its
                    // end, so its children start (retrying would hold them back forever).
                    tracing::warn!(shard = %shard, error = %e, children = ?children, "the shard is no longer in the stream (past its retention): treating it as ended");
                    metrics.shards_expired.inc();
                    let _ = tx.send(Item::End { children }).await;
                    return;
                }
                let delay = errors.next_delay().max(Duration::from_secs(1));
                tracing::error!(shard = %shard, error = %e, retry_in = ?delay, "reading the shard failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// When a polled shard's next GetRecords call may start: Kinesis's 5 calls and 2 MB a second
/// per shard ([`ReadPace`]); fan-out pushes at its own pace. Pure: the read loop tells it
/// when a call started and what its page read, and asks when the next may start.
#[derive(Debug, Clone, Copy)]
struct CallPace {
    /// The last call's start.
    started: Instant,
    /// When the next call may start.
    next_call: Instant,
    /// Bytes of the last call's page handed out so far (a page of KPL aggregates comes in
    /// parts: only the call is paced, by the whole page).
    page_read: u64,
}

impl CallPace {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            next_call: now,
            page_read: 0,
        }
    }

    /// When the next call may start, and how much of the wait from `now` the byte limit
    /// adds to the call limit's (the `read_paced_seconds` metric counts only that).
    fn wait(&self, pace: &ReadPace, now: Instant) -> (Instant, Duration) {
        let floor = (self.started + pace.min_interval).max(now);
        (
            self.next_call,
            self.next_call.saturating_duration_since(floor),
        )
    }

    /// A call starts at `now`.
    fn call_started(&mut self, pace: &ReadPace, now: Instant) {
        self.started = now;
        self.next_call = now + pace.min_interval;
        self.page_read = 0;
    }

    /// `bytes` more of the current call's page were handed out.
    fn read(&mut self, pace: &ReadPace, bytes: u64) {
        self.page_read = self.page_read.saturating_add(bytes);
        self.next_call = self.started + pace.gap(self.page_read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::reader::RECORD_OVERHEAD_BYTES;

    fn rec(data: usize, key: &str) -> UserRecord {
        UserRecord {
            data: vec![0; data].into(),
            partition_key: key.into(),
            explicit_hash_key: None,
            sequence_number: "1".into(),
            sub_sequence_number: 0,
            approximate_arrival_ms: None,
            aggregated: false,
        }
    }

    #[test]
    fn calls_are_paced_by_the_call_limit_and_by_the_bytes_of_their_page() {
        let pace = ReadPace {
            min_interval: Duration::from_millis(200),
            bytes_per_second: Some(2_000_000),
        };
        let t0 = Instant::now();
        let mut p = CallPace::new(t0);
        assert_eq!(
            p.wait(&pace, t0),
            (t0, Duration::ZERO),
            "the first call at once"
        );
        p.call_started(&pace, t0);
        // A small page: only the call limit.
        p.read(&pace, 1_000);
        let (at, paced) = p.wait(&pace, t0);
        assert_eq!(at, t0 + pace.gap(1_000));
        assert_eq!(paced, at.saturating_duration_since(t0 + pace.min_interval));
        // A page of 4 MB handed out in two parts: 2 s, of which the byte limit adds 1.8 s.
        p.call_started(&pace, t0);
        p.read(&pace, 2_000_000);
        p.read(&pace, 2_000_000);
        let (at, paced) = p.wait(&pace, t0);
        assert_eq!(at, t0 + Duration::from_secs(2));
        assert_eq!(paced, Duration::from_millis(1_800));
        // Asked late: only what is left counts.
        let (_, paced) = p.wait(&pace, t0 + Duration::from_millis(1_500));
        assert_eq!(paced, Duration::from_millis(500));
        // A new call forgets the last page.
        p.call_started(&pace, t0 + Duration::from_secs(2));
        assert_eq!(p.page_read, 0);
    }

    #[test]
    fn a_page_costs_its_data_and_its_records_memory() {
        let page = vec![rec(1000, "key"), rec(24, "k")];
        let memory = 1024 + 2 * RECORD_OVERHEAD_BYTES;
        let kib = u32::try_from(memory.div_ceil(1024)).unwrap_or(u32::MAX);
        assert_eq!(page_cost(&page, 1 << 20), (kib, 1024 + 4));
        // Empty records still cost their memory, not their (absent) data.
        let empty = vec![rec(0, ""); 10_000];
        let (kib, read) = page_cost(&empty, 1 << 20);
        assert!(
            kib as usize >= 10_000 * RECORD_OVERHEAD_BYTES / 1024,
            "{kib}"
        );
        assert_eq!(read, 0);
        // Never more than the whole budget.
        assert_eq!(page_cost(&empty, 3).0, 3);
        assert_eq!(page_cost(&[], 3), (0, 0));
    }
}
