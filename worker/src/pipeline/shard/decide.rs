//! The shard task's decisions about one delivery, pure over plain data: how a batch is split
//! into calls, which positions a call keeps, what an app's answer means (a partial batch
//! failure), what a failure is reported as. The shard task does the I/O and asks these.

use kinesis_processor::tonic::Code;
use kinesis_processor::v1;
use tokio::time::Instant;

use super::super::policy::Segment;
use super::super::position::Position;
use super::super::progress::Wanted;
use super::position_of;
use crate::lease::checkpoint::{Checkpoint, SequenceNumber};
use crate::records::aggregation::UserRecord;

/// What the app asked to checkpoint in an answer.
/// Did the app ask for its checkpoint to be written at once (`write_now`, with a target)?
pub(super) fn write_now_of(c: &Option<v1::Checkpoint>) -> bool {
    c.as_ref()
        .is_some_and(|c| c.write_now && c.target.is_some())
}

pub(super) fn wanted_of(c: Option<v1::Checkpoint>) -> Wanted {
    match c.and_then(|c| c.target) {
        None => Wanted::Nothing,
        Some(v1::checkpoint::Target::AllDelivered(_)) => Wanted::AllDelivered,
        Some(v1::checkpoint::Target::UpTo(p)) => {
            Wanted::UpTo(p.sequence_number, p.sub_sequence_number)
        }
    }
}

/// Where a processor starts, as `Initialize` tells the app.
pub(super) fn starting_position(c: &Checkpoint) -> v1::StartingPosition {
    use v1::starting_position::Position as P;
    let position = match c {
        Checkpoint::Sequence {
            sequence,
            sub_sequence,
        } => P::After(v1::RecordPosition {
            sequence_number: sequence.as_str().to_string(),
            sub_sequence_number: *sub_sequence,
        }),
        other => P::Initial(other.to_kcl().0.to_string()),
    };
    v1::StartingPosition {
        position: Some(position),
    }
}

/// Splits a batch into calls of at most `max_bytes` of record data (at least one record
/// each) and at most `max_records` records, keeping the order.
pub(super) fn chunks(
    mut records: Vec<UserRecord>,
    max_bytes: usize,
    max_records: Option<usize>,
) -> Vec<Vec<UserRecord>> {
    let max_records = max_records.unwrap_or(usize::MAX).max(1);
    // Where each chunk starts; then split from the back, so that a page that fits in one
    // call (the usual case) is not moved at all.
    let mut starts = Vec::new();
    let (mut bytes, mut count) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = r.data.len() + r.partition_key.len() + 64;
        if i > 0 && (bytes + size > max_bytes || count == max_records) {
            starts.push(i);
            (bytes, count) = (0, 0);
        }
        bytes += size;
        count += 1;
    }
    let mut out = Vec::with_capacity(starts.len() + 1);
    for &start in starts.iter().rev() {
        out.push(records.split_off(start));
    }
    if !records.is_empty() {
        out.push(records);
    }
    out.reverse();
    out
}

/// The positions of one call's records, as far as they are needed: every record's when a
/// policy may need part of the call again (bisect, partial failure) or its contents
/// (destination, record age); otherwise only the last record's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Positions {
    all: Vec<Position>,
    keep: bool,
}

impl Positions {
    /// The positions of `records` (every one with `keep`, else the last); `None` (logged)
    /// for a malformed sequence number.
    pub(super) fn of(shard: &str, records: &[UserRecord], keep: bool) -> Option<Self> {
        let from = if keep {
            0
        } else {
            records.len().saturating_sub(1)
        };
        let mut all = Vec::with_capacity(records.len() - from);
        for r in &records[from..] {
            all.push(position_of(shard, r)?);
        }
        Some(Self { all, keep })
    }

    /// The position of the record at `i` (an index into the call).
    pub(super) fn at(&self, i: usize) -> Option<Position> {
        if self.keep {
            self.all.get(i).cloned()
        } else {
            self.all.last().cloned()
        }
    }

    /// Every record's position, when kept (else only the last).
    pub(super) fn all(&self) -> &[Position] {
        &self.all
    }
}

