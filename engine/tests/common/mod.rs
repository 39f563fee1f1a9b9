//! What the engine's tests build shops from: one product with keys, orders of its keys.
#![allow(dead_code)] // each test file uses its own share

use std::sync::Arc;

use engine::state::ShopState;
use engine::{CardId, Currency, Event, NewOrder, OrderId, Product, Sku};

pub const PRICE_CENTS: u64 = 1_000;

pub fn sku() -> Sku {
    Sku::parse("game-1").unwrap()
}

/// The product at `PRICE_CENTS`, and `keys` keys `KEY-0`, `KEY-1`, ... imported as cards 1,
/// 2, ...
pub fn stocked(keys: u64) -> Vec<Event> {
    let product = Product {
        sku: sku(),
        name: "Game".into(),
        price_cents: PRICE_CENTS,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    let keys = (0..keys).map(|i| format!("KEY-{i}")).collect();
    vec![
        Event::ProductCreated(product),
        Event::CardsImported {
            sku: sku(),
            first_card_id: CardId(1),
            keys,
        },
    ]
}

/// The state `events` fold into (each must apply).
pub fn folded(events: &[Event]) -> ShopState {
    let mut state = ShopState::default();
    for event in events {
        state.apply(event).unwrap();
    }
    state
}

/// Order `o{n}` of `cards`, made at 100 ms and due at 1,000 ms.
pub fn new_order(n: u64, cards: &[u64], amount_cents: u64) -> NewOrder {
    NewOrder {
        order_id: OrderId::parse(&format!("o{n}")).unwrap(),
        token: "t".into(),
        trace_id: "x".into(),
        sku: sku(),
        quantity: cards.len() as u32,
        amount_cents,
        currency: Currency::parse("CNY").unwrap(),
        contact: "buyer@example.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: "https://pay.example/".into(),
        payment_ref: String::new(),
        created_at_ms: 100,
        expires_at_ms: 1_000,
        cards: cards.iter().copied().map(CardId).collect(),
        idempotency: None,
    }
}

pub fn created(order: NewOrder) -> Event {
    Event::OrderCreated(Arc::new(order))
}
