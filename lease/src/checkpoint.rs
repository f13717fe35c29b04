//! Checkpoints: where a shard's processing has got to, in KCL's representation.
//!
//! KCL stores a checkpoint as the string attribute `checkpoint` (a sequence number, or one
//! of the sentinels `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`) plus the number
//! attribute `checkpointSubSequenceNumber` (the position inside a KPL-aggregated record).

use std::cmp::Ordering;
use std::fmt;

/// A Kinesis sequence number: a decimal string of up to 128 bits, compared numerically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(String);

/// A string that is not a decimal sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Kinesis sequence number (a string of decimal digits)")]
pub struct BadSequenceNumber(pub String);

impl SequenceNumber {
    /// Parses a decimal sequence number.
    ///
    /// # Errors
    /// [`BadSequenceNumber`] when `s` is empty or holds anything but ASCII digits.
    pub fn parse(s: &str) -> Result<Self, BadSequenceNumber> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadSequenceNumber(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    /// The decimal string, as Kinesis returned it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant(&self) -> &str {
        let t = self.0.trim_start_matches('0');
        if t.is_empty() { "0" } else { t }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Nothing processed yet; start at the oldest record.
    TrimHorizon,
    /// Nothing processed yet; start at the tip.
    Latest,
    /// Nothing processed yet; start at the application's initial timestamp.
    AtTimestamp,
    /// Every record up to and including this one (and sub-record) is processed.
    Sequence {
        /// The record's sequence number.
        sequence: SequenceNumber,
        /// The sub-record inside a KPL-aggregated record (0 for a plain record).
        sub_sequence: u64,
    },
    /// The shard is closed and every record of it processed: its children may start.
    ShardEnd,
}

/// The `checkpoint` attribute holds neither a sentinel nor a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "checkpoint `{0}` is neither TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END nor a sequence number"
)]
pub struct BadCheckpoint(pub String);

impl Checkpoint {
    /// Reads KCL's two attributes.
    ///
    /// # Errors
    /// [`BadCheckpoint`] for a string that is neither a sentinel nor a sequence number.
    pub fn from_kcl(checkpoint: &str, sub_sequence: u64) -> Result<Self, BadCheckpoint> {
        Ok(match checkpoint {
            "TRIM_HORIZON" => Self::TrimHorizon,
            "LATEST" => Self::Latest,
            "AT_TIMESTAMP" => Self::AtTimestamp,
            "SHARD_END" => Self::ShardEnd,
            s => Self::Sequence {
                sequence: SequenceNumber::parse(s).map_err(|_| BadCheckpoint(s.to_string()))?,
                sub_sequence,
            },
        })
    }

    /// KCL's two attributes: (`checkpoint`, `checkpointSubSequenceNumber`).
    pub fn to_kcl(&self) -> (&str, u64) {
        match self {
            Self::TrimHorizon => ("TRIM_HORIZON", 0),
            Self::Latest => ("LATEST", 0),
            Self::AtTimestamp => ("AT_TIMESTAMP", 0),
            Self::ShardEnd => ("SHARD_END", 0),
            Self::Sequence {
                sequence,
                sub_sequence,
            } => (sequence.as_str(), *sub_sequence),
        }
    }

    /// Is a processed position recorded (rather than only where to start)?
    pub fn is_progress(&self) -> bool {
        matches!(self, Self::Sequence { .. } | Self::ShardEnd)
    }

    /// Where this lies in a shard's progress, the one order checkpoints move in: every
    /// initial position (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, all alike) before every
    /// record, records by sequence number and then sub-sequence, `SHARD_END` after all.
    fn rank(&self) -> (u8, Option<(&SequenceNumber, u64)>) {
        match self {
            Self::TrimHorizon | Self::Latest | Self::AtTimestamp => (0, None),
            Self::Sequence {
                sequence,
                sub_sequence,
            } => (1, Some((sequence, *sub_sequence))),
            Self::ShardEnd => (2, None),
        }
    }

    /// May a checkpoint move from `self` to `next`?
    ///
    /// Positions only move forward: the initial positions come before every sequence
    /// number, sequence numbers (with their sub-sequence) move up or stay, and `SHARD_END`
    /// is final. Re-stating an initial position (any of them) is harmless.
    pub fn may_advance_to(&self, next: &Checkpoint) -> bool {
        next.rank() >= self.rank()
    }

