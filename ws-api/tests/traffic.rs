//! Traffic control over real sockets: a flood from one client is refused with 429 and
//! `Retry-After` while another client and every payment notification still go through;
//! the risk rules refuse with their own codes.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMITED: [(&str, &str); 2] = [
    ("PANSHI_LIMITS__CREATE__PER_SECOND", "2"),
    ("PANSHI_LIMITS__CREATE__BURST", "5"),
];

fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn order_from(
    server: &Server,
    client: &reqwest::Client,
    contact: &str,
) -> (u16, serde_json::Value, Option<String>) {
    let body = json!({"sku": "flood", "quantity": 1, "contact": contact, "channel": "epay"});
    let r = client
        .post(server.url("/api/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().unwrap().to_owned());
    let (code, body) = answer(r).await;
    (code, body, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_client_is_refused_while_others_and_notifies_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &LIMITED);
    server.product("flood", 100, &keys("FL", 50)).await;
    let flooder = client_from("127.0.0.1");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..30 {
        let (code, body, retry_after) = order_from(&server, &flooder, &format!("f{n}@x.com")).await;
        match code {
            201 => accepted.push(body),
            429 => {
                assert_eq!(body["error"], "rate_limited");
                assert!(retry_after.is_some_and(|s| s.parse::<u32>().unwrap() >= 1));
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        accepted.len() >= 5 && accepted.len() < 10,
        "burst then refusals: {} accepted",
        accepted.len()
    );
    assert!(refused > 20);
    // Another client is not affected by the flooder's bucket.
    let other = client_from("127.0.0.2");
    let (code, body, _) = order_from(&server, &other, "other@x.com").await;
    assert_eq!(code, 201, "{body}");
    // Payment notifications are never limited: every accepted order can be paid, now.
    for order in &accepted {
        assert_eq!(server.pay(order).await, (200, "success".into()));
    }
    // The flooder recovers once its bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, _) = order_from(&server, &flooder, "late@x.com").await;
    assert_eq!(code, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_rules_refuse_with_their_own_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("panshi.toml");
    std::fs::write(&config, "[risk]\nblocked_contacts = [\"banned@x.com\"]\n").unwrap();
    let server = Server::start_full(
        &dir.path().join("data"),
        &[("PANSHI_RISK__RESERVED_UNITS_PER_CONTACT_MAX", "2")],
        &["--config", config.to_str().unwrap()],
    );
    server.product("flood", 100, &keys("R", 10)).await;
    let client = client_from("127.0.0.1");
    let (first, _, _) = order_from(&server, &client, "hoarder@x.com").await;
    let (second, held, _) = order_from(&server, &client, "Hoarder@X.com").await;
    assert_eq!((first, second), (201, 201));
    let (code, body, _) = order_from(&server, &client, "hoarder@x.com").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("too_many_reserved")),
        "{body}"
    );
    // Paying releases the hold: the buyer may reserve again.
    assert_eq!(server.pay(&held).await.0, 200);
    let (code, _, _) = order_from(&server, &client, "hoarder@x.com").await;
    assert_eq!(code, 201);
    let (code, body, _) = order_from(&server, &client, "banned@x.com").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("blocked_contact")),
        "{body}"
    );
    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("panshi_risk_refusals_total{rule=\"too_many_reserved\"}"),
        "refusals are counted"
    );
}
