//! The gateway simulator over real sockets: it runs in-process on port 0, and a tiny actix
//! receiver on port 0 plays the shop, checking every notify with `engine::payment`, the
//! same code the shop uses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use engine::payment::{
    epay_sign, epay_submit_url, epusdt_sign, verify_epay_notify, verify_epusdt_callback,
};
use panshi_simulations::gateway::{self, json_fields, Config, Faults, Gateway, NotifyOutcome};
use serde_json::Value;

const PID: &str = "1001";
const KEY: &str = "merchant-key-0123";
const TOKEN: &str = "epusdt-token-0123";
/// Longest wait for a notify that should arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for a notify that should not arrive.
const SILENCE: Duration = Duration::from_millis(500);

/// One request the shop received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    query: String,
    body: Vec<u8>,
}

/// The pretend shop: records every request; `/epay` answers `success`, `/epusdt` answers
/// `ok`, `/flaky` answers `fail` to its first `FLAKY_FAILURES` requests, then `success`.
struct Shop {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    server: actix_web::dev::ServerHandle,
}

const FLAKY_FAILURES: usize = 2;

async fn record(
    request: HttpRequest,
    body: web::Bytes,
    received: web::Data<Mutex<Vec<Received>>>,
) -> HttpResponse {
    let path = request.path().to_owned();
    let count = {
        let mut received = received.lock().unwrap();
        received.push(Received {
            path: path.clone(),
            query: request.query_string().to_owned(),
            body: body.to_vec(),
        });
        received.iter().filter(|r| r.path == path).count()
    };
    let answer = match path.as_str() {
        "/epusdt" => "ok",
        "/flaky" if count <= FLAKY_FAILURES => "fail",
        _ => "success",
    };
    HttpResponse::Ok().body(answer)
}

impl Shop {
    async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let data = web::Data::from(received.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            addr,
            received,
            server: handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `count` requests reached `path`.
    async fn wait_for(&self, path: &str, count: usize) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received(path);
            if received.len() >= count {
                return received;
            }
            assert!(
                start.elapsed() < ARRIVAL_TIMEOUT,
                "{count} requests to {path}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.server.stop(true).await;
    }
}

async fn start_gateway() -> Gateway {
    let config = Config {
        seed: 42,
        notify_backoff_first_ms: 20,
        ..Config::new(PID, KEY, TOKEN)
    };
    gateway::start(config).await.unwrap()
}

fn signed(fields: &[(&str, &str)], key: &str) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    params.push(("sign".into(), epay_sign(fields.iter().copied(), key)));
    params.push(("sign_type".into(), "MD5".into()));
    params
}

fn create_fields<'a>(
    order: &'a str,
    notify_url: &'a str,
    money: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("pid", PID),
        ("type", "alipay"),
        ("out_trade_no", order),
        ("notify_url", notify_url),
        ("return_url", "http://shop.invalid/"),
        ("name", "Card key"),
        ("money", money),
        ("clientip", "127.0.0.1"),
    ]
}