/// What the app's `failed_from` (a partial batch failure) means for a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FailedFrom {
    /// The app acknowledged the first `n` records of the segment and failed the rest.
    At {
        /// Records acknowledged.
        n: usize,
        /// The record named (`sequence/sub-sequence`).
        named: String,
    },
    /// Partial failures are off: the whole call counts as failed.
    Off {
        /// The record named.
        named: String,
    },
    /// `failed_from` names no record of the segment: the whole call counts as failed.
    NotInBatch {
        /// The record named.
        named: String,
    },
}

impl FailedFrom {
    /// Reads `failed` against the records `seg` of a call (`positions`: all of the call's);
    /// `enabled`: partial failures are honoured.
    pub(super) fn read(
        failed: &v1::RecordPosition,
        positions: &[Position],
        seg: Segment,
        enabled: bool,
    ) -> Self {
        let named = format!("{}/{}", failed.sequence_number, failed.sub_sequence_number);
        if !enabled {
            return Self::Off { named };
        }
        let found = SequenceNumber::parse(&failed.sequence_number)
            .ok()
            .map(|sequence| Position {
                sequence,
                sub_sequence: failed.sub_sequence_number,
            })
            .and_then(|p| {
                positions
                    .get(seg.start..seg.end)
                    .and_then(|s| s.iter().position(|x| *x == p))
            });
        match found {
            Some(n) => Self::At { n, named },
            None => Self::NotInBatch { named },
        }
    }

    /// How many records of the segment the app acknowledged (zero: the whole call failed),
    /// and the error to report for the rest.
    pub(super) fn acked(&self) -> (usize, String) {
        match self {
            Self::At { n, named } => (*n, format!("the app failed the batch from record {named}")),
            Self::Off { named } => (0, format!("failed from {named} (partial failures off)")),
            Self::NotInBatch { named } => (0, format!("failed_from {named} is not in the batch")),
        }
    }
}

/// When a shard's lanes are told to stop during a hand-over: half the time left before its
/// deadline (so the lanes' calls in flight end, and the final checkpoint lands, before it).
pub(super) fn halfway(now: Instant, deadline: Instant) -> Instant {
    now + deadline.saturating_duration_since(now) / 2
}

