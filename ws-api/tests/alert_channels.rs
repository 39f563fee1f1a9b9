//! Operator alerts leave the shop on every configured channel: a Telegram bot (against a
//! local stand-in of the Bot API that fails the first call, so the retry is exercised), a
//! JSON webhook, and the operators' e-mail through a real SMTP server (aiosmtpd). The alert
//! here is `stock_low`, which fires as soon as a product is stocked below `stock_min`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

/// One alert post as a stand-in saw it.
#[derive(Debug)]
struct Post {
    path: String,
    body: Value,
}

/// A minimal HTTP receiver: answers the first `failures` requests 502, then
/// `{"ok":true,...}` (the Bot API's shape), and reports every request it read.
async fn stand_in(failures: usize) -> (String, mpsc::Receiver<Post>) {
    let (sender, receiver) = mpsc::channel(64);
    let answered = AtomicUsize::new(0);
    let base = stand_in_with(Arc::new(move |seen: &Seen| {
        let path = seen.line.split(' ').nth(1).unwrap_or_default().to_owned();
        let body = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
        let _ = sender.try_send(Post { path, body });
        let (status, body) = if answered.fetch_add(1, Ordering::SeqCst) < failures {
            (502, "")
        } else {
            (200, r#"{"ok":true,"result":{"message_id":1}}"#)
        };
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }))
    .await;
    (base, receiver)
}

async fn next(receiver: &mut mpsc::Receiver<Post>, what: &str) -> Post {
    tokio::time::timeout(Duration::from_secs(20), receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 20 s"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_alert_reaches_telegram_a_webhook_and_the_operators_mail() {
    let (telegram, mut bot_calls) = stand_in(1).await;
    let (webhook, mut hooks) = stand_in(0).await;
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let sink = Sink::start(&dir.path().join("sink"), smtp_port, false);
    let hook_url = format!("{webhook}/alerts");
    let smtp_port = smtp_port.to_string();
    let server = Server::start_with(
        &dir.path().join("data"),
        &[
            ("PANSHI_ALERTS__EVALUATION_INTERVAL_SECS", "1"),
            ("PANSHI_ALERTS__TELEGRAM__BOT_TOKEN", "123456:TEST-token"),
            ("PANSHI_ALERTS__TELEGRAM__CHAT_ID", "-1001"),
            ("PANSHI_ALERTS__TELEGRAM__API_BASE", telegram.as_str()),
            ("PANSHI_ALERTS__WEBHOOK_URL", hook_url.as_str()),
            (
                "PANSHI_ALERTS__EMAIL_TO",
                "ops@example.com, owner@example.com",
            ),
            ("PANSHI_SMTP__HOST", "127.0.0.1"),
            ("PANSHI_SMTP__PORT", smtp_port.as_str()),
            ("PANSHI_SMTP__FROM", "shop@shop.example"),
            ("PANSHI_SMTP__TLS", "none"),
            // Only the alert under test: a nearly full disk on the test machine must not
            // raise `disk_space_low` first and take the Bot API's one 502.
            ("PANSHI_ALERTS__DISK_FREE_BYTES_MIN", "0"),
            ("PANSHI_LOG__LEVEL", "error"),
        ],
    );
    server.product("low", 100, &keys("LOW", 2)).await;

    // The Bot API's first answer is 502: the message is sent again.
    let first = next(&mut bot_calls, "Telegram").await;
    let again = next(&mut bot_calls, "Telegram retry").await;
    for call in [&first, &again] {
        assert_eq!(call.path, "/bot123456:TEST-token/sendMessage");
        assert_eq!(call.body["chat_id"], "-1001", "{:?}", call.body);
        let text = call.body["text"].as_str().unwrap();
        assert!(text.contains("stock_low") && text.contains("low"), "{text}");
    }

    let hook = next(&mut hooks, "webhook").await;
    assert_eq!(hook.path, "/alerts");
    assert_eq!(hook.body["rule"], "stock_low", "{:?}", hook.body);
    assert_eq!(hook.body["subject"], "low");
    assert_eq!(hook.body["event"], "fired");

    let mails = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 1, "one alert, one mail: {mails:?}");
    let mut to: Vec<&str> = mails[0]["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    to.sort();
    assert_eq!(to, ["ops@example.com", "owner@example.com"], "{}", mails[0]);
    assert!(mails[0]["subject"].as_str().unwrap().contains("stock_low"));
}

/// A payment that lands after its reservation lapsed and the stock is gone puts the order in
/// manual review; the operators get an e-mail saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_review_order_is_mailed_to_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let sink = Sink::start(&dir.path().join("sink"), smtp_port, false);
    let smtp_port = smtp_port.to_string();
    let server = Server::start_with(
        &dir.path().join("data"),
        &[
            ("PANSHI_ALERTS__EVALUATION_INTERVAL_SECS", "1"),
            ("PANSHI_ALERTS__EMAIL_TO", "ops@example.com"),
            ("PANSHI_ORDER_TTL_SECS", "1"),
            ("PANSHI_SMTP__HOST", "127.0.0.1"),
            ("PANSHI_SMTP__PORT", smtp_port.as_str()),
            ("PANSHI_SMTP__FROM", "shop@shop.example"),
            ("PANSHI_SMTP__TLS", "none"),
            ("PANSHI_LOG__LEVEL", "error"),
        ],
    );
    server.product("review", 100, &keys("REVIEW", 1)).await;
    let (code, lapsed) = server.order_as("review", 1, "13800138000").await;
    assert_eq!(code, 201, "{lapsed}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.lookup(&lapsed).await.1["status"] != "expired" {
        assert!(
            std::time::Instant::now() < deadline,
            "the order never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, other) = server.order_as("review", 1, "13900139000").await;
    assert_eq!(code, 201, "{other}");
    assert_eq!(server.pay(&other).await.1, "success");
    assert_eq!(server.pay(&lapsed).await.1, "success");
    assert_eq!(server.lookup(&lapsed).await.1["status"], "manual_review");

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = sink.messages();
        let review = messages.iter().find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.contains("delivery_overdue"))
        });
        if let Some(message) = review {
            assert_eq!(message["rcpt_tos"][0], "ops@example.com");
            let text = message["text"].as_str().unwrap();
            assert!(text.contains("1 orders in manual review"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no manual-review notice: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
