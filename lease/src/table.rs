//! The lease table in DynamoDB: one item per shard (KCL's layout) and one heartbeat item
//! per worker. Every write that depends on ownership is conditional on the lease's owner and
//! counter, so a worker that lost a lease cannot change it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};

use super::assign::OwnedLease;
use super::checkpoint::Checkpoint;
use super::model::{
    ASSIGNER_KEY, AssignerItem, Heartbeat, Lease, OWNER_INDEX, TableSnapshot, attr,
};

mod codec;
mod paging;
#[cfg(test)]
mod tests;

pub use codec::{bounded_key, item_size};
pub use paging::{Admit, MAX_SCAN_SEGMENTS, ScanBounds, ScanReport, scan_segments};

use codec::{Entry, Item, grant_value, n, s};
use paging::{Decoded, Page, read_pages};

/// How long a new table may take to become ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// What can go wrong with the lease table.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The table exists with another key schema.
    #[error(
        "lease table `{table}` has key schema {found}, but a lease table has one hash key `leaseKey` (string): \
         choose another application name, or delete the table if it is not a lease table"
    )]
    WrongKeySchema {
        /// The table.
        table: String,
        /// Its key schema, as DynamoDB described it.
        found: String,
    },
    /// DynamoDB refused for lack of permission.
    #[error(
        "not allowed to {action} on lease table `{table}`: grant dynamodb:{action} on it to this worker's role ({detail})"
    )]
    AccessDenied {
        /// The table.
        table: String,
        /// The DynamoDB action, e.g. `CreateTable`.
        action: &'static str,
        /// DynamoDB's message.
        detail: String,
    },
    /// The table did not become ACTIVE in time.
    #[error(
        "lease table `{table}` is not ACTIVE after {0:?}; check it in the DynamoDB console",
        TABLE_ACTIVE_TIMEOUT
    )]
    NotActive {
        /// The table.
        table: String,
    },
    /// The lease changed under us: another worker owns it now, or its counter moved.
    #[error(
        "lease on shard {shard_id} lost: another worker took it (or it changed) since counter {counter}"
    )]
    LeaseLost {
        /// The shard.
        shard_id: String,
        /// The counter this worker held it at.
        counter: u64,
    },
    /// A checkpoint would move backwards.
    #[error(
        "checkpoint for shard {shard_id} refused: {to} is before the current checkpoint {from}"
    )]
    CheckpointBackwards {
        /// The shard.
        shard_id: String,
        /// The current checkpoint.
        from: Checkpoint,
        /// The refused one.
        to: Checkpoint,
    },
    /// An item that is not a valid lease or heartbeat.
    #[error("lease table `{table}`: item `{key}` is malformed: {reason}")]
    BadItem {
        /// The table.
        table: String,
        /// The item's `leaseKey`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Any other DynamoDB failure (network, throttling after the SDK's retries, …):
    /// transient, try again; it says nothing about ownership.
    #[error("DynamoDB {op} on lease table `{table}` failed: {detail}")]
    Dynamo {
        /// The operation.
        op: &'static str,
        /// The table.
        table: String,
        /// The SDK error with its causes.
        detail: String,
    },
}

impl LeaseError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::WrongKeySchema { .. } => "wrong_key_schema",
            Self::AccessDenied { .. } => "access_denied",
            Self::NotActive { .. } => "not_active",
            Self::LeaseLost { .. } => "lease_lost",
            Self::CheckpointBackwards { .. } => "checkpoint_backwards",
            Self::BadItem { .. } => "bad_item",
            Self::Dynamo { .. } => "dynamodb",
        }
    }
}

/// A lease this worker holds: the shard and the counter it took it at (its fencing token),
/// and the last checkpoint it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The shard.
    pub shard_id: String,
    /// The counter value after our take: every write of ours is conditional on it.
    pub counter: u64,
    /// The checkpoint in the table as of our last read or write.
    pub checkpoint: Checkpoint,
    /// The lease's pinned start, with checkpoint `AT_TIMESTAMP` (see
    /// [`LeaseTable::pin_start`]).
    pub start_timestamp_ms: Option<i64>,
}

/// Requests this process made to the lease table, counted at the client (for metrics and
/// the cost benchmark).
#[derive(Debug, Default)]
pub struct TableCounters {
    /// Read requests (Scan pages, DescribeTable).
    pub reads: AtomicU64,
    /// Items returned by scans.
    pub items_read: AtomicU64,
    /// Write requests (PutItem, UpdateItem, DeleteItem), failed conditional ones included.
    pub writes: AtomicU64,
    /// Of those, heartbeat writes.
    pub heartbeat_writes: AtomicU64,
    /// Of those, checkpoint writes.
    pub checkpoint_writes: AtomicU64,
    /// Items a scan skipped because they are neither a lease nor a heartbeat we can read.
    pub bad_items: AtomicU64,
    /// Read request units, doubled (so an eventually consistent unit is 1), as DynamoDB bills
    /// them from the sizes of the items returned: a Scan or Query page rounds its items'
    /// total size up to 4 KB, a GetItem its item's; strongly consistent reads cost double.
    pub read_half_units: AtomicU64,
    /// Write request units: a heartbeat by its item size (rounded up to 1 KB), every other
    /// write 1 (lease items stay under 1 KB), failed conditional writes included.
    pub write_units: AtomicU64,
    /// Writes to the owner index that table writes cause (2 when a lease changes owner, 1
    /// when it gets or loses one or a hand-over request changes), if the index exists.
    pub index_writes: AtomicU64,
    /// Query pages on the owner index.
    pub queries: AtomicU64,
    /// GetItem requests (the assigner item, the assigner's heartbeat).
    pub gets: AtomicU64,
}

impl TableCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one read request that returned `bytes` of items.
    fn read(&self, bytes: usize, consistent: bool) {
        let units = (bytes.div_ceil(4096)).max(1) as u64;
        Self::add_n(
            &self.read_half_units,
            if consistent { units * 2 } else { units },
        );
    }

    /// Counts one write of an item of about `bytes`, causing `index` owner-index writes.
    fn write(&self, bytes: usize, index: u64) {
        Self::add(&self.writes);
        Self::add_n(&self.write_units, bytes.div_ceil(1024).max(1) as u64);
        Self::add_n(&self.index_writes, index);
    }
}

