//! Shard discovery: the stream's shards (ListShards, every page) become leases, once each.
//!
//! Every shard still in the stream gets a lease — open and closed ones alike — with its
//! parents recorded, so that [`super::balance::classify`] holds a child back until every
//! parent lease reached `SHARD_END`. A new lease starts at the application's initial
//! position; at `TRIM_HORIZON` that means ancestors are read before descendants and nothing
//! is skipped. A parent that has left the stream (past retention) has no lease and blocks
//! nothing.

use std::collections::HashSet;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;

use super::checkpoint::Checkpoint;
use super::model::Lease;

/// Which stream: by name or by ARN (cross-account access needs the ARN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRef {
    /// The stream's name, in the client's account and region.
    Name(String),
    /// The stream's ARN.
    Arn(String),
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) | Self::Arn(n) => f.write_str(n),
        }
    }
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard id.
    pub shard_id: String,
    /// Its parents: none, one (split) or two (merge).
    pub parents: Vec<String>,
    /// Its hash key range (decimal strings).
    pub hash_range: (String, String),
    /// Closed shards have an ending sequence number.
    pub closed: bool,
}

/// Listing the stream's shards failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The stream does not exist (or is not visible with these credentials).
    #[error(
        "stream `{stream}` not found: create it, or fix the stream name/ARN and region ({detail})"
    )]
    StreamNotFound {
        /// The stream.
        stream: String,
        /// Kinesis's message.
        detail: String,
    },
    /// Any other failure (transient: try again).
    #[error("ListShards on stream `{stream}` failed: {detail}")]
    Kinesis {
        /// The stream.
        stream: String,
        /// The SDK error with its causes.
        detail: String,
    },
}

/// One view of the stream's shards for all readers of a worker: it lists at most once per
/// `max_age`; callers in between share the last listing, and concurrent callers wait for one
/// call instead of making one each. With enhanced fan-out, shards long at their tip ask it,
/// as a safety net, whether they closed (one listing per worker per 5 minutes, a page per
/// 1,000 shards: 500 workers at 10,000 shards make ≈ 17 calls a second, of the 1,000
/// ListShards a second Kinesis allows per stream), not one per idle shard every 2 s.
#[derive(Clone)]
pub struct ShardCache {
    inner: std::sync::Arc<CacheInner>,
}

struct CacheInner {
    client: Client,
    stream: StreamRef,
    max_age: std::time::Duration,
    last: tokio::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Vec<ShardInfo>>)>>,
}

