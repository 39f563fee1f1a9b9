//! Orders inside `ShopState`: the hot ones in memory, settled ones that a snapshot archived
//! read back through `ColdOrders` (docs/ARCHITECTURE.md, engine/, "Orders").
//!
//! Invariants (re-derived by `check_orders`):
//! - every index below `made` is an order, hot or cold or both, and never changes;
//! - hot shadows cold: an event on an archived order first brings the archived copy back
//!   hot (as it was archived), then changes it; a later archive shadows the earlier copy;
//! - the id and idempotency indexes name hot orders only;
//! - an order is archived only when settled for good as far as memory is concerned:
//!   delivered, expired, cancelled or refunded, no mail waiting or given up, not a
//!   reseller's (streams, charges and mails read their orders hot).
//!
//! Archiving is deterministic: a snapshot's builder folds the same events as the live state,
//! archives what its own state calls archivable, and hands the live state the list with the
//! builder's event count; the live state drops each listed order it has not changed since
//! that count, so every node and every restart agrees on each order's content.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

use super::{CardKey, CardSlot, Holder, KeyId, OrderRecord, ShopState, Violation, Walk};
use crate::ids::{CardId, OrderId};
use crate::order::OrderStatus;

/// Settled orders that left memory, as archived by snapshots: engine/ defines it, storage/
/// implements it over cold tables. Reads are of immutable data: an archived copy never
/// changes, a newer archive of the same order shadows it.
pub trait ColdOrders: Send + Sync {
    /// The newest archived copy of the order at `index`.
    fn record(&self, index: u32) -> Option<OrderRecord>;
    /// The index of the archived order with this id.
    fn index_of(&self, id: &OrderId) -> Option<u32>;
    /// The newest archived order made with this `Idempotency-Key`.
    fn index_of_idempotency_key(&self, key: &str) -> Option<u32>;
    /// The archived orders (their newest copies) with indexes in `indexes`, index rising.
    fn for_each_in(&self, indexes: Range<u32>, visit: &mut dyn FnMut(u32, &OrderRecord));

    /// Every archived order (its newest copy), index rising.
    fn for_each(&self, visit: &mut dyn FnMut(u32, &OrderRecord)) {
        self.for_each_in(0..u32::MAX, visit);
    }

    /// The archived card `card`: sold, by an archived order (`cards.rs`).
    fn card(&self, card: CardId) -> Option<CardSlot>;
    /// The archived cards with ids in `cards`, id rising.
    fn for_each_card_in(&self, cards: Range<u64>, visit: &mut dyn FnMut(CardId, &CardSlot));
    /// Whether an archived card of the product at `sku_index` has a key with this digest.
    fn holds_digest(&self, sku_index: u32, digest: &[u8; 32]) -> bool;
}

/// Whether an order in `status` may be archived: settled. Orders in any other status are
/// always in memory (`ShopState::hot_orders` finds every one of them).
pub fn may_be_archived(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Delivered
            | OrderStatus::Expired
            | OrderStatus::Cancelled
            | OrderStatus::Refunded
    )
}

/// A card a snapshot archives (`ShopState::archivable_cards`).
pub struct ArchivableCard<'a> {
    pub card: CardId,
    pub sku_index: u32,
    /// Its key's digest (what deduplicates imports).
    pub digest: [u8; 32],
    pub slot: &'a CardSlot,
}

/// How the state was encoded: bincode's decode context for `ShopState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateEncoding {
    /// Before archiving (snapshot format 1): every order, in index order.
    AllOrders,
    /// The hot orders with their indexes; the rest is archived (snapshot format 2).
    HotOrders,
    /// As `HotOrders`, and the cards in memory with their indexes, each product's keys with
    /// their cards (snapshot format 3): archived orders' cards are archived with them.
    HotCards,
}

