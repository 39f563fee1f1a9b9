//! `Store`: the in-memory `ShopState` that validates every event before it is proposed, and
//! the durable view and sled mirror of what has been applied.
//!
//! Commit path (on the leader): validate and apply the event to `ShopState` under its write
//! lock, and hand it to the `ProposalSink` (the replication layer) under that same lock, so
//! proposal order is apply order. The caller gets a `Durable` that resolves only once the
//! event's log entry is fdatasync'd on a majority, committed and applied, and its order
//! record is readable (`complete_own`). On every other node the same entries arrive as
//! committed facts (`apply_committed`). Reads of orders go to the view, then to sled: both
//! hold only applied state. sled mirrors what the state holds in memory: an order a snapshot
//! archived is read from its table, and a start rebuilds a sled grown far past the rows
//! memory holds (`sled_dir::outgrown`).
//!
//! The leader's `ShopState` runs ahead of what is committed by the proposals in flight; if
//! they are lost (leadership lost before they committed), the state is rebuilt from the
//! snapshot and the log (`replace_state`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use engine::state::ShopState;
use engine::{Event, OrderId, OrderRecord};
use parking_lot::{RwLock, RwLockReadGuard};
use tokio::sync::oneshot;

use crate::log::Lsn;
use crate::mirror::{
    self, Applied, ChangeListener, CommitObserver, DurableView, MirrorLag, NoObserver, Pending,
};
use crate::rows::{self, TouchedSet, TreeName};
use crate::sled_dir::{
    apply_batches, batches_of, drop_trees, finish_reset, open_sled, remove_stale_sled, rows_format,
    rows_readable, sled_dir, stale_sled_dir, SledRebuild, RESET_SLICE_ROWS, ROWS_FORMAT,
    ROWS_FORMAT_KEY,
};
use crate::Error;

/// Orders (and then cards) an archive drops from the live state in one hold of its write
/// lock; creates and lookups wait for each hold. A snapshot of 20,000 entries at 5,000
/// purchases/s archives about 33,000 of each: in one hold that took 47 ms.
pub const ARCHIVE_STEP_ITEMS: usize = 1_024;

/// Where the leader's validated events go to be replicated. Called under the state's write
/// lock: the order of calls is the order of the events in the log.
pub trait ProposalSink: Send + Sync + 'static {
    /// Whether one more proposal fits (checked before the event is applied).
    fn has_room(&self) -> bool;
    /// Queues one encoded event. Fails only when the sink is closed.
    fn propose(&self, payload: Vec<u8>, pending: Pending) -> Result<(), Error>;
}

/// Resolves when a committed event is durable and applied.
pub struct Durable(oneshot::Receiver<Result<Lsn, Error>>);

impl Durable {
    pub async fn wait(self) -> Result<Lsn, Error> {
        self.0.await.unwrap_or(Err(Error::Closed))
    }

    /// Blocks the thread (for tools and tests outside an async runtime).
    pub fn wait_blocking(self) -> Result<Lsn, Error> {
        self.0.blocking_recv().unwrap_or(Err(Error::Closed))
    }

    /// The outcome if it is known, without waiting (for the simulator, which moves the
    /// cluster's messages itself between looks).
    pub fn try_outcome(&mut self) -> Option<Result<Lsn, Error>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Closed)),
        }
    }
}

/// Who may commit: only a leader past its readiness gate.
struct Gate {
    open: AtomicBool,
    /// The leader's node id as last known (0: unknown), for `NotLeader` answers.
    leader_hint: AtomicU64,
}

pub struct Store {
    state: Arc<RwLock<ShopState>>,
    sink: OnceLock<Arc<dyn ProposalSink>>,
    gate: Gate,
    /// `None` once closed (sled's file lock goes with the last handle), and while the
    /// mirror thread swaps in a rebuilt sled.
    db: Arc<RwLock<Option<sled::Db>>>,
    view: Arc<DurableView>,
    /// `None` once closed. Its lock keeps applied entries in log order.
    applier: parking_lot::Mutex<Option<mirror::Applier>>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    poisoned: Arc<AtomicBool>,
    applied_index: Arc<AtomicU64>,
    listener: Arc<OnceLock<Arc<dyn ChangeListener>>>,
    data_dir: PathBuf,
    lag: Arc<MirrorLag>,
    /// When an archive makes sled rebuilt (`sled_dir::outgrown`).
    rebuild: SledRebuild,
    /// Set while a rebuild is asked for or running (the mirror thread clears it).
    rebuilding: Arc<AtomicBool>,
}

