//! Gateway callbacks. A notify is answered `success` only once its effect is durable (or it
//! was applied before); anything forged or mismatched changes nothing and is counted.

use actix_web::guard;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::{PayOutcome, ShopError};
use engine::payment::verify_epay_notify;
use engine::Payment;

use crate::log_gate::LogGate;
use crate::{read_body, resource, AppState};

// Anyone can send these callbacks: their refusals are logged sampled (`log_gate`), and
// counted in full by `panshi_payment_notifies_total`.
static EPAY_REJECTED: LogGate = LogGate::new();
static EPUSDT_REJECTED: LogGate = LogGate::new();
static STRIPE_REJECTED: LogGate = LogGate::new();
static PAYMENT_REFUSED: LogGate = LogGate::new();

/// Largest notify body.
pub const NOTIFY_BODY_BYTES_MAX: usize = 8 * 1024;

/// One gateway's callback route. Mounted only when its channel is configured: a channel
/// that is not configured has no callback to forge.
struct CallbackRoute {
    channel: &'static str,
    mount: fn(&mut web::ServiceConfig),
}

/// Every gateway's callback, by channel name. A new channel adds its line here.
const CALLBACK_ROUTES: [CallbackRoute; 3] = [
    CallbackRoute {
        channel: "epay",
        mount: |config| {
            config.service(
                resource("/api/v1/payments/epay/notify")
                    .guard(guard::Any(guard::Get()).or(guard::Post()))
                    .to(epay_notify),
            );
        },
    },
    CallbackRoute {
        channel: "epusdt",
        mount: |config| {
            config.service(
                resource("/api/v1/payments/epusdt/notify")
                    .guard(guard::Post())
                    .to(epusdt_notify),
            );
        },
    },
    CallbackRoute {
        channel: "stripe",
        mount: |config| {
            config.service(
                resource("/api/v1/payments/stripe/webhook")
                    .guard(guard::Post())
                    .to(stripe_webhook),
            );
        },
    },
];

/// Mounts the callback of every configured channel (`AppState::payment_channels`).
pub fn configure(config: &mut web::ServiceConfig, state: &AppState) {
    for route in &CALLBACK_ROUTES {
        if state.payment_channels.iter().any(|c| c == route.channel) {
            (route.mount)(config);
        }
    }
}

/// Stripe event ids remembered for deduplication.
pub const STRIPE_EVENT_IDS_MAX: usize = 100_000;
/// Largest JSON callback body.
pub const CALLBACK_BODY_BYTES_MAX: usize = 64 * 1024;

/// A bounded set of recently seen ids: the oldest is forgotten first.
#[derive(Default)]
pub struct RecentIds {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
}

impl RecentIds {
    /// Whether `id` is new; remembers it.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == STRIPE_EVENT_IDS_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id.to_owned());
        self.seen.insert(id.to_owned());
        true
    }

    pub fn forget(&mut self, id: &str) {
        self.seen.remove(id);
    }
}

fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(body)
}

pub(crate) fn counted_for(channel: &'static str, outcome: &'static str, reason: &'static str) {
    actors::kept::count(
        "panshi_payment_notifies_total",
        &[
            ("channel", channel),
            ("outcome", outcome),
            ("reason", reason),
        ],
        1,
    );
}

/// Every top-level field of a JSON object with its text: a string's decoded value, a
/// number's raw text (amounts are never read through a float), empty for null.
fn json_fields(body: &[u8]) -> Option<Vec<engine::payment::JsonField>> {
    let object: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).ok()?;
    let mut fields = Vec::with_capacity(object.len());
    for (name, raw) in object {
        let raw = raw.get();
        let (text, is_number) = match raw.as_bytes().first()? {
            b'"' => (serde_json::from_str::<String>(raw).ok()?, false),
            b'n' => (String::new(), false),
            b't' | b'f' => (raw.to_owned(), false),
            b'-' | b'0'..=b'9' => (raw.to_owned(), true),
            _ => return None,
        };
        fields.push(engine::payment::JsonField {
            name,
            text,
            is_number,
        });
    }
    Some(fields)
}

/// epusdt's callback: JSON, signed with the API token; `ok` when applied or already applied.
async fn epusdt_notify(payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let Some(token) = &state.epusdt_token else {
        counted_for("epusdt", "rejected", "not_configured");
        return plain(StatusCode::BAD_REQUEST, "fail");
    };
    let body = match read_body(payload, CALLBACK_BODY_BYTES_MAX, crate::payload_too_large).await {
        Ok(body) => body,
        Err(error) => {
            counted_for("epusdt", "rejected", "body");
            return plain(error.status, "fail");
        }
    };
    let Some(fields) = json_fields(&body) else {
        counted_for("epusdt", "rejected", "body");
        return plain(StatusCode::BAD_REQUEST, "fail");
    };
    let callback = match engine::payment::verify_epusdt_callback(&fields, token) {
        Ok(callback) => callback,
        Err(rejection) => {
            if let Some(held_back) = EPUSDT_REJECTED.admit() {
                tracing::warn!(%rejection, held_back, "epusdt callback rejected");
            }
            counted_for("epusdt", "rejected", "verification");
            return plain(StatusCode::BAD_REQUEST, "fail");
        }
    };
    if !callback.paid {
        // `ok` means applied or already applied; a status that pays nothing is neither.
        counted_for("epusdt", "rejected", "not_paid");
        return plain(StatusCode::BAD_REQUEST, "fail");
    }
    let payment = Payment {
        channel: Payment::channel_named("epusdt"),
        gateway_trade_no: callback.trade_id.into(),
        amount_cents: callback.amount_cents,
    };
    match apply(&state, "epusdt", &callback.order_id, payment).await {
        Applied::Yes => plain(StatusCode::OK, "ok"),
        Applied::Refused | Applied::SecondPayment => plain(StatusCode::BAD_REQUEST, "fail"),
        Applied::Later => plain(StatusCode::SERVICE_UNAVAILABLE, "fail"),
    }
}

