//! openraft's state machine: the shop's `Store`.
//!
//! A committed entry is applied in one of two ways. On the leader that proposed it (its
//! batch is the front of the in-flight queue), the state already holds its events: only its
//! callers' changes are published and the callers completed (`Store::complete_own`).
//! Anywhere else it is decoded and applied (`Store::apply_committed`). Either way the batch
//! must first be admitted (`storage::replay::Chains`): a batch whose premises were overtaken
//! by another leader's entries is skipped, on every node alike.
//!
//! When this node's own speculative tail is lost (another leader's batch is applied while
//! ours are in flight, or one of ours is skipped), its callers are failed and the state is
//! rebuilt from the snapshot and the log through the last applied entry, before anything
//! else is applied.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, StoredMembership};
use parking_lot::Mutex;
use storage::entry::{self as storage_entry};
use storage::replay::{self, Chains};
use storage::snapshot::{self, SnapshotHeader};
use storage::{bundle, cold};
use storage::{Pending, Store};

use crate::log_store::LogStore;
use crate::types::{self, Entry, NodeId, Origin, PanshiRaft, PeerNode, SnapshotMeta, StorageError};

/// A batch this node proposed and has not yet seen applied.
pub(crate) struct InFlight {
    pub(crate) origin: Origin,
    pub(crate) pendings: Vec<Pending>,
}

/// The replicated state's bookkeeping beside `ShopState`.
#[derive(Clone, Default)]
pub(crate) struct Applied {
    pub(crate) last: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, PeerNode>,
    pub(crate) chains: Chains,
}

impl Applied {
    /// The last entry that changed the shop's state: entries after it (blank, membership,
    /// skipped batches) change nothing, so a fold of the log need not go past it.
    pub(crate) fn state_index(&self) -> u64 {
        let applied = self.last.map_or(0, |l| l.index);
        self.chains.last.map_or(0, |(_, index)| index).min(applied)
    }
}

/// Shared by the state machine, the proposer and the node.
pub(crate) struct Machine {
    pub(crate) store: Arc<Store>,
    /// `NodeConfig::archive_step_items`.
    pub(crate) archive_step_items: usize,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: LogStore,
    /// This node's batches not yet applied, in proposal order.
    pub(crate) in_flight: Mutex<VecDeque<InFlight>>,
    /// The state holds events that will never be applied: rebuild before going on.
    pub(crate) diverged: AtomicBool,
    pub(crate) applied: Mutex<Applied>,
    /// Held while an entry is applied or the state rebuilt: they never interleave.
    pub(crate) apply_lock: Mutex<()>,
    /// Snapshot work under way on threads the async runtime does not count (blocking file
    /// I/O): `Node::activity` reports the node busy meanwhile.
    pub(crate) busy: AtomicUsize,
    /// A batch of this node's own was committed but not admitted (its chain is broken):
    /// the leadership watcher starts a new chain.
    pub(crate) own_batch_refused: AtomicBool,
    pub(crate) snapshot_failures: Mutex<SnapshotFailures>,
    /// Held while a snapshot is built or installed: each writes cold tables and removes the
    /// ones its snapshot does not name, so they never interleave.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Set while `Raft::new` reads the node's initial state: openraft 0.9.25 asks for the
    /// current snapshot there only for its metadata (`StorageHelper::get_initial_state`)
    /// and drops it, so that one read gets the snapshot file alone, not a bundle copying
    /// every cold table (7.5 GB at ten million orders: 77% of that start's samples). Were
    /// it ever sent, a replica would refuse it (its tables missing), not install less.
    pub(crate) starting: AtomicBool,
}

/// Snapshot builds that failed (a full disk): the node goes on, its log kept until a build
/// succeeds.
#[derive(Default)]
pub(crate) struct SnapshotFailures {
    /// Builds that failed since the node started (not those skipped while waiting to retry).
    pub(crate) count: u64,
    pub(crate) last_error: Option<String>,
    /// No build is tried before this: openraft asks again whenever the commit index moves,
    /// and each try folds a whole state. `Node::snapshot_now` (an operator's request) clears it.
    pub(crate) retry_at: Option<crate::clock::Instant>,
}

