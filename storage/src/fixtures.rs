//! What storage's tests build states from: one product with keys, orders of its keys.

use std::sync::Arc;

use engine::state::ShopState;
use engine::{CardId, Currency, Event, NewOrder, OrderId, Product, Sku};

pub(crate) fn sku() -> Sku {
    Sku::parse("game-1").unwrap()
}

/// A state with the product (at 1,000 cents) and `keys` keys imported as cards 1, 2, ...
pub(crate) fn stocked(keys: u64) -> ShopState {
    let mut state = ShopState::default();
    let product = Product {
        sku: sku(),
        name: "Game".into(),
        price_cents: 1_000,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    state.apply(&Event::ProductCreated(product)).unwrap();
    let keys = (0..keys).map(|i| format!("KEY-{i}")).collect();
    let import = Event::CardsImported {
        sku: sku(),
        first_card_id: CardId(1),
        keys,
    };
    state.apply(&import).unwrap();
    state
}

/// The digest of sealed key `i` of `stocked_sealed` (what the actors compute with the shop's
/// secret).
pub(crate) fn digest(i: u64) -> [u8; 32] {
    let mut digest = [0; 32];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    digest
}

/// As `stocked`, with sealed keys (`sealed-{i}`, digest `digest(i)`): what archives with
/// its orders.
pub(crate) fn stocked_sealed(keys: u64) -> ShopState {
    let mut state = stocked(0);
    let cards = (0..keys)
        .map(|i| engine::events::SealedCard {
            digest: digest(i),
            sealed: format!("sealed-{i}").into_bytes(),
        })
        .collect();
    let import = Event::SealedCardsImported {
        sku: sku(),
        first_card_id: CardId(1),
        cards,
    };
    state.apply(&import).unwrap();
    state
}

/// Order `id` of `card` at 1,000 cents, made at `created_at_ms`, due a second later.
pub(crate) fn new_order(id: &str, card: CardId, created_at_ms: u64) -> NewOrder {
    NewOrder {
        order_id: OrderId::parse(id).unwrap(),
        token: "t".into(),
        trace_id: "x".into(),
        sku: sku(),
        quantity: 1,
        amount_cents: 1_000,
        currency: Currency::parse("CNY").unwrap(),
        contact: "buyer@example.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: "https://pay.example/".into(),
        payment_ref: String::new(),
        created_at_ms,
        expires_at_ms: created_at_ms + 1_000,
        cards: vec![card],
        idempotency: None,
    }
}

pub(crate) fn created(order: NewOrder) -> Event {
    Event::OrderCreated(Arc::new(order))
}
