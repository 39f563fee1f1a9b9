//! A running node: the log store, the shop's state machine and openraft wired together,
//! cluster formation, the readiness gate, and what operators and the edge ask of the node.
//!
//! The readiness gate: this node commits (and its actors run) only while it leads, has
//! heard from a majority within the election timeout, and has applied every entry committed
//! before its term (`ensure_linearizable` covers its own blank entry) with none of its own
//! proposals left over. Losing any of these closes the gate at once. Without the gate a new
//! leader could seed its pools from a state that lacks a committed reservation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy, StoredMembership};
use parking_lot::Mutex;
use storage::replay;
use storage::{CommitObserver, Store};
use tokio::runtime::Runtime;

use crate::log_store::LogStore;
use crate::network::{self, NetworkFactory, Rpc, Transport, TransportError};
use crate::proposer::Proposer;
use crate::state_machine::{self, Applied, Machine, ShopMachine};
use crate::types::{NodeId, PeerNode, Raft};
use crate::Error;

/// Told when this node starts and stops being the active leader (actors, timers, workers).
pub trait Leadership: Send + Sync + 'static {
    fn activate(&self);
    fn deactivate(&self);
}

struct NoLeadership;
impl Leadership for NoLeadership {
    fn activate(&self) {}
    fn deactivate(&self) {}
}

/// How a node is configured.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Every voter, this node included when it votes: id -> public base URL.
    pub voters: BTreeMap<NodeId, String>,
    /// Nodes that replicate everything and never vote.
    pub learners: BTreeMap<NodeId, String>,
    pub heartbeat_ms: u64,
    /// The shortest election timeout; the longest is twice it.
    pub election_timeout_ms: u64,
    /// A snapshot is taken after this many entries since the last.
    pub snapshot_every_entries: u64,
    /// Log entries kept after a snapshot (older ones are purged): a follower less far behind
    /// catches up from the log, one further behind by the snapshot.
    pub kept_after_snapshot_entries: u64,
    /// Skip the readiness gate (only the simulator's canary, which must then find a
    /// double sale).
    pub unsafe_skip_readiness_gate: bool,
    /// Elections, heartbeats and snapshots happen only when asked (`Node::trigger`), never
    /// on openraft's timers, whose election timeouts draw from an unseeded RNG. For the
    /// simulator, which also runs on simulated time (`clock::simulate`) and so replays a
    /// seed exactly.
    pub manual_ticks: bool,
    /// Tells this process's chains from an earlier run's (`storage::entry::Origin`); `None`
    /// draws it at random (the simulator derives it from its seed).
    pub incarnation: Option<u64>,
    /// When a snapshot that archives orders (or a start) rebuilds sled with the rows memory
    /// holds (`storage::sled_dir::outgrown`).
    pub sled_rebuild: storage::sled_dir::SledRebuild,
    /// Archived orders (or cards) the live state drops per hold of its lock
    /// (`storage::store::ARCHIVE_STEP_ITEMS`; the simulator takes small steps so that its small
    /// archives take several).
    pub archive_step_items: usize,
}

impl NodeConfig {
    /// One node on its own: the embedded default.
    pub fn single() -> Self {
        Self {
            node_id: 1,
            voters: BTreeMap::from([(1, String::new())]),
            learners: BTreeMap::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_every_entries: 20_000,
            kept_after_snapshot_entries: 1_000,
            unsafe_skip_readiness_gate: false,
            manual_ticks: false,
            incarnation: None,
            sled_rebuild: storage::sled_dir::SledRebuild::default(),
            archive_step_items: storage::store::ARCHIVE_STEP_ITEMS,
        }
    }

    fn raft_config(&self) -> Result<Config, Error> {
        let config = Config {
            cluster_name: "panshi".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            max_payload_entries: 64,
            snapshot_policy: if self.manual_ticks {
                SnapshotPolicy::Never
            } else {
                SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries)
            },
            max_in_snapshot_log_to_keep: self.kept_after_snapshot_entries,
            install_snapshot_timeout: 5_000,
            enable_tick: !self.manual_ticks,
            enable_heartbeat: !self.manual_ticks,
            enable_elect: !self.manual_ticks,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| Error::Config(format!("raft timings: {e}")))
    }

    fn is_voter(&self) -> bool {
        self.voters.contains_key(&self.node_id)
    }
}

