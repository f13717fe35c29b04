//! One application's shards as people look at them: owner, checkpoint, lag and state, from
//! one ListShards and one scan of the lease table. A pure function, shared by
//! `kinesis-worker status` and the operator's status.
//!
//! # Guarantees
//! A shard's lag comes only from the heartbeat of the worker that owns its lease now: a dead
//! or former owner's heartbeat item (which may linger until it expires) never speaks for it.

use std::collections::HashMap;

use crate::checkpoint::Checkpoint;
use crate::discovery::ShardInfo;
use crate::model::TableSnapshot;

/// Where a shard is in its life, for this application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Open and leased.
    Processing,
    /// Open and nobody holds it (no lease yet, or released).
    Unowned,
    /// Closed, records still to process (or waiting for its parents).
    Draining,
    /// Closed and processed to its end.
    Finished,
}

impl std::fmt::Display for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Processing => "processing",
            Self::Unowned => "unowned",
            Self::Draining => "draining",
            Self::Finished => "finished",
        })
    }
}

/// One shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// The shard id.
    pub shard_id: String,
    /// The worker holding its lease.
    pub owner: Option<String>,
    /// Its checkpoint (none: no lease yet).
    pub checkpoint: Option<Checkpoint>,
    /// Milliseconds behind the tip, as its owner last read.
    pub lag_ms: Option<i64>,
    /// Its owner's delivery waits for the on-failure destination, which refuses its records.
    pub stalled: bool,
    /// Its owner's app keeps failing its records ([`crate::model::Heartbeat::failing`]).
    pub failing: bool,
    /// Its state.
    pub state: ShardState,
}

/// The view of every shard the stream lists (in its order).
pub fn shard_views(shards: &[ShardInfo], snapshot: &TableSnapshot) -> Vec<ShardView> {
    let leases: HashMap<&str, _> = snapshot
        .leases
        .iter()
        .map(|l| (l.shard_id.as_str(), l))
        .collect();
    // Closed shards whose leases were deleted once their children started: done.
    let existing: std::collections::HashSet<&str> = leases.keys().copied().collect();
    let started: std::collections::HashSet<&str> = snapshot
        .leases
        .iter()
        .filter(|l| l.checkpoint.is_progress())
        .map(|l| l.shard_id.as_str())
        .collect();
    let cleaned = crate::discovery::finished_ancestors(shards, &existing, &started);
    let heartbeats: HashMap<&str, _> = snapshot
        .heartbeats
        .iter()
        .map(|h| (h.worker_id.as_str(), h))
        .collect();
    shards
        .iter()
        .map(|s| {
            let lease = leases.get(s.shard_id.as_str());
            let owner = lease.and_then(|l| l.owner.clone());
            let beat = owner.as_deref().and_then(|o| heartbeats.get(o));
            let lag_ms = beat.and_then(|h| h.lag.get(&s.shard_id).copied());
            let stalled = beat.is_some_and(|h| h.stalled.contains(&s.shard_id));
            let failing = beat.is_some_and(|h| h.failing.contains(&s.shard_id));
            let finished = lease.is_some_and(|l| l.checkpoint == Checkpoint::ShardEnd)
                || cleaned.contains(s.shard_id.as_str());
            let state = match (s.closed, finished, owner.is_some()) {
                (_, true, _) => ShardState::Finished,
                (true, false, _) => ShardState::Draining,
                (false, false, true) => ShardState::Processing,
                (false, false, false) => ShardState::Unowned,
            };
            ShardView {
                shard_id: s.shard_id.clone(),
                owner,
                checkpoint: lease.map(|l| l.checkpoint.clone()),
                lag_ms,
                stalled,
                failing,
                state,
            }
        })
        .collect()
}

