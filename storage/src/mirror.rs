//! The path from an applied log entry to its callers and to sled.
//!
//! The `Applier` runs on the thread that applies each entry (openraft's state machine task),
//! in log order: it publishes the entry's order records in the `DurableView` (memory),
//! completes the callers (on the leader), tells the live feeds, and gathers the changes into
//! a `MirrorBatch`, coalescing by key. No thread is woken per entry: the mirror thread takes
//! the batch `MIRROR_BATCH_MS` after its first change (a full one, `MIRROR_BATCH_CHANGES_MAX`
//! changes, is sent at once), writes it to sled, records `applied_lsn` last, and then
//! evicts from the view what sled now holds.
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
use engine::state::ShopState;
use engine::{CardId, OrderId, OrderRecord, Product, Sku, Stock};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::log::Lsn;
use crate::rows::{self, CardRow, Change, Row, TreeName};
use crate::sled_dir::{self, reset_sled, write_rows};
use crate::Error;

/// Observes commit latency and group sizes (metrics live in the caller's crate).
pub trait CommitObserver: Send + Sync + 'static {
    fn group_committed(&self, records_count: usize, oldest_wait: std::time::Duration);
}

/// Observes nothing.
pub struct NoObserver;
impl CommitObserver for NoObserver {
    fn group_committed(&self, _: usize, _: std::time::Duration) {}
}

/// Hears every applied order record and reseller stream event, in apply order, on every
/// node: live sockets are fed from here.
pub trait ChangeListener: Send + Sync + 'static {
    fn order_changed(&self, record: &Arc<OrderRecord>);
    fn stream_appended(&self, reseller: engine::ResellerId, seq: u64);
}

/// A proposed event's caller, waiting for the event to be applied: its changes to publish
/// and its completion.
pub struct Pending {
    pub(crate) changes: Vec<Change>,
    pub(crate) done: oneshot::Sender<Result<Lsn, Error>>,
    pub(crate) queued_at: Instant,
}

impl Pending {
    /// Completes the caller with an error (the event did not, or may not, commit).
    pub fn fail(self, error: Error) {
        let _ = self.done.send(Err(error));
    }
}

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
    /// sled has outgrown what the state holds in memory (a snapshot archived orders): the
    /// mirror thread rebuilds it with those rows only (`Mirror::rebuild`).
    Rebuild,
}

/// What the mirror thread is told.
pub(crate) enum MirrorWork {
    /// A batch began to be gathered: it falls due within `MIRROR_BATCH_MS`.
    Started,
    Batch(Box<MirrorBatch>),
    Reset {
        index: u64,
        rows: Vec<Row>,
        orders: Vec<OrderId>,
    },
    Rebuild,
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

/// Per order: the lsn of its latest record, and the record.
type Records = HashMap<OrderId, (u64, Arc<OrderRecord>)>;

/// Order records that are durable but possibly not yet in sled, with the lsn of each.
#[derive(Default)]
pub struct DurableView {
    shards: [Mutex<Records>; VIEW_SHARDS],
}

impl DurableView {
    fn shard_index(&self, order_id: &OrderId) -> usize {
        let hash = order_id
            .as_str()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        (hash % VIEW_SHARDS as u64) as usize
    }