/// What `/api/v1/ops/cluster` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Milliseconds since a majority last answered this leader (`None` elsewhere).
    pub millis_since_quorum_ack: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// This node commits (it leads and passed its readiness gate).
    pub active: bool,
    /// Snapshot builds that failed (a full disk) since this node started; after one, the
    /// next is tried 30 s later.
    pub snapshot_failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub url: String,
    pub role: Role,
    /// The last index known replicated to it (on the leader; `None` elsewhere).
    pub matched_index: Option<u64>,
}

/// What `Node::trigger` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Election,
    Heartbeat,
    Snapshot,
}

/// See `Node::activity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub busy: bool,
    pub progress: u64,
}

/// See `Node::log_bounds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// The last entry purged: the log holds `purged + 1 ..= last`.
    pub purged: Option<u64>,
    /// The last entry the log holds (or the last purged).
    pub last: Option<u64>,
    /// The last entry the current snapshot covers.
    pub snapshot: Option<u64>,
    pub committed: u64,
}

/// See `Node::log_entries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEntry {
    pub index: u64,
    pub term: u64,
    pub bytes: Vec<u8>,
}

struct Inner {
    raft: Raft,
    store: Arc<Store>,
    machine: Arc<Machine>,
    proposer: Arc<Proposer>,
    config: NodeConfig,
    leadership: Mutex<Arc<dyn Leadership>>,
    active: AtomicBool,
    transport: Arc<dyn Transport>,
    log: LogStore,
    /// What opening the log found (a torn tail cut, records read).
    recovery: storage::log::Recovery,
    data_dir: PathBuf,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    runtime: Arc<RuntimeSlot>,
}

fn pristine(log: &LogStore, data_dir: &Path) -> Result<bool, Error> {
    let snapshot = storage::snapshot::latest(&storage::snapshot::snapshot_dir(data_dir))?;
    let vote = storage::log::read_file(log.dir(), "vote")?;
    Ok(log.last_log_id().is_none() && snapshot.is_none() && vote.is_none())
}

/// The node's runtime, stopped when the last handle goes (without blocking, when that
/// happens inside another runtime).
struct RuntimeSlot(Mutex<Option<Runtime>>);

impl std::ops::Deref for RuntimeSlot {
    type Target = Mutex<Option<Runtime>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for RuntimeSlot {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.lock().take() {
            stop_runtime(runtime);
        }
    }
}

fn stop_runtime(runtime: Runtime) {
    if tokio::runtime::Handle::try_current().is_ok() {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Runs `future` to completion on the node's runtime, from a thread of its own when the
/// caller is itself inside a runtime (tokio forbids blocking on one runtime inside another).
fn block_on_outside<F: std::future::Future + Send>(
    runtime: &tokio::runtime::Handle,
    future: F,
) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .expect("the node's runtime thread")
    })
}

/// Loads the newest snapshot into a `Store` and the state machine around it.
pub(crate) fn open_machine(
    data_dir: &Path,
    log: &LogStore,
    observer: Arc<dyn CommitObserver>,
    config: &NodeConfig,
) -> Result<Arc<Machine>, Error> {
    let folded = replay::from_snapshot(data_dir)?;
    let applied = match &folded.snapshot {
        Some(header) => {
            let meta = state_machine::decode_meta(&header.meta)?;
            Applied {
                last: meta.last_log_id,
                membership: meta.last_membership,
                chains: folded.chains,
            }
        }
        None => Applied {
            last: None,
            membership: StoredMembership::default(),
            chains: folded.chains,
        },
    };
    let store = Arc::new(Store::open_with(
        data_dir,
        folded.state,
        applied.last.map_or(0, |l| l.index),
        log.last_log_id().map_or(0, |l| l.index),
        observer,
        config.sled_rebuild,
    )?);
    Ok(Arc::new(Machine {
        store,
        archive_step_items: config.archive_step_items,
        data_dir: data_dir.to_owned(),
        log: log.clone(),
        in_flight: Mutex::default(),
        diverged: AtomicBool::new(false),
        applied: Mutex::new(applied),
        apply_lock: Mutex::new(()),
        busy: std::sync::atomic::AtomicUsize::new(0),
        own_batch_refused: AtomicBool::new(false),
        snapshot_failures: Mutex::default(),
        snapshot_lock: Mutex::new(()),
        starting: AtomicBool::new(false),
    }))
}

/// The log storage and state machine of a data dir, without a running node: for openraft's
/// storage test suite.
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, ShopMachine), Error> {
    std::fs::create_dir_all(data_dir)?;
    let (log, _) = LogStore::open(&storage::log::log_dir(data_dir))?;
    let config = NodeConfig::single();
    let machine = open_machine(data_dir, &log, Arc::new(storage::NoObserver), &config)?;
    Ok((log, ShopMachine { machine }))
}