    /// Where the record (`sequence`, `sub_sequence`) lies against this checkpoint, in the
    /// order of [`Checkpoint::may_advance_to`]: `Greater` beyond it (not processed yet),
    /// `Equal` the record checkpointed, `Less` before it. Every record lies beyond an initial
    /// position and before `SHARD_END`.
    pub fn locate(&self, sequence: &SequenceNumber, sub_sequence: u64) -> Ordering {
        (1u8, Some((sequence, sub_sequence))).cmp(&self.rank())
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sequence {
                sequence,
                sub_sequence: 0,
            } => write!(f, "{sequence}"),
            Self::Sequence {
                sequence,
                sub_sequence,
            } => write!(f, "{sequence}/{sub_sequence}"),
            other => f.write_str(other.to_kcl().0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str, sub: u64) -> Checkpoint {
        Checkpoint::Sequence {
            sequence: SequenceNumber(s.into()),
            sub_sequence: sub,
        }
    }

    #[test]
    fn sequence_numbers_compare_numerically() {
        let small = SequenceNumber::parse("9").ok();
        let big = SequenceNumber::parse("10").ok();
        assert!(small < big);
        let a =
            SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898").ok();
        let b =
            SequenceNumber::parse("49590338271490256608559692540925702759324208523137515618").ok();
        assert!(a < b);
        assert_eq!(
            SequenceNumber::parse("007")
                .ok()
                .map(|s| s.cmp(&SequenceNumber("7".into()))),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn bad_sequence_numbers_are_refused() {
        assert!(SequenceNumber::parse("").is_err());
        assert!(SequenceNumber::parse("12a").is_err());
        assert!(SequenceNumber::parse("-1").is_err());
    }

    #[test]
    fn kcl_round_trip() {
        for (s, sub) in [
            ("TRIM_HORIZON", 0),
            ("LATEST", 0),
            ("AT_TIMESTAMP", 0),
            ("SHARD_END", 0),
            ("4959", 3),
        ] {
            let c = Checkpoint::from_kcl(s, sub);
            assert_eq!(c.as_ref().map(Checkpoint::to_kcl), Ok((s, sub)));
        }
        assert_eq!(
            Checkpoint::from_kcl("garbage", 0),
            Err(BadCheckpoint("garbage".into()))
        );
    }

    #[test]
    fn checkpoints_never_move_backwards() {
        assert!(Checkpoint::TrimHorizon.may_advance_to(&seq("5", 0)));
        assert!(seq("5", 0).may_advance_to(&seq("5", 0)));
        assert!(seq("5", 0).may_advance_to(&seq("5", 1)));
        assert!(seq("5", 2).may_advance_to(&seq("6", 0)));
        assert!(!seq("5", 2).may_advance_to(&seq("5", 1)));
        assert!(!seq("10", 0).may_advance_to(&seq("9", 0)));
        assert!(!seq("10", 0).may_advance_to(&Checkpoint::TrimHorizon));
        assert!(seq("10", 0).may_advance_to(&Checkpoint::ShardEnd));
        assert!(!Checkpoint::ShardEnd.may_advance_to(&seq("11", 0)));
        assert!(Checkpoint::ShardEnd.may_advance_to(&Checkpoint::ShardEnd));
        // Re-stating an initial position, any of them, is harmless.
        assert!(Checkpoint::Latest.may_advance_to(&Checkpoint::AtTimestamp));
        assert!(Checkpoint::AtTimestamp.may_advance_to(&Checkpoint::TrimHorizon));
        assert!(!Checkpoint::ShardEnd.may_advance_to(&Checkpoint::TrimHorizon));
    }

    #[test]
    fn records_are_located_in_the_order_checkpoints_move_in() {
        let n = |s: &str| SequenceNumber(s.into());
        for initial in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
        ] {
            assert_eq!(initial.locate(&n("0"), 0), Ordering::Greater);
        }
        assert_eq!(Checkpoint::ShardEnd.locate(&n("99"), 9), Ordering::Less);
        assert_eq!(seq("10", 2).locate(&n("10"), 2), Ordering::Equal);
        assert_eq!(seq("10", 2).locate(&n("10"), 3), Ordering::Greater);
        assert_eq!(seq("10", 2).locate(&n("9"), 7), Ordering::Less);
        // Numeric, not lexical.
        assert_eq!(seq("9", 0).locate(&n("10"), 0), Ordering::Greater);
        // The same order as `may_advance_to`: a checkpoint may move to a record exactly
        // when the record does not lie before it.
        let all = [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp,
            seq("5", 0),
            seq("5", 1),
            seq("10", 0),
            Checkpoint::ShardEnd,
        ];
        for from in &all {
            for (s, sub) in [("5", 0), ("5", 1), ("7", 0), ("10", 0)] {
                assert_eq!(
                    from.may_advance_to(&seq(s, sub)),
                    from.locate(&n(s), sub) != Ordering::Less,
                    "{from} -> {s}/{sub}"
                );
            }
        }
    }
}
