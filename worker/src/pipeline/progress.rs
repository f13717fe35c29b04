//! What may be checkpointed now: the one rule behind every checkpoint a shard task writes.
//! Pure: the shard task tells a [`Progress`] what the app acknowledged, what it asked to
//! checkpoint and which records were passed over (filtered out, or taken by the on-failure
//! destination), and asks it what to write; with lanes, a [`LaneProgress`] gives each lane
//! its own [`Progress`] for a batch and folds them back into the shard's. Positions are
//! compared in the one order checkpoints move in, [`Checkpoint::may_advance_to`]'s
//! ([`Checkpoint::locate`]), which the lease table also enforces on every write.
//!
//! # Guarantees
//! - Nothing is proposed for writing ([`Progress::to_write`]) beyond the last record the app
//!   acknowledged or that was passed over, in shard order: [`Progress::want`] refuses a
//!   position beyond it ([`resolve`]); records passed over are proposed on their own only
//!   when nothing the app acknowledged waits, unasked, before them
//!   ([`Progress::pass_over`]); with lanes, only the lanes' low watermark is
//!   ([`Progress::merge_lanes`]; proptests `one_lane_never_checkpoints_beyond_what_is_done`,
//!   `lanes_never_checkpoint_beyond_their_low_watermark`).
//! - Checkpoints never move backwards: what is proposed always lies beyond what was
//!   written, and what was acknowledged never moves back (same proptests).

use std::cmp::Ordering;

use super::lanes::Watermark;
use super::position::Position;
use crate::lease::checkpoint::{Checkpoint, SequenceNumber};

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
            if floor.locate(&asked.sequence, asked.sub_sequence) == Ordering::Less {
                return Err(Refused::Backwards {
                    shard: shard.into(),
                    asked: asked.to_string(),
                    current: Position::of(floor)
                        .map_or_else(|| floor.to_string(), |f| f.to_string()),
                });
            }
            asked
        }
    };
    if !asked.is_beyond(floor) {
        return Ok(None);
    }
    Ok(Some(asked))
}

/// Where a shard stands: the last checkpoint written, what the app asked to checkpoint
/// since, and the last record done (acknowledged by the app, or passed over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The last checkpoint written.
    committed: Checkpoint,
    /// The furthest position the app asked to checkpoint (or passed over with nothing
    /// pending), not written yet; always beyond `committed`.
    wanted: Option<Position>,
    /// The last record delivered to (and acknowledged by) the app, or passed over.
    delivered: Option<Position>,
}

impl Progress {
    /// A shard whose lease holds checkpoint `committed`; nothing delivered yet.
    pub fn new(committed: Checkpoint) -> Self {
        Self {
            committed,
            wanted: None,
            delivered: None,
        }
    }

    /// The last checkpoint written.
    pub fn committed(&self) -> &Checkpoint {
        &self.committed
    }

    /// The last record acknowledged by the app (or passed over).
    pub fn delivered(&self) -> Option<&Position> {
        self.delivered.as_ref()
    }

    /// What is to be written next, if anything.
    pub fn to_write(&self) -> Option<&Position> {
        self.wanted.as_ref()
    }

    /// The furthest checkpoint written or asked for: nothing at or before it is proposed
    /// again.
    pub fn floor(&self) -> Checkpoint {
        self.wanted
            .as_ref()
            .map_or_else(|| self.committed.clone(), Position::checkpoint)
    }

    /// The lease's `LATEST` start was pinned to a time: the shard starts `AT_TIMESTAMP`
    /// (nothing is processed yet).
    pub fn pinned(&mut self) {
        self.committed = Checkpoint::AtTimestamp;
    }

    /// The app acknowledged every record up to and including `last`.
    pub fn acked(&mut self, last: Position) {
        if self.delivered.as_ref().is_none_or(|d| last > *d) {
            self.delivered = Some(last);
        }
    }

    /// Records what the app asked to checkpoint.
    ///
    /// # Errors
    /// [`Refused`] (nothing changes) for what it may not: see [`resolve`].
    pub fn want(&mut self, shard: &str, wanted: &Wanted) -> Result<(), Refused> {
        if let Some(p) = resolve(shard, wanted, self.delivered.as_ref(), &self.floor())? {
            self.wanted = Some(p);
        }
        Ok(())
    }

    /// Records the app will not see (filtered out, or taken by the destination) up to and
    /// including `last` count as delivered. They are checkpointed at once only if the app
    /// had nothing acknowledged but not yet checkpointed before them; otherwise the app's
    /// next checkpoint covers them (an app that buffers keeps its say). A lane's last
    /// delivery may lie behind the shard's checkpoint (the other lanes moved it): nothing of
    /// it is pending then.
    pub fn pass_over(&mut self, last: Position) {
        let floor = self.floor();
        let nothing_pending = self.delivered.as_ref().is_none_or(|p| !p.is_beyond(&floor));
        if nothing_pending && last.is_beyond(&floor) {
            self.wanted = Some(last.clone());
        }
        self.acked(last);
    }

