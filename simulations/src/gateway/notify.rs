//! Paying an order and telling the shop: the Epay notify (a signed GET, as real gateways
//! send it) and the epusdt callback (a signed JSON POST), each retried with doubling backoff
//! until the shop answers the expected body or the attempts run out.
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

use super::store::{Details, NotifyOutcome, Order};
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
    trade_no: String,
    /// Which copy (0, or 1 for a duplicate): the index of its delivery record.
    copy: usize,
    request: Request,
    delay_ms: u64,
}

#[derive(Clone)]
struct Request {
    url: String,
    /// A JSON body to POST; a GET when `None`.
    json_body: Option<String>,
    /// The answer body that means "received"; anything else is retried.
    success_body: &'static str,
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
    /// Paid now; `copies` notifies went out (0 when the drop fault fired).
    Paid {
        copies: usize,
    },
}

/// Pays an order, as the buyer's click or `POST /control/pay` does, and queues its notify.
pub fn pay(shared: &Shared, trade_no: &str) -> Payment {
    let paid = {
        let mut world = shared.world();
        if world.store.get(trade_no).is_none() {
            return Payment::Unknown;
        }
        match world.mark_paid(trade_no) {
            Some(paid) => paid,
            None => return Payment::AlreadyPaid,
        }
    };
    let request = request_for(shared, &paid.order);
    for copy in 0..paid.copies {
        let job = Job {
            trade_no: paid.order.trade_no.clone(),
            copy,
            request: request.clone(),
            delay_ms: paid.delay_ms,
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

fn request_for(shared: &Shared, order: &Order) -> Request {
    match &order.details {
        Details::Epay(_) => Request {
            url: epay_notify_url(shared, order),
            json_body: None,
            success_body: "success",
        },
        Details::Epusdt(_) => Request {
            url: order.notify_url.clone(),
            json_body: Some(epusdt_callback_body(shared, order)),
            success_body: "ok",
        },
    }
}

/// The order's `notify_url` with the signed Epay notify parameters in its query string.
fn epay_notify_url(shared: &Shared, order: &Order) -> String {
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
    let sign = epay_sign(params, &shared.key);
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

/// The epusdt callback as JSON, numbers written as JSON numbers in shortest decimal form.
fn epusdt_callback_body(shared: &Shared, order: &Order) -> String {
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
        &shared.epusdt_token,
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
        for attempt in 1..=NOTIFY_ATTEMPTS_MAX {
            let result = {
                let _permit = self.sends.acquire().await.expect("never closed");
                send_once(&self.client, &job.request).await
            };
            let outcome = match &result {
                Ok(()) => NotifyOutcome::Delivered,
                Err(_) if attempt == NOTIFY_ATTEMPTS_MAX => NotifyOutcome::GaveUp,
                Err(_) => NotifyOutcome::Pending,
            };
            self.shared
                .world()
                .store
                .record(&job.trade_no, job.copy, |d| {
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

/// One attempt: `Ok` only when the shop's body is exactly the expected word.
async fn send_once(client: &reqwest::Client, request: &Request) -> Result<(), String> {
    let builder = match &request.json_body {
        None => client.get(&request.url),
        Some(body) => client
            .post(&request.url)
            .header("content-type", "application/json")
            .body(body.clone()),
    };
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
    if body == request.success_body.as_bytes() {
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
