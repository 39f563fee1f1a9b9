//! The simulated network: every node-to-node message waits here until the simulator moves
//! it. A moved message is delivered (the target serves it and its answer goes back), lost
//! (the sender sees `TransportError::Unreachable`), or delivered with its answer lost. A
//! cut link holds its messages until it heals or they are given up.
//!
//! Messages are chosen by a canonical key (sender, target, call, a digest of the body), never
//! by arrival order, which depends on thread timing. Messages with the same key are moved
//! together: which of them arrived first does not matter.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use replication::{Rpc, Transport, TransportError, TransportFuture};
use tokio::sync::oneshot;

pub type NodeId = u64;

/// The URL a simulated node is known by.
pub fn url_of(id: NodeId) -> String {
    format!("sim://{id}")
}

fn id_of(url: &str) -> Option<NodeId> {
    url.strip_prefix("sim://")?.parse().ok()
}

/// A message on its way, and where its answer goes.
struct Held {
    key: Key,
    body: Vec<u8>,
    answer: oneshot::Sender<Result<Vec<u8>, TransportError>>,
}

/// What a message is, independent of when it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub from: NodeId,
    pub to: NodeId,
    pub rpc: u8,
    pub digest: u64,
}

impl Key {
    fn new(from: NodeId, to: NodeId, rpc: Rpc, body: &[u8]) -> Key {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        if rpc == Rpc::Snapshot {
            // A snapshot's bytes follow hash map order, which differs between runs; its
            // length does not.
            body.len().hash(&mut hasher);
        } else {
            body.hash(&mut hasher);
        }
        Key {
            from,
            to,
            rpc: Rpc::ALL.iter().position(|r| *r == rpc).unwrap_or(0) as u8,
            digest: hasher.finish(),
        }
    }

    pub fn rpc(&self) -> Rpc {
        Rpc::ALL[self.rpc as usize]
    }
}

#[derive(Default)]
struct State {
    held: Vec<Held>,
    /// Directed links that carry nothing: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages ever sent, to tell whether anything moved.
    sent_count: u64,
}

/// The network shared by every simulated node.
#[derive(Default)]
pub struct Net {
    state: Mutex<State>,
}

/// What the simulator decided for one message group.
pub enum Fate {
    Lose,
    Deliver { lose_answer: bool },
}

impl Net {
    /// The transport node `me` sends through.
    pub fn endpoint(self: &Arc<Self>, me: NodeId) -> Arc<dyn Transport> {
        Arc::new(Endpoint {
            me,
            net: self.clone(),
        })
    }

    pub fn held_count(&self) -> usize {
        self.state.lock().held.len()
    }

    /// The distinct messages that may move now (on links that are not cut), in key order.
    pub fn movable(&self) -> Vec<Key> {
        let state = self.state.lock();
        let keys: BTreeSet<Key> = state
            .held
            .iter()
            .map(|h| h.key)
            .filter(|k| !state.cut.contains(&(k.from, k.to)))
            .collect();
        keys.into_iter().collect()
    }

    /// Takes every message with `key` (for delivery or loss).
    pub fn take(&self, key: Key) -> Vec<(Vec<u8>, Answer)> {
        let mut state = self.state.lock();
        let (taken, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut state.held)
            .into_iter()
            .partition(|h| h.key == key);
        state.held = kept;
        taken
            .into_iter()
            .map(|h| (h.body, Answer(h.answer)))
            .collect()
    }

    /// Cuts (or heals) the link from `from` to `to`.
    pub fn set_cut(&self, from: NodeId, to: NodeId, cut: bool) {
        let mut state = self.state.lock();
        if cut {
            state.cut.insert((from, to));
        } else {
            state.cut.remove(&(from, to));
        }
    }

    pub fn cut(&self) -> BTreeSet<(NodeId, NodeId)> {
        self.state.lock().cut.clone()
    }

    pub fn heal_all(&self) {
        self.state.lock().cut.clear();
    }

    /// Loses every message held on a cut link (their senders' timeouts would have fired).
    pub fn lose_cut(&self) -> usize {
        let mut state = self.state.lock();
        let cut = state.cut.clone();
        let (lost, kept): (Vec<Held>, Vec<Held>) = std::mem::take(&mut state.held)
            .into_iter()
            .partition(|h| cut.contains(&(h.key.from, h.key.to)));
        state.held = kept;
        drop(state);
        let count = lost.len();
        for held in lost {
            Answer(held.answer).lose();
        }
        count
    }

    /// A digest of what is held, to tell whether the network changed.
    pub fn fingerprint(&self) -> u64 {
        let state = self.state.lock();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        state.sent_count.hash(&mut hasher);
        state.held.len().hash(&mut hasher);
        hasher.finish()
    }
}

/// Where a message's answer goes.
pub struct Answer(oneshot::Sender<Result<Vec<u8>, TransportError>>);

impl Answer {
    pub fn lose(self) {
        let _ = self.0.send(Err(TransportError::Unreachable(
            "lost by the simulated network".into(),
        )));
    }

    pub fn give(self, answer: Result<Vec<u8>, TransportError>) {
        let _ = self.0.send(answer);
    }
}

struct Endpoint {
    me: NodeId,
    net: Arc<Net>,
}

impl Transport for Endpoint {
    fn call(&self, url: &str, rpc: Rpc, body: Vec<u8>, _timeout: Duration) -> TransportFuture {
        // openraft bounds every call with its own timeout, on the simulated clock.
        let Some(to) = id_of(url) else {
            let url = url.to_owned();
            return Box::pin(async move { Err(TransportError::Unreachable(url)) });
        };
        let (sender, receiver) = oneshot::channel();
        {
            let mut state = self.net.state.lock();
            state.sent_count += 1;
            state.held.push(Held {
                key: Key::new(self.me, to, rpc, &body),
                body,
                answer: sender,
            });
        }
        Box::pin(async move {
            receiver
                .await
                .unwrap_or_else(|_| Err(TransportError::Unreachable("network gone".into())))
        })
    }
}
