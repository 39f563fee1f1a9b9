//! `Store`: the log, the in-memory `ShopState` that validates every event before it is
//! logged, and the sled mirror that holds the applied state.
//!
//! Commit path: validate and apply to `ShopState` under its write lock, queue the frame to
//! the log writer under that same lock (so log order is apply order), and hand the caller a
//! `Durable` that resolves only after the frame is fdatasync'd and its rows are in sled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use engine::state::{ShopState, Touched};
use engine::{CardId, Event, OrderId, OrderRecord, Sku};
use parking_lot::{RwLock, RwLockReadGuard};
use tokio::sync::oneshot;

use crate::log::{self, Log, Lsn, Recovery, APPEND_QUEUE_CAPACITY};
use crate::mirror::{self, DurableView, MirrorLag, Pending};
use crate::rows::{self, Row, TreeName};
use crate::Error;

const APPLIED_LSN_KEY: &[u8] = b"applied_lsn";
/// The version of the rows' format in sled; a sled written in another is rebuilt whole
/// from the log at open. 2: card keys sealed, order tokens kept as digests only.
const ROWS_FORMAT_KEY: &[u8] = b"rows_format";
pub const ROWS_FORMAT: u32 = 2;
/// Cache sled may use, in bytes.
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How often sled writes its buffers out. sled is a mirror (the log is the truth), so a
/// rare flush only costs catch-up work after a crash.
pub const SLED_FLUSH_EVERY_MS: u64 = 500;

/// Observes commit latency and group sizes (metrics live in the caller's crate).
pub trait CommitObserver: Send + Sync + 'static {
    fn group_committed(&self, records_count: usize, oldest_wait: std::time::Duration);
}

struct NoObserver;
impl CommitObserver for NoObserver {
    fn group_committed(&self, _: usize, _: std::time::Duration) {}
}

/// Resolves when a committed event is durable and mirrored.
pub struct Durable(oneshot::Receiver<Result<Lsn, Error>>);

impl Durable {
    pub async fn wait(self) -> Result<Lsn, Error> {
        self.0.await.unwrap_or(Err(Error::Closed))
    }

    /// Blocks the thread (for tools and tests outside an async runtime).
    pub fn wait_blocking(self) -> Result<Lsn, Error> {
        self.0.blocking_recv().unwrap_or(Err(Error::Closed))
    }
}

pub struct Store {
    state: Arc<RwLock<ShopState>>,
    log: Log<Pending>,
    db: sled::Db,
    view: Arc<DurableView>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    poisoned: Arc<AtomicBool>,
    recovery: Recovery,
    data_dir: PathBuf,
    lag: Arc<MirrorLag>,
}

#[derive(Default)]
pub(crate) struct TouchedSet {
    pub(crate) skus: BTreeSet<Sku>,
    pub(crate) orders: BTreeSet<OrderId>,
    pub(crate) cards: BTreeSet<CardId>,
    pub(crate) audits: Vec<(u64, engine::OperatorAction)>,
    pub(crate) resellers: BTreeSet<engine::ResellerId>,
    pub(crate) ledger_entries: BTreeSet<u64>,
    pub(crate) streams: BTreeSet<(engine::ResellerId, u64)>,
    pub(crate) listings: BTreeSet<Sku>,
    pub(crate) coupons: BTreeSet<String>,
    pub(crate) order_terms: BTreeSet<OrderId>,
    pub(crate) identity: bool,
}

impl TouchedSet {
    pub(crate) fn add(&mut self, touched: Touched, event: &Event) {
        if let (Event::OperatorAction(action), Some(number)) = (event, touched.audit) {
            self.audits.push((number, action.clone()));
        }
        self.resellers.extend(touched.reseller);
        self.ledger_entries.extend(touched.ledger_entry);
        self.streams.extend(touched.stream);
        self.listings.extend(touched.listing);
        self.coupons.extend(touched.coupon);
        if touched.order_terms {
            self.order_terms.extend(touched.order.clone());
        }
        self.identity |= touched.identity;
        self.skus.extend(touched.sku);
        self.orders.extend(touched.order);
        self.cards.extend(touched.cards);
    }

