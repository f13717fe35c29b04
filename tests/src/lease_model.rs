//! The lease table's cost model shared by the lease simulations (`lease_sim`, `failover_sim`):
//! items shaped as the worker writes them, and request units counted as DynamoDB bills
//! them (client-side formulas over item sizes, not a measurement: no emulator reports real
//! consumed capacity).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_worker::lease::model::Lease;
use kinesis_worker::lease::table::item_size;

/// On-demand price, us-east-1: dollars per million read request units.
pub const RRU_PRICE: f64 = 0.125;
/// On-demand price, us-east-1: dollars per million write request units.
pub const WRU_PRICE: f64 = 0.625;
/// Seconds in a 30-day month.
pub const MONTH: f64 = 30.0 * 24.0 * 3600.0;

/// Request units, counted as DynamoDB bills them.
#[derive(Default, Clone, Copy)]
pub struct Units {
    /// Read units × 2 (an eventually consistent read of ≤ 4 KB is 1).
    pub read_half: u64,
    /// Write units of the table.
    pub write: u64,
    /// Write units of the owner index.
    pub index: u64,
}

impl Units {
    /// A read returning `bytes` (strongly consistent or not).
    pub fn read(&mut self, bytes: usize, consistent: bool) {
        let u = bytes.div_ceil(4096).max(1) as u64;
        self.read_half += if consistent { 2 * u } else { u };
    }
    /// A write of an item of `bytes`, and `index` index writes.
    pub fn write(&mut self, bytes: usize, index: u64) {
        self.write += bytes.div_ceil(1024).max(1) as u64;
        self.index += index;
    }
    /// The units counted since `o`.
    pub fn minus(self, o: Units) -> Units {
        Units {
            read_half: self.read_half - o.read_half,
            write: self.write - o.write,
            index: self.index - o.index,
        }
    }
}

/// Item shapes as the worker writes them.
pub struct Shapes {
    /// Shaped as `lease_bench` writes them (short worker ids, no sequence numbers).
    pub bench: bool,
}

impl Shapes {
    /// Worker `i`'s id.
    pub fn worker_id(&self, i: usize) -> String {
        if self.bench {
            format!("w{i}")
        } else {
            // A Deployment's pod name.
            format!("kinesis-worker-7d9f8c6b5-{i:05}")
        }
    }

    /// The size of `l`'s item.
    pub fn lease_item(&self, l: &Lease) -> usize {
        let s = |v: &str| AttributeValue::S(v.to_string());
        let n = |v: u64| AttributeValue::N(v.to_string());
        let mut item: HashMap<String, AttributeValue> = HashMap::new();
        item.insert("leaseKey".into(), s(&l.shard_id));
        item.insert("leaseCounter".into(), n(l.counter));
        let cp = if self.bench {
            "TRIM_HORIZON".to_string()
        } else {
            // A sequence number: 56 digits.
            "4959".to_string() + &"0".repeat(52)
        };
        item.insert("checkpoint".into(), s(&cp));
        item.insert("checkpointSubSequenceNumber".into(), n(0));
        item.insert("ownerSwitchesSinceCheckpoint".into(), n(1));
        item.insert("startingHashKey".into(), s(&"1".repeat(38)));
        item.insert("endingHashKey".into(), s(&"2".repeat(38)));
        if let Some(o) = &l.owner {
            item.insert("leaseOwner".into(), s(o));
        }
        if let Some(h) = &l.handoff_to {
            item.insert("koHandoffTo".into(), s(h));
        }
        if l.assigned {
            item.insert("koAssigned".into(), AttributeValue::Bool(true));
        }
        item_size(&item)
    }

    /// The size of `l`'s owner-index entry.
    pub fn index_entry(&self, l: &Lease) -> usize {
        let owner = l.owner.as_deref().unwrap_or("");
        "leaseKey".len()
            + l.shard_id.len()
            + "leaseOwner".len()
            + owner.len()
            + "leaseCounter".len()
            + 4
            + l.handoff_to
                .as_ref()
                .map_or(0, |h| "koHandoffTo".len() + h.len())
    }

    /// The size of a heartbeat item of a worker holding `shards` leases.
    pub fn heartbeat_item(&self, worker: &str, shards: usize) -> usize {
        "leaseKey".len()
            + "kinesis-operator:worker:".len()
            + worker.len()
            + "koWorkerId".len()
            + worker.len()
            + "koHeartbeat".len()
            + 8
            + "koDraining".len()
            + 1
            + "koLag".len()
            // lease_bench has no record pipeline, so no lag to report.
            + if self.bench { 0 } else { shards * ("shardId-000000000000".len() + 8) }
    }
}

/// (RRU/s, WRU/s including index writes, dollars a month on demand) of `u` over `secs`.
pub fn cost(u: Units, secs: f64) -> (f64, f64, f64) {
    let rru = u.read_half as f64 / 2.0 / secs;
    let wru = (u.write + u.index) as f64 / secs;
    (rru, wru, (rru * RRU_PRICE + wru * WRU_PRICE) * MONTH / 1e6)
}
