//! Reading the lease table page by page: the one loop behind every Scan and Query. It
//! follows `LastEvaluatedKey`, stops at a page bound, decodes each item, and hands the
//! items that cannot be read to the caller's bad-item report (counted, logged once by
//! [`super::LeaseTable`]) instead of failing, so one bad item never stops a fleet.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::operation::query::QueryOutput;
use aws_sdk_dynamodb::operation::scan::ScanOutput;

use super::LeaseError;
use super::codec::Item;

/// What a [`LeaseTable::scan_bounded`](super::LeaseTable::scan_bounded) may read.
#[derive(Debug, Clone, Copy)]
pub struct ScanBounds {
    /// Read only these attributes (a projection); `None`: all.
    pub attributes: Option<&'static [&'static str]>,
    /// An item larger than this (as read) is skipped.
    pub max_item_bytes: usize,
    /// Stop once the items kept would exceed this.
    pub max_total_bytes: usize,
    /// Stop after this many pages.
    pub max_pages: usize,
    /// Items a page holds at most (Scan's `Limit`); `None`: as many as fit in DynamoDB's
    /// 1 MB. Smaller pages cost the same read units (billed by size), take one request more
    /// per page, and each answers sooner (a page is one attempt under the client's timeout).
    pub page_items: Option<i32>,
}

impl ScanBounds {
    /// Everything (a worker's scan: it needs every lease, whole).
    pub const UNBOUNDED: Self = Self {
        attributes: None,
        max_item_bytes: usize::MAX,
        max_total_bytes: usize::MAX,
        max_pages: usize::MAX,
        page_items: None,
    };
}

/// What a bounded scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Pages read.
    pub pages: usize,
    /// Bytes of the items kept.
    pub bytes: usize,
    /// Items skipped for their size.
    pub oversized: usize,
    /// A bound stopped the scan: the snapshot is partial.
    pub truncated: bool,
}

/// What a bounded scan does with the next item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep it.
    Keep,
    /// Skip it: larger than an item may be.
    Oversized,
    /// Stop: the items kept would exceed the total.
    Stop,
}

impl ScanReport {
    /// Decides on an item of `size` bytes and records it (pure).
    pub fn admit(&mut self, size: usize, bounds: &ScanBounds) -> Admit {
        if size > bounds.max_item_bytes {
            self.oversized += 1;
            Admit::Oversized
        } else if self.bytes.saturating_add(size) > bounds.max_total_bytes {
            self.truncated = true;
            Admit::Stop
        } else {
            self.bytes += size;
            Admit::Keep
        }
    }
}

/// One page of a Scan or a Query: its items, and where the next page starts.
#[derive(Debug, Clone, Default)]
pub(super) struct Page {
    /// The page's items.
    pub(super) items: Vec<Item>,
    /// DynamoDB's `LastEvaluatedKey`.
    pub(super) last_evaluated_key: Option<Item>,
}

impl From<ScanOutput> for Page {
    fn from(out: ScanOutput) -> Self {
        Self {
            items: out.items.unwrap_or_default(),
            last_evaluated_key: out.last_evaluated_key,
        }
    }
}

impl From<QueryOutput> for Page {
    fn from(out: QueryOutput) -> Self {
        Self {
            items: out.items.unwrap_or_default(),
            last_evaluated_key: out.last_evaluated_key,
        }
    }
}

/// What a decoder made of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decoded<T> {
    /// Keep it.
    Keep(T),
    /// Not for this reader (one of our reserved items): skip it silently.
    Skip,
    /// It cannot be read: skip it, and report it (counted, logged once per key).
    Bad {
        /// The item's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A bound was reached: stop reading, keep what was kept so far.
    Stop,
}

/// What [`read_pages`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Paged<T> {
    /// The items kept, in the order read.
    pub(super) items: Vec<T>,
    /// Pages read.
    pub(super) pages: usize,
    /// The page bound stopped the reading before the last page: the items are partial.
    pub(super) out_of_pages: bool,
}

/// Where the page after one with `LastEvaluatedKey` `last` starts: `None` at the end (no
/// key, or an empty one).
pub(super) fn next_start(last: Option<Item>) -> Option<Item> {
    last.filter(|k| !k.is_empty())
}