    fn rows(&self, state: &ShopState) -> Vec<Row> {
        let mut rows = Vec::new();
        for sku in &self.skus {
            let product = state.product(sku).expect("replayed product");
            rows.push(rows::product_row(&product.product, product.stock));
        }
        for order_id in &self.orders {
            rows::order_rows(
                state.order(order_id).expect("replayed order"),
                true,
                &mut rows,
            );
        }
        for card in &self.cards {
            rows.push(rows::card_row(*card, &rows::card_record(state, *card)));
        }
        for (number, action) in &self.audits {
            rows.push(rows::audit_row(*number, action));
        }
        self.reseller_rows(state, &mut rows);
        crate::listings::replayed_rows(state, self, &mut rows);
        rows
    }

    fn reseller_rows(&self, state: &ShopState, rows: &mut Vec<Row>) {
        use crate::resellers as r;
        for id in &self.resellers {
            rows.push(r::reseller_row(*id, &r::reseller_record(state, *id)));
        }
        for number in &self.ledger_entries {
            rows.push(r::ledger_row(&r::ledger_record(state, *number)));
        }
        for (id, seq) in &self.streams {
            rows.push(r::stream_row(
                *id,
                *seq,
                &r::stream_record(state, *id, *seq),
            ));
        }
    }
}

pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub fn sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state")
}

/// How long `open_sled` waits for a previous user of the data dir to let go of sled's file
/// lock: sled releases it from a background thread shortly after its last handle drops.
pub const SLED_LOCK_WAIT_MS: u64 = 5_000;

pub fn open_sled(data_dir: &Path) -> Result<sled::Db, Error> {
    let config = sled::Config::new()
        .path(sled_dir(data_dir))
        .cache_capacity(SLED_CACHE_BYTES)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(Some(SLED_FLUSH_EVERY_MS));
    let started = Instant::now();
    loop {
        match config.open() {
            // sled reports a held lock as `Other` with this text (sled 0.34.7, config.rs).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed().as_millis() < u128::from(SLED_LOCK_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                return Err(Error::InUse(data_dir.to_owned()));
            }
            other => return Ok(other?),
        }
    }
}

/// Where a sled in an older format is set aside until it is deleted.
fn stale_sled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("state.stale")
}