/// How long after a failed snapshot build the next is tried.
pub(crate) const SNAPSHOT_RETRY_AFTER_SECS: u64 = 30;

/// Counts one piece of snapshot work in `Machine::busy` while it lives.
struct Busy(Arc<Machine>);

impl Busy {
    fn new(machine: &Arc<Machine>) -> Busy {
        machine.busy.fetch_add(1, Ordering::AcqRel);
        Busy(machine.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Snapshot metadata as written into the snapshot file's `meta` section.
fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    serde_json::to_vec(meta).expect("snapshot metadata encodes")
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta, storage::Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| storage::Error::Corrupt(format!("snapshot metadata: {e}")))
}

fn sm_error(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    types::io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn snapshot_error(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    types::io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

impl Machine {
    /// Fails every in-flight batch's callers and rebuilds the state through the last
    /// applied entry.
    /// The caller holds `apply_lock`.
    pub(crate) fn rebuild(&self) -> Result<(), storage::Error> {
        let lost: Vec<InFlight> = self.in_flight.lock().drain(..).collect();
        let (through, state_index) = {
            let applied = self.applied.lock();
            (applied.last.map_or(0, |l| l.index), applied.state_index())
        };
        let folded = replay::fold_running(&self.data_dir, self.log.log(), state_index)?;
        self.store.replace_state(folded.state, through, false)?;
        for batch in lost {
            for pending in batch.pendings {
                pending.fail(storage::Error::OutcomeUnknown);
            }
        }
        self.diverged.store(false, Ordering::Release);
        tracing::warn!(
            through,
            "this node's unapplied proposals were overtaken; state rebuilt from the log"
        );
        Ok(())
    }

    fn apply_one(&self, entry: Entry) -> Result<(), storage::Error> {
        let _applying = self.apply_lock.lock();
        if self.diverged.load(Ordering::Acquire) && self.in_flight.lock().is_empty() {
            self.rebuild()?;
        }
        let index = entry.log_id.index;
        match entry.payload {
            EntryPayload::Blank => self.store.applied_nothing(index)?,
            EntryPayload::Membership(membership) => {
                self.applied.lock().membership =
                    StoredMembership::new(Some(entry.log_id), membership);
                self.store.applied_nothing(index)?;
            }
            EntryPayload::Normal(proposal) => self.apply_batch(index, proposal)?,
        }
        self.applied.lock().last = Some(entry.log_id);
        Ok(())
    }

    fn apply_batch(&self, index: u64, proposal: types::Proposal) -> Result<(), storage::Error> {
        let origin: storage_entry::Origin = proposal.origin.into();
        let admitted = self.applied.lock().chains.admits(&origin);
        let ours = {
            let mut in_flight = self.in_flight.lock();
            if in_flight
                .front()
                .is_some_and(|f| f.origin == proposal.origin)
            {
                in_flight.pop_front()
            } else {
                None
            }
        };
        match (ours, admitted) {
            (Some(batch), true) => {
                self.applied.lock().chains.admitted(origin, index);
                self.store.complete_own(index, batch.pendings)?;
            }
            (Some(batch), false) => {
                self.own_batch_refused.store(true, Ordering::Release);
                for pending in batch.pendings {
                    pending.fail(storage::Error::NotLeader { leader: None });
                }
                self.store.applied_nothing(index)?;
                self.rebuild()?;
            }
            (None, false) => self.store.applied_nothing(index)?,
            (None, true) => {
                if self.diverged.load(Ordering::Acquire) || !self.in_flight.lock().is_empty() {
                    self.rebuild()?;
                }
                let events = storage_entry::unpack_events(&proposal.events.0)?
                    .into_iter()
                    .map(storage::rows::decode_event)
                    .collect::<Result<Vec<_>, _>>()?;
                self.applied.lock().chains.admitted(origin, index);
                self.store.apply_committed(index, &events)?;
            }
        }
        Ok(())
    }

    /// `build_snapshot` on a thread of its own at nice `SNAPSHOT_NICE`, joined before this
    /// returns (so a runtime's shutdown still waits for it). A build folds and writes for
    /// about 300 ms of a core at 20,000 entries; at the request threads' priority it took
    /// that share of a 2-core machine from them, and creates waited for it.
    fn build_snapshot_in_background(&self) -> Result<(SnapshotMeta, PathBuf), storage::Error> {
        in_background("snapshot", || self.build_snapshot())?
    }

    /// Writes a snapshot of the applied state (folded from the previous snapshot and the
    /// log, so the live state, possibly ahead on a leader, is never locked or copied).
    /// Settled orders leave memory here: the folded state archives them into a cold table
    /// (durable before the snapshot that names it), and the live state drops those it has
    /// not changed since.
    fn build_snapshot(&self) -> Result<(SnapshotMeta, PathBuf), storage::Error> {
        let _building = self.snapshot_lock.lock();
        // Between entries: an entry's batch is admitted to the chains before the entry counts
        // as applied, and a snapshot taken in between would say its batch was admitted while
        // leaving it out, so a start from it would skip that batch.
        let applied = {
            let _between_entries = self.apply_lock.lock();
            self.applied.lock().clone()
        };
        let through = applied.last.map_or(0, |l| l.index);
        let admitted_through = applied.chains.last.map_or(0, |(_, index)| index);
        if admitted_through > through {
            return Err(storage::Error::Corrupt(format!(
                "a snapshot through {through} whose chains admitted entry {admitted_through}"
            )));
        }
        let mut folded =
            replay::fold_running(&self.data_dir, self.log.log(), applied.state_index())?;
        let term = applied.last.map_or(0, |l| l.leader_id.term);
        let cold_dir = cold::cold_dir(&self.data_dir);
        let archived = cold::archive(
            &cold_dir,
            &cold::table_name(through, term),
            &folded.archive,
            &mut folded.state,
        )?;
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership,
            snapshot_id: format!(
                "{}-{}",
                through,
                applied.last.map_or(0, |l| l.leader_id.term)
            ),
        };
        let header = SnapshotHeader {
            meta: encode_meta(&meta),
            last_index: through,
            last_term: term,
            chains: applied.chains,
            cold: archived.archive.names(),
        };
        let path = snapshot::write(
            &snapshot::snapshot_dir(&self.data_dir),
            &header,
            &folded.state,
            snapshot::SNAPSHOT_HEADROOM_BYTES,
        )?;
        cold::remove_unnamed(&cold_dir, &header.cold)?;
        self.store.archive(&archived, self.archive_step_items);
        tracing::info!(through, path = %path.display(), "snapshot written");
        Ok((meta, path))
    }
}

/// The CPU priority of a snapshot's build: nice 10 weighs about a tenth of a request
/// thread's nice 0, so a build takes what the requests leave. Under full load it takes
/// many times as long, and the log before it waits that long to be purged.
const SNAPSHOT_NICE: i32 = 10;

/// Runs `work` on a thread of its own named `name`, `SNAPSHOT_NICE` below the process's
/// priority, and waits for it.
fn in_background<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        let running = std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(scope, || {
                // Relative to the process's own nice: never above it.
                let thread = Some(rustix::thread::gettid());
                let lowered = rustix::process::getpriority_process(thread).and_then(|nice| {
                    rustix::process::setpriority_process(thread, (nice + SNAPSHOT_NICE).min(19))
                });
                if let Err(error) = lowered {
                    tracing::debug!(%error, name, "a background thread keeps its priority");
                }
                work()
            })?;
        Ok(running
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct ShopMachine {
    pub(crate) machine: Arc<Machine>,
}

async fn open_snapshot(
    path: &Path,
    meta: SnapshotMeta,
) -> Result<Snapshot<PanshiRaft>, StorageError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| types::io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

/// Where a snapshot bundle from the leader arrives.
const INCOMING_SNAPSHOT: &str = "incoming.part";

impl RaftSnapshotBuilder<PanshiRaft> for ShopMachine {
    /// An I/O error (a full disk) is no error to openraft, which would stop the node for
    /// good: the build is counted as failed, logged, retried after
    /// `SNAPSHOT_RETRY_AFTER_SECS`, and openraft is handed `unchanged`.
    async fn build_snapshot(&mut self) -> Result<Snapshot<PanshiRaft>, StorageError> {
        let _busy = Busy::new(&self.machine);
        let now = <crate::clock::Instant as openraft::Instant>::now();
        let deferred = self
            .machine
            .snapshot_failures
            .lock()
            .retry_at
            .is_some_and(|at| now < at);
        if deferred {
            return self.unchanged().await;
        }
        let machine = self.machine.clone();
        let built = tokio::task::spawn_blocking(move || machine.build_snapshot_in_background())
            .await
            .map_err(snapshot_error)?;
        match built {
            Ok((meta, path)) => {
                self.machine.snapshot_failures.lock().retry_at = None;
                open_snapshot(&path, meta).await
            }
            Err(storage::Error::Io(error)) => {
                tracing::error!(
                    %error,
                    retry_after_secs = SNAPSHOT_RETRY_AFTER_SECS,
                    "no snapshot written; the log is kept until one is"
                );
                {
                    let mut failures = self.machine.snapshot_failures.lock();
                    failures.count += 1;
                    failures.last_error = Some(error.to_string());
                    // From the failure, not the start: a build at a million orders takes
                    // seconds.
                    let failed_at = <crate::clock::Instant as openraft::Instant>::now();
                    failures.retry_at =
                        Some(failed_at + Duration::from_secs(SNAPSHOT_RETRY_AFTER_SECS));
                }
                self.unchanged().await
            }
            Err(other) => Err(snapshot_error(other)),
        }
    }
}

impl ShopMachine {
    /// What a build that wrote nothing hands openraft. openraft 0.9.25 keeps only a built
    /// snapshot's meta (`sm::Worker::build_snapshot`) and takes it only when its log id is
    /// newer than the current snapshot's (`SnapshotHandler::update_snapshot`): a meta without
    /// one changes nothing, and clears its "building" flag so a later build may start. The
    /// data is a handle on the data dir that nobody reads.
    async fn unchanged(&self) -> Result<Snapshot<PanshiRaft>, StorageError> {
        let placeholder = tokio::fs::File::open(&self.machine.data_dir)
            .await
            .map_err(snapshot_error)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: "unchanged".into(),
            },
            snapshot: Box::new(placeholder),
        })
    }
}