/// Drops every sled tree and writes every row of `state` as of log index `applied`, made
/// and written a slice at a time.
fn rewrite_sled(db: &sled::Db, state: &ShopState, applied: u64) -> Result<(), Error> {
    let trees = &mut HashMap::new();
    drop_trees(db, trees)?;
    TouchedSet::held(state).slices(state, RESET_SLICE_ROWS, &mut |slice| {
        apply_batches(db, trees, batches_of(slice))
    })?;
    finish_reset(db, trees, applied)
}

impl Store {
    /// Opens the state side of a data dir with `state` as of log index `applied` (from the
    /// snapshot), brings sled in line with it, and starts the applier and the mirror.
    /// Entries after `applied`, through the log's last (`log_last`), arrive through
    /// `apply_committed`.
    pub fn open(
        data_dir: &Path,
        state: ShopState,
        applied: u64,
        log_last: u64,
    ) -> Result<Self, Error> {
        let observer = Arc::new(NoObserver);
        Self::open_with(
            data_dir,
            state,
            applied,
            log_last,
            observer,
            SledRebuild::default(),
        )
    }

    /// As `open`, telling `observer` of each group committed. A sled that has outgrown the
    /// state (`sled_dir::outgrown`, as `rebuild` says) is set aside unopened and rebuilt now,
    /// and rebuilt by the mirror thread when a snapshot's archive makes it so later.
    pub fn open_with(
        data_dir: &Path,
        state: ShopState,
        applied: u64,
        log_last: u64,
        observer: Arc<dyn CommitObserver>,
        rebuild: SledRebuild,
    ) -> Result<Self, Error> {
        crate::private::create_dir(data_dir)?;
        remove_stale_sled(data_dir)?;
        crate::sled_dir::remove_next_sled(data_dir)?;
        let sled_bytes = crate::sled_dir::disk_bytes(&sled_dir(data_dir))?;
        let outgrown = crate::sled_dir::outgrown(sled_bytes, &state, rebuild);
        if outgrown {
            // Opening it would cost what the rebuild saves: sled 0.34 reads its page table
            // over every page it ever wrote, and deleted rows free none of it.
            crate::sled_dir::set_aside_outgrown(data_dir)?;
        }
        let (mut db, mut mirrored) = crate::sled_dir::open_or_set_aside(data_dir)?;
        let format = rows_format(&db)?;
        let old_format = !rows_readable(format);
        if old_format && mirrored > 0 {
            // Rows an older version wrote (card keys, tokens in the clear) stay in sled's
            // files whatever is dropped: set the whole sled aside and rebuild it.
            tracing::warn!("sled holds rows in an older format; rebuilding it");
            drop(db);
            std::fs::rename(sled_dir(data_dir), stale_sled_dir(data_dir))?;
            db = open_sled(data_dir)?;
            mirrored = 0;
        }
        crate::private::restrict_tree(data_dir)?;
        if mirrored < applied || mirrored > log_last.max(applied) {
            // sled misses rows the snapshot covers (or was set aside), or holds rows of
            // entries the log no longer has: rewrite it whole from the snapshot (the log's
            // entries follow). An outgrown sled set aside was said at INFO.
            if !outgrown {
                tracing::warn!(
                    mirrored,
                    applied,
                    log_last,
                    "sled does not match the snapshot and the log; rewriting it from the snapshot"
                );
            }
            rewrite_sled(&db, &state, applied)?;
            mirrored = applied;
        }
        if format != Some(ROWS_FORMAT) {
            // A fresh sled (new, or the old one set aside): its rows are this format's.
            let meta = db.open_tree(TreeName::Meta.as_string())?;
            meta.insert(ROWS_FORMAT_KEY, &ROWS_FORMAT.to_be_bytes())?;
            db.flush()?;
        }
        remove_stale_sled(data_dir)?;
        let products = state
            .products()
            .map(|p| (p.product.sku.clone(), p.product.clone()))
            .collect();
        let poisoned = Arc::new(AtomicBool::new(false));
        let view = Arc::new(DurableView::default());
        let applied_index = Arc::new(AtomicU64::new(applied));
        let listener: Arc<OnceLock<Arc<dyn ChangeListener>>> = Arc::default();
        let (to_mirror, batches) = crossbeam_channel::bounded(mirror::MIRROR_QUEUE_BATCHES);
        let lag = Arc::new(MirrorLag::new(applied));
        let gathering = Arc::new(parking_lot::Mutex::new(mirror::MirrorBatch::default()));
        let applier = mirror::Applier::new(
            mirror::ApplierContext {
                view: view.clone(),
                mirror: to_mirror,
                observer,
                applied_index: applied_index.clone(),
                listener: listener.clone(),
                lag: lag.clone(),
            },
            gathering.clone(),
        );
        let state = Arc::new(RwLock::new(state));
        let db = Arc::new(RwLock::new(Some(db)));
        let rebuilding = Arc::new(AtomicBool::new(false));
        let mirror_thread = {
            let mirror = mirror::Mirror {
                db: db.clone(),
                data_dir: data_dir.to_owned(),
                state: state.clone(),
                rebuilding: rebuilding.clone(),
                held_through: mirrored,
                products,
                view: view.clone(),
                poisoned: poisoned.clone(),
                lag: lag.clone(),
            };
            std::thread::Builder::new()
                .name("sled-mirror".into())
                .spawn(move || mirror::run_mirror(mirror, batches, gathering))?
        };
        Ok(Self {
            state,
            sink: OnceLock::new(),
            gate: Gate {
                open: AtomicBool::new(false),
                leader_hint: AtomicU64::new(0),
            },
            db,
            view,
            applier: parking_lot::Mutex::new(Some(applier)),
            threads: parking_lot::Mutex::new(vec![mirror_thread]),
            poisoned,
            applied_index,
            listener,
            data_dir: data_dir.to_owned(),
            lag,
            rebuild,
            rebuilding,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Connects the replication layer. Once only.
    pub fn set_sink(&self, sink: Arc<dyn ProposalSink>) {
        if self.sink.set(sink).is_err() {
            panic!("the proposal sink is set once");
        }
    }

    /// Connects the live feeds. Once only.
    pub fn set_listener(&self, listener: Arc<dyn ChangeListener>) {
        if self.listener.set(listener).is_err() {
            panic!("the change listener is set once");
        }
    }

    /// Opens (this node leads and has applied everything earlier terms committed) or closes
    /// the commit path. Closing it does not wait for proposals in flight.
    pub fn set_leading(&self, leading: bool) {
        self.gate.open.store(leading, Ordering::Release);
    }

    pub fn is_leading(&self) -> bool {
        self.gate.open.load(Ordering::Acquire)
    }

    /// The leader as last known (`None` when unknown), for answers that send a client there.
    pub fn set_leader_hint(&self, leader: Option<u64>) {
        self.gate
            .leader_hint
            .store(leader.unwrap_or(0), Ordering::Release);
    }

    fn not_leader(&self) -> Error {
        let hint = self.gate.leader_hint.load(Ordering::Acquire);
        Error::NotLeader {
            leader: (hint != 0).then_some(hint),
        }
    }

    /// Validates `event` against the state, applies it, and proposes it. Refused events
    /// (`Error::Violation`) change nothing and are never proposed.
    pub fn commit(&self, event: &Event) -> Result<Durable, Error> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::LogFailed);
        }
        let sink = self.sink.get().ok_or_else(|| self.not_leader())?;
        let payload = rows::encode_event(event);
        let mut state = self.state.write();
        // Checked under the lock: a gate closed now stays closed for this event.
        if !self.is_leading() {
            return Err(self.not_leader());
        }
        // Proposals happen only under this lock, so room seen now is still there below.
        if !sink.has_room() {
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
        if let Err(error) = sink.propose(payload, pending) {
            // The state is now ahead of the log: nothing more may be acknowledged.
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(%error, "the proposal sink refused an applied event; store poisoned");
            return Err(error);
        }
        Ok(Durable(receiver))
    }

    /// This node's own proposals, committed and applied as entry `index`: publishes their
    /// changes and completes their callers (the state already holds them).
    pub fn complete_own(&self, index: u64, pendings: Vec<Pending>) -> Result<(), Error> {
        self.send_applied(Applied::Own { index, pendings })
    }

    fn send_applied(&self, work: Applied) -> Result<(), Error> {
        let mut applier = self.applier.lock();
        let applier = applier.as_mut().ok_or(Error::Closed)?;
        if applier.apply(work) {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    /// Committed events of entry `index` proposed elsewhere (or by an earlier run of this
    /// node): validated and applied to the state, then published. A refusal means the
    /// committed history breaks an invariant, which must stop the node.
    pub fn apply_committed(&self, index: u64, events: &[Event]) -> Result<(), Error> {
        let mut changes = Vec::with_capacity(events.len() * 3);
        {
            let mut state = self.state.write();
            for event in events {
                let touched = state
                    .apply(event)
                    .map_err(|v| Error::Corrupt(format!("committed entry {index}: {v}")))?;
                rows::changes(&state, event, touched, &mut changes);
            }
        }
        self.send_applied(Applied::Foreign { index, changes })
    }

    /// An entry that changes no shop state (blank, membership) was applied.
    pub fn applied_nothing(&self, index: u64) -> Result<(), Error> {
        self.send_applied(Applied::Foreign {
            index,
            changes: Vec::new(),
        })
    }

    /// Replaces the state with `state` as of `applied` (after the leader's speculative tail
    /// was lost, or a snapshot was installed). With `rewrite`, sled is rewritten whole with
    /// what `state` holds in memory (an installed snapshot: sled may hold an older history).
    pub fn replace_state(
        &self,
        state: ShopState,
        applied: u64,
        rewrite: bool,
    ) -> Result<(), Error> {
        if !rewrite {
            *self.state.write() = state;
            return Ok(());
        }
        let rows = TouchedSet::held(&state).rows(&state);
        let orders = state
            .hot_orders()
            .map(|(_, record)| Arc::new(record.clone()))
            .collect();
        // The state first: from here an order the new state archived is read from its
        // table, never from a row of the older history still in sled. (The snapshot holds
        // committed entries only, so such a read may show them a moment before the applied
        // index moves; never an older copy after it has.)
        *self.state.write() = state;
        // Through the applier and the mirror, after everything queued before it; sent
        // without the state lock (the applier's live feeds read the state).
        self.send_applied(Applied::Reset {
            index: applied,
            rows,
            orders,
        })
    }

    /// A snapshot archived orders and cards (`cold::archive`, on a folded copy of the
    /// state). The live state drops the cards and the orders it has not changed since
    /// (`ShopState::archive`), `step_items` at a time (`ARCHIVE_STEP_ITEMS` unless a test
    /// or the simulator says otherwise); lookups read a dropped order from its table from
    /// then on. sled keeps their rows until it has outgrown memory (`sled_dir::outgrown`);
    /// then the mirror thread rebuilds it.
    pub fn archive(&self, archived: &crate::cold::Archived, step_items: usize) {
        self.archive_in_steps(archived, step_items, |_| {});
    }

    /// `archive`, calling `between` after each step with the lock released.
    fn archive_in_steps(
        &self,
        archived: &crate::cold::Archived,
        step_items: usize,
        mut between: impl FnMut(&Self),
    ) {
        type Step<'a> = (&'a [u32], &'a [(engine::CardId, [u8; 32])]);
        let orders = archived.indexes.chunks(step_items);
        let cards = archived.cards.chunks(step_items);
        let mut steps: Vec<Step> = orders.map(|orders| (orders, &[][..])).collect();
        steps.extend(cards.map(|cards| (&[][..], cards)));
        if steps.is_empty() {
            // The state learns of the table even when none of its orders were in memory.
            steps.push((&[], &[]));
        }
        let (steps_count, mut orders_dropped, mut cards_dropped) = (steps.len(), 0, 0);
        for (orders, cards) in steps {
            let released = self.state.write().archive(
                archived.archive.clone(),
                orders,
                archived.through_events,
                cards,
            );
            orders_dropped += released.orders();
            cards_dropped += released.cards();
            drop(released);
            between(self);
        }
        tracing::debug!(
            orders = orders_dropped,
            cards = cards_dropped,
            steps = steps_count,
            "archived orders and cards left memory"
        );
        // Read outside the state lock: sled's size does not depend on it.
        let outgrown = match crate::sled_dir::disk_bytes(&sled_dir(&self.data_dir)) {
            Ok(bytes) => crate::sled_dir::outgrown(bytes, &self.state.read(), self.rebuild),
            Err(error) => {
                tracing::warn!(%error, "sled's size could not be read; not rebuilt");
                false
            }
        };
        // Through the applier, without the state lock (its live feeds read the state); a
        // closed store rebuilds nothing.
        if outgrown && !self.rebuilding.swap(true, Ordering::AcqRel) {
            let _ = self.send_applied(Applied::Rebuild);
        }
    }

    /// The last log index whose changes are published (readable).
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// Read access to the state (validated; on the leader possibly ahead of what is
    /// committed by proposals in flight: use it for decisions and counts, and `order` for
    /// what was acknowledged).
    pub fn state(&self) -> RwLockReadGuard<'_, ShopState> {
        self.state.read()
    }

    /// An order as it was last applied: from the view of recent changes (shared, not
    /// copied), else sled for an order in memory, else its archived copy.
    pub fn order(&self, order_id: &OrderId) -> Result<Option<Arc<OrderRecord>>, Error> {
        if let Some(record) = self.view.get(order_id) {
            return Ok(Some(record));
        }
        {
            // Not in memory: archived and unchanged since (or unknown). sled may hold its
            // row from before the archive, or not since a rebuild.
            let state = self.state.read();
            if !state.holds_order(order_id) {
                return Ok(state.archived_order(order_id).map(Arc::new));
            }
        }
        let db = self.db.read();
        if let Some(record) = rows::read_order(db.as_ref().ok_or(Error::Closed)?, order_id)? {
            return Ok(Some(Arc::new(record)));
        }
        drop(db);
        // In memory, in neither the view nor sled: made by an event not yet applied (none),
        // or brought back from the archive by one (its archived copy is the applied one).
        Ok(self.state.read().archived_order(order_id).map(Arc::new))
    }

    pub fn is_healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Acquire)
    }