async fn mapi(gateway: &Gateway, params: &[(String, String)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/mapi.php", gateway.base_url()))
        .form(params)
        .send()
        .await
        .unwrap()
}

async fn json(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn query(gateway: &Gateway, order: &str, key: &str) -> Value {
    let url = format!(
        "{}/api.php?act=order&pid={PID}&key={key}&out_trade_no={order}",
        gateway.base_url()
    );
    json(reqwest::get(url).await.unwrap()).await
}

async fn control_pay(gateway: &Gateway, order: &str, channel: &str) -> Value {
    let url = format!(
        "{}/control/pay?out_trade_no={order}&channel={channel}",
        gateway.base_url()
    );
    json(reqwest::Client::new().post(url).send().await.unwrap()).await
}

async fn set_faults(gateway: &Gateway, faults: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/control/faults", gateway.base_url()))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{faults}");
}

fn query_pairs(text: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epay_payment_is_notified_signed_and_queried_as_paid() {
    let (gateway, shop) = (start_gateway().await, Shop::start().await);
    let notify_url = shop.url("/epay");
    let created = json(
        mapi(
            &gateway,
            &signed(&create_fields("o-1", &notify_url, "12.50"), KEY),
        )
        .await,
    )
    .await;
    assert_eq!(created["code"], 1, "{created}");
    let payurl = created["payurl"].as_str().unwrap();
    assert!(
        payurl.starts_with(&format!("{}/submit.php?", gateway.base_url())),
        "{payurl}"
    );
    assert_eq!(query(&gateway, "o-1", KEY).await["status"], 0);

    let paid = control_pay(&gateway, "o-1", "epay").await;
    assert_eq!(paid["already_paid"], false);
    let notifies = shop.wait_for("/epay", 1).await;
    let params = query_pairs(&notifies[0].query);
    let notify = verify_epay_notify(&params, PID, KEY).expect("a correctly signed notify");
    assert_eq!(notify.order_id.as_str(), "o-1");
    assert_eq!(notify.amount_cents, 1250);
    assert_eq!(&*notify.trade_no, created["trade_no"].as_str().unwrap());
    assert!(notify.paid);
    // The money string goes back exactly as the merchant sent it.
    assert!(params.contains(&("money".into(), "12.50".into())));

    let answer = query(&gateway, "o-1", KEY).await;
    assert_eq!(
        (answer["code"].clone(), answer["status"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(answer["money"], "12.50");
    let order = &gateway.orders()[0];
    assert_eq!(
        (order.deliveries[0].attempts, order.deliveries[0].outcome),
        (1, NotifyOutcome::Delivered)
    );
    // Paying again sends nothing new.
    assert_eq!(
        control_pay(&gateway, "o-1", "epay").await["already_paid"],
        true
    );
    tokio::time::sleep(SILENCE).await;
    assert_eq!(shop.received("/epay").len(), 1);
    gateway.stop().await.unwrap();
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_wrong_keys_and_unknown_orders_get_code_minus_one() {
    let gateway = start_gateway().await;
    let forged = signed(
        &create_fields("o-2", "http://shop.invalid/n", "1"),
        "not-the-key",
    );
    let answer = json(mapi(&gateway, &forged).await).await;
    assert_eq!(answer["code"], -1, "{answer}");
    let mut tampered = signed(&create_fields("o-2", "http://shop.invalid/n", "1"), KEY);
    tampered[6].1 = "0.01".into();
    assert_eq!(json(mapi(&gateway, &tampered).await).await["code"], -1);
    assert!(gateway.orders().is_empty());

    let good = signed(&create_fields("o-2", "http://shop.invalid/n", "1"), KEY);
    assert_eq!(json(mapi(&gateway, &good).await).await["code"], 1);
    assert_eq!(query(&gateway, "o-2", "wrong-key").await["code"], -1);
    assert_eq!(query(&gateway, "no-such-order", KEY).await["code"], -1);
    // The same id with another amount is refused; with the same amount it is the same order.
    let other_amount = signed(&create_fields("o-2", "http://shop.invalid/n", "2"), KEY);
    assert_eq!(json(mapi(&gateway, &other_amount).await).await["code"], -1);
    assert_eq!(json(mapi(&gateway, &good).await).await["code"], 1);
    assert_eq!(gateway.orders().len(), 1);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notifies_never_arrive_but_the_query_says_paid() {
    let (gateway, shop) = (start_gateway().await, Shop::start().await);
    set_faults(&gateway, serde_json::json!({"notify_drop_percent": 100})).await;
    let notify_url = shop.url("/epay");
    let created = json(
        mapi(
            &gateway,
            &signed(&create_fields("o-3", &notify_url, "5"), KEY),
        )
        .await,
    )
    .await;
    assert_eq!(created["code"], 1);
    assert_eq!(control_pay(&gateway, "o-3", "epay").await["notifies"], 0);
    tokio::time::sleep(SILENCE).await;
    assert!(shop.received("/epay").is_empty());
    assert_eq!(query(&gateway, "o-3", KEY).await["status"], 1);
    assert_eq!(
        gateway.orders()[0].deliveries[0].outcome,
        NotifyOutcome::Dropped
    );
    gateway.stop().await.unwrap();
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cashier_page_pays_with_its_button() {
    let (gateway, shop) = (start_gateway().await, Shop::start().await);
    let notify_url = shop.url("/epay");
    let url = epay_submit_url(
        gateway.base_url(),
        KEY,
        &create_fields("o-4", &notify_url, "3.5"),
    );
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<button type=\"submit\">Pay</button>"),
        "{html}"
    );
    assert!(html.contains("o-4"), "{html}");
    let paid = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    let notifies = shop.wait_for("/epay", 1).await;
    let notify = verify_epay_notify(&query_pairs(&notifies[0].query), PID, KEY).unwrap();
    assert_eq!(
        (notify.order_id.as_str(), notify.amount_cents),
        ("o-4", 350)
    );
    let forged = url.replace("money=3.5", "money=0.01");
    assert_eq!(reqwest::get(&forged).await.unwrap().status(), 400);
    gateway.stop().await.unwrap();
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_are_retried_until_success_and_duplicated_on_demand() {
    let (gateway, shop) = (start_gateway().await, Shop::start().await);
    let flaky_url = shop.url("/flaky");
    json(
        mapi(
            &gateway,
            &signed(&create_fields("o-5", &flaky_url, "1"), KEY),
        )
        .await,
    )
    .await;
    control_pay(&gateway, "o-5", "epay").await;
    shop.wait_for("/flaky", FLAKY_FAILURES + 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let order = gateway.orders().pop().unwrap();
    assert_eq!(order.deliveries[0].outcome, NotifyOutcome::Delivered);
    assert_eq!(order.deliveries[0].attempts as usize, FLAKY_FAILURES + 1);

    set_faults(
        &gateway,
        serde_json::json!({"notify_duplicate_percent": 100}),
    )
    .await;
    let notify_url = shop.url("/epay");
    json(
        mapi(
            &gateway,
            &signed(&create_fields("o-6", &notify_url, "1"), KEY),
        )
        .await,
    )
    .await;
    assert_eq!(control_pay(&gateway, "o-6", "epay").await["notifies"], 2);
    let notifies = shop.wait_for("/epay", 2).await;
    assert_eq!(notifies[0].query, notifies[1].query);
    gateway.stop().await.unwrap();
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_failing_creates_answer_errors_while_control_keeps_working() {
    let gateway = start_gateway().await;
    let params = signed(&create_fields("o-7", "http://shop.invalid/n", "1"), KEY);
    set_faults(&gateway, serde_json::json!({"outage": true})).await;
    assert_eq!(mapi(&gateway, &params).await.status(), 503);
    set_faults(&gateway, serde_json::json!({"create_fail_percent": 100})).await;
    assert_eq!(mapi(&gateway, &params).await.status(), 500);
    set_faults(&gateway, serde_json::json!({"query_fail_percent": 100})).await;
    let url = format!(
        "{}/api.php?act=order&pid={PID}&key={KEY}&out_trade_no=o-7",
        gateway.base_url()
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 500);
    // Unknown switches and impossible percentages are refused.
    let response = reqwest::Client::new()
        .post(format!("{}/control/faults", gateway.base_url()))
        .json(&serde_json::json!({"notify_drop_percent": 101}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(gateway.set_faults(Faults::default()).is_ok());
    assert_eq!(json(mapi(&gateway, &params).await).await["code"], 1);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_answer_late() {
    let gateway = start_gateway().await;
    set_faults(&gateway, serde_json::json!({"query_delay_ms": 300})).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let url = format!(
        "{}/api.php?act=order&pid={PID}&key={KEY}&out_trade_no=x",
        gateway.base_url()
    );
    let error = client.get(&url).send().await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    gateway.stop().await.unwrap();
}

/// An epusdt create body, signed; `amount` is written into the JSON as the given number text.
fn epusdt_create_body(order: &str, amount: &str, notify_url: &str, token: &str) -> String {
    let redirect_url = "http://shop.invalid/";
    let shortest = engine::payment::shortest_decimal(amount).unwrap();
    let signature = epusdt_sign(
        [
            ("order_id", order),
            ("amount", shortest.as_str()),
            ("notify_url", notify_url),
            ("redirect_url", redirect_url),
        ],
        token,
    );
    format!(
        r#"{{"order_id":"{order}","amount":{amount},"notify_url":"{notify_url}","redirect_url":"{redirect_url}","signature":"{signature}"}}"#
    )
}

async fn epusdt_create(gateway: &Gateway, body: String) -> Value {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/order/create-transaction",
            gateway.base_url()
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    json(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epusdt_payment_delivers_a_callback_the_engine_accepts() {
    let (gateway, shop) = (start_gateway().await, Shop::start().await);
    let notify_url = shop.url("/epusdt");
    let created = epusdt_create(
        &gateway,
        epusdt_create_body("u-1", "28.880", &notify_url, TOKEN),
    )
    .await;
    assert_eq!(created["status_code"], 200, "{created}");
    let data = &created["data"];
    assert_eq!(data["order_id"], "u-1");
    assert_eq!(data["amount"], serde_json::json!(28.88));
    assert!(data["token"].as_str().unwrap().starts_with('T'));
    let payment_url = data["payment_url"].as_str().unwrap();
    assert_eq!(
        payment_url,
        format!(
            "{}/pay/{}",
            gateway.base_url(),
            data["trade_id"].as_str().unwrap()
        )
    );

    let page = reqwest::get(payment_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Pay</button>"), "{page}");
    let paid = reqwest::Client::new()
        .post(payment_url)
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let callbacks = shop.wait_for("/epusdt", 1).await;
    let fields = json_fields(&callbacks[0].body).expect("a flat JSON callback");
    let callback = verify_epusdt_callback(&fields, TOKEN).expect("a correctly signed callback");
    assert_eq!(callback.order_id.as_str(), "u-1");
    assert_eq!(callback.amount_cents, 2888);
    assert_eq!(callback.trade_id, data["trade_id"].as_str().unwrap());
    assert!(callback.paid);
    let text = String::from_utf8(callbacks[0].body.clone()).unwrap();
    assert!(
        text.contains(r#""amount":28.88,"#),
        "numbers are JSON numbers: {text}"
    );
    assert!(text.contains(r#""status":2"#), "{text}");
    assert!(verify_epusdt_callback(&fields, "other-token").is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gateway.orders()[0].deliveries[0].outcome,
        NotifyOutcome::Delivered
    );
    gateway.stop().await.unwrap();
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epusdt_refuses_bad_signatures_and_repeated_orders() {
    let gateway = start_gateway().await;
    let forged = epusdt_create(
        &gateway,
        epusdt_create_body("u-2", "10", "http://shop.invalid/n", "nope"),
    )
    .await;
    assert_eq!(forged["status_code"], 401, "{forged}");
    let body = epusdt_create_body("u-2", "10", "http://shop.invalid/n", TOKEN);
    assert_eq!(
        epusdt_create(&gateway, body.clone()).await["status_code"],
        200
    );
    assert_eq!(epusdt_create(&gateway, body).await["status_code"], 10_002);
    let paid = control_pay(&gateway, "u-2", "epusdt").await;
    assert_eq!(paid["already_paid"], false);
    gateway.stop().await.unwrap();
}