pub(crate) enum Applied {
    Yes,
    Refused,
    /// The order was paid by another transaction before: this money must go back. An
    /// operator is alerted; what the gateway is answered is the channel's rule.
    SecondPayment,
    Later,
}

/// Who the audit trail names for what the shop noticed by itself.
const SYSTEM_ACTOR: &str = "system";

/// A second, different payment for a paid order: the buyer paid twice. Nothing changes on
/// the order; operators are alerted (log, metric, and a durable audit-trail entry) so that
/// the second payment is refunded at the gateway.
async fn second_payment(
    state: &AppState,
    channel: &'static str,
    order_id: &engine::OrderId,
    payment: &Payment,
) {
    metrics::counter!("panshi_payments_second_total", "channel" => channel).increment(1);
    tracing::error!(channel, %order_id, alert = true, "a second payment for a paid order: refund it at the gateway");
    let action = engine::OperatorAction {
        by: SYSTEM_ACTOR.to_owned(),
        action: "refund_second_payment".to_owned(),
        subject: order_id.as_str().to_owned(),
        note: format!(
            "{channel} transaction {} paid {} again",
            payment.gateway_trade_no,
            engine::money::format_cents(payment.amount_cents)
        ),
        at_ms: state.shop.now_ms(),
    };
    if let Err(error) = state.shop.record_operator_action(action).await {
        tracing::error!(%order_id, %error, "the second payment's audit entry was not recorded");
    }
}

pub(crate) async fn apply(
    state: &AppState,
    channel: &'static str,
    order_id: &engine::OrderId,
    payment: Payment,
) -> Applied {
    match state.shop.apply_payment(order_id, payment.clone()).await {
        Ok(outcome) => {
            let outcome = if outcome == PayOutcome::AlreadyApplied {
                "replayed"
            } else {
                "applied"
            };
            counted_for(channel, outcome, "ok");
            Applied::Yes
        }
        Err(ShopError::Rejected(engine::Rejection::PaidByOtherTransaction)) => {
            counted_for(channel, "rejected", "second_payment");
            second_payment(state, channel, order_id, &payment).await;
            Applied::SecondPayment
        }
        Err(ShopError::Rejected(rejection)) => {
            if let Some(held_back) = PAYMENT_REFUSED.admit() {
                tracing::warn!(channel, %order_id, %rejection, held_back, "payment refused");
            }
            counted_for(channel, "rejected", "order");
            Applied::Refused
        }
        Err(error) => {
            tracing::error!(channel, %order_id, %error, "payment not applied; the gateway will retry");
            counted_for(channel, "error", "unavailable");
            Applied::Later
        }
    }
}

/// What a verified Stripe event asks for.
enum StripeEvent {
    /// Pays nothing (another type, or not paid): acknowledged.
    Nothing,
    Pays {
        order_id: engine::OrderId,
        session_id: String,
        amount_cents: u64,
        currency: String,
    },
}

fn stripe_event(event: &serde_json::Value) -> Result<StripeEvent, &'static str> {
    let object = &event["data"]["object"];
    if event["type"] != "checkout.session.completed" || object["payment_status"] != "paid" {
        return Ok(StripeEvent::Nothing);
    }
    let order_id = object["client_reference_id"]
        .as_str()
        .ok_or("no client_reference_id")?;
    let order_id =
        engine::OrderId::parse(order_id).map_err(|_| "client_reference_id is not an order id")?;
    Ok(StripeEvent::Pays {
        order_id,
        session_id: object["id"].as_str().ok_or("no session id")?.to_owned(),
        amount_cents: object["amount_total"]
            .as_u64()
            .ok_or("amount_total is not an integer")?,
        currency: object["currency"].as_str().ok_or("no currency")?.to_owned(),
    })
}

