//! Against the gateway simulator over real HTTP: with half of all notifies dropped (and
//! some duplicated), every order the buyers paid is still delivered, through
//! reconciliation; nothing is sold twice and the audit is clean.

mod common;

use std::time::{Duration, Instant};

use common::*;
use simulations::gateway::{self, Config, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_half_the_notifies_dropped_every_paid_order_is_delivered() {
    let gateway = gateway::start(Config {
        seed: 7,
        notify_backoff_first_ms: 200,
        ..Config::new(PID, KEY, "unused")
    })
    .await
    .unwrap();
    gateway
        .set_faults(Faults {
            notify_drop_percent: 50,
            notify_duplicate_percent: 20,
            ..Faults::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(
        dir.path(),
        &[("PANSHI_EPAY__GATEWAY_URL", gateway.base_url())],
    );
    const ORDERS: usize = 24;
    server.product("sim", 1990, &keys("SIM", ORDERS + 6)).await;
    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        let (code, order) = server.order("sim", 1).await;
        assert_eq!(code, 201, "{order}");
        // The buyer pays at the gateway's cashier: the Pay button posts the signed URL.
        let paid = server
            .http
            .post(order["payment"]["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert!(paid.status().is_success(), "{}", paid.status());
        orders.push(order);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut undelivered = orders.clone();
    while !undelivered.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut still = Vec::new();
        for order in undelivered {
            if server.lookup(&order).await.1["status"] != "delivered" {
                still.push(order);
            }
        }
        undelivered = still;
    }
    assert!(
        undelivered.is_empty(),
        "{} paid orders not delivered",
        undelivered.len()
    );
    let (available, reserved, sold) = server.stock("sim").await;
    assert_eq!((available, reserved, sold), (6, 0, ORDERS as u64));
    let metrics = server.get_text("/metrics").await;
    let recovered = metrics
        .lines()
        .find(|l| l.starts_with("panshi_reconcile_recoveries_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        recovered >= 1.0,
        "some orders were recovered by querying the gateway:\n{metrics}"
    );
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_created_through_mapi_are_paid_and_delivered() {
    let gateway = gateway::start(Config {
        seed: 9,
        notify_backoff_first_ms: 200,
        ..Config::new(PID, KEY, "unused")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_EPAY__GATEWAY_URL", gateway.base_url()),
            ("PANSHI_EPAY__CREATE_VIA_MAPI", "true"),
        ],
    );
    server.product("mapi", 880, &keys("M", 2)).await;
    let (code, order) = server.order("mapi", 1).await;
    assert_eq!(code, 201, "{order}");
    let url = order["payment"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(gateway.base_url()),
        "the gateway's own payment page: {url}"
    );
    let created = gateway.orders();
    assert!(
        created
            .iter()
            .any(|o| format!("{o:?}").contains(order["order_id"].as_str().unwrap())),
        "created server-side"
    );
    let pay = format!(
        "{}/control/pay?out_trade_no={}",
        gateway.base_url(),
        order["order_id"].as_str().unwrap()
    );
    assert!(server
        .http
        .post(pay)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.lookup(&order).await.1["status"] != "delivered" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    gateway.stop().await.unwrap();
}
