//! The other channels and the tiers: epusdt and Stripe created and paid for real over
//! HTTP against local stand-ins, their callbacks verified (forged, stale and mismatched ones
//! refused), a failing primary falling back to the backup, and every channel down sending
//! the order to the manual queue, where an operator confirms it.

mod common;

use std::sync::Arc;

use common::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};

const EPUSDT_TOKEN: &str = "epusdt-test-token";
const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_0123456789";

fn epusdt_callback(order: &Value, amount: &str, token: &str) -> String {
    let id = order["order_id"].as_str().unwrap();
    // The gateway signs numbers in their shortest decimal form, whatever text it sends.
    let shortest = engine::payment::shortest_decimal(amount).unwrap();
    let fields = [
        ("actual_amount", "1.39"),
        ("amount", shortest.as_str()),
        ("block_transaction_id", "0xabc"),
        ("order_id", id),
        ("status", "2"),
        ("token", "TXYZ"),
        ("trade_id", "E1"),
    ];
    let signature = engine::payment::epusdt_sign(fields, token);
    format!(
        r#"{{"trade_id":"E1","order_id":"{id}","amount":{amount},"actual_amount":1.39,"token":"TXYZ","block_transaction_id":"0xabc","signature":"{signature}","status":2}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epusdt_orders_are_created_at_the_gateway_and_paid_by_a_signed_callback() {
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = created.clone();
    let gateway = stand_in(Arc::new(move |line: &str, body: &str| {
        assert!(line.starts_with("POST /api/v1/order/create-transaction"), "{line}");
        seen.lock().push(body.to_owned());
        (200, r#"{"status_code":200,"data":{"trade_id":"E1","payment_url":"http://usdt.invalid/pay/E1"}}"#.into())
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_EPUSDT__GATEWAY_URL", gateway.as_str()),
            ("PANSHI_EPUSDT__TOKEN", EPUSDT_TOKEN),
        ],
    );
    server.product("usdt-1", 2880, &keys("U", 2)).await;
    let body =
        json!({"sku": "usdt-1", "quantity": 1, "contact": "c@example.com", "channel": "usdt"});
    let (code, order) = answer(
        server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(order["payment"]["channel"], "epusdt");
    assert_eq!(order["payment"]["url"], "http://usdt.invalid/pay/E1");
    let sent: Value = serde_json::from_str(&created.lock()[0]).unwrap();
    assert_eq!(
        sent["amount"].to_string(),
        "28.8",
        "a JSON number in shortest form"
    );

    let post = |text: String| {
        server
            .http
            .post(server.url("/api/v1/payments/epusdt/notify"))
            .header("Content-Type", "application/json")
            .body(text)
            .send()
    };
    let forged = post(epusdt_callback(&order, "28.8", "wrong-token"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let short = post(epusdt_callback(&order, "28.79", EPUSDT_TOKEN))
        .await
        .unwrap();
    assert_eq!(short.status().as_u16(), 400, "amount mismatch");
    assert_eq!(server.lookup(&order).await.1["status"], "awaiting_payment");
    // "28.80" and "28.8" are the same amount; the signature covers the shortest form.
    let paid = post(epusdt_callback(&order, "28.80", EPUSDT_TOKEN))
        .await
        .unwrap();
    assert_eq!(
        (paid.status().as_u16(), paid.text().await.unwrap()),
        (200, "ok".to_owned())
    );
    let again = post(epusdt_callback(&order, "28.8", EPUSDT_TOKEN))
        .await
        .unwrap();
    assert_eq!(
        (again.status().as_u16(), again.text().await.unwrap()),
        (200, "ok".to_owned())
    );
    // Paid: a signed callback with another amount is no replay (fuzzing found `ok`).
    for amount in ["99", "0.01", "28.81"] {
        let other = post(epusdt_callback(&order, amount, EPUSDT_TOKEN))
            .await
            .unwrap();
        assert_eq!(
            (other.status().as_u16(), other.text().await.unwrap()),
            (400, "fail".to_owned()),
            "amount {amount} on a paid order of 28.80"
        );
    }
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    assert_eq!(server.stock("usdt-1").await, (1, 0, 1));
}

fn stripe_signature(body: &str, t: u64, secret: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!(
        "t={t},v1={}",
        engine::payment::hex_lower(&mac.finalize().into_bytes())
    )
}

fn stripe_event(event_id: &str, order: &Value, amount: u64, currency: &str) -> String {
    json!({
        "id": event_id,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": "cs_test_1", "payment_status": "paid", "client_reference_id": order["order_id"],
            "amount_total": amount, "currency": currency,
        }},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_checkout_and_its_webhook_as_stripe_sends_it() {
    let api = stand_in(Arc::new(|line: &str, body: &str| {
        assert!(line.starts_with("POST /v1/checkout/sessions"), "{line}");
        assert!(
            body.contains("mode=payment") && body.contains("client_reference_id="),
            "{body}"
        );
        assert!(
            body.contains("unit_amount%5D=1500") || body.contains("unit_amount]=1500"),
            "{body}"
        );
        (
            200,
            r#"{"id":"cs_test_1","url":"http://checkout.invalid/cs_test_1"}"#.into(),
        )
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_STRIPE__API_BASE", api.as_str()),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_test_0123456789abcdef"),
            ("PANSHI_STRIPE__WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET),
        ],
    );
    server.product("card-1", 1500, &keys("S", 2)).await;
    let body =
        json!({"sku": "card-1", "quantity": 1, "contact": "c@example.com", "channel": "stripe"});
    let (code, order) = answer(
        server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, order["payment"]["url"].as_str()),
        (201, Some("http://checkout.invalid/cs_test_1")),
        "{order}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let send = |text: String, signature: String| {
        server
            .http
            .post(server.url("/api/v1/payments/stripe/webhook"))
            .header("Stripe-Signature", signature)
            .body(text)
            .send()
    };
    let event = stripe_event("evt_1", &order, 1500, "cny");
    let stale = send(
        event.clone(),
        stripe_signature(&event, now - 301, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(stale.status().as_u16(), 400, "a timestamp older than 300 s");
    let forged = send(event.clone(), stripe_signature(&event, now, "whsec_other"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let wrong_amount = stripe_event("evt_2", &order, 1499, "cny");
    let r = send(
        wrong_amount.clone(),
        stripe_signature(&wrong_amount, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let wrong_currency = stripe_event("evt_3", &order, 1500, "usd");
    let r = send(
        wrong_currency.clone(),
        stripe_signature(&wrong_currency, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(server.lookup(&order).await.1["status"], "awaiting_payment");
    let other_type =
        json!({"id": "evt_4", "type": "payment_intent.created", "data": {"object": {}}})
            .to_string();
    let r = send(
        other_type.clone(),
        stripe_signature(&other_type, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "an event that pays nothing");
    let r = send(
        event.clone(),
        stripe_signature(&event, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    let replay = send(
        event.clone(),
        stripe_signature(&event, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    let second = stripe_event("evt_5", &order, 1500, "cny");
    let r = send(
        second.clone(),
        stripe_signature(&second, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "a second event for a paid order changes nothing"
    );
    let other_amount = stripe_event("evt_6", &order, 99, "cny");
    let r = send(
        other_amount.clone(),
        stripe_signature(&other_amount, now, STRIPE_WEBHOOK_SECRET),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "an event for a paid order with another amount is a mismatch"
    );
    assert_eq!(server.stock("card-1").await, (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_then_everything_down_goes_to_the_manual_queue() {
    let api = stand_in(Arc::new(|_: &str, _: &str| (500, "{}".into()))).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("panshi.toml");
    std::fs::write(
        &config,
        "[payment_methods]\ncard = [\"stripe\", \"epay\"]\nusdt = [\"epusdt\"]\n",
    )
    .unwrap();
    let server = Server::start_full(
        &dir.path().join("data"),
        &[
            ("PANSHI_STRIPE__API_BASE", api.as_str()),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_test_0123456789abcdef"),
            ("PANSHI_STRIPE__WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET),
            ("PANSHI_EPUSDT__GATEWAY_URL", api.as_str()),
            ("PANSHI_EPUSDT__TOKEN", EPUSDT_TOKEN),
        ],
        &["--config", config.to_str().unwrap()],
    );
    server.product("tier", 700, &keys("T", 3)).await;
    let order_with = |channel: &'static str| {
        let body =
            json!({"sku": "tier", "quantity": 1, "contact": "c@example.com", "channel": channel});
        server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send()
    };
    // Stripe answers 500: the card method falls back to its backup, Epay.
    let (code, backup) = answer(order_with("card").await.unwrap()).await;
    assert_eq!(
        (code, backup["payment"]["channel"].as_str()),
        (201, Some("epay")),
        "{backup}"
    );
    // epusdt is the only channel of usdt and it is down: the manual queue takes the order.
    let (code, manual) = answer(order_with("usdt").await.unwrap()).await;
    assert_eq!(
        (code, manual["payment"]["channel"].as_str()),
        (201, Some("manual")),
        "{manual}"
    );
    let page = server
        .http
        .get(manual["payment"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let path = format!(
        "/api/v1/admin/orders/{}/confirm-payment",
        manual["order_id"].as_str().unwrap()
    );
    let (code, confirmed) = server
        .admin_post(&path, json!({"note": "bank transfer 0042"}))
        .await;
    assert_eq!(
        (code, confirmed["status"].as_str()),
        (200, Some("delivered")),
        "{confirmed}"
    );
    let (code, _) = server.admin_post(&path, json!({"note": "again"})).await;
    assert_eq!(code, 200, "confirming twice changes nothing");
    assert_eq!(server.stock("tier").await, (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_refund_what_cannot_be_fulfilled_and_every_action_is_on_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(dir.path(), &[("PANSHI_ORDER_TTL_SECS", "1")]);
    server.product("one", 300, &keys("ONE", 1)).await;
    let (_, lapsed) = server.order("one", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, winner) = server.order("one", 1).await;
    assert_eq!(code, 201, "{winner}");
    assert_eq!(server.pay(&lapsed).await, (200, "success".into()));
    assert_eq!(server.lookup(&lapsed).await.1["status"], "manual_review");
    let refund = |order: &Value| {
        format!(
            "/api/v1/admin/orders/{}/refund",
            order["order_id"].as_str().unwrap()
        )
    };
    let (code, body) = server
        .admin_post(&refund(&winner), json!({"note": "not paid"}))
        .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("invalid_state")),
        "only a paid order in review is refunded"
    );
    let (code, body) = server
        .admin_post(&refund(&lapsed), json!({"note": ""}))
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = server
        .admin_post(
            &refund(&lapsed),
            json!({"note": "refunded at the gateway, ticket 7"}),
        )
        .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("refunded")),
        "{body}"
    );
    assert_eq!(server.lookup(&lapsed).await.1["status"], "refunded");
    let (code, _) = server
        .admin_post(&refund(&lapsed), json!({"note": "again"}))
        .await;
    assert_eq!(code, 409);
    assert_eq!(
        server.pay(&lapsed).await,
        (200, "success".into()),
        "a replay after refund changes nothing"
    );
    assert_eq!(server.lookup(&lapsed).await.1["status"], "refunded");
    server.restart();
    let (code, trail) = server.admin_get("/api/v1/admin/audit").await;
    assert_eq!(code, 200);
    assert_eq!(trail[0]["action"], "refund", "{trail}");
    assert_eq!(trail[0]["subject"], lapsed["order_id"]);
    assert!(trail[0]["by"].as_str().unwrap().starts_with("operator@"));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_return_to_the_primary_when_it_heals() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let (fail, count) = (failing.clone(), calls.clone());
    let api = stand_in(Arc::new(move |_: &str, _: &str| {
        count.fetch_add(1, Ordering::SeqCst);
        if fail.load(Ordering::SeqCst) {
            (500, "{}".into())
        } else {
            (
                200,
                r#"{"id":"cs_healed","url":"http://checkout.invalid/cs_healed"}"#.into(),
            )
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("panshi.toml");
    std::fs::write(&config, "[payment_methods]\ncard = [\"stripe\", \"epay\"]\n[breaker]\nconsecutive_failures_max = 1\ncooldown_secs = 1\n").unwrap();
    let server = Server::start_full(
        &dir.path().join("data"),
        &[
            ("PANSHI_STRIPE__API_BASE", api.as_str()),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_test_0123456789abcdef"),
        ],
        &["--config", config.to_str().unwrap()],
    );
    server.product("heal", 100, &keys("H", 5)).await;
    let card_order = || {
        let body =
            json!({"sku": "heal", "quantity": 1, "contact": "c@example.com", "channel": "card"});
        server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send()
    };
    let (_, first) = answer(card_order().await.unwrap()).await;
    assert_eq!(
        first["payment"]["channel"], "epay",
        "the primary failed: the backup took it"
    );
    let (_, second) = answer(card_order().await.unwrap()).await;
    assert_eq!(second["payment"]["channel"], "epay");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the open breaker spared the failing primary"
    );
    let stripe_breaker = |health: &Value| {
        let channels = health["channels"].as_array().unwrap();
        let stripe = channels.iter().find(|c| c["channel"] == "stripe").unwrap();
        stripe["breaker"].as_str().unwrap().to_owned()
    };
    let (_, health) = server.admin_get("/api/v1/ops/channels").await;
    assert_eq!(stripe_breaker(&health), "open", "{health}");
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (_, third) = answer(card_order().await.unwrap()).await;
    assert_eq!(
        third["payment"]["channel"], "stripe",
        "a half-open probe went to the healed primary"
    );
    let (_, health) = server.admin_get("/api/v1/ops/channels").await;
    assert_eq!(stripe_breaker(&health), "closed", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_stripe_session_is_closed_before_its_keys_are_released() {
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    let api = stand_in(Arc::new(move |line: &str, _: &str| {
        seen.lock().push(line.to_owned());
        if line.starts_with("GET /v1/checkout/sessions/cs_close") {
            (200, r#"{"id":"cs_close","payment_status":"unpaid"}"#.into())
        } else {
            (
                200,
                r#"{"id":"cs_close","url":"http://checkout.invalid/cs_close"}"#.into(),
            )
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_STRIPE__API_BASE", api.as_str()),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_test_0123456789abcdef"),
            ("PANSHI_ORDER_TTL_SECS", "1"),
        ],
    );
    server.product("close", 100, &keys("C", 1)).await;
    let body =
        json!({"sku": "close", "quantity": 1, "contact": "c@example.com", "channel": "stripe"});
    let (code, order) = answer(
        server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{order}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.lookup(&order).await.1["status"] != "expired"
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(server.lookup(&order).await.1["status"], "expired");
    let lines = requests.lock().clone();
    let query = lines
        .iter()
        .position(|l| l.starts_with("GET /v1/checkout/sessions/cs_close"));
    let close = lines
        .iter()
        .position(|l| l.starts_with("POST /v1/checkout/sessions/cs_close/expire"));
    assert!(
        query.is_some() && close.is_some() && query < close,
        "queried, then closed: {lines:?}"
    );
    assert_eq!(server.stock("close").await, (1, 0, 0));
}
