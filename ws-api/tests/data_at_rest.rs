//! Data at rest (issue 15, item 21), with real processes: card keys sealed, order tokens
//! kept only as digests, the data dir the owner's alone; and a data dir an older version
//! wrote (keys and tokens in the clear, open modes, sled in the old row format) opens,
//! is sealed and tightened at start, and still serves its orders.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use engine::{CardId, Currency, Event, NewOrder, OrderId, Product, Sku};
use serde_json::{json, Value};

/// Every path under `dir` whose mode lets others than the owner in (or is not 0600/0700).
fn open_modes(dir: &Path) -> Vec<String> {
    let mut open = Vec::new();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    if mode != 0o700 {
        open.push(format!("{} {mode:o}", dir.display()));
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            open.extend(open_modes(&path));
        } else {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            if mode != 0o600 {
                open.push(format!("{} {mode:o}", path.display()));
            }
        }
    }
    open
}

/// Postmortem: card keys, order tokens and contacts sat in clear in the log and in sled,
/// in a data dir created 0755 with files 0644.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_sealed_tokens_hashed_and_the_data_dir_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = Server::start(&data);
    let keys = keys("SECRET-CARD-KEY", 4);
    server.product("rest", 100, &keys).await;
    // A duplicate is still found (by the keyed digest).
    let (code, body) = server.import("rest", format!("{}\nNEW-ONE", keys[0])).await;
    assert_eq!(
        (code, &body["imported"], &body["duplicates"]),
        (200, &json!(1), &json!(1))
    );
    let (_, order) = server.order("rest", 2).await;
    assert_eq!(server.pay(&order).await.0, 200);
    let (code, view) = server.lookup(&order).await;
    assert_eq!(code, 200);
    let delivered = view["cards"].as_array().unwrap().clone();
    assert_eq!(delivered.len(), 2, "{view}");
    server.restart();
    assert_eq!(
        server.lookup(&order).await.1["cards"],
        json!(delivered),
        "after a restart"
    );
    server.stop();
    let stored = files_bytes(&data);
    for key in keys.iter().map(String::as_str).chain(["NEW-ONE"]) {
        assert!(
            !contains(&stored, key),
            "card key {key} is readable at rest"
        );
    }
    assert!(
        !contains(&stored, order["token"].as_str().unwrap()),
        "the token is at rest"
    );
    assert_eq!(open_modes(&data), Vec::<String>::new());
    let (clean, report) = server.audit();
    assert!(clean && !report.contains("note"), "{report}");
}

/// sled is derived, and the audit holds it to the log: a sold key's card row that claims
/// the key was deleted, or an order row that lost its delivery, is a violation. (A sale
/// writes no card row: the order's row says which keys it bought.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_sled_rows_that_disagree_with_the_log() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = Server::start(&data);
    server.product("held", 100, &keys("HELD-KEY", 3)).await;
    let (_, order) = server.order("held", 1).await;
    assert_eq!(server.pay(&order).await.0, 200);
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    let tamper = |change: &dyn Fn(&sled::Db)| {
        let db = storage::sled_dir::open_sled(&data).unwrap();
        change(&db);
        db.flush().unwrap();
    };
    // Which key the order bought, as sled's order row says.
    let db = storage::sled_dir::open_sled(&data).unwrap();
    let id = OrderId::parse(&order_id).unwrap();
    let sold = storage::rows::read_order(&db, &id).unwrap().unwrap();
    assert_eq!(sold.status, engine::OrderStatus::Delivered);
    let card = sold.cards[0];
    let card_key = storage::rows::card_key(card);
    let card_row = db
        .open_tree("cards")
        .unwrap()
        .get(card_key)
        .unwrap()
        .unwrap();
    let order_tree =
        storage::rows::TreeName::Orders(storage::rows::month_of(sold.created.created_at_ms))
            .as_string();
    let order_row = db
        .open_tree(&order_tree)
        .unwrap()
        .get(&order_id)
        .unwrap()
        .unwrap();
    drop(db);

    tamper(&|db| {
        let mut row: storage::rows::CardRow = storage::rows::decode(&card_row).unwrap();
        row.deleted = true;
        let cards = db.open_tree("cards").unwrap();
        cards.insert(card_key, storage::rows::encode(&row)).unwrap();
    });
    let (clean, report) = server.audit();
    assert!(!clean, "a sold key's row says deleted: {report}");
    assert!(
        report.contains(&format!("sled disagrees with the log on card {}", card.0)),
        "{report}"
    );
    tamper(&|db| {
        db.open_tree("cards")
            .unwrap()
            .insert(card_key, card_row.clone())
            .unwrap();
        let mut record = sold.clone();
        record.status = engine::OrderStatus::Paid;
        record.cards.clear();
        let orders = db.open_tree(&order_tree).unwrap();
        orders
            .insert(order_id.as_bytes(), storage::rows::encode(&record))
            .unwrap();
    });
    let (clean, report) = server.audit();
    assert!(!clean, "an order row lost its delivery: {report}");
    assert!(
        report.contains(&format!("sled disagrees with the log on order {order_id}")),
        "{report}"
    );
    tamper(&|db| {
        let orders = db.open_tree(&order_tree).unwrap();
        orders
            .insert(order_id.as_bytes(), order_row.clone())
            .unwrap();
    });
    let (clean, report) = server.audit();
    assert!(clean, "as it was: {report}");
}

