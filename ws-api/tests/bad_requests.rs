//! What fuzzing found at the edge (issue 17, items 5 and 6): errors outside the contract's
//! shape, malformed requests logged as if they were the server's fault, and malformed input
//! accepted. Real process, real sockets.

mod common;

use std::time::Duration;

use common::raw::{self, connect_from};
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

async fn send(server: &Server, method: &str, path: &str) -> (u16, String, Value) {
    let response = server
        .http
        .request(method.parse().unwrap(), server.url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

fn assert_error_shape(answer: &(u16, String, Value), status: u16, code: &str) {
    let (got, content_type, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Postmortem: a repeated query parameter got `text/plain` "Query deserialize error",
/// unknown routes and methods an empty 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_contract_shape_and_unknown_methods_are_405() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let answer = send(&server, "GET", "/api/v1/orders/o1?token=a&token=b").await;
    assert_error_shape(&answer, 400, "bad_query");
    assert_error_shape(
        &send(&server, "GET", "/no/such/route").await,
        404,
        "not_found",
    );
    for (method, path) in [
        ("DELETE", "/api/v1/orders"),
        ("PUT", "/api/v1/products"),
        ("POST", "/livez"),
        ("PATCH", "/api/v1/orders/o1"),
        ("DELETE", "/api/v1/payments/epay/notify"),
        ("GET", "/api/v1/payments/alipay/notify"),
        ("GET", "/api/v1/payments/wechat/notify"),
    ] {
        let answer = send(&server, method, path).await;
        assert_error_shape(&answer, 405, "method_not_allowed");
    }
}

/// Postmortem: every malformed request was an ERROR from the HTTP layer: a scanner could fill
/// the logs (and Sentry) with the clients' faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_counted_and_sampled_at_warn_never_errors() {
    const MALFORMED: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("server.log");
    let server = Server::start_logged(&dir.path().join("data"), &[], &stderr);
    let address = raw::address(&server.base);
    for n in 0..MALFORMED {
        let mut stream = connect_from(address, None).await;
        let request = match n % 3 {
            0 => "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_owned(),
            1 => "GARBAGE\r\n\r\n".to_owned(),
            _ => format!("GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b{n}\r\n\r\n"),
        };
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = raw::read_answer(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(answer.map(|a| a.0), Some(400));
    }
    let metrics = server.get_text("/metrics").await;
    let faults: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("panshi_http_client_faults_total "))
        .unwrap_or_else(|| panic!("no client-fault counter in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(faults >= MALFORMED as f64, "{faults} counted");
    let log = server.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:?}");
    let sampled = lines
        .iter()
        .filter(|l| l["target"] == "panshi::http" && l["level"] == "WARN")
        .count();
    assert_eq!(sampled, 1, "one sampled line per interval:\n{log}");
}

/// Postmortem: control characters were taken into product names (and rendered raw), a
/// webhook URL `http://[::1` or with port 99999 was stored, `Bearer` with extra spaces and
/// upper-case Epay signatures were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for name in ["nul\u{0}name", "esc\u{1b}[31m", "bell\u{7}"] {
        let (code, body) = server
            .admin_post(
                "/api/v1/admin/products",
                json!({"sku": "ctl", "name": name, "price_cents": 100, "currency": "CNY"}),
            )
            .await;
        assert_eq!(
            (code, body["error"].as_str()),
            (400, Some("bad_request")),
            "{name:?}: {body}"
        );
    }
    for url in [
        "http://[::1",
        "http://example.com:99999/hook",
        "http://exa mple.com/",
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "http:///nohost",
    ] {
        let (code, body) = server
            .admin_post(
                "/api/v1/admin/resellers",
                json!({"name": "r", "webhook_url": url}),
            )
            .await;
        assert_eq!(code, 400, "{url}: {body}");
    }
    let (code, body) = server
        .admin_post(
            "/api/v1/admin/resellers",
            json!({"name": "r", "webhook_url": "http://[::1]:8443/hook"}),
        )
        .await;
    assert_eq!(code, 201, "a well-formed URL is still taken: {body}");
    for header in [
        format!("Bearer  {ADMIN}"),
        format!("Bearer\t{ADMIN}"),
        "Bearer ".into(),
    ] {
        let status = server
            .http
            .get(server.url("/api/v1/admin/manual-review"))
            .header("Authorization", header.as_str())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401, "{header:?}");
    }
    let (code, body) = server
        .admin_post("/api/v1/ops/incident", json!({"note": "down\u{0}"}))
        .await;
    assert_eq!(code, 400, "{body}");
    server.product("sig", 1000, &keys("S", 1)).await;
    let (_, order) = server.order("sig", 1).await;
    let mut upper = epay_params(&order, PID, KEY, None);
    let sign = upper.iter_mut().find(|(k, _)| k == "sign").unwrap();
    sign.1 = sign.1.to_ascii_uppercase();
    assert_eq!(server.notify(&upper).await, (400, "fail".into()));
    assert_eq!(server.pay(&order).await, (200, "success".into()));
}