impl std::fmt::Debug for ShardCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCache")
            .field("stream", &self.inner.stream)
            .field("max_age", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

impl ShardCache {
    /// A view of `stream`'s shards, listed at most once per `max_age`.
    pub fn new(client: Client, stream: StreamRef, max_age: std::time::Duration) -> Self {
        Self {
            inner: std::sync::Arc::new(CacheInner {
                client,
                stream,
                max_age,
                last: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The Kinesis client it lists with.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The stream.
    pub fn stream(&self) -> &StreamRef {
        &self.inner.stream
    }

    /// The shards, listed at most `max_age` ago.
    ///
    /// # Errors
    /// As [`list_shards`] (a failed listing is not cached).
    pub async fn get(&self) -> Result<std::sync::Arc<Vec<ShardInfo>>, DiscoveryError> {
        let since = std::time::Instant::now().checked_sub(self.inner.max_age);
        self.listed_after(since).await
    }

    /// The shards, from a listing begun after `since` (`None`: any cached listing will do):
    /// for a decision that must not trust a listing older than what it saw (a shard
    /// reported missing may have been created after the cached listing). Concurrent callers
    /// share one listing.
    ///
    /// # Errors
    /// As [`list_shards`] (a failed listing is not cached).
    pub async fn listed_after(
        &self,
        since: Option<std::time::Instant>,
    ) -> Result<std::sync::Arc<Vec<ShardInfo>>, DiscoveryError> {
        let mut last = self.inner.last.lock().await;
        if let Some((at, shards)) = last.as_ref()
            && since.is_none_or(|since| *at > since)
        {
            return Ok(shards.clone());
        }
        // Dated by its start: a listing begun before `since` may miss what came after.
        let started = std::time::Instant::now();
        let shards =
            std::sync::Arc::new(list_shards(&self.inner.client, &self.inner.stream).await?);
        *last = Some((started, shards.clone()));
        Ok(shards)
    }
}

/// Every shard of the stream, all pages.
///
/// # Errors
/// [`DiscoveryError::StreamNotFound`]; [`DiscoveryError::Kinesis`].
pub async fn list_shards(
    client: &Client,
    stream: &StreamRef,
) -> Result<Vec<ShardInfo>, DiscoveryError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut req = client.list_shards();
        req = match (&next, stream) {
            // With a token, the stream must not be named again.
            (Some(token), _) => req.next_token(token),
            (None, StreamRef::Name(n)) => req.stream_name(n),
            (None, StreamRef::Arn(a)) => req.stream_arn(a),
        };
        let out = req.send().await.map_err(|e| {
            let not_found = e
                .as_service_error()
                .is_some_and(|se| se.is_resource_not_found_exception());
            // An answer that is no readable AWS error (a 403 in XML from a proxy or an
            // emulator) is named by its status first.
            let status = e.raw_response().map(|r| r.status().as_u16());
            let unreadable = e.as_service_error().is_none();
            let mut detail = DisplayErrorContext(&e).to_string();
            if unreadable && status == Some(403) {
                detail = format!("access denied (HTTP 403): {detail}");
            }
            if not_found {
                DiscoveryError::StreamNotFound {
                    stream: stream.to_string(),
                    detail,
                }
            } else {
                DiscoveryError::Kinesis {
                    stream: stream.to_string(),
                    detail,
                }
            }
        })?;
        for s in out.shards() {
            let mut parents: Vec<String> = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(String::from)
                .collect();
            parents.sort();
            let range = s.hash_key_range();
            shards.push(ShardInfo {
                shard_id: s.shard_id().to_string(),
                parents,
                hash_range: (
                    range
                        .map(|r| r.starting_hash_key().to_string())
                        .unwrap_or_default(),
                    range
                        .map(|r| r.ending_hash_key().to_string())
                        .unwrap_or_default(),
                ),
                closed: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some(),
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(shards)
}

/// The first record of `shard` that arrived at or after `to_ms` (epoch milliseconds), or
/// `None` when there is none (the shard holds nothing since then, or ended before it): one
/// GetShardIterator (`AT_TIMESTAMP`) and GetRecords of one record, repeated past empty pages
/// (Kinesis may answer empty before records further on) up to `max_pages`, 200 ms apart (the
/// shard's 5 reads a second are shared), stopping at the tip (`MillisBehindLatest` 0) or the
/// shard's end.
///
/// # Errors
/// A failed call, or `max_pages` empty pages short of the tip (said in the message).
pub async fn first_since(
    client: &Client,
    stream: &StreamRef,
    shard: &str,
    to_ms: i64,
    max_pages: usize,
) -> Result<Option<super::checkpoint::SequenceNumber>, String> {
    let at = aws_sdk_kinesis::primitives::DateTime::from_millis(to_ms);
    let req = client
        .get_shard_iterator()
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AtTimestamp)
        .timestamp(at);
    let req = match stream {
        StreamRef::Name(n) => req.stream_name(n),
        StreamRef::Arn(a) => req.stream_arn(a),
    };
    let out = req
        .send()
        .await
        .map_err(|e| format!("GetShardIterator on {shard}: {}", DisplayErrorContext(&e)))?;
    let mut iterator = out.shard_iterator().map(str::to_string);
    for _ in 0..max_pages {
        let Some(it) = iterator.take() else {
            return Ok(None);
        };
        let req = client.get_records().shard_iterator(it).limit(1);
        let req = match stream {
            StreamRef::Arn(a) => req.stream_arn(a),
            StreamRef::Name(_) => req,
        };
        let page = req
            .send()
            .await
            .map_err(|e| format!("GetRecords on {shard}: {}", DisplayErrorContext(&e)))?;
        if let Some(r) = page.records().first() {
            return super::checkpoint::SequenceNumber::parse(r.sequence_number())
                .map(Some)
                .map_err(|e| format!("{shard}: {e}"));
        }
        if page.millis_behind_latest() == Some(0) {
            return Ok(None);
        }
        iterator = page.next_shard_iterator().map(str::to_string);
        // The shard's 5 reads a second are shared with every application reading it.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(format!(
        "{shard}: {max_pages} empty pages after the time without reaching the tip"
    ))
}

/// The leases to create for shards that have none yet.
///
/// # Guarantees
/// - Only when the table holds no lease at all (the application's first start) do new
///   leases start at the configured `initial` position. Every later new shard is a child of a
///   reshard (or appeared while the application ran) and starts at TRIM_HORIZON, as KCL's do:
///   its parents are drained first, and nothing written to it before its lease exists is
///   skipped, whatever `initial` is.
/// - A closed shard without a lease whose descendants' leases have *started* (a checkpoint
///   past the start position: `started`) is finished — KCL deletes a parent's lease once its
///   children have started —, so no lease is made for it: its records are not delivered
///   again and its children are not held behind it. A child still at its start position does
///   not count: its parent may just have failed to be created, and is created again.
pub fn new_leases(
    shards: &[ShardInfo],
    existing: &HashSet<&str>,
    started: &HashSet<&str>,
    initial: &Checkpoint,
) -> Vec<Lease> {
    let start = if existing.is_empty() {
        initial.clone()
    } else {
        Checkpoint::TrimHorizon
    };
    let done = finished_ancestors(shards, existing, started);
    shards
        .iter()
        .filter(|s| !existing.contains(s.shard_id.as_str()) && !done.contains(s.shard_id.as_str()))
        .map(|s| {
            let mut lease = Lease::new(&s.shard_id, start.clone(), s.parents.clone());
            lease.hash_range = Some(s.hash_range.clone());
            lease
        })
        .collect()
}

/// The order to create `leases` in: waves, each lease in a later wave than every parent of
/// it that is among `leases`. A lease is created only after its parents' leases exist, so a
/// failed parent creation never leaves a child without the parent that must block it (a
/// parent with no lease does not block: see [`super::balance::classify`]).
pub fn creation_waves(leases: Vec<Lease>) -> Vec<Vec<Lease>> {
    let mut left: Vec<Lease> = leases;
    let mut placed: HashSet<String> = HashSet::new();
    let mut waves = Vec::new();
    while !left.is_empty() {
        let pending: HashSet<String> = left.iter().map(|l| l.shard_id.clone()).collect();
        let (ready, rest): (Vec<Lease>, Vec<Lease>) = left.into_iter().partition(|l| {
            l.parent_shard_ids
                .iter()
                .all(|p| placed.contains(p) || !pending.contains(p))
        });
        if ready.is_empty() {
            // A cycle (impossible in a real stream): create the rest together.
            waves.push(rest);
            break;
        }
        placed.extend(ready.iter().map(|l| l.shard_id.clone()));
        waves.push(ready);
        left = rest;
    }
    waves
}

/// Closed shards with no lease that have a started descendant (directly, or through other
/// such shards): their leases were deleted once they were finished. Walks up from the
/// started shards through their parents: O(shards + parent links), so a sync of 10,000
/// shards stays cheap.
pub fn finished_ancestors<'a>(
    shards: &'a [ShardInfo],
    existing: &HashSet<&str>,
    started: &HashSet<&str>,
) -> HashSet<&'a str> {
    let by_id: std::collections::HashMap<&str, &ShardInfo> =
        shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut done: HashSet<&str> = HashSet::new();
    let mut walk: Vec<&ShardInfo> = shards
        .iter()
        .filter(|s| started.contains(s.shard_id.as_str()))
        .collect();
    while let Some(s) = walk.pop() {
        for p in &s.parents {
            if let Some(parent) = by_id.get(p.as_str())
                && parent.closed
                && !existing.contains(p.as_str())
                && done.insert(parent.shard_id.as_str())
            {
                walk.push(parent);
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_in_an_earlier_wave_than_their_children() {
        let l = |id: &str, parents: &[&str]| {
            Lease::new(
                id,
                Checkpoint::TrimHorizon,
                parents.iter().map(|p| (*p).to_string()).collect(),
            )
        };
        // s0 → (s1, s2); s1 + s2 → s3 (merge); s9 has a parent whose lease exists already.
        let waves = creation_waves(vec![
            l("s3", &["s1", "s2"]),
            l("s1", &["s0"]),
            l("s9", &["old"]),
            l("s2", &["s0"]),
            l("s0", &[]),
        ]);
        let ids: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.iter().map(|l| l.shard_id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["s9", "s0"], vec!["s1", "s2"], vec!["s3"]]);
        assert!(creation_waves(Vec::new()).is_empty());
    }

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.into(),
            parents: parents.iter().map(|p| (*p).to_string()).collect(),
            hash_range: ("0".into(), "1".into()),
            closed,
        }
    }

    #[test]
    fn only_shards_without_a_lease_get_one_with_their_parents() {
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], false),
            shard("s2", &["s0"], false),
        ];
        let existing: HashSet<&str> = ["s0"].into_iter().collect();
        let made = new_leases(
            &shards,
            &existing,
            &HashSet::new(),
            &Checkpoint::TrimHorizon,
        );
        assert_eq!(made.len(), 2);
        assert_eq!(made[0].shard_id, "s1");
        assert_eq!(made[0].parent_shard_ids, vec!["s0".to_string()]);
        assert_eq!(made[0].checkpoint, Checkpoint::TrimHorizon);
        assert_eq!(made[0].owner, None);
        assert_eq!(made[0].hash_range, Some(("0".into(), "1".into())));
    }

    #[test]
    fn only_the_first_start_uses_the_configured_position_children_start_at_the_oldest() {
        let shards = vec![shard("s0", &[], true), shard("s1", &["s0"], false)];
        // First start at LATEST: every shard at LATEST.
        let none = HashSet::new();
        let made = new_leases(&shards, &none, &none, &Checkpoint::Latest);
        assert!(made.iter().all(|l| l.checkpoint == Checkpoint::Latest));
        // Later, a reshard's child: TRIM_HORIZON, whatever was configured.
        let existing: HashSet<&str> = ["s0"].into_iter().collect();
        let made = new_leases(&shards, &existing, &none, &Checkpoint::Latest);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].checkpoint, Checkpoint::TrimHorizon);
    }

    #[test]
    fn a_finished_parent_whose_lease_was_deleted_is_not_leased_again() {
        // s0 split into s1, s2; s2 merged with s3 into s4. KCL deleted the leases of s0
        // (and s2, s3); s1 and s4 have theirs.
        let shards = vec![
            shard("s0", &[], true),
            shard("s1", &["s0"], false),
            shard("s2", &["s0"], true),
            shard("s3", &[], true),
            shard("s4", &["s2", "s3"], false),
            shard("s5", &[], false),
        ];
        let existing: HashSet<&str> = ["s1", "s4"].into_iter().collect();
        let made = new_leases(&shards, &existing, &existing, &Checkpoint::TrimHorizon);
        let ids: Vec<&str> = made.iter().map(|l| l.shard_id.as_str()).collect();
        assert_eq!(
            ids,
            ["s5"],
            "no lease for finished ancestors, one for the new open shard"
        );
        // Children that have not started yet: their parents' leases may just have failed to
        // be created; they are created (again), parents first.
        let made = new_leases(
            &shards,
            &existing,
            &HashSet::new(),
            &Checkpoint::TrimHorizon,
        );
        assert_eq!(made.len(), 4);
        // A closed shard whose children have no lease yet gets one.
        let existing: HashSet<&str> = ["s5"].into_iter().collect();
        let made = new_leases(&shards, &existing, &existing, &Checkpoint::TrimHorizon);
        assert_eq!(made.len(), 5);
    }
}