    /// Marks the store failed (the log refused a write): nothing more is acknowledged.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// The newest `count` entries of the operators' audit trail, newest first (from sled:
    /// entries of the last few milliseconds may not be there yet).
    pub fn audit_trail(&self, count: usize) -> Result<Vec<engine::OperatorAction>, Error> {
        let db = self.db.read();
        let tree = db
            .as_ref()
            .ok_or(Error::Closed)?
            .open_tree(TreeName::Audit.as_string())?;
        tree.iter()
            .rev()
            .take(count)
            .map(|entry| rows::decode(&entry?.1))
            .collect()
    }

    /// How far sled is behind what is applied (entries and the oldest one's wait).
    pub fn mirror_lag(&self) -> mirror::LagSample {
        self.lag.sample()
    }

    /// Orders applied but not yet in sled.
    pub fn unmirrored_orders_count(&self) -> usize {
        self.view.len()
    }

    /// Waits for everything applied to be mirrored, stops the threads, and flushes sled.
    pub fn close(&self) -> Result<(), Error> {
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        if threads.is_empty() {
            return Ok(());
        }
        // The mirror thread ends once the applier is gone, after everything it was sent.
        if let Some(applier) = self.applier.lock().take() {
            applier.finish();
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(db) = self.db.write().take() {
            db.flush()?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use engine::{CardId, Event, OrderId};

    use super::*;
    use crate::fixtures::{created, new_order, stocked};

    fn shop(orders: u64) -> ShopState {
        let mut state = stocked(orders + 5);
        for n in 1..=orders {
            let order = order_created(&format!("o{n}"), CardId(n));
            state.apply(&order).unwrap();
        }
        state
    }

    fn order_created(id: &str, card: CardId) -> Event {
        order_created_at(id, card, 100)
    }

    fn order_created_at(id: &str, card: CardId, created_at_ms: u64) -> Event {
        created(new_order(id, card, created_at_ms))
    }

    /// The applier gathers on the applying thread and wakes nobody per entry: the mirror
    /// thread, asleep while nothing is gathered, must still take a lone entry's changes once
    /// due, write them to sled and let the view forget them.
    #[test]
    fn a_lone_entry_reaches_sled_without_another_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), shop(0), 1, 1).unwrap();
        let event = order_created("lone", CardId(1));
        store.apply_committed(2, &[event]).unwrap();
        assert_eq!(store.applied_index(), 2, "applied on the caller's thread");
        assert_eq!(
            store.unmirrored_orders_count(),
            1,
            "readable from the view at once"
        );
        wait_mirrored(&store);
        let order = store.order(&OrderId::parse("lone").unwrap()).unwrap();
        assert_eq!(order.expect("in sled").created.contact, "buyer@example.com");
    }

