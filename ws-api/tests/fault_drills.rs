//! Fault drills on a real `panshi` process: a torn log tail, a full disk that heals, an
//! unreadable sled mirror, and a SIGTERM under keep-alive traffic. Each test is a drill that
//! once needed a person (issue 17) and must not any more.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The newest log segment of a data dir.
fn last_segment(data: &Path) -> PathBuf {
    let mut files: Vec<_> = fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files.pop().expect("a log segment")
}

/// The JSON log lines of a server at `level` (as `"WARN"`), parsed.
fn log_lines(text: &str, level: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == level)
        .collect()
}

/// Postmortem: cutting a torn tail was logged at info, so a server at `warn` removed bytes
/// from its data dir without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_with_a_warning_naming_the_bytes_and_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = dir.path().join("server.log");
    let mut server = Server::start_logged(&data, &[], &stderr);
    server.product("t1", 100, &keys("T", 1)).await;
    server.product("t2", 100, &[]).await;
    server.stop();
    // Tear the last record as a crash mid-write would: its final 5 bytes never landed.
    let segment = last_segment(&data);
    let len = fs::metadata(&segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let torn_bytes = fs::metadata(&segment).unwrap().len();
    server.restart();
    let warnings = log_lines(&server.log_text(), "WARN");
    let cut = warnings
        .iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("torn tail"))
        })
        .unwrap_or_else(|| panic!("no WARN about the cut among {warnings:?}"));
    let fields = &cut["fields"];
    let kept = fields["kept_bytes"].as_u64().unwrap();
    assert_eq!(
        fields["truncated_bytes"].as_u64().unwrap() + kept,
        torn_bytes,
        "{cut}"
    );
    assert!(fields["last_lsn_kept"].as_u64().unwrap() >= 2, "{cut}");
    assert_eq!(fs::metadata(&segment).unwrap().len(), kept);
    // The torn record (t2's creation) is gone; everything before it is there.
    let products: Value = server
        .http
        .get(server.url("/api/v1/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let skus: Vec<&str> = products
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["t1"]);
}

const GET_PRODUCTS: &[u8] = b"GET /api/v1/products HTTP/1.1\r\nHost: panshi\r\n\r\n";

/// Postmortem: SIGTERM closed the listener at once and dropped the requests already written
/// to idle keep-alive connections (20 of 20 in a drill); a load balancer had no moment to
/// see the node leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_keep_alive_clients_answers_what_is_in_flight_then_stops() {
    use common::raw::{self, RawSocket};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    const KEEP_ALIVE: usize = 20;
    const DRAIN: Duration = Duration::from_millis(1_500);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(dir.path(), &[("PANSHI_HTTP__DRAIN_MS", "1500")]);
    server.product("d", 100, &keys("D", 5)).await;
    let (_, order) = server.order("d", 1).await;
    let address = raw::address(&server.base);
    let wait = Duration::from_secs(5);
    let mut idle = Vec::new();
    for _ in 0..KEEP_ALIVE {
        let mut stream = raw::connect_from(address, None).await;
        stream.write_all(GET_PRODUCTS).await.unwrap();
        let (status, head, _) = raw::read_answer(&mut stream, wait).await.unwrap();
        assert_eq!(status, 200);
        assert_ne!(raw::header(&head, "connection"), Some("close"));
        idle.push(stream);
    }
    let live = format!(
        "/api/v1/orders/{}/live?token={}",
        order["order_id"].as_str().unwrap(),
        order["token"].as_str().unwrap()
    );
    let mut socket = RawSocket::open(&server.base, &live, "").await.unwrap();
    assert_eq!(socket.read_frame(wait).await.unwrap().opcode, 0x1);
    // A request in flight across the end of the drain: its body's second half arrives
    // after the listener closed.
    let body = br#"{"sku":"d","quantity":1,"contact":"late@example.com","channel":"epay"}"#;
    let mut in_flight = raw::connect_from(address, None).await;
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: panshi\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..10]).await.unwrap();

    let signalled = Instant::now();
    server.terminate();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every idle keep-alive connection is still answered, and told to close.
    for stream in &mut idle {
        stream.write_all(GET_PRODUCTS).await.unwrap();
        let answer = raw::read_answer(stream, wait).await;
        let (status, head, _) = answer.expect("an answer on a keep-alive connection");
        assert_eq!(status, 200);
        assert_eq!(raw::header(&head, "connection"), Some("close"));
    }
    // Not ready, but still serving new connections during the drain.
    let readyz = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let products = server.http.get(server.url("/api/v1/products")).send().await;
    assert_eq!(products.unwrap().status().as_u16(), 200);
    // At the end of the drain the live socket is told to go away (and reconnect elsewhere).
    assert_eq!(socket.close_code(wait).await, Some(Some(1001)));
    assert!(signalled.elapsed() >= DRAIN - Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the listener is closed after the drain"
    );
    in_flight.write_all(&body[10..]).await.unwrap();
    let (status, _, answer) = raw::read_answer(&mut in_flight, wait)
        .await
        .expect("the request in flight is answered");
    assert_eq!(status, 201, "{answer}");
    assert!(server.wait_exit().success());
    assert!(signalled.elapsed() < DRAIN + wait);
}
