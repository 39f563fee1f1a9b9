//! Operators' edits as `ShopState` sees them: key deletion (only available keys, never sold
//! again, stock conserved), listing edits (hidden products and purchase limits refuse
//! orders, a new price prices the next order), coupons (exact discount, never past the
//! limit, expiry, other products), and the shop identity. A refused event leaves no trace.
//! An order's record shares its event's creation when the token is already a digest, and
//! keeps only the digest of a token an older version wrote in the clear.

use engine::coupon::{Coupon, CouponUse, Discount};
use engine::listing::{IdentityChange, ProductChange};
use engine::state::ShopState;
use engine::{CardId, Currency, Event, NewOrder, OrderId, PlacedOrder, Product, Sku};

mod common;

use common::{created, folded, new_order as order, sku, stocked, PRICE_CENTS};

fn shop(keys: u64) -> ShopState {
    folded(&stocked(keys))
}

fn with_coupon(order: NewOrder, code: &str, discount_cents: u64) -> Event {
    Event::OrderPlaced(Box::new(PlacedOrder {
        order: order.into(),
        coupon: Some(CouponUse {
            code: code.into(),
            discount_cents,
        }),
        lookup_password_hash: None,
    }))
}

fn deleted(cards: &[u64]) -> Event {
    Event::CardsDeleted {
        sku: sku(),
        cards: cards.iter().copied().map(CardId).collect(),
        at_ms: 5,
    }
}

/// Applies an event that must be refused, and checks that it left the state as it was.
fn refused(state: &mut ShopState, event: &Event) {
    let before = (state.product(&sku()).unwrap().stock, state.orders_count());
    assert!(state.apply(event).is_err(), "{event:?} was accepted");
    let after = (state.product(&sku()).unwrap().stock, state.orders_count());
    assert_eq!(before, after, "a refused event left a trace");
    assert!(state.check().is_empty(), "{:?}", state.check());
}

#[test]
fn deleted_keys_leave_the_stock_and_are_never_sold() {
    let mut state = shop(5);
    state.apply(&created(order(1, &[1], PRICE_CENTS))).unwrap();
    // Reserved (key 1) and unknown keys are refused, as is a deletion listing a key twice.
    refused(&mut state, &deleted(&[1]));
    refused(&mut state, &deleted(&[2, 2]));
    refused(&mut state, &deleted(&[99]));
    state.apply(&deleted(&[2, 3])).unwrap();
    let product = state.product(&sku()).unwrap();
    assert_eq!(
        (
            product.stock.imported,
            product.stock.available,
            product.stock.reserved,
            product.deleted
        ),
        (3, 2, 1, 2)
    );
    assert!(product.stock.is_conserved());
    assert!(state.is_deleted(CardId(2)));
    assert_eq!(state.available_cards(&sku()), vec![CardId(4), CardId(5)]);
    // Never reserved again, never deleted twice, never imported again.
    refused(&mut state, &created(order(2, &[2], PRICE_CENTS)));
    refused(&mut state, &deleted(&[3]));
    assert!(state.product(&sku()).unwrap().has_key("KEY-2"));
    assert!(state.check().is_empty(), "{:?}", state.check());
}

#[test]
fn sold_keys_are_never_deleted() {
    let mut state = shop(2);
    state.apply(&created(order(1, &[1], PRICE_CENTS))).unwrap();
    let payment = engine::Payment {
        channel: "epay".into(),
        gateway_trade_no: "T1".into(),
        amount_cents: PRICE_CENTS,
    };
    let paid = Event::PaymentApplied {
        order_id: OrderId::parse("o1").unwrap(),
        payment,
        at_ms: 200,
        fulfilment: engine::Fulfilment::Delivered {
            newly_reserved: vec![],
        },
    };
    state.apply(&paid).unwrap();
    refused(&mut state, &deleted(&[1]));
    refused(&mut state, &deleted(&[1, 2]));
    assert_eq!(state.product(&sku()).unwrap().stock.sold, 1);
}

fn edit(changes: Vec<ProductChange>) -> Event {
    Event::ProductEdited {
        sku: sku(),
        changes,
        at_ms: 3,
    }
}

#[test]
fn listing_edits_price_the_next_order_and_gate_buyers() {
    let mut state = shop(6);
    state
        .apply(&edit(vec![
            ProductChange::PriceCents(800),
            ProductChange::QuantityMax(2),
            ProductChange::Name("Game, new edition".into()),
        ]))
        .unwrap();
    // The old price, and three keys over the limit of two, are refused.
    refused(&mut state, &created(order(1, &[1], PRICE_CENTS)));
    refused(&mut state, &created(order(1, &[1, 2, 3], 2_400)));
    state.apply(&created(order(1, &[1, 2], 1_600))).unwrap();
    state
        .apply(&edit(vec![ProductChange::Hidden(true)]))
        .unwrap();
    refused(&mut state, &created(order(2, &[3], 800)));
    state
        .apply(&edit(vec![ProductChange::Hidden(false)]))
        .unwrap();
    state.apply(&created(order(2, &[3], 800))).unwrap();
    // The first order keeps its amount; out-of-bounds edits change nothing.
    assert_eq!(state.order_at(0).unwrap().created.amount_cents, 1_600);
    refused(&mut state, &edit(vec![ProductChange::PriceCents(0)]));
    refused(&mut state, &edit(vec![]));
    assert_eq!(
        state.product(&sku()).unwrap().product.name,
        "Game, new edition"
    );
}

