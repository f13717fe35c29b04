//! Parallelism within a shard (Lambda's `ParallelizationFactor`): a batch is split by
//! partition key into up to N lanes delivered at once, and the shard's checkpoint is the low
//! watermark of what every lane finished. Pure: the shard task splits with [`lane_of`]; its
//! [`super::progress::LaneProgress`] keeps a [`Watermark`] of what the lanes delivered and
//! one of what they asked to checkpoint, and is the one to say how far the shard may
//! checkpoint ([`super::progress`]).
//!
//! # Guarantees
//! - All records of one partition key go to one lane, in shard order, and a batch's lanes
//!   all finish before the next batch starts: per-key order holds (unit test
//!   `keys_keep_their_lane`; `pipeline_delivery::batching::parallel_lanes_…`).
//! - [`Watermark::mark`] never passes a record its lane has not confirmed, and never moves
//!   back: the checkpoint is the last record before the first unconfirmed one, in shard
//!   order, or, after a lane's `up_to`, that record (proptest
//!   `the_mark_never_passes_an_unconfirmed_record`).

use std::hash::{Hash, Hasher};

use super::position::Position;

/// Most lanes per shard (Lambda's limit).
pub const MAX_LANES: usize = 10;

/// The lane (`0..lanes`) of a partition key: the same key, the same lane.
pub fn lane_of(partition_key: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    // SipHash with fixed keys: stable within the process, which is all a batch needs (its
    // lanes all finish before the next batch is split).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    partition_key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Where a lane's unconfirmed records begin.
#[derive(Debug, Clone)]
enum Front {
    /// At this record; `before` is the record read just before it (any lane, or filtered
    /// out), where a mark stops.
    At {
        first: Position,
        before: Option<Position>,
    },
    /// Somewhere after this record, which the lane confirmed with `up_to` (where exactly its
    /// next record lies is not kept: the mark stops at this one, a little early at worst).
    After(Position),
}

impl Front {
    /// The position to compare lanes by, and whether it means "just after it".
    fn key(&self) -> (&Position, bool) {
        match self {
            Self::At { first, .. } => (first, false),
            Self::After(p) => (p, true),
        }
    }

    /// The furthest mark this front allows.
    fn stop(&self) -> Option<Position> {
        match self {
            Self::At { before, .. } => before.clone(),
            Self::After(p) => Some(p.clone()),
        }
    }
}

/// One lane's unconfirmed records: from `front` to `last`.
#[derive(Debug, Clone)]
struct Open {
    front: Front,
    last: Position,
}

/// How far a shard delivered in lanes may move: the records read, in shard order, with the
/// lane that has each; a lane confirms its records in its own order. Memory is O(lanes),
/// whatever the records: a lane keeps where its unconfirmed records begin and end, not
/// each of them.
#[derive(Debug, Clone, Default)]
pub struct Watermark {
    open: Vec<Option<Open>>,
    last_seen: Option<Position>,
}

impl Watermark {
    /// A watermark over `lanes` lanes.
    pub fn new(lanes: usize) -> Self {
        Self {
            open: vec![None; lanes.max(1)],
            last_seen: None,
        }
    }

    /// A record read, in shard order; `lane: None` for one no lane gets (filtered out): it
    /// counts as confirmed.
    pub fn add(&mut self, p: Position, lane: Option<usize>) {
        if let Some(slot) = lane.and_then(|l| self.open.get_mut(l)) {
            match slot {
                Some(o) => o.last = p.clone(),
                None => {
                    *slot = Some(Open {
                        front: Front::At {
                            first: p.clone(),
                            before: self.last_seen.clone(),
                        },
                        last: p.clone(),
                    });
                }
            }
        }
        self.last_seen = Some(p);
    }

    /// Lane `lane` confirmed its records up to and including `upto`.
    pub fn confirm(&mut self, lane: usize, upto: &Position) {
        let Some(slot) = self.open.get_mut(lane) else {
            return;
        };
        let Some(o) = slot else {
            return;
        };
        if *upto >= o.last {
            *slot = None;
        } else if upto >= o.front.key().0 {
            o.front = Front::After(upto.clone());
        }
    }

    /// The furthest record such that it and every record before it are confirmed; `None`
    /// while the first record read is not.
    pub fn mark(&self) -> Option<Position> {
        match self
            .open
            .iter()
            .flatten()
            .map(|o| &o.front)
            .min_by(|a, b| a.key().cmp(&b.key()))
        {
            None => self.last_seen.clone(),
            Some(front) => front.stop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::checkpoint::SequenceNumber;
    use proptest::prelude::*;

    fn pos(n: u64) -> Position {
        Position {
            sequence: SequenceNumber::parse(&(1000 + n).to_string())
                .unwrap_or_else(|e| panic!("{e}")),
            sub_sequence: 0,
        }
    }

    #[test]
    fn keys_keep_their_lane() {
        for lanes in 1..=MAX_LANES {
            for k in 0..200 {
                let key = format!("key-{k}");
                let l = lane_of(&key, lanes);
                assert!(l < lanes);
                assert_eq!(l, lane_of(&key, lanes));
            }
        }
        // 200 keys spread over every one of 4 lanes.
        let used: std::collections::BTreeSet<usize> =
            (0..200).map(|k| lane_of(&format!("key-{k}"), 4)).collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn the_mark_is_the_low_watermark_of_the_lanes() {
        let mut w = Watermark::new(2);
        w.add(pos(1), Some(0));
        w.add(pos(2), Some(1));
        w.add(pos(3), None); // filtered out
        w.add(pos(4), Some(0));
        assert_eq!(w.mark(), None, "nothing confirmed");
        w.confirm(1, &pos(2));
        assert_eq!(w.mark(), None, "record 1 is still open");
        // Lane 0 confirms record 1 with `up_to`: the mark stops there (record 4 is open;
        // 2 and 3 are done, but where lane 0's next record lies is not kept).
        w.confirm(0, &pos(1));
        assert_eq!(w.mark(), Some(pos(1)));
        w.confirm(0, &pos(4));
        assert_eq!(w.mark(), Some(pos(4)));
        assert_eq!(w.mark(), Some(pos(4)), "no new records: the same mark");
        // All of a batch confirmed at once (`all_delivered` in every lane): exact, through
        // a filtered tail.
        w.add(pos(5), Some(1));
        w.add(pos(6), Some(0));
        w.add(pos(7), None);
        assert_eq!(w.mark(), Some(pos(4)));
        w.confirm(0, &pos(6));
        assert_eq!(w.mark(), Some(pos(4)), "5 is open");
        w.confirm(1, &pos(5));
        assert_eq!(w.mark(), Some(pos(7)));
    }

    proptest! {
        #[test]
        fn the_mark_never_passes_an_unconfirmed_record(
            lanes_of in proptest::collection::vec(proptest::option::of(0usize..3), 1..60),
            confirms in proptest::collection::vec((0usize..3, 0u64..60), 0..40),
        ) {
            let mut w = Watermark::new(3);
            for (i, l) in lanes_of.iter().enumerate() {
                w.add(pos(i as u64), *l);
            }
            // What each lane confirmed, as the furthest index.
            let mut confirmed = [None::<u64>; 3];
            let mut last_mark = None;
            for (lane, upto) in confirms {
                w.confirm(lane, &pos(upto));
                confirmed[lane] = confirmed[lane].max(Some(upto));
                let mark = w.mark();
                if let Some(m) = &mark {
                    // Every record up to the mark is confirmed (or in no lane).
                    for (i, l) in lanes_of.iter().enumerate() {
                        if pos(i as u64) > *m { break; }
                        if let Some(l) = l {
                            prop_assert!(confirmed[*l].is_some_and(|c| c >= i as u64),
                                "record {} of lane {} passed unconfirmed", i, l);
                        }
                    }
                }
                // It never moves back.
                prop_assert!(mark >= last_mark);
                last_mark = mark;
            }
        }
    }
}