impl RaftStateMachine<PanshiRaft> for ShopMachine {
    type SnapshotBuilder = ShopMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError> {
        let applied = self.machine.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.machine.apply_one(entry).map_err(sm_error)?;
            results.push(());
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let _busy = Busy::new(&self.machine);
        let dir = snapshot::snapshot_dir(&self.machine.data_dir);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(snapshot_error)?;
        let file = tokio::fs::File::create(dir.join(INCOMING_SNAPSHOT))
            .await
            .map_err(snapshot_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let _busy = Busy::new(&self.machine);
        let mut snapshot = snapshot;
        snapshot.sync_all().await.map_err(snapshot_error)?;
        let incoming = snapshot::snapshot_dir(&self.machine.data_dir).join(INCOMING_SNAPSHOT);
        if !same_file(&snapshot, &incoming).await {
            // Handed a snapshot that is not the file chunks were written to: copy it there.
            use tokio::io::AsyncSeekExt;
            snapshot
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(snapshot_error)?;
            let mut target = tokio::fs::File::create(&incoming)
                .await
                .map_err(snapshot_error)?;
            tokio::io::copy(&mut *snapshot, &mut target)
                .await
                .map_err(snapshot_error)?;
            target.sync_all().await.map_err(snapshot_error)?;
        }
        drop(snapshot);
        let machine = self.machine.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || install(&machine, meta))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<PanshiRaft>>, StorageError> {
        let _busy = Busy::new(&self.machine);
        let machine = self.machine.clone();
        let bundled = tokio::task::spawn_blocking(move || {
            // Not while a build or an install replaces the snapshot or removes tables the
            // bundle copies.
            let _exporting = machine.snapshot_lock.lock();
            let dir = snapshot::snapshot_dir(&machine.data_dir);
            let Some(path) = snapshot::latest(&dir)? else {
                return Ok(None);
            };
            let (bundle, header) = match machine.starting.swap(false, Ordering::AcqRel) {
                true => (std::fs::File::open(&path)?, snapshot::verify(&path)?),
                false => bundle::export(&machine.data_dir, &path)?,
            };
            Ok::<_, storage::Error>(Some((bundle, decode_meta(&header.meta)?)))
        })
        .await
        .map_err(snapshot_error)?
        .map_err(snapshot_error)?;
        Ok(bundled.map(|(bundle, meta)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(bundle)),
        }))
    }
}

