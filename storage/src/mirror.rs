//! The path from an applied log entry to its callers and to sled.
//!
//! The applier thread takes each applied entry's changes in log order, publishes its order
//! records in the `DurableView` (memory), completes the callers (on the leader), tells the
//! live feeds, and gathers the changes into a `MirrorBatch`, coalescing by key. Every `MIRROR_BATCH_MS` (or `MIRROR_BATCH_CHANGES_MAX`
//! changes) the batch goes to the mirror thread, which writes it to sled, records
//! `applied_lsn` last, and then evicts from the view what sled now holds.
//!
//! Reads of an order go to the view first, then to sled: both hold only durable state, and
//! together they hold all of it. An installed snapshot puts every order in the view before
//! sled is rewritten, and the applied index moves only then. sled's writes are off the
//! acknowledgement path, so sled costs throughput only as CPU, never as latency; its lag is
//! bounded by the channel.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use engine::{CardId, OrderId, OrderRecord, Product, Sku, Stock};
use parking_lot::Mutex;

use crate::log::Lsn;
use crate::rows::{self, CardRow, Change, Row, TreeName};
use crate::store::{write_rows, ChangeListener, CommitObserver, Pending};

/// What the applier is told, in log order.
pub(crate) enum Applied {
    /// This node's own proposals, applied as entry `index` (the state holds them already).
    Own { index: u64, pendings: Vec<Pending> },
    /// Changes of an entry applied from elsewhere.
    Foreign { index: u64, changes: Vec<Change> },
    /// sled is to hold exactly `rows`, as of `index` (an installed snapshot); `orders` are
    /// every order record among them, served from the view while sled is rewritten.
    Reset {
        index: u64,
        rows: Vec<Row>,
        orders: Vec<Arc<OrderRecord>>,
    },
}

/// What the mirror thread is told.
pub(crate) enum MirrorWork {
    Batch(MirrorBatch),
    Reset {
        index: u64,
        rows: Vec<Row>,
        orders: Vec<OrderId>,
    },
}

pub(crate) struct ApplierContext {
    pub(crate) view: Arc<DurableView>,
    pub(crate) mirror: Sender<MirrorWork>,
    pub(crate) observer: Arc<dyn CommitObserver>,
    pub(crate) applied_index: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) listener: Arc<std::sync::OnceLock<Arc<dyn ChangeListener>>>,
    /// How far sled is behind what is applied.
    pub(crate) lag: Arc<MirrorLag>,
}

/// Longest a durable change waits before it is sent to sled. Each batch costs sled one
/// `apply_batch` per tree it touches, and each of those wakes every idle thread of sled's
/// IO pool (its queue notifies all): at 20 ms that was 0.4 wake-ups per purchase on
/// sled's threads alone. An order created and paid within one batch is written once.
pub const MIRROR_BATCH_MS: u64 = 100;
/// Most changes gathered into one sled batch.
pub const MIRROR_BATCH_CHANGES_MAX: usize = 20_000;
/// Batches waiting for the mirror thread; when full, acknowledgements wait (back-pressure).
/// 32 batches of 100 ms ride out sled's own flush stalls (measured up to 0.8 s after a
/// large import) without holding acknowledgements.
pub const MIRROR_QUEUE_BATCHES: usize = 32;
const VIEW_SHARDS: usize = 32;

/// Order records that are durable but possibly not yet in sled, with the lsn of each.
#[derive(Default)]
pub struct DurableView {
    shards: [Mutex<HashMap<OrderId, (u64, Arc<OrderRecord>)>>; VIEW_SHARDS],
}

impl DurableView {
    fn shard_index(&self, order_id: &OrderId) -> usize {
        let hash = order_id
            .as_str()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        (hash % VIEW_SHARDS as u64) as usize
    }

    fn shard(&self, order_id: &OrderId) -> &Mutex<HashMap<OrderId, (u64, Arc<OrderRecord>)>> {
        &self.shards[self.shard_index(order_id)]
    }

    pub fn get(&self, order_id: &OrderId) -> Option<Arc<OrderRecord>> {
        self.shard(order_id)
            .lock()
            .get(order_id)
            .map(|(_, r)| r.clone())
    }

