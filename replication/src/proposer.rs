//! Batching the leader's validated events into Raft entries.
//!
//! `Store::commit` hands each event here under the state's write lock (so queue order is
//! apply order). One task drains the queue into a batch of up to `BATCH_EVENTS_MAX` events
//! or `BATCH_BYTES_MAX` bytes and proposes it as one entry, with at most
//! `BATCHES_IN_FLIGHT_MAX` entries not yet applied (`BATCHES_IN_FLIGHT_ALONE` for a voter
//! without peers); while they are in flight the next batch
//! grows, which is group commit carried over to consensus (openraft 0.9 syncs once per
//! entry). A voter alone, with one entry in flight, lingers `LINGER` before a batch much
//! smaller than the last, so that stragglers share its entry.
//!
//! A chain of batches is one stretch of leadership (`storage::entry::Origin`). The first
//! failure in a chain halts it: every later event of the chain fails (`NotLeader`, never
//! proposed) and the state is marked diverged, to be rebuilt before the next chain starts.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use storage::entry::pack_event;
use storage::{Pending, ProposalSink};
use tokio::sync::{mpsc, Semaphore};

use crate::state_machine::{InFlight, Machine};
use crate::types::{NodeId, Origin, Proposal, Raft, SharedBytes};

/// Events waiting to be proposed; a full queue refuses at once (`Busy`, HTTP 503).
pub const PROPOSAL_QUEUE_EVENTS: usize = 65_536;
/// Most events in one entry.
pub const BATCH_EVENTS_MAX: usize = 8_192;
/// Most event bytes in one entry.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Entries proposed and not yet applied, when there are other voters: their round trips
/// overlap.
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Entries proposed and not yet applied by a voter alone (a cluster of one): there is no
/// round trip to overlap, openraft 0.9 flushes one append at a time anyway, and every entry
/// costs its own append, flush callback and apply. One in flight makes the next batch as
/// large as possible: +18% full purchases over HTTP, -10% CPU and -0.5 context switches
/// per purchase against 4 (closed-loop probe, 64 in flight; 2 in flight kept little of it).
pub const BATCHES_IN_FLIGHT_ALONE: usize = 1;
/// A voter alone lingers before proposing a batch that is much smaller than the last one:
/// the clients the last entry answered send their next events one by one, as the HTTP
/// workers get to them, and without a wait the first went alone into an entry of its own,
/// with its own fsync (a third of the entries held 4 events or fewer at 64 purchases in
/// flight). It lingers when the last batch carried at least this many events...
pub const LINGER_AFTER_EVENTS: usize = 8;
/// ...and fewer than half as many are waiting, for this long: about the time the HTTP
/// workers take to answer the last entry's clients and read their next requests. Never at
/// low load (the last batch is small there).
///
/// The wait is a thread sleep, not tokio's timer. That one counts whole milliseconds, so
/// a wait of 200 us ended 1-2 ms later, and at 64 purchases in flight the machine sat
/// 20-29% idle with every buyer waiting on the next entry. Exactly 400 us: 9-11% idle,
/// 45-55% of the no-work ceiling against 38-46% (7 runs each; docs/BENCHMARKS.md), for
/// about twice the entries (0.085-0.090 against 0.044-0.053 a purchase) and 0.2 more
/// context switches a purchase; 200-300 us made still more entries and gained less. It
/// costs tail latency at middling steady load (docs/BENCHMARKS.md). Blocking is safe: only a
/// voter alone lingers, its Raft runtime has one worker (`node::RAFT_WORKERS_ALONE`), and
/// with its one entry applied that worker has nothing else to do but replicate to
/// learners, which waits this long at most.
pub const LINGER: std::time::Duration = std::time::Duration::from_micros(400);
const _: () = assert!(BATCH_EVENTS_MAX <= PROPOSAL_QUEUE_EVENTS);
const _: () = assert!(BATCH_BYTES_MAX < storage::log::RECORD_BYTES_MAX);

