//! Folding snapshots and log entries into a `ShopState`: at start-up, to build a snapshot,
//! to rebuild a leader's state after its uncommitted proposals were lost, and in `audit`.

use std::path::Path;
use std::sync::Arc;

use engine::state::{ShopState, Touched};
use engine::Event;

use crate::cold::ColdArchive;
use crate::entry::{self, EntryPayload, EntryRecord};
pub use crate::entry::{Chains, PRE_REPLICATION};
use crate::log::log_dir;
use crate::log::{self, Log, Lsn};
use crate::rows;
use crate::snapshot::{self, SnapshotHeader};
use crate::Error;

/// The events of an entry, decoded (none for blank and membership entries).
pub fn entry_events(entry: &EntryRecord) -> Result<Vec<Event>, Error> {
    match &entry.payload {
        EntryPayload::Events { events, .. } => entry::unpack_events(events)?
            .into_iter()
            .map(rows::decode_event)
            .collect(),
        EntryPayload::Blank | EntryPayload::Membership(_) => Ok(Vec::new()),
    }
}

/// Applies an entry's events to `state` if `chains` admits it, calling `each` after every
/// event; returns whether it was admitted. A refusal is `Error::Corrupt`: an admitted
/// committed entry the engine refuses means a broken history.
pub fn apply_entry(
    state: &mut ShopState,
    chains: &mut Chains,
    entry: &EntryRecord,
    mut each: impl FnMut(&ShopState, &Event, Touched),
) -> Result<bool, Error> {
    let EntryPayload::Events { origin, .. } = &entry.payload else {
        return Ok(true);
    };
    if !chains.admits(origin) {
        return Ok(false);
    }
    chains.admitted(*origin, entry.index);
    for event in entry_events(entry)? {
        let touched = state
            .apply(&event)
            .map_err(|v| Error::Corrupt(format!("entry {}: {v}", entry.index)))?;
        each(state, &event, touched);
    }
    Ok(true)
}

/// A state folded from the newest snapshot and the log.
pub struct Folded {
    pub state: ShopState,
    /// The archived orders the state reads (the snapshot's cold tables).
    pub archive: Arc<ColdArchive>,
    pub chains: Chains,
    pub snapshot: Option<SnapshotHeader>,
    /// The last entry folded in (0 for none).
    pub last_index: u64,
    pub last_term: u64,
}

/// The newest snapshot of `data_dir` (or an empty state), without the log.
pub fn from_snapshot(data_dir: &Path) -> Result<Folded, Error> {
    match snapshot::latest(&snapshot::snapshot_dir(data_dir))? {
        Some(path) => {
            let snapshot::Loaded {
                header,
                state,
                archive,
            } = snapshot::read(&path)?;
            Ok(Folded {
                state,
                archive,
                chains: header.chains,
                last_index: header.last_index,
                last_term: header.last_term,
                snapshot: Some(header),
            })
        }
        None => Ok(Folded {
            state: ShopState::default(),
            archive: Arc::new(ColdArchive::empty()),
            chains: Chains::default(),
            snapshot: None,
            last_index: 0,
            last_term: 0,
        }),
    }
}

/// The newest snapshot folded with the entries of a running log through `through`.
pub fn fold_running(data_dir: &Path, log: &Log, through: u64) -> Result<Folded, Error> {
    let mut folded = from_snapshot(data_dir)?;
    let from = folded.last_index + 1;
    if through >= from {
        for (lsn, payload) in log.read(from, through)? {
            let entry = entry::decode_entry(&payload)?;
            if entry.index != lsn {
                return Err(Error::Corrupt(format!(
                    "entry {} at lsn {lsn}",
                    entry.index
                )));
            }
            apply_entry(&mut folded.state, &mut folded.chains, &entry, |_, _, _| {})?;
            folded.last_index = entry.index;
            folded.last_term = entry.term;
        }
        if folded.last_index < through {
            return Err(Error::Corrupt(format!(
                "log ends at {} before {through}",
                folded.last_index
            )));
        }
    }
    Ok(folded)
}

/// An entry, or an event frame of the log format before replication read as an entry of
/// term 0 holding that one event.
pub fn decode_any(lsn: u64, payload: &[u8]) -> Result<EntryRecord, Error> {
    if !entry::is_pre_replication(payload) {
        return entry::decode_entry(payload);
    }
    Ok(EntryRecord {
        term: 0,
        leader: 0,
        index: lsn,
        payload: EntryPayload::Events {
            origin: PRE_REPLICATION,
            events: {
                let mut packed = Vec::with_capacity(payload.len() + 4);
                entry::pack_event(&mut packed, payload);
                packed
            },
        },
    })
}

/// Visits every entry of a stopped data dir's log after its newest snapshot, in order, without
/// repairing anything. Returns what log recovery found.
pub fn scan_log(
    data_dir: &Path,
    after: u64,
    mut visit: impl FnMut(Lsn, Result<EntryRecord, Error>) -> Result<(), Error>,
) -> Result<log::Recovery, Error> {
    let (recovery, _) = log::recover(&log_dir(data_dir), false, |lsn, payload| {
        if lsn.0 <= after {
            return Ok(());
        }
        visit(lsn, decode_any(lsn.0, payload))
    })?;
    Ok(recovery)
}
