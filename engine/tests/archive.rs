//! Settled orders leaving memory (`ShopState::archive`): a state that archives, and restarts
//! from its encoded hot part and its archive, answers every question exactly as a state
//! that never archived. An order changed after the snapshot that archived it stays in
//! memory: dropping it would bring back the archived copy (the canary below shows the
//! check that catches that).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use engine::events::{Fulfilment, Idempotency, Payment, SealedCard};
use engine::state::{CardSlot, ColdOrders, OrderRecord, ShopState, StateEncoding};
use engine::{CardId, Event, OrderId, OrderStatus};

mod common;

use common::{folded, new_order, sku, PRICE_CENTS};

const EXPIRES_AT_MS: u64 = 1_000;

/// Archived orders as a snapshot's tables hold them: each archive adds copies, a newer copy
/// shadows an older one.
#[derive(Clone, Default)]
struct MemCold {
    records: BTreeMap<u32, OrderRecord>,
    cards: BTreeMap<u64, CardSlot>,
    digests: BTreeSet<(u32, [u8; 32])>,
}

impl ColdOrders for MemCold {
    fn record(&self, index: u32) -> Option<OrderRecord> {
        self.records.get(&index).cloned()
    }

    fn index_of(&self, id: &OrderId) -> Option<u32> {
        let found = self.records.iter().find(|(_, r)| &r.created.order_id == id);
        found.map(|(index, _)| *index)
    }

    fn index_of_idempotency_key(&self, key: &str) -> Option<u32> {
        self.records
            .iter()
            .filter(|(_, r)| r.created.idempotency.as_ref().is_some_and(|i| i.key == key))
            .map(|(index, _)| *index)
            .max()
    }

    fn for_each_in(&self, indexes: std::ops::Range<u32>, visit: &mut dyn FnMut(u32, &OrderRecord)) {
        for (index, record) in self.records.range(indexes) {
            visit(*index, record);
        }
    }

    fn card(&self, card: CardId) -> Option<CardSlot> {
        self.cards.get(&card.0).cloned()
    }

    fn for_each_card_in(
        &self,
        cards: std::ops::Range<u64>,
        visit: &mut dyn FnMut(CardId, &CardSlot),
    ) {
        for (id, slot) in self.cards.range(cards) {
            visit(CardId(*id), slot);
        }
    }

    fn holds_digest(&self, sku_index: u32, digest: &[u8; 32]) -> bool {
        self.digests.contains(&(sku_index, *digest))
    }
}

/// The digest of sealed key `i` (what the actors compute with the shop's secret).
fn digest(i: u64) -> [u8; 32] {
    let mut digest = [0; 32];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    digest
}

/// The product, and `keys` sealed keys imported as cards 1, 2, ...
fn stocked(keys: u64) -> Vec<Event> {
    let mut events = common::stocked(0);
    events.push(import(1, 0..keys));
    events
}

/// Sealed keys `keys` imported from card `first`.
fn import(first: u64, keys: std::ops::Range<u64>) -> Event {
    Event::SealedCardsImported {
        sku: sku(),
        first_card_id: CardId(first),
        cards: keys
            .map(|i| SealedCard {
                digest: digest(i),
                sealed: format!("sealed-{i}").into_bytes(),
            })
            .collect(),
    }
}

/// What a snapshot does: archives what `builder` calls archivable into `cold`, and drops it
/// from `builder`. Returns what the live state is told.
fn snapshot(builder: &mut ShopState, cold: &mut MemCold) -> (Vec<u32>, u64) {
    let fresh: Vec<(u32, OrderRecord)> = builder
        .archivable_orders()
        .map(|(index, record)| (index, record.clone()))
        .collect();
    let indexes: Vec<u32> = fresh.iter().map(|(index, _)| *index).collect();
    let mut cards = Vec::new();
    for card in builder.archivable_cards(&indexes) {
        cold.cards.insert(card.card.0, card.slot.clone());
        cold.digests.insert((card.sku_index, card.digest));
        cards.push((card.card, card.digest));
    }
    cold.records.extend(fresh);
    let through = builder.events_applied();
    builder.archive(Arc::new(cold.clone()), &indexes, through, &cards);
    (indexes, through)
}