/// The lease table of one application.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    name: String,
    counters: Arc<TableCounters>,
    /// Keys of unreadable items already logged.
    reported: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// How a skipped item is logged: a scan's wording (key bounded), or the owner-index
/// query's.
#[derive(Debug, Clone, Copy)]
enum BadItemLog {
    /// Scans: "skipping a lease table item that cannot be read".
    TableItem,
    /// [`LeaseTable::query_owned`]: "skipping a lease that cannot be read".
    OwnedLease,
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn is_access_denied<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "AccessDeniedException" || c == "UnauthorizedOperation")
}

impl LeaseTable {
    /// The table's name (the application name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests made through this table (shared by its clones).
    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    fn dynamo<E, R>(&self, op: &'static str, e: SdkError<E, R>) -> LeaseError
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        LeaseError::Dynamo {
            op,
            table: self.name.clone(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }

    /// The lease table `name` as already opened once (its key schema checked, ACTIVE): no
    /// DescribeTable. For a caller that opens the same table again and again (the operator's
    /// reconciles); a table deleted since shows up as the next call's error.
    pub fn opened(client: Client, name: &str) -> Self {
        Self {
            client,
            name: name.to_string(),
            counters: Arc::default(),
            reported: Arc::default(),
        }
    }

    /// Opens the lease table `name`, creating it (on-demand billing) if it does not exist
    /// and `create` is true, and waiting until it is ACTIVE.
    ///
    /// # Errors
    /// [`LeaseError::WrongKeySchema`] if the table exists with another key;
    /// [`LeaseError::AccessDenied`] naming the missing permission; [`LeaseError::NotActive`]
    /// if it does not become ACTIVE within two minutes; [`LeaseError::Dynamo`] otherwise.
    pub async fn open(client: Client, name: &str, create: bool) -> Result<Self, LeaseError> {
        let create = create.then(Vec::new);
        Ok(Self::open_tagged(client, name, create).await?.0)
    }

    /// As [`LeaseTable::open`], creating a missing table with `tags` when `create` is `Some`;
    /// also returns whether this call created it (so its creator can mark it as its own).
    ///
    /// # Errors
    /// As [`LeaseTable::open`].
    pub async fn open_tagged(
        client: Client,
        name: &str,
        create: Option<Vec<(String, String)>>,
    ) -> Result<(Self, bool), LeaseError> {
        let table = Self {
            client,
            name: name.to_string(),
            counters: Arc::default(),
            reported: Arc::default(),
        };
        let mut created = false;
        let described = table.client.describe_table().table_name(name).send().await;
        match described {
            Ok(out) => {
                if let Some(t) = out.table() {
                    table.check_schema(t.key_schema(), t.attribute_definitions())?;
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception())
                    && create.is_some() =>
            {
                created = table.create(create.unwrap_or_default()).await?;
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                return Err(LeaseError::Dynamo {
                    op: "DescribeTable",
                    table: name.to_string(),
                    detail: "the table does not exist (the operator creates it; or start the worker with table creation enabled)".into(),
                });
            }
            Err(e) if is_access_denied(&e) => {
                return Err(LeaseError::AccessDenied {
                    table: name.to_string(),
                    action: "DescribeTable",
                    detail: DisplayErrorContext(e).to_string(),
                });
            }
            Err(e) => return Err(table.dynamo("DescribeTable", e)),
        }
        table.wait_active().await?;
        Ok((table, created))
    }

    fn check_schema(
        &self,
        keys: &[KeySchemaElement],
        defs: &[AttributeDefinition],
    ) -> Result<(), LeaseError> {
        let hash_is_lease_key = keys.len() == 1
            && keys[0].attribute_name() == attr::LEASE_KEY
            && keys[0].key_type() == &KeyType::Hash
            && defs.iter().any(|d| {
                d.attribute_name() == attr::LEASE_KEY
                    && d.attribute_type() == &ScalarAttributeType::S
            });
        if hash_is_lease_key {
            return Ok(());
        }
        let found = keys
            .iter()
            .map(|k| {
                let ty = defs
                    .iter()
                    .find(|d| d.attribute_name() == k.attribute_name())
                    .map(|d| d.attribute_type().as_str().to_string())
                    .unwrap_or_default();
                format!("{} {} ({ty})", k.key_type().as_str(), k.attribute_name())
            })
            .collect::<Vec<_>>()
            .join(", ");
        Err(LeaseError::WrongKeySchema {
            table: self.name.clone(),
            found: format!("[{found}]"),
        })
    }

    /// Creates the table; `false` when someone else created it at the same moment.
    async fn create(&self, tags: Vec<(String, String)>) -> Result<bool, LeaseError> {
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| LeaseError::Dynamo {
            op: "CreateTable",
            table: self.name.clone(),
            detail: e.to_string(),
        };
        let def = AttributeDefinition::builder()
            .attribute_name(attr::LEASE_KEY)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(invalid)?;
        let key = KeySchemaElement::builder()
            .attribute_name(attr::LEASE_KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(invalid)?;
        let owner_def = AttributeDefinition::builder()
            .attribute_name(attr::LEASE_OWNER)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(invalid)?;
        let res = self
            .client
            .create_table()
            .table_name(&self.name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(def)
            .attribute_definitions(owner_def)
            .key_schema(key)
            .global_secondary_indexes(owner_index(None).map_err(invalid)?)
            .set_tags(if tags.is_empty() {
                None
            } else {
                Some(
                    tags.into_iter()
                        .map(|(k, v)| {
                            aws_sdk_dynamodb::types::Tag::builder()
                                .key(k)
                                .value(v)
                                .build()
                                .map_err(invalid)
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            })
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // Another worker (or the operator) created it at the same moment.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) =>
            {
                Ok(false)
            }
            Err(e) if is_access_denied(&e) => Err(LeaseError::AccessDenied {
                table: self.name.clone(),
                action: "CreateTable",
                detail: DisplayErrorContext(e).to_string(),
            }),
            Err(e) => Err(self.dynamo("CreateTable", e)),
        }
    }

    async fn wait_active(&self) -> Result<(), LeaseError> {
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.name)
                .send()
                .await
                .map_err(|e| self.dynamo("DescribeTable", e))?;
            if let Some(t) = out.table() {
                self.check_schema(t.key_schema(), t.attribute_definitions())?;
                if t.table_status() == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LeaseError::NotActive {
                    table: self.name.clone(),
                });
            }
            // DynamoDB offers no notification for table status: poll, as its own waiter does.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads every item (strongly consistent, all pages).
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`] on a failed page. An item that is neither a readable lease nor a
    /// heartbeat is not an error: it is skipped, counted in [`TableCounters::bad_items`] (every
    /// scan) and logged once per key with what is wrong, so one bad item never stops a fleet.
    pub async fn scan(&self) -> Result<TableSnapshot, LeaseError> {
        self.scan_with(true).await
    }

    /// [`LeaseTable::scan`], strongly or eventually consistent (half the read units; an item
    /// may be a moment old, never newer than the table).
    ///
    /// # Errors
    /// As [`LeaseTable::scan`].
    pub async fn scan_with(&self, consistent: bool) -> Result<TableSnapshot, LeaseError> {
        self.scan_bounded(consistent, &ScanBounds::UNBOUNDED)
            .await
            .map(|(snapshot, _)| snapshot)
    }

    /// Scans the table as [`LeaseTable::scan_with`] does, within `bounds`: only the
    /// attributes it names are read, an item larger than its bound is skipped (counted and
    /// logged as a bad item), and the scan stops after its pages or bytes (the snapshot is
    /// then partial, and the report says so).
    ///
    /// # Guarantees
    /// Memory: at most one page (≤ 1 MB, DynamoDB's limit) plus `max_total_bytes` of items
    /// at once. Read cost: at most `max_pages` pages.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`] (and the kinds it maps to).
    pub async fn scan_bounded(
        &self,
        consistent: bool,
        bounds: &ScanBounds,
    ) -> Result<(TableSnapshot, ScanReport), LeaseError> {
        self.scan_segment(consistent, bounds, None).await
    }

    /// [`LeaseTable::scan_with`] as DynamoDB's parallel scan: `segments` scans at once, each
    /// over its own part of the keys, merged (segment by segment). The same items and read
    /// units as one scan, in about the time of one segment's pages instead of every page one
    /// after another: at 10,000 leases (≈ 3.5 MB, 4 pages) ≈ 1 page's time
    /// (`failover_sim`). Use [`scan_segments`] for how many.
    ///
    /// # Errors
    /// As [`LeaseTable::scan_with`]: any segment failing fails the scan.
    pub async fn scan_parallel(
        &self,
        consistent: bool,
        segments: u32,
    ) -> Result<(TableSnapshot, ScanReport), LeaseError> {
        if segments <= 1 {
            return self.scan_bounded(consistent, &ScanBounds::UNBOUNDED).await;
        }
        let total = i32::try_from(segments).unwrap_or(i32::MAX);
        let scans = (0..total)
            .map(|s| self.scan_segment(consistent, &ScanBounds::UNBOUNDED, Some((s, total))));
        let mut snapshot = TableSnapshot::default();
        let mut report = ScanReport::default();
        for part in futures_util::future::join_all(scans).await {
            let (s, r) = part?;
            snapshot.leases.extend(s.leases);
            snapshot.heartbeats.extend(s.heartbeats);
            report.pages += r.pages;
            report.bytes += r.bytes;
            report.oversized += r.oversized;
            report.truncated |= r.truncated;
        }
        Ok((snapshot, report))
    }

    /// One scan, of the whole table or of `segment` (its number, of how many).
    async fn scan_segment(
        &self,
        consistent: bool,
        bounds: &ScanBounds,
        segment: Option<(i32, i32)>,
    ) -> Result<(TableSnapshot, ScanReport), LeaseError> {
        let mut report = ScanReport::default();
        let this = self;
        let paged = read_pages(
            bounds.max_pages,
            move |start| {
                TableCounters::add(&this.counters.reads);
                let mut req = this
                    .client
                    .scan()
                    .table_name(&this.name)
                    .consistent_read(consistent)
                    .set_limit(bounds.page_items)
                    .set_segment(segment.map(|(s, _)| s))
                    .set_total_segments(segment.map(|(_, n)| n))
                    .set_exclusive_start_key(start);
                if let Some(attributes) = bounds.attributes {
                    let names: Vec<String> =
                        (0..attributes.len()).map(|i| format!("#a{i}")).collect();
                    req = req.projection_expression(names.join(", "));
                    for (n, a) in names.iter().zip(attributes) {
                        req = req.expression_attribute_names(n.clone(), *a);
                    }
                }
                async move {
                    let out = req.send().await.map_err(|e| this.dynamo("Scan", e))?;
                    let page = Page::from(out);
                    this.counters
                        .read(page.items.iter().map(item_size).sum(), consistent);
                    this.counters
                        .items_read
                        .fetch_add(page.items.len() as u64, Ordering::Relaxed);
                    Ok::<Page, LeaseError>(page)
                }
            },
            |item| {
                let size = item_size(item);
                let key = codec::lease_key(item);
                match report.admit(size, bounds) {
                    Admit::Keep => {}
                    Admit::Oversized => {
                        let why = format!(
                            "{size} bytes, more than {} a lease or heartbeat needs",
                            bounds.max_item_bytes
                        );
                        return Decoded::Bad { key, why };
                    }
                    Admit::Stop => return Decoded::Stop,
                }
                // One malformed item must not stop the fleet's scans: it is skipped, counted
                // and logged (its shard is not processed until the item is fixed; a lease
                // for it cannot be created over it either, creation is conditional). The
                // operator's claim item, and any later item of ours, is not a lease.
                match codec::entry_from_item(&key, item) {
                    Ok(Some(entry)) => Decoded::Keep(entry),
                    Ok(None) => Decoded::Skip,
                    Err(reason) => {
                        let why = self.bad(&key, reason).to_string();
                        Decoded::Bad { key, why }
                    }
                }
            },
            |key, why| self.report_bad(key, why, BadItemLog::TableItem),
        )
        .await?;
        report.pages = paged.pages;
        if paged.out_of_pages {
            report.truncated = true;
        }
        let mut snapshot = TableSnapshot::default();
        for entry in paged.items {
            match entry {
                Entry::Heartbeat(h) => snapshot.heartbeats.push(h),
                Entry::Lease(l) => snapshot.leases.push(l),
            }
        }
        Ok((snapshot, report))
    }

    /// Counts a skipped item, and logs it the first time (in the wording `log` names).
    fn report_bad(&self, key: &str, why: &str, log: BadItemLog) {
        TableCounters::add(&self.counters.bad_items);
        if paging::first_report(&self.reported, key) {
            match log {
                BadItemLog::TableItem => {
                    tracing::warn!(table = %self.name, key = %crate::table::bounded_key(key), error = %why, "skipping a lease table item that cannot be read; fix or delete it by hand");
                }
                BadItemLog::OwnedLease => {
                    tracing::warn!(table = %self.name, key = %key, error = %why, "skipping a lease that cannot be read; fix or delete it by hand");
                }
            }
        }
    }

    fn bad(&self, key: &str, reason: impl Into<String>) -> LeaseError {
        LeaseError::BadItem {
            table: self.name.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Creates the lease for a new shard unless one exists (idempotent).
    /// Returns whether it created it.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn create_lease(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(codec::new_lease_item(lease)))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", attr::LEASE_KEY);
        self.counters.write(0, 0);
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.dynamo("PutItem", e)),
        }
    }

    /// Writes a lease of a rewind ([`crate::rewind::Rewrite`]): the whole item replaced (no
    /// owner, no pending checkpoint, no hand-over, no children until the shard ends again),
    /// with `AT_TIMESTAMP`'s time in `koStartTimestamp`, if the item is still as scanned
    /// (counter `seen`, or no item when `seen` is `None`). Returns whether it wrote.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn rewrite_lease(
        &self,
        lease: &Lease,
        seen: Option<u64>,
    ) -> Result<bool, LeaseError> {
        let mut item = codec::new_lease_item(lease);
        if let Some(ts) = lease.start_timestamp_ms {
            item.insert(
                attr::START_TIMESTAMP.to_string(),
                AttributeValue::N(ts.to_string()),
            );
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .expression_attribute_names("#k", attr::LEASE_KEY);
        let put = match seen {
            Some(c) => put
                .condition_expression("attribute_exists(#k) AND #c = :seen")
                .expression_attribute_names("#c", attr::LEASE_COUNTER)
                .expression_attribute_values(":seen", n(c)),
            None => put.condition_expression("attribute_not_exists(#k)"),
        };
        self.counters.write(0, 0);
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.dynamo("PutItem", e)),
        }
    }

    /// Takes `lease` for `worker` if it is still as scanned (same counter): the owner is
    /// set, the counter and `ownerSwitchesSinceCheckpoint` go up by one, any hand-over
    /// request is cleared.
    ///
    /// # Guarantees
    /// Of several workers taking the same lease at once, exactly one succeeds; from then on
    /// every write of the previous owner fails with [`LeaseError::LeaseLost`]. The returned
    /// checkpoint is the one in the item at the take (read atomically with it), so with the
    /// client-side check of [`LeaseTable::checkpoint`] the checkpoint in the table never
    /// goes backwards across owners.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the lease changed since the scan (someone else took it);
    /// [`LeaseError::Dynamo`] otherwise (the lease may or may not be ours: the next scan
    /// tells).
    pub async fn take(&self, lease: &Lease, worker: &str) -> Result<HeldLease, LeaseError> {
        Ok(self
            .take_if(lease, worker, "#c = :expected", false)
            .await?
            .0)
    }

    /// The assigner's take on behalf of `to` (assigner mode): as [`LeaseTable::take`], and
    /// marks the lease `koAssigned` until `to` accepts it ([`LeaseTable::accept`]).
    ///
    /// # Errors
    /// As [`LeaseTable::take`].
    pub async fn assign(&self, lease: &Lease, to: &str) -> Result<HeldLease, LeaseError> {
        Ok(self.take_if(lease, to, "#c = :expected", true).await?.0)
    }

    /// [`LeaseTable::take_after_handoff_timeout`] by the assigner on behalf of `to`, marked
    /// as [`LeaseTable::assign`].
    ///
    /// # Errors
    /// As [`LeaseTable::take_after_handoff_timeout`].
    pub async fn assign_after_handoff_timeout(
        &self,
        lease: &Lease,
        to: &str,
    ) -> Result<HeldLease, LeaseError> {
        Ok(self
            .take_if(
                lease,
                to,
                "#c = :expected AND #h = :me AND #g = :grant",
                true,
            )
            .await?
            .0)
    }

    /// Accepts a lease that was given to `worker` (assigner mode: by the assigner, by its
    /// previous owner's hand-over, or left by an earlier run of the same worker id): a take
    /// conditional on the owner being `worker` and the counter being the one the owner index
    /// showed. Returns the lease as the take left it (its checkpoint read atomically with the
    /// take, as [`LeaseTable::take`]).
    ///
    /// # Guarantees
    /// As [`LeaseTable::take`]: the counter goes up, so any earlier holder under the same
    /// worker id (a previous run, a paused process) is fenced off.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the lease is no longer ours at that counter (the index
    /// lagged); [`LeaseError::Dynamo`].
    pub async fn accept(
        &self,
        owned: &OwnedLease,
        worker: &str,
    ) -> Result<(HeldLease, Lease), LeaseError> {
        let mut seen = Lease::new(&owned.shard_id, Checkpoint::TrimHorizon, Vec::new());
        seen.counter = owned.counter;
        seen.owner = Some(worker.to_string());
        let (held, now) = self
            .take_if(&seen, worker, "#c = :expected AND #o = :me", false)
            .await?;
        Ok((held, now.unwrap_or(seen)))
    }

    /// Sets `worker` as owner, bumps the counter and the owner-switch count, clears any
    /// hand-over request, if `condition` (over `#c`/`:expected`, `#h`/`:me`) holds; with
    /// `mark`, sets `koAssigned` (given, not yet accepted), else clears it.
    async fn take_if(
        &self,
        lease: &Lease,
        worker: &str,
        condition: &str,
        mark: bool,
    ) -> Result<(HeldLease, Option<Lease>), LeaseError> {
        self.counters.write(0, 2);
        let req = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(&lease.shard_id));
        let req = if mark {
            req.update_expression(
                "SET #o = :me, #c = :next, #sw = if_not_exists(#sw, :zero) + :one, #as = :yes REMOVE #h, #g",
            )
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
        } else {
            req.update_expression(
                "SET #o = :me, #c = :next, #sw = if_not_exists(#sw, :zero) + :one REMOVE #h, #g, #as",
            )
        };
        // A take after a granted hand-over names the grant it depends on.
        let req = if condition.contains(":grant") {
            req.expression_attribute_values(":grant", s(&grant_value(worker, lease.counter)))
        } else {
            req
        };
        let res = req
            .expression_attribute_names("#as", attr::ASSIGNED)
            .expression_attribute_names("#g", attr::HANDOFF_GRANTED)
            .condition_expression(condition)
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#sw", attr::OWNER_SWITCHES)
            .expression_attribute_names("#h", attr::HANDOFF_TO)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":next", n(lease.counter + 1))
            .expression_attribute_values(":expected", n(lease.counter))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            // The item as our take left it: its checkpoint is the one to resume from. The
            // scanned one may be older (a checkpoint does not change the counter, so the
            // previous owner's last write can land between our scan and our take).
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => {
                // DynamoDB always returns ALL_NEW; without it (or with an item that became
                // unreadable) the scanned checkpoint is used: we own the lease either way.
                let now = out
                    .attributes()
                    .and_then(|item| codec::lease_from_item(&lease.shard_id, item).ok());
                let (checkpoint, start_timestamp_ms) = now.as_ref().map_or_else(
                    || (lease.checkpoint.clone(), lease.start_timestamp_ms),
                    |l| (l.checkpoint.clone(), l.start_timestamp_ms),
                );
                Ok((
                    HeldLease {
                        shard_id: lease.shard_id.clone(),
                        counter: lease.counter + 1,
                        checkpoint,
                        start_timestamp_ms,
                    },
                    now,
                ))
            }
            Err(e) if is_conditional_failure(&e) => Err(LeaseError::LeaseLost {
                shard_id: lease.shard_id.clone(),
                counter: lease.counter,
            }),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }

    /// A fenced update of a lease `worker` holds: `update` runs only if the item's owner is
    /// `worker` and its counter is `held.counter`.
    async fn fenced(
        &self,
        held: &HeldLease,
        worker: &str,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
        names: Vec<(&str, &str)>,
        index: u64,
    ) -> Result<(), LeaseError> {
        self.fenced_if(held, worker, None, update, values, names, index)
            .await
    }

    /// [`LeaseTable::fenced`] with one more condition (`AND extra`); `index` is the number of
    /// owner-index writes the update causes (for the request-unit counters).
    #[allow(clippy::too_many_arguments)]
    async fn fenced_if(
        &self,
        held: &HeldLease,
        worker: &str,
        extra: Option<&str>,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
        names: Vec<(&str, &str)>,
        index: u64,
    ) -> Result<(), LeaseError> {
        let condition = match extra {
            None => "#o = :me AND #c = :held".to_string(),
            Some(e) => format!("#o = :me AND #c = :held AND {e}"),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(&held.shard_id))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":held", n(held.counter));
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        for (k, v) in names {
            req = req.expression_attribute_names(k, v);
        }
        self.counters.write(0, index);
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(LeaseError::LeaseLost {
                shard_id: held.shard_id.clone(),
                counter: held.counter,
            }),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }

    /// Writes a checkpoint for a lease `worker` holds.
    ///
    /// # Guarantees
    /// The checkpoint lands only while `worker` still owns the lease at the counter it took
    /// it at, and never moves backwards (see [`Checkpoint::may_advance_to`]). It clears a
    /// prepared checkpoint and resets `ownerSwitchesSinceCheckpoint`, as KCL does.
    ///
    /// # Errors
    /// [`LeaseError::CheckpointBackwards`] (nothing written); [`LeaseError::LeaseLost`] if
    /// the lease moved; [`LeaseError::Dynamo`] on other failures (retry: the checkpoint is
    /// idempotent).
    pub async fn checkpoint(
        &self,
        held: &mut HeldLease,
        worker: &str,
        to: Checkpoint,
    ) -> Result<(), LeaseError> {
        if !held.checkpoint.may_advance_to(&to) {
            return Err(LeaseError::CheckpointBackwards {
                shard_id: held.shard_id.clone(),
                from: held.checkpoint.clone(),
                to,
            });
        }
        let (cp, sub) = to.to_kcl();
        TableCounters::add(&self.counters.checkpoint_writes);
        self.fenced(
            held,
            worker,
            "SET #cp = :cp, #sub = :sub, #sw = :zero REMOVE #p, #ps, #pst, #ts",
            vec![(":cp", s(cp)), (":sub", n(sub)), (":zero", n(0))],
            vec![
                ("#cp", attr::CHECKPOINT),
                ("#sub", attr::CHECKPOINT_SUB),
                ("#sw", attr::OWNER_SWITCHES),
                ("#p", attr::PENDING_CHECKPOINT),
                ("#ps", attr::PENDING_CHECKPOINT_SUB),
                ("#pst", attr::PENDING_CHECKPOINT_STATE),
                ("#ts", attr::START_TIMESTAMP),
            ],
            0,
        )
        .await?;
        held.checkpoint = to;
        held.start_timestamp_ms = None;
        Ok(())
    }

    /// Pins a lease still at `LATEST` to `AT_TIMESTAMP` `timestamp_ms` (its own start,
    /// `koStartTimestamp`), before anything of it is delivered: `LATEST` means "the tip when
    /// reading starts", which is a different place for every owner. Once pinned, a next owner
    /// resumes where this one started, not at its own tip.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the lease moved (or is no longer at `LATEST`);
    /// [`LeaseError::Dynamo`].
    pub async fn pin_start(
        &self,
        held: &mut HeldLease,
        worker: &str,
        timestamp_ms: i64,
    ) -> Result<(), LeaseError> {
        TableCounters::add(&self.counters.checkpoint_writes);
        self.fenced_if(
            held,
            worker,
            Some("#cp = :latest"),
            "SET #cp = :at, #sub = :zero, #ts = :ts",
            vec![
                (":latest", s("LATEST")),
                (":at", s("AT_TIMESTAMP")),
                (":zero", n(0)),
                (":ts", AttributeValue::N(timestamp_ms.to_string())),
            ],
            vec![
                ("#cp", attr::CHECKPOINT),
                ("#sub", attr::CHECKPOINT_SUB),
                ("#ts", attr::START_TIMESTAMP),
            ],
            0,
        )
        .await?;
        held.checkpoint = Checkpoint::AtTimestamp;
        held.start_timestamp_ms = Some(timestamp_ms);
        Ok(())
    }

    /// Records a shard's children once it ended (KCL's `childShardIds`).
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`]; [`LeaseError::Dynamo`].
    pub async fn set_children(
        &self,
        held: &HeldLease,
        worker: &str,
        children: &[String],
    ) -> Result<(), LeaseError> {
        if children.is_empty() {
            return Ok(());
        }
        self.fenced(
            held,
            worker,
            "SET #ch = :ch",
            vec![(":ch", AttributeValue::Ss(children.to_vec()))],
            vec![("#ch", attr::CHILD_SHARD_IDS)],
            0,
        )
        .await
    }

    /// Gives a lease up: no owner, counter up by one, so any worker may take it at once.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if it was no longer ours (nothing to release);
    /// [`LeaseError::Dynamo`].
    pub async fn release(&self, held: &HeldLease, worker: &str) -> Result<(), LeaseError> {
        self.fenced(
            held,
            worker,
            "SET #c = :next REMOVE #o, #h, #g",
            vec![(":next", n(held.counter + 1))],
            vec![("#h", attr::HANDOFF_TO), ("#g", attr::HANDOFF_GRANTED)],
            1,
        )
        .await
    }

    /// Hands a lease straight to the worker that asked for it; with `mark` (assigner mode)
    /// the lease stays `koAssigned` until `to` accepts it.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`]; [`LeaseError::Dynamo`].
    pub async fn hand_over(
        &self,
        held: &HeldLease,
        worker: &str,
        to: &str,
        mark: bool,
    ) -> Result<(), LeaseError> {
        let mut values = vec![
            (":to", s(to)),
            (":next", n(held.counter + 1)),
            (":zero", n(0)),
            (":one", n(1)),
        ];
        let update = if mark {
            values.push((":yes", AttributeValue::Bool(true)));
            "SET #o = :to, #c = :next, #sw = if_not_exists(#sw, :zero) + :one, #as = :yes REMOVE #h, #g"
        } else {
            "SET #o = :to, #c = :next, #sw = if_not_exists(#sw, :zero) + :one REMOVE #h, #g, #as"
        };
        self.fenced(
            held,
            worker,
            update,
            values,
            vec![
                ("#h", attr::HANDOFF_TO),
                ("#g", attr::HANDOFF_GRANTED),
                ("#sw", attr::OWNER_SWITCHES),
                ("#as", attr::ASSIGNED),
            ],
            2,
        )
        .await
    }

    /// Clears a hand-over request on a lease `worker` holds (the owner declines it).
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`]; [`LeaseError::Dynamo`].
    pub async fn decline_handoff(&self, held: &HeldLease, worker: &str) -> Result<(), LeaseError> {
        self.fenced(
            held,
            worker,
            "REMOVE #h, #g",
            Vec::new(),
            vec![("#h", attr::HANDOFF_TO), ("#g", attr::HANDOFF_GRANTED)],
            1,
        )
        .await
    }

    /// Grants the hand-over request of `to` on a lease `worker` holds: written before the
    /// owner asks its record processor to finish, so the requester's timeout (which runs from
    /// when it sees the grant) always ends after the owner's own deadline.
    ///
    /// # Guarantees
    /// Lands only while `worker` holds the lease at its counter and the request is still
    /// `to`'s; the counter does not move (the owner keeps checkpointing), and the owner index
    /// does not project the grant (no index write).
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the lease moved or the request is gone;
    /// [`LeaseError::Dynamo`].
    pub async fn grant_handoff(
        &self,
        shard_id: &str,
        counter: u64,
        worker: &str,
        to: &str,
    ) -> Result<(), LeaseError> {
        let held = HeldLease {
            shard_id: shard_id.to_string(),
            counter,
            checkpoint: Checkpoint::TrimHorizon,
            start_timestamp_ms: None,
        };
        self.fenced_if(
            &held,
            worker,
            Some("#h = :to"),
            "SET #g = :grant",
            vec![(":to", s(to)), (":grant", s(&grant_value(to, counter)))],
            vec![("#h", attr::HANDOFF_TO), ("#g", attr::HANDOFF_GRANTED)],
            0,
        )
        .await
    }

    /// Asks the owner of `lease` to hand it to `worker`. Does not change the counter, so the
    /// owner keeps checkpointing until it hands over. Returns `false` if the lease changed
    /// since the scan or somebody asked first.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn request_handoff(&self, lease: &Lease, worker: &str) -> Result<bool, LeaseError> {
        self.counters.write(0, 1);
        let res = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(&lease.shard_id))
            .update_expression("SET #h = :me REMOVE #g")
            .condition_expression("#c = :expected AND attribute_not_exists(#h)")
            .expression_attribute_names("#h", attr::HANDOFF_TO)
            .expression_attribute_names("#g", attr::HANDOFF_GRANTED)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":expected", n(lease.counter))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }

    /// Takes a lease whose owner granted a hand-over request and did not hand it over in
    /// time: only if the request is still ours, granted, and the counter unchanged. A
    /// request the owner has not granted is never taken (its processor may still deliver).
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the owner declined, handed it over, or it moved;
    /// [`LeaseError::Dynamo`].
    pub async fn take_after_handoff_timeout(
        &self,
        lease: &Lease,
        worker: &str,
    ) -> Result<HeldLease, LeaseError> {
        Ok(self
            .take_if(
                lease,
                worker,
                "#c = :expected AND #h = :me AND #g = :grant",
                false,
            )
            .await?
            .0)
    }

    /// Writes this worker's heartbeat: one unconditional put, whatever the number of leases
    /// the worker holds.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), LeaseError> {
        TableCounters::add(&self.counters.heartbeat_writes);
        // The item's size: key, worker id, counter, flag, and the lag map.
        self.counters.write(codec::heartbeat_size(beat), 0);
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(codec::heartbeat_item(beat)))
            .send()
            .await
            .map_err(|e| self.dynamo("PutItem", e))?;
        Ok(())
    }

    /// Deletes a dead worker's heartbeat item, only while its counter is still `counter`.
    /// Returns whether it was deleted.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn delete_heartbeat_if(
        &self,
        worker_id: &str,
        counter: u64,
    ) -> Result<bool, LeaseError> {
        self.delete_if(&Heartbeat::key(worker_id), attr::HEARTBEAT, n(counter))
            .await
    }

    /// Deletes a finished lease (only while its checkpoint is `SHARD_END`). Returns whether
    /// it was deleted.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn delete_finished_lease(&self, shard_id: &str) -> Result<bool, LeaseError> {
        self.delete_if(shard_id, attr::CHECKPOINT, s("SHARD_END"))
            .await
    }

    /// Deletes item `key` only while its attribute `name` equals `value`.
    async fn delete_if(
        &self,
        key: &str,
        name: &str,
        value: AttributeValue,
    ) -> Result<bool, LeaseError> {
        self.counters.write(0, 0);
        let res = self
            .client
            .delete_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(key))
            .condition_expression("#a = :v")
            .expression_attribute_names("#a", name)
            .expression_attribute_values(":v", value)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.dynamo("DeleteItem", e)),
        }
    }

    /// Deletes this worker's heartbeat (on shutdown, after releasing its leases).
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn remove_heartbeat(&self, worker_id: &str) -> Result<(), LeaseError> {
        self.counters.write(0, 0);
        self.client
            .delete_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(&Heartbeat::key(worker_id)))
            .send()
            .await
            .map_err(|e| self.dynamo("DeleteItem", e))?;
        Ok(())
    }
    /// Makes sure the owner index exists (assigner mode), adding it to a table created
    /// without it (by an older version, or by KCL) and waiting until it is ACTIVE (DynamoDB
    /// backfills it: seconds for a few thousand leases).
    ///
    /// # Errors
    /// [`LeaseError::AccessDenied`] naming `dynamodb:UpdateTable`; [`LeaseError::NotActive`]
    /// if the index is not ACTIVE within ten minutes; [`LeaseError::Dynamo`].
    pub async fn ensure_owner_index(&self) -> Result<(), LeaseError> {
        use aws_sdk_dynamodb::types::IndexStatus;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut asked = false;
        loop {
            TableCounters::add(&self.counters.reads);
            let out = self
                .client
                .describe_table()
                .table_name(&self.name)
                .send()
                .await
                .map_err(|e| self.dynamo("DescribeTable", e))?;
            let Some(table) = out.table() else {
                return Err(self.bad(&self.name, "DescribeTable returned no table"));
            };
            let index = table
                .global_secondary_indexes()
                .iter()
                .find(|i| i.index_name() == Some(OWNER_INDEX));
            match index {
                Some(i) if i.index_status().is_none_or(|s| s == &IndexStatus::Active) => {
                    return Ok(());
                }
                Some(_) => {}
                None if !asked => {
                    asked = true;
                    self.add_owner_index(table).await?;
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LeaseError::NotActive {
                    table: format!("{} (index {OWNER_INDEX})", self.name),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn add_owner_index(
        &self,
        table: &aws_sdk_dynamodb::types::TableDescription,
    ) -> Result<(), LeaseError> {
        use aws_sdk_dynamodb::types::{
            CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate, ProvisionedThroughput,
        };
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| LeaseError::Dynamo {
            op: "UpdateTable",
            table: self.name.clone(),
            detail: e.to_string(),
        };
        // A provisioned table's index needs capacity of its own: the table's.
        let throughput = table.provisioned_throughput().and_then(|p| {
            match (p.read_capacity_units(), p.write_capacity_units()) {
                (Some(r), Some(w)) if r > 0 && w > 0 => ProvisionedThroughput::builder()
                    .read_capacity_units(r)
                    .write_capacity_units(w)
                    .build()
                    .ok(),
                _ => None,
            }
        });
        let index = owner_index(throughput).map_err(invalid)?;
        let action = CreateGlobalSecondaryIndexAction::builder()
            .index_name(OWNER_INDEX)
            .set_key_schema(Some(index.key_schema().to_vec()))
            .set_projection(index.projection().cloned())
            .set_provisioned_throughput(index.provisioned_throughput().cloned())
            .build()
            .map_err(invalid)?;
        let res = self
            .client
            .update_table()
            .table_name(&self.name)
            // The table's own key too: DynamoDB merges the definitions, but an emulator that
            // replaces them (moto) would otherwise lose the key's type, and every later
            // worker would refuse the table.
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::LEASE_KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(invalid)?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::LEASE_OWNER)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(invalid)?,
            )
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(action).build(),
            )
            .send()
            .await;
        match res {
            Ok(_) => {
                tracing::info!(table = %self.name, index = OWNER_INDEX, "adding the owner index to the lease table");
                Ok(())
            }
            Err(e) if is_access_denied(&e) => Err(LeaseError::AccessDenied {
                table: self.name.clone(),
                action: "UpdateTable",
                detail: DisplayErrorContext(e).to_string(),
            }),
            // Another worker is adding it at the same moment: wait for it as for ours.
            Err(e) => {
                tracing::info!(table = %self.name, error = %DisplayErrorContext(e), "adding the owner index failed (another worker may be adding it); waiting for it");
                Ok(())
            }
        }
    }

    /// This worker's leases, from the owner index (eventually consistent; all pages). An
    /// entry that cannot be read is skipped and logged once, as in [`LeaseTable::scan`].
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`] (also when the index does not exist: see
    /// [`LeaseTable::ensure_owner_index`]).
    pub async fn query_owned(&self, worker: &str) -> Result<Vec<OwnedLease>, LeaseError> {
        let this = self;
        let paged = read_pages(
            usize::MAX,
            move |start| {
                TableCounters::add(&this.counters.queries);
                let req = this
                    .client
                    .query()
                    .table_name(&this.name)
                    .index_name(OWNER_INDEX)
                    .key_condition_expression("#o = :me")
                    .expression_attribute_names("#o", attr::LEASE_OWNER)
                    .expression_attribute_values(":me", s(worker))
                    .set_exclusive_start_key(start);
                async move {
                    let out = req.send().await.map_err(|e| this.dynamo("Query", e))?;
                    let page = Page::from(out);
                    this.counters
                        .read(page.items.iter().map(item_size).sum(), false);
                    Ok::<Page, LeaseError>(page)
                }
            },
            |item| {
                let key = codec::lease_key(item);
                if !codec::is_indexed_lease(&key) {
                    return Decoded::Skip;
                }
                match codec::owned_from_item(&key, item) {
                    Ok(owned) => Decoded::Keep(owned),
                    Err(why) => Decoded::Bad { key, why },
                }
            },
            |key, why| self.report_bad(key, why, BadItemLog::OwnedLease),
        )
        .await?;
        Ok(paged.items)
    }

    async fn get(&self, key: &str, consistent: bool) -> Result<Option<Item>, LeaseError> {
        TableCounters::add(&self.counters.gets);
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| self.dynamo("GetItem", e))?;
        self.counters
            .read(out.item().map(item_size).unwrap_or(0), consistent);
        Ok(out.item().cloned())
    }

    /// One worker's heartbeat item (eventually consistent), `None` if it has none.
    ///
    /// # Errors
    /// [`LeaseError::BadItem`]; [`LeaseError::Dynamo`].
    pub async fn read_heartbeat(&self, worker_id: &str) -> Result<Option<Heartbeat>, LeaseError> {
        let key = Heartbeat::key(worker_id);
        match self.get(&key, false).await? {
            None => Ok(None),
            Some(item) => codec::heartbeat_from_item(&key, &item)
                .map(Some)
                .map_err(|r| self.bad(&key, r)),
        }
    }

    /// The assigner item, `None` if nobody ever claimed the role.
    ///
    /// # Errors
    /// [`LeaseError::BadItem`]; [`LeaseError::Dynamo`].
    pub async fn read_assigner(
        &self,
        consistent: bool,
    ) -> Result<Option<AssignerItem>, LeaseError> {
        match self.get(ASSIGNER_KEY, consistent).await? {
            None => Ok(None),
            Some(item) => codec::assigner_from_item(&item)
                .map(Some)
                .map_err(|r| self.bad(ASSIGNER_KEY, r)),
        }
    }

    /// Claims the assigner role for `worker` if the item is still as `seen` (absent, or at
    /// the same term). Returns the new item, or `None` if another worker claimed it first.
    ///
    /// # Guarantees
    /// Of several workers claiming at once, one succeeds: the term is the fencing token.
    ///
    /// # Errors
    /// [`LeaseError::Dynamo`].
    pub async fn claim_assigner(
        &self,
        worker: &str,
        seen: Option<&AssignerItem>,
    ) -> Result<Option<AssignerItem>, LeaseError> {
        self.counters.write(0, 2);
        let term = seen.map_or(1, |s| s.term + 1);
        let req = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(ASSIGNER_KEY))
            .update_expression("SET #o = :me, #c = :next REMOVE #su")
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#su", attr::SUCCESSORS)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":next", n(term));
        let req = match seen {
            None => req.condition_expression("attribute_not_exists(#c)"),
            Some(seen) => req
                .condition_expression("#c = :term")
                .expression_attribute_values(":term", n(seen.term)),
        };
        match req.send().await {
            Ok(_) => Ok(Some(AssignerItem {
                owner: Some(worker.to_string()),
                term,
                successors: Vec::new(),
            })),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }

    /// Names the workers that watch the assigner every round (the assigner's write, only
    /// while it holds the role at `term`; an empty list removes the attribute).
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the role is no longer ours; [`LeaseError::Dynamo`].
    pub async fn set_successors(
        &self,
        worker: &str,
        term: u64,
        successors: &[String],
    ) -> Result<(), LeaseError> {
        self.counters.write(0, 0);
        let req = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(ASSIGNER_KEY))
            .condition_expression("#o = :me AND #c = :term")
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#su", attr::SUCCESSORS)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":term", n(term));
        let req = if successors.is_empty() {
            req.update_expression("REMOVE #su")
        } else {
            req.update_expression("SET #su = :su")
                .expression_attribute_values(":su", AttributeValue::Ss(successors.to_vec()))
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(LeaseError::LeaseLost {
                shard_id: ASSIGNER_KEY.to_string(),
                counter: term,
            }),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }

    /// Gives the assigner role up (on shutdown), so another worker claims it at once.
    ///
    /// # Errors
    /// [`LeaseError::LeaseLost`] if the role was no longer ours; [`LeaseError::Dynamo`].
    pub async fn release_assigner(&self, worker: &str, term: u64) -> Result<(), LeaseError> {
        self.counters.write(0, 1);
        let res = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::LEASE_KEY, s(ASSIGNER_KEY))
            .update_expression("SET #c = :next REMOVE #o")
            .condition_expression("#o = :me AND #c = :term")
            .expression_attribute_names("#o", attr::LEASE_OWNER)
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_values(":me", s(worker))
            .expression_attribute_values(":term", n(term))
            .expression_attribute_values(":next", n(term + 1))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(LeaseError::LeaseLost {
                shard_id: ASSIGNER_KEY.to_string(),
                counter: term,
            }),
            Err(e) => Err(self.dynamo("UpdateItem", e)),
        }
    }
}

/// The owner index's definition; `throughput` for a table with provisioned capacity.
fn owner_index(
    throughput: Option<aws_sdk_dynamodb::types::ProvisionedThroughput>,
) -> Result<aws_sdk_dynamodb::types::GlobalSecondaryIndex, aws_sdk_dynamodb::error::BuildError> {
    use aws_sdk_dynamodb::types::{GlobalSecondaryIndex, Projection, ProjectionType};
    GlobalSecondaryIndex::builder()
        .index_name(OWNER_INDEX)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(attr::LEASE_OWNER)
                .key_type(KeyType::Hash)
                .build()?,
        )
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .non_key_attributes(attr::LEASE_COUNTER)
                .non_key_attributes(attr::HANDOFF_TO)
                .build(),
        )
        .set_provisioned_throughput(throughput)
        .build()
}