/// "1.2s", "350ms", "3m4s": a lag for humans.
pub fn human_lag(ms: i64) -> String {
    match ms {
        ..1_000 => format!("{}ms", ms.max(0)),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// One shard as the worker's admin port serves it (`GET /status`, JSON) and `kubectl kinesis
/// status` reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardLine {
    /// The shard id.
    pub shard_id: String,
    /// `processing`, `unowned`, `draining` or `finished`.
    pub state: String,
    /// The worker holding its lease.
    #[serde(default)]
    pub owner: Option<String>,
    /// Its checkpoint, as KCL writes it.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// Milliseconds behind the tip, as its owner last read.
    #[serde(default)]
    pub lag_ms: Option<i64>,
    /// Its delivery waits for the on-failure destination.
    #[serde(default)]
    pub stalled: bool,
    /// Its app keeps failing its records (retried, never passed over).
    #[serde(default)]
    pub failing: bool,
}

/// A shard's state as the tables show it: with why it does not move, if it does not.
fn state_text(state: &str, stalled: bool, failing: bool) -> String {
    if stalled {
        format!("{state} (destination failing)")
    } else if failing {
        format!("{state} (app failing)")
    } else {
        state.to_string()
    }
}

/// The views as [`ShardLine`]s.
pub fn lines(views: &[ShardView]) -> Vec<ShardLine> {
    views
        .iter()
        .map(|v| ShardLine {
            shard_id: v.shard_id.clone(),
            state: v.state.to_string(),
            owner: v.owner.clone(),
            checkpoint: v.checkpoint.as_ref().map(ToString::to_string),
            lag_ms: v.lag_ms,
            stalled: v.stalled,
            failing: v.failing,
        })
        .collect()
}

/// A bar of `width` cells for `value` out of `max` (eighths of a cell: `▏` … `█`); empty for
/// 0 or no maximum.
pub fn bar(value: i64, max: i64, width: usize) -> String {
    if max <= 0 || value <= 0 {
        return String::new();
    }
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let eighths = (value.min(max) as u128 * width as u128 * 8).div_ceil(max as u128) as usize;
    let mut out = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        out.push(EIGHTHS[eighths % 8 - 1]);
    }
    out
}