struct Queued {
    payload: Vec<u8>,
    pending: Pending,
    /// The chain the event was applied under.
    epoch: u64,
}

/// The current chain: set when the node becomes an active leader.
#[derive(Clone, Copy, Default)]
struct Chain {
    epoch: u64,
    base: u64,
    next_batch: u64,
    halted: bool,
}

/// The `ProposalSink` half, called by `Store::commit`.
pub(crate) struct Proposer {
    queue: mpsc::Sender<Queued>,
    queued: AtomicUsize,
    /// The chain events are applied under now (0: none).
    epoch: AtomicU64,
    chain: Mutex<Chain>,
    me: NodeId,
    incarnation: u64,
    closed: AtomicBool,
}

impl Proposer {
    pub(crate) fn start(
        me: NodeId,
        incarnation: u64,
        raft: Raft,
        machine: Arc<Machine>,
        runtime: &tokio::runtime::Handle,
        batches_in_flight: usize,
    ) -> Arc<Self> {
        assert!(batches_in_flight >= 1);
        // A lingering proposer blocks its runtime's worker (`LINGER`): it must be the only one.
        assert!(
            batches_in_flight != BATCHES_IN_FLIGHT_ALONE || runtime.metrics().num_workers() == 1,
            "a voter alone's proposer lingers on a runtime of one worker"
        );
        let (queue, receiver) = mpsc::channel(PROPOSAL_QUEUE_EVENTS);
        let proposer = Arc::new(Self {
            queue,
            queued: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            chain: Mutex::default(),
            me,
            incarnation,
            closed: AtomicBool::new(false),
        });
        runtime.spawn(run(
            proposer.clone(),
            receiver,
            raft,
            machine,
            batches_in_flight,
        ));
        proposer
    }

    /// Starts a new chain on the committed state through `base` (the node just passed its
    /// readiness gate). Returns its epoch.
    pub(crate) fn begin_chain(&self, base: u64) -> u64 {
        let mut chain = self.chain.lock();
        *chain = Chain {
            epoch: chain.epoch + 1,
            base,
            next_batch: 1,
            halted: false,
        };
        self.epoch.store(chain.epoch, Ordering::Release);
        chain.epoch
    }

    /// Ends the chain: events still queued fail when drained.
    pub(crate) fn end_chain(&self) {
        self.chain.lock().halted = true;
        self.epoch.store(0, Ordering::Release);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.end_chain();
    }

    /// Whether the current chain stopped taking events (failed, or ended with the gate).
    pub(crate) fn is_halted(&self) -> bool {
        self.chain.lock().halted
    }