/// Reads pages until the last one (or `max_pages` of them, or until `decode` says stop).
/// `send` makes one request starting at the `ExclusiveStartKey` it is given (`None`: the
/// first page) and counts it; `decode` decides on every item of every page, in order;
/// `bad` is told every item `decode` could not read, with why.
///
/// # Errors
/// The first failed request's error; nothing read is returned then.
pub(super) async fn read_pages<T, S, F, D, B>(
    max_pages: usize,
    mut send: S,
    mut decode: D,
    mut bad: B,
) -> Result<Paged<T>, LeaseError>
where
    S: FnMut(Option<Item>) -> F,
    F: Future<Output = Result<Page, LeaseError>>,
    D: FnMut(&Item) -> Decoded<T>,
    B: FnMut(&str, &str),
{
    let mut paged = Paged {
        items: Vec::new(),
        pages: 0,
        out_of_pages: false,
    };
    let mut start: Option<Item> = None;
    loop {
        if paged.pages >= max_pages {
            paged.out_of_pages = true;
            return Ok(paged);
        }
        let page = send(start.take()).await?;
        paged.pages += 1;
        for item in &page.items {
            match decode(item) {
                Decoded::Keep(t) => paged.items.push(t),
                Decoded::Skip => {}
                Decoded::Bad { key, why } => bad(&key, &why),
                Decoded::Stop => return Ok(paged),
            }
        }
        match next_start(page.last_evaluated_key) {
            Some(k) => start = Some(k),
            None => return Ok(paged),
        }
    }
}

/// Records that the item `key` was reported; `true` the first time (and when the record
/// is unusable: better a repeated log line than a lost one).
pub(super) fn first_report(reported: &Mutex<HashSet<String>>, key: &str) -> bool {
    reported
        .lock()
        .map(|mut r| r.insert(key.to_string()))
        .unwrap_or(true)
}

/// Most segments of a parallel scan.
pub const MAX_SCAN_SEGMENTS: u32 = 16;