    /// `written` was written: the new checkpoint (what was to be written is done).
    pub fn written(&mut self, written: &Position) {
        self.committed = written.checkpoint();
        if self.wanted.as_ref().is_none_or(|w| w <= written) {
            self.wanted = None;
        }
    }

    /// Moves to the low watermarks of `lanes` (after a batch delivered in lanes): the last
    /// record done is the furthest every lane got to, and what may be checkpointed the
    /// furthest every lane asked for; neither moves back.
    pub fn merge_lanes(&mut self, lanes: &LaneProgress) {
        if let Some(p) = lanes.delivered.mark() {
            self.acked(p);
        }
        if let Some(p) = lanes.wanted.mark()
            && p.is_beyond(&self.floor())
        {
            self.wanted = Some(p);
        }
    }
}

/// The lanes of a shard delivered in parallel ([`super::lanes`]): the shard's last record
/// done and what it may checkpoint are the low watermarks of its lanes'.
#[derive(Debug, Clone)]
pub struct LaneProgress {
    delivered: Watermark,
    wanted: Watermark,
    /// Per lane: the last record it delivered.
    each: Vec<Option<Position>>,
}

impl LaneProgress {
    /// `n` lanes, nothing read yet.
    pub fn new(n: usize) -> Self {
        Self {
            delivered: Watermark::new(n),
            wanted: Watermark::new(n),
            each: vec![None; n],
        }
    }

    /// How many lanes.
    pub fn lanes(&self) -> usize {
        self.each.len()
    }

    /// A batch begins: a checkpoint asked for at the shard level (an idle call's or a
    /// shutdown's answer) confirms every lane up to it.
    pub fn begin(&mut self, shard: &Progress) {
        if let Some(floor) = Position::of(&shard.floor()) {
            for i in 0..self.lanes() {
                self.wanted.confirm(i, &floor);
            }
        }
    }

    /// A record of the batch, in shard order, and the lane that gets it (`None`: no lane,
    /// it was filtered out, so it counts as done).
    pub fn add(&mut self, p: Position, lane: Option<usize>) {
        self.delivered.add(p.clone(), lane);
        self.wanted.add(p, lane);
    }

    /// Lane `i`'s own progress for the batch: its floor is the shard's (this batch's
    /// records all lie beyond it), its last record the one it delivered last.
    pub fn lane(&self, shard: &Progress, i: usize) -> Progress {
        Progress {
            committed: shard.floor(),
            wanted: None,
            delivered: self.each.get(i).cloned().flatten(),
        }
    }

