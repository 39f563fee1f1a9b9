//! openraft's log storage over `storage::log`: the same checksummed, group-committed,
//! fdatasync'd segment files, with the Raft index as the lsn.
//!
//! Every change goes through the log's writer thread in order (appends, truncation, purge,
//! the vote), so vote and append I/O can never pass each other. An appended entry is kept in
//! a tail cache from the moment `append` returns (openraft reads entries back before they
//! are flushed) until it is both flushed and older than the cache's byte budget; older
//! entries are read from the segment files.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId};
use parking_lot::Mutex;
use storage::log::{self, Log, Op};
use tokio::sync::oneshot;

use crate::types::{self, Entry, NodeId, PanshiRaft, StorageError, Vote};

/// Bytes of flushed entries the tail cache keeps for readers (followers catching up,
/// the state machine applying): beyond it, entries are read from the files.
pub const TAIL_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";

struct Cached {
    entry: Entry,
    bytes: usize,
}

/// What the log store knows of its log, kept in memory.
struct Tail {
    /// Entries appended, by index; the flushed ones are evicted oldest first past the budget.
    cache: BTreeMap<u64, Cached>,
    cache_bytes: usize,
    /// The highest index known to be on disk.
    flushed: Option<u64>,
    last_purged: Option<LogId<NodeId>>,
    last_log: Option<LogId<NodeId>>,
}

pub(crate) struct Shared {
    log: Log,
    dir: PathBuf,
    tail: Mutex<Tail>,
    vote: Mutex<Option<Vote>>,
    committed: Mutex<Option<LogId<NodeId>>>,
}

/// The log storage handed to openraft (and its readers).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn read_error(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    types::io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_error(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    types::io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, storage::Error> {
    match log::read_file(dir, name)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| storage::Error::Corrupt(format!("log/{name}: {e}"))),
    }
}

fn read_committed(dir: &Path) -> Result<Option<LogId<NodeId>>, storage::Error> {
    Ok(log::read_committed_hint(dir)?.map(|(term, node, index)| types::log_id(term, node, index)))
}

impl LogStore {
    /// Opens the log in `dir`: recovers it (cutting a torn tail) and starts its writer.
    pub fn open(dir: &Path) -> Result<(Self, log::Recovery), storage::Error> {
        // A torn tail is cut (and said at WARN) by `recover`.
        let (recovery, index) = log::recover(dir, true, |_, _| Ok(()))?;
        let log = Log::start(dir, &recovery, index)?;
        let last_purged: Option<LogId<NodeId>> = read_json(dir, PURGED_FILE)?;
        if let (Some(purged), Some(_)) = (last_purged, recovery.last_lsn()) {
            // Purging deletes whole segments up to the mark: the log may start at or before
            // the entry after it, never later.
            if recovery.first_lsn > purged.index + 1 {
                return Err(storage::Error::Corrupt(format!(
                    "the log starts at entry {} but was purged only through {}",
                    recovery.first_lsn, purged.index
                )));
            }
        }
        let last_log = match recovery.last_lsn() {
            Some(last) => {
                let (_, payload) = log
                    .read(last, last)?
                    .pop()
                    .ok_or_else(|| storage::Error::Corrupt("unreadable last entry".into()))?;
                Some(types::decode_entry(&payload)?.log_id)
            }
            None => last_purged,
        };
        // The commit hint never claims more than the log holds (a cut tail was never
        // acknowledged, so never committed).
        let committed =
            read_committed(dir)?.filter(|c| last_log.is_some_and(|last| c.index <= last.index));
        let shared = Shared {
            vote: Mutex::new(read_json(dir, VOTE_FILE)?),
            committed: Mutex::new(committed),
            tail: Mutex::new(Tail {
                cache: BTreeMap::new(),
                cache_bytes: 0,
                flushed: recovery.last_lsn(),
                last_purged,
                last_log,
            }),
            log,
            dir: dir.to_owned(),
        };
        Ok((
            Self {
                shared: Arc::new(shared),
            },
            recovery,
        ))
    }

    pub(crate) fn log(&self) -> &Log {
        &self.shared.log
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The last commit this node heard of.
    pub fn committed(&self) -> Option<LogId<NodeId>> {
        *self.shared.committed.lock()
    }

    /// The last log id the log holds (or the last purged one).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.shared.tail.lock().last_log
    }

    /// The last entry purged (covered by a snapshot), if any.
    pub fn last_purged(&self) -> Option<LogId<NodeId>> {
        self.shared.tail.lock().last_purged
    }

    /// The entries the log holds in `range` (appended ones included, flushed or not).
    pub fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, storage::Error> {
        self.entries_in(range)
    }

    /// Waits for the writer to run `op`, returning its result.
    async fn run(&self, op: impl FnOnce(log::Done) -> Op) -> Result<(), storage::Error> {
        let (sender, receiver) = oneshot::channel();
        let done: log::Done = Box::new(move |result| {
            let _ = sender.send(result);
        });
        self.submit(op(done))?;
        receiver.await.unwrap_or(Err(storage::Error::Closed))
    }

    fn submit(&self, op: Op) -> Result<(), storage::Error> {
        // The writer's queue holds openraft's few operations in flight; a full queue is
        // momentary, so wait rather than fail (a storage error stops the node).
        self.shared.log.submit_waiting(op)
    }

