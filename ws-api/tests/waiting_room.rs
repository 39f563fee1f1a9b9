//! The flash-sale waiting room over real sockets: buyers get tickets with positions, watch
//! them advance live, and are admitted first-in first-out into orders or told sold out; a
//! VIP buyer who came last is among the first admitted.

mod common;

use common::*;
use serde_json::{json, Value};

async fn join(server: &Server, contact: &str) -> Value {
    join_sku(server, "rush", contact).await
}

async fn join_sku(server: &Server, sku: &str, contact: &str) -> Value {
    let (code, ticket) = server.order_as(sku, 1, contact).await;
    assert_eq!(code, 202, "{ticket}");
    assert_eq!(ticket["status"], "queued");
    ticket
}

/// Joins `rush`'s queue with a VIP invite code.
async fn join_vip(server: &Server, contact: &str, code: &str) -> Value {
    let body = json!({"sku": "rush", "quantity": 1, "contact": contact, "channel": "epay", "vip_code": code});
    let r = server
        .http
        .post(server.url("/api/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, ticket) = answer(r).await;
    assert_eq!(status, 202, "{ticket}");
    ticket
}

/// A server configured by `config` (TOML) with `sku` (3 keys) on flash sale.
async fn flash_sale(dir: &std::path::Path, config: &str, sku: &str) -> Server {
    let path = dir.join("panshi.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start_full(
        &dir.join("data"),
        &[],
        &["--config", path.to_str().unwrap()],
    );
    server
        .product(sku, 100, &keys(&sku.to_uppercase(), 3))
        .await;
    let (code, _) = server
        .admin_post(
            &format!("/api/v1/admin/products/{sku}/flash-sale"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(code, 200);
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_queue_advance_live_and_are_admitted_in_order_or_told_sold_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = flash_sale(
        dir.path(),
        "[flash]\nadmit_per_second = 4\nvip_share_percent = 50\n\
         [risk]\nblocked_contacts = [\"banned@x.com\"]\n",
        "rush",
    )
    .await;
    let mut tickets = Vec::new();
    for n in 0..8 {
        let ticket = join(&server, &format!("b{n}@x.com")).await;
        assert_eq!(ticket["position"], n + 1, "{ticket}");
        tickets.push(ticket);
    }
    // A blocked buyer is refused at the door with the rule's code, not queued to fail later.
    let (code, refused) = server.order_as("rush", 1, "banned@x.com").await;
    assert_eq!(
        (code, refused["error"].as_str()),
        (403, Some("blocked_contact")),
        "{refused}"
    );
    let (code, invite) = server
        .admin_post(
            "/api/v1/admin/vip-invites",
            json!({"label": "big-customer"}),
        )
        .await;
    assert_eq!(code, 201, "{invite}");
    let vip = join_vip(&server, "vip@x.com", invite["code"].as_str().unwrap()).await;
    assert_eq!(vip["position"], 1, "the VIP lane has its own queue");
    let watchers: Vec<_> = tickets
        .iter()
        .chain([&vip])
        .map(|t| watch_ticket(&server, t))
        .collect();
    let outcomes = futures_util::future::join_all(watchers).await;
    let last = |frames: &Vec<Value>| frames.last().cloned().unwrap();
    let admitted: Vec<&Vec<Value>> = outcomes
        .iter()
        .filter(|f| last(f)["status"] == "admitted")
        .collect();
    let sold_out = outcomes
        .iter()
        .filter(|f| last(f)["status"] == "sold_out")
        .count();
    assert_eq!((admitted.len(), sold_out), (3, 6), "{outcomes:?}");
    assert_eq!(
        last(outcomes.last().unwrap())["status"],
        "admitted",
        "the VIP was admitted"
    );
    assert_eq!(
        last(&outcomes[0])["status"],
        "admitted",
        "the first public buyer was admitted"
    );
    for frames in &admitted {
        let order = &last(frames)["order"];
        assert_eq!(order["status"], "awaiting_payment");
        assert_eq!(server.pay(order).await, (200, "success".into()));
    }
    let advanced = outcomes.iter().any(|frames| {
        let positions: Vec<u64> = frames
            .iter()
            .filter_map(|f| f["position"].as_u64())
            .collect();
        positions.windows(2).any(|w| w[1] < w[0])
    });
    assert!(
        advanced,
        "positions were pushed live as the queue advanced: {outcomes:?}"
    );
    assert_eq!(server.stock("rush").await, (0, 0, 3));
}

/// A buyer who submits twice while queued (a double click, a client retry) holds one
/// place: the same ticket back, a mismatch for another request under the key, and after
/// admission the retry answers the one order made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_queued_gets_the_same_ticket_and_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = flash_sale(dir.path(), "[flash]\nadmit_per_second = 1\n", "drip").await;
    // Someone ahead, so that the retries below find the ticket still waiting.
    let ahead = join_sku(&server, "drip", "first@x.com").await;
    let send = |quantity: u32| server.order_keyed("drip", quantity, "twice@x.com", "double-click");
    let (c1, first) = send(1).await;
    let (c2, again) = send(1).await;
    assert_eq!((c1, c2), (202, 202), "{first} {again}");
    assert_eq!(first["ticket"], again["ticket"], "one place in the queue");
    assert_eq!(first["token"], again["token"]);
    assert_eq!(again["position"], 2, "{again}");
    let (c3, other) = send(2).await;
    assert_eq!(
        (c3, other["error"].as_str()),
        (422, Some("idempotency_mismatch")),
        "{other}"
    );
    let frames = watch_ticket(&server, &first).await;
    let outcome = frames.last().unwrap();
    assert_eq!(outcome["status"], "admitted", "{frames:?}");
    let (c4, retried) = send(1).await;
    assert_eq!(c4, 201, "{retried}");
    assert_eq!(retried["order_id"], outcome["order"]["order_id"]);
    let ahead_frames = watch_ticket(&server, &ahead).await;
    assert_eq!(ahead_frames.last().unwrap()["status"], "admitted");
    assert_eq!(
        server.stock("drip").await,
        (1, 2, 0),
        "two orders, not three"
    );
}
