//! Resellers over real sockets: accounts and keys, bulk purchases that never overdraw and
//! never sell a key twice, all-or-nothing refusals, idempotent retries, revoked keys, the
//! per-key rate limit, and the stream resumed across disconnects and a kill -9.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Reseller rate limits high enough not to matter, except where a test sets its own.
const UNLIMITED: &[(&str, &str)] = &[
    ("PANSHI_RESELLERS__RATE_PER_SECOND", "100000"),
    ("PANSHI_RESELLERS__RATE_BURST", "100000"),
    ("PANSHI_RESELLERS__LOOKUP_RATE_PER_SECOND", "100000"),
    ("PANSHI_RESELLERS__LOOKUP_RATE_BURST", "100000"),
    ("PANSHI_RESELLERS__STREAM_RATE_PER_SECOND", "100000"),
    ("PANSHI_RESELLERS__STREAM_RATE_BURST", "100000"),
];

fn start(dir: &tempfile::TempDir) -> Server {
    Server::start_with(dir.path(), UNLIMITED)
}

/// Opens a reseller with `balance_cents`; returns (id, api key).
async fn reseller(server: &Server, name: &str, balance_cents: i64) -> (String, String) {
    let (code, body) = server
        .admin_post("/api/v1/admin/resellers", json!({"name": name}))
        .await;
    assert_eq!(code, 201, "{body}");
    let id = body["reseller_id"].as_str().unwrap().to_owned();
    let key = body["api_key"].as_str().unwrap().to_owned();
    assert!(key.len() >= 32 && body["webhook_secret"].as_str().unwrap().len() >= 32);
    if balance_cents != 0 {
        let (code, body) = top_up(server, &id, balance_cents).await;
        assert_eq!(code, 200, "{body}");
    }
    (id, key)
}

async fn top_up(server: &Server, id: &str, amount_cents: i64) -> (u16, Value) {
    let path = format!("/api/v1/admin/resellers/{id}/balance");
    server
        .admin_post(&path, json!({"amount_cents": amount_cents, "note": "test"}))
        .await
}