    fn entries_in<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, storage::Error> {
        let (first, last) = {
            let tail = self.shared.tail.lock();
            let Some(last_log) = tail.last_log else {
                return Ok(Vec::new());
            };
            let on_disk = self.shared.log.bounds().map(|(first, _)| first);
            let cached = tail.cache.first_key_value().map(|(index, _)| *index);
            let first_present = match (on_disk, cached) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Ok(Vec::new()),
            }
            .max(tail.last_purged.map_or(0, |p| p.index + 1));
            let first = match range.start_bound() {
                Bound::Included(i) => *i,
                Bound::Excluded(i) => i + 1,
                Bound::Unbounded => first_present,
            }
            .max(first_present);
            let last = match range.end_bound() {
                Bound::Included(i) => *i,
                Bound::Excluded(0) => return Ok(Vec::new()),
                Bound::Excluded(i) => i - 1,
                Bound::Unbounded => last_log.index,
            }
            .min(last_log.index);
            if first > last {
                return Ok(Vec::new());
            }
            // Wholly in the cache: the common case (the state machine and followers read
            // what was just appended).
            if tail.cache.contains_key(&first) && tail.cache.contains_key(&last) {
                return Ok(tail
                    .cache
                    .range(first..=last)
                    .map(|(_, c)| c.entry.clone())
                    .collect());
            }
            (first, last)
        };
        let mut entries = Vec::with_capacity((last - first + 1) as usize);
        let mut next = first;
        for (index, payload) in self.shared.log.read(first, last)? {
            if index != next {
                break;
            }
            entries.push(types::decode_entry(&payload)?);
            next += 1;
        }
        if next <= last {
            // The rest was appended but not yet written out: it is in the cache.
            let tail = self.shared.tail.lock();
            for index in next..=last {
                let cached = tail.cache.get(&index).ok_or_else(|| {
                    storage::Error::Corrupt(format!("log entry {index} is missing"))
                })?;
                entries.push(cached.entry.clone());
            }
        }
        Ok(entries)
    }
}

impl RaftLogReader<PanshiRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries_in(range).map_err(read_error)
    }
}

/// Forgets flushed entries past the cache budget, oldest first.
fn evict(tail: &mut Tail) {
    while tail.cache_bytes > TAIL_CACHE_BYTES_MAX {
        let Some((&index, cached)) = tail.cache.first_key_value() else {
            break;
        };
        if tail.flushed.is_none_or(|f| index > f) {
            break;
        }
        tail.cache_bytes -= cached.bytes;
        tail.cache.remove(&index);
    }
}

impl RaftLogStorage<PanshiRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<PanshiRaft>, StorageError> {
        let tail = self.shared.tail.lock();
        Ok(LogState {
            last_purged_log_id: tail.last_purged,
            last_log_id: tail.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).expect("a vote encodes");
        self.run(|done| Op::SaveFile {
            name: VOTE_FILE,
            bytes,
            done,
        })
        .await
        .map_err(|e| types::io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        *self.shared.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(*self.shared.vote.lock())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        *self.shared.committed.lock() = committed;
        // A hint: lost or older, it only means less is re-applied at start before the
        // leader confirms the rest.
        let bytes = match committed {
            Some(id) => log::committed_hint(id.leader_id.term, id.leader_id.node_id, id.index),
            None => Vec::new(),
        };
        let _ = self.shared.log.submit(Op::SaveHint {
            name: log::COMMITTED_FILE,
            bytes,
            done: Box::new(|_| {}),
        });
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(*self.shared.committed.lock())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<PanshiRaft>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut last = None;
        {
            let mut tail = self.shared.tail.lock();
            for entry in entries {
                let bytes = types::encode_entry(&entry);
                let index = entry.log_id.index;
                last = Some(*entry.get_log_id());
                let size = bytes.len();
                tail.cache_bytes += size;
                records.push((index, bytes));
                if let Some(old) = tail.cache.insert(index, Cached { entry, bytes: size }) {
                    tail.cache_bytes -= old.bytes;
                }
            }
            if last.is_some() {
                tail.last_log = last;
            }
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let shared = self.shared.clone();
        let done: log::Done = Box::new(move |result| {
            if result.is_ok() {
                let mut tail = shared.tail.lock();
                tail.flushed = Some(tail.flushed.map_or(last.index, |f| f.max(last.index)));
                evict(&mut tail);
            }
            callback.log_io_completed(result.map_err(std::io::Error::other));
        });
        self.submit(Op::Append { records, done })
            .map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let from = log_id.index;
        {
            let mut tail = self.shared.tail.lock();
            let removed = tail.cache.split_off(&from);
            tail.cache_bytes -= removed.values().map(|c| c.bytes).sum::<usize>();
            if tail.flushed.is_some_and(|f| f >= from) {
                tail.flushed = from.checked_sub(1);
            }
        }
        self.run(|done| Op::Truncate { from, done })
            .await
            .map_err(write_error)?;
        let previous = if from == 0 {
            None
        } else {
            self.entries_in(from - 1..from)
                .map_err(read_error)?
                .pop()
                .map(|e| e.log_id)
        };
        let mut tail = self.shared.tail.lock();
        tail.last_log = previous.or(tail.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&log_id).expect("a log id encodes");
        // The mark first: a crash after it leaves extra segments, never a hole.
        self.run(|done| Op::SaveFile {
            name: PURGED_FILE,
            bytes,
            done,
        })
        .await
        .map_err(write_error)?;
        {
            let mut tail = self.shared.tail.lock();
            tail.last_purged = Some(log_id);
            if tail.last_log.is_none_or(|last| last.index <= log_id.index) {
                tail.last_log = Some(log_id);
            }
            let kept = tail.cache.split_off(&(log_id.index + 1));
            let dropped = std::mem::replace(&mut tail.cache, kept);
            tail.cache_bytes -= dropped.values().map(|c| c.bytes).sum::<usize>();
        }
        let through = log_id.index;
        self.run(|done| Op::Purge { through, done })
            .await
            .map_err(write_error)
    }
}
