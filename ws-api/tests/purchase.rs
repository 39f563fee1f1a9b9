//! The purchase flow over real sockets: a real server process, HTTP, and live WebSockets.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_purchase_is_watched_live_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("gift-1", 1250, &keys("GIFT", 3)).await;
    let (code, order) = server.order("gift-1", 1).await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(order["status"], "awaiting_payment");
    assert_eq!(order["amount_cents"], 1250);
    assert_eq!(order["payment"]["channel"], "epay");
    assert!(order["payment"]["url"]
        .as_str()
        .unwrap()
        .contains("/submit.php?"));
    assert_eq!(server.stock("gift-1").await, (2, 1, 0));

    let mut live = Live::connect(&server, &order).await;
    assert_eq!(live.status().await, "awaiting_payment");
    assert_eq!(server.pay(&order).await, (200, "success".into()));
    assert_eq!(live.status().await, "paid");
    let delivered = match live.next().await {
        Frame::Update(v) => v,
        Frame::Closed(code) => panic!("closed early: {code:?}"),
    };
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["cards"].as_array().unwrap().len(), 1);
    assert!(
        matches!(live.next().await, Frame::Closed(Some(1000))),
        "normal close after delivery"
    );

    let (code, view) = server.lookup(&order).await;
    assert_eq!(code, 200);
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["cards"], delivered["cards"]);
    assert!(view["trace_id"].as_str().is_some_and(|t| t.len() == 32));

    // A replayed notify is acknowledged and changes nothing.
    assert_eq!(server.pay(&order).await, (200, "success".into()));
    assert_eq!(server.stock("gift-1").await, (2, 0, 1));
    // A live socket on a delivered order gets the state and a normal close.
    let mut late = Live::connect(&server, &order).await;
    assert_eq!(late.status().await, "delivered");
    assert!(matches!(late.next().await, Frame::Closed(Some(1000))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_several_keys_and_lookups_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("bundle", 300, &keys("B", 5)).await;
    let (code, order) = server.order("bundle", 3).await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(order["amount_cents"], 900);
    let (code, _) = server.order("bundle", 3).await;
    assert_eq!(code, 409, "only 2 left");
    let (code, view) = server.lookup(&order).await;
    assert_eq!(
        (code, view["cards"].as_array().unwrap().len()),
        (200, 0),
        "no keys before payment"
    );
    assert_eq!(server.pay(&order).await.0, 200);
    let (_, view) = server.lookup(&order).await;
    let cards: Vec<&str> = view["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cards.len(), 3);
    let mut unique = cards.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    let wrong = json!({"order_id": order["order_id"], "token": "0".repeat(32)});
    assert_eq!(server.lookup(&wrong).await.0, 404);
    assert_eq!(server.stock("bundle").await, (2, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_skip_duplicates_and_refuse_malformed_bodies_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("imp", 100, &[]).await;
    let (code, body) = server.import("imp", "A\n  B  \r\n\nA\nC\n").await;
    assert_eq!(
        (code, body["imported"].as_u64(), body["duplicates"].as_u64()),
        (200, Some(3), Some(1))
    );
    let (code, body) = server.import("imp", "C\nD\n").await;
    assert_eq!(
        (body["imported"].as_u64(), body["duplicates"].as_u64()),
        (Some(1), Some(1)),
        "{code} {body}"
    );
    let (code, body) = server.import("imp", b"E\n\xff\xfe\n".to_vec()).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("bad_import")),
        "{body}"
    );
    let long = format!("F\n{}\n", "x".repeat(1025));
    let (code, body) = server.import("imp", long).await;
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("line 2"),
        "{body}"
    );
    let huge = vec![b'k'; 17 * 1024 * 1024];
    let (code, body) = server.import("imp", huge).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    assert_eq!(
        server.stock("imp").await,
        (4, 0, 0),
        "refused imports added nothing"
    );
    let (code, _) = server.import("nope", "A\n").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("p", 100, &keys("P", 2)).await;
    let post = |body: String| {
        server
            .http
            .post(server.url("/api/v1/orders"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            r#"{"sku":"nope","quantity":1,"contact":"a@b","channel":"epay"}"#,
            404,
            "unknown_sku",
        ),
        (
            r#"{"sku":"p","quantity":0,"contact":"a@b","channel":"epay"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"sku":"p","quantity":-1,"contact":"a@b","channel":"epay"}"#,
            400,
            "bad_json",
        ),
        (
            r#"{"sku":"p","quantity":1,"contact":"","channel":"epay"}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"sku":"p","quantity":1,"contact":"a@b","channel":"bitcoin"}"#,
            400,
            "unknown_channel",
        ),
        (
            r#"{"sku":"p/../x","quantity":1,"contact":"a@b","channel":"epay"}"#,
            400,
            "invalid_sku",
        ),
        (r#"{"sku":"p","#, 400, "bad_json"),
    ];
    for (body, code, error) in cases {
        let (got, answer) = answer(post(body.to_owned()).await.unwrap()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (code, Some(error)),
            "{body} -> {answer}"
        );
        assert!(answer["message"].is_string());
    }
    let (code, _) = answer(post("x".repeat(100_000)).await.unwrap()).await;
    assert_eq!(code, 413);
    let r = server
        .http
        .post(server.url("/api/v1/admin/products"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = server
        .http
        .post(server.url("/api/v1/admin/products"))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (code, body) = server
        .admin_post(
            "/api/v1/admin/products",
            json!({"sku":"p","name":"again","price_cents":1,"currency":"CNY"}),
        )
        .await;
    assert_eq!((code, body["error"].as_str()), (409, Some("sku_exists")));
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/products",
            json!({"sku":"q","name":"x","price_cents":1.5,"currency":"CNY"}),
        )
        .await;
    assert_eq!(code, 400, "no floating-point money");
    assert_eq!(
        server.stock("p").await,
        (2, 0, 0),
        "nothing reserved by refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("idem", 100, &keys("I", 3)).await;
    let send = |quantity: u32| server.order_keyed("idem", quantity, "a@b", "k-1");
    let (c1, first) = send(1).await;
    let (c2, second) = send(1).await;
    assert_eq!((c1, c2), (201, 201));
    assert_eq!(first, second);
    let (c3, other) = send(2).await;
    assert_eq!(
        (c3, other["error"].as_str()),
        (422, Some("idempotency_mismatch"))
    );
    assert_eq!(server.stock("idem").await, (2, 1, 0), "reserved once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_mismatched_notifies_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("f", 1000, &keys("F", 2)).await;
    let (_, order) = server.order("f", 1).await;
    let forged = [
        epay_params(&order, PID, "not-the-key", None),
        epay_params(&order, "9999", KEY, None),
        epay_params(&order, PID, KEY, Some("0.01")),
        epay_params(&order, PID, KEY, Some("10.001")),
    ];
    for params in &forged {
        assert_eq!(server.notify(params).await, (400, "fail".into()));
    }
    let mut tampered = epay_params(&order, PID, KEY, None);
    tampered[1].1 = "other-trade".into();
    assert_eq!(server.notify(&tampered).await, (400, "fail".into()));
    let (_, view) = server.lookup(&order).await;
    assert_eq!(view["status"], "awaiting_payment");
    assert_eq!(server.stock("f").await, (1, 1, 0));
    // "10", "10.0" and "10.00" are the same amount.
    assert_eq!(
        server
            .notify(&epay_params(&order, PID, KEY, Some("10")))
            .await,
        (200, "success".into())
    );
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("panshi_payment_notifies_total"),
        "rejections are counted"
    );
}

/// Postmortem (fuzzing): the "already paid" shortcut ran before the amount check, so a
/// correctly signed notify with another amount got `success` once the order was paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_refuses_a_signed_notify_with_another_amount() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.product("p", 1000, &keys("P", 2)).await;
    let (_, order) = server.order("p", 1).await;
    assert_eq!(server.pay(&order).await, (200, "success".into()));
    for money in ["99", "0.01", "10.01", "9.99"] {
        assert_eq!(
            server
                .notify(&epay_params(&order, PID, KEY, Some(money)))
                .await,
            (400, "fail".into()),
            "money={money} on a paid order of 10.00"
        );
    }
    // The true replay is still acknowledged, in any spelling of the amount.
    for money in [None, Some("10"), Some("10.0")] {
        assert_eq!(
            server.notify(&epay_params(&order, PID, KEY, money)).await,
            (200, "success".into())
        );
    }
    assert_eq!(server.stock("p").await, (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_orders_expire_and_late_payments_are_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[("PANSHI_ORDER_TTL_SECS", "1")]);
    server.product("late", 500, &keys("L", 1)).await;
    let (_, first) = server.order("late", 1).await;
    let mut live = Live::connect(&server, &first).await;
    assert_eq!(live.status().await, "awaiting_payment");
    assert_eq!(live.status().await, "expired");
    assert!(matches!(live.next().await, Frame::Closed(Some(1000))));
    assert_eq!(server.stock("late").await, (1, 0, 0), "the key went back");

    // Paid after expiry while stock remains: fulfilled.
    assert_eq!(server.pay(&first).await, (200, "success".into()));
    let (_, view) = server.lookup(&first).await;
    assert_eq!(
        (
            view["status"].as_str(),
            view["cards"].as_array().unwrap().len()
        ),
        (Some("delivered"), 1)
    );

    // Paid after expiry with the stock gone: manual review, visible to operators.
    server.import("late", "L-NEW").await;
    let (_, second) = server.order("late", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, third) = server.order("late", 1).await;
    assert_eq!(
        third["status"], "awaiting_payment",
        "the lapsed key was sold on"
    );
    assert_eq!(server.pay(&second).await, (200, "success".into()));
    let (_, view) = server.lookup(&second).await;
    assert_eq!(view["status"], "manual_review");
    let (_, queue) = server.admin_get("/api/v1/admin/manual-review").await;
    assert_eq!(queue[0]["order_id"], second["order_id"]);
    assert_eq!(
        server.pay(&second).await,
        (200, "success".into()),
        "a replay is still acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_state_survives_a_restart_and_audits_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.product("keep", 200, &keys("K", 4)).await;
    let (_, paid) = server.order("keep", 1).await;
    let (_, waiting) = server.order("keep", 2).await;
    assert_eq!(server.pay(&paid).await.0, 200);
    server.restart();
    let (_, view) = server.lookup(&paid).await;
    assert_eq!(view["status"], "delivered");
    assert_eq!(server.stock("keep").await, (1, 2, 1));
    // The waiting order's actor came back: it can still be paid.
    assert_eq!(server.pay(&waiting).await, (200, "success".into()));
    assert_eq!(server.stock("keep").await, (1, 0, 3));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    assert!(
        report
            .trim_end()
            .ends_with("audit: 2 orders, 4 cards, 0 violations"),
        "{report}"
    );
}

/// A graceful stop leaves sled holding everything the log does, even when the last entry
/// changed nothing (the blank entry a leader writes when it takes office): `audit` has
/// nothing to note. (It noted "sled is 1 entries behind the log (an unclean stop ...)".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_nothing_for_the_audit_to_note() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    assert!(!report.contains("note:"), "{report}");
}
