//! Reseller webhooks over real sockets: a local receiver that fails the first tries, then
//! acknowledges; signatures recomputed here; ids unique and every seq once; pending events
//! delivered after a kill -9 and a restart; parked events listed and replayed by operators.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for deliveries before failing.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// One request the receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Received {
    signature: String,
    body: String,
    status: u16,
}

/// A local webhook receiver: answers 500 while `failures_left > 0`, then 200.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    failures_left: Arc<Mutex<u64>>,
}

impl Receiver {
    async fn listen(&self, listener: TcpListener) {
        let receiver = self.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let receiver = receiver.clone();
                tokio::spawn(async move { receiver.serve(socket).await });
            }
        });
    }

    async fn serve(&self, mut socket: TcpStream) {
        let Some((head, body)) = read_request(&mut socket).await else {
            return;
        };
        let signature = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("panshi-signature")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let status = {
            let mut left = self.failures_left.lock();
            if *left > 0 {
                *left -= 1;
                500
            } else {
                200
            }
        };
        self.received.lock().push(Received {
            signature,
            body,
            status,
        });
        let answer =
            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = socket.write_all(answer.as_bytes()).await;
        let _ = socket.shutdown().await;
    }

    fn acknowledged(&self) -> Vec<Received> {
        let received = self.received.lock();
        received
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect()
    }

    async fn wait_acknowledged(&self, count: usize) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let acknowledged = self.acknowledged();
            if acknowledged.len() >= count {
                return acknowledged;
            }
            assert!(
                start.elapsed() < WAIT_MAX,
                "only {} of {count} acknowledged: {:?}",
                acknowledged.len(),
                self.received.lock()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Recomputes `t=..,v1=..` as a receiver would, and compares.
fn verify(secret: &str, signature: &str, body: &str) -> bool {
    let Some((t, v1)) = signature.split_once(',') else {
        return false;
    };
    let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

fn start(dir: &tempfile::TempDir, retry_first_ms: &str) -> Server {
    Server::start_with(
        dir.path(),
        &[
            ("PANSHI_RESELLERS__RATE_PER_SECOND", "100000"),
            ("PANSHI_RESELLERS__RATE_BURST", "100000"),
            ("PANSHI_RESELLERS__LOOKUP_RATE_PER_SECOND", "100000"),
            ("PANSHI_RESELLERS__LOOKUP_RATE_BURST", "100000"),
            ("PANSHI_RESELLERS__WEBHOOK_RETRY_FIRST_MS", retry_first_ms),
        ],
    )
}

/// Opens a reseller with a webhook and a balance; returns (id, api key, webhook secret).
async fn reseller(server: &Server, webhook_url: &str) -> (String, String, String) {
    let (code, body) = server
        .admin_post(
            "/api/v1/admin/resellers",
            json!({"name": "Hooked", "webhook_url": webhook_url}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let id = body["reseller_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/admin/resellers/{id}/balance");
    let (code, answer) = server
        .admin_post(&path, json!({"amount_cents": 100_000, "note": "test"}))
        .await;
    assert_eq!(code, 200, "{answer}");
    let key = body["api_key"].as_str().unwrap().to_owned();
    let secret = body["webhook_secret"].as_str().unwrap().to_owned();
    (id, key, secret)
}

async fn buy(server: &Server, key: &str, sku: &str) -> Value {
    let r = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(key)
        .json(&json!({"sku": sku, "quantity": 1}))
        .send()
        .await
        .unwrap();
    let (code, body) = answer(r).await;
    assert_eq!(code, 201, "{body}");
    body
}

/// Checks every acknowledged delivery: signed, ids unique, seqs 1..=n each once.
fn check_deliveries(secret: &str, reseller_id: &str, acknowledged: &[Received], count: u64) {
    let mut seqs = Vec::new();
    for delivery in acknowledged {
        assert!(
            verify(secret, &delivery.signature, &delivery.body),
            "bad signature {delivery:?}"
        );
        let event: Value = serde_json::from_str(&delivery.body).unwrap();
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(event["id"], format!("{reseller_id}-{seq}"));
        assert_eq!(event["status"], "delivered");
        seqs.push(seq);
    }
    // Each event has its own retry schedule: they may arrive out of order; seq orders them.
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "ids unique, every seq"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_after_failures() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    *receiver.failures_left.lock() = 2;
    receiver.listen(listener).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "100");
    server.product("hooked", 100, &keys("hooked", 10)).await;
    let (id, key, secret) = reseller(&server, &url).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(buy(&server, &key, "hooked").await);
    }
    let acknowledged = receiver.wait_acknowledged(3).await;
    check_deliveries(&secret, &id, &acknowledged, 3);
    let mut events: Vec<Value> = acknowledged
        .iter()
        .map(|d| serde_json::from_str(&d.body).unwrap())
        .collect();
    events.sort_by_key(|e| e["seq"].as_u64());
    for (event, order) in events.iter().zip(&orders) {
        assert_eq!(event["order_id"], order["order_id"]);
        assert_eq!(event["cards"], order["cards"]);
    }
    let all = receiver.received.lock().clone();
    assert_eq!(
        all.len(),
        5,
        "two refusals, then one try per event: {all:?}"
    );
    assert!(all.iter().all(|r| verify(&secret, &r.signature, &r.body)));
    server.stop();
    assert!(server.audit().0, "{}", server.audit().1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_kill9() {
    // A port whose receiver is down while the events are bought: below the ephemeral
    // range, so no client socket takes it before the receiver binds it.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let url = format!("http://{address}/hook");
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "100");
    server.product("pending", 100, &keys("pending", 10)).await;
    let (id, key, secret) = reseller(&server, &url).await;
    buy(&server, &key, "pending").await;
    buy(&server, &key, "pending").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    let receiver = Receiver::default();
    receiver
        .listen(TcpListener::bind(address).await.unwrap())
        .await;
    server.restart();
    let acknowledged = receiver.wait_acknowledged(2).await;
    check_deliveries(&secret, &id, &acknowledged, 2);
    // Delivered events are not sent again after a further restart.
    server.restart();
    buy(&server, &key, "pending").await;
    let acknowledged = receiver.wait_acknowledged(3).await;
    check_deliveries(&secret, &id, &acknowledged, 3);
    server.stop();
    assert!(server.audit().0, "{}", server.audit().1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_events_are_parked_then_replayed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    *receiver.failures_left.lock() = u64::MAX;
    receiver.listen(listener).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "5");
    server.product("parked", 100, &keys("parked", 10)).await;
    let (id, key, secret) = reseller(&server, &url).await;
    buy(&server, &key, "parked").await;
    let dead = format!("/api/v1/admin/resellers/{id}/webhooks/dead");
    let parked = wait_parked(&server, &dead, 1).await;
    assert_eq!(parked[0]["id"], format!("{id}-1"));
    assert_eq!(
        receiver.received.lock().len(),
        10,
        "ten tries before parking"
    );
    // The worker moved on: the next event is tried (and parked too) while 1 stays parked.
    buy(&server, &key, "parked").await;
    wait_parked(&server, &dead, 2).await;
    // A replay that fails leaves it parked; one that succeeds takes it off, for good.
    let replay = format!("{dead}/1/replay");
    assert_eq!(server.admin_post(&replay, json!({})).await.0, 502);
    *receiver.failures_left.lock() = 0;
    let (code, body) = server.admin_post(&replay, json!({})).await;
    assert_eq!(
        (code, &body["id"]),
        (200, &json!(format!("{id}-1"))),
        "{body}"
    );
    assert_eq!(server.admin_post(&replay, json!({})).await.0, 404);
    let last = receiver.acknowledged();
    assert_eq!(last.len(), 1);
    assert!(verify(&secret, &last[0].signature, &last[0].body));
    server.kill9();
    server.restart();
    let (code, body) = server.admin_get(&dead).await;
    assert_eq!(code, 200);
    let seqs: Vec<u64> = body["parked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2], "the replay and the parking survived kill -9");
    assert_eq!(
        server
            .admin_get("/api/v1/admin/resellers/rs-999/webhooks/dead")
            .await
            .0,
        404
    );
    server.stop();
    assert!(server.audit().0, "{}", server.audit().1);
}

async fn wait_parked(server: &Server, path: &str, count: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (code, body) = server.admin_get(path).await;
        assert_eq!(code, 200, "{body}");
        let parked = body["parked"].as_array().unwrap().clone();
        if parked.len() >= count {
            return parked;
        }
        assert!(start.elapsed() < WAIT_MAX, "not parked: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_slows_purchases() {
    // Reads each request and never answers: every try waits out its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_request(&mut socket).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "100");
    server.product("slow", 100, &keys("slow", 30)).await;
    let (_, key, _) = reseller(&server, &url).await;
    let started = Instant::now();
    for _ in 0..20 {
        buy(&server, &key, "slow").await;
    }
    // One try alone waits 10 s; twenty purchases finish far sooner.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "purchases took {:?}",
        started.elapsed()
    );
    server.stop();
    assert!(server.audit().0, "{}", server.audit().1);
}

/// After the operator rotates the webhook secret, deliveries are signed with the new one,
/// including the retries of an event that was failing when the secret changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_what_follows() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    receiver.listen(listener).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "1000");
    server.product("rotsig", 100, &keys("rotsig", 10)).await;
    let (id, key, old_secret) = reseller(&server, &url).await;
    buy(&server, &key, "rotsig").await;
    check_deliveries(&old_secret, &id, &receiver.wait_acknowledged(1).await, 1);
    // The receiver fails the next tries; the secret changes while event 2 is retried.
    *receiver.failures_left.lock() = 2;
    buy(&server, &key, "rotsig").await;
    let start = Instant::now();
    while receiver.received.lock().len() < 2 {
        assert!(start.elapsed() < WAIT_MAX, "event 2 was never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rotate = format!("/api/v1/admin/resellers/{id}/rotate-webhook-secret");
    let (code, rotated) = server.admin_post(&rotate, json!({})).await;
    assert_eq!(code, 200, "{rotated}");
    let new_secret = rotated["webhook_secret"].as_str().unwrap().to_owned();
    let acknowledged = receiver.wait_acknowledged(2).await;
    let last = acknowledged.last().unwrap();
    assert!(verify(&new_secret, &last.signature, &last.body), "{last:?}");
    assert!(!verify(&old_secret, &last.signature, &last.body));
    server.restart();
    buy(&server, &key, "rotsig").await;
    // After a restart the new secret (sealed in the log) still signs.
    let acknowledged = receiver.wait_acknowledged(3).await;
    let seqs: Vec<u64> = acknowledged
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(&d.body).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(verify(
        &new_secret,
        &acknowledged[2].signature,
        &acknowledged[2].body
    ));
    server.stop();
    assert!(server.audit().0, "{}", server.audit().1);
}

/// A data dir written before sealing existed holds a webhook secret in the clear. The
/// server seals it at start, and deliveries are still signed with that same secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_stored_in_the_clear_is_sealed_at_start_and_still_signs() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    receiver.listen(listener).await;
    let dir = tempfile::tempdir().unwrap();
    let legacy_secret = "whsec_written_by_an_older_version_0123456789";
    let api_key = "psk_legacy_key_0123456789abcdef0123456789abcdef";
    // As an older version wrote it (on a plain thread: the store's waits block).
    let data = dir.path().to_owned();
    let hook = url.clone();
    std::thread::spawn(move || {
        let node = replication::Node::start_single(&data).unwrap();
        let store = node.store().clone();
        let reseller = engine::NewReseller {
            reseller_id: engine::ResellerId(1),
            name: "Legacy".into(),
            api_key_sha256: engine::state::api_key_sha256(api_key),
            webhook_secret: legacy_secret.into(),
            webhook_url: Some(hook),
            discount_bp: 0,
            created_at_ms: 1,
        };
        let event = engine::Event::ResellerCreated(Box::new(reseller));
        store.commit(&event).unwrap().wait_blocking().unwrap();
        node.shutdown();
    })
    .join()
    .unwrap();
    let mut server = start(&dir, "100");
    server.product("legacy", 100, &keys("legacy", 5)).await;
    let (code, answer) = server
        .admin_post(
            "/api/v1/admin/resellers/rs-1/balance",
            json!({"amount_cents": 1_000, "note": "test"}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    buy(&server, api_key, "legacy").await;
    let acknowledged = receiver.wait_acknowledged(1).await;
    check_deliveries(legacy_secret, "rs-1", &acknowledged, 1);
    server.stop();
    // The state rebuilt from the log holds the sealed form now. (The bytes written before
    // stay in the log's and sled's older records until those are purged.)
    let data = dir.path().to_owned();
    let stored = std::thread::spawn(move || {
        let node = replication::Node::start_single(&data).unwrap();
        let secret = {
            let state = node.store().state();
            let account = state.reseller(engine::ResellerId(1)).unwrap();
            account.reseller.webhook_secret.clone()
        };
        node.shutdown();
        secret
    })
    .join()
    .unwrap();
    assert!(stored.starts_with("sealed1:"), "{stored}");
    assert!(!stored.contains(legacy_secret));
    assert!(server.audit().0, "{}", server.audit().1);
}