/// How many segments to scan a table of `bytes` in (as the last scan found it): one per
/// 1 MB page it takes, so each segment is about one page, at least 1 and at most
/// [`MAX_SCAN_SEGMENTS`]. Costs nothing: the same items are read, the read units are the
/// same (rounded up to 4 KB per segment's page, not per page of one scan).
pub fn scan_segments(bytes: usize) -> u32 {
    let pages = bytes.div_ceil(1 << 20);
    u32::try_from(pages)
        .unwrap_or(MAX_SCAN_SEGMENTS)
        .clamp(1, MAX_SCAN_SEGMENTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attr;
    use aws_sdk_dynamodb::types::AttributeValue;

    fn item(key: &str) -> Item {
        [(
            attr::LEASE_KEY.to_string(),
            AttributeValue::S(key.to_string()),
        )]
        .into_iter()
        .collect()
    }

    fn page(keys: &[&str], last: Option<Item>) -> Page {
        Page {
            items: keys.iter().map(|k| item(k)).collect(),
            last_evaluated_key: last,
        }
    }

    fn failed() -> LeaseError {
        LeaseError::Dynamo {
            op: "Scan",
            table: "t".into(),
            detail: "no such page".into(),
        }
    }

    /// Keeps every key but `skip*` (skipped), `bad*` (bad) and `stop` (stop).
    fn decode(item: &Item) -> Decoded<String> {
        let key = super::super::codec::lease_key(item);
        if key.starts_with("skip") {
            Decoded::Skip
        } else if key.starts_with("bad") {
            Decoded::Bad {
                why: format!("{key} is bad"),
                key,
            }
        } else if key == "stop" {
            Decoded::Stop
        } else {
            Decoded::Keep(key)
        }
    }

    /// Reads `pages` with at most `max_pages`: the result, the start keys asked for, the
    /// bad items reported.
    async fn read(
        pages: Vec<Page>,
        max_pages: usize,
    ) -> (
        Result<Paged<String>, LeaseError>,
        Vec<Option<Item>>,
        Vec<(String, String)>,
    ) {
        let mut pages = pages.into_iter();
        let mut starts = Vec::new();
        let mut bad = Vec::new();
        let out = read_pages(
            max_pages,
            |start| {
                starts.push(start);
                std::future::ready(pages.next().ok_or_else(failed))
            },
            decode,
            |key, why| bad.push((key.to_string(), why.to_string())),
        )
        .await;
        (out, starts, bad)
    }

    #[test]
    fn paging_ends_without_a_last_evaluated_key_or_with_an_empty_one() {
        assert_eq!(next_start(None), None);
        assert_eq!(next_start(Some(Item::new())), None);
        assert_eq!(next_start(Some(item("a"))), Some(item("a")));
    }

    #[tokio::test]
    async fn pages_follow_the_last_evaluated_key() {
        let (out, starts, bad) = read(
            vec![
                page(&["a", "b"], Some(item("b"))),
                page(&["c"], Some(Item::new())),
                page(&["never"], None),
            ],
            usize::MAX,
        )
        .await;
        let Ok(out) = out else {
            panic!("every page read");
        };
        assert_eq!(out.items, vec!["a", "b", "c"]);
        assert_eq!(out.pages, 2);
        assert!(!out.out_of_pages);
        assert_eq!(starts, vec![None, Some(item("b"))]);
        assert!(bad.is_empty());
    }

    #[tokio::test]
    async fn bad_items_are_reported_and_skipped_and_reading_goes_on() {
        let (out, _, bad) = read(
            vec![
                page(&["a", "bad1", "skip1"], Some(item("skip1"))),
                page(&["bad2", "b"], None),
            ],
            usize::MAX,
        )
        .await;
        assert_eq!(
            out.map(|p| p.items).ok(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            bad,
            vec![
                ("bad1".to_string(), "bad1 is bad".to_string()),
                ("bad2".to_string(), "bad2 is bad".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn a_stop_keeps_what_was_read_and_asks_for_no_more() {
        let (out, starts, bad) = read(
            vec![
                page(&["a"], Some(item("a"))),
                page(&["b", "stop", "c", "bad"], Some(item("bad"))),
                page(&["d"], None),
            ],
            usize::MAX,
        )
        .await;
        assert_eq!(
            out.ok(),
            Some(Paged {
                items: vec!["a".to_string(), "b".to_string()],
                pages: 2,
                out_of_pages: false,
            })
        );
        assert_eq!(starts.len(), 2);
        assert!(bad.is_empty());
    }

    #[tokio::test]
    async fn the_page_bound_stops_before_the_next_request() {
        let pages = || {
            vec![
                page(&["a"], Some(item("a"))),
                page(&["b"], Some(item("b"))),
                page(&["c"], None),
            ]
        };
        let (out, starts, _) = read(pages(), 2).await;
        assert_eq!(
            out.ok(),
            Some(Paged {
                items: vec!["a".to_string(), "b".to_string()],
                pages: 2,
                out_of_pages: true,
            })
        );
        assert_eq!(starts.len(), 2);
        // Exactly as many pages as there are: not truncated.
        let (out, _, _) = read(pages(), 3).await;
        assert_eq!(
            out.map(|p| (p.pages, p.out_of_pages)).ok(),
            Some((3, false))
        );
        // No page at all.
        let (out, starts, _) = read(pages(), 0).await;
        assert_eq!(out.map(|p| (p.pages, p.out_of_pages)).ok(), Some((0, true)));
        assert!(starts.is_empty());
    }

    #[tokio::test]
    async fn a_failed_request_fails_the_read() {
        let (out, starts, _) = read(vec![page(&["a"], Some(item("a")))], usize::MAX).await;
        assert!(matches!(out, Err(LeaseError::Dynamo { op: "Scan", .. })));
        assert_eq!(starts.len(), 2);
    }

    #[test]
    fn a_bad_item_is_logged_once_per_key() {
        let reported = Mutex::new(HashSet::new());
        assert!(first_report(&reported, "k1"));
        assert!(!first_report(&reported, "k1"));
        assert!(first_report(&reported, "k2"));
    }

    #[test]
    fn a_table_is_scanned_in_a_segment_per_page_it_takes() {
        assert_eq!(scan_segments(0), 1);
        assert_eq!(scan_segments(900_000), 1);
        // 10,000 leases of ≈ 330 B and 500 heartbeats: 4 pages.
        assert_eq!(scan_segments(3_600_000), 4);
        assert_eq!(scan_segments(100 << 20), MAX_SCAN_SEGMENTS);
    }
}
