//! Three voters in one process, each a real `Node` on its own data dir (real files and
//! fdatasync), connected by the simulated network (`net`), on simulated time
//! (`replication::clock`) with openraft's timers off (`NodeConfig::manual_ticks`).
//!
//! Nothing moves unless the simulator moves it: a message, a heartbeat, an election, a
//! snapshot, a crash, a tick of the clock. After each move `settle` waits until every node
//! is idle (no task runnable, no log write or apply outstanding), so the next move starts
//! from a state that depends only on the seed.
//!
//! A crash may damage only log records the node never reported to anyone (no message of
//! its own was delivered since it wrote them) and that lie beyond its commit: what was
//! acknowledged, or told to a peer, was synced.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use replication::{clock, Node, NodeConfig, Role, Trigger};
use storage::Store;

use super::history::{digest, History};
use super::net::{url_of, Fate, Net, NodeId};
use super::Rng;

pub const VOTERS: [NodeId; 3] = [1, 2, 3];
const MAJORITY: usize = 2;
/// Simulated time between a leader's heartbeats (openraft's `heartbeat_interval`).
pub const HEARTBEAT_MS: u64 = 100;
/// openraft's shortest election timeout: RPC timeouts, the voters' leader lease (twice it)
/// and the readiness gate's majority fence derive from it.
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// Network moves a client waits for its write before it gives up (the outcome unknown).
pub const COMMIT_MOVES_MAX: usize = 300;
/// Moves spent looking for an active leader before every fault is healed.
pub const LEADER_MOVES_HEAL: usize = 600;
/// Moves spent looking for an active leader before liveness is declared lost.
pub const LEADER_MOVES_MAX: usize = 1_500;
/// Moves without an active leader before an election is started.
const ELECTION_EVERY_MOVES: usize = 60;
/// Wall time idle must last to count as idle (a woken task shows as busy at once; this
/// only covers the gap while a blocking file read hands its result back).
const QUIET_MICROS: u64 = 300;
/// Wall time `settle` waits for every node to go idle before it declares the run stuck.
const SETTLE_WALL_MS_MAX: u64 = 60_000;

/// The network and cluster faults of one seed.
#[derive(Clone, Debug)]
pub struct ClusterFaults {
    pub lose_percent: u64,
    pub lose_answer_percent: u64,
    pub latency_ms_max: u64,
    pub heartbeat_skip_percent: u64,
    pub partition_per_mille: u64,
    pub node_crash_per_mille: u64,
    pub election_per_mille: u64,
    pub snapshot_per_mille: u64,
    pub kept_after_snapshot_entries: u64,
}

impl ClusterFaults {
    pub fn from_rng(rng: &mut Rng) -> Self {
        Self {
            lose_percent: rng.below(15),
            lose_answer_percent: rng.below(10),
            latency_ms_max: 1 + rng.below(30),
            heartbeat_skip_percent: rng.below(20),
            partition_per_mille: rng.below(40),
            node_crash_per_mille: rng.below(40),
            election_per_mille: rng.below(30),
            snapshot_per_mille: 5 + rng.below(40),
            kept_after_snapshot_entries: 1 + rng.below(40),
        }
    }

    pub fn none(&self) -> Self {
        Self {
            lose_percent: 0,
            lose_answer_percent: 0,
            heartbeat_skip_percent: 0,
            partition_per_mille: 0,
            node_crash_per_mille: 0,
            election_per_mille: 0,
            snapshot_per_mille: 0,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for ClusterFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "messages lost {}%, answers lost {}%, latency <= {} ms, heartbeats skipped {}%; \
             partition {}‰, node crash {}‰, election {}‰, snapshot {}‰ per step, {} entries kept",
            self.lose_percent,
            self.lose_answer_percent,
            self.latency_ms_max,
            self.heartbeat_skip_percent,
            self.partition_per_mille,
            self.node_crash_per_mille,
            self.election_per_mille,
            self.snapshot_per_mille,
            self.kept_after_snapshot_entries
        )
    }
}

/// The messages a move chose from, for the trace (two runs of a seed diverge first here).
struct Movable<'a>(&'a [super::net::Key]);

