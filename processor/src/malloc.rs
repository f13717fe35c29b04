//! glibc malloc settings for a process that moves multi-megabyte batches (the worker and a Rust
//! app: a GetRecords page, the batch encoded for the app, the batch the app receives).
//!
//! glibc serves an allocation above its mmap threshold with fresh pages from the kernel and
//! gives them back when it is freed, and gives back free memory at the top of its heaps once it
//! exceeds the trim threshold. Both thresholds start small (128 KiB) and only grow as
//! mmapped blocks are freed, so a reader that allocates and frees a few 1–10 MB buffers per page
//! keeps taking page faults on new, zeroed pages: a third of the worker's CPU at 100-byte
//! records, measured (docs/BENCHMARKS.md, "glibc's thresholds"). With the thresholds below,
//! those buffers are reused from the heap.
//!
//! # Cost
//! Up to [`TRIM_THRESHOLD`] of freed memory may stay resident at the top of each heap instead
//! of going back to the kernel; memory in use is unchanged.

/// Allocations up to this size come from the heap, not from their own mmap (glibc's largest
/// accepted value on 64-bit, half its 64 MiB heap size).
pub const MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;

/// Free memory at a heap's top that is given back to the kernel once it exceeds this.
pub const TRIM_THRESHOLD: i32 = 64 * 1024 * 1024;

/// What [`tune_for_batches`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds were set.
    Set,
    /// `GLIBC_TUNABLES` is set: the operator's or user's own settings win, nothing changed.
    LeftToGlibcTunables,
    /// Not glibc (or glibc refused a value): nothing changed.
    Unsupported,
}

/// Sets glibc's mmap and trim thresholds for batch-sized buffers ([`MMAP_THRESHOLD`],
/// [`TRIM_THRESHOLD`]) unless `GLIBC_TUNABLES` is set (set it, even empty, to keep glibc's
/// defaults).
///
/// Call it first in `main`, before any other thread starts (before the tokio runtime is
/// built): glibc's `mallopt` is not meant to race with allocations on other threads.
pub fn tune_for_batches() -> Tuning {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return Tuning::LeftToGlibcTunables;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() -> Tuning {
    // SAFETY: `mallopt` takes two integers and changes only malloc's parameters; the caller
    // runs it before other threads exist (see `tune_for_batches`), so no allocation races it.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    };
    if ok { Tuning::Set } else { Tuning::Unsupported }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> Tuning {
    Tuning::Unsupported
}
