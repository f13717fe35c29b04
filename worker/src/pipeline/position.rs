//! A record's place in its shard. What may be checkpointed is decided in
//! [`super::progress`], in the order [`Checkpoint::may_advance_to`] defines.

use crate::lease::checkpoint::{Checkpoint, SequenceNumber};

/// A delivered record (or KPL sub-record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The record's sequence number.
    pub sequence: SequenceNumber,
    /// The sub-record (0 for a plain record).
    pub sub_sequence: u64,
}

impl Position {
    /// The checkpoint that marks this position processed.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Sequence {
            sequence: self.sequence.clone(),
            sub_sequence: self.sub_sequence,
        }
    }

    /// Is this past `checkpoint` (not processed yet by it)? Every record is past an initial
    /// position such as `TRIM_HORIZON` ([`Checkpoint::locate`]).
    pub fn is_beyond(&self, checkpoint: &Checkpoint) -> bool {
        checkpoint.locate(&self.sequence, self.sub_sequence) == std::cmp::Ordering::Greater
    }

    /// The position a checkpoint names, if it names one.
    pub(crate) fn of(checkpoint: &Checkpoint) -> Option<Self> {
        match checkpoint {
            Checkpoint::Sequence {
                sequence,
                sub_sequence,
            } => Some(Self {
                sequence: sequence.clone(),
                sub_sequence: *sub_sequence,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sequence, self.sub_sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: &str, sub: u64) -> Position {
        Position {
            sequence: SequenceNumber::parse(seq).unwrap_or_else(|_| panic!("bad test seq {seq}")),
            sub_sequence: sub,
        }
    }

    #[test]
    fn a_position_is_beyond_what_does_not_cover_it() {
        assert!(pos("5", 0).is_beyond(&Checkpoint::TrimHorizon));
        assert!(pos("5", 0).is_beyond(&Checkpoint::Latest));
        assert!(pos("5", 0).is_beyond(&Checkpoint::AtTimestamp));
        assert!(pos("5", 1).is_beyond(&pos("5", 0).checkpoint()));
        assert!(pos("10", 0).is_beyond(&pos("9", 3).checkpoint()));
        assert!(!pos("5", 0).is_beyond(&pos("5", 0).checkpoint()));
        assert!(!pos("9", 0).is_beyond(&pos("10", 0).checkpoint()));
        assert!(!pos("9", 0).is_beyond(&Checkpoint::ShardEnd));
        assert_eq!(Position::of(&pos("7", 2).checkpoint()), Some(pos("7", 2)));
        assert_eq!(Position::of(&Checkpoint::TrimHorizon), None);
    }
}
