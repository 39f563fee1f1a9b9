//! Panshi's storage: durability and the applied state.
//!
//! The durable truth is an append-only log of checksummed, versioned frames, written by one
//! thread with group commit and `fdatasync` (`log`). sled holds the state applied from the
//! log (orders in month-partitioned trees, products with stock, cards, idempotency records)
//! and can always be rebuilt from it (`store`). `audit` checks a stopped data dir.
//!
//! Invariants: nothing is acknowledged before its frame is fdatasync'd and its rows are in
//! sled; every event is validated by the engine's `ShopState` before it is logged, so the
//! log never holds an event that breaks an invariant; a failed write or sync is sticky.
//!
//! Design decision: sled 0.34's `flush` never fsyncs, so sled is a mirror, not the truth.
//! Its rows are absolute values computed from the replayed state, so re-applying any suffix
//! after a crash is idempotent.

pub mod audit;
pub mod disk;
pub mod keyfile;
pub mod listings;
pub mod log;
pub mod mirror;
pub mod private;
pub mod resellers;
pub mod rows;
pub mod sled_dir;
pub mod store;

pub use log::Lsn;
pub use store::{CommitObserver, Durable, Store};

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
}
