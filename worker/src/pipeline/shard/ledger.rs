//! A shard's share of the worker-wide read-ahead budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, watch};

/// One shard's share of the worker-wide read-ahead budget.
///
/// # Guarantees
/// A shard whose delivery is retrying (the app fails its batch) holds none of the budget:
/// [`Ledger::stall`] gives back every permit of the shard, and while stalled its reader
/// neither reads ahead nor waits for budget. So a stuck shard never slows the others; it
/// keeps at most the pages it had already read (the one in delivery, one waiting, one being
/// read), outside the budget.
pub(super) struct Ledger {
    permits: std::sync::Mutex<HashMap<u64, OwnedSemaphorePermit>>,
    next: AtomicU64,
    /// Whether delivery is retrying (the reader waits while it is).
    pub(super) stalled: watch::Sender<bool>,
}

impl Ledger {
    pub(super) fn new() -> Self {
        Self {
            permits: std::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            stalled: watch::Sender::new(false),
        }
    }

    pub(super) fn ticket(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn is_stalled(&self) -> bool {
        *self.stalled.borrow()
    }

    /// Keeps `permit` for `ticket`, unless the shard stalled meanwhile (then it goes back).
    pub(super) fn hold(&self, ticket: u64, permit: OwnedSemaphorePermit) {
        if let Ok(mut p) = self.permits.lock()
            && !self.is_stalled()
        {
            p.insert(ticket, permit);
        }
    }

    /// The item `ticket` was delivered (or given up): its budget goes back.
    pub(super) fn release(&self, ticket: u64) {
        if let Ok(mut p) = self.permits.lock() {
            p.remove(&ticket);
        }
    }

    /// Delivery is retrying: give back everything and read no further ahead.
    pub(super) fn stall(&self) {
        if !self.is_stalled() {
            self.stalled.send_replace(true);
        }
        if let Ok(mut p) = self.permits.lock() {
            p.clear();
        }
    }

    /// Delivery moves again.
    pub(super) fn unstall(&self) {
        if self.is_stalled() {
            self.stalled.send_replace(false);
        }
    }
}
