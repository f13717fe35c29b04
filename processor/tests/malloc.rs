//! `malloc::tune_for_batches` in a process of its own: no other test allocates beside it.

use kinesis_processor::malloc::{Tuning, tune_for_batches};

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Allocates, writes every page of, and frees buffers of 1 to 16 MiB, like a reader whose
/// pages grow; returns the page faults it took.
fn batch_round() -> u64 {
    let before = minor_faults();
    for mib in [1usize, 2, 4, 8, 16, 3, 12] {
        let buf = vec![1u8; mib * 1024 * 1024];
        std::hint::black_box(&buf);
    }
    minor_faults() - before
}

#[test]
fn batch_sized_buffers_are_reused_instead_of_faulted_in_again() {
    let tuning = tune_for_batches();
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        assert_eq!(tuning, Tuning::LeftToGlibcTunables);
        return;
    }
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert_eq!(tuning, Tuning::Unsupported);
        return;
    }
    assert_eq!(tuning, Tuning::Set);
    let first = batch_round();
    let again: Vec<u64> = (0..3).map(|_| batch_round()).collect();
    // 46 MiB written a round is 11,776 pages; once the heap has grown, a round reuses it.
    assert!(
        first > 2_000,
        "the first round faulted in only {first} pages"
    );
    for faults in again {
        assert!(
            faults < first / 20,
            "a later round took {faults} page faults (first round {first}): freed buffers went back to the kernel"
        );
    }
}
