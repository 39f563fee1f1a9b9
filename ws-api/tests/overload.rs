//! The automatic waiting room over real sockets: when order creations pile up in flight
//! (here: a payment gateway that hangs), new buyers of every product get a ticket instead of
//! joining the pile; once the pile clears they are admitted first-in first-out, and when the
//! pipeline is calm and the rooms are empty, buyers are served directly again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A payment gateway that holds every request unanswered until released, then answers
/// 503 to all of them (and at once to later ones).
async fn hanging_gateway() -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (release, released) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = released.wait_for(|released| *released).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, release)
}

/// A server whose Epay payments are created through the hanging gateway (server-side,
/// so an order creation waits on it), with `env` besides; and the gateway's release.
async fn behind_hanging_gateway(
    dir: &tempfile::TempDir,
    env: &[(&str, &str)],
) -> (Arc<Server>, watch::Sender<bool>) {
    let (gateway, release) = hanging_gateway().await;
    let mut all = vec![
        ("PANSHI_EPAY__GATEWAY_URL", gateway.as_str()),
        ("PANSHI_EPAY__CREATE_VIA_MAPI", "true"),
    ];
    all.extend_from_slice(env);
    (Arc::new(Server::start_with(dir.path(), &all)), release)
}

async fn pipeline(server: &Server) -> Value {
    let (code, body) = server.admin_get("/api/v1/ops/pipeline").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Polls the pipeline view until `ready` holds (or fails after 15 s).
async fn until(server: &Server, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let view = pipeline(server).await;
        if ready(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {}", pipeline(server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pipeline_queues_new_buyers_and_admits_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (server, release) = behind_hanging_gateway(
        &dir,
        &[
            ("PANSHI_OVERLOAD__INFLIGHT_HIGH", "3"),
            ("PANSHI_OVERLOAD__INFLIGHT_LOW", "1"),
            ("PANSHI_OVERLOAD__LATENCY_HIGH_MS", "600000"),
            ("PANSHI_OVERLOAD__CALM_MS", "200"),
        ],
    )
    .await;
    server.product("hot", 100, &keys("HOT", 10)).await;
    server.product("cold", 100, &keys("COLD", 10)).await;
    let calm = pipeline(&server).await;
    assert_eq!(calm["saturated"], false, "{calm}");

    // Three buyers whose payment creation hangs: the pipeline's high-water mark.
    let stuck: Vec<_> = (0..3)
        .map(|n| {
            let server = server.clone();
            tokio::spawn(async move { server.order_as("hot", 1, &format!("stuck{n}@x.com")).await })
        })
        .collect();
    until(&server, "three creations in flight", |v| {
        v["in_flight"] == 3
    })
    .await;

    // Newcomers queue, per product, in arrival order; nobody joins the pile.
    let (code, first) = server.order_as("hot", 1, "first@x.com").await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(
        (first["status"].as_str(), first["position"].as_u64()),
        (Some("queued"), Some(1))
    );
    let (code, second) = server.order_as("hot", 1, "second@x.com").await;
    assert_eq!(
        (code, second["position"].as_u64()),
        (202, Some(2)),
        "{second}"
    );
    let (code, other) = server.order_as("cold", 1, "other@x.com").await;
    assert_eq!(
        (code, other["position"].as_u64()),
        (202, Some(1)),
        "{other}"
    );
    // Bad input is refused at once, not queued.
    let (code, bad) = server.order_as("nope", 1, "bad@x.com").await;
    assert_eq!(code, 404, "{bad}");
    let view = pipeline(&server).await;
    assert_eq!(view["saturated"], true, "{view}");
    assert_eq!(view["in_flight"], 3, "{view}");
    assert_eq!(
        view["rooms"],
        json!([{"sku": "cold", "opened_by": "overload", "waiting": 1},
               {"sku": "hot", "opened_by": "overload", "waiting": 2}])
    );

    let watchers: Vec<_> = [&first, &second, &other]
        .into_iter()
        .map(|ticket| {
            let (server, ticket) = (server.clone(), ticket.clone());
            tokio::spawn(async move { watch_ticket(&server, &ticket).await })
        })
        .collect();
    // Nothing is admitted while the pile is stuck.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pipeline(&server).await["rooms"][1]["waiting"], 2);

    // The gateway fails fast now: the stuck buyers get their orders (manual payment queue),
    // and the queue drains first-in first-out into orders.
    release.send(true).unwrap();
    for buyer in stuck {
        let (code, body) = buyer.await.unwrap();
        assert_eq!(code, 201, "{body}");
    }
    let mut created_at = Vec::new();
    for watcher in watchers {
        let frames = watcher.await.unwrap();
        let last = frames.last().expect("frames").clone();
        assert_eq!(frames[0]["status"], "queued", "{frames:?}");
        assert_eq!(last["status"], "admitted", "{frames:?}");
        let (code, order) = server.lookup(&last["order"]).await;
        assert_eq!(code, 200, "{order}");
        created_at.push(last["order"]["created_at"].as_str().unwrap().to_owned());
    }
    // One admission per tick while saturated (low-water mark 1): the first in line first.
    assert!(created_at[0] < created_at[1], "{created_at:?}");

    // Calm again and the rooms empty: buyers are served directly.
    until(&server, "calm and no rooms", |v| {
        v["saturated"] == false && v["rooms"] == json!([])
    })
    .await;
    let (code, direct) = server.order_as("hot", 1, "later@x.com").await;
    assert_eq!(code, 201, "{direct}");
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("panshi_overload_episodes_total 1"),
        "one episode counted"
    );
    promtool_check(&metrics);
}

/// A buyer whose first request is still being served directly (its gateway call hangs)
/// when a flash sale opens, and who retries with the same `Idempotency-Key`: the retry is
/// queued, and when admitted it waits for the first request and gets that same order,
/// rather than failing with "in progress".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_queued_behind_its_own_first_request_gets_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let (server, release) = behind_hanging_gateway(&dir, &[]).await;
    server.product("twice", 100, &keys("TWICE", 5)).await;
    let first = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .order_keyed("twice", 1, "a@x.com", "same-buyer")
                .await
        })
    };
    until(&server, "the first request in flight", |v| {
        v["in_flight"] == 1
    })
    .await;
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/products/twice/flash-sale",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, ticket) = server
        .order_keyed("twice", 1, "a@x.com", "same-buyer")
        .await;
    assert_eq!(
        (code, ticket["status"].as_str()),
        (202, Some("queued")),
        "{ticket}"
    );
    let watcher = {
        let (server, ticket) = (server.clone(), ticket.clone());
        tokio::spawn(async move { watch_ticket(&server, &ticket).await })
    };
    // Admitted while the first request still hangs; then the gateway answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.send(true).unwrap();
    let (code, order) = first.await.unwrap();
    assert_eq!(code, 201, "{order}");
    let frames = watcher.await.unwrap();
    let last = frames.last().expect("frames");
    assert_eq!(last["status"], "admitted", "{frames:?}");
    assert_eq!(
        last["order"]["order_id"], order["order_id"],
        "the same order"
    );
    assert_eq!(
        server.stock("twice").await,
        (4, 1, 0),
        "one key reserved, once"
    );
}
