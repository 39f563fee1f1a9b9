//! A node's storage against a plain model: random sequences of commits with restarts and
//! snapshots in them; after every step the store (its state, its sled rows, and after a
//! restart the snapshot plus the replayed log) agrees with a `BTreeMap` model.

use std::collections::BTreeMap;

use engine::{
    CardId, Currency, Event, Fulfilment, NewOrder, OrderId, OrderStatus, Payment, Product, Sku,
};
use proptest::prelude::*;
use replication::Node;
use storage::Store;

#[derive(Debug, Clone)]
enum Op {
    Import(u8),
    Order(u8),
    Pay(u8),
    Expire(u8),
    Restart,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..8).prop_map(Op::Import),
        4 => (1u8..4).prop_map(Op::Order),
        3 => any::<u8>().prop_map(Op::Pay),
        2 => any::<u8>().prop_map(Op::Expire),
        1 => Just(Op::Restart),
        1 => Just(Op::Snapshot),
    ]
}

fn sku() -> Sku {
    Sku::parse("sku-1").unwrap()
}

const PRICE_CENTS: u64 = 500;

fn new_order(id: &OrderId, quantity: u32, cards: Vec<CardId>, now_ms: u64) -> Event {
    Event::OrderCreated(std::sync::Arc::new(NewOrder {
        order_id: id.clone(),
        token: "t".repeat(32),
        trace_id: "0".repeat(32),
        sku: sku(),
        quantity,
        amount_cents: PRICE_CENTS * u64::from(quantity),
        currency: Currency::parse("CNY").unwrap(),
        contact: "b@example.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: "http://pay.invalid/".into(),
        payment_ref: String::new(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms + 10,
        cards,
        idempotency: None,
    }))
}

#[derive(Default)]
struct Model {
    orders: BTreeMap<OrderId, (OrderStatus, u32)>,
    imported: u64,
    keys_next: u64,
}

impl Model {
    fn stock(&self) -> (u64, u64, u64) {
        let mut reserved = 0;
        let mut sold = 0;
        for (status, quantity) in self.orders.values() {
            match status {
                OrderStatus::AwaitingPayment => reserved += u64::from(*quantity),
                OrderStatus::Delivered => sold += u64::from(*quantity),
                _ => {}
            }
        }
        (self.imported - reserved - sold, reserved, sold)
    }
}

fn pick(model: &Model, status: OrderStatus, n: u8) -> Option<OrderId> {
    let matching: Vec<_> = model
        .orders
        .iter()
        .filter(|(_, (s, _))| *s == status)
        .collect();
    (!matching.is_empty()).then(|| matching[n as usize % matching.len()].0.clone())
}

fn step(store: &Store, model: &mut Model, op: &Op, now_ms: u64) {
    match *op {
        Op::Import(n) => {
            let keys: Vec<String> = (0..n)
                .map(|i| format!("K{}", model.keys_next + u64::from(i)))
                .collect();
            let first_card_id = store.state().next_card_id();
            store
                .commit(&Event::CardsImported {
                    sku: sku(),
                    first_card_id,
                    keys,
                })
                .unwrap()
                .wait_blocking()
                .unwrap();
            model.keys_next += u64::from(n);
            model.imported += u64::from(n);
        }
        Op::Order(quantity) => {
            let available = store.state().available_cards(&sku());
            if available.len() < quantity as usize {
                return;
            }
            let id = OrderId::generate(now_ms, model.orders.len() as u64);
            let cards = available[..quantity as usize].to_vec();
            let event = new_order(&id, u32::from(quantity), cards, now_ms);
            store.commit(&event).unwrap().wait_blocking().unwrap();
            model
                .orders
                .insert(id, (OrderStatus::AwaitingPayment, u32::from(quantity)));
        }
        Op::Pay(n) => {
            let Some(id) = pick(model, OrderStatus::AwaitingPayment, n) else {
                return;
            };
            let quantity = model.orders[&id].1;
            let payment = Payment {
                channel: "epay".into(),
                gateway_trade_no: format!("G{id}").into(),
                amount_cents: PRICE_CENTS * u64::from(quantity),
            };
            let event = Event::PaymentApplied {
                order_id: id.clone(),
                payment,
                at_ms: now_ms,
                fulfilment: Fulfilment::Delivered {
                    newly_reserved: vec![],
                },
            };
            store.commit(&event).unwrap().wait_blocking().unwrap();
            model.orders.get_mut(&id).unwrap().0 = OrderStatus::Delivered;
        }
        Op::Expire(n) => {
            let Some(id) = pick(model, OrderStatus::AwaitingPayment, n) else {
                return;
            };
            let event = Event::OrderExpired {
                order_id: id.clone(),
                at_ms: now_ms + 10,
            };
            store.commit(&event).unwrap().wait_blocking().unwrap();
            model.orders.get_mut(&id).unwrap().0 = OrderStatus::Expired;
        }
        Op::Restart | Op::Snapshot => unreachable!("handled by the caller"),
    }
}

fn assert_agrees(store: &Store, model: &Model) {
    let state = store.state();
    let stock = state.product(&sku()).unwrap().stock;
    assert_eq!((stock.available, stock.reserved, stock.sold), model.stock());
    assert_eq!(stock.imported, model.imported);
    assert!(state.check().is_empty(), "{:?}", state.check());
    drop(state);
    for (id, (status, quantity)) in &model.orders {
        let row = store
            .order(id)
            .unwrap()
            .expect("acknowledged order in sled");
        assert_eq!(row.status, *status, "{id}");
        let held = if matches!(status, OrderStatus::Expired) {
            0
        } else {
            *quantity as usize
        };
        assert_eq!(row.cards.len(), held, "{id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_model_across_restarts(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start_single(dir.path()).unwrap();
        let product = Product {
            sku: sku(),
            name: "Model".into(),
            price_cents: PRICE_CENTS,
            currency: Currency::parse("CNY").unwrap(),
            created_at_ms: 1,
        };
        node.store().commit(&Event::ProductCreated(product)).unwrap().wait_blocking().unwrap();
        let mut model = Model::default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for (now_ms, op) in ops.iter().enumerate() {
            match op {
                Op::Restart => {
                    node.shutdown();
                    node = Node::start_single(dir.path()).unwrap();
                }
                Op::Snapshot => {
                    runtime.block_on(node.snapshot_now()).unwrap();
                }
                op => step(node.store(), &mut model, op, 1000 + now_ms as u64),
            }
            assert_agrees(node.store(), &model);
        }
        node.shutdown();
        drop(node);
        let report = storage::audit::audit(dir.path()).unwrap();
        prop_assert!(report.violations.is_empty(), "{:?}", report.violations);
        prop_assert_eq!(report.orders_count, model.orders.len() as u64);
    }
}

/// A follower installing a snapshot rewrites sled whole. A reader that has passed a read
/// barrier (the store's applied index reached the snapshot) must find every order as of the
/// snapshot meanwhile: none missing while sled's trees are dropped and rewritten, none as it
/// was before.
#[test]
fn reads_during_a_snapshot_install_see_every_order_as_of_the_snapshot() {
    const ORDERS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), engine::ShopState::default(), 0, 0).unwrap();
    let mut events = vec![
        Event::ProductCreated(Product {
            sku: sku(),
            name: "Snapshot".into(),
            price_cents: PRICE_CENTS,
            currency: Currency::parse("CNY").unwrap(),
            created_at_ms: 1,
        }),
        Event::CardsImported {
            sku: sku(),
            first_card_id: CardId(1),
            keys: (0..ORDERS).map(|n| format!("K{n}")).collect(),
        },
    ];
    let ids: Vec<OrderId> = (0..ORDERS).map(|n| OrderId::generate(2, n)).collect();
    for (n, id) in ids.iter().enumerate() {
        events.push(new_order(id, 1, vec![CardId(n as u64 + 1)], 2));
    }
    let mut index = 0;
    for chunk in events.chunks(100) {
        index += 1;
        store.apply_committed(index, chunk).unwrap();
    }
    let started = std::time::Instant::now();
    while store.applied_index() < index || store.unmirrored_orders_count() > 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never mirrored"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut snapshot = engine::ShopState::default();
    for event in &events {
        snapshot.apply(event).unwrap();
    }
    snapshot
        .apply(&Event::OrderExpired {
            order_id: ids[0].clone(),
            at_ms: 20,
        })
        .unwrap();
    store.replace_state(snapshot, index + 1, true).unwrap();
    while store.applied_index() < index + 1 {
        std::hint::spin_loop();
    }
    let expired = store.order(&ids[0]).unwrap().expect("the expired order");
    assert_eq!(expired.status, OrderStatus::Expired);
    for id in &ids {
        assert!(store.order(id).unwrap().is_some(), "{id} went missing");
    }
    store.close().unwrap();
}
