//! Buyers' delivery mail against a real SMTP server (Python's aiosmtpd, started by each
//! test): the mail arrives with the order's key and its page's link; a hanging mail server
//! never slows a purchase; a mail pending at a `kill -9` still arrives after the restart;
//! a mail whose acceptance was never recorded is sent again with the same `Message-ID`;
//! STARTTLS is required by default, and a mail that keeps failing is retried across a
//! restart and given up after its last try, visible to operators.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FROM: &str = "Test Shop <shop@shop.example>";

fn smtp_env(port: &str, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PANSHI_SMTP__HOST".to_owned(), "127.0.0.1".to_owned()),
        ("PANSHI_SMTP__PORT".to_owned(), port.to_owned()),
        ("PANSHI_SMTP__FROM".to_owned(), FROM.to_owned()),
        (
            "PANSHI_PUBLIC_URL".to_owned(),
            "https://shop.example".to_owned(),
        ),
        // Failed tries and low-stock alerts are expected here: keep them out of the output.
        ("PANSHI_LOG__LEVEL".to_owned(), "error".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn start(data: &Path, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with(data, &env)
}

/// Orders one key as `contact` and pays for it; returns the order and its key.
async fn buy(server: &Server, sku: &str, contact: &str) -> (Value, String) {
    let (code, order) = server.order_as(sku, 1, contact).await;
    assert_eq!(code, 201, "{order}");
    let (code, text) = server.pay(&order).await;
    assert_eq!((code, text.as_str()), (200, "success"));
    let (_, view) = server.lookup(&order).await;
    let key = view["cards"][0].as_str().unwrap_or_default().to_owned();
    assert!(!key.is_empty(), "{view}");
    (order, key)
}

fn assert_delivery_mail(message: &Value, order: &Value, key: &str) {
    let order_id = order["order_id"].as_str().unwrap();
    let token = order["token"].as_str().unwrap();
    assert_eq!(message["rcpt_tos"][0], "buyer@example.com", "{message}");
    assert_eq!(message["mail_from"], "shop@shop.example", "{message}");
    let text = message["text"].as_str().unwrap();
    assert!(text.contains(key), "the key is in the mail: {text}");
    let link = format!("https://shop.example/order/{order_id}?token={token}");
    assert!(
        text.contains(&link),
        "the order link is in the mail: {text}"
    );
    assert_eq!(
        message["message_id"],
        format!("<delivery.{order_id}@shop.example>"),
        "{message}"
    );
}

/// Waits until the outbox counts `sent` mails (the sink saves a message before it answers
/// 250; the shop records it after), and returns the outbox.
async fn until_sent(server: &Server, sent: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = outbox(server).await;
        if view["sent"].as_u64() == Some(sent) {
            return view;
        }
        assert!(Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outbox(server: &Server) -> Value {
    let (code, body) = server.admin_get("/api/v1/ops/mail").await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_mail_server_never_slows_a_purchase_and_a_mail_pending_at_kill_9_arrives() {
    // A "mail server" that accepts connections and never says a word.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hanging.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = smtp_env(&port.to_string(), &[("PANSHI_SMTP__TLS", "none")]);
    let mut server = start(&data, &env);
    server.product("mail", 100, &keys("MAIL", 10)).await;

    let started = Instant::now();
    let (order, key) = buy(&server, "mail", "buyer@example.com").await;
    for _ in 0..5 {
        buy(&server, "mail", "13800138000").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "six purchases took {:?} behind a hanging mail server",
        started.elapsed()
    );
    let view = outbox(&server).await;
    assert_eq!(
        (view["queued"].as_u64(), view["waiting"].as_u64()),
        (Some(1), Some(1)),
        "{view}"
    );

    server.kill9();
    holder.abort();
    let _ = holder.await;
    let sink = Sink::start(&dir.path().join("sink"), port, false);
    server.restart();
    let messages = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_delivery_mail(&messages[0], &order, &key);
    let view = until_sent(&server, 1).await;
    assert_eq!(view["waiting"].as_u64(), Some(0), "{view}");
    assert_eq!(sink.messages().len(), 1, "phone contacts get no mail");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_whose_acceptance_was_not_recorded_is_resent_with_its_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The first message is received, then its "250" is withheld: the shop is killed
    // while it waits, so its MailSent never reaches the log.
    let sink = Sink::start(&dir.path().join("sink"), port, true);
    let env = smtp_env(&port.to_string(), &[("PANSHI_SMTP__TLS", "none")]);
    let mut server = start(&dir.path().join("data"), &env);
    server.product("resend", 100, &keys("RESEND", 3)).await;
    let (order, key) = buy(&server, "resend", "buyer@example.com").await;
    let first = sink.wait_for(1, Duration::from_secs(20)).await;
    server.kill9();
    server.restart();
    let both = sink.wait_for(2, Duration::from_secs(20)).await;
    assert_delivery_mail(&first[0], &order, &key);
    assert_delivery_mail(&both[1], &order, &key);
    assert_eq!(both[0]["message_id"], both[1]["message_id"]);
    until_sent(&server, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required_by_default_and_a_failing_mail_is_given_up_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // aiosmtpd without a certificate offers no STARTTLS.
    let sink = Sink::start(&dir.path().join("sink"), port, false);
    let env = smtp_env(&port.to_string(), &[("PANSHI_SMTP__RETRY_FIRST_MS", "40")]);
    let mut server = start(&dir.path().join("data"), &env);
    server.product("tls", 100, &keys("TLS", 3)).await;
    let (order, _) = buy(&server, "tls", "buyer@example.com").await;
    let order_id = order["order_id"].as_str().unwrap();

    // A few tries fail; the count goes on after a restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = outbox(&server).await;
        if view["retrying"][0]["attempts"].as_u64() >= Some(2) {
            let error = view["retrying"][0]["last_error"].as_str().unwrap();
            assert!(error.to_lowercase().contains("tls"), "{view}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed tries: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let given_up = loop {
        let view = outbox(&server).await;
        if view["given_up"]
            .as_array()
            .is_some_and(|list| !list.is_empty())
        {
            break view;
        }
        assert!(Instant::now() < deadline, "never given up: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(given_up["given_up"][0]["order_id"], order_id, "{given_up}");
    assert_eq!(
        given_up["given_up"][0]["attempts"].as_u64(),
        Some(u64::from(engine::mail::MAIL_ATTEMPTS_MAX))
    );
    assert!(sink.messages().is_empty(), "nothing was sent in the clear");
    server.stop();
    let (clean, report) = server.audit();
    assert!(clean, "{report}");
    assert!(report.contains("0 waiting"), "{report}");
    assert!(
        report.contains("1 given up"),
        "audit tells operators: {report}"
    );
}
