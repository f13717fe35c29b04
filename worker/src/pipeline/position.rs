//! What the app may checkpoint: pure rules, checked before anything is written.

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

    /// Is this past `checkpoint` (any record is past a checkpoint that is not a position,
    /// such as `TRIM_HORIZON`)?
    pub fn is_beyond(&self, checkpoint: &Checkpoint) -> bool {
        Self::of(checkpoint).is_none_or(|c| *self > c)
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

/// What the app asked to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Nothing now.
    Nothing,
    /// Everything delivered so far.
    AllDelivered,
    /// Up to and including this record: `(sequence number, sub-sequence number)`.
    UpTo(String, u64),
}

/// A checkpoint the app asked for that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a sequence number.
    #[error(
        "shard {shard}: checkpoint `{asked}` is not a sequence number: answer with a record's sequence_number"
    )]
    Malformed {
        /// The shard.
        shard: String,
        /// What the app sent.
        asked: String,
    },
    /// Beyond the last record delivered.
    #[error(
        "shard {shard}: checkpoint {asked} is beyond the last delivered record {last}: only delivered records can be checkpointed"
    )]
    BeyondDelivered {
        /// The shard.
        shard: String,
        /// What the app sent.
        asked: String,
        /// The last record delivered (or `nothing`).
        last: String,
    },
    /// Before the checkpoint already taken.
    #[error(
        "shard {shard}: checkpoint {asked} is before the current checkpoint {current}: checkpoints only move forward"
    )]
    Backwards {
        /// The shard.
        shard: String,
        /// What the app sent.
        asked: String,
        /// The checkpoint already taken or asked for.
        current: String,
    },
}

/// Resolves what the app asked for into the checkpoint to write.
///
/// `floor` is the furthest checkpoint already written or asked for; `delivered` the last
/// record delivered to the app. `Ok(None)`: nothing new to write.
///
/// # Errors
/// [`Refused`] for a malformed position, one beyond `delivered`, or one before `floor`.
pub fn resolve(
    shard: &str,
    wanted: &Wanted,
    delivered: Option<&Position>,
    floor: &Checkpoint,
) -> Result<Option<Position>, Refused> {
    let floor = Position::of(floor);
    let asked = match wanted {
        Wanted::Nothing => return Ok(None),
        Wanted::AllDelivered => match delivered {
            Some(d) => d.clone(),
            None => return Ok(None),
        },
        Wanted::UpTo(seq, sub) => {
            let sequence = SequenceNumber::parse(seq).map_err(|_| Refused::Malformed {
                shard: shard.into(),
                asked: seq.clone(),
            })?;
            let asked = Position {
                sequence,
                sub_sequence: *sub,
            };
            if delivered.is_none_or(|d| asked > *d) {
                return Err(Refused::BeyondDelivered {
                    shard: shard.into(),
                    asked: asked.to_string(),
                    last: delivered.map_or_else(|| "nothing".into(), ToString::to_string),
                });
            }
            if let Some(f) = &floor
                && asked < *f
            {
                return Err(Refused::Backwards {
                    shard: shard.into(),
                    asked: asked.to_string(),
                    current: f.to_string(),
                });
            }
            asked
        }
    };
    if floor.as_ref().is_some_and(|f| asked <= *f) {
        return Ok(None);
    }
    Ok(Some(asked))
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
    fn all_delivered_checkpoints_the_last_delivered_record() {
        let d = pos("200", 3);
        assert_eq!(
            resolve(
                "s",
                &Wanted::AllDelivered,
                Some(&d),
                &Checkpoint::TrimHorizon
            ),
            Ok(Some(d.clone()))
        );
        assert_eq!(
            resolve("s", &Wanted::AllDelivered, None, &Checkpoint::Latest),
            Ok(None)
        );
        // Already written: nothing new.
        assert_eq!(
            resolve("s", &Wanted::AllDelivered, Some(&d), &d.checkpoint()),
            Ok(None)
        );
        assert_eq!(
            resolve("s", &Wanted::Nothing, Some(&d), &Checkpoint::TrimHorizon),
            Ok(None)
        );
    }

    #[test]
    fn up_to_must_lie_between_the_checkpoint_and_the_last_delivered_record() {
        let d = pos("1000", 0);
        let floor = pos("100", 0).checkpoint();
        let up = |s: &str, sub| Wanted::UpTo(s.into(), sub);
        assert_eq!(
            resolve("s", &up("500", 2), Some(&d), &floor),
            Ok(Some(pos("500", 2)))
        );
        // Numeric, not lexical, order: "999" < "1000".
        assert_eq!(
            resolve("s", &up("999", 0), Some(&d), &floor),
            Ok(Some(pos("999", 0)))
        );
        let beyond = resolve("s", &up("1000", 1), Some(&d), &floor);
        assert!(
            matches!(&beyond, Err(Refused::BeyondDelivered { last, .. }) if last == "1000/0"),
            "{beyond:?}"
        );
        assert!(matches!(
            resolve("s", &up("5", 0), None, &Checkpoint::TrimHorizon),
            Err(Refused::BeyondDelivered { .. })
        ));
        let back = resolve("s", &up("99", 0), Some(&d), &floor);
        assert!(matches!(&back, Err(Refused::Backwards { .. })), "{back:?}");
        let bad = resolve("s", &up("abc", 0), Some(&d), &floor);
        assert!(matches!(&bad, Err(Refused::Malformed { .. })), "{bad:?}");
        let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("shard s") && msg.contains("`abc`"), "{msg}");
        // The floor itself: accepted, nothing new.
        assert_eq!(resolve("s", &up("100", 0), Some(&d), &floor), Ok(None));
    }
}
