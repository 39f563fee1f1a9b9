//! All-or-nothing bulk purchases against a simple model: `ShopState` fed random top-ups,
//! corrections and reseller orders (some asking for sold keys, some charging wrongly, some
//! overdrawing) must accept exactly what the model accepts, leave a refused event without
//! any trace, and keep every invariant `check` knows.

use std::collections::BTreeSet;

use engine::ledger::wholesale_charge_cents;
use engine::state::ShopState;
use engine::{
    BalanceChange, CardId, Currency, Event, NewReseller, OrderId, Product, ResellerChange,
    ResellerId, ResellerOrder, Sku,
};
use proptest::prelude::*;

const PRICE_CENTS: u64 = 250;
const KEYS_COUNT: u64 = 40;
const DISCOUNT_BP: u32 = 1_250;

fn sku() -> Sku {
    Sku::parse("bulk").unwrap()
}

fn shop() -> ShopState {
    let mut state = ShopState::default();
    let product = Product {
        sku: sku(),
        name: "Bulk".into(),
        price_cents: PRICE_CENTS,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    state.apply(&Event::ProductCreated(product)).unwrap();
    let keys = (0..KEYS_COUNT).map(|i| format!("key-{i}")).collect();
    let import = Event::CardsImported {
        sku: sku(),
        first_card_id: CardId(1),
        keys,
    };
    state.apply(&import).unwrap();
    let reseller = NewReseller {
        reseller_id: ResellerId(1),
        name: "R".into(),
        api_key_sha256: [7; 32],
        webhook_secret: "s".into(),
        webhook_url: None,
        discount_bp: DISCOUNT_BP,
        created_at_ms: 1,
    };
    state
        .apply(&Event::ResellerCreated(Box::new(reseller)))
        .unwrap();
    state
}

#[derive(Debug, Clone)]
enum Op {
    TopUp(u64),
    Correct(u64),
    /// Buy these card ids; `overcharge` adds to the correct price (must be refused).
    Buy {
        cards: Vec<u64>,
        overcharge: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..3_000).prop_map(Op::TopUp),
        (1u64..1_000).prop_map(Op::Correct),
        (
            proptest::collection::vec(1..=KEYS_COUNT, 1..6),
            prop_oneof![Just(0u64), Just(0), Just(0), 1u64..5]
        )
            .prop_map(|(cards, overcharge)| Op::Buy { cards, overcharge }),
    ]
}

struct Model {
    balance_cents: u64,
    sold: BTreeSet<u64>,
    seq: u64,
}

fn balance_event(amount: u64, top_up: bool) -> Event {
    let change = if top_up {
        BalanceChange::TopUp {
            amount_cents: amount,
        }
    } else {
        BalanceChange::Correction {
            amount_cents: amount,
        }
    };
    Event::BalanceChanged {
        reseller_id: ResellerId(1),
        change,
        note: String::new(),
        at_ms: 2,
    }
}

fn buy_event(n: usize, cards: &[u64], amount_cents: u64, seq: u64) -> Event {
    Event::ResellerOrderPlaced(Box::new(ResellerOrder {
        order_id: OrderId::generate(n as u64, n as u64),
        reseller_id: ResellerId(1),
        token: format!("{n:032x}"),
        trace_id: format!("{n:032x}"),
        sku: sku(),
        cards: cards.iter().copied().map(CardId).collect(),
        amount_cents,
        idempotency: None,
        stream_seq: seq,
        created_at_ms: 3,
    }))
}

/// The model's verdict on an op, and the event to apply.
fn step(model: &mut Model, n: usize, op: &Op) -> (bool, Event) {
    match op {
        Op::TopUp(a) => {
            model.balance_cents += a;
            (true, balance_event(*a, true))
        }
        Op::Correct(a) => {
            let ok = *a <= model.balance_cents;
            if ok {
                model.balance_cents -= a;
            }
            (ok, balance_event(*a, false))
        }
        Op::Buy { cards, overcharge } => {
            let price = wholesale_charge_cents(PRICE_CENTS, cards.len() as u32, DISCOUNT_BP);
            let amount = price.unwrap() + overcharge;
            let distinct = cards.iter().collect::<BTreeSet<_>>().len() == cards.len();
            let available = cards.iter().all(|c| !model.sold.contains(c));
            let ok = distinct && available && *overcharge == 0 && amount <= model.balance_cents;
            let event = buy_event(n, cards, amount, model.seq + 1);
            if ok {
                model.balance_cents -= amount;
                model.sold.extend(cards.iter().copied());
                model.seq += 1;
            }
            (ok, event)
        }
    }
}