/// A start from a snapshot: the encoded state read back, reading `cold`.
fn restart(state: &ShopState, cold: &MemCold) -> ShopState {
    let config = bincode::config::standard();
    let bytes = bincode::encode_to_vec(state, config).unwrap();
    let (mut copy, _): (ShopState, usize) =
        bincode::decode_from_slice_with_context(&bytes, config, StateEncoding::HotCards).unwrap();
    copy.set_cold(Arc::new(cold.clone()));
    copy
}

fn id(n: u64) -> OrderId {
    OrderId::parse(&format!("o{n}")).unwrap()
}

fn created(n: u64, card: u64, key: Option<&str>, at_ms: u64) -> Event {
    let mut order = new_order(n, &[card], PRICE_CENTS);
    order.created_at_ms = at_ms;
    order.expires_at_ms = at_ms + EXPIRES_AT_MS;
    order.idempotency = key.map(|key| Idempotency {
        key: key.into(),
        fingerprint: 7,
    });
    common::created(order)
}

fn paid(n: u64, newly_reserved: &[u64]) -> Event {
    Event::PaymentApplied {
        order_id: id(n),
        payment: Payment {
            channel: "epay".into(),
            gateway_trade_no: format!("T{n}").into(),
            amount_cents: PRICE_CENTS,
        },
        at_ms: 500,
        fulfilment: Fulfilment::Delivered {
            newly_reserved: newly_reserved.iter().copied().map(CardId).collect(),
        },
    }
}

fn expired(n: u64) -> Event {
    Event::OrderExpired {
        order_id: id(n),
        at_ms: 10 * EXPIRES_AT_MS,
    }
}

/// Every order, as `for_each_order` walks them.
fn orders(state: &ShopState) -> Vec<(u32, OrderRecord)> {
    let mut all = Vec::new();
    state.for_each_order(|index, record| all.push((index, record.clone())));
    all
}

/// The state answers as `reference` does: every order by index, by id and by key, the
/// counts, and no broken invariant.
fn assert_same(state: &ShopState, reference: &ShopState) {
    assert_eq!(state.check(), Vec::new());
    let all = orders(reference);
    assert_eq!(orders(state), all);
    let newest_first: Vec<(u32, OrderRecord)> = state
        .orders_before(u32::MAX, all.len())
        .into_iter()
        .map(|(index, record)| (index, record.into_owned()))
        .collect();
    assert!(
        newest_first.iter().rev().eq(all.iter()),
        "a page holds every order"
    );
    for (index, record) in &all {
        let id = &record.created.order_id;
        assert_eq!(state.order(id).as_deref(), Some(record));
        assert_eq!(state.index_of(id), Some(*index));
        assert_eq!(state.order_at(*index).as_deref(), Some(record));
        if let Some(idempotency) = &record.created.idempotency {
            assert_eq!(
                state.order_by_idempotency_key(&idempotency.key),
                reference.order_by_idempotency_key(&idempotency.key)
            );
        }
    }
    assert_eq!(state.orders_count(), reference.orders_count());
    assert_eq!(
        state.orders_by_status().collect::<Vec<_>>(),
        reference.orders_by_status().collect::<Vec<_>>()
    );
    assert_eq!(
        state.product(&sku()).unwrap().stock,
        reference.product(&sku()).unwrap().stock
    );
}

