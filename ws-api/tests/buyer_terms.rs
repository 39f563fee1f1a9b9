//! What a buyer adds to an order, against a real `panshi serve` over real sockets: coupons
//! (never used past their limit, even by buyers racing for the last uses; durable across
//! `kill -9`; checked by `panshi audit`), the lookup by contact and lookup password (only
//! the buyer's own orders, rate-limited, the password never stored), and the way back from
//! the demo gateway to the order page.

mod common;

use common::{answer, Server};
use serde_json::{json, Value};

async fn order_with(server: &Server, body: Value) -> (u16, Value) {
    let r = server
        .http
        .post(server.url("/api/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn coupon(server: &Server, body: Value) -> (u16, Value) {
    server.admin_post("/api/v1/admin/coupons", body).await
}

const LATER: &str = "2999-12-31";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_is_used_at_most_its_limit_by_buyers_racing_for_it() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    server.product("game", 4_900, &common::keys("G", 40)).await;
    let (code, created) = coupon(
        &server,
        json!({"code": "spring-10", "percent_bp": 1_000, "uses_max": 3, "expires_on": LATER}),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        (&created["code"], &created["used"]),
        (&json!("SPRING-10"), &json!(0))
    );
    let duplicate =
        json!({"code": "SPRING-10", "amount_off_cents": 1, "uses_max": 1, "expires_on": LATER});
    assert_eq!(coupon(&server, duplicate).await.1["error"], "coupon_exists");
    // Twenty buyers at once, over their own connections, for three uses.
    let buyers: Vec<_> = (0..20)
        .map(|n| {
            let http = reqwest::Client::new();
            let url = server.url("/api/v1/orders");
            tokio::spawn(async move {
                let body = json!({"sku": "game", "quantity": 1, "contact": format!("b{n}@x.com"),
                                  "channel": "epay", "coupon": "Spring-10"});
                answer(http.post(url).json(&body).send().await.unwrap()).await
            })
        })
        .collect();
    let mut won = Vec::new();
    for buyer in buyers {
        let (code, answer) = buyer.await.unwrap();
        match code {
            201 => won.push(answer),
            409 => assert_eq!(answer["error"], "coupon_used_up", "{answer}"),
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(won.len(), 3, "exactly the limit");
    for order in &won {
        assert_eq!(order["amount_cents"], 4_410, "10 % off 49.00");
    }
    // The losers' keys went back; only the winners hold any.
    assert_eq!(server.stock("game").await, (37, 3, 0));
    assert_eq!(server.pay(&won[0]).await.0, 200);
    server.kill9();
    server.restart();
    let (_, listed) = server.admin_get("/api/v1/admin/coupons").await;
    assert_eq!(
        (&listed[0]["used"], &listed[0]["uses_max"]),
        (&json!(3), &json!(3))
    );
    let late = json!({"sku": "game", "quantity": 1, "contact": "late@x.com", "channel": "epay", "coupon": "SPRING-10"});
    assert_eq!(order_with(&server, late).await.1["error"], "coupon_used_up");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_keep_to_their_product_expiry_and_withdrawal() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(data.path());
    server.product("game", 4_900, &common::keys("G", 10)).await;
    server.product("vpn", 300, &common::keys("V", 10)).await;
    let fixed = json!({"code": "FIVE", "amount_off_cents": 500, "sku": "vpn", "uses_max": 10, "expires_on": LATER});
    assert_eq!(coupon(&server, fixed).await.0, 201);
    let buy = |sku: &str, code: &str| json!({"sku": sku, "quantity": 2, "contact": "c@x.com", "channel": "epay", "coupon": code});
    assert_eq!(
        order_with(&server, buy("game", "FIVE")).await.1["error"],
        "coupon_other_product"
    );
    let (code, order) = order_with(&server, buy("vpn", "five")).await;
    assert_eq!(
        (code, &order["amount_cents"]),
        (201, &json!(100)),
        "5.00 off 6.00"
    );
    assert_eq!(order_with(&server, buy("vpn", "NOPE")).await.0, 404);
    // Expired yesterday (the API takes Unix ms too).
    let expired = json!({"code": "OLD", "amount_off_cents": 1, "uses_max": 1, "expires_at_ms": 1});
    assert_eq!(
        coupon(&server, expired).await.0,
        400,
        "already expired at creation"
    );
    let r = server
        .http
        .post(server.url("/api/v1/admin/coupons/five/disable"))
        .bearer_auth(common::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        order_with(&server, buy("vpn", "FIVE")).await.1["error"],
        "coupon_disabled"
    );
    // The order page shows the discount.
    let page = server
        .get_text(&format!(
            "/order/{}?token={}",
            order["order_id"].as_str().unwrap(),
            order["token"].as_str().unwrap()
        ))
        .await;
    assert!(
        page.contains("FIVE") && page.contains("5.00"),
        "the coupon on the order page"
    );
}

async fn find(server: &Server, contact: &str, password: &str) -> (u16, Value) {
    let body = json!({"contact": contact, "lookup_password": password});
    let r = server
        .http
        .post(server.url("/api/v1/orders/lookup"))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

fn ids(found: &Value) -> Vec<String> {
    let mut ids: Vec<String> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_finds_only_their_own_orders_by_contact_and_lookup_password() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_quiet(data.path());
    server.product("game", 100, &common::keys("G", 10)).await;
    let place = |contact: &str, password: Option<&str>| {
        let mut body = json!({"sku": "game", "quantity": 1, "contact": contact, "channel": "epay"});
        if let Some(password) = password {
            body["lookup_password"] = json!(password);
        }
        body
    };
    let (_, mine) = order_with(&server, place("Me@Example.com", Some("open sesame"))).await;
    let (_, mine_too) = order_with(&server, place("me@example.com", Some("open sesame"))).await;
    let (_, other_password) =
        order_with(&server, place("me@example.com", Some("another one"))).await;
    let (_, other_buyer) = order_with(&server, place("you@example.com", Some("open sesame"))).await;
    let (_, no_password) = order_with(&server, place("me@example.com", None)).await;
    assert_eq!(
        order_with(&server, place("me@example.com", Some("abc")))
            .await
            .0,
        400,
        "too short"
    );
    let id = |o: &Value| o["order_id"].as_str().unwrap().to_owned();
    let mut expected = vec![id(&mine), id(&mine_too)];
    expected.sort();
    let (code, found) = find(&server, " ME@example.com ", "open sesame").await;
    assert_eq!((code, ids(&found)), (200, expected));
    assert_eq!(
        found[0]["token"].as_str().unwrap().len(),
        32,
        "the link's token, to open the order"
    );
    assert_eq!(
        ids(&find(&server, "me@example.com", "another one").await.1),
        vec![id(&other_password)]
    );
    assert_eq!(
        ids(&find(&server, "you@example.com", "open sesame").await.1),
        vec![id(&other_buyer)]
    );
    assert!(ids(&find(&server, "me@example.com", "wrong guess").await.1).is_empty());
    let _ = no_password;
    // Neither the password nor a fast hash of it is on disk: only PBKDF2 with a salt.
    server.stop();
    let on_disk = common::files_bytes(data.path());
    assert!(!common::contains(&on_disk, "open sesame"));
    assert!(common::contains(&on_disk, "pbkdf2-sha256$100000$"));
    server.restart();
    assert_eq!(
        find(&server, "me@example.com", "open sesame")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2,
        "after a restart too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_by_contact_are_rate_limited_whatever_the_password() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(data.path());
    server.product("game", 100, &common::keys("G", 2)).await;
    let body = json!({"sku": "game", "quantity": 1, "contact": "victim@example.com", "channel": "epay", "lookup_password": "right one"});
    order_with(&server, body).await;
    // The run above already spent tries of this contact in no test; five guesses pass...
    for n in 0..5 {
        let (code, found) = find(&server, "victim@example.com", &format!("guess {n}")).await;
        assert_eq!((code, found), (200, json!([])));
    }
    // ...then even the right password waits.
    let (code, refused) = find(&server, "victim@example.com", "right one").await;
    assert_eq!((code, &refused["error"]), (429, &json!("rate_limited")));
}

/// The demo gateway sends the buyer back to the order page and never offers to pay twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_gateway_returns_the_buyer_to_the_order_page() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_demo_gateway(data.path());
    let body = json!({"sku": "vpn-30d", "quantity": 1, "contact": "d@x.com", "channel": "alipay"});
    let (code, order) = order_with(&server, body).await;
    assert_eq!(code, 201, "{order}");
    let pay_url = order["payment"]["url"].as_str().unwrap();
    let order_id = order["order_id"].as_str().unwrap();
    let token = order["token"].as_str().unwrap();
    // No token in the return URL (the log keeps it, the gateway sees it): the buyer's
    // browser kept the token in a cookie for this order's page when it opened it.
    let order_page = server.url(&format!("/order/{order_id}"));
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(pay_url.split_once('?').unwrap().1).unwrap();
    let return_url = &query.iter().find(|(k, _)| k == "return_url").unwrap().1;
    assert_eq!(
        return_url, &order_page,
        "return_url is the buyer's order page"
    );
    assert!(
        !pay_url.contains(token),
        "the token stays out of the payment URL"
    );
    let opened = server
        .http
        .get(format!("{order_page}?token={token}"))
        .send()
        .await
        .unwrap();
    let cookie = opened
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("the order page keeps the token in a cookie")
        .to_owned();
    assert!(
        cookie.contains(&format!("Path=/order/{order_id}"))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let returned = server
        .http
        .get(return_url)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(
        returned.status(),
        200,
        "back on the order page with the cookie"
    );
    let without = server.http.get(return_url).send().await.unwrap();
    assert_eq!(without.status(), 404, "no token, no cookie: no order");
    let cashier = server
        .http
        .get(pay_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cashier.contains(">Pay (demo)</button>"), "{cashier}");
    let paid = server.http.post(pay_url).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    let paid = paid.text().await.unwrap();
    let link = format!("href=\"{}\"", order_page.replace('&', "&amp;"));
    assert!(paid.contains("success") && paid.contains(&link), "{paid}");
    let again = server
        .http
        .get(pay_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !again.contains("<button"),
        "no Pay button for a paid order: {again}"
    );
    assert!(again.contains("already paid") && again.contains(&link));
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
}