    fn shard(&self, order_id: &OrderId) -> &Mutex<Records> {
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
/// Shared by the applier (applied entries, batches started and sent) and the mirror thread
/// (batches written).
#[derive(Default)]
pub struct MirrorLag {
    durable_lsn: AtomicU64,
    mirrored_lsn: AtomicU64,
    /// (last lsn, first change's time) of each batch not yet in sled, oldest first; the batch
    /// being gathered has `u64::MAX` until it is sent. At most `MIRROR_QUEUE_BATCHES` + 2.
    batches: Mutex<VecDeque<(u64, Instant)>>,
    /// Rebuilds swapped in while the node runs (`Mirror::rebuild`).
    rebuilds: AtomicU64,
}

/// What `MirrorLag` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagSample {
    pub records: u64,
    /// How long the oldest durable change not yet in sled has waited.
    pub age: Duration,
    /// Times sled was rebuilt with the rows memory holds since the start.
    pub rebuilds: u64,
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
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
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

/// Publishes applied entries, completes their callers, and gathers the mirror's batch, on
/// the thread that applies them (openraft's state machine task): no thread hand-off per
/// entry. Calls are serialised by the store (one applier, behind a lock).
pub(crate) struct Applier {
    context: ApplierContext,
    /// The batch being gathered, shared with the mirror thread, which takes it once due.
    gathering: Arc<Mutex<MirrorBatch>>,
}

impl Applier {
    pub(crate) fn new(context: ApplierContext, gathering: Arc<Mutex<MirrorBatch>>) -> Self {
        Self { context, gathering }
    }

    /// Takes `work` in log order; false once the mirror thread is gone.
    pub(crate) fn apply(&mut self, work: Applied) -> bool {
        let full = match work {
            Applied::Reset {
                index,
                rows,
                orders,
            } => {
                if !self.send_gathered() {
                    return false;
                }
                // Every order is served from the view until sled holds the new history (a
                // reader that passed a read barrier before must not find its order missing
                // or older); the mirror evicts them once it has rewritten sled.
                self.context.view.replace_all(index, &orders);
                let orders = orders.iter().map(|r| r.created.order_id.clone()).collect();
                let reset = MirrorWork::Reset {
                    index,
                    rows,
                    orders,
                };
                if self.context.mirror.send(reset).is_err() {
                    return false;
                }
                self.context.applied_index.store(index, Ordering::Release);
                self.context.lag.durable_lsn.store(index, Ordering::Release);
                return true;
            }
            Applied::Rebuild => return self.context.mirror.send(MirrorWork::Rebuild).is_ok(),
            work => {
                let mut batch = self.gathering.lock();
                let started = batch.started.is_some();
                publish(work, &self.context, &mut batch);
                if !started && batch.started.is_some() {
                    // The mirror thread sleeps until a batch is gathered: tell it when this
                    // one falls due. A full queue means it is awake anyway.
                    let _ = self.context.mirror.try_send(MirrorWork::Started);
                }
                (batch.changes_count >= MIRROR_BATCH_CHANGES_MAX)
                    .then(|| take_batch(&mut batch, &self.context.lag))
            }
        };
        // Sent without the batch's lock: the mirror thread takes that lock, and a full queue
        // waits for the mirror thread (back-pressure on acknowledgements).
        full.is_none_or(|batch| {
            self.context
                .mirror
                .send(MirrorWork::Batch(Box::new(batch)))
                .is_ok()
        })
    }

    /// Hands what is gathered (changes, or only an applied index) to the mirror thread.
    fn send_gathered(&mut self) -> bool {
        let gathered = {
            let mut batch = self.gathering.lock();
            (batch.last_lsn > 0).then(|| take_batch(&mut batch, &self.context.lag))
        };
        gathered.is_none_or(|batch| {
            self.context
                .mirror
                .send(MirrorWork::Batch(Box::new(batch)))
                .is_ok()
        })
    }

    /// Sends the last batch; the mirror thread ends once it has written everything.
    pub(crate) fn finish(mut self) {
        self.send_gathered();
    }
}

/// Takes the gathered batch, leaving an empty one (never due) in its place.
fn take_batch(batch: &mut MirrorBatch, lag: &MirrorLag) -> MirrorBatch {
    lag.batch_sent(batch.last_lsn);
    std::mem::take(batch)
}

fn publish(work: Applied, context: &ApplierContext, batch: &mut MirrorBatch) {
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
        Applied::Reset { .. } | Applied::Rebuild => unreachable!("handled by Applier::apply"),
    }
}

/// Writes batches into sled, then evicts what sled now holds from the view.
///
/// Batches come through `work` (full ones, and the last before a reset or a close) or are
/// taken from `gathering` once due. A gathered batch is taken only while `work` is empty:
/// the applier sends before it gathers again, so a batch sent is always written before the
/// ones gathered after it.
///
/// sled held every row through `held_through` when it was opened: the entries a start
/// applies again up to there are not written again (a start after a million orders spent
/// most of its time rewriting rows sled had).
pub(crate) struct Mirror {
    /// Shared with the store's readers; `None` once closed, and while a rebuilt sled is
    /// swapped in.
    pub(crate) db: Arc<RwLock<Option<sled::Db>>>,
    pub(crate) data_dir: std::path::PathBuf,
    /// What a rebuild keeps: the orders and cards the state holds in memory.
    pub(crate) state: Arc<RwLock<ShopState>>,
    /// Set while a rebuild is asked for or running.
    pub(crate) rebuilding: Arc<AtomicBool>,
    pub(crate) held_through: u64,
    pub(crate) products: HashMap<Sku, Product>,
    pub(crate) view: Arc<DurableView>,
    pub(crate) poisoned: Arc<AtomicBool>,
    pub(crate) lag: Arc<MirrorLag>,
}

pub(crate) fn run_mirror(
    mut mirror: Mirror,
    work: Receiver<MirrorWork>,
    gathering: Arc<Mutex<MirrorBatch>>,
) {
    let mut trees = HashMap::new();
    loop {
        let wait = gathering.lock().wait_for_next();
        match work.recv_timeout(wait) {
            Ok(MirrorWork::Batch(batch)) => mirror.write(&mut trees, *batch),
            Ok(MirrorWork::Reset {
                index,
                rows,
                orders,
            }) => mirror.reset(&mut trees, index, rows, &orders),
            Ok(MirrorWork::Rebuild) => mirror.rebuild(&mut trees),
            Ok(MirrorWork::Started) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let due = {
            let mut batch = gathering.lock();
            (batch.is_due() && work.is_empty()).then(|| take_batch(&mut batch, &mirror.lag))
        };
        if let Some(batch) = due {
            mirror.write(&mut trees, batch);
        }
    }
}

impl Mirror {
    fn reset(
        &mut self,
        trees: &mut HashMap<TreeName, sled::Tree>,
        index: u64,
        rows: Vec<Row>,
        orders: &[OrderId],
    ) {
        self.products = rows
            .iter()
            .filter(|row| row.tree == TreeName::Products)
            .filter_map(|row| rows::decode::<rows::ProductRow>(&row.value).ok())
            .map(|row| (row.product.sku.clone(), row.product))
            .collect();
        let db = self.db.read();
        let Some(db) = db.as_ref() else { return };
        if let Err(error) = reset_sled(db, trees, rows, index) {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(%error, "sled rewrite failed; store poisoned (the log holds everything)");
            return;
        }
        self.view.evict(orders, index);
        self.lag.written(index);
        // sled now holds exactly this history: whatever follows is written.
        self.held_through = 0;
    }

    /// Rebuilds sled with the rows of what the state holds in memory, from the rows sled
    /// holds now (every batch before this one is written; later ones go to the new sled).
    /// An order the state does not hold is archived and unchanged since (any change brings
    /// it back to memory before it is applied), so its row can go: lookups read its table.
    /// A rebuild that fails before the swap keeps the old sled; one that fails after it
    /// stops the store, as a failed write does.
    fn rebuild(&mut self, trees: &mut HashMap<TreeName, sled::Tree>) {
        let held = {
            let state = self.state.read();
            sled_dir::Held {
                orders: state
                    .hot_orders()
                    .map(|(_, record)| record.created.order_id.clone())
                    .collect(),
                cards: state.hot_cards().map(|(card, _)| card).collect(),
            }
        };
        let started = Instant::now();
        let built = match self.db.read().as_ref() {
            Some(old) => sled_dir::rebuild_held(&self.data_dir, old, &held),
            None => Err(Error::Closed),
        };
        if let Err(error) = built {
            let _ = sled_dir::remove_next_sled(&self.data_dir);
            self.rebuilding.store(false, Ordering::Release);
            tracing::warn!(%error, "rebuilding sled failed; the old one is kept");
            return;
        }
        {
            // Readers wait here: every handle of the old sled goes before it is moved.
            let mut db = self.db.write();
            trees.clear();
            db.take();
            match sled_dir::swap_in_next(&self.data_dir) {
                Ok(new) => *db = Some(new),
                Err(error) => {
                    self.poisoned.store(true, Ordering::Release);
                    tracing::error!(%error, "swapping in a rebuilt sled failed; store poisoned (the log holds everything)");
                    return;
                }
            }
        }
        if let Err(error) = sled_dir::remove_stale_sled(&self.data_dir) {
            tracing::warn!(%error, "the sled a rebuild replaced could not be deleted; the next start does");
        }
        self.lag.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.rebuilding.store(false, Ordering::Release);
        tracing::info!(
            orders = held.orders.len(),
            cards = held.cards.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "rebuilt sled with the rows memory holds"
        );
    }

    fn write(&mut self, trees: &mut HashMap<TreeName, sled::Tree>, mut batch: MirrorBatch) {
        for product in std::mem::take(&mut batch.products) {
            self.products.insert(product.sku.clone(), product);
        }
        let last_lsn = batch.last_lsn;
        let orders = if last_lsn <= self.held_through {
            // Applied again at start: sled held these rows already.
            batch.orders.into_keys().collect()
        } else {
            let (rows, orders) = batch_rows(batch, &self.products);
            let db = self.db.read();
            let Some(db) = db.as_ref() else { return };
            if let Err(error) = write_rows(db, trees, rows, Lsn(last_lsn)) {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(%error, "sled mirror write failed; store poisoned (the log holds everything)");
                return;
            }
            orders
        };
        self.view.evict(&orders, last_lsn);
        self.lag.written(last_lsn);
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