    /// A sale writes the order's row and no card row (the order's row says which keys it
    /// bought), and sled keeps no index of idempotency keys: one sled insert a sale instead
    /// of three. The card's row stays as the import wrote it.
    #[test]
    fn a_sale_writes_the_orders_row_and_no_card_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), shop(0), 1, 1).unwrap();
        let card_row = |store: &Store| {
            let db = store.db.read();
            let cards = db.as_ref().unwrap().open_tree("cards").unwrap();
            cards
                .get(rows::card_key(CardId(1)))
                .unwrap()
                .map(|v| v.to_vec())
        };
        let imported = card_row(&store).expect("imported keys have rows");
        let Event::OrderCreated(new) = order_created("sold", CardId(1)) else {
            unreachable!()
        };
        let mut new = (*new).clone();
        new.idempotency = Some(engine::Idempotency {
            key: "retry-me".into(),
            fingerprint: 7,
        });
        let paid = Event::PaymentApplied {
            order_id: new.order_id.clone(),
            payment: engine::Payment {
                channel: "epay".into(),
                gateway_trade_no: "T1".into(),
                amount_cents: 1_000,
            },
            at_ms: 200,
            fulfilment: engine::Fulfilment::Delivered {
                newly_reserved: vec![],
            },
        };
        let created = Event::OrderCreated(std::sync::Arc::new(new));
        let mut changes = Vec::new();
        let mut state = shop(0);
        for event in [&created, &paid] {
            let touched = state.apply(event).unwrap();
            rows::changes(&state, event, touched, &mut changes);
        }
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, rows::Change::Card { .. })),
            "a sale wrote a card row"
        );
        store.apply_committed(2, &[created, paid]).unwrap();
        wait_mirrored(&store);
        let order = store.order(&OrderId::parse("sold").unwrap()).unwrap();
        let order = order.expect("in sled");
        assert_eq!(
            (order.status, order.cards.as_slice()),
            (engine::OrderStatus::Delivered, &[CardId(1)][..])
        );
        assert_eq!(card_row(&store), Some(imported), "the card's row changed");
        let names = store.db.read().as_ref().unwrap().tree_names();
        assert!(
            !names.contains(&"idempotency".into()),
            "an idempotency tree"
        );
        store.close().unwrap();
    }

    /// Waits until sled holds every applied change (the mirror took the gathered batch).
    fn wait_mirrored(store: &Store) {
        let started = Instant::now();
        while store.unmirrored_orders_count() > 0 || store.mirror_lag().records > 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the mirror never wrote: {:?}",
                store.mirror_lag()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// An order whose id names its creation month (every order made here) is found in that
    /// month's tree without an `order_month` row; any other id keeps its row, and both read
    /// back from sled.
    #[test]
    fn orders_are_found_by_the_month_their_id_names_or_by_their_index_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), shop(0), 1, 1).unwrap();
        let november = 1_764_162_585_123; // 2025-11-26
        let december = november + 10 * 86_400_000;
        let generated = OrderId::generate(november, 7);
        let other_month = OrderId::generate(november, 8);
        let made_elsewhere = OrderId::parse("reseller-42").unwrap();
        store
            .apply_committed(
                2,
                &[
                    order_created_at(generated.as_str(), CardId(1), november),
                    // An id whose time is not the order's: found through its row.
                    order_created_at(other_month.as_str(), CardId(2), december),
                    order_created_at(made_elsewhere.as_str(), CardId(3), november),
                ],
            )
            .unwrap();
        wait_mirrored(&store);
        let db = store.db.read();
        let index = db
            .as_ref()
            .unwrap()
            .open_tree(TreeName::OrderMonth.as_string())
            .unwrap();
        let indexed: Vec<String> = index
            .iter()
            .keys()
            .map(|key| String::from_utf8(key.unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(
            indexed,
            [other_month.as_str(), made_elsewhere.as_str()],
            "only ids that do not name their month have a row"
        );
        drop(db);
        for (id, month) in [
            (&generated, "2025-11"),
            (&other_month, "2025-12"),
            (&made_elsewhere, "2025-11"),
        ] {
            let record = store.order(id).unwrap().expect("in sled");
            assert_eq!(&record.created.order_id, id);
            assert_eq!(rows::month_of(record.created.created_at_ms), month);
        }
        assert_eq!(store.order(&OrderId::generate(november, 9)).unwrap(), None);
        let month_in_id = |id: &OrderId| id.created_at_ms().map(rows::month_of);
        assert_eq!(month_in_id(&generated).as_deref(), Some("2025-11"));
        assert_eq!(month_in_id(&made_elsewhere), None);
        assert_eq!(
            month_in_id(&OrderId::parse("0123456789abcdef").unwrap()),
            None
        );
    }

    /// A sled of an older rows format (3: sold keys' rows name their order) or of an unknown
    /// one is set aside and rebuilt at open; one of this format is kept as it is.
    #[test]
    fn a_sled_of_another_rows_format_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let created = OrderId::generate(1_764_162_585_123, 7);
        let event = order_created_at(created.as_str(), CardId(1), 1_764_162_585_123);
        let state = || {
            let mut state = shop(0);
            state.apply(&event).unwrap();
            state
        };
        let set_format = |format: u32| {
            let db = open_sled(dir.path()).unwrap();
            let meta = db.open_tree(TreeName::Meta.as_string()).unwrap();
            meta.insert(ROWS_FORMAT_KEY, &format.to_be_bytes()).unwrap();
            db.open_tree("kept").unwrap().insert("mark", "1").unwrap();
            db.flush().unwrap();
        };
        let reopen = || {
            let store = Store::open(dir.path(), state(), 2, 2).unwrap();
            let format = rows_format(store.db.read().as_ref().unwrap()).unwrap();
            let kept = store
                .db
                .read()
                .as_ref()
                .unwrap()
                .tree_names()
                .contains(&"kept".into());
            let found = store.order(&created).unwrap().is_some();
            store.close().unwrap();
            (format, kept, found)
        };
        let store = Store::open(dir.path(), shop(0), 1, 1).unwrap();
        store
            .apply_committed(2, std::slice::from_ref(&event))
            .unwrap();
        wait_mirrored(&store);
        store.close().unwrap();
        drop(store);
        set_format(ROWS_FORMAT);
        assert_eq!(reopen(), (Some(ROWS_FORMAT), true, true), "kept");
        set_format(3);
        assert_eq!(reopen(), (Some(ROWS_FORMAT), false, true), "rebuilt");
        set_format(ROWS_FORMAT + 1);
        assert_eq!(reopen(), (Some(ROWS_FORMAT), false, true), "rebuilt");
    }

    const SOLD: u64 = 200;
    /// The default rule from any size: 200 orders' rows outgrow six rows in memory.
    const OUTGROWN: SledRebuild = SledRebuild {
        min_bytes: 0,
        ratio: crate::sled_dir::SLED_OUTGROWN_RATIO,
    };

    /// Orders `o1`..`o200` sold (each its key) and `pending` made, as entry 2, on a state of
    /// 205 sealed keys (`stocked_sealed`).
    fn sold_then_pending() -> Vec<Event> {
        let paid = |n: u64| Event::PaymentApplied {
            order_id: OrderId::parse(&format!("o{n}")).unwrap(),
            payment: engine::Payment {
                channel: "epay".into(),
                gateway_trade_no: format!("T{n}").into(),
                amount_cents: 1_000,
            },
            at_ms: 200,
            fulfilment: engine::Fulfilment::Delivered {
                newly_reserved: vec![],
            },
        };
        let mut events: Vec<Event> = (1..=SOLD)
            .flat_map(|n| [order_created(&format!("o{n}"), CardId(n)), paid(n)])
            .collect();
        events.push(order_created("pending", CardId(SOLD + 1)));
        events
    }

    /// A store of `unsold` that applied `sold_then_pending` as entry 2 and mirrored it.
    fn sold_then_pending_store(dir: &Path) -> Store {
        let store = Store::open_with(dir, unsold(), 1, 1, Arc::new(NoObserver), OUTGROWN).unwrap();
        store.apply_committed(2, &sold_then_pending()).unwrap();
        wait_mirrored(&store);
        store
    }

    fn unsold() -> ShopState {
        crate::fixtures::stocked_sealed(SOLD + 5)
    }

    /// What a snapshot of `sold_then_pending` archives (every delivered order and its key),
    /// with its tables in `data_dir`; the folded state keeps the pending order alone.
    fn archived_fold(data_dir: &Path) -> (ShopState, crate::cold::Archived) {
        let mut folded = unsold();
        for event in &sold_then_pending() {
            folded.apply(event).unwrap();
        }
        let empty = Arc::new(crate::cold::ColdArchive::empty());
        let cold_dir = crate::cold::cold_dir(data_dir);
        let archived = crate::cold::archive(&cold_dir, "t", &empty, &mut folded).unwrap();
        assert_eq!(folded.hot_orders_count(), 1, "only the pending order stays");
        let bytes = crate::sled_dir::disk_bytes(&sled_dir(data_dir)).unwrap();
        let held = folded.hot_orders_count() + folded.hot_cards_count();
        let outgrown = crate::sled_dir::SLED_OUTGROWN_RATIO * crate::sled_dir::SLED_ROW_BYTES;
        assert!(bytes > held * outgrown, "{bytes} B of sled for {held} rows");
        (folded, archived)
    }

    /// An archive drops orders, then cards, from the live state a step at a time, with the
    /// state's lock free between steps (one hold for a 33,000-order archive stalled every
    /// create and lookup for 47 ms), and ends where a single step ends.
    #[test]
    fn an_archive_lets_go_of_the_state_between_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = sold_then_pending_store(dir.path());
        let (folded, archived) = archived_fold(dir.path());
        let mut held = Vec::new();
        store.archive_in_steps(&archived, 64, |store| {
            let state = store.state.try_read().expect("free between steps");
            held.push((state.hot_orders_count(), state.hot_cards_count()));
        });
        // 201 orders and 205 cards in memory; 200 of each archived, 64 a step.
        let orders = [137, 73, 9, 1, 1, 1, 1, 1];
        let cards = [205, 205, 205, 205, 141, 77, 13, 5];
        let expected: Vec<_> = orders.into_iter().zip(cards).collect();
        assert_eq!(held, expected);
        let state = store.state();
        assert_eq!(state.hot_orders_count(), folded.hot_orders_count());
        assert_eq!(state.hot_cards_count(), folded.hot_cards_count());
        drop(state);
        let first = OrderId::parse("o1").unwrap();
        let order = store.order(&first).unwrap().expect("read from its table");
        assert_eq!(order.status, engine::OrderStatus::Delivered);
    }

    /// sled holds no row of the archived orders and keys, and every row of the pending
    /// order and the unsold keys; lookups read the archived orders from their table.
    fn assert_holds_memory_only(store: &Store) {
        let db = store.db.read().as_ref().unwrap().clone();
        let first = OrderId::parse("o1").unwrap();
        assert_eq!(rows::read_order(&db, &first).unwrap(), None, "row kept");
        let cards = db.open_tree(TreeName::Cards.as_string()).unwrap();
        assert_eq!(cards.get(rows::card_key(CardId(1))).unwrap(), None);
        assert!(cards
            .get(rows::card_key(CardId(SOLD + 1)))
            .unwrap()
            .is_some());
        let pending = OrderId::parse("pending").unwrap();
        assert!(rows::read_order(&db, &pending).unwrap().is_some());
        let order = store.order(&first).unwrap().expect("read from its table");
        assert_eq!(order.status, engine::OrderStatus::Delivered);
        assert!(store.order(&pending).unwrap().is_some());
        assert_eq!(
            crate::sled_dir::applied_lsn(&db).unwrap(),
            store.applied_index()
        );
        let dir = store.data_dir();
        assert!(!stale_sled_dir(dir).exists(), "the old sled is deleted");
        assert!(!crate::sled_dir::next_sled_dir(dir).exists());
    }

    /// A start after a snapshot archived orders rebuilds a sled grown past what memory
    /// holds, without opening it: the archived orders' rows and their keys' rows are gone
    /// (sled 0.34 frees nothing a deletion leaves), and lookups read those orders from their
    /// table. An order in memory keeps its row.
    #[test]
    fn a_start_rebuilds_a_sled_holding_archived_orders_and_reads_them_from_their_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), unsold(), 1, 1).unwrap();
        store.apply_committed(2, &sold_then_pending()).unwrap();
        wait_mirrored(&store);
        store.close().unwrap();
        drop(store);
        let (folded, _) = archived_fold(dir.path());
        let store =
            Store::open_with(dir.path(), folded, 2, 2, Arc::new(NoObserver), OUTGROWN).unwrap();
        assert_holds_memory_only(&store);
        store.close().unwrap();
    }

    /// A running node whose snapshot archives orders rebuilds sled once it has outgrown
    /// memory, swaps it in under its readers, and goes on mirroring into it; a restart
    /// finds everything.
    #[test]
    fn an_archive_rebuilds_an_outgrown_sled_while_the_node_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = sold_then_pending_store(dir.path());
        let (_, archived) = archived_fold(dir.path());
        store.archive(&archived, ARCHIVE_STEP_ITEMS);
        let started = Instant::now();
        while store.rebuilding.load(Ordering::Acquire) {
            assert!(started.elapsed().as_secs() < 20, "never rebuilt");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(store.is_healthy());
        assert_holds_memory_only(&store);
        let later = order_created("later", CardId(SOLD + 2));
        store.apply_committed(3, &[later]).unwrap();
        wait_mirrored(&store);
        store.close().unwrap();
        drop(store);
        let mut state = unsold();
        for event in &sold_then_pending() {
            state.apply(event).unwrap();
        }
        state
            .apply(&order_created("later", CardId(SOLD + 2)))
            .unwrap();
        state.archive(
            archived.archive.clone(),
            &archived.indexes,
            archived.through_events,
            &archived.cards,
        );
        let store = Store::open(dir.path(), state, 3, 3).unwrap();
        let later = OrderId::parse("later").unwrap();
        let db = store.db.read().as_ref().unwrap().clone();
        assert!(
            rows::read_order(&db, &later).unwrap().is_some(),
            "written after the swap"
        );
        assert_holds_memory_only(&store);
        store.close().unwrap();
    }

    /// A whole state's rows are made and handed over a slice at a time (a restore of a
    /// million orders held 5.6 GB when they were all made first), and the slices are the
    /// same rows in the same order.
    #[test]
    fn a_rewrite_makes_its_rows_a_slice_at_a_time() {
        let state = shop(100);
        let held = TouchedSet::held(&state);
        let whole = held.rows(&state);
        let mut slices = Vec::new();
        held.slices(&state, 16, &mut |slice| {
            slices.push(slice);
            Ok(())
        })
        .unwrap();
        assert!(slices.len() > whole.len() / 32, "{} slices", slices.len());
        // An item's rows are never split: a slice may pass the mark by one item's rows.
        let sizes: Vec<usize> = slices.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|n| *n <= 16 + 4), "{sizes:?}");
        let joined: Vec<(TreeName, Vec<u8>, Vec<u8>)> = slices
            .into_iter()
            .flatten()
            .map(|row| (row.tree, row.key, row.value))
            .collect();
        let whole: Vec<(TreeName, Vec<u8>, Vec<u8>)> = whole
            .into_iter()
            .map(|row| (row.tree, row.key, row.value))
            .collect();
        assert_eq!(joined, whole);
    }
}
