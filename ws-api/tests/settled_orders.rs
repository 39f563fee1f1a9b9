//! Settled orders leave memory: a snapshot (here the one an online backup takes) archives
//! them into a cold table, the node's memory keeps only what has not settled, and after a
//! kill -9 every archived order is still looked up, searched, paid late (an expired order
//! comes back, is delivered, and stays delivered) and audited clean.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BOUGHT: usize = 20;

/// A gauge's value in the Prometheus text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the evaluator published `panshi_orders_in_memory` at `want` (with the
/// total at `orders`).
async fn wait_in_memory(server: &Server, orders: f64, want: f64) {
    let started = Instant::now();
    loop {
        let metrics = server.get_text("/metrics").await;
        let seen = (
            gauge(&metrics, "panshi_orders"),
            gauge(&metrics, "panshi_orders_in_memory"),
        );
        if seen == (Some(orders), Some(want)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "orders, in memory: {seen:?}, want ({orders}, {want})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_status(server: &Server, order: &serde_json::Value, status: &str) {
    let started = Instant::now();
    while server.lookup(order).await.1["status"] != status {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_orders_leave_memory_and_are_served_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PANSHI_ORDER_TTL_SECS", "1"),
        ("PANSHI_ALERTS__EVALUATION_INTERVAL_SECS", "1"),
    ];
    let mut server = Server::start_with(dir.path(), &env);
    server.product("arc", 500, &keys("A", BOUGHT + 5)).await;
    let mut bought = Vec::new();
    for _ in 0..BOUGHT {
        let (_, order) = server.order("arc", 1).await;
        assert_eq!(server.pay(&order).await, (200, "success".into()));
        bought.push(order);
    }
    let (_, lapsed) = server.order("arc", 1).await;
    wait_status(&server, &lapsed, "expired").await;
    let total = (BOUGHT + 1) as f64;
    wait_in_memory(&server, total, total).await;

    // The backup's snapshot archives every settled order.
    let backup = reqwest::Client::new()
        .get(server.url("/api/v1/admin/backup"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(backup.status(), 200);
    assert!(!backup.bytes().await.unwrap().is_empty());
    let tables: Vec<_> = std::fs::read_dir(dir.path().join("cold"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(tables.len(), 1, "{tables:?}");
    assert!(tables[0].extension().is_some_and(|e| e == "cold"));
    wait_in_memory(&server, total, 0.0).await;

    server.kill9();
    server.relaunch();
    for order in &bought {
        let (code, view) = server.lookup(order).await;
        assert_eq!(code, 200);
        assert_eq!(view["status"], "delivered", "{view}");
        assert_eq!(view["cards"].as_array().unwrap().len(), 1, "{view}");
    }
    let (code, page) = server
        .admin_get("/api/v1/admin/orders?status=delivered&limit=100")
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["total"], BOUGHT as u64, "{page}");

    // Paid late: the archived, expired order comes back into memory and is delivered.
    assert_eq!(server.lookup(&lapsed).await.1["status"], "expired");
    assert_eq!(server.pay(&lapsed).await, (200, "success".into()));
    wait_status(&server, &lapsed, "delivered").await;
    wait_in_memory(&server, total, 1.0).await;
    assert_eq!(server.stock("arc").await, (4, 0, BOUGHT as u64 + 1));

    // And so it stays across another start: replayed onto the archived, expired copy.
    server.kill9();
    server.relaunch();
    let (_, view) = server.lookup(&lapsed).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(view["cards"].as_array().unwrap().len(), 1, "{view}");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    assert!(
        report.trim_end().ends_with(&format!(
            "audit: {} orders, {} cards, 0 violations",
            BOUGHT + 1,
            BOUGHT + 5
        )),
        "{report}"
    );
}
