//! Unit tests of the lease table's pure parts (the I/O paths are covered by the
//! integration tests against a local DynamoDB emulator).

use super::*;

#[test]
fn a_bounded_scan_skips_oversized_items_and_stops_at_its_total() {
    let b = ScanBounds {
        attributes: None,
        max_item_bytes: 100,
        max_total_bytes: 250,
        max_pages: 2,
        page_items: None,
    };
    let mut r = ScanReport::default();
    assert_eq!(r.admit(100, &b), Admit::Keep);
    assert_eq!(r.admit(101, &b), Admit::Oversized);
    assert_eq!(r.admit(100, &b), Admit::Keep);
    assert_eq!(r.admit(60, &b), Admit::Stop);
    assert_eq!(
        r,
        ScanReport {
            pages: 0,
            bytes: 200,
            oversized: 1,
            truncated: true
        }
    );
    let mut u = ScanReport::default();
    assert_eq!(u.admit(usize::MAX, &ScanBounds::UNBOUNDED), Admit::Keep);
}
