//! Hostile clients from the fuzzing round (issue 17), each over real sockets against a real
//! `panshi` process, with what the server spends on them measured: its RSS, the connections it
//! holds, and how long the answers take.

mod common;

use std::time::{Duration, Instant};

use common::raw::{self, RawSocket};
use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

fn live_path(order: &Value) -> String {
    format!(
        "/api/v1/orders/{}/live?token={}",
        order["order_id"].as_str().unwrap(),
        order["token"].as_str().unwrap()
    )
}

async fn watched_order(server: &Server, sku: &str) -> Value {
    server.product(sku, 100, &keys(sku, 4)).await;
    let (code, order) = server.order(sku, 1).await;
    assert_eq!(code, 201, "{order}");
    order
}

/// Postmortem: actix-http buffers a client frame until it is complete, whatever length its
/// header declares: 8 sockets declaring 2^40-byte frames and sending 64 MiB took the server
/// from 68 MB to 873 MB, and kept it there while they idled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_declared_over_the_limit_is_closed_with_1009_before_it_is_buffered() {
    const SOCKETS: usize = 8;
    const SENT_BYTES: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let order = watched_order(&server, "big").await;
    let sockets_before = raw::sockets_count(server.pid());
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let mut socket = RawSocket::open(&server.base, &live_path(&order), "")
            .await
            .unwrap();
        assert_eq!(socket.read_frame(WAIT).await.unwrap().opcode, 0x1);
        sockets.push(socket);
    }
    let before = raw::rss_bytes(server.pid());
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent_total = 0;
    for socket in &mut sockets {
        socket
            .stream
            .write_all(&RawSocket::header(0x2, 1 << 40))
            .await
            .unwrap();
        // The server may close before all of it is sent: that is the point.
        let mut sent = 0;
        while sent < SENT_BYTES {
            match tokio::time::timeout(WAIT, socket.stream.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent_total += sent;
    }
    // Held while they idle: measured after a pause, the sockets still open on our side.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = raw::rss_bytes(server.pid()).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "RSS grew by {} MiB for {SOCKETS} sockets that sent {} MiB",
        grown >> 20,
        sent_total >> 20
    );
    for socket in &mut sockets {
        assert_eq!(socket.close_code(WAIT).await, Some(Some(1009)));
    }
    // And the server lets go of the connections themselves.
    let deadline = Instant::now() + WAIT;
    while raw::sockets_count(server.pid()) > sockets_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(raw::sockets_count(server.pid()), sockets_before);
}

/// Issue 19, item 4: a client's Close was answered after about 1 s and without a code (the
/// client saw 1005). RFC 6455 5.5.1: echo it at once, with the client's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_echoed_at_once_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let order = watched_order(&server, "bye").await;
    for code in [1000u16, 1001, 4321] {
        let mut socket = RawSocket::open(&server.base, &live_path(&order), "")
            .await
            .unwrap();
        assert_eq!(socket.read_frame(WAIT).await.unwrap().opcode, 0x1);
        let started = Instant::now();
        socket.send_frame(0x8, &code.to_be_bytes()).await;
        let answer = socket.read_frame(WAIT).await.expect("a close in answer");
        let waited = started.elapsed();
        assert_eq!((answer.opcode, answer.close_code()), (0x8, Some(code)));
        assert!(
            waited < Duration::from_millis(250),
            "answered after {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let order = watched_order(&server, "utf").await;
    let mut socket = RawSocket::open(&server.base, &live_path(&order), "")
        .await
        .unwrap();
    assert_eq!(socket.read_frame(WAIT).await.unwrap().opcode, 0x1);
    socket.send_frame(0x1, &[b'o', b'k', 0xff, 0xfe]).await;
    assert_eq!(socket.close_code(WAIT).await, Some(Some(1007)));
}

/// Postmortem: a 17th socket on one order was upgraded, sent a frame and closed with 1013
/// ("try again"), and its reconnect the same way: a reconnect loop. Now it is refused before
/// the upgrade, with a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_over_an_orders_limit_are_refused_before_the_upgrade_with_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let order = watched_order(&server, "crowd").await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut socket = RawSocket::open(&server.base, &live_path(&order), "")
            .await
            .unwrap();
        assert_eq!(socket.read_frame(WAIT).await.unwrap().opcode, 0x1);
        open.push(socket);
    }
    let Err((status, head, body)) = RawSocket::open(&server.base, &live_path(&order), "").await
    else {
        panic!("the 17th socket on one order was upgraded");
    };
    assert_eq!(status, 429, "{head}\n{body}");
    let retry_after: u64 = raw::header(&head, "retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 10, "Retry-After {retry_after}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "too_many_sockets", "{body}");
    // One closes: there is room again.
    let mut leaving = open.pop().unwrap();
    leaving.send_frame(0x8, &1000u16.to_be_bytes()).await;
    assert_eq!(leaving.close_code(WAIT).await, Some(Some(1000)));
    drop(leaving);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(socket) = RawSocket::open(&server.base, &live_path(&order), "").await {
            again = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.expect("a socket fits once one closed");
    assert_eq!(again.read_frame(WAIT).await.unwrap().opcode, 0x1);
}

/// The same for a reseller's streams: the 17th was refused with 503 (retry at once); now
/// 429 with a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseller_streams_over_the_limit_are_refused_with_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, created) = server
        .admin_post(
            "/api/v1/admin/resellers",
            serde_json::json!({"name": "crowd"}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let auth = format!(
        "Authorization: Bearer {}\r\n",
        created["api_key"].as_str().unwrap()
    );
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(
            RawSocket::open(&server.base, "/api/v1/reseller/stream", &auth)
                .await
                .unwrap(),
        );
    }
    let Err((status, head, body)) =
        RawSocket::open(&server.base, "/api/v1/reseller/stream", &auth).await
    else {
        panic!("the 17th stream was upgraded");
    };
    assert_eq!(status, 429, "{head}\n{body}");
    assert!(raw::header(&head, "retry-after").is_some());
}