async fn get(server: &Server, key: &str, path: &str) -> (u16, Value) {
    let r = server
        .http
        .get(server.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn buy(
    server: &Server,
    key: &str,
    sku: &str,
    quantity: u32,
    idem: Option<&str>,
) -> (u16, Value) {
    let mut request = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(key)
        .json(&json!({"sku": sku, "quantity": quantity}));
    if let Some(idem) = idem {
        request = request.header("Idempotency-Key", idem);
    }
    answer(request.send().await.unwrap()).await
}

async fn balance_of(server: &Server, key: &str) -> u64 {
    let (code, me) = get(server, key, "/api/v1/reseller/me").await;
    assert_eq!(code, 200, "{me}");
    me["balance_cents"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_keys_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    let (id, key) = reseller(&server, "Acme", 0).await;
    let (code, me) = get(&server, &key, "/api/v1/reseller/me").await;
    assert_eq!(code, 200);
    assert_eq!(
        me,
        json!({"reseller_id": id, "name": "Acme", "balance_cents": 0})
    );
    assert_eq!(
        get(&server, ADMIN, "/api/v1/reseller/me").await.0,
        401,
        "the operator token is no reseller key"
    );
    assert_eq!(get(&server, "psk_nope", "/api/v1/reseller/me").await.0, 401);
    let r = server
        .http
        .get(server.url("/api/v1/reseller/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Operator endpoints refuse a reseller key.
    let r = server
        .http
        .post(server.url("/api/v1/admin/resellers"))
        .bearer_auth(&key)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Bad input: 400, nothing changes.
    for body in [
        json!({"name": ""}),
        json!({"name": "x", "webhook_url": "ftp://x"}),
        json!({}),
    ] {
        let (code, answer) = server.admin_post("/api/v1/admin/resellers", body).await;
        assert_eq!(code, 400, "{answer}");
    }
    assert_eq!(top_up(&server, &id, 0).await.0, 400);
    assert_eq!(top_up(&server, "rs-999", 100).await.0, 404);
    assert_eq!(
        top_up(&server, &id, 500).await,
        (200, json!({"balance_cents": 500}))
    );
    let (code, body) = top_up(&server, &id, -501).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("insufficient_balance"))
    );
    assert_eq!(
        top_up(&server, &id, -200).await,
        (200, json!({"balance_cents": 300}))
    );
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/resellers",
            json!({"name": "Hook", "webhook_url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(code, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_never_overdraw_nor_sell_a_key_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    server.product("bulk", 100, &keys("bulk", 60)).await;
    let balance_cents = 2_550;
    let (_, key) = reseller(&server, "Busy", balance_cents).await;
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let (server, key) = (server.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            buy(&server, &key, "bulk", 1 + i % 3, None).await
        }));
    }
    let (mut charged, mut sold) = (0u64, Vec::new());
    for task in tasks {
        let (code, body) = task.await.unwrap();
        match code {
            201 => {
                charged += body["amount_cents"].as_u64().unwrap();
                let cards = body["cards"].as_array().unwrap();
                assert_eq!(
                    body["amount_cents"].as_u64().unwrap(),
                    100 * cards.len() as u64
                );
                sold.extend(cards.iter().map(|c| c.as_str().unwrap().to_owned()));
            }
            402 => assert_eq!(body["error"], "insufficient_balance"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let distinct: BTreeSet<&String> = sold.iter().collect();
    assert_eq!(distinct.len(), sold.len(), "a key sold twice");
    assert!(charged <= balance_cents as u64);
    assert!(
        charged >= balance_cents as u64 - 300,
        "refused while the balance could pay"
    );
    assert_eq!(
        balance_of(&server, &key).await,
        balance_cents as u64 - charged
    );
    let (available, reserved, sold_count) = server.stock("bulk").await;
    assert_eq!(
        (available, reserved, sold_count),
        (60 - sold.len() as u64, 0, sold.len() as u64)
    );
    let mut server = std::sync::Arc::into_inner(server).unwrap();
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_charge_and_reserve_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    server.product("few", 1_000, &keys("few", 3)).await;
    let (_, key) = reseller(&server, "Poor", 1_500).await;
    // Sold out is checked first, even when the balance could not pay either.
    let (code, body) = buy(&server, &key, "few", 4, None).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("sold_out")));
    let (code, body) = buy(&server, &key, "few", 2, None).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (402, Some("insufficient_balance"))
    );
    assert_eq!(balance_of(&server, &key).await, 1_500);
    assert_eq!(server.stock("few").await, (3, 0, 0));
    assert_eq!(buy(&server, &key, "nope", 1, None).await.0, 404);
    assert_eq!(buy(&server, &key, "few", 0, None).await.0, 400);
    assert_eq!(buy(&server, &key, "bad sku", 1, None).await.0, 400);
    let (code, body) = buy(&server, &key, "few", 1, None).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "delivered");
    assert_eq!(body["balance_cents"], 500);
    assert_eq!(server.stock("few").await, (2, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_and_order_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    server.product("idem", 100, &keys("idem", 10)).await;
    let (_, key) = reseller(&server, "One", 1_000).await;
    let (_, other) = reseller(&server, "Two", 1_000).await;
    let (code, first) = buy(&server, &key, "idem", 2, Some("k-1")).await;
    assert_eq!(code, 201, "{first}");
    let (code, again) = buy(&server, &key, "idem", 2, Some("k-1")).await;
    assert_eq!(
        (code, &again),
        (201, &first),
        "a retry answers the first receipt"
    );
    let (code, body) = buy(&server, &key, "idem", 3, Some("k-1")).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (422, Some("idempotency_mismatch"))
    );
    // The key is scoped to the reseller: another reseller's "k-1" is a new order.
    let (code, theirs) = buy(&server, &other, "idem", 2, Some("k-1")).await;
    assert_eq!(code, 201);
    assert_ne!(theirs["order_id"], first["order_id"]);
    assert_eq!(balance_of(&server, &key).await, 800);
    assert_eq!(server.stock("idem").await, (6, 0, 4));
    let path = format!(
        "/api/v1/reseller/orders/{}",
        first["order_id"].as_str().unwrap()
    );
    let (code, view) = get(&server, &key, &path).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["status"], "delivered");
    assert_eq!(view["cards"], first["cards"]);
    assert_eq!(
        get(&server, &other, &path).await.0,
        404,
        "another reseller's order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    server.product("rev", 100, &keys("rev", 5)).await;
    let (id, key) = reseller(&server, "Gone", 1_000).await;
    assert_eq!(buy(&server, &key, "rev", 1, None).await.0, 201);
    let path = format!("/api/v1/admin/resellers/{id}/revoke");
    assert_eq!(server.admin_post(&path, json!({})).await.0, 200);
    assert_eq!(get(&server, &key, "/api/v1/reseller/me").await.0, 401);
    assert_eq!(buy(&server, &key, "rev", 1, None).await.0, 401);
    assert_eq!(server.stock("rev").await, (4, 0, 1));
    assert_eq!(
        server
            .admin_post("/api/v1/admin/resellers/rs-77/revoke", json!({}))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_rate_limited_per_lane() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PANSHI_RESELLERS__LOOKUP_RATE_PER_SECOND", "1"),
        ("PANSHI_RESELLERS__LOOKUP_RATE_BURST", "50"),
        ("PANSHI_RESELLERS__STREAM_RATE_PER_SECOND", "1"),
        ("PANSHI_RESELLERS__STREAM_RATE_BURST", "1"),
    ];
    let server = Server::start_with(dir.path(), &env);
    let (_, key) = reseller(&server, "Fast", 0).await;
    let (_, calm) = reseller(&server, "Calm", 0).await;
    let mut codes = Vec::new();
    for _ in 0..60 {
        codes.push(get(&server, &key, "/api/v1/reseller/me").await.0);
    }
    assert!(codes[..50].iter().all(|c| *c == 200), "{codes:?}");
    assert!(codes[50..].contains(&429), "{codes:?}");
    assert_eq!(
        get(&server, &calm, "/api/v1/reseller/me").await.0,
        200,
        "another key's budget"
    );
    // The same key's purchases have their own bucket: refused for the balance, not 429.
    let (code, body) = buy(&server, &key, "none", 1, None).await;
    assert!(code != 429 && (400..500).contains(&code), "{code} {body}");
    // Stream connects too; a burst below the contract's floor of 50 is raised to it.
    for _ in 0..50 {
        drop(stream(&server, &key, 0).await);
    }
    let refused = stream_request(&server, &key, 0).await;
    assert_eq!(refused, Some(429), "the 51st stream connect");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stream(server: &Server, key: &str, cursor: u64) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(stream_upgrade(server, key, cursor))
        .await
        .expect("stream connects");
    socket
}

fn stream_upgrade(
    server: &Server,
    key: &str,
    cursor: u64,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = server.ws_url(&format!("/api/v1/reseller/stream?cursor={cursor}"));
    let mut request = url.into_client_request().unwrap();
    let bearer = format!("Bearer {key}").parse().unwrap();
    request.headers_mut().insert("Authorization", bearer);
    request
}

/// The HTTP status a stream upgrade was refused with, if it was.
async fn stream_request(server: &Server, key: &str, cursor: u64) -> Option<u16> {
    match tokio_tungstenite::connect_async(stream_upgrade(server, key, cursor)).await {
        Ok(_) => None,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Some(response.status().as_u16())
        }
        Err(error) => panic!("stream upgrade: {error}"),
    }
}

/// The next `count` frames of a stream.
async fn frames(socket: &mut Socket, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => got.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    got
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

/// Nothing more arrives within a short while.
async fn quiet(socket: &mut Socket) {
    let next = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
    assert!(next.is_err(), "unexpected frame {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_across_disconnects_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir);
    server.product("live", 100, &keys("live", 40)).await;
    let (_, key) = reseller(&server, "Streamer", 10_000).await;
    let refused = tokio_tungstenite::connect_async(server.ws_url("/api/v1/reseller/stream")).await;
    assert!(refused.is_err(), "no key, no stream");
    let mut live = stream(&server, &key, 0).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(buy(&server, &key, "live", 2, None).await.1);
    }
    let first = frames(&mut live, 3).await;
    assert_eq!(seqs(&first), [1, 2, 3]);
    assert_eq!(first[0]["order_id"], orders[0]["order_id"]);
    assert_eq!(first[0]["status"], "delivered");
    assert_eq!(first[0]["cards"], orders[0]["cards"]);
    drop(live);
    for _ in 0..2 {
        buy(&server, &key, "live", 1, None).await;
    }
    let mut resumed = stream(&server, &key, 3).await;
    assert_eq!(seqs(&frames(&mut resumed, 2).await), [4, 5]);
    quiet(&mut resumed).await;
    drop(resumed);
    server.kill9();
    let mut server = Server::start_with(dir.path(), UNLIMITED);
    buy(&server, &key, "live", 1, None).await;
    let mut after = stream(&server, &key, 5).await;
    assert_eq!(seqs(&frames(&mut after, 1).await), [6]);
    quiet(&mut after).await;
    let mut whole = stream(&server, &key, 0).await;
    let all = frames(&mut whole, 6).await;
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        all[..3],
        first[..],
        "replay after a restart equals the live frames"
    );
    // Live after replay: a purchase reaches both open streams once.
    buy(&server, &key, "live", 1, None).await;
    assert_eq!(seqs(&frames(&mut after, 1).await), [7]);
    assert_eq!(seqs(&frames(&mut whole, 1).await), [7]);
    quiet(&mut whole).await;
    drop((after, whole));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribing_during_purchases_skips_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(start(&dir));
    server.product("race", 10, &keys("race", 200)).await;
    let (_, key) = reseller(&server, "Racer", 100_000).await;
    let purchases_count = 60;
    let buyer = {
        let (server, key) = (server.clone(), key.clone());
        tokio::spawn(async move {
            for _ in 0..purchases_count {
                assert_eq!(buy(&server, &key, "race", 1, None).await.0, 201);
            }
        })
    };
    let mut readers = Vec::new();
    for cursor in [0u64, 0, 5, 10, 20] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut socket = stream(&server, &key, cursor).await;
        readers.push(tokio::spawn(async move {
            let got = frames(&mut socket, purchases_count - cursor as usize).await;
            let want: Vec<u64> = (cursor + 1..=purchases_count as u64).collect();
            assert_eq!(seqs(&got), want, "from cursor {cursor}");
        }));
    }
    buyer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
}

