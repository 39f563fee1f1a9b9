//! Running the shop, as an operator does it, against a real `panshi serve` over real
//! sockets: product listings edited, keys listed, searched, exported and deleted (a deleted
//! key is never sold, sold keys stay), orders searched and exported, revenue per day and
//! per product, the shop's identity; every change durable across `kill -9` and clean under
//! `panshi audit`.

mod common;

use std::collections::BTreeSet;

use common::{answer, Server, ADMIN};
use serde_json::{json, Value};

async fn patch(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = server
        .http
        .patch(server.url(path))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn admin_text(server: &Server, path: &str) -> (u16, String, String) {
    let r = server
        .http
        .get(server.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (code, kind, r.text().await.unwrap())
}

/// Orders one key of `sku` and pays for it; returns the delivered order.
async fn buy_and_pay(server: &Server, sku: &str, contact: &str) -> Value {
    let (code, order) = server.order_as(sku, 1, contact).await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(server.pay(&order).await.0, 200);
    let (_, view) = server.lookup(&order).await;
    assert_eq!(view["status"], "delivered", "{view}");
    let mut order = order;
    order["cards"] = view["cards"].clone();
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_a_listing_and_the_next_order_pays_the_new_price() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    server.product("game-1", 4_900, &common::keys("G", 6)).await;
    let (_, before) = server.order("game-1", 1).await;
    let (code, edited) = patch(
        &server,
        "/api/v1/admin/products/game-1",
        json!({"name": "Game key, deluxe", "price_cents": 3_900,
               "description": "Region free.", "usage_note": "Redeem in the launcher.",
               "category": "Games", "image_url": "https://img.example/game.png",
               "quantity_max": 2}),
    )
    .await;
    assert_eq!(code, 200, "{edited}");
    assert_eq!(
        (
            &edited["name"],
            &edited["price_cents"],
            &edited["quantity_max"]
        ),
        (&json!("Game key, deluxe"), &json!(3_900), &json!(2))
    );
    let (_, after) = server.order("game-1", 2).await;
    assert_eq!(after["amount_cents"], 7_800, "the new price x 2");
    assert_eq!(server.lookup(&before).await.1["amount_cents"], 4_900);
    // Over the product's limit, or an unknown field, or a bad image address: refused.
    assert_eq!(server.order("game-1", 3).await.0, 400);
    let (code, _) = patch(
        &server,
        "/api/v1/admin/products/game-1",
        json!({"colour": "red"}),
    )
    .await;
    assert_eq!(code, 400);
    let bad = json!({"image_url": "javascript:alert(1)"});
    assert_eq!(
        patch(&server, "/api/v1/admin/products/game-1", bad).await.0,
        400
    );
    // The catalogue and the product page show the listing; hidden, it is gone from both.
    let (_, products) = server.admin_get("/api/v1/products").await;
    assert_eq!(products[0]["category"], "Games");
    let page = server.get_text("/product/game-1").await;
    assert!(page.contains("Region free.") && page.contains("https://img.example/game.png"));
    let hide = json!({"hidden": true});
    assert_eq!(
        patch(&server, "/api/v1/admin/products/game-1", hide)
            .await
            .0,
        200
    );
    assert_eq!(server.admin_get("/api/v1/products").await.1, json!([]));
    assert_eq!(server.order("game-1", 1).await.0, 404);
    let hidden = server
        .http
        .get(server.url("/product/game-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
    // Stock was untouched by every edit; edits survive kill -9 and the audit is clean.
    assert_eq!(server.stock("game-1").await, (3, 3, 0));
    server.kill9();
    server.restart();
    let (_, all) = server.admin_get("/api/v1/admin/products").await;
    assert_eq!(
        (&all[0]["hidden"], &all[0]["price_cents"]),
        (&json!(true), &json!(3_900))
    );
    assert_eq!(all[0]["usage_note"], "Redeem in the launcher.");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_note_is_shown_with_the_delivered_keys() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(data.path());
    server.product("vpn", 1_000, &common::keys("V", 2)).await;
    let note = json!({"usage_note": "Open the app, paste the key under Settings."});
    assert_eq!(
        patch(&server, "/api/v1/admin/products/vpn", note).await.0,
        200
    );
    let (_, waiting) = server.order("vpn", 1).await;
    let page_path = format!(
        "/order/{}?token={}",
        waiting["order_id"].as_str().unwrap(),
        waiting["token"].as_str().unwrap()
    );
    let unpaid = server.get_text(&page_path).await;
    assert!(
        unpaid.contains("id=\"countdown\""),
        "the order page counts down"
    );
    assert!(unpaid.contains(&format!("data-expires-at=\"{}\"", expires_ms(&waiting))));
    server.pay(&waiting).await;
    let delivered = server.get_text(&page_path).await;
    assert!(delivered.contains("Open the app, paste the key under Settings."));
    assert!(
        !delivered.contains("id=\"countdown\""),
        "no countdown once paid"
    );
}

fn expires_ms(order: &Value) -> u64 {
    // `expires_at` is RFC 3339 with milliseconds, UTC; the page carries Unix ms.
    let text = order["expires_at"].as_str().unwrap();
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let day_ms = engine::time::parse_day_ms(date, 0).unwrap();
    let mut parts = time.split(':');
    let hours: u64 = parts.next().unwrap().parse().unwrap();
    let minutes: u64 = parts.next().unwrap().parse().unwrap();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    day_ms + (hours * 3600 + minutes * 60) * 1000 + (seconds * 1000.0).round() as u64
}

async fn delete(server: &Server, sku: &str, cards: &[u64]) -> (u16, Value) {
    server
        .admin_post(
            &format!("/api/v1/admin/products/{sku}/cards/delete"),
            json!({"card_ids": cards}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsold_keys_are_listed_searched_exported_and_deleted_never_sold_ones() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    let keys = common::keys("KEY", 6);
    server.product("gift", 500, &keys).await;
    let sold = buy_and_pay(&server, "gift", "a@example.com").await;
    let (_, reserved) = server.order("gift", 1).await;
    let (code, listed) = server.admin_get("/api/v1/admin/products/gift/cards").await;
    assert_eq!(code, 200);
    assert_eq!(listed["total"], 6);
    let status_of = |key: &str| {
        let line = listed["cards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key);
        line.unwrap()["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status_of(sold["cards"][0].as_str().unwrap()), "sold");
    let (_, found) = server
        .admin_get("/api/v1/admin/products/gift/cards?q=key-00004")
        .await;
    assert_eq!(
        (found["total"].as_u64(), &found["cards"][0]["key"]),
        (Some(1), &json!("KEY-00004"))
    );
    let (_, available) = server
        .admin_get("/api/v1/admin/products/gift/cards?status=available")
        .await;
    assert_eq!(available["total"], 4);
    // CSV: a header and one line per key, in order, with statuses.
    let (code, kind, csv) = admin_text(&server, "/api/v1/admin/products/gift/cards/export").await;
    assert_eq!((code, kind.as_str()), (200, "text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "card_id,key,status,order_id");
    assert_eq!(lines.len(), 7);
    assert!(lines
        .iter()
        .any(|l| l.contains(&format!(",sold,{}", sold["order_id"].as_str().unwrap()))));
    // Delete every key: only the four available ones go; sold and reserved stay.
    let all: Vec<u64> = (1..=6).collect();
    let (code, outcome) = delete(&server, "gift", &all).await;
    assert_eq!(code, 200, "{outcome}");
    assert_eq!(outcome["deleted"].as_array().unwrap().len(), 4);
    let kept: BTreeSet<String> = outcome["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kept,
        BTreeSet::from(["reserved".to_owned(), "sold".to_owned()])
    );
    let (_, stock) = server.admin_get("/api/v1/admin/products/gift/stock").await;
    assert_eq!(
        (
            &stock["imported"],
            &stock["available"],
            &stock["reserved"],
            &stock["sold"],
            &stock["deleted"]
        ),
        (&json!(2), &json!(0), &json!(1), &json!(1), &json!(4))
    );
    // Nothing deleted can be bought; a re-import of a deleted key is a duplicate.
    assert_eq!(server.order("gift", 1).await.1["error"], "sold_out");
    let (_, again) = server.import("gift", "KEY-00004\nKEY-NEW\n").await;
    assert_eq!(
        (&again["imported"], &again["duplicates"]),
        (&json!(1), &json!(1))
    );
    let fresh = buy_and_pay(&server, "gift", "b@example.com").await;
    assert_eq!(fresh["cards"], json!(["KEY-NEW"]));
    drop(reserved);
    server.kill9();
    server.restart();
    let (_, after) = server
        .admin_get("/api/v1/admin/products/gift/cards?status=deleted")
        .await;
    assert_eq!(after["total"], 4, "deletions survive kill -9");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// Buyers race an operator deleting keys: every order that gets keys gets undeleted ones,
/// every deletion takes only keys no order holds, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_deleted_while_buyers_buy_are_never_sold() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    server.product("rush", 100, &common::keys("R", 60)).await;
    let buyers = (0..30).map(|n| {
        let http = server.http.clone();
        let url = server.url("/api/v1/orders");
        tokio::spawn(async move {
            let body = json!({"sku": "rush", "quantity": 1, "contact": format!("b{n}@x.com"), "channel": "epay"});
            answer(http.post(url).json(&body).send().await.unwrap()).await
        })
    });
    let buyers: Vec<_> = buyers.collect();
    let mut deleted = BTreeSet::new();
    for chunk in (1..=60u64).collect::<Vec<_>>().chunks(10) {
        let (code, outcome) = delete(&server, "rush", chunk).await;
        assert_eq!(code, 200, "{outcome}");
        deleted.extend(
            outcome["deleted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap()),
        );
    }
    let mut orders = Vec::new();
    for buyer in buyers {
        let (code, order) = buyer.await.unwrap();
        if code == 201 {
            orders.push(order);
        } else {
            assert_eq!(order["error"], "sold_out", "{order}");
        }
    }
    let (_, listing) = server
        .admin_get("/api/v1/admin/products/rush/cards?limit=1000")
        .await;
    let key_of = |id: u64| {
        listing["cards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["card_id"] == id)
            .unwrap()["key"]
            .clone()
    };
    let deleted_keys: BTreeSet<String> = deleted
        .iter()
        .map(|id| key_of(*id).as_str().unwrap().to_owned())
        .collect();
    for order in &orders {
        assert_eq!(server.pay(order).await.0, 200);
        let (_, view) = server.lookup(order).await;
        for key in view["cards"].as_array().unwrap() {
            assert!(
                !deleted_keys.contains(key.as_str().unwrap()),
                "deleted {key} was sold"
            );
        }
    }
    let (_, stock) = server.admin_get("/api/v1/admin/products/rush/stock").await;
    assert_eq!(stock["deleted"].as_u64().unwrap(), deleted.len() as u64);
    assert_eq!(
        stock["sold"].as_u64().unwrap() + stock["deleted"].as_u64().unwrap(),
        60 - stock["available"].as_u64().unwrap()
    );
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_search_filter_page_and_export_orders() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(data.path());
    server.product("a", 1_000, &common::keys("A", 10)).await;
    server.product("b", 2_500, &common::keys("B", 10)).await;
    let alice = buy_and_pay(&server, "a", "Alice@Example.com").await;
    buy_and_pay(&server, "b", "bob@example.com").await;
    for n in 0..3 {
        server
            .order_as("a", 1, &format!("carol{n}@example.com"))
            .await;
    }
    let server = &server;
    let search = |query: &str| {
        let path = format!("/api/v1/admin/orders?{query}");
        async move { server.admin_get(&path).await.1 }
    };
    assert_eq!(search("").await["total"], 5);
    let found = search("q=alice@example").await;
    assert_eq!(
        (&found["total"], &found["orders"][0]["order_id"]),
        (&json!(1), &alice["order_id"])
    );
    let prefix = &alice["order_id"].as_str().unwrap()[..20];
    assert_eq!(search(&format!("q={prefix}")).await["total"], 1);
    assert_eq!(search("status=delivered").await["total"], 2);
    assert_eq!(search("status=awaiting_payment&sku=a").await["total"], 3);
    assert_eq!(search("channel=epay").await["total"], 5);
    assert_eq!(search("channel=manual").await["total"], 0);
    // The day the orders were made (the shop's offset is 0 here): not the expiry's, which
    // is the next day for an order made in the last minutes before midnight.
    let today = &found["orders"][0]["created_at"].as_str().unwrap()[..10];
    assert_eq!(
        search(&format!("from={today}&until={today}")).await["total"],
        5
    );
    assert_eq!(search("until=2001-01-01").await["total"], 0);
    assert_eq!(
        server
            .admin_get("/api/v1/admin/orders?from=yesterday")
            .await
            .0,
        400
    );
    // Paging, newest first.
    let first = search("limit=2").await;
    let second = search("limit=2&offset=2").await;
    assert_eq!(
        (first["orders"].as_array().unwrap().len(), &second["total"]),
        (2, &json!(5))
    );
    assert_ne!(
        first["orders"][0]["order_id"],
        second["orders"][0]["order_id"]
    );
    assert!(first["orders"][0]["contact"]
        .as_str()
        .unwrap()
        .starts_with("carol"));
    // CSV of a selection.
    let (_, _, csv) = admin_text(server, "/api/v1/admin/orders/export?status=delivered").await;
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("Alice@Example.com"));
    // One order in full: its keys and the buyer's own link, which opens the buyer's page.
    let path = format!(
        "/api/v1/admin/orders/{}",
        alice["order_id"].as_str().unwrap()
    );
    let (_, full) = server.admin_get(&path).await;
    assert_eq!(full["keys"], alice["cards"]);
    let link = full["order_url"].as_str().unwrap();
    let buyer_page = server
        .http
        .get(link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(buyer_page.contains(alice["cards"][0].as_str().unwrap()));
    // Revenue: two paid orders today, one per product.
    let (_, revenue) = server.admin_get("/api/v1/admin/revenue?days=7").await;
    assert_eq!(revenue["per_day"].as_array().unwrap().len(), 1, "{revenue}");
    assert_eq!(
        (
            &revenue["per_day"][0]["amount_cents"],
            &revenue["per_day"][0]["orders"]
        ),
        (&json!(3_500), &json!(2))
    );
    assert_eq!(
        (
            &revenue["per_product"][0]["sku"],
            &revenue["per_product"][0]["amount_cents"]
        ),
        (&json!("b"), &json!(2_500))
    );
    // Operator routes refuse without the token.
    let anonymous = server
        .http
        .get(server.url("/api/v1/admin/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_names_the_shop_and_it_survives_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    let before = server.get_text("/").await;
    assert!(
        before.contains("Panshi shop"),
        "the default name until one is set"
    );
    let identity = json!({"name": "Moon Keys", "logo_url": "https://cdn.example/moon.png",
        "announcement": "Double keys this weekend!", "footer": "Moon Keys Ltd.",
        "support_contact": "help@moon.example", "terms": "Keys are not refundable once shown.",
        "utc_offset_minutes": 480});
    let r = server
        .http
        .put(server.url("/api/v1/admin/shop"))
        .bearer_auth(ADMIN)
        .json(&identity)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = json!({"logo_url": "http://plain.example/x.png"});
    let r = server
        .http
        .put(server.url("/api/v1/admin/shop"))
        .bearer_auth(ADMIN)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "logos load over https only");
    server.kill9();
    server.restart();
    let (_, shown) = server.admin_get("/api/v1/admin/shop").await;
    assert_eq!(shown, identity);
    let page = server.get_text("/").await;
    for text in [
        "Moon Keys",
        "https://cdn.example/moon.png",
        "Double keys this weekend!",
        "Moon Keys Ltd.",
        "help@moon.example",
        "href=\"/terms\"",
    ] {
        assert!(page.contains(text), "{text} on the storefront");
    }
    assert!(!page.contains("Panshi shop"));
    assert!(server
        .get_text("/terms")
        .await
        .contains("Keys are not refundable once shown."));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}
