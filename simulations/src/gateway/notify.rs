//! Paying an order and telling the shop: the Epay notify (a signed GET, as real gateways
//! send it), the epusdt callback (a signed JSON POST), Alipay's notify (a form POST signed
//! RSA2) and WeChat Pay's (a JSON POST with signed headers and an encrypted resource), each
//! retried with doubling backoff until the shop answers what means "received" or the
//! attempts run out. A forged copy, where the fault asks for one, goes once and first.
//!
//! Each attempt is built when it is sent, so a WeChat Pay notify carries a fresh timestamp
//! on every retry, as the real one does.
//!
//! Handlers only enqueue (`try_send`, never waiting); one dispatcher task on the runtime that
//! called `start` runs the deliveries, so a full queue sheds visibly instead of stalling a
//! request, and stopping the gateway stops every retry.

use std::sync::Arc;
use std::time::Duration;

use engine::payment::{epay_sign, epusdt_sign, percent_encode};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::store::{Details, NotifyOutcome, Order, PayRefusal};
use super::Shared;

/// Most attempts per notify copy, the first included.
pub const NOTIFY_ATTEMPTS_MAX: u32 = 10;
/// Longest wait between two attempts; the backoff doubles up to here.
pub const NOTIFY_BACKOFF_MS_MAX: u64 = 60_000;
/// Longest one attempt may take, connect to last byte.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most notify copies waiting for the dispatcher; more are shed.
pub const NOTIFY_QUEUE_MAX: usize = 16_384;
/// Most notify copies being delivered at once, counting those waiting to retry.
pub const NOTIFY_DELIVERIES_MAX: usize = 4_096;
/// Most notify requests on the wire at once.
pub const NOTIFY_SENDS_MAX: usize = 64;
/// Longest shop answer read; the expected one is a single word.
pub const NOTIFY_ANSWER_BYTES_MAX: usize = 1_024;
/// Longest error kept in a delivery record.
const ERROR_TEXT_MAX: usize = 200;

const _: () = assert!(NOTIFY_SENDS_MAX <= NOTIFY_DELIVERIES_MAX);
const _: () = assert!(NOTIFY_ATTEMPTS_MAX >= 1);

/// One copy of one order's notify, ready to send.
pub struct Job {
    /// The order as it was paid.
    order: Order,
    /// Which copy: the index of its delivery record.
    copy: usize,
    /// A forged copy: sent once; the shop must refuse it.
    forged: bool,
    delay_ms: u64,
}

