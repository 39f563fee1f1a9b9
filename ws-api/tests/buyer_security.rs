//! Buyers and operators (issue 15, items 6-11), over real sockets: idempotency keys scoped
//! to their caller, operator-token guessing slowed per address, client addresses through
//! trusted proxies only, the VIP lane by signed invite, cross-site posts refused, and the
//! manual-payment page only for real orders.

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A client whose connections come from `source` (any 127/8 address is this machine).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn keyed_order(server: &Server, client: &reqwest::Client, key: &str) -> (u16, Value) {
    let body = json!({"sku": "idem", "quantity": 1, "contact": "a@x.com", "channel": "epay"});
    let r = client
        .post(server.url("/api/v1/orders"))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// Postmortem: a buyer's `Idempotency-Key` was global, so replaying someone else's key
/// and body returned their order id and token, and so their keys. Keys are scoped to the
/// caller and kept only hashed; tokens are kept only as digests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_answers_only_the_caller_that_made_it() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path());
    server.product("idem", 100, &keys("I", 5)).await;
    let (buyer, stranger) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    let key = "checkout-7f1c2e";
    let (code, first) = keyed_order(&server, &buyer, key).await;
    assert_eq!(code, 201, "{first}");
    let (code, again) = keyed_order(&server, &buyer, key).await;
    assert_eq!(code, 201, "{again}");
    assert_eq!(
        (&again["order_id"], &again["token"]),
        (&first["order_id"], &first["token"]),
        "the buyer's own retry gets the first answer"
    );
    assert_eq!(server.lookup(&again).await.0, 200);
    let (code, theirs) = keyed_order(&server, &stranger, key).await;
    assert_eq!(code, 201, "{theirs}");
    assert_ne!(
        theirs["order_id"], first["order_id"],
        "a stranger's replay is a new order"
    );
    assert_ne!(theirs["token"], first["token"]);
    server.stop();
    let stored = files_bytes(data.path());
    for secret in [first["token"].as_str().unwrap(), key] {
        assert!(!contains(&stored, secret), "{secret} is in the data dir");
    }
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

/// Postmortem: 2,400 sign-in and 4,800 bearer guesses a second went through unslowed.
/// After a few wrong tokens an address is locked out (even the right token is refused
/// until the lockout ends) while other addresses are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_operator_tokens_lock_their_address_out() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let stock = server.url("/api/v1/admin/products/none/stock");
    let (guesser, operator) = (client_from("127.0.0.3"), client_from("127.0.0.4"));
    let status = |client: &reqwest::Client, token: &str| {
        let request = client.get(&stock).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    for n in 0..5 {
        assert_eq!(status(&guesser, &format!("guess-{n}")).await, 401);
    }
    assert_eq!(status(&guesser, "guess-5").await, 429, "locked out");
    assert_eq!(
        status(&guesser, ADMIN).await,
        429,
        "locked out, even with the token"
    );
    assert_eq!(
        status(&operator, ADMIN).await,
        404,
        "another address is untouched"
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(status(&guesser, ADMIN).await, 404, "the lockout ends");
    // The sign-in form counts too.
    for n in 0..6 {
        let r = guesser
            .post(server.url("/admin/sign-in"))
            .header("Cookie", "panshi_sign_in=c")
            .form(&[("csrf", "c"), ("token", &format!("wrong-{n}"))])
            .send()
            .await
            .unwrap();
        let expected = if n < 5 { 401 } else { 429 };
        assert_eq!(r.status().as_u16(), expected, "sign-in try {n}");
    }
}

#[test]
fn a_short_operator_token_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let said = refused_start(
        data.path(),
        &[("PANSHI_ADMIN_TOKEN", "short-but-sweet")],
        &[],
    );
    assert!(said.contains("admin_token is shorter than 32"), "{said}");
    assert!(!said.contains("short-but-sweet"), "{said}");
}

/// A generated operator token goes to an owner-only file, never to the terminal or log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_operator_token_is_written_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_panshi"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path().join("data"))
        .env_remove("PANSHI_ADMIN_TOKEN")
        .env("PANSHI_LOG__LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let base = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        printed.push_str(&line);
        if let Some(url) = line.strip_prefix("panshi: listening on ") {
            break url.to_owned();
        }
    };
    let file = data.path().join("data").join("operator.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 32);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/admin/products/none/stock"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "the file's token is the operator token"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let said = std::fs::read_to_string(&log_path).unwrap() + &printed;
    assert!(!said.contains(&token), "the token was printed: {said}");
    assert!(said.contains("operator.token"), "{said}");
}

async fn order_via_proxy(server: &Server, forwarded_for: &str) -> u16 {
    let body = json!({"sku": "proxied", "quantity": 1, "contact": "p@x.com", "channel": "epay"});
    let r = server
        .http
        .post(server.url("/api/v1/orders"))
        .header("X-Forwarded-For", forwarded_for)
        .json(&body)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

/// Postmortem: behind a reverse proxy every buyer had the proxy's address, so one abuser
/// got 429s for the whole shop. The client's address comes from a trusted proxy's
/// header (never from anyone else's), and an IPv6 client is one /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_key_on_the_client_behind_a_trusted_proxy() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        data.path(),
        &[
            ("PANSHI_LIMITS__CREATE__PER_SECOND", "1"),
            ("PANSHI_LIMITS__CREATE__BURST", "2"),
            ("PANSHI_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );
    server.product("proxied", 100, &keys("P", 40)).await;
    for _ in 0..2 {
        assert_eq!(order_via_proxy(&server, "198.51.100.1").await, 201);
    }
    assert_eq!(order_via_proxy(&server, "198.51.100.1").await, 429);
    assert_eq!(
        order_via_proxy(&server, "198.51.100.2").await,
        201,
        "another buyer"
    );
    // A client's own claim left of the proxy's entry changes nothing.
    assert_eq!(order_via_proxy(&server, "6.6.6.6, 198.51.100.1").await, 429);
    for _ in 0..2 {
        assert_eq!(order_via_proxy(&server, "2001:db8::1").await, 201);
    }
    assert_eq!(
        order_via_proxy(&server, "2001:db8::2").await,
        429,
        "same /64"
    );
    assert_eq!(order_via_proxy(&server, "2001:db8:0:1::1").await, 201);
    // From a peer that is no trusted proxy, the header is ignored.
    let direct = client_from("127.0.0.5");
    let mut codes = Vec::new();
    for n in 0..3 {
        let body =
            json!({"sku": "proxied", "quantity": 1, "contact": "d@x.com", "channel": "epay"});
        let r = direct
            .post(server.url("/api/v1/orders"))
            .header("X-Forwarded-For", format!("203.0.113.{n}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [201, 201, 429]);
}

/// Postmortem: the VIP lane was granted from the buyer's own, unverified contact.
#[test]
fn vip_contacts_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("panshi.toml");
    std::fs::write(&config, "[flash]\nvip_contacts = [\"vip@x.com\"]\n").unwrap();
    let said = refused_start(
        &data.path().join("data"),
        &[],
        &["--config", config.to_str().unwrap()],
    );
    assert!(said.contains("vip_contacts"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_lane_takes_only_a_signed_invite() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    server.product("vip", 100, &keys("V", 3)).await;
    let (code, _) = server
        .admin_post(
            "/api/v1/admin/products/vip/flash-sale",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(code, 200);
    let join = |code: &str| {
        let body = json!({"sku": "vip", "quantity": 1, "contact": "v@x.com", "channel": "epay", "vip_code": code});
        let request = server
            .http
            .post(server.url("/api/v1/orders"))
            .json(&body)
            .send();
        async move { answer(request.await.unwrap()).await }
    };
    let (code, public) = server.order_as("vip", 1, "first@x.com").await;
    assert_eq!((code, &public["position"]), (202, &json!(1)), "{public}");
    let (code, forged) = join("vip1.big-customer.00000000000000000000000000000000").await;
    assert_eq!(
        (code, forged["error"].as_str()),
        (403, Some("invalid_vip_code"))
    );
    let (code, invite) = server
        .admin_post(
            "/api/v1/admin/vip-invites",
            json!({"label": "big-customer"}),
        )
        .await;
    assert_eq!(code, 201, "{invite}");
    let (code, vip) = join(invite["code"].as_str().unwrap()).await;
    assert_eq!(
        (code, &vip["position"]),
        (202, &json!(1)),
        "its own lane: {vip}"
    );
}

/// Postmortem: cross-site POSTs created orders from visitors' browsers (a `text/plain`
/// body to the API, an unchecked `/buy` form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_create_no_orders() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    server.product("csrf", 100, &keys("C", 5)).await;
    let client = client_from("127.0.0.1");
    let body = json!({"sku": "csrf", "quantity": 1, "contact": "c@x.com", "channel": "epay"});
    let r = client
        .post(server.url("/api/v1/orders"))
        .header("Content-Type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let form = [
        ("sku", "csrf"),
        ("quantity", "1"),
        ("contact", "c@x.com"),
        ("method", "epay"),
        ("key", "k1"),
    ];
    let host = server.base.trim_start_matches("http://").to_owned();
    for (name, value) in [
        ("Origin", "http://evil.example".to_owned()),
        ("Origin", "null".to_owned()),
        ("Sec-Fetch-Site", "cross-site".to_owned()),
    ] {
        let r = client
            .post(server.url("/buy"))
            .header(name, value.as_str())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}: {value}");
    }
    assert_eq!(server.stock("csrf").await, (5, 0, 0), "no order was made");
    let r = client
        .post(server.url("/buy"))
        .header("Origin", format!("http://{host}"))
        .header("Sec-Fetch-Site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "the shop's own form still buys");
    assert_eq!(server.stock("csrf").await, (4, 1, 0));
}

/// Postmortem: `/pay/manual/{anything}` showed any text as the order inside the payment
/// instructions, a phishing page on the shop's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manual_payment_page_is_only_for_manual_orders() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        data.path(),
        &[
            ("PANSHI_STRIPE__API_BASE", "http://127.0.0.1:9"),
            ("PANSHI_STRIPE__SECRET_KEY", "sk_manual_test_0123456789"),
        ],
    );
    server.product("man", 100, &keys("M", 3)).await;
    for path in [
        "/pay/manual/Send%20the%20money%20to%20IBAN%20XX00",
        "/pay/manual/1a2b3c",
    ] {
        let r = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        // (The language switch links back to the path, percent-encoded, in an href.)
        assert!(!r.text().await.unwrap().contains("Send the money to IBAN"));
    }
    let (_, on_epay) = server.order("man", 1).await;
    let path = format!("/pay/manual/{}", on_epay["order_id"].as_str().unwrap());
    let r = server.http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "an order not in the manual queue");
    let (_, manual) = server.order_via("man", 1, "m@x.com", "card").await;
    let url = manual["payment"]["url"].as_str().unwrap();
    let r = server.http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 200, "{url} {manual} {}", r.text().await.unwrap());
}