fn coupon(uses_max: u32, discount: Discount, only: Option<Sku>) -> Event {
    Event::CouponCreated(Coupon {
        code: "SPRING".into(),
        discount,
        sku: only,
        uses_max,
        expires_at_ms: 500,
        created_at_ms: 10,
    })
}

#[test]
fn a_coupon_is_never_used_past_its_limit_and_gives_exactly_its_discount() {
    let mut state = shop(6);
    state
        .apply(&coupon(
            2,
            Discount::Percent {
                basis_points: 2_500,
            },
            None,
        ))
        .unwrap();
    refused(
        &mut state,
        &coupon(2, Discount::Fixed { amount_cents: 1 }, None),
    );
    // A discount it does not give, and an amount that does not match, are refused.
    refused(&mut state, &with_coupon(order(1, &[1], 700), "SPRING", 300));
    refused(&mut state, &with_coupon(order(1, &[1], 800), "SPRING", 250));
    state
        .apply(&with_coupon(order(1, &[1], 750), "SPRING", 250))
        .unwrap();
    state
        .apply(&with_coupon(order(2, &[2, 3], 1_500), "SPRING", 500))
        .unwrap();
    // The third use is one too many, however it is priced.
    refused(&mut state, &with_coupon(order(3, &[4], 750), "SPRING", 250));
    refused(&mut state, &with_coupon(order(3, &[4], 1_000), "NOSUCH", 0));
    assert_eq!(state.coupon("SPRING").unwrap().used, 2);
    assert!(state.check().is_empty(), "{:?}", state.check());
}

#[test]
fn a_coupon_keeps_to_its_product_its_expiry_and_its_withdrawal() {
    let mut state = shop(6);
    let other = Sku::parse("other").unwrap();
    // A coupon for a product that does not exist is refused.
    assert!(state
        .apply(&coupon(
            5,
            Discount::Fixed { amount_cents: 100 },
            Some(other.clone())
        ))
        .is_err());
    let product = Product {
        sku: other.clone(),
        name: "Other".into(),
        price_cents: 10,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    state.apply(&Event::ProductCreated(product)).unwrap();
    state
        .apply(&coupon(
            5,
            Discount::Fixed { amount_cents: 100 },
            Some(other),
        ))
        .unwrap();
    refused(&mut state, &with_coupon(order(1, &[1], 900), "SPRING", 100));
    let mut late = order(1, &[1], 900);
    late.created_at_ms = 500;
    refused(&mut state, &with_coupon(late, "SPRING", 100));
    let withdraw = Event::CouponDisabled {
        code: "SPRING".into(),
        at_ms: 20,
    };
    state.apply(&withdraw).unwrap();
    assert!(state.apply(&withdraw).is_err());
}

#[test]
fn the_identity_changes_field_by_field() {
    let mut state = shop(0);
    let set = |changes| Event::ShopIdentitySet { changes, at_ms: 1 };
    state
        .apply(&set(vec![
            IdentityChange::Name("Moon Keys".into()),
            IdentityChange::UtcOffsetMinutes(480),
        ]))
        .unwrap();
    state
        .apply(&set(vec![IdentityChange::Announcement("Sale!".into())]))
        .unwrap();
    let identity = state.identity();
    assert_eq!(
        (
            identity.name.as_str(),
            identity.announcement.as_str(),
            identity.utc_offset_minutes
        ),
        ("Moon Keys", "Sale!", 480)
    );
    assert!(state
        .apply(&set(vec![
            IdentityChange::Name("A".into()),
            IdentityChange::Name("B".into())
        ]))
        .is_err());
    assert!(state
        .apply(&set(vec![IdentityChange::UtcOffsetMinutes(2_000)]))
        .is_err());
    assert_eq!(state.identity().name, "Moon Keys");
}

#[test]
fn a_record_shares_its_event_and_keeps_only_a_token_digest() {
    use engine::ids::token_digest;
    use std::sync::Arc;
    let mut state = shop(2);
    let mut digested = order(1, &[1], PRICE_CENTS);
    digested.token = token_digest("t1");
    let digested = Arc::new(digested);
    state.apply(&Event::OrderCreated(digested.clone())).unwrap();
    let record = state.order(&digested.order_id).unwrap();
    assert!(
        Arc::ptr_eq(&record.created, &digested),
        "the record copied an order it could share"
    );
    // An older version's event holds the token in the clear: the record keeps its digest.
    let clear = order(2, &[2], PRICE_CENTS);
    state.apply(&created(clear.clone())).unwrap();
    let record = state.order(&clear.order_id).unwrap();
    assert_eq!(record.created.token, token_digest("t"));
    assert_eq!(
        NewOrder {
            token: clear.token.clone(),
            ..NewOrder::clone(&record.created)
        },
        clear
    );
    assert!(state.check().is_empty(), "{:?}", state.check());
}
