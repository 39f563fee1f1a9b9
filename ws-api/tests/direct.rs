//! Alipay and WeChat Pay direct, over real sockets: a real `panshi` process and the gateway
//! simulator speaking both protocols. The whole purchase on each channel (Alipay page, wap
//! for phones, precreate QR; WeChat Pay Native QR); forged, foreign-merchant, wrong-amount,
//! stale and replayed notifies change nothing; reconciliation by query and close at
//! expiry; fallback to Epay when the direct channel's breaker is open; a malformed key
//! refuses the start, named.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::keys::PrivateKey;
use engine::wechatpay::ApiV3Key;
use serde_json::{json, Value};
use simulations::gateway::keys::{self as simkeys, shop_env};
use simulations::gateway::{self, Config, Faults, Gateway, NotifyOutcome};
use ws_api::routes::direct_notify::{ALIPAY_NOTIFY_BYTES_MAX, WECHAT_NOTIFY_BYTES_MAX};

const IPHONE: &str =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36";

async fn simulator() -> Gateway {
    gateway::start(Config {
        seed: 20,
        notify_backoff_first_ms: 200,
        ..Config::new(PID, KEY, "unused")
    })
    .await
    .unwrap()
}

/// A shop configured for both direct channels at `gateway`, plus `extra` settings.
fn shop(dir: &std::path::Path, gateway: &Gateway, extra: &[(&str, &str)]) -> Server {
    let mut env = shop_env(gateway.base_url());
    // Refused notifies are the point of several tests: their warnings are not output.
    env.push(("PANSHI_LOG__LEVEL".into(), "error".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with(dir, &env)
}

async fn order_from(server: &Server, sku: &str, channel: &str, user_agent: &str) -> Value {
    let body =
        json!({"sku": sku, "quantity": 1, "contact": "buyer@example.com", "channel": channel});
    let response = server
        .http
        .post(server.url("/api/v1/orders"))
        .header("User-Agent", user_agent)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (code, order) = answer(response).await;
    assert_eq!(code, 201, "{order}");
    order
}

async fn wait_for(server: &Server, order: &Value, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = server.lookup(order).await.1["status"].clone();
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {now}, waited for {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order_page(server: &Server, order: &Value) -> String {
    server
        .get_text(&format!(
            "/order/{}?token={}",
            order["order_id"].as_str().unwrap(),
            order["token"].as_str().unwrap()
        ))
        .await
}

/// What the QR code on an order page says, read back as a phone's camera would read it:
/// the page's SVG path drawn at 4 pixels per module and decoded by rqrr.
fn page_qr_text(page: &str) -> String {
    let svg = &page[page.find("<svg class=\"qr\"").expect("a QR code")..];
    let attribute = |name: &str| {
        let start = svg.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        svg[start..start + svg[start..].find('"').unwrap()].to_owned()
    };
    let size: usize = attribute("viewBox")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut dark = vec![false; size * size];
    for module in attribute("d").split('M').filter(|m| !m.is_empty()) {
        let (x, rest) = module.split_once(' ').unwrap();
        let y = rest.split('h').next().unwrap();
        dark[y.parse::<usize>().unwrap() * size + x.parse::<usize>().unwrap()] = true;
    }
    const SCALE: usize = 4;
    let mut image = rqrr::PreparedImage::prepare_from_bitmap(size * SCALE, size * SCALE, |x, y| {
        dark[(y / SCALE) * size + x / SCALE]
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the page");
    grids[0].decode().expect("the QR code decodes").1
}

/// The buyer's browser: opens the payment URL and presses the cashier's Pay button.
async fn pay_at_cashier(gateway: &Gateway, url: &str) {
    let http = reqwest::Client::new();
    let page = http.get(url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "the cashier opens");
    let page = page.text().await.unwrap();
    let action = page
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the cashier has a Pay button");
    let paid = http
        .post(format!("{}{action}", gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status().as_u16(), 200);
}

/// The buyer scans and pays (WeChat Pay's code_url has no web page).
async fn pay_by_scan(gateway: &Gateway, order: &Value, channel: &str) {
    let url = format!(
        "{}/control/pay?out_trade_no={}&channel={channel}",
        gateway.base_url(),
        order["order_id"].as_str().unwrap()
    );
    let paid = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(
        paid.status().as_u16(),
        200,
        "{}",
        paid.text().await.unwrap()
    );
}

/// An Alipay (precreate) and a WeChat Pay order for `sku`, each paid by a scan; waits until
/// both are delivered.
async fn scanned_and_delivered(server: &Server, gateway: &Gateway, sku: &str) {
    for channel in ["alipay", "wechat"] {
        let order = order_from(server, sku, channel, DESKTOP).await;
        pay_by_scan(gateway, &order, channel).await;
        wait_for(server, &order, "delivered").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alipay_purchase_on_the_desktop_page_and_on_a_phone_through_wap() {
    let gateway = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = shop(dir.path(), &gateway, &[]);
    server.product("ali", 1250, &keys("ALI", 3)).await;

    let desktop = order_from(&server, "ali", "alipay", DESKTOP).await;
    assert_eq!(desktop["payment"]["channel"], "alipay");
    let url = desktop["payment"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/gateway.do?", gateway.base_url())),
        "{url}"
    );
    assert!(url.contains("method=alipay.trade.page.pay"), "{url}");
    assert!(!order_page(&server, &desktop)
        .await
        .contains("<svg class=\"qr\""));
    pay_at_cashier(&gateway, url).await;
    wait_for(&server, &desktop, "delivered").await;

    let phone = order_from(&server, "ali", "alipay", IPHONE).await;
    let url = phone["payment"]["url"].as_str().unwrap();
    assert!(
        url.contains("method=alipay.trade.wap.pay"),
        "a phone gets wap: {url}"
    );
    pay_at_cashier(&gateway, url).await;
    wait_for(&server, &phone, "delivered").await;

    assert_eq!(server.stock("ali").await, (1, 0, 2));
    let sim = gateway.orders();
    assert_eq!(sim.len(), 2);
    assert!(sim
        .iter()
        .all(|o| o.deliveries[0].outcome == NotifyOutcome::Delivered));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_precreate_and_wechat_native_show_a_qr_code_drawn_by_the_shop() {
    let gateway = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let server = shop(
        dir.path(),
        &gateway,
        &[("PANSHI_ALIPAY__PRODUCT", "precreate")],
    );
    server.product("qr", 990, &keys("QR", 3)).await;

    let alipay = order_from(&server, "qr", "alipay", DESKTOP).await;
    let url = alipay["payment"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/alipay/qr/", gateway.base_url())),
        "{url}"
    );
    let page = order_page(&server, &alipay).await;
    assert_eq!(page_qr_text(&page), url, "the QR code is the qr_code");
    assert!(page.contains("data-channel=\"alipay\""));
    pay_at_cashier(&gateway, url).await;
    wait_for(&server, &alipay, "delivered").await;

    let wechat = order_from(&server, "qr", "wxpay", DESKTOP).await;
    assert_eq!(wechat["payment"]["channel"], "wechat");
    let url = wechat["payment"]["url"].as_str().unwrap();
    assert!(url.starts_with("weixin://wxpay/bizpayurl?pr="), "{url}");
    let page = order_page(&server, &wechat).await;
    assert_eq!(page_qr_text(&page), url, "the QR code is the code_url");
    assert!(
        !page.contains("weixin://"),
        "a weixin:// link is drawn, never linked"
    );
    pay_by_scan(&gateway, &wechat, "wechat").await;
    wait_for(&server, &wechat, "delivered").await;
    assert_eq!(server.stock("qr").await, (1, 0, 2));
}

/// A shop at a fresh simulator, `sku` in stock (3 keys) and one order for it on `channel`.
async fn one_order(
    sku: &str,
    price_cents: u64,
    channel: &str,
) -> (Gateway, tempfile::TempDir, Server, Value) {
    let gateway = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let server = shop(dir.path(), &gateway, &[]);
    server.product(sku, price_cents, &keys(sku, 3)).await;
    let order = order_from(&server, sku, channel, DESKTOP).await;
    (gateway, dir, server, order)
}

/// An Alipay notify for `order`, signed with `key`.
fn alipay_notify(
    order: &Value,
    app_id: &str,
    amount: &str,
    trade_no: &str,
    key: &PrivateKey,
) -> String {
    let params = [
        ("app_id", app_id),
        ("out_trade_no", order["order_id"].as_str().unwrap()),
        ("trade_no", trade_no),
        ("total_amount", amount),
        ("trade_status", "TRADE_SUCCESS"),
        ("notify_time", "2026-12-02 16:00:00"),
        ("sign_type", "RSA2"),
    ];
    let content = engine::alipay::notify_content(&params, false);
    let sign = key.sign_base64(content.as_bytes(), &ring::rand::SystemRandom::new());
    let mut all = params.to_vec();
    all.push(("sign", &sign));
    serde_urlencoded::to_string(&all).unwrap()
}

async fn post_alipay(server: &Server, form: String) -> (u16, String) {
    let response = server
        .http
        .post(server.url("/api/v1/payments/alipay/notify"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_wrong_amount_and_replayed_alipay_notifies_change_nothing() {
    let (_gateway, _dir, mut server, order) = one_order("guard", 1250, "alipay").await;
    let alipay = PrivateKey::parse(simkeys::ALIPAY_GATEWAY_PRIVATE_PEM).unwrap();
    let forger = PrivateKey::parse(simkeys::WECHAT_PLATFORM_PRIVATE_PEM).unwrap();
    let app_id = simkeys::ALIPAY_APP_ID;
    let refused = [
        (
            "forged",
            alipay_notify(&order, app_id, "12.50", "T1", &forger),
        ),
        (
            "foreign merchant",
            alipay_notify(&order, "2021000000000999", "12.50", "T1", &alipay),
        ),
        (
            "wrong amount",
            alipay_notify(&order, app_id, "0.01", "T1", &alipay),
        ),
        (
            "tampered",
            alipay_notify(&order, app_id, "12.50", "T1", &alipay).replace("12.50", "1.25"),
        ),
    ];
    for (name, form) in refused {
        assert_eq!(
            post_alipay(&server, form).await,
            (400, "fail".into()),
            "{name}"
        );
    }
    assert_eq!(server.lookup(&order).await.1["status"], "awaiting_payment");
    assert_eq!(server.stock("guard").await, (2, 1, 0));

    let genuine = alipay_notify(&order, app_id, "12.50", "T1", &alipay);
    assert_eq!(
        post_alipay(&server, genuine.clone()).await,
        (200, "success".into())
    );
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    assert_eq!(
        post_alipay(&server, genuine).await,
        (200, "success".into()),
        "a replay"
    );
    let second = alipay_notify(&order, app_id, "12.50", "T2", &alipay);
    // A second payment changes nothing; its refund is alerted and recorded once, and
    // Alipay is told so (success), so that it does not retry for a day.
    assert_eq!(
        post_alipay(&server, second).await,
        (200, "success".into()),
        "another trade for a paid order"
    );
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    let replayed_cheaper = alipay_notify(&order, app_id, "0.01", "T1", &alipay);
    assert_eq!(
        post_alipay(&server, replayed_cheaper).await,
        (400, "fail".into()),
        "the applied trade with another amount is no replay"
    );
    let oversized = format!("padding={}", "x".repeat(ALIPAY_NOTIFY_BYTES_MAX));
    assert_eq!(post_alipay(&server, oversized).await, (413, "fail".into()));
    assert_eq!(server.stock("guard").await, (2, 0, 1));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// The notifies are in the served API document (so schemathesis fuzzes them), and another
/// method on them is 405 with the `Allow` the document gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_routes_are_documented_and_take_only_post() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let document: Value = serde_json::from_str(&server.get_text("/api/v1/openapi.json").await)
        .expect("the document is JSON");
    for channel in ["alipay", "wechat"] {
        let path = format!("/api/v1/payments/{channel}/notify");
        let item = &document["paths"][&path];
        assert!(item["post"].is_object(), "{path} is not documented");
        let response = server.http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "{path}");
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some("POST"),
            "{path}"
        );
    }
}

struct WechatNotify {
    body: String,
    timestamp: u64,
    nonce: &'static str,
    signature: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A WeChat Pay notify: the transaction encrypted with `api_v3_key`, the body signed with
/// `key` at `timestamp`.
fn wechat_notify(
    transaction: Value,
    api_v3_key: &str,
    key: &PrivateKey,
    timestamp: u64,
) -> WechatNotify {
    let api_v3_key = ApiV3Key::parse(api_v3_key).unwrap();
    let ciphertext = engine::wechatpay::encrypt_resource(
        &api_v3_key,
        "a1b2c3d4e5f6",
        "transaction",
        transaction.to_string().as_bytes(),
    )
    .unwrap();
    let body = json!({
        "id": "EV-1", "create_time": "2026-12-02T16:00:00+08:00", "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": ciphertext, "associated_data": "transaction", "nonce": "a1b2c3d4e5f6"},
    })
    .to_string();
    let signature = engine::wechatpay::sign_answer(
        key,
        &timestamp.to_string(),
        "NONCE1",
        body.as_bytes(),
        &ring::rand::SystemRandom::new(),
    );
    WechatNotify {
        body,
        timestamp,
        nonce: "NONCE1",
        signature,
    }
}

fn transaction(order: &Value, mch_id: &str, total: u64, transaction_id: &str) -> Value {
    json!({
        "appid": simkeys::WECHAT_APP_ID, "mchid": mch_id,
        "out_trade_no": order["order_id"], "transaction_id": transaction_id,
        "trade_type": "NATIVE", "trade_state": "SUCCESS",
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    })
}

async fn post_wechat(server: &Server, notify: &WechatNotify) -> u16 {
    server
        .http
        .post(server.url("/api/v1/payments/wechat/notify"))
        .header("Content-Type", "application/json")
        .header("Wechatpay-Timestamp", notify.timestamp.to_string())
        .header("Wechatpay-Nonce", notify.nonce)
        .header("Wechatpay-Signature", &notify.signature)
        .header("Wechatpay-Serial", simkeys::WECHAT_PLATFORM_SERIAL)
        .body(notify.body.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_wrong_amount_stale_and_replayed_wechat_notifies_change_nothing() {
    let (_gateway, _dir, mut server, order) = one_order("wx", 2000, "wechat").await;
    let platform = PrivateKey::parse(simkeys::WECHAT_PLATFORM_PRIVATE_PEM).unwrap();
    let forger = PrivateKey::parse(simkeys::ALIPAY_GATEWAY_PRIVATE_PEM).unwrap();
    let api_v3 = simkeys::WECHAT_API_V3_KEY;
    let now = now_secs();
    let good = || transaction(&order, simkeys::WECHAT_MCH_ID, 2000, "4200000001");
    let refused = [
        ("forged", wechat_notify(good(), api_v3, &forger, now)),
        (
            "another APIv3 key",
            wechat_notify(good(), "another-apiv3-key-0123456789abcd", &platform, now),
        ),
        (
            "foreign merchant",
            wechat_notify(
                transaction(&order, "1900000999", 2000, "4200000001"),
                api_v3,
                &platform,
                now,
            ),
        ),
        (
            "wrong amount",
            wechat_notify(
                transaction(&order, simkeys::WECHAT_MCH_ID, 1, "4200000001"),
                api_v3,
                &platform,
                now,
            ),
        ),
        ("stale", wechat_notify(good(), api_v3, &platform, now - 301)),
    ];
    for (name, notify) in &refused {
        let code = post_wechat(&server, notify).await;
        assert!((400..500).contains(&code), "{name}: {code}");
    }
    let mut tampered = wechat_notify(good(), api_v3, &platform, now);
    tampered.body = tampered
        .body
        .replace("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESS ");
    assert_eq!(
        post_wechat(&server, &tampered).await,
        401,
        "a body that is not what was signed"
    );
    assert_eq!(server.lookup(&order).await.1["status"], "awaiting_payment");
    assert_eq!(server.stock("wx").await, (2, 1, 0));

    let genuine = wechat_notify(good(), api_v3, &platform, now);
    assert_eq!(post_wechat(&server, &genuine).await, 204);
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    assert_eq!(
        post_wechat(&server, &genuine).await,
        204,
        "a replay changes nothing"
    );
    let other = wechat_notify(
        transaction(&order, simkeys::WECHAT_MCH_ID, 2000, "4200000002"),
        api_v3,
        &platform,
        now,
    );
    // A second payment changes nothing; its refund is alerted and recorded once.
    assert_eq!(
        post_wechat(&server, &other).await,
        204,
        "another transaction for a paid order"
    );
    assert_eq!(server.lookup(&order).await.1["status"], "delivered");
    let replayed_cheaper = wechat_notify(
        transaction(&order, simkeys::WECHAT_MCH_ID, 1, "4200000001"),
        api_v3,
        &platform,
        now,
    );
    assert_eq!(
        post_wechat(&server, &replayed_cheaper).await,
        400,
        "the applied transaction with another amount is no replay"
    );
    let mut oversized = wechat_notify(good(), api_v3, &platform, now);
    oversized.body = format!(
        "{:width$}",
        oversized.body,
        width = WECHAT_NOTIFY_BYTES_MAX + 1
    );
    assert_eq!(post_wechat(&server, &oversized).await, 413);
    assert_eq!(server.stock("wx").await, (2, 0, 1));
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifies_are_found_by_query_and_unpaid_orders_are_closed_at_expiry() {
    let gateway = simulator().await;
    gateway
        .set_faults(Faults {
            notify_drop_percent: 100,
            ..Faults::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = shop(
        dir.path(),
        &gateway,
        &[
            ("PANSHI_ALIPAY__PRODUCT", "precreate"),
            ("PANSHI_ORDER_TTL_SECS", "2"),
        ],
    );
    server.product("rec", 500, &keys("R", 6)).await;
    let unpaid_alipay = order_from(&server, "rec", "alipay", DESKTOP).await;
    let unpaid_wechat = order_from(&server, "rec", "wechat", DESKTOP).await;
    // No notify comes; the query before the keys are released finds both payments.
    scanned_and_delivered(&server, &gateway, "rec").await;
    wait_for(&server, &unpaid_alipay, "expired").await;
    wait_for(&server, &unpaid_wechat, "expired").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let closed: Vec<String> = gateway
            .orders()
            .into_iter()
            .filter(|o| o.closed)
            .map(|o| o.out_trade_no)
            .collect();
        let want = [&unpaid_alipay, &unpaid_wechat];
        if want
            .iter()
            .all(|o| closed.iter().any(|c| c == o["order_id"].as_str().unwrap()))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed at the gateway: {closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.stock("rec").await, (4, 0, 2));
}

async fn breaker(server: &Server, channel: &str) -> String {
    let (_, health) = server.admin_get("/api/v1/ops/channels").await;
    let channels = health["channels"].as_array().unwrap();
    let found = channels.iter().find(|c| c["channel"] == channel).unwrap();
    found["breaker"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_fall_back_to_epay_while_a_direct_breaker_is_open_and_return_when_it_heals() {
    let gateway = simulator().await;
    gateway
        .set_faults(Faults {
            outage: true,
            ..Faults::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("panshi.toml");
    std::fs::write(
        &config,
        "[breaker]\nconsecutive_failures_max = 1\ncooldown_secs = 1\n",
    )
    .unwrap();
    let mut env = shop_env(gateway.base_url());
    env.push(("PANSHI_ALIPAY__PRODUCT".into(), "precreate".into()));
    // The failed creations and the manual queue are the point: their warnings are not output.
    env.push(("PANSHI_LOG__LEVEL".into(), "error".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_full(
        &dir.path().join("data"),
        &env,
        &["--config", config.to_str().unwrap()],
    );
    server.product("fb", 100, &keys("FB", 8)).await;
    for method in ["alipay", "wxpay"] {
        let first = order_from(&server, "fb", method, DESKTOP).await;
        assert_eq!(
            first["payment"]["channel"], "epay",
            "{method}: the direct channel failed"
        );
        let second = order_from(&server, "fb", method, DESKTOP).await;
        assert_eq!(
            second["payment"]["channel"], "epay",
            "{method}: its breaker is open"
        );
    }
    assert_eq!(breaker(&server, "alipay").await, "open");
    assert_eq!(breaker(&server, "wechat").await, "open");
    let direct_only = order_from(&server, "fb", "wechat", DESKTOP).await;
    assert_eq!(
        direct_only["payment"]["channel"], "manual",
        "the channel alone, and it is down: the manual queue"
    );
    gateway.set_faults(Faults::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let healed = order_from(&server, "fb", "alipay", DESKTOP).await;
    assert_eq!(healed["payment"]["channel"], "alipay");
    let healed = order_from(&server, "fb", "wxpay", DESKTOP).await;
    assert_eq!(healed["payment"]["channel"], "wechat");
    assert_eq!(breaker(&server, "alipay").await, "closed");
    assert_eq!(breaker(&server, "wechat").await, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_forged_notifies_are_refused_and_the_late_genuine_ones_delivered() {
    let gateway = simulator().await;
    gateway
        .set_faults(Faults {
            notify_forge_percent: 100,
            notify_duplicate_percent: 100,
            notify_delay_ms: 300,
            ..Faults::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = shop(
        dir.path(),
        &gateway,
        &[("PANSHI_ALIPAY__PRODUCT", "precreate")],
    );
    server.product("forge", 700, &keys("F", 3)).await;
    scanned_and_delivered(&server, &gateway, "forge").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let orders = gateway.orders();
        let settled = orders.iter().all(|o| {
            o.deliveries.len() == 3
                && o.deliveries
                    .iter()
                    .all(|d| d.outcome != NotifyOutcome::Pending)
        });
        if settled {
            for order in &orders {
                let outcomes: Vec<_> = order
                    .deliveries
                    .iter()
                    .map(|d| (d.forged, d.outcome))
                    .collect();
                assert_eq!(
                    outcomes,
                    [
                        (true, NotifyOutcome::Refused),
                        (false, NotifyOutcome::Delivered),
                        (false, NotifyOutcome::Delivered)
                    ],
                    "{:?}",
                    order.channel
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "{orders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.stock("forge").await, (1, 0, 2));
}

/// `panshi serve` with `env`, expected to refuse to start: its exit status and stderr.
fn refused_start(env: &[(String, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_panshi"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("PANSHI_LOG__LEVEL", "error")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_missing_key_refuses_the_start_and_names_it() {
    let base = shop_env("http://127.0.0.1:9");
    let with = |name: &str, value: &str| {
        let mut env: Vec<(String, String)> =
            base.iter().filter(|(k, _)| k != name).cloned().collect();
        if !value.is_empty() {
            env.push((name.to_owned(), value.to_owned()));
        }
        env
    };
    let mut truncated = simkeys::ALIPAY_APP_PRIVATE_PEM.to_owned();
    truncated.truncate(400);
    truncated.push_str("\n-----END RSA PRIVATE KEY-----\n");
    let cases = [
        (
            "PANSHI_ALIPAY__PRIVATE_KEY",
            truncated.as_str(),
            "alipay.private_key",
        ),
        (
            "PANSHI_ALIPAY__ALIPAY_PUBLIC_KEY",
            "not a key, at all!",
            "alipay.alipay_public_key",
        ),
        (
            "PANSHI_ALIPAY__ALIPAY_PUBLIC_KEY",
            "",
            "alipay.alipay_public_key is missing",
        ),
        (
            "PANSHI_WECHAT__MERCHANT_PRIVATE_KEY",
            simkeys::WECHAT_PLATFORM_PUBLIC_PEM,
            "wechat.merchant_private_key",
        ),
        (
            "PANSHI_WECHAT__PLATFORM_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "wechat.platform_public_key",
        ),
        (
            "PANSHI_WECHAT__API_V3_KEY",
            "too-short",
            "wechat.api_v3_key",
        ),
        (
            "PANSHI_WECHAT__MERCHANT_SERIAL_NO",
            "",
            "wechat.merchant_serial_no is missing",
        ),
    ];
    for (name, value, named) in cases {
        let (started, stderr) = refused_start(&with(name, value));
        assert!(!started, "{name}={value:?} started");
        assert!(stderr.contains(named), "{name}: {stderr}");
        assert!(
            !stderr.contains("MII"),
            "no key material in the message: {stderr}"
        );
    }
    // Both a key and its file: which one is meant is unclear, so the start is refused.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), simkeys::WECHAT_MERCHANT_PRIVATE_PEM).unwrap();
    let mut both = base.clone();
    both.push((
        "PANSHI_WECHAT__MERCHANT_PRIVATE_KEY_FILE".into(),
        file.path().display().to_string(),
    ));
    let (started, stderr) = refused_start(&both);
    assert!(
        !started && stderr.contains("wechat.merchant_private_key"),
        "{stderr}"
    );
}

/// `panshi config check FILE`: exit status, stdout, stderr.
fn config_check(file: &std::path::Path) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_panshi"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("PANSHI_")) {
        command.env_remove(name);
    }
    let output = command
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_check_reads_the_direct_channels_keys_and_names_their_unknown_settings() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let app_key = write("alipay_app.pem", simkeys::ALIPAY_APP_PRIVATE_PEM);
    let alipay_public = write("alipay_public.pem", simkeys::ALIPAY_GATEWAY_PUBLIC_PEM);
    let merchant_key = write("apiclient_key.pem", simkeys::WECHAT_MERCHANT_PRIVATE_PEM);
    let platform_public = write("wechatpay_public.pem", simkeys::WECHAT_PLATFORM_PUBLIC_PEM);
    let api_v3 = write("apiv3.key", simkeys::WECHAT_API_V3_KEY);
    let config = |alipay_public_key: &str, extra: &str| {
        format!(
            "public_url = \"https://shop.example.com\"\n\
             [alipay]\napp_id = \"{}\"\nprivate_key_file = \"{app_key}\"\n{alipay_public_key}\n\
             [wechat]\nmch_id = \"{}\"\napp_id = \"{}\"\napi_v3_key_file = \"{api_v3}\"\n\
             merchant_private_key_file = \"{merchant_key}\"\nmerchant_serial_no = \"{}\"\n\
             platform_public_key_file = \"{platform_public}\"\n{extra}",
            simkeys::ALIPAY_APP_ID,
            simkeys::WECHAT_MCH_ID,
            simkeys::WECHAT_APP_ID,
            simkeys::WECHAT_MERCHANT_SERIAL_NO,
        )
    };
    let good = config(&format!("alipay_public_key_file = \"{alipay_public}\""), "");
    let (code, stdout, stderr) = config_check(std::path::Path::new(&write("good.toml", &good)));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        !stdout.contains("no payment channel"),
        "both direct channels count as payment channels: {stdout}"
    );

    let bad_key = config("alipay_public_key = \"MIIBbad, not a key\"", "");
    let (code, stdout, stderr) = config_check(std::path::Path::new(&write("bad.toml", &bad_key)));
    assert_ne!(code, 0, "a malformed key passed: {stdout}");
    assert!(stderr.contains("alipay.alipay_public_key"), "{stderr}");
    assert!(!stderr.contains("MII"), "no key material: {stderr}");

    let unknown = config(
        &format!("alipay_public_key_file = \"{alipay_public}\"\nappid = \"x\""),
        "mch_idd = \"1\"\n",
    );
    let (code, _, stderr) = config_check(std::path::Path::new(&write("typo.toml", &unknown)));
    assert_ne!(code, 0);
    for key in ["`alipay.appid`", "`wechat.mch_idd`"] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_come_from_files() {
    let gateway = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = keys_dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let alipay_key = write("alipay.pem", simkeys::ALIPAY_APP_PRIVATE_PEM);
    let wechat_key = write("apiclient_key.pem", simkeys::WECHAT_MERCHANT_PRIVATE_PEM);
    let api_v3 = write("apiv3.key", &format!("{}\n", simkeys::WECHAT_API_V3_KEY));
    let mut env: Vec<(String, String)> = shop_env(gateway.base_url())
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "PANSHI_ALIPAY__PRIVATE_KEY"
                    | "PANSHI_WECHAT__MERCHANT_PRIVATE_KEY"
                    | "PANSHI_WECHAT__API_V3_KEY"
            )
        })
        .collect();
    env.push(("PANSHI_ALIPAY__PRIVATE_KEY_FILE".into(), alipay_key));
    env.push((
        "PANSHI_WECHAT__MERCHANT_PRIVATE_KEY_FILE".into(),
        wechat_key,
    ));
    env.push(("PANSHI_WECHAT__API_V3_KEY_FILE".into(), api_v3));
    env.push(("PANSHI_ALIPAY__PRODUCT".into(), "precreate".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with(&dir.path().join("data"), &env);
    server.product("files", 300, &keys("K", 2)).await;
    let alipay = order_from(&server, "files", "alipay", DESKTOP).await;
    let wechat = order_from(&server, "files", "wechat", DESKTOP).await;
    assert_eq!(
        alipay["payment"]["channel"], "alipay",
        "the file's key signed the request"
    );
    assert_eq!(wechat["payment"]["channel"], "wechat");
    pay_by_scan(&gateway, &wechat, "wechat").await;
    wait_for(&server, &wechat, "delivered").await;
}

/// A provider stand-in whose answers are signed with the wrong keys: a Native call's
/// first answer, and every query answer (each saying "paid").
async fn lying_provider() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    let forger = PrivateKey::parse(simkeys::WECHAT_MERCHANT_PRIVATE_PEM).unwrap();
    let platform = PrivateKey::parse(simkeys::WECHAT_PLATFORM_PRIVATE_PEM).unwrap();
    let natives = AtomicU32::new(0);
    stand_in_with(std::sync::Arc::new(move |seen: &Seen| {
        let rng = ring::rand::SystemRandom::new();
        if seen.line.starts_with("POST /gateway.do") {
            let form: Vec<(String, String)> = serde_urlencoded::from_str(&seen.body).unwrap();
            let biz = &form.iter().find(|(k, _)| k == "biz_content").unwrap().1;
            let out_trade_no = serde_json::from_str::<Value>(biz).unwrap()["out_trade_no"].clone();
            let object = json!({"code": "10000", "msg": "Success", "out_trade_no": out_trade_no,
                "trade_no": "2026FAKE", "trade_status": "TRADE_SUCCESS", "total_amount": "3.00"})
            .to_string();
            let sign = forger.sign_base64(object.as_bytes(), &rng);
            let body = format!(r#"{{"alipay_trade_query_response":{object},"sign":"{sign}"}}"#);
            return Reply {
                status: 200,
                headers: Vec::new(),
                body,
            };
        }
        let (status, body, key) = if seen.line.starts_with("POST /v3/pay/transactions/native") {
            let first = natives.fetch_add(1, Ordering::SeqCst) == 0;
            let body = r#"{"code_url":"weixin://wxpay/bizpayurl?pr=lie"}"#.to_owned();
            (200, body, if first { &forger } else { &platform })
        } else if seen
            .line
            .starts_with("GET /v3/pay/transactions/out-trade-no/")
        {
            let out_trade_no = seen
                .line
                .split('/')
                .nth(5)
                .unwrap()
                .split('?')
                .next()
                .unwrap();
            let body = json!({"appid": simkeys::WECHAT_APP_ID, "mchid": simkeys::WECHAT_MCH_ID,
                "out_trade_no": out_trade_no, "transaction_id": "42FAKE", "trade_state": "SUCCESS",
                "amount": {"total": 300, "currency": "CNY"}})
            .to_string();
            (200, body, &forger)
        } else {
            (204, String::new(), &platform)
        };
        let timestamp = now_secs().to_string();
        let signature =
            engine::wechatpay::sign_answer(key, &timestamp, "LIE", body.as_bytes(), &rng);
        let headers = vec![
            ("Wechatpay-Timestamp".to_owned(), timestamp),
            ("Wechatpay-Nonce".to_owned(), "LIE".to_owned()),
            ("Wechatpay-Signature".to_owned(), signature),
        ];
        Reply {
            status,
            headers,
            body,
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_signed_with_another_key_are_never_believed() {
    let provider = lying_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = shop_env(&provider);
    env.push(("PANSHI_ORDER_TTL_SECS".into(), "2".into()));
    env.push(("PANSHI_LOG__LEVEL".into(), "error".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = Server::start_with(dir.path(), &env);
    server.product("lie", 300, &keys("L", 4)).await;
    let refused = order_from(&server, "lie", "wxpay", DESKTOP).await;
    assert_eq!(
        refused["payment"]["channel"], "epay",
        "a code_url signed with another key is not believed: the next channel takes it"
    );
    let wechat = order_from(&server, "lie", "wxpay", DESKTOP).await;
    assert_eq!(wechat["payment"]["channel"], "wechat");
    let alipay = order_from(&server, "lie", "alipay", DESKTOP).await;
    assert_eq!(alipay["payment"]["channel"], "alipay");
    // Before the keys are released each is queried; the "paid" answers are forged.
    wait_for(&server, &wechat, "expired").await;
    wait_for(&server, &alipay, "expired").await;
    assert_eq!(
        server.stock("lie").await,
        (4, 0, 0),
        "nothing was sold on a forged answer"
    );
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}