/// Keys per purchase of the `big` product: one event of about 100 KB.
const QUANTITY: u32 = 500;

/// The `big` product at 1 cent a key, with keys of 200 bytes for `purchases` purchases.
async fn big_product(server: &Server, purchases: u64) {
    let padding = "x".repeat(190);
    let all: Vec<String> = (0..purchases as usize * QUANTITY as usize)
        .map(|i| format!("{i:08}-{padding}"))
        .collect();
    server.product("big", 1, &all[..all.len() / 2]).await;
    let (code, body) = server.import("big", all[all.len() / 2..].join("\n")).await;
    assert_eq!(code, 200, "{body}");
}

/// A stream socket whose kernel receive buffer is small, so that a reader that stops
/// reading pushes back on the server within a few hundred KiB.
async fn stalled_stream(
    server: &Server,
    key: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let url = server.ws_url("/api/v1/reseller/stream?cursor=0");
    let mut request = url.into_client_request().unwrap();
    let bearer = format!("Bearer {key}").parse().unwrap();
    request.headers_mut().insert("Authorization", bearer);
    let addr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .expect("stream connects");
    socket
}

/// Reads a stalled stream to its close: the events seen (each of the `big` product, in seq
/// order from 1) and the close frame.
async fn read_until_close(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> (u64, tokio_tungstenite::tungstenite::protocol::CloseFrame) {
    let mut seen = 0u64;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["seq"].as_u64(), Some(seen + 1));
                assert_eq!(frame["cards"].as_array().unwrap().len(), QUANTITY as usize);
                seen += 1;
            }
            Some(Ok(Message::Close(Some(frame)))) => return (seen, frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("stream ended without a close reason after {seen}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_too_far_behind_is_cut_off_and_resumes_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    // Each purchase is one event of 500 keys of 200 bytes (about 100 KB), so the server's
    // per-reader byte bound is reached after a few dozen unread events.
    const PURCHASES: u64 = 150;
    big_product(&server, PURCHASES).await;
    let (_, key) = reseller(&server, "Sleeper", 1_000_000).await;
    let mut slow = stalled_stream(&server, &key).await;
    // Another reseller reads its own stream all along: the stalled reader must not hold
    // it up (each of its frames arrives while the sleeper's pile up).
    server.product("small", 100, &keys("small", 20)).await;
    let (_, awake_key) = reseller(&server, "Awake", 1_000_000).await;
    let mut awake = stream(&server, &awake_key, 0).await;
    let mut awake_bought = 0;
    for n in 0..PURCHASES {
        let (code, body) = buy(&server, &key, "big", QUANTITY, None).await;
        assert_eq!(code, 201, "{body}");
        if n % 10 == 9 {
            let (code, body) = buy(&server, &awake_key, "small", 1, None).await;
            assert_eq!(code, 201, "{body}");
            awake_bought += 1;
            assert_eq!(seqs(&frames(&mut awake, 1).await), [awake_bought]);
        }
    }
    // The reader wakes up: it gets an unbroken prefix, then a close naming its cursor.
    let (seen, reason) = read_until_close(&mut slow).await;
    assert!(seen < PURCHASES, "a stalled reader was never cut off");
    assert_eq!(u16::from(reason.code), 1013, "{reason:?}");
    assert!(
        reason.reason.contains(&format!("cursor={seen}")),
        "{reason:?}"
    );
    // Resuming from the cursor replays exactly the rest.
    let mut resumed = stream(&server, &key, seen).await;
    let rest = frames(&mut resumed, (PURCHASES - seen) as usize).await;
    let want: Vec<u64> = (seen + 1..=PURCHASES).collect();
    assert_eq!(seqs(&rest), want);
    quiet(&mut resumed).await;
}

/// The operator rotates a reseller's key (the old one stops at once, its open stream is
/// closed) and changes its discount (purchases from then on pay the new price); a revoked
/// account changes no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_discounts_change_for_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    server.product("rot", 1_000, &keys("rot", 10)).await;
    let (id, old_key) = reseller(&server, "Rotor", 10_000).await;
    assert_eq!(buy(&server, &old_key, "rot", 1, None).await.0, 201);
    assert_eq!(balance_of(&server, &old_key).await, 9_000, "full price");
    let discount = format!("/api/v1/admin/resellers/{id}/discount");
    let (code, body) = server
        .admin_post(&discount, json!({"discount_bp": 2_500}))
        .await;
    assert_eq!((code, &body["discount_bp"]), (200, &json!(2_500)), "{body}");
    let (code, body) = server
        .admin_post(&discount, json!({"discount_bp": 10_001}))
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, bought) = buy(&server, &old_key, "rot", 2, None).await;
    assert_eq!(
        (code, &bought["amount_cents"]),
        (201, &json!(1_500)),
        "{bought}"
    );

    // A stream open with the old key, caught up and waiting for live events.
    let mut open = stream(&server, &old_key, 0).await;
    assert_eq!(seqs(&frames(&mut open, 2).await), [1, 2]);
    let rotate = format!("/api/v1/admin/resellers/{id}/rotate-key");
    let (code, rotated) = server.admin_post(&rotate, json!({})).await;
    assert_eq!(code, 200, "{rotated}");
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(get(&server, &old_key, "/api/v1/reseller/me").await.0, 401);
    assert_eq!(buy(&server, &old_key, "rot", 1, None).await.0, 401);
    assert_eq!(stream_request(&server, &old_key, 0).await, Some(401));
    // The stream opened with the old key is closed with a reason.
    let closed = tokio::time::timeout(Duration::from_secs(10), open.next())
        .await
        .expect("closed within 10 s");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
            assert!(frame.reason.contains("rotated"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(balance_of(&server, &new_key).await, 7_500);
    let (code, _) = buy(&server, &new_key, "rot", 1, None).await;
    assert_eq!(code, 201);
    let mut resumed = stream(&server, &new_key, 2).await;
    assert_eq!(seqs(&frames(&mut resumed, 1).await), [3]);

    let revoke = format!("/api/v1/admin/resellers/{id}/revoke");
    assert_eq!(server.admin_post(&revoke, json!({})).await.0, 200);
    for path in [
        &rotate,
        &format!("/api/v1/admin/resellers/{id}/rotate-webhook-secret"),
    ] {
        let (code, body) = server.admin_post(path, json!({})).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (409, Some("reseller_revoked")),
            "{path}: {body}"
        );
    }
    let (code, _) = server
        .admin_post("/api/v1/admin/resellers/rs-99/rotate-key", json!({}))
        .await;
    assert_eq!(code, 404);
    drop((open, resumed));
    let mut server = server;
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// Webhook secrets reach neither the log nor sled in the clear (the API key is kept as a
/// hash only), and a server given another sealing key refuses to start rather than sign
/// webhooks it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_the_key_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_with(&data, UNLIMITED);
    let (code, created) = server
        .admin_post("/api/v1/admin/resellers", json!({"name": "Sealed"}))
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["reseller_id"].as_str().unwrap().to_owned();
    let rotate = format!("/api/v1/admin/resellers/{id}/rotate-webhook-secret");
    let (code, rotated) = server.admin_post(&rotate, json!({})).await;
    assert_eq!(code, 200, "{rotated}");
    let secrets = [
        created["webhook_secret"].as_str().unwrap(),
        rotated["webhook_secret"].as_str().unwrap(),
    ];
    assert!(secrets[1].starts_with("whsec_") && secrets[1] != secrets[0]);
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    server.stop();
    let bytes = files_bytes(&data);
    assert!(contains(&bytes, "sealed1:"), "the sealed form is there");
    for secret in secrets {
        assert!(!contains(&bytes, secret), "{secret} is stored in the clear");
    }
    let key_file = std::fs::read_to_string(data.join("sealing.key")).unwrap();
    assert_eq!(key_file.trim().len(), 64);

    // Restarts with its own key file; refuses another key, naming the cause.
    server.restart();
    assert_eq!(get(&server, &api_key, "/api/v1/reseller/me").await.0, 200);
    server.stop();
    // A start expected to be refused: (whether it ran on, what it printed).
    let refused_start = |env: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_panshi"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env("PANSHI_ADMIN_TOKEN", ADMIN)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stderr)
    };
    let wrong_key = "ab".repeat(32);
    let (started, stderr) = refused_start(&[("PANSHI_RESELLERS__SEALING_KEY", &wrong_key)]);
    assert!(!started, "started with the wrong key");
    assert!(
        stderr.contains("sealing key") && stderr.contains(&id),
        "{stderr}"
    );
    // The key file lost: no new key is made up for secrets sealed with the old one.
    std::fs::remove_file(data.join("sealing.key")).unwrap();
    let (started, stderr) = refused_start(&[]);
    assert!(!started, "started without its key");
    assert!(stderr.contains("sealing.key"), "{stderr}");
    assert!(!data.join("sealing.key").exists(), "a new key was made up");
    // Given back, the shop starts as before.
    std::fs::write(data.join("sealing.key"), &key_file).unwrap();
    server.restart();
    assert_eq!(get(&server, &api_key, "/api/v1/reseller/me").await.0, 200);
}

/// A reader replaying a long history with a key that is rotated meanwhile stops getting
/// card keys at once: the replay checks the key, it does not serve the rest of the history
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stops_when_its_key_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir);
    // About 24 MB of history, far more than the socket and server buffers hold.
    const PURCHASES: u64 = 240;
    big_product(&server, PURCHASES).await;
    let (id, key) = reseller(&server, "Replayer", 1_000_000).await;
    for _ in 0..PURCHASES {
        let (code, body) = buy(&server, &key, "big", QUANTITY, None).await;
        assert_eq!(code, 201, "{body}");
    }
    let mut slow = stalled_stream(&server, &key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotate = format!("/api/v1/admin/resellers/{id}/rotate-key");
    assert_eq!(server.admin_post(&rotate, json!({})).await.0, 200);
    let (seen, reason) = read_until_close(&mut slow).await;
    eprintln!("replay stopped after {seen} of {PURCHASES} events");
    assert_eq!(u16::from(reason.code), 1008, "{reason:?}");
    assert!(
        seen < PURCHASES,
        "the whole history was replayed after the rotation"
    );
}
