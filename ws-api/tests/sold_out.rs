//! Sold out, answered from the published stock count: at once and without work for the
//! order, and never once a key is back (a restock, an order that lapsed).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A counter's value in the `/metrics` scrape (0 while it was never incremented).
async fn counter(server: &Server, name: &str) -> f64 {
    let text = server.get_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn order_with_password(server: &Server, sku: &str) -> (u16, Value) {
    let body = json!({
        "sku": sku,
        "quantity": 1,
        "contact": "buyer@example.com",
        "channel": "epay",
        "lookup_password": "a long lookup password",
    });
    server.order_with(body).await
}

/// A sold-out create costs no password hash (100,000 PBKDF2 rounds): in a flash sale most
/// buyers are told sold out, and each used to pay for a hash first.
#[tokio::test]
async fn a_sold_out_create_hashes_no_lookup_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(dir.path());
    server.product("gone", 100, &keys("GONE", 1)).await;
    let (code, first) = order_with_password(&server, "gone").await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(
        counter(&server, "panshi_lookup_password_hashes_total").await,
        1.0
    );
    for _ in 0..3 {
        let (code, body) = order_with_password(&server, "gone").await;
        assert_eq!(code, 409, "{body}");
        assert_eq!(body["error"], "sold_out");
    }
    assert_eq!(
        counter(&server, "panshi_lookup_password_hashes_total").await,
        1.0,
        "a sold-out create hashed a lookup password"
    );
    assert_eq!(
        counter(&server, "panshi_orders_sold_out_at_once_total").await,
        3.0
    );
}

/// Buyers racing for the last key while it is still there: only the winner's password is
/// hashed. (The hash used to come before the reservation, so every buyer in the race paid
/// for one and the winner was found only after all of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_for_the_last_key_hashes_only_the_winners_password() {
    const BUYERS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start_quiet(dir.path()));
    server.product("last", 100, &keys("LAST", 1)).await;
    let tasks: Vec<_> = (0..BUYERS)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { order_with_password(&server, "last").await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        let (code, body) = task.await.unwrap();
        match code {
            201 => won += 1,
            409 => assert_eq!(body["error"], "sold_out", "{body}"),
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        counter(&server, "panshi_lookup_password_hashes_total").await,
        1.0,
        "buyers who did not get the key had their passwords hashed"
    );
}

/// Keys imported into a sold-out product are for sale as soon as the import is answered.
#[tokio::test]
async fn a_restock_clears_sold_out_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(dir.path());
    server.product("again", 100, &keys("AGAIN", 1)).await;
    assert_eq!(server.order("again", 1).await.0, 201);
    let (code, body) = server.order("again", 1).await;
    assert_eq!((code, &body["error"]), (409, &json!("sold_out")));
    let (code, body) = server.import("again", "AGAIN-NEW-1\nAGAIN-NEW-2").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = server.order("again", 2).await;
    assert_eq!(
        code, 201,
        "a restocked product still answered sold out: {body}"
    );
    let (code, body) = server.order("again", 1).await;
    assert_eq!((code, &body["error"]), (409, &json!("sold_out")));
}

/// The key of an order that lapsed unpaid is offered again: sold out does not stick.
#[tokio::test]
async fn a_lapsed_orders_key_clears_sold_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("PANSHI_ORDER_TTL_SECS", "1"),
            ("PANSHI_LOG__LEVEL", "error"),
        ],
    );
    server.product("lapse", 100, &keys("LAPSE", 1)).await;
    let (code, first) = server.order("lapse", 1).await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(server.order("lapse", 1).await.0, 409);
    // The expiry is committed, then the key goes back to its shard: bounded by the TTL
    // and the expiry sweep, so this waits for the order's status, then for the key.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = server.order("lapse", 1).await;
        if code == 201 {
            break;
        }
        assert_eq!(body["error"], "sold_out", "{body}");
        assert!(
            Instant::now() < deadline,
            "the lapsed order's key never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, view) = server.lookup(&first).await;
    assert_eq!(view["status"], "expired", "{view}");
}

/// Anonymous memory the process holds in transparent huge pages, KiB (Linux).
fn anon_huge_pages_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Memory a crowd's requests touch is not backed by transparent huge pages: each first
/// touch of one made the kernel zero 2 MiB, a fifth of the server's CPU in a flash sale's
/// opening. What the allocator touched before `main` may stay in one or two.
#[tokio::test]
async fn the_server_keeps_no_transparent_huge_pages() {
    const BEFORE_MAIN_KIB_MAX: u64 = 8 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_quiet(dir.path());
    server.product("pages", 100, &keys("PAGES", 200)).await;
    for _ in 0..200 {
        assert_eq!(server.order("pages", 1).await.0, 201);
    }
    let Some(kib) = anon_huge_pages_kib(server.pid()) else {
        eprintln!("note: no /proc/PID/smaps_rollup here; nothing to check");
        return;
    };
    assert!(
        kib <= BEFORE_MAIN_KIB_MAX,
        "the server holds {kib} KiB in transparent huge pages"
    );
}
