//! Settled orders leave memory: a snapshot (here the one an online backup takes) archives
//! them into a cold table with the keys they bought, the node's memory keeps only what has
//! not settled, and after a kill -9 every archived order is still looked up with its key,
//! searched, paid late (an expired order comes back, is delivered, and stays delivered) and
//! audited clean; its key is listed to operators and never imported again. sled, which
//! mirrors memory, is rebuilt without the archived orders' rows while the node runs (here
//! from any size), and lookups read them from their table.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BOUGHT: usize = 100;

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
    wait_gauges(
        server,
        ("panshi_orders", orders),
        ("panshi_orders_in_memory", want),
    )
    .await;
}

/// Waits until the evaluator published both gauges at their values.
async fn wait_gauges(server: &Server, total: (&str, f64), in_memory: (&str, f64)) {
    let (orders, want) = (total.1, in_memory.1);
    let started = Instant::now();
    loop {
        let metrics = server.get_text("/metrics").await;
        let seen = (gauge(&metrics, total.0), gauge(&metrics, in_memory.0));
        if seen == (Some(orders), Some(want)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}, {}: {seen:?}, want ({orders}, {want})",
            total.0,
            in_memory.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until sled was rebuilt while the node runs.
async fn wait_rebuilt(server: &Server) {
    let started = Instant::now();
    loop {
        let metrics = server.get_text("/metrics").await;
        if gauge(&metrics, "panshi_sled_rebuilds_total").is_some_and(|n| n >= 1.0) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never rebuilt");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        ("PANSHI_STORAGE__SLED_REBUILD_MIN_BYTES", "0"),
    ];
    let mut server = Server::start_with(dir.path(), &env);
    let stock = keys("A", BOUGHT + 5);
    server.product("arc", 500, &stock).await;
    let mut bought = Vec::new();
    let mut delivered = Vec::new();
    for _ in 0..BOUGHT {
        let (_, order) = server.order("arc", 1).await;
        assert_eq!(server.pay(&order).await, (200, "success".into()));
        wait_status(&server, &order, "delivered").await;
        delivered.push(server.lookup(&order).await.1["cards"][0].clone());
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
    wait_rebuilt(&server).await;
    for (order, key) in bought.iter().zip(&delivered) {
        let (code, view) = server.lookup(order).await;
        assert_eq!((code, &view["cards"][0]), (200, key), "{view}");
    }
    // The sold keys left with their orders; the unsold (the lapsed order's too) stay.
    let keys_total = (BOUGHT + 5) as f64;
    wait_gauges(
        &server,
        ("panshi_keys", keys_total),
        ("panshi_keys_in_memory", 5.0),
    )
    .await;

    server.kill9();
    server.relaunch();
    for (order, key) in bought.iter().zip(&delivered) {
        let (code, view) = server.lookup(order).await;
        assert_eq!(code, 200);
        assert_eq!(view["status"], "delivered", "{view}");
        assert_eq!(view["cards"].as_array().unwrap().len(), 1, "{view}");
        assert_eq!(&view["cards"][0], key, "the key it was delivered");
    }
    // Operators see the archived keys as sold, with their orders.
    let (code, sold) = server
        .admin_get("/api/v1/admin/products/arc/cards?status=sold&limit=100")
        .await;
    assert_eq!(
        (code, &sold["total"]),
        (200, &serde_json::json!(BOUGHT)),
        "{sold}"
    );
    let listed: std::collections::HashMap<&serde_json::Value, &serde_json::Value> = sold["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| (&line["key"], &line["order_id"]))
        .collect();
    for (order, key) in bought.iter().zip(&delivered) {
        assert_eq!(
            listed.get(key),
            Some(&&order["order_id"]),
            "{key} in {sold}"
        );
    }
    // A sold, archived key imported again is a duplicate, as it was in memory.
    let sold_key = delivered[0].as_str().unwrap().to_owned();
    let (code, body) = server.import("arc", sold_key).await;
    assert_eq!(
        (code, &body["imported"], &body["duplicates"]),
        (200, &serde_json::json!(0), &serde_json::json!(1)),
        "{body}"
    );
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
    // sled holds the order in memory and none of those archived.
    let db = storage::sled_dir::open_sled(dir.path()).unwrap();
    let in_sled = |order: &serde_json::Value| {
        let id = engine::OrderId::parse(order["order_id"].as_str().unwrap()).unwrap();
        storage::rows::read_order(&db, &id).unwrap().is_some()
    };
    assert!(in_sled(&lapsed), "the order paid late has its row");
    assert!(!bought.iter().any(in_sled), "a row of an archived order");
    drop(db);
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
