//! Payments: forgery must be impossible whatever the configuration (issue 15, items 1-5).
//! Real `panshi serve` processes, real sockets, real signatures.

mod common;

use common::*;
use serde_json::{json, Value};

const STRIPE_SECRET: &str = "whsec_forgery_test_0123";
const EPUSDT_TOKEN: &str = "epusdt-forgery-token-0";
/// Nothing listens here: gateway calls fail at once.
const DEAD_GATEWAY: &str = "http://127.0.0.1:9";

/// Every channel configured; Stripe and epusdt cannot create payments (dead gateways), so
/// `card` and `usdt` orders land in the manual queue.
fn all_channels(data: &std::path::Path) -> Server {
    Server::start_with(
        data,
        &[
            ("PANSHI_STRIPE__API_BASE", DEAD_GATEWAY),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_forgery_test_0123456789"),
            ("PANSHI_STRIPE__WEBHOOK_SECRET", STRIPE_SECRET),
            ("PANSHI_EPUSDT__GATEWAY_URL", DEAD_GATEWAY),
            ("PANSHI_EPUSDT__TOKEN", EPUSDT_TOKEN),
        ],
    )
}

async fn stripe_post(server: &Server, body: &str) -> (u16, String) {
    let r = server
        .http
        .post(server.url("/api/v1/payments/stripe/webhook"))
        .header(
            "Stripe-Signature",
            stripe_signature(body, unix_now_secs(), STRIPE_SECRET),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn epusdt_post(server: &Server, body: String) -> (u16, String) {
    let r = server
        .http
        .post(server.url("/api/v1/payments/epusdt/notify"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn status_of(server: &Server, order: &Value) -> Value {
    let (code, view) = server.lookup(order).await;
    assert_eq!(code, 200, "{view}");
    view
}

/// Postmortem: `PANSHI_EPAY__KEY=` (an unset variable in a service file) made the Epay
/// signature md5(params), and forged callbacks delivered orders on all three channels.
#[test]
fn an_empty_or_short_gateway_secret_refuses_to_start() {
    let epay = |key: &'static str| {
        vec![
            ("PANSHI_EPAY__PID", "1000"),
            ("PANSHI_EPAY__KEY", key),
            ("PANSHI_EPAY__GATEWAY_URL", DEAD_GATEWAY),
        ]
    };
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (epay(""), "epay.key"),
        (epay("fifteen-bytes!!"), "epay.key"),
        (
            vec![("PANSHI_EPAY__PID", "1000"), ("PANSHI_EPAY__KEY", KEY)],
            "epay.gateway_url",
        ),
        (
            vec![
                ("PANSHI_EPUSDT__GATEWAY_URL", DEAD_GATEWAY),
                ("PANSHI_EPUSDT__TOKEN", ""),
            ],
            "epusdt.token",
        ),
        (
            vec![("PANSHI_STRIPE__WEBHOOK_SECRET", "")],
            "stripe.webhook_secret",
        ),
        (
            vec![("PANSHI_STRIPE__SECRET_KEY", "sk_short")],
            "stripe.secret_key",
        ),
    ];
    for (env, setting) in cases {
        let data = tempfile::tempdir().unwrap();
        let said = refused_start(data.path(), &env, &[]);
        assert!(said.contains(setting), "{setting}: {said}");
        assert!(
            !said.contains("fifteen-bytes"),
            "a secret is never printed: {said}"
        );
    }
}

/// Postmortem: a valid Stripe event paid an order created on Epay, and an epusdt callback
/// paid an order in the manual queue. Only the order's own channel (or its method's
/// fallbacks, or an operator) may pay it; anything else goes to manual review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_only_counts_from_the_orders_own_channel_or_its_fallbacks() {
    let data = tempfile::tempdir().unwrap();
    let mut server = all_channels(data.path());
    server.product("bound", 1000, &keys("B", 5)).await;

    // Created on Epay, paid by a genuine Stripe event: reviewed, never delivered.
    let (code, on_epay) = server.order("bound", 1).await;
    assert_eq!(
        (code, on_epay["payment"]["channel"].as_str()),
        (201, Some("epay"))
    );
    let (code, said) = stripe_post(&server, &stripe_paid_event("evt_a", "cs_a", &on_epay)).await;
    assert_eq!(code, 200, "{said}");
    let view = status_of(&server, &on_epay).await;
    assert_eq!(view["status"], "manual_review", "{view}");
    assert_eq!(view["cards"], json!([]));
    // Its key went back to the pool.
    assert_eq!(server.stock("bound").await, (5, 0, 0));

    // In the manual queue for `card` (Stripe down): epusdt is no channel of `card`.
    let (code, manual) = server.order_via("bound", 1, "m@example.com", "card").await;
    assert_eq!(
        (code, manual["payment"]["channel"].as_str()),
        (201, Some("manual"))
    );
    let (code, said) = epusdt_post(
        &server,
        epusdt_callback_with(&manual, EPUSDT_TOKEN, 2, "E1"),
    )
    .await;
    assert_eq!((code, said.as_str()), (200, "ok"));
    assert_eq!(status_of(&server, &manual).await["status"], "manual_review");

    // Stripe is `card`'s own channel: its payment delivers the manual-queue order.
    let (code, fallback) = server.order_via("bound", 1, "f@example.com", "card").await;
    assert_eq!(code, 201, "{fallback}");
    let (code, said) = stripe_post(&server, &stripe_paid_event("evt_c", "cs_c", &fallback)).await;
    assert_eq!(code, 200, "{said}");
    let view = status_of(&server, &fallback).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(view["cards"].as_array().unwrap().len(), 1);
    assert_eq!(server.stock("bound").await, (4, 0, 1));

    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// A channel that is not configured has no callback route at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_routes_exist_only_for_configured_channels() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    for path in [
        "/api/v1/payments/stripe/webhook",
        "/api/v1/payments/epusdt/notify",
    ] {
        let r = server
            .http
            .post(server.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    let r = server
        .http
        .post(server.url("/api/v1/payments/epay/notify"))
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "the configured channel answers");
}

/// Postmortem: with `demo` on beside real Epay settings, the demo gateway signed a
/// buyer's own payment URL with the real merchant key and paid it for free.
#[test]
fn demo_mode_refuses_real_gateways_and_public_addresses() {
    let data = tempfile::tempdir().unwrap();
    let said = refused_start(
        data.path(),
        &[
            ("PANSHI_EPAY__PID", PID),
            ("PANSHI_EPAY__KEY", KEY),
            ("PANSHI_EPAY__GATEWAY_URL", DEAD_GATEWAY),
        ],
        &["--demo"],
    );
    assert!(said.contains("demo mode refuses"), "{said}");
    let said = refused_start(
        data.path(),
        &[("PANSHI_STRIPE__WEBHOOK_SECRET", STRIPE_SECRET)],
        &["--demo"],
    );
    assert!(said.contains("stripe"), "{said}");
    let said = refused_start(data.path(), &[], &["--demo", "--listen", "0.0.0.0:0"]);
    assert!(said.contains("loopback"), "{said}");
}

/// On loopback and alone, demo mode starts and says loudly that it takes no real money;
/// its gateway signs with a key of its own run, not a well-known one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_says_it_is_a_demo_and_signs_with_its_own_key() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_full(data.path(), &[], &["--demo"]);
    let (code, order) = server.order("steam-10", 1).await;
    assert_eq!(code, 201, "{order}");
    let url = order["payment"]["url"].as_str().unwrap();
    assert!(url.contains("/demo/gateway/submit.php"), "{url}");
    // The key an older version used for every demo is no key here.
    let (code, said) = server
        .notify(&epay_params(&order, "1000", "demo-merchant-key", None))
        .await;
    assert_eq!((code, said.as_str()), (400, "fail"));
    let page = server.get_text(&url[url.find("/demo/").unwrap()..]).await;
    assert!(page.contains("DEMO"), "{page}");
}

/// Postmortem: an epusdt callback whose status is not 2 (paid) was answered `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epusdt_callback_that_pays_nothing_is_not_ok() {
    let data = tempfile::tempdir().unwrap();
    let server = all_channels(data.path());
    server.product("unpaid", 1000, &keys("U", 2)).await;
    let (_, order) = server.order_via("unpaid", 1, "u@example.com", "usdt").await;
    let (code, said) =
        epusdt_post(&server, epusdt_callback_with(&order, EPUSDT_TOKEN, 1, "E9")).await;
    assert_eq!((code, said.as_str()), (400, "fail"));
    assert_eq!(
        status_of(&server, &order).await["status"],
        "awaiting_payment"
    );
}