/// The error told to the on-failure destination for records that failed `max_attempts`
/// calls: the last call's error, with its gRPC code when it failed as a whole.
pub(super) fn failure_text(error: String, code: Option<Code>) -> String {
    match code {
        Some(code) => format!("{code:?}: {error}"),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, bytes: usize) -> UserRecord {
        UserRecord {
            data: vec![0; bytes].into(),
            partition_key: "k".into(),
            explicit_hash_key: None,
            sequence_number: seq.to_string().into(),
            sub_sequence_number: 0,
            approximate_arrival_ms: None,
            aggregated: false,
        }
    }

    #[test]
    fn chunks_keep_order_and_the_byte_bound() {
        let records: Vec<_> = (0..100).map(|i| rec(i, 1000)).collect();
        let out = chunks(records, 10_000, None);
        assert!(out.len() > 1);
        let flat: Vec<String> = out
            .iter()
            .flatten()
            .map(|r| r.sequence_number.to_string())
            .collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(flat, want);
        for c in &out {
            let size: usize = c.iter().map(|r| r.data.len() + 65).sum();
            assert!(size <= 10_000, "{size}");
        }
        // A record larger than the bound travels alone.
        let out = chunks(vec![rec(1, 50_000), rec(2, 10)], 10_000, None);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
        assert!(chunks(Vec::new(), 10, None).is_empty());
        // A record limit (batch size) as well.
        let records: Vec<_> = (0..25).map(|i| rec(i, 10)).collect();
        let out = chunks(records, 10_000, Some(10));
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
    }

    fn at(seq: u64) -> Position {
        Position {
            sequence: SequenceNumber::parse(&seq.to_string())
                .unwrap_or_else(|_| unreachable!("a valid sequence number")),
            sub_sequence: 0,
        }
    }

    fn failed(seq: &str, sub: u64) -> v1::RecordPosition {
        v1::RecordPosition {
            sequence_number: seq.into(),
            sub_sequence_number: sub,
        }
    }

    #[test]
    fn positions_keep_every_record_only_when_asked() {
        let records: Vec<_> = (10..15).map(|i| rec(i, 1)).collect();
        let all = Positions::of("s", &records, true);
        assert_eq!(all.as_ref().map(|p| p.all().len()), Some(5));
        assert_eq!(all.as_ref().and_then(|p| p.at(1)), Some(at(11)));
        let last = Positions::of("s", &records, false);
        assert_eq!(last.as_ref().map(|p| p.all().len()), Some(1));
        // Without every position, any index answers the last record's.
        assert_eq!(last.as_ref().and_then(|p| p.at(1)), Some(at(14)));
        assert_eq!(last.as_ref().and_then(|p| p.at(4)), Some(at(14)));
        let mut bad = records.clone();
        bad[2].sequence_number = "x".into();
        assert_eq!(Positions::of("s", &bad, true), None);
        // Only the last record's position is read without `keep`.
        assert!(Positions::of("s", &bad, false).is_some());
        assert_eq!(
            Positions::of("s", &[], true).map(|p| p.all().len()),
            Some(0)
        );
    }

    #[test]
    fn a_partial_failure_acknowledges_the_records_before_it() {
        let positions: Vec<_> = (0..10).map(at).collect();
        let seg = Segment {
            start: 4,
            end: 10,
            failures: 1,
            own_failures: 1,
        };
        let read = FailedFrom::read(&failed("7", 0), &positions, seg, true);
        assert_eq!(
            read.acked(),
            (3, "the app failed the batch from record 7/0".into())
        );
        // The segment's first record: nothing acknowledged.
        assert_eq!(
            FailedFrom::read(&failed("4", 0), &positions, seg, true)
                .acked()
                .0,
            0
        );
        // Before the segment, beyond it, another sub-record, or not a number: not in it.
        for (s, sub) in [("2", 0), ("11", 0), ("7", 1), ("x", 0)] {
            let read = FailedFrom::read(&failed(s, sub), &positions, seg, true);
            assert!(matches!(read, FailedFrom::NotInBatch { .. }), "{read:?}");
            assert_eq!(
                read.acked(),
                (0, format!("failed_from {s}/{sub} is not in the batch"))
            );
        }
        // Partial failures off: the whole call failed.
        let off = FailedFrom::read(&failed("7", 0), &positions, seg, false);
        assert_eq!(
            off.acked(),
            (0, "failed from 7/0 (partial failures off)".into())
        );
    }

    #[test]
    fn lanes_stop_halfway_to_the_deadline() {
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(10);
        assert_eq!(
            halfway(now, deadline),
            now + std::time::Duration::from_secs(5)
        );
        // A deadline already passed: at once.
        assert_eq!(halfway(deadline, now), deadline);
    }

    #[test]
    fn the_destination_is_told_the_code_of_a_failed_call() {
        assert_eq!(
            failure_text("boom".into(), Some(Code::Unavailable)),
            "Unavailable: boom"
        );
        assert_eq!(
            failure_text("failed from 7/0".into(), None),
            "failed from 7/0"
        );
    }

    #[test]
    fn answers_name_the_checkpoint_asked_for() {
        assert_eq!(wanted_of(None), Wanted::Nothing);
        assert_eq!(
            wanted_of(Some(v1::Checkpoint {
                target: None,
                write_now: true
            })),
            Wanted::Nothing
        );
        let up_to = v1::Checkpoint {
            target: Some(v1::checkpoint::Target::UpTo(failed("12", 3))),
            write_now: false,
        };
        assert!(!write_now_of(&Some(up_to.clone())));
        assert!(write_now_of(&Some(up_to.clone().written_now())));
        assert!(
            !write_now_of(&Some(v1::Checkpoint {
                target: None,
                write_now: true
            })),
            "nothing to write"
        );
        assert!(!write_now_of(&None));
        assert_eq!(wanted_of(Some(up_to)), Wanted::UpTo("12".into(), 3));
    }
}