/// A data dir as an older version left it: keys and a token in the clear in the log,
/// sled rows in the old format, everything readable by all.
fn older_data_dir(data: &Path) -> (String, String) {
    let node = replication::Node::start_single(data).unwrap();
    let store = node.store().clone();
    let sku = Sku::parse("old").unwrap();
    let product = Product {
        sku: sku.clone(),
        name: "Old".into(),
        price_cents: 100,
        currency: Currency::parse("CNY").unwrap(),
        created_at_ms: 1,
    };
    let token = "0123456789abcdef0123456789abcdef".to_owned();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let order = NewOrder {
        order_id: OrderId::parse("old-order-1").unwrap(),
        token: token.clone(),
        trace_id: "t".into(),
        sku: sku.clone(),
        quantity: 1,
        amount_cents: 100,
        currency: Currency::parse("CNY").unwrap(),
        contact: "old@x.com".into(),
        channel: "epay".into(),
        payment_channel: "epay".into(),
        payment_url: String::new(),
        payment_ref: String::new(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms + 900_000,
        cards: vec![CardId(1)],
        idempotency: None,
    };
    for event in [
        Event::ProductCreated(product),
        Event::CardsImported {
            sku,
            first_card_id: CardId(1),
            keys: vec!["OLD-CLEAR-KEY-1".into(), "OLD-CLEAR-KEY-2".into()],
        },
        Event::OrderCreated(std::sync::Arc::new(order)),
    ] {
        store.commit(&event).unwrap().wait_blocking().unwrap();
    }
    drop(store);
    node.shutdown();
    // The older version's sled recorded no rows format.
    let db = storage::sled_dir::open_sled(data).unwrap();
    db.open_tree("meta").unwrap().remove("rows_format").unwrap();
    db.flush().unwrap();
    drop(db);
    std::thread::sleep(std::time::Duration::from_millis(200));
    chmod_tree(data, 0o755, 0o644);
    (token, "old-order-1".into())
}

fn chmod_tree(dir: &Path, dir_mode: u32, file_mode: u32) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            chmod_tree(&path, dir_mode, file_mode);
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_data_dir_opens_and_is_sealed_and_tightened_at_start() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let dir = data.clone();
    let (token, order_id) = std::thread::spawn(move || older_data_dir(&dir))
        .join()
        .unwrap();
    let before = Server::audit_of(&data);
    assert!(before.0, "an older data dir audits clean: {}", before.1);
    assert!(before.1.contains("in the clear"), "{}", before.1);
    let mut server = Server::start(&data);
    let order: Value = json!({"order_id": order_id, "token": token, "amount_cents": 100});
    // The older token still finds its order; its payment delivers the sealed key.
    assert_eq!(server.lookup(&order).await.0, 200);
    assert_eq!(server.pay(&order).await.0, 200);
    let (_, view) = server.lookup(&order).await;
    assert_eq!(view["cards"], json!(["OLD-CLEAR-KEY-1"]), "{view}");
    // The other old key still deduplicates.
    let (_, body) = server.import("old", "OLD-CLEAR-KEY-2\nOLD-NEW-KEY").await;
    assert_eq!(
        (&body["imported"], &body["duplicates"]),
        (&json!(1), &json!(1)),
        "{body}"
    );
    server.stop();
    assert_eq!(open_modes(&data), Vec::<String>::new());
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    assert!(
        !report.contains("in the clear"),
        "sealed at start: {report}"
    );
    // sled no longer holds them (the log's older records do, until purged).
    let sled = files_bytes(&data.join("state"));
    assert!(!contains(&sled, "OLD-CLEAR-KEY-2"), "a key in sled");
    assert!(!contains(&sled, &token), "a token in sled");
}