proptest! {
    #[test]
    fn bulk_purchases_are_all_or_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let mut state = shop();
        let mut model = Model { balance_cents: 0, sold: BTreeSet::new(), seq: 0 };
        for (n, op) in ops.iter().enumerate() {
            let (want, event) = step(&mut model, n, op);
            let got = state.apply(&event);
            prop_assert_eq!(got.is_ok(), want, "{:?}: {:?}", op, got.err());
            let stock = state.product(&sku()).unwrap().stock;
            prop_assert_eq!(stock.sold, model.sold.len() as u64);
            prop_assert_eq!(stock.available, KEYS_COUNT - model.sold.len() as u64);
            prop_assert_eq!(state.ledger().balance_cents(ResellerId(1)), Some(model.balance_cents));
            prop_assert_eq!(state.stream_seq(ResellerId(1)), model.seq);
            let violations = state.check();
            prop_assert!(violations.is_empty(), "{:?}", violations);
        }
    }
}

#[test]
fn a_revoked_reseller_cannot_buy_and_a_replay_is_refused() {
    let mut state = shop();
    state.apply(&balance_event(10_000, true)).unwrap();
    let amount = wholesale_charge_cents(PRICE_CENTS, 2, DISCOUNT_BP).unwrap();
    let event = buy_event(1, &[1, 2], amount, 1);
    state.apply(&event).unwrap();
    assert!(state.apply(&event).is_err(), "the same order twice");
    let gap = buy_event(
        2,
        &[3],
        wholesale_charge_cents(PRICE_CENTS, 1, DISCOUNT_BP).unwrap(),
        3,
    );
    assert!(state.apply(&gap).is_err(), "a stream gap");
    let revoke = Event::ResellerRevoked {
        reseller_id: ResellerId(1),
        at_ms: 5,
    };
    state.apply(&revoke).unwrap();
    let after = buy_event(
        3,
        &[3],
        wholesale_charge_cents(PRICE_CENTS, 1, DISCOUNT_BP).unwrap(),
        2,
    );
    assert!(state.apply(&after).is_err(), "revoked");
    let record = state.order(&OrderId::generate(1, 1)).unwrap();
    assert_eq!(record.status, engine::OrderStatus::Delivered);
    assert_eq!(
        state.reseller_of_order(&record.created.order_id),
        Some(ResellerId(1))
    );
    assert!(state.check().is_empty());
}

fn update(change: ResellerChange) -> Event {
    Event::ResellerUpdated {
        reseller_id: ResellerId(1),
        change,
        at_ms: 7,
    }
}

