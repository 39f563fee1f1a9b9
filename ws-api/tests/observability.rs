//! What operators see, checked against a real server after a real purchase: the order's trace
//! with every stage and its trace id, actor health per kind, alerts, the status page's
//! incident note, and a /metrics text that `promtool check metrics` accepts.

mod common;

use common::{keys, promtool_check, Server, ADMIN};
use serde_json::{json, Value};

/// Every stage a paid, delivered order goes through.
const PURCHASE_STAGES: [&str; 6] = ["create", "reserve", "commit", "notify", "deliver", "push"];

async fn purchase(server: &Server) -> Value {
    server.product("obs-1", 1_000, &keys("OBS", 3)).await;
    let (code, order) = server.order("obs-1", 1).await;
    assert_eq!(code, 201, "{order}");
    let (code, body) = server.pay(&order).await;
    assert_eq!((code, body.as_str()), (200, "success"));
    order
}

#[tokio::test]
async fn trace_actors_alerts_status_and_metrics_after_a_purchase() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let order = purchase(&server).await;

    check_trace(&server, &order).await;
    check_actors(&server).await;
    check_alerts_and_incident(&server).await;
    let text = check_metrics_content(&server, &order).await;
    promtool_check(&text);
}

async fn check_trace(server: &Server, order: &Value) {
    let path = format!(
        "/api/v1/admin/orders/{}/trace",
        order["order_id"].as_str().unwrap()
    );
    let (code, trace) = server.admin_get(&path).await;
    assert_eq!(code, 200, "{trace}");
    assert_eq!(trace["trace_id"], order["trace_id"]);
    let stages: Vec<&str> = trace["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for stage in PURCHASE_STAGES {
        assert!(
            stages.contains(&stage),
            "stage {stage} missing from {trace}"
        );
    }
    for stage in trace["stages"].as_array().unwrap() {
        assert!(stage["at"].is_string(), "{stage}");
        assert!(stage["duration_us"].is_u64(), "{stage}");
    }
    let anonymous = server.http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (code, _) = server
        .admin_get("/api/v1/admin/orders/no-such-order/trace")
        .await;
    assert_eq!(code, 404);
}

async fn check_actors(server: &Server) {
    let (code, health) = server.admin_get("/api/v1/ops/actors").await;
    assert_eq!(code, 200, "{health}");
    let kinds = health["kinds"].as_array().unwrap();
    for kind in ["order", "pool_shard", "catalog"] {
        let entry = kinds
            .iter()
            .find(|k| k["kind"] == kind)
            .unwrap_or_else(|| panic!("kind {kind} missing from {health}"));
        for field in [
            "live",
            "mailbox_depth",
            "mailbox_depth_max",
            "handling_p50_us",
            "handling_p99_us",
            "restarts",
        ] {
            assert!(entry[field].is_number(), "{kind}.{field} in {health}");
        }
        assert!(entry.get("last_error").is_some(), "{health}");
    }
    let catalog = kinds.iter().find(|k| k["kind"] == "catalog").unwrap();
    assert_eq!(catalog["live"], 1);
    assert!(catalog["handled"].as_u64().unwrap() >= 2, "create + import");
}

async fn check_alerts_and_incident(server: &Server) {
    let (code, alerts) = server.admin_get("/api/v1/ops/alerts").await;
    assert_eq!(code, 200, "{alerts}");
    assert!(alerts["active"].is_array() && alerts["recent"].is_array());

    let note = "Payments <b>slow</b> & retrying";
    let (code, body) = server
        .admin_post("/api/v1/ops/incident", json!({ "note": note }))
        .await;
    assert_eq!(code, 200, "{body}");
    let page = server.http.get(server.url("/status")).send().await.unwrap();
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Payments &lt;b&gt;slow&lt;/b&gt; &amp; retrying"),
        "{html}"
    );
    assert!(
        html.contains("Ordering") && html.contains("Delivery"),
        "{html}"
    );
    assert!(html.contains("operational"), "{html}");
    let (code, _) = server
        .admin_post("/api/v1/ops/incident", json!({ "note": "" }))
        .await;
    assert_eq!(code, 200);
    let html = server.get_text("/status").await;
    assert!(!html.contains("slow"), "cleared note still shown: {html}");
    let refused = server
        .http
        .post(server.url("/api/v1/ops/incident"))
        .bearer_auth(format!("{ADMIN}-wrong"))
        .json(&json!({ "note": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
}

async fn check_metrics_content(server: &Server, order: &Value) -> String {
    let text = server.get_text("/metrics").await;
    for name in [
        "panshi_orders_created_total",
        "panshi_orders_paid_total",
        "panshi_orders_delivered_total",
        "panshi_delivery_seconds",
        "panshi_actor_handling_seconds",
        "panshi_http_request_duration_seconds",
        "panshi_stock_keys",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // The purchase's counters (their handles are kept per thread and label) count it once,
    // each in its own series.
    for line in [
        "panshi_orders_created_total 1",
        "panshi_orders_paid_total{channel=\"epay\"} 1",
        "panshi_orders_delivered_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no `{line}` in /metrics:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("panshi_delivery_seconds_count") && l.ends_with(" 1")),
        "no single delivery timed in /metrics:\n{text}"
    );
    // The actor gauges move with the actors (their handles are kept per kind): the
    // catalogue actor is live (the order's actor ended with its delivery), and every
    // message sent was answered.
    assert!(
        text.lines()
            .any(|l| l == "panshi_actors_live{kind=\"catalog\"} 1"),
        "no live catalogue actor in /metrics:\n{text}"
    );
    let depths: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("panshi_actor_mailbox_depth{"))
        .collect();
    assert!(!depths.is_empty(), "no mailbox depth in /metrics:\n{text}");
    assert!(depths.iter().all(|l| l.ends_with(" 0")), "{depths:?}");
    assert!(
        !text.contains(order["order_id"].as_str().unwrap()),
        "an order id leaked into /metrics"
    );
    assert!(
        !text.contains("buyer@example.com"),
        "a contact leaked into /metrics"
    );
    text
}
