//! The flash-sale waiting room over real sockets: buyers get tickets with positions, watch
//! them advance live, and are admitted first-in first-out into orders or told sold out; a
//! VIP buyer who came last is among the first admitted.

mod common;

use common::*;
use serde_json::{json, Value};

async fn join(server: &Server, contact: &str) -> Value {
    let (code, ticket) = server.order_as("rush", 1, contact).await;
    assert_eq!(code, 202, "{ticket}");
    assert_eq!(ticket["status"], "queued");
    ticket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_queue_advance_live_and_are_admitted_in_order_or_told_sold_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("panshi.toml");
    std::fs::write(
        &config,
        "[flash]\nadmit_per_second = 4\nvip_share_percent = 50\nvip_contacts = [\"vip@x.com\"]\n\
         [risk]\nblocked_contacts = [\"banned@x.com\"]\n",
    )
    .unwrap();
    let server = Server::start_full(
        &dir.path().join("data"),
        &[],
        &["--config", config.to_str().unwrap()],
    );
    server.product("rush", 100, &keys("RUSH", 3)).await;
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/products/rush/flash-sale",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(code, 200);
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
    let vip = join(&server, "VIP@x.com").await;
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
