//! Buyers under load against every node of a cluster, and what must hold afterwards.
//!
//! Each buyer creates an order with an `Idempotency-Key` and pays it, one purchase after
//! another, on nodes chosen in turn. A 503, a 409 `request_in_progress` (the first attempt
//! is still under way), a refused connection or a timeout is retried with the same key (and
//! the same notify) on the next node, as a client behind a load balancer would; anything
//! else ends the purchase as failed. The ledger keeps what was
//! acknowledged (a 201 for a create, `success` for a notify) and every order id any answer
//! named per key.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{answer, epay_params, KEY, PID};
use crate::harness::Cluster;

/// How long a buyer keeps retrying one step before the purchase counts as failed.
pub const RETRY_WINDOW: Duration = Duration::from_secs(45);
/// Pause between retries of one step.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// One request's timeout (a passed-on write waits for the leader).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between one buyer's purchases: the load is steady, not a flood.
const BUYER_PAUSE: Duration = Duration::from_millis(20);
/// How long an acknowledged payment may take to show as delivered on a node.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One acknowledged order.
#[derive(Clone, Debug)]
pub struct Purchase {
    /// The create's answer (order_id, token, amount_cents).
    pub order: Value,
    /// The notify was acknowledged (`success`).
    pub paid: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Acknowledged creates by Idempotency-Key.
    pub orders: BTreeMap<String, Purchase>,
    /// Every order id a 2xx answer named, per key.
    pub answers: BTreeMap<String, BTreeSet<String>>,
    /// Purchases given up or refused, and why.
    pub failed: Vec<String>,
    /// Writes answered with something to retry, by kind.
    pub retried: BTreeMap<String, u64>,
    /// Keys whose create was sent but never acknowledged (it may or may not have committed).
    pub unacknowledged: Vec<String>,
}

impl Ledger {
    pub fn paid_count(&self) -> usize {
        self.orders.values().filter(|p| p.paid).count()
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    buyers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `buyers` buyers of `sku` against `targets` (every node, running or not).
    pub fn start(targets: Vec<String>, sku: &str, buyers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let targets = Arc::new(targets);
        let buyers = (0..buyers)
            .map(|n| {
                let buyer = Buyer {
                    number: n,
                    sku: sku.to_owned(),
                    targets: targets.clone(),
                    next_target: n,
                    http: reqwest::Client::builder()
                        .timeout(REQUEST_TIMEOUT)
                        .build()
                        .unwrap(),
                    ledger: ledger.clone(),
                };
                tokio::spawn(buyer.run(stop.clone()))
            })
            .collect();
        Load {
            stop,
            ledger,
            buyers,
        }
    }

    /// What has been acknowledged so far.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().clone()
    }

    /// Waits until at least `count` orders are paid (acknowledged).
    pub async fn wait_paid(&self, count: usize) {
        let started = Instant::now();
        while self.ledger.lock().paid_count() < count {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the load never reached {count} paid orders: {:?}",
                self.ledger.lock().failed
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the buyers, requires that no purchase failed, waits until every running node
    /// has caught up, and checks the history (`verify`).
    pub async fn finish_and_verify(self, cluster: &Cluster, sku: &str, imported: u64) -> Ledger {
        let ledger = self.finish().await;
        assert!(
            ledger.failed.is_empty(),
            "purchases failed: {:?}",
            ledger.failed
        );
        let leader = cluster.wait_leader(&cluster.running()).await;
        cluster.wait_caught_up(leader).await;
        let checked = verify(cluster, &ledger, sku, imported).await;
        eprintln!(
            "{checked} acknowledged orders checked on every node; retried: {:?}",
            ledger.retried
        );
        ledger
    }

    /// Stops the buyers after their current purchase; returns the ledger.
    pub async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Release);
        for buyer in self.buyers {
            buyer.await.unwrap();
        }
        Arc::try_unwrap(self.ledger).unwrap().into_inner()
    }
}

struct Buyer {
    number: usize,
    sku: String,
    targets: Arc<Vec<String>>,
    next_target: usize,
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
}

/// How one step (a create or a notify) ended.
enum Step {
    /// Acknowledged: the status and body.
    Done(u16, Value),
    /// Refused for good (not a 503): the status and body.
    Refused(u16, Value),
    /// Still unanswered at the end of the retry window: the last thing seen.
    GaveUp(String),
}