/// One attempt on the wire.
struct Request {
    url: String,
    body: Body,
    headers: Vec<(&'static str, String)>,
    /// What the shop answers when it took the notify.
    success: Success,
}

enum Body {
    /// A GET, everything in the query string.
    None,
    Json(String),
    Form(String),
}

#[derive(Clone, Copy)]
enum Success {
    /// Exactly this body.
    Word(&'static str),
    /// Any 2xx status (WeChat Pay: 200 or 204).
    Status2xx,
}

/// The sending side, held by the request handlers.
pub struct Notifier {
    queue: mpsc::Sender<Job>,
}

impl Notifier {
    pub fn new() -> (Self, mpsc::Receiver<Job>) {
        let (queue, receiver) = mpsc::channel(NOTIFY_QUEUE_MAX);
        (Self { queue }, receiver)
    }
}

/// What paying an order did.
pub enum Payment {
    Unknown,
    AlreadyPaid,
    /// Closed by the merchant: it can no longer be paid.
    Closed,
    /// Paid now; `copies` notifies went out (0 when the drop fault fired).
    Paid {
        copies: usize,
    },
}

/// Pays an order, as the buyer's click or `POST /control/pay` does, and queues its notify.
pub fn pay(shared: &Shared, trade_no: &str) -> Payment {
    let paid = match shared.world().mark_paid(trade_no) {
        Ok(paid) => paid,
        Err(PayRefusal::Unknown) => return Payment::Unknown,
        Err(PayRefusal::AlreadyPaid) => return Payment::AlreadyPaid,
        Err(PayRefusal::Closed) => return Payment::Closed,
    };
    let genuine_first = usize::from(paid.forged);
    let jobs = paid
        .forged
        .then_some((0, true))
        .into_iter()
        .chain((0..paid.copies).map(|n| (genuine_first + n, false)));
    for (copy, forged) in jobs {
        let job = Job {
            order: paid.order.clone(),
            copy,
            forged,
            // The forged copy races ahead of the genuine one.
            delay_ms: if forged { 0 } else { paid.delay_ms },
        };
        if shared.notifier.queue.try_send(job).is_err() {
            shared
                .world()
                .store
                .record(&paid.order.trade_no, copy, |d| {
                    d.outcome = NotifyOutcome::Shed;
                });
        }
    }
    Payment::Paid {
        copies: paid.copies,
    }
}

/// The notify for `order`, built now; `forged` signs it with a key that is not the
/// gateway's and lowers the amount.
fn request_for(shared: &Shared, order: &Order, forged: bool) -> Request {
    let mut order = order.clone();
    if forged {
        order.money = "0.01".into();
        order.amount_cents = 1;
    }
    match &order.details {
        Details::Epay(_) => Request {
            url: epay_notify_url(shared, &order, forged),
            body: Body::None,
            headers: Vec::new(),
            success: Success::Word("success"),
        },
        Details::Epusdt(_) => Request {
            url: order.notify_url.clone(),
            body: Body::Json(epusdt_callback_body(shared, &order, forged)),
            headers: Vec::new(),
            success: Success::Word("ok"),
        },
        Details::Alipay(_) => Request {
            url: order.notify_url.clone(),
            body: Body::Form(super::alipay::notify_form(shared, &order, forged)),
            headers: Vec::new(),
            success: Success::Word("success"),
        },
        Details::Wechat(_) => {
            let (body, headers) = super::wechat::notify(shared, &order, forged);
            Request {
                url: order.notify_url.clone(),
                body: Body::Json(body),
                headers,
                success: Success::Status2xx,
            }
        }
    }
}

/// The order's `notify_url` with the signed Epay notify parameters in its query string.
fn epay_notify_url(shared: &Shared, order: &Order, forged: bool) -> String {
    let Details::Epay(details) = &order.details else {
        unreachable!("an Epay order");
    };
    let params = [
        ("pid", shared.pid.as_str()),
        ("trade_no", order.trade_no.as_str()),
        ("out_trade_no", order.out_trade_no.as_str()),
        ("type", details.pay_type.as_str()),
        ("name", details.name.as_str()),
        ("money", order.money.as_str()),
        ("trade_status", "TRADE_SUCCESS"),
        ("param", details.param.as_str()),
    ];
    let key = if forged {
        FORGED_SECRET
    } else {
        shared.key.as_str()
    };
    let sign = epay_sign(params, key);
    let mut url = order.notify_url.clone();
    url.push(if url.contains('?') { '&' } else { '?' });
    // Real gateways leave empty parameters out, which the signature skips anyway.
    for (name, value) in params.iter().filter(|(_, v)| !v.is_empty()) {
        url.push_str(name);
        url.push('=');
        percent_encode(value, &mut url);
        url.push('&');
    }
    url.push_str("sign=");
    url.push_str(&sign);
    url.push_str("&sign_type=MD5");
    url
}

/// The secret a forger signs Epay and epusdt notifies with.
const FORGED_SECRET: &str = "not-the-merchant-key";

/// The epusdt callback as JSON, numbers written as JSON numbers in shortest decimal form.
fn epusdt_callback_body(shared: &Shared, order: &Order, forged: bool) -> String {
    let Details::Epusdt(details) = &order.details else {
        unreachable!("an epusdt order");
    };
    #[derive(Serialize)]
    struct Callback<'a> {
        trade_id: &'a str,
        order_id: &'a str,
        amount: &'a RawValue,
        actual_amount: &'a RawValue,
        token: &'a str,
        block_transaction_id: &'a str,
        signature: String,
        status: u8,
    }
    const STATUS_PAID: u8 = 2;
    let status = STATUS_PAID.to_string();
    let token = if forged {
        FORGED_SECRET
    } else {
        shared.epusdt_token.as_str()
    };
    let signature = epusdt_sign(
        [
            ("trade_id", order.trade_no.as_str()),
            ("order_id", order.out_trade_no.as_str()),
            ("amount", order.money.as_str()),
            ("actual_amount", details.actual_amount.as_str()),
            ("token", details.address.as_str()),
            (
                "block_transaction_id",
                details.block_transaction_id.as_str(),
            ),
            ("status", status.as_str()),
        ],
        token,
    );
    let number = |text: &str| RawValue::from_string(text.to_owned()).expect("a JSON number");
    let amount = number(&order.money);
    let actual_amount = number(&details.actual_amount);
    serde_json::to_string(&Callback {
        trade_id: &order.trade_no,
        order_id: &order.out_trade_no,
        amount: &amount,
        actual_amount: &actual_amount,
        token: &details.address,
        block_transaction_id: &details.block_transaction_id,
        signature,
        status: STATUS_PAID,
    })
    .expect("serializable")
}

/// Runs deliveries from the queue until the gateway stops (the task is aborted, which drops
/// the `JoinSet` and with it every delivery still waiting or retrying).
pub async fn dispatch(shared: Arc<Shared>, mut queue: mpsc::Receiver<Job>, backoff_first_ms: u64) {
    let client = reqwest::Client::builder()
        .timeout(NOTIFY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS builds");
    let deliveries = Arc::new(Semaphore::new(NOTIFY_DELIVERIES_MAX));
    let sends = Arc::new(Semaphore::new(NOTIFY_SENDS_MAX));
    let mut running = JoinSet::new();
    while let Some(job) = queue.recv().await {
        // Waiting here leaves later jobs in the bounded queue, where `pay` sheds them.
        let permit = deliveries
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        while running.try_join_next().is_some() {}
        let delivery = Delivery {
            shared: shared.clone(),
            client: client.clone(),
            sends: sends.clone(),
            backoff_first_ms,
        };
        running.spawn(async move {
            delivery.run(job).await;
            drop(permit);
        });
    }
}

struct Delivery {
    shared: Arc<Shared>,
    client: reqwest::Client,
    sends: Arc<Semaphore>,
    backoff_first_ms: u64,
}

impl Delivery {
    async fn run(self, job: Job) {
        tokio::time::sleep(Duration::from_millis(job.delay_ms)).await;
        let mut backoff_ms = self.backoff_first_ms.min(NOTIFY_BACKOFF_MS_MAX);
        // A forged copy goes once: its only right answer is a refusal.
        let attempts_max = if job.forged { 1 } else { NOTIFY_ATTEMPTS_MAX };
        for attempt in 1..=attempts_max {
            let request = request_for(&self.shared, &job.order, job.forged);
            let result = {
                let _permit = self.sends.acquire().await.expect("never closed");
                send_once(&self.client, &request).await
            };
            let outcome = match (&result, job.forged) {
                (Ok(()), true) => NotifyOutcome::Accepted,
                (Err(_), true) => NotifyOutcome::Refused,
                (Ok(()), false) => NotifyOutcome::Delivered,
                (Err(_), false) if attempt == attempts_max => NotifyOutcome::GaveUp,
                (Err(_), false) => NotifyOutcome::Pending,
            };
            self.shared
                .world()
                .store
                .record(&job.order.trade_no, job.copy, |d| {
                    d.attempts = attempt;
                    d.outcome = outcome;
                    d.last_error = result.err();
                });
            if outcome != NotifyOutcome::Pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = backoff_ms.saturating_mul(2).min(NOTIFY_BACKOFF_MS_MAX);
        }
    }
}

/// One attempt: `Ok` only when the shop's answer means "received".
async fn send_once(client: &reqwest::Client, request: &Request) -> Result<(), String> {
    let mut builder = match &request.body {
        Body::None => client.get(&request.url),
        Body::Json(body) => client
            .post(&request.url)
            .header("content-type", "application/json")
            .body(body.clone()),
        Body::Form(body) => client
            .post(&request.url)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body.clone()),
    };
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let mut response = builder.send().await.map_err(error_text)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(error_text)? {
        if body.len() + chunk.len() > NOTIFY_ANSWER_BYTES_MAX {
            return Err(format!(
                "HTTP {status}: answer longer than {NOTIFY_ANSWER_BYTES_MAX} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let received = match request.success {
        Success::Word(word) => body == word.as_bytes(),
        Success::Status2xx => status.is_success(),
    };
    if received {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&body);
        Err(truncate(format!("HTTP {status}: {text:?}")))
    }
}

fn error_text(error: reqwest::Error) -> String {
    truncate(error.to_string())
}

fn truncate(mut text: String) -> String {
    if text.len() > ERROR_TEXT_MAX {
        let mut end = ERROR_TEXT_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
