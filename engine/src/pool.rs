//! A card-pool shard: a disjoint slice of one SKU's available keys. Shards hand out the
//! oldest keys first. A shard only counts what it holds; who holds a reserved key is the
//! order's business, and the log's.

use std::collections::VecDeque;

use crate::ids::CardId;

/// Default number of shards per SKU.
pub const SHARDS_PER_SKU_DEFAULT: usize = 4;
/// Most shards a SKU may be split into.
pub const SHARDS_PER_SKU_MAX: usize = 64;
const _: () = assert!(SHARDS_PER_SKU_DEFAULT <= SHARDS_PER_SKU_MAX);

/// Which shard of `shards_count` owns a card. Deterministic, so replay agrees with runtime.
pub fn shard_of(card: CardId, shards_count: usize) -> usize {
    assert!(shards_count > 0);
    (card.0 % shards_count as u64) as usize
}

#[derive(Default, Debug)]
pub struct Shard {
    available: VecDeque<CardId>,
}

impl Shard {
    pub fn available_count(&self) -> usize {
        self.available.len()
    }

    /// The keys this shard holds, oldest first.
    pub fn cards(&self) -> impl Iterator<Item = &CardId> {
        self.available.iter()
    }

    /// Adds freshly imported keys at the back (they are the newest).
    pub fn add(&mut self, cards: impl IntoIterator<Item = CardId>) {
        self.available.extend(cards);
    }

    /// Takes up to `quantity` keys, oldest first. May return fewer: the caller tries other
    /// shards, and gives back what it took if it cannot gather enough.
    pub fn take(&mut self, quantity: usize, into: &mut Vec<CardId>) {
        let count = quantity.min(self.available.len());
        into.extend(self.available.drain(..count));
    }

    /// Removes the given keys (an operator deletes them); returns those this shard held.
    /// Keys it did not hold are reserved or in a reservation under way: not deletable now.
    pub fn remove(&mut self, cards: &[CardId]) -> Vec<CardId> {
        let wanted: std::collections::HashSet<CardId> = cards.iter().copied().collect();
        let mut removed = Vec::new();
        self.available.retain(|card| {
            let keep = !wanted.contains(card);
            if !keep {
                removed.push(*card);
            }
            keep
        });
        removed
    }

    /// Returns keys (a lapsed reservation, or an incomplete one) to the front, oldest first.
    pub fn give_back(&mut self, cards: &[CardId]) {
        for card in cards.iter().rev() {
            debug_assert!(
                !self.available.contains(card),
                "key {card:?} returned twice"
            );
            self.available.push_front(*card);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Import(u8),
        Reserve(u8),
        Release(u8),
        Sell(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..20).prop_map(Op::Import),
            (1u8..6).prop_map(Op::Reserve),
            any::<u8>().prop_map(Op::Release),
            any::<u8>().prop_map(Op::Sell),
        ]
    }

    /// The pool across 4 shards, reserving as the actors do (home shard, then the others),
    /// against a model of plain sets: no key is ever in two places, and
    /// imported = available + reserved + sold after every step.
    #[test]
    fn pool_matches_a_set_model() {
        proptest!(|(ops in proptest::collection::vec(op(), 1..200))| {
            const SHARDS: usize = 4;
            let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
            let mut next_id = 1u64;
            let mut model_available = BTreeSet::new();
            let mut reservations: BTreeMap<u64, Vec<CardId>> = BTreeMap::new();
            let mut sold = BTreeSet::new();
            let mut order = 0u64;
            for op in ops {
                match op {
                    Op::Import(n) => {
                        for _ in 0..n {
                            let id = CardId(next_id);
                            next_id += 1;
                            shards[shard_of(id, SHARDS)].add([id]);
                            model_available.insert(id);
                        }
                    }
                    Op::Reserve(n) => {
                        order += 1;
                        let home = (order as usize) % SHARDS;
                        let mut got = Vec::new();
                        for i in 0..SHARDS {
                            let want = n as usize - got.len();
                            shards[(home + i) % SHARDS].take(want, &mut got);
                        }
                        if got.len() < n as usize {
                            prop_assert!(model_available.len() < n as usize);
                            for card in &got {
                                shards[shard_of(*card, SHARDS)].give_back(&[*card]);
                            }
                        } else {
                            for card in &got {
                                prop_assert!(model_available.remove(card), "{card:?} not available");
                            }
                            reservations.insert(order, got);
                        }
                    }
                    Op::Release(pick) | Op::Sell(pick) if !reservations.is_empty() => {
                        let key = *reservations.keys().nth(pick as usize % reservations.len()).unwrap();
                        let cards = reservations.remove(&key).unwrap();
                        if matches!(op, Op::Release(_)) {
                            for card in &cards {
                                shards[shard_of(*card, SHARDS)].give_back(&[*card]);
                                model_available.insert(*card);
                            }
                        } else {
                            for card in cards {
                                prop_assert!(sold.insert(card));
                            }
                        }
                    }
                    Op::Release(_) | Op::Sell(_) => {}
                }
                let available: usize = shards.iter().map(Shard::available_count).sum();
                let reserved: usize = reservations.values().map(Vec::len).sum();
                prop_assert_eq!(available, model_available.len());
                prop_assert_eq!(available + reserved + sold.len(), (next_id - 1) as usize);
            }
        });
    }
}