    /// Lane `i` finished the batch where `lane` says.
    pub fn finish(&mut self, i: usize, lane: &Progress) {
        if let Some(p) = &lane.delivered {
            self.delivered.confirm(i, p);
        }
        if let Some(p) = &lane.wanted {
            self.wanted.confirm(i, p);
        }
        if let Some(each) = self.each.get_mut(i) {
            each.clone_from(&lane.delivered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn at(n: u64) -> Position {
        pos(&(1000 + n).to_string(), 0)
    }

    fn progress(committed: Checkpoint, delivered: Option<Position>) -> Progress {
        Progress {
            committed,
            wanted: None,
            delivered,
        }
    }

    #[test]
    fn records_passed_over_are_checkpointed_only_when_nothing_is_pending_before_them() {
        // Nothing delivered yet, or everything delivered checkpointed: checkpointed at once.
        let mut d = progress(Checkpoint::TrimHorizon, None);
        d.pass_over(at(5));
        assert_eq!(d.to_write(), Some(&at(5)));
        let mut d = progress(at(4).checkpoint(), Some(at(4)));
        d.pass_over(at(5));
        assert_eq!(d.to_write(), Some(&at(5)));
        // Acknowledged beyond the checkpoint: the app's next checkpoint decides.
        let mut d = progress(at(3).checkpoint(), Some(at(4)));
        d.pass_over(at(5));
        assert_eq!((d.to_write(), d.delivered()), (None, Some(&at(5))));
        // A lane whose last delivery lies behind the shard's checkpoint (other lanes moved
        // it) has nothing pending: its destined records must not hold the shard back.
        let mut d = progress(at(7).checkpoint(), Some(at(2)));
        d.pass_over(at(9));
        assert_eq!(d.to_write(), Some(&at(9)));
    }

    #[test]
    fn a_written_checkpoint_is_the_new_floor() {
        let mut d = progress(Checkpoint::TrimHorizon, None);
        d.acked(at(3));
        assert_eq!(d.want("s", &Wanted::AllDelivered), Ok(()));
        let p = d.to_write().cloned();
        assert_eq!(p, Some(at(3)));
        d.written(&at(3));
        assert_eq!((d.committed(), d.to_write()), (&at(3).checkpoint(), None));
        // The same again: nothing new.
        assert_eq!(d.want("s", &Wanted::AllDelivered), Ok(()));
        assert_eq!(d.to_write(), None);
        // Backwards: refused, nothing changes.
        let back = d.want("s", &Wanted::UpTo("1002".into(), 0));
        assert!(matches!(back, Err(Refused::Backwards { .. })), "{back:?}");
        assert_eq!(d.to_write(), None);
        // A pinned LATEST lease starts AT_TIMESTAMP.
        let mut d = Progress::new(Checkpoint::Latest);
        d.pinned();
        assert_eq!(d.committed(), &Checkpoint::AtTimestamp);
    }

    #[test]
    fn lanes_checkpoint_their_low_watermark() {
        let mut shard = Progress::new(Checkpoint::TrimHorizon);
        let mut lanes = LaneProgress::new(2);
        lanes.begin(&shard);
        lanes.add(at(1), Some(0));
        lanes.add(at(2), Some(1));
        lanes.add(at(3), None);
        let (mut l0, mut l1) = (lanes.lane(&shard, 0), lanes.lane(&shard, 1));
        // Lane 1 finished and asked for all of it; lane 0 failed (nothing acknowledged).
        l1.acked(at(2));
        assert_eq!(l1.want("s", &Wanted::AllDelivered), Ok(()));
        lanes.finish(0, &l0);
        lanes.finish(1, &l1);
        shard.merge_lanes(&lanes);
        assert_eq!((shard.delivered(), shard.to_write()), (None, None));
        // Next batch: lane 0 acknowledges record 1 and passes over record 4 (destined),
        // with nothing pending: everything through the filtered record 3 is done.
        lanes.begin(&shard);
        lanes.add(at(4), Some(0));
        l0 = lanes.lane(&shard, 0);
        l0.acked(at(1));
        assert_eq!(l0.want("s", &Wanted::AllDelivered), Ok(()));
        l0.pass_over(at(4));
        lanes.finish(0, &l0);
        shard.merge_lanes(&lanes);
        assert_eq!(shard.delivered(), Some(&at(4)));
        assert_eq!(shard.to_write(), Some(&at(4)));
        shard.written(&at(4));
        // A shard-level checkpoint (an idle call's answer) confirms every lane up to it;
        // the lanes' older marks never move it back.
        lanes.begin(&shard);
        lanes.add(at(5), Some(1));
        l1 = lanes.lane(&shard, 1);
        assert_eq!(l1.to_write(), None);
        lanes.finish(1, &l1);
        shard.merge_lanes(&lanes);
        assert_eq!(
            (shard.committed(), shard.to_write()),
            (&at(4).checkpoint(), None)
        );
    }

    /// One step on a shard delivered without lanes.
    #[derive(Debug, Clone)]
    enum Step {
        /// The app acknowledges the next `n` records.
        Ack(u64),
        /// The next `n` records are passed over.
        PassOver(u64),
        /// The app asks for everything delivered.
        WantAll,
        /// The app asks for record `n` (maybe not delivered, maybe behind).
        WantUpTo(u64),
        /// The checkpoint is written.
        Flush,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..5).prop_map(Step::Ack),
            (1u64..5).prop_map(Step::PassOver),
            Just(Step::WantAll),
            (0u64..60).prop_map(Step::WantUpTo),
            Just(Step::Flush),
        ]
    }

    /// What the lease table would refuse, and what may never be proposed: a checkpoint
    /// behind the last one written, or beyond the last record done.
    fn check(p: &Progress, before: &Checkpoint, done: Option<&Position>) -> Result<(), String> {
        if !before.may_advance_to(p.committed()) {
            return Err(format!("written backwards: {before} -> {}", p.committed()));
        }
        if let Some(w) = p.to_write() {
            if !w.is_beyond(p.committed()) {
                return Err(format!("proposed {w}, not beyond {}", p.committed()));
            }
            if done.is_none_or(|d| w > d) {
                return Err(format!("proposed {w} beyond what is done ({done:?})"));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn one_lane_never_checkpoints_beyond_what_is_done(
            start in proptest::option::of(0u64..3),
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let committed = start.map_or(Checkpoint::TrimHorizon, |s| at(s).checkpoint());
            let mut p = Progress::new(committed);
            // The next record read, and the last one done (acknowledged or passed over).
            let mut next = start.map_or(0, |s| s + 1);
            let mut done = None;
            for s in steps {
                let before = p.committed().clone();
                let had = p.to_write().cloned();
                match s {
                    Step::Ack(n) => {
                        next += n;
                        p.acked(at(next - 1));
                        done = Some(at(next - 1));
                    }
                    Step::PassOver(n) => {
                        next += n;
                        let pending = p.delivered().is_some_and(|d| d.is_beyond(&p.floor()));
                        p.pass_over(at(next - 1));
                        done = Some(at(next - 1));
                        // With acknowledged records waiting, the app keeps its say.
                        if pending {
                            prop_assert_eq!(p.to_write().cloned(), had.clone());
                        }
                    }
                    Step::WantAll => {
                        let _ = p.want("s", &Wanted::AllDelivered);
                    }
                    Step::WantUpTo(n) => {
                        let r = p.want("s", &Wanted::UpTo((1000 + n).to_string(), 0));
                        if r.is_err() {
                            prop_assert_eq!(p.to_write().cloned(), had.clone(), "refused, yet changed");
                        }
                    }
                    Step::Flush => {
                        if let Some(w) = p.to_write().cloned() {
                            p.written(&w);
                        }
                    }
                }
                prop_assert_eq!(p.delivered(), done.as_ref());
                prop_assert_eq!(check(&p, &before, done.as_ref()), Ok(()));
                // What was to be written is only replaced by something further.
                if let (Some(h), Some(w)) = (&had, p.to_write()) {
                    prop_assert!(w >= h, "proposal moved back: {} -> {}", h, w);
                }
            }
        }

        #[test]
        fn lanes_never_checkpoint_beyond_their_low_watermark(
            batches in proptest::collection::vec(
                (
                    // Each record's lane (`None`: filtered out).
                    proptest::collection::vec(proptest::option::of(0usize..3), 1..12),
                    // Per lane: how many of its records it acknowledges, then passes over,
                    // and what it asks to checkpoint (0: nothing, 1: all, 2: its first).
                    proptest::collection::vec((0usize..5, 0usize..3, 0u8..3), 3),
                    // A shard-level checkpoint after the batch, and a write.
                    any::<bool>(),
                    any::<bool>(),
                ),
                1..8,
            ),
        ) {
            let mut shard = Progress::new(Checkpoint::TrimHorizon);
            let mut lanes = LaneProgress::new(3);
            // Every record read so far: its lane; and per lane, the furthest record done
            // (the lane acknowledges and passes over its records in its own order).
            let mut read: Vec<Option<usize>> = Vec::new();
            let mut lane_done = [None::<u64>; 3];
            for (lanes_of, per_lane, shard_want, flush) in batches {
                lanes.begin(&shard);
                let first = read.len() as u64;
                for (k, l) in lanes_of.iter().enumerate() {
                    lanes.add(at(first + k as u64), *l);
                }
                read.extend(lanes_of.iter().copied());
                for (i, (acks, passes, wants)) in per_lane.into_iter().enumerate() {
                    let mine: Vec<u64> = lanes_of
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| **l == Some(i))
                        .map(|(k, _)| first + k as u64)
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let mut lane = lanes.lane(&shard, i);
                    let acked = acks.min(mine.len());
                    if acked > 0 {
                        lane.acked(at(mine[acked - 1]));
                        lane_done[i] = Some(mine[acked - 1]);
                    }
                    let _ = match wants {
                        1 => lane.want("s", &Wanted::AllDelivered),
                        2 => lane.want("s", &Wanted::UpTo((1000 + mine[0]).to_string(), 0)),
                        _ => Ok(()),
                    };
                    let passed = (acked + passes).min(mine.len());
                    if passed > acked {
                        lane.pass_over(at(mine[passed - 1]));
                        lane_done[i] = Some(mine[passed - 1]);
                    }
                    lanes.finish(i, &lane);
                }
                let before = shard.committed().clone();
                let had = shard.to_write().cloned();
                shard.merge_lanes(&lanes);
                // The true low watermark: the last record before the first one not done.
                let low = read
                    .iter()
                    .enumerate()
                    .take_while(|&(k, l)| match *l {
                        None => true,
                        Some(l) => lane_done[l].is_some_and(|d| d >= k as u64),
                    })
                    .last()
                    .map(|(k, _)| at(k as u64));
                prop_assert_eq!(check(&shard, &before, low.as_ref()), Ok(()));
                prop_assert!(shard.delivered() <= low.as_ref(), "delivered beyond the low watermark");
                if let (Some(h), Some(w)) = (&had, shard.to_write()) {
                    prop_assert!(w >= h, "proposal moved back: {} -> {}", h, w);
                }
                if shard_want {
                    let before = shard.committed().clone();
                    let _ = shard.want("s", &Wanted::AllDelivered);
                    prop_assert_eq!(check(&shard, &before, low.as_ref()), Ok(()));
                }
                if flush && let Some(w) = shard.to_write().cloned() {
                    let before = shard.committed().clone();
                    shard.written(&w);
                    prop_assert_eq!(check(&shard, &before, low.as_ref()), Ok(()));
                }
            }
        }
    }
}
