//! kill -9 under load: the server is killed at random moments while buyers create and pay
//! orders; after each restart every acknowledged order and every notify answered `success`
//! must be there, delivered, and the audit must be clean.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde_json::Value;

#[derive(Default)]
struct Acknowledged {
    created: Vec<Value>,
    paid: Vec<Value>,
}

async fn buyer(server_base: String, http: reqwest::Client, seen: Arc<Mutex<Acknowledged>>) {
    let probe = ProbeServer {
        base: server_base,
        http,
    };
    loop {
        let Ok((code, order)) = probe.order().await else {
            return;
        };
        if code != 201 {
            return;
        }
        seen.lock().created.push(order.clone());
        match probe.pay(&order).await {
            Ok((200, body)) if body == "success" => seen.lock().paid.push(order),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The buyer's calls, failing softly when the server dies under them.
struct ProbeServer {
    base: String,
    http: reqwest::Client,
}

impl ProbeServer {
    async fn order(&self) -> Result<(u16, Value), reqwest::Error> {
        let body = serde_json::json!({"sku": "crash", "quantity": 1, "contact": "c@example.com", "channel": "epay"});
        let r = self
            .http
            .post(format!("{}/api/v1/orders", self.base))
            .json(&body)
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.json().await.unwrap_or(Value::Null)))
    }

    async fn pay(&self, order: &Value) -> Result<(u16, String), reqwest::Error> {
        let params = epay_params(order, PID, KEY, None);
        let r = self
            .http
            .post(format!("{}/api/v1/payments/epay/notify", self.base))
            .form(&params)
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok((code, r.text().await?))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_kill_9_at_random_moments() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (CRASH_SEED={seed} replays the kill timings)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Snapshots often, so kills meet archives and lookups read archived orders (sled
    // rebuilds allowed from any size, though 20,000 keys in memory rarely let one happen).
    let env = [
        ("PANSHI_CLUSTER__SNAPSHOT_EVERY_ENTRIES", "100"),
        ("PANSHI_STORAGE__SLED_REBUILD_MIN_BYTES", "0"),
    ];
    let mut server = Server::start_with(dir.path(), &env);
    server.product("crash", 100, &keys("CRASH", 20_000)).await;
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    for round in 0..5 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            tasks.push(tokio::spawn(buyer(server.base.clone(), http, seen.clone())));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
        server.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        server = Server::start_with(dir.path(), &env);
        let (created, paid) = {
            let seen = seen.lock();
            (seen.created.clone(), seen.paid.clone())
        };
        assert!(!paid.is_empty(), "round {round}: the load made progress");
        for order in &created {
            let (code, view) = server.lookup(order).await;
            assert_eq!(
                code, 200,
                "round {round}: acknowledged order {} lost",
                order["order_id"]
            );
            assert!(view["status"] == "awaiting_payment" || view["status"] == "delivered");
        }
        for order in &paid {
            let (_, view) = server.lookup(order).await;
            assert_eq!(
                view["status"], "delivered",
                "round {round}: paid order {} not delivered",
                order["order_id"]
            );
        }
        println!(
            "round {round}: {} orders acknowledged, {} paid, all present",
            created.len(),
            paid.len()
        );
    }
    let (available, reserved, sold) = server.stock("crash").await;
    assert_eq!(available + reserved + sold, 20_000);
    assert!(sold >= seen.lock().paid.len() as u64);
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    let tables = std::fs::read_dir(dir.path().join("cold")).map_or(0, |d| d.count());
    assert!(
        tables > 0,
        "no snapshot archived an order: the kills met no archive"
    );
}
