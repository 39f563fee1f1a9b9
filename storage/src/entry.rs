//! The log's record: one replicated entry (a Raft log entry, without Raft's types).
//!
//! Format: `ENTRY_FORMAT | bincode(EntryRecord)`. An entry carries its log id (term, the
//! leader that proposed it, index) and either nothing (a new leader's blank entry), a batch
//! of events (each the exact bytes of `rows::encode_event`, so the event codec and its
//! version stay as they were), or a membership change (opaque bytes of the replication
//! crate). Many events share one entry: the consensus layer syncs once per entry.

use bincode::{Decode, Encode};

use crate::Error;

/// Format byte of log entries. Event payloads (`rows::FORMAT_VERSION`, 2) came before it: a
/// log whose first frame starts with 2 predates replication (see `migrate`).
pub const ENTRY_FORMAT: u8 = 3;

/// Who proposed a batch, and what state it was built on.
///
/// A leader applies its events to its own state before they commit, so each batch is built
/// on the committed state at `base` plus the earlier batches of its chain. A chain is one
/// stretch of leadership of one process (`node`, `incarnation`, `epoch`); its batches are
/// numbered from 1. A batch is admitted only if the entries applied since `base` are its own
/// chain's earlier batches, in order (`Chains`); otherwise its premises are gone and
/// every node skips it alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Origin {
    /// The proposing node's id.
    pub node: u64,
    /// Drawn at random at each process start.
    pub incarnation: u64,
    /// Rises by one each time this process becomes an active leader.
    pub epoch: u64,
    /// Rises by one per batch within the chain, from 1.
    pub batch: u64,
    /// The last log index applied when the chain began.
    pub base: u64,
}

impl Origin {
    pub fn same_chain(&self, other: &Origin) -> bool {
        (self.node, self.incarnation, self.epoch) == (other.node, other.incarnation, other.epoch)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum EntryPayload {
    Blank,
    Events {
        origin: Origin,
        /// Encoded `Event`s (`rows::encode_event`), packed (`pack_event`).
        events: Vec<u8>,
    },
    /// A membership change, encoded by the replication layer.
    Membership(Vec<u8>),
}

/// `EntryRecord` borrowed: encodes to exactly the same bytes without copying the events.
#[derive(Encode)]
pub struct EntryRef<'a> {
    pub term: u64,
    pub leader: u64,
    pub index: u64,
    pub payload: PayloadRef<'a>,
}

#[derive(Encode)]
pub enum PayloadRef<'a> {
    Blank,
    Events { origin: Origin, events: &'a [u8] },
    Membership(&'a [u8]),
}

/// Appends one encoded event to a packed batch: `len: u32 | bytes`.
pub fn pack_event(packed: &mut Vec<u8>, event: &[u8]) {
    packed.extend_from_slice(&(event.len() as u32).to_le_bytes());
    packed.extend_from_slice(event);
}

/// The encoded events of a packed batch.
pub fn unpack_events(packed: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut events = Vec::new();
    let mut rest = packed;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::Corrupt("cut event length in a batch".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(Error::Corrupt("cut event in a batch".into()));
        }
        events.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(events)
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct EntryRecord {
    pub term: u64,
    /// The node that led `term` and proposed this entry.
    pub leader: u64,
    pub index: u64,
    pub payload: EntryPayload,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode_entry(entry: &EntryRef<'_>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(ENTRY_FORMAT);
    bincode::encode_into_std_write(entry, &mut bytes, config()).expect("encoding to memory");
    bytes
}

impl EntryRecord {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            term: self.term,
            leader: self.leader,
            index: self.index,
            payload: match &self.payload {
                EntryPayload::Blank => PayloadRef::Blank,
                EntryPayload::Events { origin, events } => PayloadRef::Events {
                    origin: *origin,
                    events,
                },
                EntryPayload::Membership(bytes) => PayloadRef::Membership(bytes),
            },
        }
    }
}

pub fn decode_entry(bytes: &[u8]) -> Result<EntryRecord, Error> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, rest)) => {
            let (entry, read): (EntryRecord, usize) = bincode::decode_from_slice(rest, config())
                .map_err(|e| Error::Corrupt(format!("undecodable log entry: {e}")))?;
            if read != rest.len() {
                return Err(Error::Corrupt("trailing bytes after a log entry".into()));
            }
            Ok(entry)
        }
        Some((version, _)) => Err(Error::Corrupt(format!(
            "log entry of unknown format {version}"
        ))),
        None => Err(Error::Corrupt("empty log entry".into())),
    }
}

/// Whether a log payload is an event of the log format before replication.
pub fn is_pre_replication(bytes: &[u8]) -> bool {
    bytes.first() == Some(&crate::rows::FORMAT_VERSION)
}

/// The origin of an event from before replication: always admitted.
pub const PRE_REPLICATION: Origin = Origin {
    node: 0,
    incarnation: 0,
    epoch: 0,
    batch: 0,
    base: 0,
};

/// The last batch applied, to tell whether the next one's premises hold (`Origin`). Part of
/// the replicated state: snapshots carry it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Chains {
    /// The last admitted batch and the index of its entry.
    pub last: Option<(Origin, u64)>,
}

impl Chains {
    /// Whether a batch of `origin` may be applied now.
    pub fn admits(&self, origin: &Origin) -> bool {
        if *origin == PRE_REPLICATION {
            return true;
        }
        match self.last {
            _ if origin.batch == 1 => self.last.is_none_or(|(_, index)| index <= origin.base),
            Some((last, _)) => last.same_chain(origin) && last.batch + 1 == origin.batch,
            None => false,
        }
    }

    /// Records an admitted batch applied as entry `index`.
    pub fn admitted(&mut self, origin: Origin, index: u64) {
        self.last = Some((origin, index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_entry_encodes_like_the_owned_one() {
        let mut events = Vec::new();
        pack_event(&mut events, b"first");
        pack_event(&mut events, b"");
        pack_event(&mut events, b"third event");
        let owned = EntryRecord {
            term: 7,
            leader: 2,
            index: 300,
            payload: EntryPayload::Events {
                origin: Origin {
                    node: 2,
                    incarnation: 99,
                    epoch: 3,
                    batch: 5,
                    base: 280,
                },
                events,
            },
        };
        let bytes = encode_entry(&owned.as_ref());
        assert_eq!(decode_entry(&bytes).unwrap(), owned);
        let EntryPayload::Events { events, .. } = &owned.payload else {
            unreachable!()
        };
        let unpacked = unpack_events(events).unwrap();
        assert_eq!(unpacked, vec![&b"first"[..], b"", b"third event"]);
        for payload in [EntryPayload::Blank, EntryPayload::Membership(vec![1, 2, 3])] {
            let owned = EntryRecord {
                payload,
                ..owned.clone()
            };
            assert_eq!(decode_entry(&encode_entry(&owned.as_ref())).unwrap(), owned);
        }
    }

    #[test]
    fn a_cut_batch_is_corrupt() {
        let mut events = Vec::new();
        pack_event(&mut events, b"whole");
        assert!(unpack_events(&events[..events.len() - 1]).is_err());
        assert!(unpack_events(&events[..2]).is_err());
    }
}