/// A late payment lands on an expired order after the snapshot that archives it was
/// folded but before the live state hears of the archive: the live state keeps the paid
/// order. Told to drop it regardless (the canary), it would read the archived, expired
/// copy back, and the check finds the sold key that no order lists.
#[test]
fn an_order_changed_after_its_archive_stays_in_memory() {
    let mut events = stocked(3);
    events.push(created(1, 1, None, 100));
    events.push(expired(1));
    let mut live = folded(&events);
    let mut builder = folded(&events);
    let mut cold = MemCold::default();
    let late = paid(1, &[2]);
    live.apply(&late).unwrap();
    events.push(late);
    let (archived, through) = snapshot(&mut builder, &mut cold);
    assert_eq!(archived, vec![0]);
    assert_eq!(builder.hot_orders_count(), 0);

    let mut canary = folded(&events);
    canary.archive(Arc::new(cold.clone()), &archived, u64::MAX, &[]);
    assert_eq!(canary.order(&id(1)).unwrap().status, OrderStatus::Expired);
    assert!(
        canary
            .check()
            .iter()
            .any(|v| v.0.contains("does not list it")),
        "the check must catch an order dropped after it changed"
    );

    live.archive(Arc::new(cold.clone()), &archived, through, &[]);
    assert_eq!(live.hot_orders_count(), 1);
    assert_eq!(live.order(&id(1)).unwrap().status, OrderStatus::Delivered);
    assert_same(&live, &folded(&events));
}

/// Orders archived across several snapshots, restarts from each, an archived expired order
/// paid late (brought back, changed, archived again), an idempotency key reused after its
/// window: every answer equals the never-archived state's, and memory holds only what has
/// not settled.
#[test]
fn a_state_that_archives_and_restarts_answers_as_one_that_never_did() {
    let window = engine::order::IDEMPOTENCY_WINDOW_MS;
    let mut events = stocked(8);
    let mut state = folded(&events);
    let mut cold = MemCold::default();
    let apply = |state: &mut ShopState, events: &mut Vec<Event>, event: Event| {
        state.apply(&event).unwrap();
        events.push(event);
    };
    apply(&mut state, &mut events, created(1, 1, Some("k1"), 100));
    apply(&mut state, &mut events, created(2, 2, Some("k2"), 100));
    apply(&mut state, &mut events, created(3, 3, None, 100));
    apply(&mut state, &mut events, paid(1, &[]));
    apply(&mut state, &mut events, expired(2));
    snapshot(&mut state, &mut cold);
    assert_eq!(state.hot_orders_count(), 1, "o3 awaits payment");
    assert_same(&state, &folded(&events));

    // A start from the snapshot, then the late payment of the archived, expired o2.
    let mut state = restart(&state, &cold);
    apply(&mut state, &mut events, paid(2, &[4]));
    assert_eq!(state.hot_orders_count(), 2, "o2 is back in memory");
    assert_same(&state, &folded(&events));
    // The key of o1 again, once its window closed: a new order; the newest answers for it.
    apply(
        &mut state,
        &mut events,
        created(4, 5, Some("k1"), 100 + window),
    );
    apply(&mut state, &mut events, expired(3));
    snapshot(&mut state, &mut cold);
    assert_eq!(state.hot_orders_count(), 1, "o4 awaits payment");
    let state = restart(&state, &cold);
    assert_eq!(
        state
            .order_by_idempotency_key("k1")
            .unwrap()
            .created
            .order_id,
        id(4)
    );
    assert_same(&state, &folded(&events));
    // Creating an archived order again is refused, as for one in memory.
    let mut state = state;
    assert!(state.apply(&created(1, 6, None, 100)).is_err());
    assert!(state.apply(&paid(1, &[])).is_err(), "o1 was paid already");
    assert_same(&state, &folded(&events));
}

