//! A child's `checkpoint` requests, judged as KCL's checkpointer judges them: pure, no I/O.
//!
//! KCL writes a checkpoint to DynamoDB before it answers; the bridge answers at once and hands
//! the accepted position to the worker with the call's answer, which writes it at its next
//! checkpoint flush and at every hand-over (docs/MIGRATING.md). What a checkpoint may name is
//! the same: a position no earlier than the last checkpoint and no later than the last record
//! delivered to this child.

use std::cmp::Ordering;

/// A position in a shard: sequence number and sub-sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Decimal sequence number.
    pub sequence_number: String,
    /// Sub-sequence number (0 for a plain record).
    pub sub_sequence_number: u64,
}

impl Position {
    /// The position of a record.
    pub fn new(sequence_number: impl Into<String>, sub_sequence_number: u64) -> Self {
        Self {
            sequence_number: sequence_number.into(),
            sub_sequence_number,
        }
    }
}

/// Is `s` a Kinesis sequence number (1 to 128 decimal digits)?
fn is_sequence_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Orders two decimal sequence numbers as numbers.
fn compare_sequence(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Orders two positions in a shard.
pub fn compare(a: &Position, b: &Position) -> Ordering {
    compare_sequence(&a.sequence_number, &b.sequence_number)
        .then(a.sub_sequence_number.cmp(&b.sub_sequence_number))
}

/// Where a shard's child stands, as far as checkpoints go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last checkpoint accepted (or the position the shard started after).
    pub checkpoint: Option<Position>,
    /// The last record delivered to the child.
    pub last_delivered: Option<Position>,
}

/// What the child is doing when it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `initialize`, `processRecords` or `shutdownRequested`.
    Processing,
    /// `shardEnded`: a checkpoint with no position is the end of the shard.
    ShardEnded,
    /// `leaseLost`: another worker owns the shard.
    LeaseLost,
}

/// A checkpoint the bridge accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Up to and including this record.
    UpTo(Position),
    /// Every record delivered (`checkpoint()` with no position).
    AllDelivered,
    /// The end of the shard (`checkpoint()` with no position during `shardEnded`).
    ShardEnd,
    /// Nothing to do: no record was delivered yet, and no position was named.
    Nothing,
}

/// A refused checkpoint: the name of the exception KCL's checkpointer throws, which the
/// child's library raises (kclpy's `CheckpointError.value`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another worker owns the shard (KCL: `ShutdownException`).
    #[error("ShutdownException")]
    Shutdown,
    /// Not a sequence number, before the last checkpoint, or after the last record delivered
    /// (KCL: `IllegalArgumentException`).
    #[error("IllegalArgumentException")]
    OutOfRange,
}

impl Refused {
    /// The exception's name, as sent in the reply's `error`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shutdown => "ShutdownException",
            Self::OutOfRange => "IllegalArgumentException",
        }
    }
}

