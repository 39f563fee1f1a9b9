//! Panshi's replication: one log, replicated by Raft (openraft 0.9), with the shop's
//! `Store` as the state machine.
//!
//! - `log_store`: openraft's log storage over `storage::log` (the Raft index is the lsn).
//! - `state_machine`: committed entries into the `Store`; snapshots of the `ShopState`.
//! - `proposer`: the leader's validated events batched into entries (group commit).
//! - `node`: a running node: cluster formation, the readiness gate, status, membership.
//! - `network`: node-to-node messages as bytes over a `Transport` (HTTP in ws-api).
//! - `migrate`: a data dir from before replication becomes a one-node cluster's snapshot.
//! - `clock`: openraft's runtime: tokio, with a clock the simulator can take over.
//!
//! Invariants: a state change is acknowledged only once its entry is fdatasync'd on a
//! majority of the voters, committed and applied; only a leader past its readiness gate
//! proposes; every node applies the same admitted batches of the same committed log.
//!
//! Design decision: the leader validates and applies each event to its own state before it
//! commits (as the single node always did), and a batch records what it was built on
//! (`storage::entry::Origin`), so a batch whose premises were overtaken by another leader is
//! skipped by every node alike instead of being applied to a state it was not checked
//! against. Every openraft type stays inside this crate.

pub mod clock;
pub mod log_store;
mod migrate;
pub use migrate::restore;
pub mod network;
pub mod node;
mod proposer;
pub mod state_machine;
pub mod types;

pub use network::{Rpc, Transport, TransportError, TransportFuture};
pub use node::{
    Activity, ClusterStatus, Leadership, LogBounds, LoggedEntry, MemberStatus, Node, NodeConfig,
    Role, Trigger,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader is reachable")]
    NoLeader,
    #[error("the node is stopped")]
    Stopped,
    #[error("nothing is applied yet: there is no state to snapshot")]
    NothingApplied,
    #[error("no snapshot could be written: {0}")]
    SnapshotFailed(String),
}

impl From<openraft::error::Fatal<types::NodeId>> for Error {
    fn from(fatal: openraft::error::Fatal<types::NodeId>) -> Self {
        Error::Raft(fatal.to_string())
    }
}