impl Buyer {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut purchase = 0;
        while !stop.load(Ordering::Acquire) {
            let key = format!("buyer{}-{purchase}", self.number);
            purchase += 1;
            if !self.purchase(&key).await {
                return;
            }
            tokio::time::sleep(BUYER_PAUSE).await;
        }
    }

    /// One purchase; `false` once the SKU is sold out.
    async fn purchase(&mut self, key: &str) -> bool {
        let body = json!({"sku": self.sku, "quantity": 1, "contact": format!("{key}@example.com"), "channel": "epay"});
        let order = match self
            .step(|http, base| {
                http.post(format!("{base}/api/v1/orders"))
                    .header("Idempotency-Key", key)
                    .json(&body)
            })
            .await
        {
            Step::Done(201, order) => order,
            Step::Refused(409, body) if body["error"] == "sold_out" => return false,
            other => {
                self.fail(key, "create", other);
                self.ledger.lock().unacknowledged.push(key.to_owned());
                return true;
            }
        };
        {
            let mut ledger = self.ledger.lock();
            let id = order["order_id"].as_str().unwrap().to_owned();
            ledger.answers.entry(key.to_owned()).or_default().insert(id);
            let purchase = Purchase {
                order: order.clone(),
                paid: false,
            };
            ledger.orders.insert(key.to_owned(), purchase);
        }
        let params = epay_params(&order, PID, KEY, None);
        match self
            .step(|http, base| {
                http.post(format!("{base}/api/v1/payments/epay/notify"))
                    .form(&params)
            })
            .await
        {
            Step::Done(200, Value::String(text)) if text == "success" => {
                self.ledger.lock().orders.get_mut(key).unwrap().paid = true;
            }
            other => self.fail(key, "notify", other),
        }
        true
    }

    fn fail(&self, key: &str, what: &str, step: Step) {
        let why = match step {
            Step::Done(code, body) | Step::Refused(code, body) => format!("{code} {body}"),
            Step::GaveUp(last) => format!("gave up after {RETRY_WINDOW:?}: {last}"),
        };
        self.ledger
            .lock()
            .failed
            .push(format!("{key} {what}: {why}"));
    }

    /// Sends a request built for each node in turn until it is answered with anything but
    /// a 503 (or the retry window ends).
    async fn step(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Step {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < RETRY_WINDOW {
            let base = &self.targets[self.next_target % self.targets.len()];
            let sent = build(&self.http, base).send().await;
            let kind = match sent {
                Ok(response) => {
                    let (code, body) = answer(response).await;
                    match (code, body["error"].as_str()) {
                        (200..=299, _) => return Step::Done(code, body),
                        (503, error) => format!("503 {}", error.unwrap_or("?")),
                        // The first attempt is still under way on the leader.
                        (409, Some("request_in_progress")) => "409 request_in_progress".into(),
                        _ => return Step::Refused(code, body),
                    }
                }
                Err(error) if error.is_connect() => "connect".to_owned(),
                Err(error) if error.is_timeout() => "timeout".to_owned(),
                Err(error) => format!("transport: {error}"),
            };
            *self.ledger.lock().retried.entry(kind.clone()).or_default() += 1;
            last = kind;
            self.next_target += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Step::GaveUp(last)
    }
}

/// Checks what the history must show after a run, on every running node: every
/// acknowledged create there and every acknowledged payment delivered, one order per
/// Idempotency-Key (also when each key is sent again now), no key sold twice, stock
/// conserved. Returns the number of orders checked.
pub async fn verify(cluster: &Cluster, ledger: &Ledger, sku: &str, imported: u64) -> usize {
    for (key, ids) in &ledger.answers {
        assert_eq!(ids.len(), 1, "key {key} was answered with orders {ids:?}");
    }
    let running = cluster.running();
    let mut sold_on_leader = None;
    for &id in &running {
        let server = cluster.node(id);
        let mut cards = HashSet::new();
        for (key, purchase) in &ledger.orders {
            let view = lookup_until(server, &purchase.order, purchase.paid).await;
            for card in view["cards"].as_array().unwrap() {
                assert!(
                    cards.insert(card.as_str().unwrap().to_owned()),
                    "key {card} sold twice (seen again on order of {key}, node {id})"
                );
            }
        }
        let (available, reserved, sold) = server.stock(sku).await;
        assert_eq!(
            available + reserved + sold,
            imported,
            "stock not conserved on node {id}: {available} + {reserved} + {sold}"
        );
        assert_eq!(
            sold,
            cards.len() as u64,
            "node {id}: sold counts {sold} keys, the acknowledged orders hold {}",
            cards.len()
        );
        if let Some(previous) = sold_on_leader.replace(sold) {
            assert_eq!(previous, sold, "nodes disagree on what was sold");
        }
    }
    resend_every_key(cluster, ledger, sku).await;
    ledger.orders.len()
}

/// Looks `order` up on `server`; for a paid one, until it shows delivered.
async fn lookup_until(server: &crate::common::Server, order: &Value, paid: bool) -> Value {
    let started = Instant::now();
    loop {
        let (code, view) = server.lookup(order).await;
        assert_eq!(
            code, 200,
            "acknowledged order {} missing on {}: {view}",
            order["order_id"], server.base
        );
        let status = view["status"].as_str().unwrap().to_owned();
        if !paid || status == "delivered" {
            return view;
        }
        assert!(
            matches!(status.as_str(), "paid" | "delivered") && started.elapsed() < DELIVERY_WAIT,
            "order {} was paid (acknowledged) but shows {status} on {}",
            order["order_id"],
            server.base
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends every key again (acknowledged or not) on the nodes in turn: an acknowledged key
/// answers with its order, and an unacknowledged one with one order however often it is
/// sent.
async fn resend_every_key(cluster: &Cluster, ledger: &Ledger, sku: &str) {
    let running = cluster.running();
    let keys = ledger.orders.keys().chain(&ledger.unacknowledged);
    for (n, key) in keys.enumerate() {
        let mut seen = BTreeSet::new();
        for attempt in 0..2 {
            let server = cluster.node(running[(n + attempt) % running.len()]);
            let contact = format!("{key}@example.com");
            let (code, body) = server.order_keyed(sku, 1, &contact, key).await;
            if code == 409 && ledger.unacknowledged.contains(key) {
                // Never committed, and nothing is left to sell now: nothing to compare.
                break;
            }
            assert_eq!(code, 201, "key {key} sent again: {body}");
            seen.insert(body["order_id"].as_str().unwrap().to_owned());
        }
        if let Some(purchase) = ledger.orders.get(key) {
            seen.insert(purchase.order["order_id"].as_str().unwrap().to_owned());
        }
        assert!(seen.len() <= 1, "key {key} maps to orders {seen:?}");
    }
}
