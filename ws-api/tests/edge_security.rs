//! The edge and its resources (issue 15, items 12-16), over real sockets: bounded metric
//! labels, an optional token on `/metrics`, no-store on every API answer, `Secure` from
//! configuration only, and sampled logs for what anyone can send.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Postmortem: any token was accepted as an HTTP method and became a Prometheus label
/// (20,000 made-up methods: +22 MB for good, a 35 MB `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_are_refused_and_grow_no_label() {
    // Refused as any method a path does not take: 405, in the error shape.
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    for n in 0..200 {
        let method = reqwest::Method::from_bytes(format!("BREW{n:04}").as_bytes()).unwrap();
        let r = server
            .http
            .request(method, server.url("/api/v1/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405);
    }
    let scrape = server.get_text("/metrics").await;
    assert!(!scrape.contains("BREW"), "a made-up method became a label");
    assert!(scrape.contains("method=\"other\""), "counted as other");
    promtool_check(&scrape);
}

/// `/metrics` names SKUs, their stock and payment counts: with `metrics.token` set it
/// needs that token (or the operator's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    const SCRAPE: &str = "scrape-token-0123456789abcdef0123";
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), &[("PANSHI_METRICS__TOKEN", SCRAPE)]);
    let status = |token: Option<&str>| {
        let mut request = server.http.get(server.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("wrong-token")).await, 401);
    assert_eq!(status(Some(SCRAPE)).await, 200);
    assert_eq!(status(Some(ADMIN)).await, 200);
    let open = tempfile::tempdir().unwrap();
    let public = Server::start(open.path());
    let r = public
        .http
        .get(public.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "public without the setting (the contract)"
    );
}

fn assert_hardened(response: &reqwest::Response, what: &str) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("cache-control").as_deref(),
        Some("no-store"),
        "{what}"
    );
    assert_eq!(
        header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
}

/// Postmortem: JSON answers that carry keys (order lookups, reseller purchases, parked
/// webhook events) had no `Cache-Control: no-store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_answer_is_no_store_and_nosniff() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    server.product("cache", 100, &keys("K", 3)).await;
    let (_, order) = server.order("cache", 1).await;
    assert_eq!(server.pay(&order).await.0, 200);
    let lookup = format!(
        "/api/v1/orders/{}?token={}",
        order["order_id"].as_str().unwrap(),
        order["token"].as_str().unwrap()
    );
    for path in [
        "/api/v1/products",
        lookup.as_str(),
        "/api/v1/orders/nope?token=x",
    ] {
        let r = server.http.get(server.url(path)).send().await.unwrap();
        assert_hardened(&r, path);
    }
    let (code, reseller) = server
        .admin_post("/api/v1/admin/resellers", json!({"name": "R"}))
        .await;
    assert_eq!(code, 201, "{reseller}");
    let body = json!({"sku": "cache", "quantity": 1, "contact": "c@x.com", "channel": "epay"});
    let r = server
        .http
        .post(server.url("/api/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_hardened(&r, "order creation");
    let r = server
        .http
        .post(server.url("/api/v1/reseller/orders"))
        .bearer_auth(reseller["api_key"].as_str().unwrap())
        .json(&json!({"sku": "cache", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_hardened(&r, "reseller purchase");
}

async fn sign_in_cookie(server: &Server, forwarded_proto: Option<&str>) -> String {
    let mut request = server.http.get(server.url("/admin"));
    if let Some(proto) = forwarded_proto {
        request = request.header("X-Forwarded-Proto", proto);
    }
    let r = request.send().await.unwrap();
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Postmortem: the session cookie's `Secure` followed a client-supplied
/// `X-Forwarded-Proto`. It follows `public_url` now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_cookies_follow_the_configuration_not_a_header() {
    let data = tempfile::tempdir().unwrap();
    let https = Server::start_with(
        data.path(),
        &[("PANSHI_PUBLIC_URL", "https://shop.example")],
    );
    let cookie = sign_in_cookie(&https, None).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    let cookie = sign_in_cookie(&https, Some("http")).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    let other = tempfile::tempdir().unwrap();
    let http = Server::start(other.path());
    let cookie = sign_in_cookie(&http, Some("https")).await;
    assert!(
        cookie.contains("panshi_sign_in=") && !cookie.contains("Secure"),
        "{cookie}"
    );
}

/// Postmortem: every forged notify wrote a WARN line (2,000 a second from one client).
/// The log is sampled; the counter counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifies_are_counted_in_full_and_logged_sampled() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let server = Server::start_logged(&data.path().join("data"), &[], &log);
    server.product("forged", 100, &keys("F", 1)).await;
    let (_, order) = server.order("forged", 1).await;
    const FORGED: usize = 300;
    let started = std::time::Instant::now();
    for _ in 0..FORGED {
        let (code, _) = server
            .notify(&epay_params(&order, PID, "not-the-merchant-key", None))
            .await;
        assert_eq!(code, 400);
    }
    let windows = started.elapsed().as_secs() + 2;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("epay notify rejected"))
        .count();
    assert!(lines >= 1, "the forgeries show in the log");
    assert!(
        lines as u64 <= 10 * windows,
        "{lines} lines in {windows} windows"
    );
    let scrape = server.get_text("/metrics").await;
    let counted = scrape
        .lines()
        .find(|l| {
            l.starts_with("panshi_payment_notifies_total")
                && l.contains("channel=\"epay\"")
                && l.contains("reason=\"verification\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(counted, Some(FORGED as f64), "{scrape}");
}

/// The request metrics label each answer with its route's pattern, read after routing
/// (the buyer's and gateways' routes carry it; others are matched again); a path no route
/// takes is `unmatched`, and a method a labelled route does not take still falls through to
/// the contract's 405 or 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_label_every_answer_with_its_route_pattern() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    server.product("labels", 500, &keys("LBL", 2)).await;
    let (status, order) = server.order("labels", 1).await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(server.pay(&order).await.0, 200);
    assert_eq!(server.lookup(&order).await.0, 200);
    assert!(!server.get_text("/livez").await.is_empty());
    let lookup_as_get = server
        .http
        .get(server.url("/api/v1/orders/lookup"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lookup_as_get.status().as_u16(),
        404,
        "GET of the POST-only path"
    );
    let create_as_get = server
        .http
        .get(server.url("/api/v1/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(create_as_get.status().as_u16(), 405);
    let body: serde_json::Value = create_as_get.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed", "{body}");
    let _ = server.get_text("/no/such/path").await;
    let scrape = server.get_text("/metrics").await;
    for series in [
        r#"route="/api/v1/orders",method="POST",status="2xx""#,
        r#"route="/api/v1/payments/epay/notify",method="POST",status="2xx""#,
        r#"route="/api/v1/orders/{order_id}",method="GET",status="2xx""#,
        r#"route="/livez",method="GET",status="2xx""#,
        r#"route="/api/v1/orders/{order_id}",method="GET",status="4xx""#,
        r#"route="unmatched",method="GET",status="4xx""#,
    ] {
        let line = format!("panshi_http_requests_total{{{series}}} ");
        assert!(
            scrape.lines().any(|l| l.starts_with(&line)),
            "no {line} in\n{}",
            scrape
                .lines()
                .filter(|l| l.starts_with("panshi_http_requests_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    promtool_check(&scrape);
}