impl std::fmt::Display for Movable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, k) in self.0.iter().enumerate() {
            let separator = if n == 0 { "" } else { " " };
            let short = k.digest >> 48;
            write!(f, "{separator}{}>{}{:?}{short:04x}", k.from, k.to, k.rpc())?;
        }
        Ok(())
    }
}

/// A client's write, as the client saw it end.
pub enum Commit {
    /// Committed and applied as log entry `index`.
    Acked(u64),
    /// The leader's engine refused the event (nothing proposed).
    Refused(engine::Violation),
    /// Not acknowledged: refused by a non-leader, failed, or given up on; it may still
    /// commit.
    Unknown,
}

struct Slot {
    dir: tempfile::TempDir,
    node: Option<Node>,
    starts: u64,
    /// The highest log index this node's peers may know it holds.
    reported: u64,
    /// Its committed prefix agrees with the history through here.
    verified: Option<u64>,
    /// While it is down: its log as it lies on disk, from `verified` on (index -> term and
    /// digest).
    down_log: BTreeMap<u64, (u64, u64)>,
}

/// Counters for the seed's report.
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub moves: u64,
    pub delivered: u64,
    pub lost: u64,
    pub answers_lost: u64,
    pub elections: u64,
    pub heartbeats: u64,
    pub snapshots: u64,
    pub node_crashes: u64,
    pub sync_failures: u64,
    pub partitions: u64,
}

pub struct Cluster {
    pub net: Arc<Net>,
    slots: BTreeMap<NodeId, Slot>,
    seed: u64,
    canary: bool,
    pub faults: ClusterFaults,
    /// Waits for a node's answer (the simulator's own thread is not in any runtime).
    waiter: tokio::runtime::Runtime,
    last_heartbeat_ms: u64,
    /// The active leader the shop runs on: (node, term).
    pub shop: Option<(NodeId, u64)>,
    pub history: History,
    /// What went wrong between two checks (the history's findings before a snapshot, a node
    /// that could not start), for the next check to report.
    noticed: Vec<String>,
    /// Acknowledged entries: index -> (term, digest).
    acked: BTreeMap<u64, (u64, u64)>,
    /// The leader seen in each term (election safety).
    leaders: BTreeMap<u64, NodeId>,
    pub stats: NetStats,
    /// Record every move (`PANSHI_SIM_TRACE`: `full` adds each node's view), to compare two
    /// runs of a seed line by line.
    trace: Option<bool>,
}

fn sim_ms() -> u64 {
    clock::simulated_now().as_millis() as u64
}

impl Cluster {
    /// Starts three pristine voters (each forms the cluster with the same peers).
    pub fn start(seed: u64, canary: bool, faults: ClusterFaults) -> Cluster {
        clock::simulate();
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to wait on");
        let mut cluster = Cluster {
            net: Arc::new(Net::default()),
            slots: BTreeMap::new(),
            seed,
            canary,
            faults,
            waiter,
            last_heartbeat_ms: 0,
            shop: None,
            history: History::new(canary),
            noticed: Vec::new(),
            acked: BTreeMap::new(),
            leaders: BTreeMap::new(),
            stats: NetStats::default(),
            trace: std::env::var("PANSHI_SIM_TRACE").ok().map(|v| v == "full"),
        };
        for id in VOTERS {
            cluster.slots.insert(
                id,
                Slot {
                    dir: tempfile::tempdir().expect("temporary dir"),
                    node: None,
                    starts: 0,
                    reported: 0,
                    verified: None,
                    down_log: BTreeMap::new(),
                },
            );
            cluster.start_node(id);
        }
        cluster
    }