/// openraft's runtime workers in a cluster: the leader's replication to each peer runs
/// beside its core and its state machine.
pub const RAFT_WORKERS: usize = 2;
/// openraft's runtime workers for a voter alone, and under the simulator (where a node's
/// tasks then take turns in an order that depends less on thread timing). Its core, log
/// and state machine tasks hand each entry on to one another; on one worker a hand-off
/// is a queued task, on two it wakes the idle one (1.78-1.88 -> 1.46-1.54 context switches
/// per purchase, 64 in flight; docs/BENCHMARKS.md). Snapshots run on blocking threads.
pub const RAFT_WORKERS_ALONE: usize = 1;

/// How long `snapshot_now` waits in all, and how long before it asks again.
const SNAPSHOT_WAIT_SECS: u64 = 600;
const SNAPSHOT_ASK_AGAIN_MS: u64 = 2_000;

impl Node {
    /// Opens a data dir and starts the node: recovers the log, loads the newest snapshot,
    /// starts openraft on its own runtime, and forms the cluster on a pristine data dir.
    pub fn start(
        data_dir: &Path,
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        observer: Arc<dyn CommitObserver>,
    ) -> Result<Node, Error> {
        if !config.is_voter() && !config.learners.contains_key(&config.node_id) {
            return Err(Error::Config(format!(
                "node {} is neither among the voters nor the learners",
                config.node_id
            )));
        }
        std::fs::create_dir_all(data_dir)?;
        crate::migrate::migrate_if_needed(data_dir, &config)?;
        let workers = if config.manual_ticks || config.voters.len() <= 1 {
            RAFT_WORKERS_ALONE
        } else {
            RAFT_WORKERS
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("raft")
            .enable_all()
            .build()?;
        let (log, recovery) = LogStore::open(&storage::log::log_dir(data_dir))?;
        let is_pristine = pristine(&log, data_dir)?;
        let machine = open_machine(data_dir, &log, observer, &config)?;
        let store = machine.store.clone();
        let raft_config = Arc::new(config.raft_config()?);
        let network = NetworkFactory {
            transport: transport.clone(),
        };
        let sm = ShopMachine {
            machine: machine.clone(),
        };
        machine.starting.store(true, Ordering::Release);
        let raft = block_on_outside(
            runtime.handle(),
            Raft::new(config.node_id, raft_config, network, log.clone(), sm),
        );
        machine.starting.store(false, Ordering::Release);
        let raft = raft?;
        let incarnation = config.incarnation.unwrap_or_else(rand::random::<u64>) | 1;
        // Decided from the configuration at start: a voter alone has no round trip to
        // overlap (a cluster grown at run time keeps this until its next start).
        let batches_in_flight = match config.voters.len() {
            0 | 1 => crate::proposer::BATCHES_IN_FLIGHT_ALONE,
            _ => crate::proposer::BATCHES_IN_FLIGHT_MAX,
        };
        let proposer = Proposer::start(
            config.node_id,
            incarnation,
            raft.clone(),
            machine.clone(),
            runtime.handle(),
            batches_in_flight,
        );
        store.set_sink(proposer.clone());
        let node = Node {
            inner: Arc::new(Inner {
                raft,
                store,
                machine,
                proposer,
                config,
                leadership: Mutex::new(Arc::new(NoLeadership)),
                active: AtomicBool::new(false),
                transport,
                log,
                recovery,
                data_dir: data_dir.to_owned(),
            }),
            runtime: Arc::new(RuntimeSlot(Mutex::new(Some(runtime)))),
        };
        node.form(is_pristine)?;
        node.spawn(watch_leadership(node.clone()));
        Ok(node)
    }

    /// One node on its own, started and leading (for tools, tests and the simulator): blocks
    /// until its readiness gate is open.
    pub fn start_single(data_dir: &Path) -> Result<Node, Error> {
        Self::start_alone(data_dir, NodeConfig::single())
    }

    /// As `start_single`, configured (`config` names this node the only voter).
    pub fn start_alone(data_dir: &Path, config: NodeConfig) -> Result<Node, Error> {
        let node = Node::start(
            data_dir,
            config,
            Arc::new(network::NoTransport),
            Arc::new(storage::NoObserver),
        )?;
        let started = std::time::Instant::now();
        while !node.is_active() {
            if started.elapsed() > Duration::from_secs(30) {
                node.shutdown();
                return Err(Error::NoLeader);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(node)
    }

    /// Test-only fault: the log's next sync fails (failures are sticky; the node stops).
    pub fn inject_sync_failure(&self) {
        self.inner
            .log
            .log()
            .faults
            .fail_next_sync
            .store(true, Ordering::Release);
    }

    /// Forms the cluster on a pristine voter (every voter may do this with the same peers,
    /// which openraft allows), and elects a sole voter at once instead of after a timeout.
    ///
    /// openraft's `initialize` stands for election at once, in term 1. A voter that starts
    /// after the others formed the cluster would stand in the leader's own term with a
    /// higher node id, which outranks the leader's vote and deposes it (a second or more
    /// without a leader). So the voters initialize in turn: the lowest id at once, each
    /// next one an election timeout's maximum later, and only if no leader has reached it
    /// by then (openraft refuses `initialize` on a node that has a vote or a log).
    fn form(&self, is_pristine: bool) -> Result<(), Error> {
        let config = &self.inner.config;
        let raft = &self.inner.raft;
        if is_pristine && config.is_voter() {
            let rank = config
                .voters
                .keys()
                .position(|id| *id == config.node_id)
                .unwrap_or(0) as u64;
            // The simulator starts elections itself and replays seeds: no timers there.
            let wait_ms = match config.manual_ticks {
                true => 0,
                false => rank * config.election_timeout_ms * 2,
            };
            if wait_ms == 0 {
                self.block_on(self.initialize())?;
            } else {
                let node = self.clone();
                self.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    if let Err(error) = node.initialize().await {
                        tracing::error!(%error, "could not form the cluster");
                    }
                });
            }
        } else if !is_pristine {
            self.check_membership()?;
        }
        let voters = self.voter_ids();
        if voters.len() == 1 && voters.contains(&config.node_id) {
            let _ = self.block_on(raft.trigger().elect());
        }
        Ok(())
    }

    /// `form`'s step: the configured voters as the first membership, unless a leader has
    /// reached this node already.
    async fn initialize(&self) -> Result<(), Error> {
        let config = &self.inner.config;
        let reached = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            metrics.vote != openraft::Vote::default() || metrics.last_log_index.is_some()
        };
        if reached {
            // Asking anyway would be refused, with an ERROR line of openraft's.
            tracing::info!(
                node = config.node_id,
                "joined the cluster another voter formed"
            );
            return Ok(());
        }
        let members: BTreeMap<NodeId, PeerNode> = config
            .voters
            .iter()
            .map(|(id, url)| (*id, PeerNode { url: url.clone() }))
            .collect();
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node = config.node_id, voters = ?config.voters.keys().collect::<Vec<_>>(), "formed the cluster");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!(
                    node = config.node_id,
                    "joined the cluster another voter formed"
                );
                Ok(())
            }
            Err(error) => Err(Error::Raft(error.to_string())),
        }
    }

    /// Refuses to start a node whose data dir belongs to another node id.
    fn check_membership(&self) -> Result<(), Error> {
        let config = &self.inner.config;
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let nodes: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        if !nodes.is_empty() && !nodes.contains(&config.node_id) {
            return Err(Error::Config(format!(
                "this data dir belongs to a cluster of nodes {nodes:?}, which has no node {}",
                config.node_id
            )));
        }
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let configured: BTreeSet<NodeId> = config.voters.keys().copied().collect();
        if config.voters.len() > 1 && voters != configured {
            tracing::warn!(
                ?voters,
                ?configured,
                "the voters in the log differ from the configured peers; the log's membership holds (change it through the membership endpoint)"
            );
        }
        Ok(())
    }

    fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn block_on<F: std::future::Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        let runtime = self.runtime.lock();
        let runtime = runtime.as_ref().expect("running");
        block_on_outside(runtime.handle(), future)
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        if let Some(runtime) = self.runtime.lock().as_ref() {
            runtime.spawn(future);
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Who to tell when this node starts and stops leading. Set before it can lead, or the
    /// first activation is missed.
    pub fn set_leadership(&self, leadership: Arc<dyn Leadership>) {
        *self.inner.leadership.lock() = leadership;
        if self.is_active() {
            self.inner.leadership.lock().activate();
        }
    }

    /// Whether this node commits now.
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Acquire)
    }

    /// The leader as this node knows it, with its URL.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let url = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.url.clone())
            .unwrap_or_default();
        Some((leader, url))
    }

    /// Whether this node can take orders: it leads, or it knows a leader to pass them to.
    pub fn is_ready(&self) -> bool {
        self.is_active() || self.leader().is_some_and(|(id, _)| id != self.node_id())
    }

    /// Waits until this node has applied everything acknowledged anywhere before the call:
    /// the leader names the index (a linearizable read index), and this node waits for its
    /// own apply to reach it. Free on the active leader (it acknowledges only what it has
    /// applied).
    pub async fn read_barrier(&self) -> Result<(), Error> {
        if self.is_active() {
            return Ok(());
        }
        let (leader, url) = self.leader().ok_or(Error::NoLeader)?;
        let index = if leader == self.node_id() {
            self.inner
                .raft
                .ensure_linearizable()
                .await
                .map_err(|_| Error::NoLeader)?
                .map_or(0, |l| l.index)
        } else {
            let reply = self
                .inner
                .transport
                .call(
                    &url,
                    Rpc::ReadIndex,
                    Vec::new(),
                    network::read_index_timeout(),
                )
                .await
                .map_err(|_| Error::NoLeader)?;
            let answer: Result<u64, String> =
                network::decode(&reply).map_err(|_| Error::NoLeader)?;
            answer.map_err(|_| Error::NoLeader)?
        };
        self.wait_applied(index, network::read_index_timeout())
            .await
    }

    /// Waits until the store has published entry `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        while self.inner.store.applied_index() < index {
            if started.elapsed() > timeout {
                return Err(Error::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Handles a node-to-node request (from the edge): runs it on this node's runtime.
    pub async fn serve(&self, rpc: Rpc, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let raft = self.inner.raft.clone();
        let handle = self
            .runtime
            .lock()
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or_else(|| TransportError::Unreachable("node stopped".into()))?;
        handle
            .spawn(async move { network::serve(&raft, rpc, &body).await })
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let role = match metrics.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Follower | ServerState::Shutdown => Role::Follower,
        };
        let replication = metrics.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                node_id: *id,
                url: node.url.clone(),
                role: if Some(*id) == metrics.current_leader {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
                matched_index: if Some(*id) == metrics.current_leader && role == Role::Leader {
                    metrics.last_log_index
                } else {
                    replication.get(id).map(|m| m.map_or(0, |l| l.index))
                },
            })
            .collect();
        ClusterStatus {
            node_id: self.node_id(),
            role,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            commit_index: self.commit_index(),
            applied_index: self.inner.store.applied_index(),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            members,
            active: self.is_active(),
            snapshot_failures: self.inner.machine.snapshot_failures.lock().count,
        }
    }

    fn commit_index(&self) -> u64 {
        self.inner.log.committed().map_or(0, |l| l.index)
    }

    /// Adds a learner (it replicates everything and never votes); waits until it is known.
    pub async fn add_learner(&self, id: NodeId, url: String) -> Result<(), Error> {
        let raft = self.inner.raft.clone();
        self.on_runtime(async move {
            raft.add_learner(id, PeerNode { url }, false)
                .await
                .map(|_| ())
                .map_err(|e| Error::Raft(e.to_string()))
        })
        .await
    }

    /// Makes exactly `voters` the voting members (joint consensus; learners stay).
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), Error> {
        let raft = self.inner.raft.clone();
        self.on_runtime(async move {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                .await
                .map(|_| ())
                .map_err(|e| Error::Raft(e.to_string()))
        })
        .await
    }

    /// Removes nodes that are not voters any more (learners, or voters already demoted).
    pub async fn remove_nodes(&self, nodes: BTreeSet<NodeId>) -> Result<(), Error> {
        let raft = self.inner.raft.clone();
        self.on_runtime(async move {
            raft.change_membership(ChangeMembers::RemoveNodes(nodes), false)
                .await
                .map(|_| ())
                .map_err(|e| Error::Raft(e.to_string()))
        })
        .await
    }

    /// Takes a snapshot now and waits for it; returns its file.
    ///
    /// Bounded: `SNAPSHOT_WAIT_SECS` in all; `Error::NothingApplied` at once on a node that
    /// has applied nothing yet.
    pub async fn snapshot_now(&self) -> Result<PathBuf, Error> {
        let raft = self.inner.raft.clone();
        let through = self.inner.store.applied_index();
        let machine = self.inner.machine.clone();
        let failed_before = {
            // Asked for: try now, even within the wait after a failure.
            let mut failures = machine.snapshot_failures.lock();
            failures.retry_at = None;
            failures.count
        };
        self.on_runtime(async move {
            // The store may have applied the leader's own batch before openraft counts it
            // applied: a snapshot triggered earlier would stop short of `through`, and no
            // later one would come. Wait for openraft to have applied it first.
            raft.wait(Some(Duration::from_secs(600)))
                .metrics(
                    |m| m.last_applied.is_some_and(|l| l.index >= through) || through == 0,
                    "applied",
                )
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
            // Nothing applied (a learner not yet joined, a voter before its cluster formed):
            // openraft would build a snapshot of nothing and not count it, and the wait
            // below would never end on simulated time (600 s on real time).
            if raft.metrics().borrow().last_applied.is_none() {
                return Err(Error::NothingApplied);
            }
            // A trigger that comes while a snapshot is being built (or installed) is
            // dropped by openraft: ask again until one covers `through`.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(SNAPSHOT_WAIT_SECS);
            loop {
                raft.trigger()
                    .snapshot()
                    .await
                    .map_err(|e| Error::Raft(e.to_string()))?;
                let covered = raft
                    .wait(Some(Duration::from_millis(SNAPSHOT_ASK_AGAIN_MS)))
                    .metrics(
                        |m| m.snapshot.is_some_and(|s| s.index >= through),
                        "snapshot",
                    )
                    .await;
                if covered.is_ok() {
                    return Ok(());
                }
                let failures = machine.snapshot_failures.lock();
                if failures.count > failed_before {
                    let error = failures.last_error.clone().unwrap_or_default();
                    return Err(Error::SnapshotFailed(error));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Raft(format!("no snapshot through {through}")));
                }
            }
        })
        .await?;
        storage::snapshot::latest(&storage::snapshot::snapshot_dir(&self.inner.data_dir))?
            .ok_or_else(|| Error::Raft("no snapshot written".into()))
    }

    /// A snapshot taken now, bundled with the cold tables it names (`storage::bundle`), as
    /// an open file: what a backup streams. Opened under the snapshot lock, so a newer
    /// snapshot cannot remove it or its tables half way.
    pub async fn backup_bundle(&self) -> Result<std::fs::File, Error> {
        self.snapshot_now().await?;
        let machine = self.inner.machine.clone();
        let data_dir = self.inner.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let _exporting = machine.snapshot_lock.lock();
            let snapshot = storage::snapshot::latest(&storage::snapshot::snapshot_dir(&data_dir))?
                .ok_or_else(|| Error::Raft("no snapshot written".into()))?;
            Ok(storage::bundle::export(&data_dir, &snapshot)?.0)
        })
        .await
        .map_err(|e| Error::Raft(e.to_string()))?
    }

    async fn on_runtime<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let handle = self
            .runtime
            .lock()
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or(Error::Stopped)?;
        handle
            .spawn(future)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?
    }

    /// Stops the node: closes the gate, stops openraft and its runtime, and closes the
    /// store (everything applied is mirrored).
    pub fn shutdown(&self) {
        self.close_gate();
        self.inner.proposer.close();
        let runtime = self.runtime.lock().take();
        if let Some(runtime) = runtime {
            let raft = self.inner.raft.clone();
            let _ = block_on_outside(runtime.handle(), async move {
                tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await
            });
            stop_runtime(runtime);
        }
        self.inner.log.log().close();
        let _ = self.inner.store.close();
    }

    fn close_gate(&self) {
        if self.inner.active.swap(false, Ordering::AcqRel) {
            self.inner.store.set_leading(false);
            self.inner.proposer.end_chain();
            let leadership = self.inner.leadership.lock().clone();
            leadership.deactivate();
            tracing::info!(node = self.node_id(), "stopped leading");
        }
    }

    /// After the gate closed while this node still had proposals waiting for a majority
    /// (it was cut off, or lost its term): their callers learn now that the outcome is
    /// unknown (503 `not_committed`) instead of waiting, possibly for as long as the
    /// partition lasts, and the state sheds their effects (rebuilt from the log). If one
    /// commits after all, it is applied from the log like anyone else's entry, and an
    /// Idempotency-Key retried anywhere finds it.
    fn abandon_in_flight(&self) {
        let machine = &self.inner.machine;
        let _applying = machine.apply_lock.lock();
        let waiting = !machine.in_flight.lock().is_empty();
        if !waiting && !machine.diverged.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = machine.rebuild() {
            tracing::error!(%error, "rebuilding the state after losing the gate failed");
        }
    }

    /// Opens the gate if this node still leads `term` and nothing of its own is left over.
    fn try_open_gate(&self, term: u64) -> bool {
        let machine = &self.inner.machine;
        let _applying = machine.apply_lock.lock();
        let metrics = self.inner.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader || metrics.current_term != term {
            return false;
        }
        if !machine.in_flight.lock().is_empty() {
            return false;
        }
        if machine.diverged.load(Ordering::Acquire) {
            if let Err(error) = machine.rebuild() {
                tracing::error!(%error, "rebuilding the state failed");
                return false;
            }
        }
        let base = machine.applied.lock().last.map_or(0, |l| l.index);
        // Entries of this node's earlier chain may still sit in its log uncommitted (the
        // gate closed when a majority stopped answering, and reopens in the same term, where
        // no blank entry commits them first). They will commit, and a new chain based below
        // them would never be admitted: every later write would commit as a no-op and fail
        // (seen by the three-node simulator). Open only once the whole log is applied.
        if self
            .inner
            .log
            .last_log_id()
            .is_some_and(|last| last.index > base)
        {
            return false;
        }
        // Everything applied is also published (readable) before this node leads: an actor
        // loading an order must not find an older record than the state holds.
        let started = std::time::Instant::now();
        while self.inner.store.applied_index() < base {
            if started.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.inner.proposer.begin_chain(base);
        self.inner.store.set_leading(true);
        self.inner.active.store(true, Ordering::Release);
        drop(_applying);
        let leadership = self.inner.leadership.lock().clone();
        leadership.activate();
        tracing::info!(node = self.node_id(), term, base, "leading");
        true
    }

    /// Waits until every event proposed so far is applied (or failed): nothing of this
    /// node's is in flight any more. For the simulator, so that a crash after it finds the
    /// log in a state that does not depend on timing.
    pub fn quiesce(&self) {
        let started = std::time::Instant::now();
        while (self.inner.proposer.queued_count() > 0
            || !self.inner.machine.in_flight.lock().is_empty())
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Starts what a timer would have started (with `NodeConfig::manual_ticks`): an election
    /// on this node, a heartbeat from this leader, or a snapshot (waited for). Returns once
    /// openraft has taken the command; its effects follow (`activity` tells when they end).
    pub fn trigger(&self, what: Trigger) -> Result<(), Error> {
        let raft = self.inner.raft.clone();
        match what {
            Trigger::Election => self
                .block_on_runtime(async move { raft.trigger().elect().await.map_err(Error::from) }),
            Trigger::Heartbeat => self.block_on_runtime(async move {
                raft.trigger().heartbeat().await.map_err(Error::from)
            }),
            Trigger::Snapshot => self.block_on_runtime(self.snapshot_now()).map(|_| ()),
        }
    }

    /// Runs `future` on this node's runtime and waits for it (without holding the runtime's
    /// slot, which the future may need).
    fn block_on_runtime<T: Send>(
        &self,
        future: impl std::future::Future<Output = Result<T, Error>> + Send,
    ) -> Result<T, Error> {
        let handle = self
            .runtime
            .lock()
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or(Error::Stopped)?;
        block_on_outside(&handle, future)
    }

    /// What this node is doing, for a caller that waits until every node is idle (the
    /// simulator, between its steps): `busy` while any of its tasks is runnable or running,
    /// its log writer or its state machine has work, or an event awaits proposal; `progress`
    /// changes whenever any of them made progress.
    pub fn activity(&self) -> Activity {
        let mut busy = self.inner.proposer.queued_count() > 0
            || self.inner.log.log().unfinished_count() > 0
            || self.inner.machine.busy.load(Ordering::Acquire) > 0;
        let mut progress = self.inner.log.log().finished_count();
        if let Some(runtime) = self.runtime.lock().as_ref() {
            let metrics = runtime.handle().metrics();
            busy |= metrics.global_queue_depth() > 0;
            for worker in 0..metrics.num_workers() {
                let parks = metrics.worker_park_unpark_count(worker);
                // An even count: the worker is awake (running a task or about to).
                busy |= parks % 2 == 0;
                progress = progress.wrapping_mul(31).wrapping_add(parks);
            }
        }
        let applied = self
            .inner
            .machine
            .applied
            .lock()
            .last
            .map_or(0, |l| l.index);
        busy |= self.inner.store.applied_index() < applied;
        progress = progress
            .wrapping_mul(31)
            .wrapping_add(self.inner.store.applied_index());
        Activity { busy, progress }
    }

    /// The log's bounds and this node's snapshot, for checks that read the log.
    pub fn log_bounds(&self) -> LogBounds {
        LogBounds {
            purged: self.inner.log.last_purged().map(|l| l.index),
            last: self.inner.log.last_log_id().map(|l| l.index),
            snapshot: self.inner.raft.metrics().borrow().snapshot.map(|l| l.index),
            committed: self.commit_index(),
        }
    }

    /// Log entries `from..=through` that this node holds, as (index, term, their log bytes).
    pub fn log_entries(&self, from: u64, through: u64) -> Result<Vec<LoggedEntry>, Error> {
        Ok(self
            .inner
            .log
            .entries(from..=through)?
            .into_iter()
            .map(|entry| LoggedEntry {
                index: entry.log_id.index,
                term: entry.log_id.leader_id.term,
                bytes: crate::types::encode_entry(&entry),
            })
            .collect())
    }

    /// Whether this node's storage failed (a failed sync is sticky: it must restart).
    pub fn has_failed(&self) -> bool {
        self.inner.log.log().has_failed()
            || !self.inner.store.is_healthy()
            || self.inner.raft.metrics().borrow().running_state.is_err()
    }

    /// What opening the log found.
    pub fn log_recovery(&self) -> &storage::log::Recovery {
        &self.inner.recovery
    }

    /// Events waiting to be proposed.
    pub fn proposals_queued(&self) -> usize {
        self.inner.proposer.queued_count()
    }

    /// This node's events not yet applied or failed: queued, or proposed and in flight.
    pub fn proposals_unsettled(&self) -> usize {
        self.inner.proposer.queued_count() + self.inner.machine.in_flight.lock().len()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }
}

/// Follows openraft's metrics: opens the readiness gate once this node leads and has
/// applied what earlier terms committed, and closes it as soon as it does not.
async fn watch_leadership(node: Node) {
    let mut metrics = node.inner.raft.metrics();
    let fence_ms = node.inner.config.election_timeout_ms;
    let mut active_term: Option<u64> = None;
    loop {
        // What this loop reads, without a copy of the whole metrics (they change with every
        // entry: a copy allocated its maps each time).
        let (leader, term, leads, fatal) = {
            let m = metrics.borrow();
            let heard = m.millis_since_quorum_ack.is_none_or(|ms| ms <= fence_ms);
            let leads = m.state == ServerState::Leader && heard && m.running_state.is_ok();
            let fatal = m.running_state.as_ref().err().cloned();
            (m.current_leader, m.current_term, leads, fatal)
        };
        node.inner.store.set_leader_hint(leader);
        // A halted chain (a batch failed, or committed without being admitted) takes no
        // more writes: close the gate and open it again with a new chain.
        let chain_broken = node.inner.proposer.is_halted()
            || node
                .inner
                .machine
                .own_batch_refused
                .swap(false, Ordering::AcqRel);
        match active_term {
            Some(active) if !leads || term != active || chain_broken => {
                node.close_gate();
                node.abandon_in_flight();
                active_term = None;
                continue;
            }
            None if leads => {
                let ready = node.inner.config.unsafe_skip_readiness_gate
                    || node.inner.raft.ensure_linearizable().await.is_ok();
                if ready && node.try_open_gate(term) {
                    active_term = Some(term);
                    let learners = node.clone();
                    tokio::spawn(async move { learners.add_configured_learners().await });
                }
            }
            _ => {}
        }
        if let Some(fatal) = &fatal {
            // Nothing more is acknowledged here. A shutdown is no error; anything else is
            // (storage failed: a failed sync is sticky).
            if matches!(fatal, openraft::error::Fatal::Stopped) {
                tracing::info!("openraft stopped");
            } else {
                tracing::error!(%fatal, "openraft stopped");
            }
            node.close_gate();
            node.inner.store.poison();
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            // On the node's clock: the fence is re-checked at the same simulated moments on
            // every run of a simulator's seed.
            _ = crate::clock::sleep(Duration::from_millis(50)) => {}
        }
    }
}

impl Node {
    /// The leader adds the configured learners that the membership lacks.
    async fn add_configured_learners(&self) {
        let known: BTreeSet<NodeId> = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        for (id, url) in self.inner.config.learners.clone() {
            if known.contains(&id) {
                continue;
            }
            match self
                .inner
                .raft
                .add_learner(id, PeerNode { url }, false)
                .await
            {
                Ok(_) => tracing::info!(learner = id, "added a configured learner"),
                Err(e) => tracing::warn!(learner = id, error = %e, "could not add a learner"),
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.proposer.close();
    }
}