/// What an archive dropped from memory: freeing a large archive's records takes tens of
/// milliseconds, which its caller spends outside its lock.
#[derive(Default)]
pub struct Released {
    orders: Vec<HotOrder>,
    cards: Vec<CardSlot>,
}

impl Released {
    /// Orders dropped from memory.
    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    /// Cards dropped from memory.
    pub fn cards(&self) -> usize {
        self.cards.len()
    }
}

pub(super) struct HotOrder {
    pub(super) record: OrderRecord,
    /// The state's event count when an event last changed the order (0: not since it was
    /// archived or decoded from a state without archives).
    changed_at: u64,
}

#[derive(Default)]
pub(super) struct Orders {
    /// Orders ever made: the next order's index.
    made: u32,
    /// Events applied since the first (refused ones are not counted).
    events: u64,
    hot: BTreeMap<u32, HotOrder>,
    /// Orders by status (`OrderStatus::ALL`'s order), hot and archived.
    by_status: [u64; STATUSES],
    cold: Option<Arc<dyn ColdOrders>>,
}

const STATUSES: usize = OrderStatus::ALL.len();

fn status_slot(status: OrderStatus) -> usize {
    OrderStatus::ALL
        .iter()
        .position(|s| *s == status)
        .expect("every status is in ALL")
}

impl Orders {
    pub(super) fn made(&self) -> u32 {
        self.made
    }

    pub(super) fn hot(&self, index: u32) -> Option<&OrderRecord> {
        self.hot.get(&index).map(|order| &order.record)
    }

    /// Moves the hot order at `index` to `status` and returns it for the rest of the change:
    /// every event that changes an order moves its status, and counts as its change.
    pub(super) fn set_status(&mut self, index: u32, status: OrderStatus) -> &mut OrderRecord {
        let event = self.events + 1;
        let order = self.hot.get_mut(&index).expect("a changed order is hot");
        order.changed_at = event;
        let from = std::mem::replace(&mut order.record.status, status);
        self.by_status[status_slot(from)] -= 1;
        self.by_status[status_slot(status)] += 1;
        &mut order.record
    }

    pub(super) fn push(&mut self, record: OrderRecord) -> u32 {
        let index = self.made;
        self.made += 1;
        self.by_status[status_slot(record.status)] += 1;
        let changed_at = self.events + 1;
        self.hot.insert(index, HotOrder { record, changed_at });
        index
    }

    pub(super) fn applied(&mut self) {
        self.events += 1;
    }

    pub(super) fn cold(&self) -> Option<&dyn ColdOrders> {
        self.cold.as_deref()
    }
}

impl Encode for Orders {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.made.encode(encoder)?;
        self.events.encode(encoder)?;
        self.by_status.encode(encoder)?;
        (self.hot.len() as u64).encode(encoder)?;
        for (index, order) in &self.hot {
            index.encode(encoder)?;
            order.changed_at.encode(encoder)?;
            order.record.encode(encoder)?;
        }
        Ok(())
    }
}

impl Decode<StateEncoding> for Orders {
    fn decode<D: Decoder<Context = StateEncoding>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let mut orders = Orders::default();
        match *decoder.context() {
            StateEncoding::AllOrders => {
                let records: Vec<OrderRecord> = Decode::decode(decoder)?;
                for (index, record) in (0..).zip(records) {
                    orders.by_status[status_slot(record.status)] += 1;
                    orders.hot.insert(
                        index,
                        HotOrder {
                            record,
                            changed_at: 0,
                        },
                    );
                    orders.made = index + 1;
                }
            }
            StateEncoding::HotOrders | StateEncoding::HotCards => {
                orders.made = u32::decode(decoder)?;
                orders.events = u64::decode(decoder)?;
                orders.by_status = Decode::decode(decoder)?;
                let len = u64::decode(decoder)?;
                let mut last = None;
                for _ in 0..len {
                    let index = u32::decode(decoder)?;
                    if index >= orders.made || last.is_some_and(|last| index <= last) {
                        return Err(DecodeError::Other("hot order indexes out of order"));
                    }
                    last = Some(index);
                    let changed_at = u64::decode(decoder)?;
                    let record = OrderRecord::decode(decoder)?;
                    orders.hot.insert(index, HotOrder { record, changed_at });
                }
            }
        }
        Ok(orders)
    }
}