async fn same_file(file: &tokio::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Installs a snapshot received from the leader: checks it, makes it the current one, and
/// replaces the state and sled with it.
fn install(machine: &Machine, meta: SnapshotMeta) -> Result<(), storage::Error> {
    let _installing = machine.snapshot_lock.lock();
    let dir = snapshot::snapshot_dir(&machine.data_dir);
    let bundle = dir.join(INCOMING_SNAPSHOT);
    let (snapshot::Loaded { header, state, .. }, incoming) =
        bundle::unpack(&bundle, &machine.data_dir)?;
    let _ = std::fs::remove_file(&bundle);
    let last = meta.last_log_id.map_or(0, |l| l.index);
    if header.last_index != last {
        return Err(storage::Error::Corrupt(format!(
            "snapshot holds index {} but is announced as {last}",
            header.last_index
        )));
    }
    let path = dir.join(format!(
        "{:020}-{:020}.snap",
        header.last_index, header.last_term
    ));
    std::fs::rename(&incoming, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    for entry in std::fs::read_dir(&dir)? {
        let other = entry?.path();
        if other != path && other.extension().is_some_and(|e| e == "snap") {
            std::fs::remove_file(other)?;
        }
    }
    cold::remove_unnamed(&cold::cold_dir(&machine.data_dir), &header.cold)?;
    let lost: Vec<InFlight> = machine.in_flight.lock().drain(..).collect();
    for batch in lost {
        for pending in batch.pendings {
            pending.fail(storage::Error::OutcomeUnknown);
        }
    }
    machine.store.replace_state(state, last, true)?;
    machine.diverged.store(false, Ordering::Release);
    *machine.applied.lock() = Applied {
        last: meta.last_log_id,
        membership: meta.last_membership,
        chains: header.chains,
    };
    tracing::info!(last, "installed a snapshot from the leader");
    Ok(())
}

#[cfg(test)]
mod tests {
    use engine::{Currency, Event, Product, Sku};

    use super::*;

    /// The storage of a data dir whose node committed one product and stopped, opened
    /// again without a node: its log, its state machine and the machine inside.
    fn reopened_with_a_product(dir: &Path) -> (LogStore, ShopMachine, Arc<Machine>) {
        let node = crate::Node::start_single(dir).unwrap();
        let product = Product {
            sku: Sku::parse("one").unwrap(),
            name: "One".into(),
            price_cents: 100,
            currency: Currency::parse("CNY").unwrap(),
            created_at_ms: 1,
        };
        let durable = node.store().commit(&Event::ProductCreated(product));
        durable.unwrap().wait_blocking().unwrap();
        node.shutdown();
        let (log, state_machine) = crate::node::open_storage(dir).unwrap();
        let machine = state_machine.machine.clone();
        (log, state_machine, machine)
    }

    /// A snapshot's build runs on a thread of its own at nice `SNAPSHOT_NICE` (at the
    /// request threads' priority it took a core of two from them for 300 ms, and creates
    /// waited tens of milliseconds), and the thread that waits for it keeps its priority.
    #[test]
    fn background_work_runs_at_a_lower_priority_on_its_own_thread() {
        let priority = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = priority().unwrap();
        let caller = std::thread::current().id();
        let (name, thread, inside) = in_background("background", || {
            let current = std::thread::current();
            (current.name().map(str::to_owned), current.id(), priority())
        })
        .unwrap();
        assert_eq!(name.as_deref(), Some("background"));
        assert_ne!(thread, caller);
        assert_eq!(inside.unwrap(), (before + SNAPSHOT_NICE).min(19));
        assert_eq!(priority().unwrap(), before, "the caller's priority changed");
    }

    /// An entry's batch is admitted to the chains before the entry counts as applied. A
    /// snapshot built in between said the batch was admitted while leaving the entry out, so
    /// a start from it skipped the batch and then refused the entry that used it (a
    /// 3,000,000-order bench could not restart: "event for unknown order"). The build waits.
    #[test]
    fn a_snapshot_waits_for_the_entry_being_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _state_machine, machine) = reopened_with_a_product(dir.path());
        let entries = log.entries(..).unwrap();
        let at = entries
            .iter()
            .rposition(|e| matches!(e.payload, EntryPayload::Normal(_)))
            .expect("the product's entry");
        for entry in &entries[..at] {
            machine.apply_one(entry.clone()).unwrap();
        }
        let entry = entries[at].clone();
        let EntryPayload::Normal(proposal) = &entry.payload else {
            unreachable!()
        };
        // Half way through applying the entry, as `apply_batch` is.
        let applying = machine.apply_lock.lock();
        let origin: storage_entry::Origin = proposal.origin.into();
        machine
            .applied
            .lock()
            .chains
            .admitted(origin, entry.log_id.index);
        let builder = std::thread::spawn({
            let machine = machine.clone();
            move || machine.build_snapshot()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!builder.is_finished(), "the build waits for the entry");
        let events = storage_entry::unpack_events(&proposal.events.0)
            .unwrap()
            .into_iter()
            .map(|e| storage::rows::decode_event(e).unwrap())
            .collect::<Vec<_>>();
        machine
            .store
            .apply_committed(entry.log_id.index, &events)
            .unwrap();
        machine.applied.lock().last = Some(entry.log_id);
        drop(applying);
        let (_, path) = builder.join().unwrap().unwrap();
        let header = snapshot::verify(&path).unwrap();
        assert_eq!(header.last_index, entry.log_id.index);
        assert_eq!(
            header.chains.last.map(|(_, index)| index),
            Some(header.last_index)
        );
        let loaded = snapshot::read(&path).unwrap();
        assert_eq!(
            loaded.state.products().count(),
            1,
            "the entry is in the snapshot"
        );
    }

    /// A start asks for the current snapshot only for its metadata: it gets the snapshot file
    /// alone, not a bundle copying every cold table (which took most of a ten-million-order
    /// start). Every other read gets the whole bundle.
    #[test]
    fn a_start_reads_the_snapshot_without_bundling_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, state_machine, machine) = reopened_with_a_product(dir.path());
        let (meta, path) = machine.build_snapshot().unwrap();
        let plain = std::fs::metadata(&path).unwrap().len();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let read = || {
            let mut state_machine = state_machine.clone();
            let snapshot = runtime
                .block_on(state_machine.get_current_snapshot())
                .unwrap()
                .expect("a snapshot");
            assert_eq!(snapshot.meta, meta);
            let file = runtime.block_on(snapshot.snapshot.into_std());
            file.metadata().unwrap().len()
        };
        machine.starting.store(true, Ordering::Release);
        assert_eq!(read(), plain, "the start's read is the snapshot alone");
        assert!(!machine.starting.load(Ordering::Acquire), "once");
        assert!(read() > plain, "any other read is a bundle");
    }
}