    fn config(&self, id: NodeId, starts: u64) -> NodeConfig {
        let mut config = NodeConfig::single();
        config.node_id = id;
        config.voters = VOTERS.iter().map(|v| (*v, url_of(*v))).collect();
        config.heartbeat_ms = HEARTBEAT_MS;
        config.election_timeout_ms = ELECTION_TIMEOUT_MS;
        config.kept_after_snapshot_entries = self.faults.kept_after_snapshot_entries;
        config.manual_ticks = true;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (self.seed, id, starts).hash(&mut hasher);
        config.incarnation = Some(hasher.finish());
        config.unsafe_skip_readiness_gate = self.canary;
        // sled is rebuilt at every archive, so that rebuilds meet crashes and lookups, and
        // archives take small steps.
        config.sled_rebuild = storage::sled_dir::SledRebuild::ALWAYS;
        config.archive_step_items = super::SIM_ARCHIVE_STEP_ITEMS;
        config
    }

    fn start_node(&mut self, id: NodeId) {
        let starts = self.slots[&id].starts + 1;
        let config = self.config(id, starts);
        let slot = self.slots.get_mut(&id).expect("slot");
        slot.starts = starts;
        let node = match Node::start(
            slot.dir.path(),
            config,
            self.net.endpoint(id),
            Arc::new(storage::NoObserver),
        ) {
            Ok(node) => node,
            Err(e) => {
                // A committed entry its replay refuses, say: the node stays down, and the
                // seed reports why (a panic here lost every other finding of the seed).
                self.noticed.push(format!("node {id} cannot start: {e}"));
                return;
            }
        };
        slot.node = Some(node);
        slot.down_log.clear();
        self.settle();
    }