/// Stripe's webhook, verified as Stripe's libraries do; deduplicated by event id.
async fn stripe_webhook(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(secret) = &state.stripe_webhook_secret else {
        counted_for("stripe", "rejected", "not_configured");
        return plain(StatusCode::BAD_REQUEST, "stripe is not configured");
    };
    let body = match read_body(payload, CALLBACK_BODY_BYTES_MAX, crate::payload_too_large).await {
        Ok(body) => body,
        Err(error) => return plain(error.status, "body too large or too slow"),
    };
    let header = request
        .headers()
        .get("Stripe-Signature")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let now_secs = state.shop.now_ms() / 1000;
    if let Err(rejection) =
        engine::payment::verify_stripe_signature(header, &body, secret, now_secs)
    {
        if let Some(held_back) = STRIPE_REJECTED.admit() {
            tracing::warn!(%rejection, held_back, "stripe webhook rejected");
        }
        counted_for("stripe", "rejected", "verification");
        return plain(StatusCode::BAD_REQUEST, "bad signature");
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return plain(StatusCode::BAD_REQUEST, "not JSON");
    };
    let event_id = event["id"].as_str().unwrap_or("").to_owned();
    if !event_id.is_empty() && !state.stripe_events.lock().insert(&event_id) {
        counted_for("stripe", "replayed", "event_id");
        return plain(StatusCode::OK, "already applied");
    }
    let answer = stripe_apply(&state, &event).await;
    if answer.status() != StatusCode::OK {
        // Not applied: a retry of this event must be looked at again.
        state.stripe_events.lock().forget(&event_id);
    }
    answer
}

async fn stripe_apply(state: &AppState, event: &serde_json::Value) -> HttpResponse {
    let (order_id, session_id, amount_cents, currency) = match stripe_event(event) {
        Ok(StripeEvent::Nothing) => return plain(StatusCode::OK, "nothing to apply"),
        Ok(StripeEvent::Pays {
            order_id,
            session_id,
            amount_cents,
            currency,
        }) => (order_id, session_id, amount_cents, currency),
        Err(reason) => {
            counted_for("stripe", "rejected", "event");
            return HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(reason);
        }
    };
    let order_currency = state
        .shop
        .store()
        .order(&order_id)
        .ok()
        .flatten()
        .map(|r| r.created.currency);
    if order_currency.map(|c| c.as_str().to_ascii_lowercase()) != Some(currency) {
        counted_for("stripe", "rejected", "currency");
        return plain(StatusCode::BAD_REQUEST, "currency or order mismatch");
    }
    let payment = Payment {
        channel: Payment::channel_named("stripe"),
        gateway_trade_no: session_id.into(),
        amount_cents,
    };
    match apply(state, "stripe", &order_id, payment).await {
        Applied::Yes => plain(StatusCode::OK, "applied"),
        // Stripe retries anything but a 2xx for days: a second payment changes nothing
        // here, operators are alerted to refund it.
        Applied::SecondPayment => plain(StatusCode::OK, "already paid; refund alerted"),
        Applied::Refused => plain(StatusCode::BAD_REQUEST, "refused"),
        Applied::Later => plain(StatusCode::SERVICE_UNAVAILABLE, "retry"),
    }
}

fn fail(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body("fail")
}

fn counted(outcome: &'static str, reason: &'static str) {
    counted_for("epay", outcome, reason);
}

async fn epay_notify(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = if request.method() == actix_web::http::Method::POST {
        match read_body(payload, NOTIFY_BODY_BYTES_MAX, crate::payload_too_large).await {
            Ok(body) => body,
            // Too large (413) or too slow (408): the gateway retries.
            Err(error) => {
                counted("rejected", "body");
                return fail(error.status);
            }
        }
    } else {
        Default::default()
    };
    // The query's parameters, then the form's. Borrowed where nothing was escaped (each
    // owned copy was an allocation); invalid UTF-8 reads as U+FFFD, as serde's form did.
    let query = form_urlencoded::parse(request.query_string().as_bytes());
    let params: Vec<_> = query.chain(form_urlencoded::parse(&body)).collect();
    apply_epay_params(&state, &params).await
}

/// Verifies and applies Epay notify parameters; the answer is the gateway's.
pub async fn apply_epay_params<K: AsRef<str>, V: AsRef<str>>(
    state: &AppState,
    params: &[(K, V)],
) -> HttpResponse {
    let Some(epay) = &state.epay else {
        counted("rejected", "not_configured");
        return fail(StatusCode::BAD_REQUEST);
    };
    let notify = match verify_epay_notify(params, &epay.pid, &epay.key) {
        Ok(notify) => notify,
        Err(rejection) => {
            if let Some(held_back) = EPAY_REJECTED.admit() {
                tracing::warn!(%rejection, held_back, "epay notify rejected");
            }
            counted("rejected", "verification");
            return fail(StatusCode::BAD_REQUEST);
        }
    };
    if !notify.paid {
        counted("ignored", "not_paid");
        return HttpResponse::Ok()
            .content_type("text/plain")
            .body("success");
    }
    let payment = Payment {
        channel: Payment::channel_named("epay"),
        gateway_trade_no: notify.trade_no,
        amount_cents: notify.amount_cents,
    };
    match apply(state, "epay", &notify.order_id, payment).await {
        Applied::Yes => HttpResponse::Ok()
            .content_type("text/plain")
            .body("success"),
        Applied::Refused | Applied::SecondPayment => fail(StatusCode::BAD_REQUEST),
        Applied::Later => fail(StatusCode::SERVICE_UNAVAILABLE),
    }
}
