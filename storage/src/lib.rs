//! Panshi's storage: durability and the applied state.
//!
//! The durable truth is an append-only log of checksummed, versioned entries (`entry`: a
//! replicated log entry holding a batch of events), written by one thread with group commit
//! and `fdatasync` (`log`), plus snapshots of the whole state that let the log's prefix go
//! (`snapshot`). `store` holds the `ShopState` that validates events, and mirrors applied
//! entries into sled (orders in month-partitioned trees, products with stock, cards,
//! idempotency records), which can always be rebuilt from the snapshot and the log.
//! `audit` checks a stopped data dir. storage knows nothing of Raft: the replication crate
//! drives the log and the store.
//!
//! Invariants: nothing is acknowledged before its entry is fdatasync'd (on a majority) and
//! applied; every event is validated by the engine's `ShopState` before it is proposed, so
//! the log never holds an event that breaks an invariant; a failed write or sync is sticky.
//!
//! Design decision: sled 0.34's `flush` never fsyncs, so sled is a mirror, not the truth.
//! Its rows are absolute values computed from the replayed state, so re-applying any suffix
//! after a crash is idempotent.

pub mod audit;
pub mod bundle;
pub mod cold;
pub mod disk;
pub mod entry;
#[cfg(test)]
mod fixtures;
pub mod keyfile;
pub mod listings;
pub mod log;
pub mod mirror;
pub mod private;
mod queue;
pub mod replay;
pub mod resellers;
pub mod rows;
pub mod sled_dir;
pub mod snapshot;
pub mod store;
pub mod table;

pub use log::Lsn;
pub use mirror::{ChangeListener, CommitObserver, NoObserver, Pending};
pub use store::{Durable, ProposalSink, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("no such data dir: {0}")]
    NoDataDir(std::path::PathBuf),
    #[error("{0} is not a Panshi data dir (it holds no log)")]
    NotADataDir(std::path::PathBuf),
    #[error("a running server holds the data dir {0}; stop it first, or work on a copy")]
    InUse(std::path::PathBuf),
    #[error("the log failed earlier and refuses writes")]
    LogFailed,
    #[error("the log queue is full")]
    Busy,
    #[error("the store is closed")]
    Closed,
    #[error("record of {0} bytes is too large")]
    RecordTooLarge(usize),
    #[error("event refused: {0}")]
    Violation(engine::Violation),
    /// This node does not lead (or has not yet passed its readiness gate): nothing was
    /// proposed. `leader` is the leader as last known.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<u64> },
    /// The event was proposed but leadership changed before it was known to commit: it may
    /// or may not have. A retry with the same idempotency key finds out.
    #[error("the outcome is unknown: leadership changed before the commit was known")]
    OutcomeUnknown,
}
