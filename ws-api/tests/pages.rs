//! The HTML pages over plain HTTP: every page answers, its links resolve, the operator pages
//! refuse without a session, and every operator form refuses without its CSRF token.

mod common;

use std::collections::BTreeSet;

use common::{keys, Server, ADMIN};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::json;

fn demo(data: &std::path::Path) -> Server {
    Server::start_full(data, &[], &["--demo"])
}

/// A client that shows redirects instead of following them (sign-in answers with one).
fn manual_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The local targets of a page's `href` and `src` attributes.
fn local_links(html: &str) -> BTreeSet<String> {
    let mut links = BTreeSet::new();
    for marker in ["href=\"", "src=\""] {
        for piece in html.split(marker).skip(1) {
            let link = piece.split('"').next().unwrap().replace("&amp;", "&");
            if link.starts_with('/') && !link.starts_with("//") {
                links.insert(link);
            }
        }
    }
    links
}

/// The value of the hidden `csrf` field of the page's first form.
fn csrf_field(html: &str) -> String {
    let after = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .expect("a csrf field");
    after.split('"').next().unwrap().to_owned()
}

fn cookie_pair(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("a {name} cookie"))
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Signs in through the form; answers the session cookie (`name=value`) and its CSRF token.
async fn sign_in(server: &Server) -> (String, String) {
    let client = manual_client();
    let page = client.get(server.url("/admin")).send().await.unwrap();
    let sign_in_cookie = cookie_pair(&page, "panshi_sign_in");
    let csrf = csrf_field(&page.text().await.unwrap());
    let response = client
        .post(server.url("/admin/sign-in"))
        .header(COOKIE, &sign_in_cookie)
        .form(&[("token", ADMIN), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let set_cookie: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
    let session = set_cookie
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("panshi_session="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    let session = session.split(';').next().unwrap().to_owned();
    let dashboard = client
        .get(server.url("/admin"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (session.clone(), csrf_field(&dashboard))
}

/// An operator page's HTML, fetched with the session cookie.
async fn operator_page(server: &Server, path: &str, session: &str) -> String {
    manual_client()
        .get(server.url(path))
        .header(COOKIE, session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Fetches every link of every page in `pages` (one level deep) and asserts each answers 200.
async fn assert_links_resolve(server: &Server, pages: &[String], cookie: Option<&str>) {
    let mut seen = BTreeSet::new();
    for page in pages {
        let mut request = server.http.get(server.url(page));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        let html = response.text().await.unwrap();
        for link in local_links(&html) {
            if !seen.insert(link.clone()) {
                continue;
            }
            let mut request = server.http.get(server.url(&link));
            if let Some(cookie) = cookie {
                request = request.header(COOKIE, cookie);
            }
            let status = request.send().await.unwrap().status();
            assert_eq!(status, 200, "{link} (linked from {page})");
        }
    }
}

#[tokio::test]
async fn every_buyer_page_answers_and_its_links_resolve() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let (code, order) = server.order("vpn-30d", 1).await;
    assert_eq!(code, 201, "{order}");
    let order_page = format!(
        "/order/{}?token={}",
        order["order_id"].as_str().unwrap(),
        order["token"].as_str().unwrap()
    );
    let pages = [
        "/",
        "/product/vpn-30d",
        "/lookup",
        "/status",
        order_page.as_str(),
    ]
    .map(String::from);
    assert_links_resolve(&server, &pages, None).await;
    // A wrong token, an unknown product or order: a page that says so, not a leak.
    for path in [
        format!("/order/{}?token=wrong", order["order_id"].as_str().unwrap()),
        "/product/no-such-sku".to_owned(),
        "/order/nope?token=x".to_owned(),
    ] {
        let response = server.http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn pages_forbid_inline_script_and_assets_revalidate() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let page = server.http.get(server.url("/")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(html.len() < 40 * 1024, "a page is a few tens of KiB");
    let script = local_links(&html)
        .into_iter()
        .find(|l| l.starts_with("/assets/app.js"))
        .expect("the script");
    let first = server.http.get(server.url(&script)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let again = server
        .http
        .get(server.url(&script))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn the_language_follows_accept_language_and_the_switch() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let get = |accept: &'static str, cookie: &'static str| {
        let request = server
            .http
            .get(server.url("/"))
            .header("Accept-Language", accept)
            .header(COOKIE, cookie);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert!(get("zh-CN,zh;q=0.9", "").await.contains("lang=\"zh-CN\""));
    assert!(get("en-US", "").await.contains("lang=\"en\""));
    assert!(get("en-US", "panshi_lang=zh").await.contains("商品列表"));
    let switch = manual_client()
        .get(server.url("/lang/zh?next=//evil.example/"))
        .send()
        .await
        .unwrap();
    assert_eq!(switch.status(), 303);
    assert_eq!(switch.headers()[LOCATION], "/", "no open redirect");
}

#[tokio::test]
async fn operator_pages_refuse_without_a_session() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let client = manual_client();
    let sign_in = client.get(server.url("/admin")).send().await.unwrap();
    assert_eq!(sign_in.status(), 200);
    assert!(sign_in.text().await.unwrap().contains("name=\"token\""));
    for path in [
        "/admin/products",
        "/admin/queues",
        "/admin/orders/x",
        "/admin/order?order_id=x",
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    for path in [
        "/admin/import",
        "/admin/products",
        "/admin/incident",
        "/admin/orders/x/confirm",
        "/admin/orders/x/refund",
        "/admin/sign-out",
    ] {
        let response = client
            .post(server.url(path))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    // A forged session cookie is no session.
    let forged = client
        .get(server.url("/admin/products"))
        .header(COOKIE, "panshi_session=00000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn operator_pages_answer_and_their_links_resolve_with_a_session() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let (code, order) = server.order("vpn-30d", 1).await;
    assert_eq!(code, 201);
    let (session, _) = sign_in(&server).await;
    let trace = format!("/admin/orders/{}", order["order_id"].as_str().unwrap());
    let pages = ["/admin", "/admin/products", "/admin/queues", trace.as_str()].map(String::from);
    assert_links_resolve(&server, &pages, Some(&session)).await;
}

#[tokio::test]
async fn operator_forms_refuse_without_the_csrf_token() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let client = manual_client();
    // The sign-in form itself: no token from the form, no session.
    let refused = client
        .post(server.url("/admin/sign-in"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let (session, csrf) = sign_in(&server).await;
    let before = server.stock("vpn-30d").await;
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let request = client
            .post(server.url(path))
            .header(COOKIE, &session)
            .form(&fields);
        async move { request.send().await.unwrap() }
    };
    let import = |csrf: Option<String>| {
        let mut fields = vec![
            ("sku", "vpn-30d".to_owned()),
            ("keys", "CSRF-KEY-1\n".to_owned()),
        ];
        if let Some(csrf) = csrf {
            fields.push(("csrf", csrf));
        }
        fields
    };
    assert_eq!(post("/admin/import", import(None)).await.status(), 403);
    assert_eq!(
        post("/admin/import", import(Some("0".repeat(32))))
            .await
            .status(),
        403
    );
    assert_eq!(
        server.stock("vpn-30d").await,
        before,
        "a refused form changed nothing"
    );
    for path in ["/admin/products", "/admin/incident", "/admin/sign-out"] {
        assert_eq!(
            post(path, vec![("note", "x".into())]).await.status(),
            403,
            "{path}"
        );
    }
    let accepted = post("/admin/import", import(Some(csrf.clone()))).await;
    assert_eq!(accepted.status(), 200);
    assert!(accepted
        .text()
        .await
        .unwrap()
        .contains("<dd id=\"imported\">1</dd>"));
    assert_eq!(server.stock("vpn-30d").await.0, before.0 + 1);
}

#[tokio::test]
async fn an_operator_confirms_a_manual_payment_from_the_queue_page() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_full(
        data.path(),
        &[
            ("PANSHI_EPUSDT__GATEWAY_URL", "http://127.0.0.1:9"),
            ("PANSHI_EPUSDT__TOKEN", "epusdt-test-token-0123"),
        ],
        &[],
    );
    server.product("vpn-30d", 1500, &keys("VPN", 3)).await;
    let (code, order) = server
        .admin_post(
            "/api/v1/orders",
            json!({"sku": "vpn-30d", "quantity": 1, "contact": "m@example.com", "channel": "usdt"}),
        )
        .await;
    assert_eq!(
        (code, order["payment"]["channel"].as_str()),
        (201, Some("manual")),
        "{order}"
    );
    let (session, csrf) = sign_in(&server).await;
    let id = order["order_id"].as_str().unwrap();
    let queue = operator_page(&server, "/admin/queues", &session).await;
    assert!(
        queue.contains(&format!("/admin/orders/{id}/confirm")),
        "{queue}"
    );
    let confirmed = server
        .http
        .post(server.url(&format!("/admin/orders/{id}/confirm")))
        .header(COOKIE, &session)
        .form(&[("csrf", csrf.as_str()), ("note", "bank ref 42")])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    // The audit trail is read from sled, which the mirror fills a few milliseconds later.
    let mut trail = serde_json::Value::Null;
    for _ in 0..100 {
        trail = server.admin_get("/api/v1/admin/audit").await.1;
        if trail[0]["action"] == "confirm_payment" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(trail[0]["action"], "confirm_payment", "{trail}");
}

#[tokio::test]
async fn markup_in_a_product_name_is_escaped_everywhere() {
    let data = tempfile::tempdir().unwrap();
    let server = demo(data.path());
    let name = "<img src=x onerror=alert(1)>";
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/products",
            json!({"sku": "xss-1", "name": name, "price_cents": 100, "currency": "CNY"}),
        )
        .await;
    assert_eq!(code, 201);
    let (session, _) = sign_in(&server).await;
    for path in ["/", "/product/xss-1", "/admin/products"] {
        let html = operator_page(&server, path, &session).await;
        assert!(!html.contains("<img"), "{path}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}"
        );
    }
}

/// A shop with keys but no payment channel: buyers read "temporarily unavailable" (not
/// "sold out"), the operator's dashboard and products page say payments are not set up.
#[tokio::test]
async fn without_payment_channels_buyers_wait_and_the_operator_is_told_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_without_payments(dir.path());
    server
        .product("nopay", 100, &common::keys("NOPAY", 2))
        .await;
    let page = server.get_text("/product/nopay").await;
    assert!(page.contains("Temporarily unavailable"), "{page}");
    assert!(!page.contains("Sold out"), "{page}");
    assert!(
        !page.contains("not set up"),
        "buyers are not told the shop's set-up"
    );

    let (session, _) = sign_in(&server).await;
    for path in ["/admin", "/admin/products"] {
        let page = operator_page(&server, path, &session).await;
        assert!(page.contains("Payments are not set up"), "{path}: {page}");
    }

    // With a channel, neither shows.
    let paid = Server::start(&dir.path().join("paid"));
    paid.product("pay", 100, &common::keys("PAY", 2)).await;
    let page = paid.get_text("/product/pay").await;
    assert!(page.contains("Buy and pay"), "{page}");
    let (session, _) = sign_in(&paid).await;
    let dashboard = operator_page(&paid, "/admin", &session).await;
    assert!(!dashboard.contains("Payments are not set up"));
}

/// The operator pages speak people's words in both languages: statuses, alerts (without
/// repeating their subject), local times, and a heading over the confirm-payment form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pages_speak_in_words_and_local_times() {
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("PANSHI_ALERTS__EVALUATION_INTERVAL_SECS", "1"),
        ("PANSHI_ALERTS__STOCK_MIN", "5"),
        ("PANSHI_LOG__LEVEL", "error"),
    ];
    let server = Server::start_with(data.path(), &env);
    server.product("game-1", 100, &common::keys("G", 4)).await;
    let (_, order) = server.order("game-1", 1).await;
    let mut alerted = false;
    for _ in 0..100 {
        let (_, alerts) = server.admin_get("/api/v1/ops/alerts").await;
        if alerts["active"].to_string().contains("stock_low") {
            alerted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(alerted, "the stock_low alert fired");
    let (session, _) = sign_in(&server).await;
    let english = format!("{session}; panshi_lang=en");
    let chinese_cookie = format!("{session}; panshi_lang=zh");
    let dashboard = operator_page(&server, "/admin", &english).await;
    assert!(
        dashboard.contains("Stock running low</strong>: game-1: 3 keys available"),
        "{dashboard}"
    );
    assert!(!dashboard.contains("game-1: game-1"));
    assert!(dashboard.contains(">Awaiting payment<") && !dashboard.contains(">awaiting_payment<"));
    assert!(dashboard.contains("<time datetime=\"") && dashboard.contains("data-local"));
    let chinese = operator_page(&server, "/admin", &chinese_cookie).await;
    assert!(
        chinese.contains("库存不足") && chinese.contains(">待付款<"),
        "{chinese}"
    );
    let order_path = format!("/admin/orders/{}", order["order_id"].as_str().unwrap());
    let order_page = operator_page(&server, &order_path, &english).await;
    assert!(order_page.contains("<h2 id=\"confirm-h\">Confirm a payment received by hand</h2>"));
    assert!(
        order_page.contains(&format!("token={}", order["token"].as_str().unwrap())),
        "the buyer's link"
    );
    let orders_zh = operator_page(
        &server,
        "/admin/orders?status=awaiting_payment",
        &chinese_cookie,
    )
    .await;
    assert!(orders_zh.contains("订单号或联系方式") && orders_zh.contains("导出 CSV"));
}