#[test]
fn a_rotated_key_replaces_the_old_one_and_a_new_discount_prices_what_follows() {
    let mut state = shop();
    state.apply(&balance_event(10_000, true)).unwrap();
    state
        .apply(&update(ResellerChange::ApiKeyRotated {
            api_key_sha256: [8; 32],
        }))
        .unwrap();
    assert!(
        state.reseller_by_key_hash(&[7; 32]).is_none(),
        "the old key"
    );
    let account = state.reseller_by_key_hash(&[8; 32]).expect("the new key");
    assert_eq!(account.reseller.reseller_id, ResellerId(1));
    assert!(
        state
            .apply(&update(ResellerChange::ApiKeyRotated {
                api_key_sha256: [8; 32]
            }))
            .is_err(),
        "a key in use"
    );
    assert!(state
        .apply(&update(ResellerChange::DiscountSet {
            discount_bp: 10_001
        }))
        .is_err());
    state
        .apply(&update(ResellerChange::DiscountSet { discount_bp: 5_000 }))
        .unwrap();
    let old_price = wholesale_charge_cents(PRICE_CENTS, 1, DISCOUNT_BP).unwrap();
    assert!(
        state.apply(&buy_event(1, &[1], old_price, 1)).is_err(),
        "charged the old discount"
    );
    let new_price = wholesale_charge_cents(PRICE_CENTS, 1, 5_000).unwrap();
    state.apply(&buy_event(1, &[1], new_price, 1)).unwrap();
    state
        .apply(&update(ResellerChange::WebhookSecretRotated {
            webhook_secret: "sealed".into(),
        }))
        .unwrap();
    assert_eq!(
        state
            .reseller(ResellerId(1))
            .unwrap()
            .reseller
            .webhook_secret,
        "sealed"
    );
    assert!(state.check().is_empty(), "{:?}", state.check());
    state
        .apply(&Event::ResellerRevoked {
            reseller_id: ResellerId(1),
            at_ms: 8,
        })
        .unwrap();
    let rotate = update(ResellerChange::ApiKeyRotated {
        api_key_sha256: [9; 32],
    });
    assert!(state.apply(&rotate).is_err(), "revoked for good");
    assert!(state.reseller_by_key_hash(&[9; 32]).is_none());
    let discount = update(ResellerChange::DiscountSet { discount_bp: 1 });
    assert!(state.apply(&discount).is_err(), "revoked for good");
    // Sealing a secret an older version stored in the clear is allowed.
    let reseal = update(ResellerChange::WebhookSecretRotated {
        webhook_secret: "sealed again".into(),
    });
    state.apply(&reseal).unwrap();
    assert!(state.check().is_empty());
}

fn webhook(seq: u64, outcome: &str) -> Event {
    let reseller_id = ResellerId(1);
    match outcome {
        "delivered" => Event::WebhookDelivered {
            reseller_id,
            seq,
            at_ms: 9,
        },
        "parked" => Event::WebhookParked {
            reseller_id,
            seq,
            attempts: 10,
            at_ms: 9,
        },
        _ => Event::WebhookReplayed {
            reseller_id,
            seq,
            at_ms: 9,
        },
    }
}

/// Each event has its own retry schedule: a later event may settle before an earlier one
/// (the cursor then jumps the closed gap); nothing settles twice or past the stream.
#[test]
fn webhook_deliveries_settle_in_any_order_once_and_replays_need_a_parked_event() {
    let mut state = shop();
    state.apply(&balance_event(10_000, true)).unwrap();
    assert!(
        state.apply(&webhook(1, "delivered")).is_err(),
        "past the stream"
    );
    let price = wholesale_charge_cents(PRICE_CENTS, 1, DISCOUNT_BP).unwrap();
    for seq in 1..=3u64 {
        state
            .apply(&buy_event(seq as usize, &[seq], price, seq))
            .unwrap();
    }
    state.apply(&webhook(2, "parked")).unwrap();
    let account = state.reseller(ResellerId(1)).unwrap();
    assert_eq!(account.webhook_cursor, 0, "seq 1 still waits for its retry");
    assert!(
        state.apply(&webhook(2, "delivered")).is_err(),
        "settled twice, ahead of the cursor"
    );
    state.apply(&webhook(1, "delivered")).unwrap();
    assert_eq!(state.reseller(ResellerId(1)).unwrap().webhook_cursor, 2);
    assert!(
        state.apply(&webhook(1, "delivered")).is_err(),
        "settled twice"
    );
    assert!(
        state.apply(&webhook(1, "replayed")).is_err(),
        "1 was never parked"
    );
    state.apply(&webhook(3, "delivered")).unwrap();
    let account = state.reseller(ResellerId(1)).unwrap();
    assert_eq!(account.webhook_cursor, 3);
    assert!(account.webhook_settled_ahead.is_empty());
    assert_eq!(
        account.webhook_parked.iter().copied().collect::<Vec<_>>(),
        vec![2]
    );
    state.apply(&webhook(2, "replayed")).unwrap();
    assert!(
        state.apply(&webhook(2, "replayed")).is_err(),
        "replayed twice"
    );
    assert!(state
        .reseller(ResellerId(1))
        .unwrap()
        .webhook_parked
        .is_empty());
    assert!(state.check().is_empty());
}
