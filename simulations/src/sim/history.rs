//! The committed history as the simulator saw it: every entry some node held at or below its
//! commit, which every other node's committed prefix must equal; folded as the nodes fold it
//! (admitted batches only), and checked for what no node may commit: an entry the engine
//! refuses, or a key sold to two orders.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use engine::state::ShopState;
use engine::{CardId, Event, OrderId, OrderStatus};
use replication::LoggedEntry;
use storage::entry::EntryPayload;
use storage::replay::{self, Chains};

/// A digest of an entry's log bytes.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

pub struct History {
    /// index -> (term, digest).
    entries: BTreeMap<u64, (u64, u64)>,
    state: ShopState,
    chains: Chains,
    /// Each key sold, and the order it went to.
    sold: BTreeMap<CardId, OrderId>,
    violations: Vec<String>,
    /// A refused entry leaves the fold meaningless: it stops there.
    broken: bool,
    /// The canary's nodes admit every batch; the fold does as they do.
    admit_all: bool,
}

impl History {
    pub fn new(admit_all: bool) -> Self {
        Self {
            entries: BTreeMap::new(),
            state: ShopState::default(),
            chains: Chains::default(),
            sold: BTreeMap::new(),
            violations: Vec::new(),
            broken: false,
            admit_all,
        }
    }

    pub fn get(&self, index: u64) -> Option<(u64, u64)> {
        self.entries.get(&index).copied()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// A committed entry as one node holds it: compared with the history, or appended to it
    /// (and folded) when it is the next one. The history starts at index 0 (the initial
    /// membership) and has no gaps: an entry past its end means the cluster purged entries
    /// before the history saw them, and folding on would start from a state that lacks them.
    pub fn offer(&mut self, entry: &LoggedEntry) -> Result<(), String> {
        let mine = (entry.term, digest(&entry.bytes));
        if let Some(known) = self.entries.get(&entry.index) {
            if *known != mine {
                return Err(format!(
                    "committed entry {} is (term {}, digest {:x}) here, (term {}, digest {:x}) in the history",
                    entry.index, mine.0, mine.1, known.0, known.1
                ));
            }
            return Ok(());
        }
        let next = self.last_index().map_or(0, |l| l + 1);
        if entry.index != next {
            return Err(format!(
                "committed entry {} offered to a history that ends before {next}: the entries between were purged unseen",
                entry.index
            ));
        }
        self.entries.insert(entry.index, mine);
        self.fold(entry);
        Ok(())
    }

    fn fold(&mut self, entry: &LoggedEntry) {
        if self.broken {
            return;
        }
        let record = match storage::entry::decode_entry(&entry.bytes) {
            Ok(record) => record,
            Err(e) => {
                self.violations
                    .push(format!("committed entry {} undecodable: {e}", entry.index));
                self.broken = true;
                return;
            }
        };
        let EntryPayload::Events { origin, .. } = &record.payload else {
            return;
        };
        if !self.admit_all && !self.chains.admits(origin) {
            return;
        }
        let events = match replay::entry_events(&record) {
            Ok(events) => events,
            Err(e) => {
                self.violations
                    .push(format!("committed entry {} undecodable: {e}", entry.index));
                self.broken = true;
                return;
            }
        };
        self.chains.admitted(*origin, entry.index);
        for event in &events {
            if let Err(violation) = self.state.apply(event) {
                self.violations.push(format!(
                    "committed entry {} refused on apply (a double sale caught one step later): {violation}",
                    entry.index
                ));
                self.broken = true;
                return;
            }
        }
        for event in &events {
            self.note_sales(entry.index, event);
        }
    }

    /// Keys an event sold, each checked against every earlier sale.
    fn note_sales(&mut self, index: u64, event: &Event) {
        let (order_id, cards): (OrderId, Vec<CardId>) = match event {
            Event::ResellerOrderPlaced(order) => (order.order_id.clone(), order.cards.clone()),
            Event::PaymentApplied { order_id, .. } => match self.state.order(order_id) {
                Some(record) if record.status == OrderStatus::Delivered => {
                    (order_id.clone(), record.cards.clone())
                }
                _ => return,
            },
            _ => return,
        };
        for card in cards {
            if let Some(first) = self.sold.insert(card, order_id.clone()) {
                if first != order_id {
                    self.violations.push(format!(
                        "committed entry {index}: key {} sold to {first} and to {order_id}",
                        card.0
                    ));
                }
            }
        }
    }

    pub fn take_violations(&mut self) -> Vec<String> {
        std::mem::take(&mut self.violations)
    }

    /// A digest of every committed entry (term and bytes), for comparing two runs.
    pub fn digest(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.entries.hash(&mut hasher);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::entry::{encode_entry, EntryRecord};

    fn blank(index: u64) -> LoggedEntry {
        let record = EntryRecord {
            term: 1,
            leader: 1,
            index,
            payload: EntryPayload::Blank,
        };
        LoggedEntry {
            index,
            term: 1,
            bytes: encode_entry(&record.as_ref()),
        }
    }

    #[test]
    fn the_history_starts_at_entry_zero_and_refuses_a_gap() {
        let mut history = History::new(false);
        let refused = history
            .offer(&blank(7))
            .expect_err("a history that starts at 7");
        assert!(refused.contains("purged unseen"), "{refused}");
        assert_eq!(history.last_index(), None);
        for index in 0..3 {
            history.offer(&blank(index)).expect("the next entry");
        }
        history
            .offer(&blank(1))
            .expect("an entry already held, the same");
        assert!(
            history.offer(&blank(4)).is_err(),
            "entry 3 was never offered"
        );
        assert_eq!(history.last_index(), Some(2));
        assert!(history.take_violations().is_empty());
    }
}