/// Postmortem: a second, different paid Stripe event for a paid order got 400, so Stripe
/// retried it for days. It is acknowledged (nothing changes) and operators are told to
/// refund it, durably, in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stripe_payment_is_acknowledged_and_flagged_for_refund() {
    let data = tempfile::tempdir().unwrap();
    let server = all_channels(data.path());
    server.product("twice", 1000, &keys("T", 2)).await;
    let (_, order) = server.order_via("twice", 1, "t@example.com", "card").await;
    let (code, said) = stripe_post(&server, &stripe_paid_event("evt_1", "cs_1", &order)).await;
    assert_eq!(code, 200, "{said}");
    let delivered = status_of(&server, &order).await;
    assert_eq!(delivered["status"], "delivered");
    let (code, said) = stripe_post(&server, &stripe_paid_event("evt_2", "cs_2", &order)).await;
    assert_eq!(code, 200, "{said}");
    assert_eq!(
        status_of(&server, &order).await["cards"],
        delivered["cards"]
    );
    let mut trail = Value::Null;
    for _ in 0..100 {
        trail = server.admin_get("/api/v1/admin/audit").await.1;
        if trail.to_string().contains("refund_second_payment") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = trail.to_string();
    assert!(
        text.contains("refund_second_payment") && text.contains("cs_2"),
        "{text}"
    );
}