    /// One line of the trace: what moved, then (`PANSHI_SIM_TRACE=full`) every node's view.
    fn trace(&self, what: std::fmt::Arguments<'_>) {
        let Some(full) = self.trace else {
            return;
        };
        let mut line = format!("t={} {what} |", sim_ms());
        for (id, slot) in &self.slots {
            match &slot.node {
                Some(node) if full => {
                    let s = node.status();
                    let b = node.log_bounds();
                    line.push_str(&format!(
                        " {id}:{}{}/t{}/l{}/c{}/a{}",
                        s.role.as_str(),
                        if s.active { "*" } else { "" },
                        s.term,
                        b.last.map_or(-1, |l| l as i64),
                        b.committed,
                        s.applied_index
                    ));
                }
                Some(_) => {}
                None => line.push_str(&format!(" {id}:down")),
            }
        }
        // At once, to standard error: a run that never ends still shows where it is.
        eprintln!("{line}");
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.slots.get(&id)?.node.as_ref()
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn down(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.node.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn dirs(&self) -> Vec<std::path::PathBuf> {
        self.slots
            .values()
            .map(|s| s.dir.path().to_owned())
            .collect()
    }

    /// Whether every write node `id` took is decided: nothing of its own queued or in flight,
    /// and its whole log committed and applied. A write answered "outcome unknown" may
    /// still sit uncommitted in the log and commit later (as the contract allows); until
    /// it is decided one way or the other, the state is not the last word on it.
    pub fn decided(&self, id: NodeId) -> bool {
        let Some(node) = self.node(id) else {
            return false;
        };
        let bounds = node.log_bounds();
        node.proposals_unsettled() == 0
            && bounds.last.unwrap_or(0) <= bounds.committed
            && node.store().applied_index() >= bounds.committed
    }

    /// A line of the simulator's own in the trace.
    pub fn note(&self, what: std::fmt::Arguments<'_>) {
        self.trace(what);
    }

    /// The store of the node the shop runs on.
    pub fn shop_store(&self) -> &Arc<Store> {
        let (id, _) = self.shop.expect("the shop has a leader");
        self.node(id).expect("the shop's node runs").store()
    }

    /// Waits until every node is idle and nothing changed for `QUIET_MICROS`.
    pub fn settle(&self) {
        let started = std::time::Instant::now();
        let mut quiet: Option<(std::time::Instant, u64)> = None;
        loop {
            let (busy, progress) = self.activity();
            if busy {
                quiet = None;
            } else {
                match quiet {
                    Some((since, seen)) if seen == progress => {
                        if since.elapsed() >= Duration::from_micros(QUIET_MICROS) {
                            return;
                        }
                    }
                    _ => quiet = Some((std::time::Instant::now(), progress)),
                }
            }
            if started.elapsed() > Duration::from_millis(SETTLE_WALL_MS_MAX) {
                panic!("the simulated cluster never went idle (busy: {busy})");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn activity(&self) -> (bool, u64) {
        let mut busy = false;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.net.fingerprint().hash(&mut hasher);
        for (id, slot) in &self.slots {
            let Some(node) = &slot.node else { continue };
            let activity = node.activity();
            busy |= activity.busy;
            let status = node.status();
            (
                id,
                activity.progress,
                status.term,
                status.role.as_str(),
                status.commit_index,
                status.applied_index,
                status.active,
                status.leader_id,
            )
                .hash(&mut hasher);
        }
        (busy, hasher.finish())
    }

    /// Moves simulated time forward and lets what it woke run.
    pub fn advance(&self, by_ms: u64) {
        clock::advance(Duration::from_millis(by_ms));
        self.settle();
    }

    /// One move of the network: a message group chosen by the seed is delivered or lost.
    /// Returns false when nothing could move.
    pub fn move_one(&mut self, rng: &mut Rng) -> bool {
        let keys = self.net.movable();
        if keys.is_empty() {
            return false;
        }
        let key = keys[rng.below(keys.len() as u64) as usize];
        let fate = if rng.percent(self.faults.lose_percent) {
            Fate::Lose
        } else {
            Fate::Deliver {
                lose_answer: rng.percent(self.faults.lose_answer_percent),
            }
        };
        self.stats.moves += 1;
        let messages = self.net.take(key);
        self.trace(format_args!(
            "move {}->{} {:?} {:016x} x{} {} of [{}]",
            key.from,
            key.to,
            key.rpc(),
            key.digest,
            messages.len(),
            match fate {
                Fate::Lose => "lost",
                Fate::Deliver { lose_answer: true } => "delivered, answer lost",
                Fate::Deliver { .. } => "delivered",
            },
            Movable(&keys)
        ));
        match fate {
            Fate::Lose => {
                self.stats.lost += messages.len() as u64;
                for (_, answer) in messages {
                    answer.lose();
                }
                // The senders see the loss at this moment, not after the latency below: a
                // retry backoff must start from the same simulated instant on every run.
                self.settle();
            }
            Fate::Deliver { lose_answer } => {
                for (body, answer) in messages {
                    self.note_reported(key.from);
                    let reply = match self.node(key.to) {
                        Some(node) => {
                            let served = self.waiter.block_on(async {
                                tokio::time::timeout(
                                    Duration::from_millis(SETTLE_WALL_MS_MAX),
                                    node.serve(key.rpc(), body),
                                )
                                .await
                            });
                            served.unwrap_or_else(|_| {
                                panic!("node {} never answered {:?}", key.to, key.rpc())
                            })
                        }
                        None => Err(replication::TransportError::Unreachable("down".into())),
                    };
                    self.stats.delivered += 1;
                    if lose_answer || reply.is_err() {
                        self.stats.answers_lost += u64::from(lose_answer);
                        answer.lose();
                    } else {
                        self.note_reported(key.to);
                        answer.give(reply);
                    }
                    self.settle();
                }
            }
        }
        let latency_ms = 1 + rng.below(self.faults.latency_ms_max);
        self.advance(latency_ms);
        self.trace(format_args!("moved"));
        true
    }

    /// A node's log as it stands may now be known to a peer: a crash keeps it.
    fn note_reported(&mut self, id: NodeId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(node) = &slot.node {
            let last = node.log_bounds().last.unwrap_or(0);
            slot.reported = slot.reported.max(last);
        }
    }

    /// The node that leads (by its own account) in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.running()
            .into_iter()
            .filter_map(|id| {
                let status = self.node(id)?.status();
                (status.role == Role::Leader).then_some((status.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// The active leader (past its readiness gate) in the highest term.
    pub fn active_leader(&self) -> Option<(NodeId, u64)> {
        self.running()
            .into_iter()
            .filter_map(|id| {
                let status = self.node(id)?.status();
                status.active.then_some((status.term, id))
            })
            .max()
            .map(|(term, id)| (id, term))
    }

    /// One unit of cluster activity: the leader's heartbeat when due, else a network move,
    /// else time passes.
    pub fn tick(&mut self, rng: &mut Rng) {
        let now = sim_ms();
        if now >= self.last_heartbeat_ms + HEARTBEAT_MS {
            self.last_heartbeat_ms = now;
            if let Some(leader) = self.leader() {
                if !rng.percent(self.faults.heartbeat_skip_percent) {
                    self.trigger(leader, Trigger::Heartbeat);
                    self.stats.heartbeats += 1;
                }
            }
        }
        if !self.move_one(rng) {
            let idle_ms = 1 + rng.below(HEARTBEAT_MS);
            self.advance(idle_ms);
        }
    }

    fn trigger(&mut self, id: NodeId, what: Trigger) {
        if let Some(node) = self.node(id) {
            // A stopped or failed node refuses; the simulation goes on without it.
            let _ = node.trigger(what);
        }
        self.settle();
        self.trace(format_args!("{what:?} on {id}"));
    }

    /// An election on `id`; with `timed_out`, after every voter's leader lease lapsed (as
    /// when its election timer fires).
    pub fn elect(&mut self, id: NodeId, timed_out: bool) {
        if timed_out {
            self.advance(2 * ELECTION_TIMEOUT_MS + 1);
        }
        self.stats.elections += 1;
        self.trigger(id, Trigger::Election);
    }

    /// A snapshot on `id`, which purges its log: the history first takes what it committed,
    /// for no check may have run since (a step commits many entries).
    pub fn snapshot(&mut self, id: NodeId) {
        self.stats.snapshots += 1;
        if self.node(id).is_some() {
            for problem in self.follow(id) {
                self.noticed
                    .push(format!("node {id}, before its snapshot: {problem}"));
            }
        }
        self.trigger(id, Trigger::Snapshot);
    }

    /// Runs the cluster until an active leader has nothing of its own in flight (every
    /// earlier write's fate is decided), starting elections when none leads and healing
    /// every fault when that takes long. `None`: liveness lost.
    pub fn ensure_leader(&mut self, rng: &mut Rng) -> Option<(NodeId, u64)> {
        let mut without = 0;
        for moves in 0..LEADER_MOVES_MAX {
            if moves == LEADER_MOVES_HEAL {
                self.heal(rng);
            }
            if let Some((id, term)) = self.active_leader() {
                if self.decided(id) {
                    return Some((id, term));
                }
                without = 0;
            } else {
                without += 1;
                if without % ELECTION_EVERY_MOVES == 0 || (without == 1 && self.leader().is_none())
                {
                    // Once healed, a node that has seen a longer log stands only after twice
                    // the longest election timeout more (openraft's `smaller_log_timeout`):
                    // the first to stand is one of the most up-to-date. Before, any node may.
                    let running = if moves >= LEADER_MOVES_HEAL {
                        self.most_up_to_date()
                    } else {
                        self.running()
                    };
                    if !running.is_empty() {
                        let id = running[rng.below(running.len() as u64) as usize];
                        self.elect(id, true);
                    }
                }
            }
            self.tick(rng);
        }
        None
    }

    /// The running nodes whose logs end highest, by (last term, last index): those that can
    /// win an election.
    fn most_up_to_date(&self) -> Vec<NodeId> {
        let last_of = |id: NodeId| {
            let node = self.node(id)?;
            let last = node.log_bounds().last?;
            let term = node
                .log_entries(last, last)
                .ok()?
                .first()
                .map_or(0, |e| e.term);
            Some((term, last))
        };
        let lasts: Vec<(NodeId, Option<(u64, u64)>)> = self
            .running()
            .into_iter()
            .map(|id| (id, last_of(id)))
            .collect();
        let highest = lasts.iter().map(|(_, last)| *last).max().flatten();
        lasts
            .into_iter()
            .filter(|(_, last)| *last == highest)
            .map(|(id, _)| id)
            .collect()
    }

    /// Heals every link and restarts every node that is down.
    pub fn heal(&mut self, rng: &mut Rng) {
        self.net.heal_all();
        for id in self.down() {
            self.restart(id);
        }
        let _ = rng;
    }

    /// A client's write to the shop's leader, waited for while the network moves.
    pub fn commit(&mut self, event: &engine::Event, rng: &mut Rng) -> Commit {
        let Some((id, _)) = self.shop else {
            return Commit::Unknown;
        };
        let Some(node) = self.node(id) else {
            return Commit::Unknown;
        };
        let mut durable = match node.store().commit(event) {
            Ok(durable) => durable,
            Err(storage::Error::Violation(v)) => return Commit::Refused(v),
            Err(_) => return Commit::Unknown,
        };
        self.settle();
        self.trace(format_args!("commit on {id}: {}", super::describe(event)));
        for _ in 0..COMMIT_MOVES_MAX {
            self.settle();
            if let Some(outcome) = durable.try_outcome() {
                self.trace(format_args!(
                    "commit outcome {:?}",
                    outcome.as_ref().map(|l| l.0)
                ));
                return match outcome {
                    Ok(lsn) => {
                        self.note_acked(id, lsn.0);
                        Commit::Acked(lsn.0)
                    }
                    Err(_) => Commit::Unknown,
                };
            }
            self.tick(rng);
        }
        Commit::Unknown
    }

    fn note_acked(&mut self, id: NodeId, index: u64) {
        let node = self.node(id).expect("the acknowledging node runs");
        match node
            .log_entries(index, index)
            .ok()
            .and_then(|e| e.into_iter().next())
        {
            Some(entry) => {
                self.acked.insert(index, (entry.term, digest(&entry.bytes)));
            }
            None => panic!("node {id} acknowledged entry {index}, which its log lacks"),
        }
    }

    /// kill -9 of node `id`; with `damage`, its newest log record, if no peer may know of
    /// it, is cut, torn or followed by garbage.
    pub fn crash(&mut self, id: NodeId, damage: bool, rng: &mut Rng) {
        let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.take()) else {
            return;
        };
        self.stats.node_crashes += 1;
        self.trace(format_args!("crash {id} (damage: {damage})"));
        let committed = node.log_bounds().committed;
        node.shutdown();
        drop(node);
        if self.shop.is_some_and(|(shop, _)| shop == id) {
            self.shop = None;
        }
        let slot = &self.slots[&id];
        let floor = slot.reported.max(committed).max(slot.verified.unwrap_or(0));
        if damage {
            damage_tail(slot.dir.path(), floor, rng);
        }
        let down_log = read_log(slot.dir.path(), slot.verified.unwrap_or(0));
        self.slots.get_mut(&id).expect("slot").down_log = down_log;
        self.settle();
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.node(id).is_none() {
            self.start_node(id);
            self.trace(format_args!("restarted {id}"));
        }
    }

    /// Makes node `id`'s next log sync fail (it stops, and is restarted by `reap_failed`).
    pub fn fail_sync(&mut self, id: NodeId) {
        if let Some(node) = self.node(id) {
            node.inject_sync_failure();
            self.stats.sync_failures += 1;
        }
    }

    /// Nodes whose storage failed stop for good: crash and restart them, as a supervisor
    /// would restart the process.
    pub fn reap_failed(&mut self, rng: &mut Rng) {
        for id in self.running() {
            if self.node(id).is_some_and(Node::has_failed) {
                self.crash(id, true, rng);
                self.restart(id);
            }
        }
    }

    /// Cuts links as the seed says: one node isolated, one direction cut, or all healed.
    pub fn partition(&mut self, rng: &mut Rng) {
        self.stats.partitions += 1;
        match rng.below(3) {
            0 => {
                let lonely = VOTERS[rng.below(3) as usize];
                for other in VOTERS.iter().filter(|o| **o != lonely) {
                    self.net.set_cut(lonely, *other, true);
                    self.net.set_cut(*other, lonely, true);
                }
            }
            1 => {
                let from = VOTERS[rng.below(3) as usize];
                let to = VOTERS[(from as usize + rng.below(2) as usize) % 3];
                self.net.set_cut(from, to, true);
            }
            _ => self.net.heal_all(),
        }
        self.trace(format_args!("links cut: {:?}", self.net.cut()));
        if rng.percent(50) {
            // The senders' timeouts fire on what the cut holds.
            self.net.lose_cut();
            self.settle();
        }
    }

    /// After every step: the invariants on every node, one leader per term, identical
    /// committed prefixes, every acknowledged entry on a majority, and the committed history
    /// folded (no key sold twice, no committed entry refused).
    pub fn check(&mut self, step: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut order: Vec<(u64, NodeId)> = self
            .running()
            .into_iter()
            .map(|id| (self.node(id).expect("running").log_bounds().committed, id))
            .collect();
        order.sort_by(|a, b| b.cmp(a));
        for (_, id) in order {
            self.check_node(id, step, &mut problems);
        }
        self.check_leaders(step, &mut problems);
        self.check_acked(step, &mut problems);
        problems.append(&mut self.history.take_violations());
        problems.extend(self.noticed.drain(..).map(|p| format!("step {step}: {p}")));
        problems
    }

    fn check_node(&mut self, id: NodeId, step: u64, problems: &mut Vec<String>) {
        let node = self.slots[&id].node.clone().expect("running");
        for violation in node.store().state().check() {
            problems.push(format!("step {step}: node {id}: {}", violation.0));
        }
        for problem in self.follow(id) {
            problems.push(format!("step {step}: node {id}: {problem}"));
        }
    }

    /// Offers the history the entries `id` committed since it was last followed, and what
    /// each disagreement was (each is reported once: the node counts as followed through
    /// its commit either way).
    fn follow(&mut self, id: NodeId) -> Vec<String> {
        let node = self.slots[&id].node.clone().expect("running");
        let bounds = node.log_bounds();
        let Some(last) = bounds.last else {
            return Vec::new();
        };
        let first = bounds.purged.map_or(0, |p| p + 1);
        let through = bounds.committed.min(last);
        let verified = self.slots[&id].verified;
        let from = verified.unwrap_or(0).max(first);
        if verified.is_some_and(|v| v > through) || from > through {
            return Vec::new();
        }
        let problems = match node.log_entries(from, through) {
            Ok(entries) => entries
                .iter()
                .filter_map(|entry| self.history.offer(entry).err())
                .collect(),
            Err(e) => return vec![format!("log unreadable: {e}")],
        };
        self.slots.get_mut(&id).expect("slot").verified = Some(through);
        problems
    }

    fn check_leaders(&mut self, step: u64, problems: &mut Vec<String>) {
        let mut active_by_term: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
        for id in self.running() {
            let status = self.node(id).expect("running").status();
            if status.role == Role::Leader {
                let first = *self.leaders.entry(status.term).or_insert(id);
                if first != id {
                    problems.push(format!(
                        "step {step}: nodes {first} and {id} both led term {}",
                        status.term
                    ));
                }
            }
            if status.active {
                active_by_term.entry(status.term).or_default().push(id);
            }
        }
        for (term, ids) in active_by_term {
            if ids.len() > 1 {
                problems.push(format!(
                    "step {step}: nodes {ids:?} are active leaders in term {term}"
                ));
            }
        }
    }

    /// Every acknowledged entry is held (the same entry) by a majority of the nodes, those
    /// down included (their logs as they lie on disk).
    fn check_acked(&mut self, step: u64, problems: &mut Vec<String>) {
        let floor = self
            .slots
            .values()
            .map(|s| s.verified.unwrap_or(0))
            .min()
            .unwrap_or(0);
        let pending: Vec<(u64, (u64, u64))> = self
            .acked
            .range(floor + 1..)
            .map(|(i, e)| (*i, *e))
            .collect();
        let Some(&(highest, _)) = pending.last() else {
            return;
        };
        let mut holders: BTreeMap<u64, usize> = BTreeMap::new();
        for (id, slot) in &self.slots {
            let held: BTreeMap<u64, (u64, u64)> = match &slot.node {
                Some(node) => {
                    let bounds = node.log_bounds();
                    let first = bounds.purged.map_or(0, |p| p + 1).max(floor + 1);
                    node.log_entries(first, highest)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| (e.index, (e.term, digest(&e.bytes))))
                        .collect()
                }
                None => slot.down_log.clone(),
            };
            let covered = slot.verified.unwrap_or(0).max(
                slot.node
                    .as_ref()
                    .and_then(|n| n.log_bounds().snapshot)
                    .unwrap_or(0),
            );
            for (index, entry) in &pending {
                if *index <= covered && self.history.get(*index).is_some_and(|h| h == *entry)
                    || held.get(index) == Some(entry)
                {
                    *holders.entry(*index).or_insert(0) += 1;
                }
                let _ = id;
            }
        }
        for (index, _) in pending {
            let count = holders.get(&index).copied().unwrap_or(0);
            if count < MAJORITY {
                problems.push(format!(
                    "step {step}: acknowledged entry {index} is held by {count} of {} nodes",
                    VOTERS.len()
                ));
            }
        }
    }

    /// Faults off: heal, restart everything, and run until every node has applied all
    /// that the leader committed. Returns false if they never catch up.
    pub fn converge(&mut self, rng: &mut Rng) -> bool {
        self.heal(rng);
        for _ in 0..LEADER_MOVES_MAX {
            let Some((leader, _)) = self.active_leader() else {
                self.ensure_leader(rng);
                continue;
            };
            let committed = self.node(leader).expect("running").log_bounds().committed;
            let behind = self
                .running()
                .into_iter()
                .any(|id| self.node(id).expect("running").store().applied_index() < committed);
            if !behind && self.net.held_count() == 0 {
                return true;
            }
            self.tick(rng);
            // A sync that failed now (one injected before the faults stopped) stops its
            // node: the supervisor restarts it, as during the run.
            self.reap_failed(rng);
        }
        false
    }

    /// Stops every node (for the audits of their data dirs).
    pub fn stop(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(node) = slot.node.take() {
                node.shutdown();
            }
        }
    }

    /// A digest of everything committed, for telling whether two runs of a seed agree.
    pub fn digest(&self) -> u64 {
        self.history.digest()
    }
}

/// Cuts the newest record whole, tears it mid-frame (the file cut short, or the frame's end
/// left as the zeros the writer wrote ahead), or writes garbage after it, if it lies beyond
/// `floor` (the highest index the node may have told anyone of).
pub(super) fn damage_tail(data_dir: &std::path::Path, floor: u64, rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let log = storage::log::log_dir(data_dir);
    let Ok(Some((path, ends))) = storage::log::tail_frames(&log) else {
        return;
    };
    let Some(&(last_lsn, last_end)) = ends.last() else {
        return;
    };
    if last_lsn <= floor {
        return;
    }
    let previous_end = ends.len().checked_sub(2).map_or(0, |i| ends[i].1);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("segment");
    let torn_at = previous_end + rng.below(last_end - previous_end).max(1);
    match rng.below(4) {
        0 => file.set_len(previous_end).expect("cut"),
        1 => file.set_len(torn_at).expect("tear"),
        2 => {
            let zeros = vec![0; (last_end - torn_at) as usize];
            file.write_all_at(&zeros, torn_at).expect("tear over zeros");
        }
        _ => {
            let garbage: Vec<u8> = (0..1 + rng.below(64))
                .map(|_| rng.next_u64() as u8)
                .collect();
            file.write_all_at(&garbage, last_end).expect("garbage");
        }
    }
}

/// The entries of a stopped node's log after `after`, as recovery would read them.
fn read_log(data_dir: &std::path::Path, after: u64) -> BTreeMap<u64, (u64, u64)> {
    let mut entries = BTreeMap::new();
    let _ = storage::log::recover(&storage::log::log_dir(data_dir), false, |lsn, payload| {
        if lsn.0 > after {
            if let Ok(entry) = storage::entry::decode_entry(payload) {
                entries.insert(lsn.0, (entry.term, digest(payload)));
            }
        }
        Ok(())
    });
    entries
}