    pub(crate) fn queued_count(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

impl ProposalSink for Proposer {
    fn has_room(&self) -> bool {
        self.queue.capacity() > 0
    }

    fn propose(&self, payload: Vec<u8>, pending: Pending) -> Result<(), storage::Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(storage::Error::Closed);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.queue
            .try_send(Queued {
                payload,
                pending,
                epoch,
            })
            .map_err(|_| {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                storage::Error::Closed
            })
    }
}

/// Fails events that will never be proposed; their effects are in the state, so it must be
/// rebuilt.
fn refuse(batch: Vec<Queued>, proposer: &Proposer, machine: &Machine) {
    if batch.is_empty() {
        return;
    }
    proposer.queued.fetch_sub(batch.len(), Ordering::AcqRel);
    machine.diverged.store(true, Ordering::Release);
    for queued in batch {
        queued
            .pending
            .fail(storage::Error::NotLeader { leader: None });
    }
}

async fn run(
    proposer: Arc<Proposer>,
    mut receiver: mpsc::Receiver<Queued>,
    raft: Raft,
    machine: Arc<Machine>,
    batches_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(batches_in_flight));
    let mut last_batch_events = 0;
    while let Some(first) = receiver.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if batches_in_flight == BATCHES_IN_FLIGHT_ALONE
            && lingers(last_batch_events, receiver.len() + 1)
        {
            std::thread::sleep(LINGER);
        }
        let mut batch = vec![first];
        let mut bytes = batch[0].payload.len();
        while batch.len() < BATCH_EVENTS_MAX && bytes < BATCH_BYTES_MAX {
            match receiver.try_recv() {
                Ok(next) => {
                    bytes += next.payload.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        last_batch_events = batch.len();
        let origin = {
            let mut chain = proposer.chain.lock();
            let (current, stale): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|q| q.epoch == chain.epoch);
            refuse(stale, &proposer, &machine);
            if chain.halted || current.is_empty() {
                refuse(current, &proposer, &machine);
                continue;
            }
            batch = current;
            let origin = Origin {
                node: proposer.me,
                incarnation: proposer.incarnation,
                epoch: chain.epoch,
                batch: chain.next_batch,
                base: chain.base,
            };
            chain.next_batch += 1;
            origin
        };
        propose(&proposer, &raft, &machine, origin, batch, slot).await;
    }
}

/// Whether a batch that finds `waiting` events waits for more (`LINGER`), after one of
/// `last` events.
fn lingers(last: usize, waiting: usize) -> bool {
    last >= LINGER_AFTER_EVENTS && waiting * 2 < last
}

async fn propose(
    proposer: &Arc<Proposer>,
    raft: &Raft,
    machine: &Arc<Machine>,
    origin: Origin,
    batch: Vec<Queued>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let mut events = Vec::with_capacity(batch.iter().map(|q| q.payload.len() + 4).sum());
    let mut pendings = Vec::with_capacity(batch.len());
    let count = batch.len();
    for queued in batch {
        pack_event(&mut events, &queued.payload);
        pendings.push(queued.pending);
    }
    machine
        .in_flight
        .lock()
        .push_back(InFlight { origin, pendings });
    // Counted out only once in flight: "nothing queued and nothing in flight" is exact.
    proposer.queued.fetch_sub(count, Ordering::AcqRel);
    let proposal = Proposal {
        origin,
        events: SharedBytes(Arc::new(events)),
    };
    let failed = match raft.client_write_ff(proposal).await {
        Ok(receiver) => {
            let (proposer, machine) = (proposer.clone(), machine.clone());
            tokio::spawn(async move {
                let result = receiver.await;
                drop(slot);
                if !matches!(result, Ok(Ok(_))) {
                    chain_failed(&proposer, &machine, origin);
                }
            });
            return;
        }
        Err(_) => true,
    };
    if failed {
        chain_failed(proposer, machine, origin);
    }
}

/// A batch will never be applied: it and every later batch of its chain fail, the chain
/// halts, and the state must be rebuilt.
fn chain_failed(proposer: &Proposer, machine: &Machine, origin: Origin) {
    {
        let mut chain = proposer.chain.lock();
        if chain.epoch == origin.epoch {
            chain.halted = true;
        }
    }
    let doomed: Vec<InFlight> = {
        let mut in_flight = machine.in_flight.lock();
        let keep = in_flight
            .iter()
            .position(|f| f.origin.same_chain_as(&origin) && f.origin.batch >= origin.batch)
            .unwrap_or(in_flight.len());
        in_flight.split_off(keep).into()
    };
    machine.diverged.store(true, Ordering::Release);
    for batch in doomed {
        for pending in batch.pendings {
            pending.fail(storage::Error::NotLeader { leader: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_batch_much_smaller_than_a_large_last_one_lingers() {
        // Low load: the last batch was small, so nothing waits.
        assert!(!lingers(0, 1));
        assert!(!lingers(LINGER_AFTER_EVENTS - 1, 1));
        // Under load: the first of many stragglers waits for the rest.
        assert!(lingers(LINGER_AFTER_EVENTS, 1));
        assert!(lingers(40, 19));
        // Enough are waiting already.
        assert!(!lingers(40, 20));
        assert!(!lingers(LINGER_AFTER_EVENTS, LINGER_AFTER_EVENTS / 2));
    }
}
