//! Reconciliation: an order paid at the gateway whose notify never comes is found by
//! querying the gateway (Epay `api.php`), before its expiry and in the last query before
//! its keys are released; a failing gateway opens the channel's circuit breaker.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal Epay query endpoint: `api.php?act=order&...&out_trade_no=X` answers paid for
/// orders in `paid`, unpaid otherwise; with `failing` every answer is HTTP 500.
#[derive(Clone, Default)]
struct FakeGateway {
    paid: Arc<Mutex<HashMap<String, String>>>,
    failing: Arc<Mutex<bool>>,
    queries: Arc<Mutex<u64>>,
}

impl FakeGateway {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    let answer = this.answer(&request);
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    fn answer(&self, request: &str) -> String {
        *self.queries.lock() += 1;
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let order = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("out_trade_no="))
            .unwrap_or("")
            .to_owned();
        if *self.failing.lock() {
            return "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into();
        }
        let body = match self.paid.lock().get(&order) {
            Some(money) => format!(
                r#"{{"code":1,"status":1,"trade_no":"G{order}","out_trade_no":"{order}","money":"{money}"}}"#
            ),
            None => format!(
                r#"{{"code":1,"status":0,"trade_no":"G{order}","out_trade_no":"{order}","money":"0"}}"#
            ),
        };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

async fn wait_for_status(
    server: &Server,
    order: &serde_json::Value,
    want: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (_, view) = server.lookup(order).await;
        let status = view["status"].as_str().unwrap_or("").to_owned();
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notify_is_recovered_by_querying_the_gateway() {
    let gateway = FakeGateway::default();
    let url = gateway.start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &[("PANSHI_EPAY__GATEWAY_URL", url.as_str())]);
    server.product("rec", 990, &keys("REC", 2)).await;
    let (_, order) = server.order("rec", 1).await;
    // The buyer pays; the gateway's notify is lost. The first query comes 10 s in.
    gateway.paid.lock().insert(
        order["order_id"].as_str().unwrap().to_owned(),
        "9.90".into(),
    );
    let status = wait_for_status(&server, &order, "delivered", Duration::from_secs(25)).await;
    assert_eq!(status, "delivered");
    // The notify that finally arrives changes nothing.
    assert_eq!(server.pay(&order).await, (200, "success".into()));
    assert_eq!(server.stock("rec").await, (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_asked_once_more_before_keys_are_released() {
    let gateway = FakeGateway::default();
    let url = gateway.start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_EPAY__GATEWAY_URL", url.as_str()),
            ("PANSHI_ORDER_TTL_SECS", "2"),
        ],
    );
    server.product("last", 500, &keys("LAST", 2)).await;
    let (_, paid) = server.order("last", 1).await;
    let (_, unpaid) = server.order("last", 1).await;
    gateway
        .paid
        .lock()
        .insert(paid["order_id"].as_str().unwrap().to_owned(), "5.00".into());
    assert_eq!(
        wait_for_status(&server, &paid, "delivered", Duration::from_secs(10)).await,
        "delivered"
    );
    assert_eq!(
        wait_for_status(&server, &unpaid, "expired", Duration::from_secs(10)).await,
        "expired"
    );
    assert_eq!(server.stock("last").await, (1, 0, 1));
    assert!(
        *gateway.queries.lock() >= 2,
        "both orders were queried before expiring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gateway_opens_the_breaker_and_orders_still_expire() {
    let gateway = FakeGateway::default();
    *gateway.failing.lock() = true;
    let url = gateway.start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_EPAY__GATEWAY_URL", url.as_str()),
            ("PANSHI_ORDER_TTL_SECS", "1"),
            ("PANSHI_BREAKER__CONSECUTIVE_FAILURES_MAX", "3"),
        ],
    );
    server.product("down", 100, &keys("DOWN", 6)).await;
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(server.order("down", 1).await.1);
    }
    for order in &orders {
        assert_eq!(
            wait_for_status(&server, order, "expired", Duration::from_secs(10)).await,
            "expired"
        );
    }
    let (code, health) = server.admin_get("/api/v1/ops/channels").await;
    assert_eq!(code, 200, "{health}");
    let epay = &health["channels"][0];
    assert_eq!(
        (epay["channel"].as_str(), epay["breaker"].as_str()),
        (Some("epay"), Some("open")),
        "{health}"
    );
    // Queries already in flight when the breaker opened may still land; after that, an
    // open breaker lets no call through.
    let before = *gateway.queries.lock();
    assert!(before >= 3, "{before} queries");
    let (_, late) = server.order("down", 1).await;
    let status = wait_for_status(&server, &late, "expired", Duration::from_secs(10)).await;
    assert_eq!(status, "expired");
    assert_eq!(
        *gateway.queries.lock(),
        before,
        "the open breaker stopped further calls"
    );
    assert_eq!(server.stock("down").await, (6, 0, 0));
}
