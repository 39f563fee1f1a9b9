//! Outgoing calls to `https://` addresses speak TLS: a Stripe API base and a reseller's
//! webhook URL given as https each reach a local listener with a TLS ClientHello (a
//! handshake record: first byte 0x16, version major 3). The listener then hangs up, so the
//! calls fail as against an unreachable gateway: the order falls back to the manual queue.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A listener that reports the first bytes of every connection, then closes it.
async fn first_bytes_listener() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = [0u8; 3];
            if socket.read_exact(&mut head).await.is_ok() {
                let _ = sender.send(head.to_vec()).await;
            }
        }
    });
    (port, receiver)
}

async fn client_hello(receiver: &mut mpsc::Receiver<Vec<u8>>, what: &str) {
    let head = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no connection within 10 s"))
        .unwrap();
    assert_eq!(
        (head[0], head[1]),
        (0x16, 0x03),
        "{what}: a TLS handshake record, not plain HTTP: {head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_gateways_and_webhooks_are_called_over_tls() {
    let (port, mut hellos) = first_bytes_listener().await;
    let https = format!("https://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_STRIPE__API_BASE", https.as_str()),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_test_0123456789abcdef"),
            ("PANSHI_STRIPE__WEBHOOK_SECRET", "whsec_test_0123456789"),
        ],
    );
    server.product("tls", 100, &keys("TLS", 3)).await;
    let (code, order) = server.order_via("tls", 1, "t@example.com", "stripe").await;
    client_hello(&mut hellos, "Stripe session create").await;
    assert_eq!(code, 201, "{order}");
    assert_eq!(order["payment"]["channel"], "manual", "{order}");

    let (code, reseller) = server
        .admin_post(
            "/api/v1/admin/resellers",
            json!({"name": "Secure", "webhook_url": format!("{https}/hook")}),
        )
        .await;
    assert_eq!(code, 201, "{reseller}");
    let id = reseller["reseller_id"].as_str().unwrap();
    let (code, _) = server
        .admin_post(
            &format!("/api/v1/admin/resellers/{id}/balance"),
            json!({"amount_cents": 1_000, "note": "test"}),
        )
        .await;
    assert_eq!(code, 200);
    let r = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(reseller["api_key"].as_str().unwrap())
        .json(&json!({"sku": "tls", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let (code, bought) = answer(r).await;
    assert_eq!(code, 201, "{bought}");
    client_hello(&mut hellos, "webhook delivery").await;
}

/// Operator alerts go to https receivers too: an alert webhook and a Telegram Bot API base
/// given as https each get a TLS ClientHello when a low-stock alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_alert_webhooks_and_telegram_are_called_over_tls() {
    let (port, mut hellos) = first_bytes_listener().await;
    let https = format!("https://127.0.0.1:{port}");
    let hook = format!("{https}/alerts");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_ALERTS__EVALUATION_INTERVAL_SECS", "1"),
            ("PANSHI_ALERTS__WEBHOOK_URL", hook.as_str()),
            ("PANSHI_ALERTS__TELEGRAM__BOT_TOKEN", "1:tls"),
            ("PANSHI_ALERTS__TELEGRAM__CHAT_ID", "1"),
            ("PANSHI_ALERTS__TELEGRAM__API_BASE", https.as_str()),
            ("PANSHI_LOG__LEVEL", "error"),
        ],
    );
    server.product("tls-low", 100, &keys("LOW", 1)).await;
    client_hello(&mut hellos, "alert webhook").await;
    client_hello(&mut hellos, "Telegram sendMessage").await;
}