/// Deletes a sled set aside (at this open, once rebuilt, or at the next one).
fn remove_stale_sled(data_dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(stale_sled_dir(data_dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// The rows' format sled was written in (`None` before formats were recorded).
pub fn rows_format(db: &sled::Db) -> Result<Option<u32>, Error> {
    let meta = db.open_tree(TreeName::Meta.as_string())?;
    Ok(meta
        .get(ROWS_FORMAT_KEY)?
        .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes)))
}

pub fn applied_lsn(db: &sled::Db) -> Result<u64, Error> {
    let meta = db.open_tree(TreeName::Meta.as_string())?;
    Ok(meta.get(APPLIED_LSN_KEY)?.map_or(0, |v| {
        u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
    }))
}

pub(crate) fn write_rows(
    db: &sled::Db,
    trees: &mut HashMap<TreeName, sled::Tree>,
    rows: impl IntoIterator<Item = Row>,
    applied: Lsn,
) -> Result<(), Error> {
    let mut batches: BTreeMap<TreeName, sled::Batch> = BTreeMap::new();
    for row in rows {
        batches
            .entry(row.tree)
            .or_default()
            .insert(row.key, row.value);
    }
    let mut meta = sled::Batch::default();
    meta.insert(APPLIED_LSN_KEY, &applied.0.to_be_bytes());
    batches.insert(TreeName::Meta, meta);
    // Meta goes last (BTreeMap order puts it first otherwise): a crash in between leaves
    // applied_lsn behind, and the next start rewrites those rows from the log.
    let meta = batches.remove(&TreeName::Meta).expect("inserted");
    for (name, batch) in batches.into_iter().chain([(TreeName::Meta, meta)]) {
        let tree = match trees.get(&name) {
            Some(tree) => tree,
            None => trees
                .entry(name.clone())
                .or_insert(db.open_tree(name.as_string())?),
        };
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// Replays the whole log into a fresh `ShopState`, cutting a torn tail when `repair` is set.
/// Events after `mirrored_through` are collected as touched.
fn replay(
    data_dir: &Path,
    repair: bool,
    mirrored_through: u64,
) -> Result<(ShopState, Recovery, TouchedSet), Error> {
    let mut state = ShopState::default();
    let mut touched = TouchedSet::default();
    let recovery = log::recover(&log_dir(data_dir), repair, |lsn, payload| {
        let event = rows::decode_event(payload)?;
        let changed = state
            .apply(&event)
            .map_err(|v| Error::Corrupt(format!("lsn {}: {v}", lsn.0)))?;
        if lsn.0 > mirrored_through {
            touched.add(changed, &event);
        }
        Ok(())
    })?;
    Ok((state, recovery, touched))
}

impl Store {
    /// Opens (or creates) a data dir: recovers the log, rebuilds the state from it, brings
    /// sled up to date, and starts the log writer and the applier.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        Self::open_with(data_dir, Arc::new(NoObserver))
    }

    pub fn open_with(data_dir: &Path, observer: Arc<dyn CommitObserver>) -> Result<Self, Error> {
        crate::private::create_dir(data_dir)?;
        remove_stale_sled(data_dir)?;
        let (mut db, mut mirrored) = crate::sled_dir::open_or_set_aside(data_dir)?;
        let old_format = rows_format(&db)? != Some(ROWS_FORMAT);
        if old_format && mirrored > 0 {
            // Rows an older version wrote (card keys, tokens in the clear) stay in sled's
            // files whatever is dropped: set the whole sled aside and rebuild it from the log.
            tracing::warn!("sled holds rows in an older format; rebuilding it from the log");
            drop(db);
            std::fs::rename(sled_dir(data_dir), stale_sled_dir(data_dir))?;
            db = open_sled(data_dir)?;
            mirrored = 0;
        }
        crate::private::restrict_tree(data_dir)?;
        let (state, recovery, mut touched) = replay(data_dir, true, mirrored)?;
        if mirrored > recovery.last_lsn {
            tracing::warn!(
                mirrored,
                last_lsn = recovery.last_lsn,
                "sled is ahead of the log; rebuilding it"
            );
            for name in db.tree_names() {
                if name.as_ref() != b"__sled__default" {
                    db.drop_tree(name)?;
                }
            }
            touched = replay(data_dir, false, 0)?.2;
        }
        if old_format {
            // Written before the rows: a crash now leaves a fresh sled with applied_lsn at
            // 0, and the next open rewrites every row.
            let meta = db.open_tree(TreeName::Meta.as_string())?;
            meta.insert(ROWS_FORMAT_KEY, &ROWS_FORMAT.to_be_bytes())?;
        }
        remove_stale_sled(data_dir)?;
        let mut trees = HashMap::new();
        write_rows(
            &db,
            &mut trees,
            touched.rows(&state),
            Lsn(recovery.last_lsn),
        )?;
        db.flush()?;
        let products = state
            .products()
            .map(|p| (p.product.sku.clone(), p.product.clone()))
            .collect();
        let (sink, durable) = crossbeam_channel::bounded(64);
        let log = Log::start(&log_dir(data_dir), recovery.last_lsn, sink)?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let view = Arc::new(DurableView::default());
        let (to_mirror, batches) = crossbeam_channel::bounded(mirror::MIRROR_QUEUE_BATCHES);
        let lag = Arc::new(MirrorLag::new(recovery.last_lsn));
        let applier = {
            let (view, poisoned, lag) = (view.clone(), poisoned.clone(), lag.clone());
            std::thread::Builder::new()
                .name("log-applier".into())
                .spawn(move || {
                    mirror::run_applier(durable, view, to_mirror, poisoned, observer, lag)
                })?
        };
        let mirror = {
            let (db, view, poisoned, lag) =
                (db.clone(), view.clone(), poisoned.clone(), lag.clone());
            std::thread::Builder::new()
                .name("sled-mirror".into())
                .spawn(move || {
                    mirror::run_mirror(db, trees, products, batches, view, poisoned, lag)
                })?
        };
        Ok(Self {
            state: Arc::new(RwLock::new(state)),
            log,
            db,
            view,
            threads: parking_lot::Mutex::new(vec![applier, mirror]),
            poisoned,
            recovery,
            data_dir: data_dir.to_owned(),
            lag,
        })
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Validates `event` against the state, applies it, and queues it for the log. Refused
    /// events (`Error::Violation`) change nothing and are never logged.
    pub fn commit(&self, event: &Event) -> Result<Durable, Error> {
        if self.poisoned.load(Ordering::Acquire) || self.log.has_failed() {
            return Err(Error::LogFailed);
        }
        let payload = rows::encode_event(event);
        let mut state = self.state.write();
        // Appends happen only under this lock, so a free slot seen now is still free below.
        if self.log.queued_count() >= APPEND_QUEUE_CAPACITY {
            return Err(Error::Busy);
        }
        let touched = state.apply(event).map_err(Error::Violation)?;
        let mut changes = Vec::with_capacity(3);
        rows::changes(&state, event, touched, &mut changes);
        let (done, receiver) = oneshot::channel();
        let pending = Pending {
            changes,
            done,
            queued_at: Instant::now(),
        };
        if let Err(error) = self.log.append(payload, pending) {
            // The state is now ahead of the log: nothing more may be acknowledged.
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(%error, "log refused an applied event; store poisoned");
            return Err(error);
        }
        Ok(Durable(receiver))
    }

    /// Read access to the state (validated, possibly ahead of durability by in-flight
    /// commits: use it for decisions and counts, and `order` for what was acknowledged).
    pub fn state(&self) -> RwLockReadGuard<'_, ShopState> {
        self.state.read()
    }

    /// An order as it was last made durable: from the view of recent changes, else sled.
    pub fn order(&self, order_id: &OrderId) -> Result<Option<OrderRecord>, Error> {
        if let Some(record) = self.view.get(order_id) {
            return Ok(Some((*record).clone()));
        }
        let index = self.db.open_tree(TreeName::OrderMonth.as_string())?;
        let Some(month) = index.get(order_id.as_str())? else {
            return Ok(None);
        };
        let month = String::from_utf8_lossy(&month).into_owned();
        let tree = self.db.open_tree(TreeName::Orders(month).as_string())?;
        tree.get(order_id.as_str())?
            .map(|bytes| rows::decode(&bytes))
            .transpose()
    }

    pub fn is_healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Acquire) && !self.log.has_failed()
    }

    /// Records waiting for the log writer.
    pub fn queued_count(&self) -> usize {
        self.log.queued_count()
    }

    pub fn inject_sync_failure(&self) {
        self.log
            .faults
            .fail_next_sync
            .store(true, Ordering::Release);
    }

    /// The newest `count` entries of the operators' audit trail, newest first (from sled:
    /// entries of the last few milliseconds may not be there yet).
    pub fn audit_trail(&self, count: usize) -> Result<Vec<engine::OperatorAction>, Error> {
        let tree = self.db.open_tree(TreeName::Audit.as_string())?;
        tree.iter()
            .rev()
            .take(count)
            .map(|entry| rows::decode(&entry?.1))
            .collect()
    }

    /// How far sled is behind the log (records and the oldest one's wait).
    pub fn mirror_lag(&self) -> mirror::LagSample {
        self.lag.sample()
    }

    /// Orders durable but not yet in sled.
    pub fn unmirrored_orders_count(&self) -> usize {
        self.view.len()
    }

    /// Drains everything queued, waits for it to be mirrored, and flushes sled.
    pub fn close(&self) -> Result<(), Error> {
        self.log.close();
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
        self.db.flush()?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The log replayed without repairing it: for `audit`.
pub fn replay_readonly(data_dir: &Path) -> Result<(ShopState, Recovery), Error> {
    let (state, recovery, _) = replay(data_dir, false, u64::MAX)?;
    Ok((state, recovery))
}