impl<'de> BorrowDecode<'de, StateEncoding> for Orders {
    fn borrow_decode<D: BorrowDecoder<'de, Context = StateEncoding>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

impl ShopState {
    /// The order with this id, hot or archived.
    pub fn order(&self, order_id: &OrderId) -> Option<Cow<'_, OrderRecord>> {
        match self.order_index.get(order_id) {
            Some(index) => self.orders.hot(*index).map(Cow::Borrowed),
            None => self.archived_order(order_id).map(Cow::Owned),
        }
    }

    /// Whether the order with this id is in memory: made or changed since the last
    /// snapshot that archived it, or never settled.
    pub fn holds_order(&self, order_id: &OrderId) -> bool {
        self.order_index.contains_key(order_id)
    }

    /// The archived copy of the order with this id, even when an event brought it back
    /// to memory since.
    pub fn archived_order(&self, order_id: &OrderId) -> Option<OrderRecord> {
        let cold = self.orders.cold()?;
        cold.record(cold.index_of(order_id)?)
    }

    /// The order at `index`, hot or archived.
    pub fn order_at(&self, index: u32) -> Option<Cow<'_, OrderRecord>> {
        match self.orders.hot(index) {
            Some(record) => Some(Cow::Borrowed(record)),
            None => self.orders.cold()?.record(index).map(Cow::Owned),
        }
    }

    /// The index of the order with this id, hot or archived.
    pub fn index_of(&self, order_id: &OrderId) -> Option<u32> {
        match self.order_index.get(order_id) {
            Some(index) => Some(*index),
            None => self.orders.cold()?.index_of(order_id),
        }
    }

    /// Orders ever made (hot and archived).
    pub fn orders_count(&self) -> u64 {
        u64::from(self.orders.made)
    }

    /// Orders in memory.
    pub fn hot_orders_count(&self) -> u64 {
        self.orders.hot.len() as u64
    }

    /// How many orders are in each status (hot and archived), in `OrderStatus::ALL`'s order.
    pub fn orders_by_status(&self) -> impl Iterator<Item = (OrderStatus, u64)> + '_ {
        OrderStatus::ALL
            .iter()
            .map(|status| (*status, self.orders.by_status[status_slot(*status)]))
    }

    /// Events applied (refused ones not counted): what `archive` compares against.
    pub fn events_applied(&self) -> u64 {
        self.orders.events
    }

    /// The orders in memory, index rising.
    pub fn hot_orders(&self) -> impl DoubleEndedIterator<Item = (u32, &OrderRecord)> {
        self.orders
            .hot
            .iter()
            .map(|(index, order)| (*index, &order.record))
    }

    /// The orders in memory with indexes below `before`, newest first.
    pub fn hot_orders_before(&self, before: u32) -> impl Iterator<Item = (u32, &OrderRecord)> {
        self.orders
            .hot
            .range(..before)
            .rev()
            .map(|(index, order)| (*index, &order.record))
    }

    /// Every order, hot or archived, index rising (a hot copy shadows an archived one).
    pub fn for_each_order(&self, mut visit: impl FnMut(u32, &OrderRecord)) {
        let mut hot = self.orders.hot.iter().peekable();
        if let Some(cold) = self.orders.cold() {
            cold.for_each(&mut |index, record| {
                while let Some((&hot_index, order)) = hot.next_if(|(i, _)| **i <= index) {
                    visit(hot_index, &order.record);
                }
                if self.orders.hot.contains_key(&index) {
                    return;
                }
                visit(index, record);
            });
        }
        for (index, order) in hot {
            visit(*index, &order.record);
        }
    }

    /// Up to `count` orders with indexes below `before`, newest first (archived ones read a
    /// table block at a time, not one by one).
    pub fn orders_before(&self, before: u32, count: usize) -> Vec<(u32, Cow<'_, OrderRecord>)> {
        let end = before.min(self.orders.made);
        let start = end.saturating_sub(u32::try_from(count).unwrap_or(u32::MAX));
        let mut page: Vec<(u32, Cow<'_, OrderRecord>)> = self
            .orders
            .hot
            .range(start..end)
            .map(|(index, order)| (*index, Cow::Borrowed(&order.record)))
            .collect();
        if let Some(cold) = self.orders.cold() {
            cold.for_each_in(start..end, &mut |index, record| {
                if !self.orders.hot.contains_key(&index) {
                    page.push((index, Cow::Owned(record.clone())));
                }
            });
        }
        page.sort_unstable_by_key(|(index, _)| std::cmp::Reverse(*index));
        page
    }

    /// The newest order made with this `Idempotency-Key`, hot or archived.
    pub fn order_by_idempotency_key(&self, key: &str) -> Option<Cow<'_, OrderRecord>> {
        let hot = self.idempotency.get(key).copied();
        let cold = self
            .orders
            .cold()
            .and_then(|cold| cold.index_of_idempotency_key(key));
        self.order_at(hot.max(cold)?)
    }

    /// Whether the order at `index` may leave memory: see the module's invariants.
    fn archivable(&self, index: u32, record: &OrderRecord) -> bool {
        may_be_archived(record.status) && !self.has_mail(index) && !self.is_reseller_order(index)
    }

    /// The hot orders that may leave memory, index rising: what a snapshot archives.
    pub fn archivable_orders(&self) -> impl Iterator<Item = (u32, &OrderRecord)> {
        self.hot_orders()
            .filter(|(index, record)| self.archivable(*index, record))
    }

    /// Reads archived orders from `cold` from now on (a state decoded from a snapshot that
    /// names its archives).
    pub fn set_cold(&mut self, cold: Arc<dyn ColdOrders>) {
        self.orders.cold = Some(cold);
    }

    /// The cards that leave memory with the orders at `archiving` (indexes rising): sold
    /// cards in memory whose order is archiving or archived already, card id rising, each
    /// with its product's index and its key's digest. A card whose key is in the clear, or
    /// whose digest an older snapshot did not record, stays.
    pub fn archivable_cards(&self, archiving: &[u32]) -> Vec<ArchivableCard<'_>> {
        let mut cards = Vec::new();
        for (sku_index, sku) in self.skus.iter().enumerate() {
            for (key, card) in &self.products[sku].keys {
                let KeyId::Digest(digest) = key else {
                    continue;
                };
                let Some(slot) = self.hot_card(*card) else {
                    continue;
                };
                let Holder::Sold(index) = slot.holder else {
                    continue;
                };
                let leaving = archiving.binary_search(&index).is_ok()
                    || !self.orders.hot.contains_key(&index);
                if leaving && matches!(slot.key, CardKey::Sealed(_)) {
                    cards.push(ArchivableCard {
                        card: *card,
                        sku_index: sku_index as u32,
                        digest: *digest,
                        slot,
                    });
                }
            }
        }
        cards.sort_unstable_by_key(|card| card.card);
        cards
    }

    /// A snapshot taken when this state's `events_applied` was `through_events` archived
    /// the orders at `archived` (indexes rising) and the cards `cards` (sold for good:
    /// nothing changes them since); `cold` reads them and every earlier archive. Drops each
    /// order that no event changed since, with its index entries, and each of the cards.
    ///
    /// Each order and card is decided on its own, so an archive may be applied in parts
    /// (the same `cold` each time, every part of `archived` before any of `cards`), with
    /// reads and events between them. What it drops is returned, to be freed outside the
    /// caller's lock.
    pub fn archive(
        &mut self,
        cold: Arc<dyn ColdOrders>,
        archived: &[u32],
        through_events: u64,
        cards: &[(CardId, [u8; 32])],
    ) -> Released {
        let mut released = Released::default();
        self.orders.cold = Some(cold);
        for index in archived {
            let Some(order) = self.orders.hot.get(index) else {
                continue;
            };
            if order.changed_at > through_events || !self.archivable(*index, &order.record) {
                continue;
            }
            let order = self.orders.hot.remove(index).expect("looked up");
            let created = &order.record.created;
            if self.order_index.get(&created.order_id) == Some(index) {
                self.order_index.remove(&created.order_id);
            }
            if let Some(idempotency) = &created.idempotency {
                if self.idempotency.get(&idempotency.key) == Some(index) {
                    self.idempotency.remove(&idempotency.key);
                }
            }
            released.orders.push(order);
        }
        for (card, digest) in cards {
            let index = (card.0 - 1) as usize;
            let Some(slot) = self.cards.get(index) else {
                continue;
            };
            let product = self
                .products
                .get_mut(&self.skus[slot.sku_index as usize])
                .expect("a card's product");
            let key = KeyId::Digest(*digest);
            if !matches!(slot.holder, Holder::Sold(_)) || product.keys.get(&key) != Some(card) {
                continue;
            }
            product.keys.remove(&key);
            product.archived_keys += 1;
            released.cards.extend(self.cards.remove(index));
        }
        released
    }

    /// The index of the order an event names, its archived copy brought back hot if it is
    /// not in memory (unchanged: only the event's own change counts). The idempotency index
    /// is left alone: the archive still names the order by its key.
    pub(super) fn hot_index(&mut self, order_id: &OrderId) -> Result<u32, Violation> {
        if let Some(index) = self.order_index.get(order_id) {
            return Ok(*index);
        }
        let unknown = || Violation(format!("event for unknown order {order_id}"));
        let cold = self.orders.cold.clone().ok_or_else(unknown)?;
        let index = cold.index_of(order_id).ok_or_else(unknown)?;
        let record = cold
            .record(index)
            .ok_or_else(|| Violation(format!("archived order {order_id} unreadable at {index}")))?;
        self.order_index.insert(order_id.clone(), index);
        self.orders.hot.insert(
            index,
            HotOrder {
                record,
                changed_at: 0,
            },
        );
        Ok(index)
    }

    /// Every index is an order, the indexes name hot orders of their ids; then each order's
    /// own invariants (`check_order`), and every held key's order lists it. `Walk::InMemory`
    /// checks the hot orders only (and the keys they hold). `Walk::Every` returns the
    /// archived cards it read, by product (`check_card_owners`).
    pub(super) fn check_orders(
        &self,
        walk: Walk,
        violations: &mut Vec<Violation>,
    ) -> Option<Vec<u64>> {
        let mut owner = std::collections::HashMap::new();
        if walk == Walk::InMemory {
            for (index, record) in self.hot_orders() {
                self.check_order(index, record, &mut owner, violations);
            }
            let hot = |index: u32| self.orders.hot.contains_key(&index);
            self.check_card_owners(&owner, hot, walk, violations);
            self.check_indexes(violations);
            return None;
        }
        let mut expected = 0u32;
        let mut by_status = [0u64; STATUSES];
        self.for_each_order(|index, record| {
            by_status[status_slot(record.status)] += 1;
            if index != expected {
                violations.push(Violation(format!(
                    "orders {expected}..{index} are neither in memory nor archived"
                )));
            }
            expected = index + 1;
            self.check_order(index, record, &mut owner, violations);
        });
        if by_status != self.orders.by_status {
            violations.push(Violation(format!(
                "orders by status {:?} but the orders say {by_status:?}",
                self.orders.by_status
            )));
        }
        let archived = self.check_card_owners(&owner, |_| true, walk, violations);
        if expected != self.orders.made {
            violations.push(Violation(format!(
                "{} orders made but {expected} found",
                self.orders.made
            )));
        }
        self.check_indexes(violations);
        archived
    }

    /// The id and idempotency indexes name hot orders that carry that id or key.
    fn check_indexes(&self, violations: &mut Vec<Violation>) {
        for (id, index) in self.order_index.iter() {
            if self.orders.hot(*index).map(|r| &r.created.order_id) != Some(id) {
                violations.push(Violation(format!(
                    "order {id} indexed at {index}, which is not it in memory"
                )));
            }
        }
        for (key, index) in self.idempotency.iter() {
            let named = self
                .orders
                .hot(*index)
                .and_then(|r| r.created.idempotency.as_ref());
            if named.map(|i| &i.key) != Some(key) {
                violations.push(Violation(format!(
                    "idempotency key {key:?} indexed at {index}, which is not its order"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NewOrder;
    use crate::{CardId, Currency, Sku};

    fn record(n: u32, status: OrderStatus) -> OrderRecord {
        let created = NewOrder {
            order_id: OrderId::parse(&format!("o{n}")).unwrap(),
            token: "t".into(),
            trace_id: "x".into(),
            sku: Sku::parse("game-1").unwrap(),
            quantity: 1,
            amount_cents: 100,
            currency: Currency::parse("CNY").unwrap(),
            contact: "buyer@example.com".into(),
            channel: "epay".into(),
            payment_channel: "epay".into(),
            payment_url: String::new(),
            payment_ref: String::new(),
            created_at_ms: 1,
            expires_at_ms: 2,
            cards: vec![CardId(u64::from(n) + 1)],
            idempotency: None,
        };
        OrderRecord {
            created: Arc::new(created),
            status,
            cards: Vec::new(),
            payment: None,
            paid_at_ms: None,
            settled_at_ms: None,
            review_reason: None,
        }
    }

    /// A snapshot from before archiving (format 1) holds every order as a `Vec`: each is
    /// read into memory at its index, counted by status, and unchanged since any archive
    /// (so the first snapshot after the upgrade archives the settled ones on every node
    /// alike). The current encoding reads back what it wrote.
    #[test]
    fn orders_of_both_encodings_read_back() {
        let config = bincode::config::standard();
        let statuses = [
            OrderStatus::Delivered,
            OrderStatus::AwaitingPayment,
            OrderStatus::Expired,
        ];
        let records: Vec<OrderRecord> = (0..3).map(|n| record(n, statuses[n as usize])).collect();
        let old = bincode::encode_to_vec(&records, config).unwrap();
        let (orders, _): (Orders, usize) =
            bincode::decode_from_slice_with_context(&old, config, StateEncoding::AllOrders)
                .unwrap();
        assert_eq!(orders.made, 3);
        assert_eq!(orders.events, 0);
        let read: Vec<(u32, OrderRecord, u64)> = orders
            .hot
            .iter()
            .map(|(index, order)| (*index, order.record.clone(), order.changed_at))
            .collect();
        let want: Vec<(u32, OrderRecord, u64)> = (0..)
            .zip(records)
            .map(|(index, record)| (index, record, 0))
            .collect();
        assert_eq!(read, want);
        for status in statuses {
            assert_eq!(orders.by_status[status_slot(status)], 1, "{status:?}");
        }

        let mut current = orders;
        current.events = 9;
        current.hot.remove(&0);
        let new = bincode::encode_to_vec(&current, config).unwrap();
        let (again, _): (Orders, usize) =
            bincode::decode_from_slice_with_context(&new, config, StateEncoding::HotOrders)
                .unwrap();
        assert_eq!(
            (again.made, again.events, again.by_status),
            (3, 9, current.by_status)
        );
        assert_eq!(again.hot.keys().collect::<Vec<_>>(), vec![&1, &2]);
    }
}