/// Judges a `checkpoint` request of `sequence_number`/`sub_sequence_number` (`None`: the last
/// record delivered) against `cursor`, and moves the cursor's checkpoint when accepted.
///
/// # Guarantees
/// An accepted explicit position is a well-formed sequence number, not before the cursor's
/// checkpoint and not after its last delivered record; the cursor's checkpoint never moves
/// backwards.
///
/// # Errors
/// [`Refused::Shutdown`] in [`Phase::LeaseLost`]; [`Refused::OutOfRange`] for a position that
/// is malformed or outside that range.
pub fn judge(
    cursor: &mut Cursor,
    phase: Phase,
    sequence_number: Option<&str>,
    sub_sequence_number: Option<u64>,
) -> Result<Accepted, Refused> {
    if phase == Phase::LeaseLost {
        return Err(Refused::Shutdown);
    }
    let Some(sequence_number) = sequence_number else {
        if phase == Phase::ShardEnded {
            return Ok(Accepted::ShardEnd);
        }
        return Ok(match &cursor.last_delivered {
            Some(last) => {
                cursor.checkpoint = Some(last.clone());
                Accepted::AllDelivered
            }
            None => Accepted::Nothing,
        });
    };
    if !is_sequence_number(sequence_number) {
        return Err(Refused::OutOfRange);
    }
    let wanted = Position::new(sequence_number, sub_sequence_number.unwrap_or(0));
    let Some(last) = &cursor.last_delivered else {
        return Err(Refused::OutOfRange);
    };
    if compare(&wanted, last) == Ordering::Greater {
        return Err(Refused::OutOfRange);
    }
    if let Some(done) = &cursor.checkpoint
        && is_sequence_number(&done.sequence_number)
        && compare(&wanted, done) == Ordering::Less
    {
        return Err(Refused::OutOfRange);
    }
    cursor.checkpoint = Some(wanted.clone());
    Ok(Accepted::UpTo(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seq: &str, sub: u64) -> Position {
        Position::new(seq, sub)
    }

    fn cursor(checkpoint: Option<Position>, last: Option<Position>) -> Cursor {
        Cursor {
            checkpoint,
            last_delivered: last,
        }
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(compare(&at("99", 0), &at("100", 0)), Ordering::Less);
        assert_eq!(compare(&at("0100", 0), &at("100", 0)), Ordering::Equal);
        assert_eq!(compare(&at("100", 1), &at("100", 0)), Ordering::Greater);
    }

    #[test]
    fn a_checkpoint_with_no_position_takes_the_last_record_delivered() {
        let mut c = cursor(None, Some(at("20", 0)));
        assert_eq!(
            judge(&mut c, Phase::Processing, None, None),
            Ok(Accepted::AllDelivered)
        );
        assert_eq!(c.checkpoint, Some(at("20", 0)));
        let mut nothing = Cursor::default();
        assert_eq!(
            judge(&mut nothing, Phase::Processing, None, None),
            Ok(Accepted::Nothing)
        );
        assert_eq!(
            judge(&mut nothing, Phase::ShardEnded, None, None),
            Ok(Accepted::ShardEnd)
        );
    }

    #[test]
    fn positions_outside_the_range_are_refused_as_kcl_refuses_them() {
        let mut c = cursor(Some(at("10", 0)), Some(at("20", 0)));
        for (seq, sub) in [
            ("21", 0),
            ("20", 1),
            ("9", 0),
            ("abc", 0),
            ("", 0),
            ("-5", 0),
        ] {
            assert_eq!(
                judge(&mut c, Phase::Processing, Some(seq), Some(sub)),
                Err(Refused::OutOfRange),
                "{seq}/{sub}"
            );
        }
        assert_eq!(c.checkpoint, Some(at("10", 0)), "a refusal moves nothing");
        assert_eq!(
            judge(&mut c, Phase::Processing, Some("15"), None),
            Ok(Accepted::UpTo(at("15", 0)))
        );
        assert_eq!(
            judge(&mut c, Phase::Processing, Some("15"), Some(0)),
            Ok(Accepted::UpTo(at("15", 0))),
            "the same position again is fine"
        );
        assert_eq!(
            judge(&mut c, Phase::LeaseLost, None, None),
            Err(Refused::Shutdown)
        );
        assert_eq!(Refused::Shutdown.name(), "ShutdownException");
        // Nothing delivered yet: no explicit position can be valid.
        let mut fresh = cursor(None, None);
        assert_eq!(
            judge(&mut fresh, Phase::Processing, Some("1"), Some(0)),
            Err(Refused::OutOfRange)
        );
        // A shard that started at TRIM_HORIZON has no numeric checkpoint to compare with.
        let mut start = cursor(Some(at("TRIM_HORIZON", 0)), Some(at("5", 0)));
        assert_eq!(
            judge(&mut start, Phase::Processing, Some("5"), Some(0)),
            Ok(Accepted::UpTo(at("5", 0)))
        );
    }

    proptest! {
        #[test]
        fn the_checkpoint_never_moves_backwards_nor_past_what_was_delivered(
            requests in proptest::collection::vec((0u64..200, 0u64..3, any::<bool>(), 0u64..40), 1..60)
        ) {
            let mut c = Cursor::default();
            let mut delivered = 0u64;
            for (seq, sub, explicit, more) in requests {
                delivered += more;
                c.last_delivered = Some(at(&delivered.to_string(), 0));
                let before = c.checkpoint.clone();
                let seq = seq.to_string();
                let r = if explicit {
                    judge(&mut c, Phase::Processing, Some(&seq), Some(sub))
                } else {
                    judge(&mut c, Phase::Processing, None, None)
                };
                if let (Some(b), Some(now)) = (&before, &c.checkpoint) {
                    prop_assert_ne!(compare(now, b), Ordering::Less);
                }
                if let Some(now) = &c.checkpoint {
                    prop_assert_ne!(compare(now, &at(&delivered.to_string(), 0)), Ordering::Greater);
                }
                if r.is_err() {
                    prop_assert_eq!(&c.checkpoint, &before);
                }
            }
        }
    }
}
