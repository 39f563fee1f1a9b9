//! openraft's type configuration for Panshi, and the conversions between openraft's entries
//! and storage's records.

use std::fmt;
use std::sync::Arc;

use openraft::{EntryPayload, LogId, Membership};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use storage::entry::{self, EntryRecord, PayloadRef};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Panshi's Raft: a log entry's data is a batch of already validated events.
    pub PanshiRaft:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = PeerNode,
        Entry = openraft::Entry<PanshiRaft>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = crate::clock::PanshiRuntime,
);

pub type Entry = openraft::Entry<PanshiRaft>;
pub type Raft = openraft::Raft<PanshiRaft>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;

/// A cluster member as the membership records it: its public base URL, which also carries
/// node-to-node requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub url: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Bytes shared between the proposer, the log's tail cache and the network without copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedBytes(pub Arc<Vec<u8>>);

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SharedBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<SharedBytes, E> {
                Ok(SharedBytes(Arc::new(bytes.to_vec())))
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<SharedBytes, E> {
                Ok(SharedBytes(Arc::new(bytes)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SharedBytes, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(SharedBytes(Arc::new(bytes)))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Who proposed a batch, and on what (mirrors `storage::entry::Origin`, which explains it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub incarnation: u64,
    pub epoch: u64,
    pub batch: u64,
    pub base: u64,
}

impl Origin {
    pub fn same_chain_as(&self, other: &Origin) -> bool {
        (self.node, self.incarnation, self.epoch) == (other.node, other.incarnation, other.epoch)
    }
}

impl From<Origin> for entry::Origin {
    fn from(o: Origin) -> Self {
        entry::Origin {
            node: o.node,
            incarnation: o.incarnation,
            epoch: o.epoch,
            batch: o.batch,
            base: o.base,
        }
    }
}

impl From<entry::Origin> for Origin {
    fn from(o: entry::Origin) -> Self {
        Origin {
            node: o.node,
            incarnation: o.incarnation,
            epoch: o.epoch,
            batch: o.batch,
            base: o.base,
        }
    }
}

/// One Raft entry's data: events the leader validated and applied, in order, packed
/// (`storage::entry::pack_event`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: Origin,
    pub events: SharedBytes,
}

/// The log bytes of an entry.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let membership;
    let payload = match &entry.payload {
        EntryPayload::Blank => PayloadRef::Blank,
        EntryPayload::Normal(proposal) => PayloadRef::Events {
            origin: proposal.origin.into(),
            events: &proposal.events.0,
        },
        EntryPayload::Membership(m) => {
            membership = serde_json::to_vec(m).expect("membership encodes");
            PayloadRef::Membership(&membership)
        }
    };
    entry::encode_entry(&entry::EntryRef {
        term: entry.log_id.leader_id.term,
        leader: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        payload,
    })
}

/// An entry from its log bytes.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, storage::Error> {
    from_record(entry::decode_entry(bytes)?)
}

pub fn from_record(record: EntryRecord) -> Result<Entry, storage::Error> {
    let payload = match record.payload {
        entry::EntryPayload::Blank => EntryPayload::Blank,
        entry::EntryPayload::Events { origin, events } => EntryPayload::Normal(Proposal {
            origin: origin.into(),
            events: SharedBytes(Arc::new(events)),
        }),
        entry::EntryPayload::Membership(bytes) => {
            let membership: Membership<NodeId, PeerNode> = serde_json::from_slice(&bytes)
                .map_err(|e| storage::Error::Corrupt(format!("membership entry: {e}")))?;
            EntryPayload::Membership(membership)
        }
    };
    Ok(Entry {
        log_id: log_id(record.term, record.leader, record.index),
        payload,
    })
}

pub fn log_id(term: u64, leader: NodeId, index: u64) -> LogId<NodeId> {
    LogId::new(openraft::CommittedLeaderId::new(term, leader), index)
}

/// The storage error openraft expects, for an I/O failure of the log or the state machine.
pub fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&error)).into()
}
