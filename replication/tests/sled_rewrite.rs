//! sled rewritten whole from a snapshot (a restored data dir, a lost sled, a follower that
//! installs a snapshot) holds every row the log implies: listings, coupons, orders' terms
//! and the shop's identity included, so `panshi audit` finds it clean.

use engine::coupon::{Coupon, CouponUse, Discount};
use engine::listing::{IdentityChange, ProductChange};
use engine::{CardId, Currency, Event, NewOrder, OrderId, PlacedOrder, Product, Sku};
use replication::Node;

fn sku() -> Sku {
    Sku::parse("game").unwrap()
}

fn events() -> Vec<Event> {
    let order = NewOrder {
        order_id: OrderId::parse("o1").unwrap(),
        token: "t".into(),
        trace_id: "x".into(),
        sku: sku(),
        quantity: 1,
        amount_cents: 900,
        currency: Currency::parse("CNY").unwrap(),
        contact: "c@example.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: "https://pay.example/".into(),
        payment_ref: String::new(),
        created_at_ms: 10,
        expires_at_ms: 1_000,
        cards: vec![CardId(1)],
        idempotency: None,
    };
    vec![
        Event::ProductCreated(Product {
            sku: sku(),
            name: "Game".into(),
            price_cents: 1_000,
            currency: Currency::parse("CNY").unwrap(),
            created_at_ms: 1,
        }),
        Event::ProductEdited {
            sku: sku(),
            changes: vec![ProductChange::Description("A game key".into())],
            at_ms: 2,
        },
        Event::CardsImported {
            sku: sku(),
            first_card_id: CardId(1),
            keys: vec!["K1".into(), "K2".into()],
        },
        Event::CouponCreated(Coupon {
            code: "ONCE".into(),
            discount: Discount::Fixed { amount_cents: 100 },
            sku: None,
            uses_max: 1,
            expires_at_ms: 5_000,
            created_at_ms: 3,
        }),
        Event::OrderPlaced(Box::new(PlacedOrder {
            order,
            coupon: Some(CouponUse {
                code: "ONCE".into(),
                discount_cents: 100,
            }),
            lookup_password_hash: None,
        })),
        Event::ShopIdentitySet {
            changes: vec![IdentityChange::Name("Rock shop".into())],
            at_ms: 4,
        },
    ]
}

#[test]
fn sled_rewritten_from_a_snapshot_holds_listings_coupons_terms_and_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    for event in &events() {
        node.store().commit(event).unwrap().wait_blocking().unwrap();
    }
    runtime.block_on(node.snapshot_now()).unwrap();
    node.shutdown();
    let before = storage::audit::audit(dir.path()).unwrap();
    assert!(before.violations.is_empty(), "{:?}", before.violations);

    // sled gone (a restore writes none): the next start rewrites it from the snapshot.
    std::fs::remove_dir_all(storage::store::sled_dir(dir.path())).unwrap();
    let node = Node::start_single(dir.path()).unwrap();
    node.shutdown();
    let after = storage::audit::audit(dir.path()).unwrap();
    assert!(after.violations.is_empty(), "{:?}", after.violations);
}