/// Sold keys leave memory with their orders: the card reads back from the archive, in
/// listings too, the stock still counts it, and the same key imported again is refused,
/// before and after a restart. The canaries: an archive that forgot the key's digest lets
/// the duplicate in, and one that forgot the card fails the full check.
#[test]
fn sold_keys_leave_memory_and_are_never_imported_again() {
    let mut events = stocked(4);
    events.push(created(1, 1, None, 100));
    events.push(paid(1, &[]));
    events.push(created(2, 2, None, 100));
    events.push(expired(2));
    let mut state = folded(&events);
    let mut cold = MemCold::default();
    snapshot(&mut state, &mut cold);
    assert_eq!(state.hot_orders_count(), 0);
    assert_eq!((state.hot_cards_count(), state.cards_count()), (3, 4));
    assert_eq!(cold.cards.keys().copied().collect::<Vec<_>>(), vec![1]);
    let reference = folded(&events);
    let duplicate = import(5, 0..1);
    let mut restarted = restart(&state, &cold);
    for state in [&mut state, &mut restarted] {
        assert_same(state, &reference);
        let card = state.card(CardId(1)).unwrap();
        assert_eq!(card.holder, engine::state::Holder::Sold(0));
        assert_eq!(
            state.card_key(CardId(1)).unwrap().into_owned(),
            engine::CardKey::Sealed(b"sealed-0".to_vec())
        );
        let mut listed = Vec::new();
        state.for_each_card(1..10, |card, slot| listed.push((card.0, slot.holder)));
        let reference_listed: Vec<_> = (1..=4)
            .map(|id| (id, reference.card(CardId(id)).unwrap().holder))
            .collect();
        assert_eq!(listed, reference_listed);
        let ids: Vec<u64> = state
            .product(&sku())
            .unwrap()
            .card_ids()
            .map(|c| c.0)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        assert!(state.has_digest(&sku(), &digest(0)));
        let refused = state.apply(&duplicate).unwrap_err();
        assert!(refused.0.contains("imported twice"), "{refused}");
        state.apply(&import(5, 7..8)).unwrap();
        assert_eq!(state.check(), Vec::new());
        assert_eq!(state.product(&sku()).unwrap().stock.imported, 5);
    }

    let mut forgot_digests = cold.clone();
    forgot_digests.digests.clear();
    let mut canary = restart(&folded(&events), &MemCold::default());
    snapshot(&mut canary, &mut MemCold::default());
    let mut canary = restart(&canary, &forgot_digests);
    assert!(
        canary.apply(&duplicate).is_ok(),
        "without the archived digest the duplicate gets in: the lookup is what refuses it"
    );
    let mut forgot_cards = cold.clone();
    forgot_cards.cards.clear();
    let canary = restart(&state_after_snapshot(&events), &forgot_cards);
    assert!(
        canary.check().iter().any(|v| v.0.contains("not a card")),
        "{:?}",
        canary.check()
    );
}

/// `events` folded, then snapshotted (into an archive that is dropped).
fn state_after_snapshot(events: &[Event]) -> ShopState {
    let mut state = folded(events);
    snapshot(&mut state, &mut MemCold::default());
    state
}

/// Walking cards by id crosses the stretches it reads from the archive at a time, in memory
/// and archived cards interleaved, and gives each card once, in order.
#[test]
fn cards_walk_in_id_order_across_archive_reads() {
    const KEYS: u64 = 9_000;
    let mut events = stocked(KEYS);
    // Every third key of the first 8,400 is sold; the others stay available.
    for n in (3..=8_400).step_by(3) {
        events.push(created(n, n, None, 100));
        events.push(paid(n, &[]));
    }
    let reference = folded(&events);
    let mut cold = MemCold::default();
    let mut state = folded(&events);
    snapshot(&mut state, &mut cold);
    assert_eq!(state.hot_cards_count(), KEYS - 2_800);
    let state = restart(&state, &cold);
    let mut walked = Vec::new();
    state.for_each_card(0..KEYS + 10, |card, slot| {
        walked.push((card.0, slot.holder))
    });
    let expected: Vec<_> = (1..=KEYS)
        .map(|id| (id, reference.card(CardId(id)).unwrap().holder))
        .collect();
    assert_eq!(walked, expected);
    let mut part = Vec::new();
    state.for_each_card(4_090..4_100, |card, _| part.push(card.0));
    assert_eq!(part, (4_090..4_100).collect::<Vec<_>>());
}