/// `kubectl kinesis status`'s table: one line per shard, aligned, with the lag as a bar of up
/// to `width` cells scaled to the largest lag, and a summary line.
pub fn render_lines(lines: &[ShardLine], width: usize) -> String {
    let max = lines.iter().filter_map(|l| l.lag_ms).max().unwrap_or(0);
    let rows: Vec<[String; 6]> = lines
        .iter()
        .map(|l| {
            [
                l.shard_id.clone(),
                state_text(&l.state, l.stalled, l.failing),
                l.owner.clone().unwrap_or_else(|| "-".into()),
                l.checkpoint.clone().unwrap_or_else(|| "-".into()),
                l.lag_ms.map_or_else(|| "-".into(), human_lag),
                l.lag_ms.map(|ms| bar(ms, max, width)).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["SHARD", "STATE", "OWNER", "CHECKPOINT", "LAG", ""].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| {
                let pad = w.saturating_sub(c.chars().count());
                format!("{c}{}", " ".repeat(pad))
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let count = |s: &str| lines.iter().filter(|l| l.state == s).count();
    let owners: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l.owner.as_deref()).collect();
    out.push_str(&format!(
        "{} shards: {} processing, {} unowned, {} draining, {} finished; {} workers; max lag {}\n",
        lines.len(),
        count("processing"),
        count("unowned"),
        count("draining"),
        count("finished"),
        owners.len(),
        human_lag(max)
    ));
    out
}

/// The table `kinesis-worker status` prints: one line per shard, aligned.
pub fn render(views: &[ShardView]) -> String {
    let rows: Vec<[String; 5]> = views
        .iter()
        .map(|v| {
            [
                v.shard_id.clone(),
                state_text(&v.state.to_string(), v.stalled, v.failing),
                v.owner.clone().unwrap_or_else(|| "-".into()),
                v.checkpoint
                    .as_ref()
                    .map_or_else(|| "-".into(), ToString::to_string),
                v.lag_ms.map_or_else(|| "-".into(), human_lag),
            ]
        })
        .collect();
    let header = ["SHARD", "STATE", "OWNER", "CHECKPOINT", "LAG"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_bars_scale_to_the_largest_lag_in_eighths() {
        assert_eq!(bar(0, 100, 10), "");
        assert_eq!(bar(100, 100, 10), "██████████");
        assert_eq!(bar(50, 100, 10), "█████");
        assert_eq!(bar(1, 100, 10), "▏", "anything above 0 shows");
        assert_eq!(bar(55, 100, 10), "█████▌");
        assert_eq!(bar(500, 100, 4), "████", "never wider than the width");
        let l = |id: &str, owner: Option<&str>, lag: Option<i64>| ShardLine {
            shard_id: id.into(),
            state: if owner.is_some() {
                "processing"
            } else {
                "unowned"
            }
            .into(),
            owner: owner.map(String::from),
            checkpoint: Some("TRIM_HORIZON".into()),
            lag_ms: lag,
            stalled: false,
            failing: false,
        };
        let text = render_lines(
            &[
                l("shardId-0", Some("w1"), Some(2_000)),
                l("shardId-1", Some("w2"), Some(500)),
                l("shardId-2", None, None),
            ],
            8,
        );
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[0].starts_with("SHARD"), "{text}");
        assert!(rows[1].ends_with("2.0s   ████████"), "{text}");
        assert!(rows[2].ends_with("500ms  ██"), "{text}");
        assert!(rows[3].ends_with('-'), "{text}");
        assert_eq!(
            rows[4],
            "3 shards: 2 processing, 1 unowned, 0 draining, 0 finished; 2 workers; max lag 2.0s"
        );
    }
    use crate::model::{Heartbeat, Lease};

    fn shard(id: &str, closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parents: Vec::new(),
            hash_range: ("0".into(), "1".into()),
            closed,
        }
    }

    fn heartbeat(worker: &str, lag: &[(&str, i64)]) -> Heartbeat {
        Heartbeat {
            worker_id: worker.into(),
            counter: 1,
            draining: false,
            lag: lag.iter().map(|(s, l)| (s.to_string(), *l)).collect(),
            coordination: None,
            stalled: Default::default(),
            failing: Default::default(),
        }
    }

    #[test]
    fn lag_comes_from_the_current_owner_only() {
        let mut lease = Lease::new("s0", Checkpoint::TrimHorizon, Vec::new());
        lease.owner = Some("new".into());
        // The former owner's heartbeat is still there, with a stale (and larger) lag; it is
        // read last, as the scan's order may put it.
        let snapshot = TableSnapshot {
            leases: vec![lease],
            heartbeats: vec![
                heartbeat("new", &[("s0", 20)]),
                heartbeat("old", &[("s0", 90_000)]),
            ],
        };
        let v = shard_views(&[shard("s0", false)], &snapshot);
        assert_eq!(v[0].lag_ms, Some(20));
        assert_eq!(v[0].state, ShardState::Processing);
        // Unowned: no lag, whatever a heartbeat says.
        let mut snapshot = snapshot;
        snapshot.leases[0].owner = None;
        let v = shard_views(&[shard("s0", false)], &snapshot);
        assert_eq!((v[0].lag_ms, v[0].state), (None, ShardState::Unowned));
    }

    #[test]
    fn a_closed_shard_whose_lease_was_cleaned_up_is_finished() {
        let child = Lease::new(
            "c",
            Checkpoint::from_kcl("7", 0).unwrap_or(Checkpoint::TrimHorizon),
            vec!["p".into()],
        );
        let mut c = shard("c", false);
        c.parents = vec!["p".into()];
        let snapshot = TableSnapshot {
            leases: vec![child],
            heartbeats: Vec::new(),
        };
        let v = shard_views(&[shard("p", true), c], &snapshot);
        assert_eq!(v[0].state, ShardState::Finished, "{v:?}");
    }

    #[test]
    fn states_and_the_table() {
        let mut done = Lease::new("s0", Checkpoint::ShardEnd, Vec::new());
        done.owner = None;
        let draining = Lease::new("s1", Checkpoint::TrimHorizon, Vec::new());
        let snapshot = TableSnapshot {
            leases: vec![done, draining],
            heartbeats: Vec::new(),
        };
        let v = shard_views(
            &[shard("s0", true), shard("s1", true), shard("s2", false)],
            &snapshot,
        );
        let states: Vec<ShardState> = v.iter().map(|x| x.state).collect();
        assert_eq!(
            states,
            [
                ShardState::Finished,
                ShardState::Draining,
                ShardState::Unowned
            ]
        );
        assert_eq!(v[2].checkpoint, None);
        let text = render(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("SHARD  STATE"), "{text}");
        assert!(
            lines[1].contains("finished") && lines[1].contains("SHARD_END"),
            "{text}"
        );
        assert_eq!(human_lag(184_000), "3m4s");
    }
}