    pub(crate) fn publish(&self, lsn: u64, record: Arc<OrderRecord>) {
        let id = record.created.order_id.clone();
        self.shard(&id).lock().insert(id, (lsn, record));
    }

    /// Replaces every record with `records`, as of `lsn`, one shard at a time: a reader
    /// sees each order either as it was or as it is now, never missing.
    fn replace_all(&self, lsn: u64, records: &[Arc<OrderRecord>]) {
        let mut by_shard: Vec<Vec<&Arc<OrderRecord>>> = vec![Vec::new(); VIEW_SHARDS];
        for record in records {
            let shard = self.shard_index(&record.created.order_id);
            by_shard[shard].push(record);
        }
        for (shard, records) in self.shards.iter().zip(by_shard) {
            let mut shard = shard.lock();
            shard.clear();
            for record in records {
                let id = record.created.order_id.clone();
                shard.insert(id, (lsn, record.clone()));
            }
        }
    }

    /// Forgets records sled now holds (written at or before `through`).
    fn evict(&self, orders: &[OrderId], through: u64) {
        for id in orders {
            let mut shard = self.shard(id).lock();
            if shard.get(id).is_some_and(|(lsn, _)| *lsn <= through) {
                shard.remove(id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How far sled is behind the log: durable records not yet written to sled, and since when.
/// Shared by the applier (durable groups, batches started and sent) and the mirror thread
/// (batches written).
#[derive(Default)]
pub struct MirrorLag {
    durable_lsn: AtomicU64,
    mirrored_lsn: AtomicU64,
    /// (last lsn, first change's time) of each batch not yet in sled, oldest first; the batch
    /// being gathered has `u64::MAX` until it is sent. At most `MIRROR_QUEUE_BATCHES` + 2.
    batches: Mutex<VecDeque<(u64, Instant)>>,
}

/// What `MirrorLag` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagSample {
    pub records: u64,
    /// How long the oldest durable change not yet in sled has waited.
    pub age: Duration,
}

impl MirrorLag {
    /// Starts from a sled that mirrors the log through `lsn`.
    pub(crate) fn new(lsn: u64) -> Self {
        let lag = Self::default();
        lag.durable_lsn.store(lsn, Ordering::Release);
        lag.mirrored_lsn.store(lsn, Ordering::Release);
        lag
    }

    pub fn sample(&self) -> LagSample {
        let durable = self.durable_lsn.load(Ordering::Acquire);
        let mirrored = self.mirrored_lsn.load(Ordering::Acquire);
        let age = self
            .batches
            .lock()
            .front()
            .map_or(Duration::ZERO, |(_, started)| started.elapsed());
        LagSample {
            records: durable.saturating_sub(mirrored),
            age,
        }
    }

    fn batch_started(&self, at: Instant) {
        self.batches.lock().push_back((u64::MAX, at));
    }

    fn batch_sent(&self, last_lsn: u64) {
        if let Some(gathering) = self.batches.lock().back_mut() {
            gathering.0 = last_lsn;
        }
    }

    fn written(&self, through: u64) {
        self.mirrored_lsn.store(through, Ordering::Release);
        let mut batches = self.batches.lock();
        while batches.front().is_some_and(|(lsn, _)| *lsn <= through) {
            batches.pop_front();
        }
    }
}

/// Changes since the last sled write, coalesced: the last value of each key wins.
#[derive(Default)]
pub(crate) struct MirrorBatch {
    orders: HashMap<OrderId, (Arc<OrderRecord>, bool)>,
    cards: HashMap<CardId, CardRow>,
    stocks: HashMap<Sku, Stock>,
    products: Vec<Product>,
    audits: Vec<(u64, engine::OperatorAction)>,
    /// Reseller, ledger and stream rows, already in row form (few, and never coalesced
    /// away: a later row for the same key is written after the earlier one).
    reseller_rows: Vec<Row>,
    /// Listing, coupon, order-terms and identity rows, in commit order.
    encoded_rows: Vec<Row>,
    changes_count: usize,
    last_lsn: u64,
    started: Option<Instant>,
}

impl MirrorBatch {
    /// Adds one change (the caller moves `last_lsn` once per entry, changes or none).
    fn add(&mut self, change: Change, lag: &MirrorLag) {
        if self.started.is_none() {
            let now = Instant::now();
            self.started = Some(now);
            lag.batch_started(now);
        }
        self.changes_count += 1;
        match change {
            Change::Order { record, created } => {
                let id = record.created.order_id.clone();
                let created_before = self.orders.get(&id).is_some_and(|(_, c)| *c);
                self.orders.insert(id, (record, created || created_before));
            }
            Change::Card { card, row } => {
                self.cards.insert(card, row);
            }
            Change::Stock { sku, stock } => {
                self.stocks.insert(sku, stock);
            }
            Change::Product(product) => self.products.push(product),
            Change::Audit { number, action } => self.audits.push((number, action)),
            Change::Reseller { id, row } => {
                self.reseller_rows
                    .push(crate::resellers::reseller_row(id, &row));
            }
            Change::LedgerEntry(entry) => {
                self.reseller_rows
                    .push(crate::resellers::ledger_row(&entry));
            }
            Change::Stream { id, seq, row } => {
                self.reseller_rows
                    .push(crate::resellers::stream_row(id, seq, &row));
            }
            Change::Encoded(row) => self.encoded_rows.push(row),
        }
    }

    fn is_due(&self) -> bool {
        self.changes_count >= MIRROR_BATCH_CHANGES_MAX
            || self
                .started
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(MIRROR_BATCH_MS))
    }

    fn wait_for_next(&self) -> Duration {
        match self.started {
            Some(t) => Duration::from_millis(MIRROR_BATCH_MS).saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        }
    }
}

/// Publishes applied entries, completes their callers, and feeds the mirror.
pub(crate) fn run_applier(applied: Receiver<Applied>, context: ApplierContext) {
    let mut batch = MirrorBatch::default();
    loop {
        match applied.recv_timeout(batch.wait_for_next()) {
            Ok(Applied::Reset {
                index,
                rows,
                orders,
            }) => {
                if batch.last_lsn > 0 && !send_batch(&context, &mut batch) {
                    return;
                }
                // Every order is served from the view until sled holds the new history (a
                // reader that passed a read barrier before must not find its order missing
                // or older); the mirror evicts them once it has rewritten sled.
                context.view.replace_all(index, &orders);
                let orders = orders.iter().map(|r| r.created.order_id.clone()).collect();
                if context
                    .mirror
                    .send(MirrorWork::Reset {
                        index,
                        rows,
                        orders,
                    })
                    .is_err()
                {
                    return;
                }
                context.applied_index.store(index, Ordering::Release);
                context.lag.durable_lsn.store(index, Ordering::Release);
            }
            Ok(work) => apply(work, &context, &mut batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if batch.is_due() && !send_batch(&context, &mut batch) {
            return;
        }
    }
    if batch.last_lsn > 0 {
        send_batch(&context, &mut batch);
    }
}

/// Hands the gathered batch to the mirror thread; false once it is gone.
fn send_batch(context: &ApplierContext, batch: &mut MirrorBatch) -> bool {
    context.lag.batch_sent(batch.last_lsn);
    context
        .mirror
        .send(MirrorWork::Batch(std::mem::take(batch)))
        .is_ok()
}

fn apply(work: Applied, context: &ApplierContext, batch: &mut MirrorBatch) {
    let listener = context.listener.get();
    let mut publish = |index: u64, change: Change| {
        match &change {
            Change::Order { record, .. } => {
                context.view.publish(index, record.clone());
                if let Some(listener) = listener {
                    listener.order_changed(record);
                }
            }
            Change::Stream { id, seq, .. } => {
                if let Some(listener) = listener {
                    listener.stream_appended(*id, *seq);
                }
            }
            _ => {}
        }
        batch.add(change, &context.lag);
    };
    match work {
        Applied::Own { index, pendings } => {
            if let Some(first) = pendings.first() {
                context
                    .observer
                    .group_committed(pendings.len(), first.queued_at.elapsed());
            }
            let mut dones = Vec::with_capacity(pendings.len());
            for pending in pendings {
                for change in pending.changes {
                    publish(index, change);
                }
                dones.push(pending.done);
            }
            batch.last_lsn = index;
            context.applied_index.store(index, Ordering::Release);
            context.lag.durable_lsn.store(index, Ordering::Release);
            for done in dones {
                let _ = done.send(Ok(Lsn(index)));
            }
        }
        Applied::Foreign { index, changes } => {
            for change in changes {
                publish(index, change);
            }
            // An entry that changed nothing moves sled's `applied_lsn` all the same.
            batch.last_lsn = index;
            context.applied_index.store(index, Ordering::Release);
            context.lag.durable_lsn.store(index, Ordering::Release);
        }
        Applied::Reset { .. } => unreachable!("handled by the loop"),
    }
}

/// Writes batches into sled, then evicts what sled now holds from the view.
///
/// sled held every row through `held_through` when it was opened: the entries a start
/// applies again up to there are not written again (a start after a million orders spent
/// most of its time rewriting rows sled had).
pub(crate) fn run_mirror(
    db: sled::Db,
    mut held_through: u64,
    mut products: HashMap<Sku, Product>,
    work: Receiver<MirrorWork>,
    view: Arc<DurableView>,
    poisoned: Arc<AtomicBool>,
    lag: Arc<MirrorLag>,
) {
    let mut trees = HashMap::new();
    for work in work {
        let mut batch = match work {
            MirrorWork::Batch(batch) => batch,
            MirrorWork::Reset {
                index,
                rows,
                orders,
            } => {
                products = rows
                    .iter()
                    .filter(|row| row.tree == TreeName::Products)
                    .filter_map(|row| rows::decode::<rows::ProductRow>(&row.value).ok())
                    .map(|row| (row.product.sku.clone(), row.product))
                    .collect();
                if let Err(error) = crate::store::reset_sled(&db, &mut trees, rows, index) {
                    poisoned.store(true, Ordering::Release);
                    tracing::error!(%error, "sled rewrite failed; store poisoned (the log holds everything)");
                    continue;
                }
                view.evict(&orders, index);
                lag.written(index);
                // sled now holds exactly this history: whatever follows is written.
                held_through = 0;
                continue;
            }
        };
        for product in std::mem::take(&mut batch.products) {
            products.insert(product.sku.clone(), product);
        }
        let last_lsn = batch.last_lsn;
        let orders = if last_lsn <= held_through {
            // Applied again at start: sled held these rows already.
            batch.orders.into_keys().collect()
        } else {
            let (rows, orders) = batch_rows(batch, &products);
            if let Err(error) = write_rows(&db, &mut trees, rows, Lsn(last_lsn)) {
                poisoned.store(true, Ordering::Release);
                tracing::error!(%error, "sled mirror write failed; store poisoned (the log holds everything)");
                continue;
            }
            orders
        };
        view.evict(&orders, last_lsn);
        lag.written(last_lsn);
    }
}

/// A batch's rows, and the orders among them (to evict from the view once written).
fn batch_rows(batch: MirrorBatch, products: &HashMap<Sku, Product>) -> (Vec<Row>, Vec<OrderId>) {
    let mut rows: Vec<Row> = Vec::with_capacity(batch.orders.len() * 2 + batch.cards.len());
    let mut orders = Vec::with_capacity(batch.orders.len());
    for (id, (record, created)) in batch.orders {
        rows::order_rows(&record, created, &mut rows);
        orders.push(id);
    }
    for (card, row) in &batch.cards {
        rows.push(rows::card_row(*card, row));
    }
    for (number, action) in &batch.audits {
        rows.push(rows::audit_row(*number, action));
    }
    for (sku, stock) in batch.stocks {
        rows.push(rows::product_row(&products[&sku], stock));
    }
    rows.extend(batch.reseller_rows);
    rows.extend(batch.encoded_rows);
    (rows, orders)
}
