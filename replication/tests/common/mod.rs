//! Fixtures shared by the replication tests: one product, its orders, a one-use coupon,
//! a runtime to wait on. Each test binary uses part of them.
#![allow(dead_code)]

use engine::coupon::{Coupon, CouponUse, Discount};
use engine::{CardId, Currency, Event, NewOrder, OrderId, PlacedOrder, Product, Sku};

pub fn product() -> Event {
    Event::ProductCreated(Product {
        sku: sku(),
        name: "Game".into(),
        price_cents: 1_000,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    })
}

/// A coupon `ONCE`: 100 off, one use.
pub fn once_coupon() -> Event {
    Event::CouponCreated(Coupon {
        code: "ONCE".into(),
        discount: Discount::Fixed { amount_cents: 100 },
        sku: None,
        uses_max: 1,
        expires_at_ms: 5_000,
        created_at_ms: 1,
    })
}

pub fn sku() -> Sku {
    Sku::parse("game").unwrap()
}

pub fn order(n: u64, card: u64, amount_cents: u64) -> NewOrder {
    NewOrder {
        order_id: OrderId::parse(&format!("o{n}")).unwrap(),
        token: "t".into(),
        trace_id: "x".into(),
        sku: sku(),
        quantity: 1,
        amount_cents,
        currency: Currency::parse("CNY").unwrap(),
        contact: "c@example.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: "https://pay.example/".into(),
        payment_ref: String::new(),
        created_at_ms: 10,
        expires_at_ms: 1_000,
        cards: vec![CardId(card)],
        idempotency: None,
    }
}

/// Order `o{n}` for key `card`, paying 900 with `ONCE`.
pub fn with_coupon(n: u64, card: u64) -> Event {
    Event::OrderPlaced(Box::new(PlacedOrder {
        order: order(n, card, 900).into(),
        coupon: Some(CouponUse {
            code: "ONCE".into(),
            discount_cents: 100,
        }),
        lookup_password_hash: None,
    }))
}

/// A runtime to wait on a node's async calls (`snapshot_now`) from a plain test thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
