//! The direct channels' notifies. Alipay: a form POST verified with Alipay's public key,
//! answered `success` or `fail`. WeChat Pay: a JSON POST whose headers are verified with
//! WeChat Pay's public key (timestamp within 300 s), its resource decrypted with the APIv3
//! key, answered 204 or 4xx `{"code":"FAIL","message":..}`.
//!
//! Invariant: an answer that tells the provider to stop retrying (`success`, 204) is given
//! only once the payment is durable, already applied, or pays nothing; a forged, foreign,
//! stale or mismatched notify changes nothing and is counted.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::wechatpay::{Resource, SignedHeaders};
use engine::{OrderId, Payment};
use serde::Deserialize;

use super::payments::{apply, counted_for, Applied};
use crate::direct::wechat::{transaction_state, TransactionState};
use crate::{read_body, AppState};

/// Largest Alipay notify body (real ones are about 1.5 KB).
pub const ALIPAY_NOTIFY_BYTES_MAX: usize = 16 * 1024;
/// Largest WeChat Pay notify body (real ones are about 1 KB).
pub const WECHAT_NOTIFY_BYTES_MAX: usize = 32 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route(
            "/api/v1/payments/alipay/notify",
            web::post().to(alipay_notify),
        )
        .route(
            "/api/v1/payments/wechat/notify",
            web::post().to(wechat_notify),
        );
}

fn alipay_answer(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(body)
}

/// The order exists and is in CNY, the only currency the direct channels take.
fn in_cny(state: &AppState, order_id: &OrderId) -> bool {
    state
        .shop
        .store()
        .order(order_id)
        .ok()
        .flatten()
        .is_some_and(|record| record.created.currency.as_str() == "CNY")
}

async fn alipay_notify(payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let fail = || alipay_answer(StatusCode::BAD_REQUEST, "fail");
    let Some(config) = &state.direct.alipay else {
        counted_for("alipay", "rejected", "not_configured");
        return fail();
    };
    let body = match read_body(payload, ALIPAY_NOTIFY_BYTES_MAX, crate::payload_too_large).await {
        Ok(body) => body,
        // Too large (413) or too slow (408), as for every callback.
        Err(error) => {
            counted_for("alipay", "rejected", "body");
            return alipay_answer(error.status, "fail");
        }
    };
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        counted_for("alipay", "rejected", "body");
        return fail();
    };
    let view: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let notify =
        match engine::alipay::verify_notify(&view, &config.alipay_public_key, &config.app_id) {
            Ok(notify) => notify,
            Err(rejection) => {
                tracing::warn!(%rejection, "alipay notify rejected");
                counted_for("alipay", "rejected", "verification");
                return fail();
            }
        };
    if !notify.paid {
        counted_for("alipay", "ignored", "not_paid");
        return alipay_answer(StatusCode::OK, "success");
    }
    if !in_cny(&state, &notify.order_id) {
        counted_for("alipay", "rejected", "currency");
        return fail();
    }
    let payment = Payment {
        channel: "alipay".into(),
        gateway_trade_no: notify.trade_no.into(),
        amount_cents: notify.amount_cents,
    };
    match apply(&state, "alipay", &notify.order_id, payment).await {
        Applied::Yes => alipay_answer(StatusCode::OK, "success"),
        // The refund is alerted and recorded once; Alipay need not retry it for a day.
        Applied::SecondPayment => alipay_answer(StatusCode::OK, "success"),
        Applied::Refused => fail(),
        Applied::Later => alipay_answer(StatusCode::SERVICE_UNAVAILABLE, "fail"),
    }
}

/// WeChat Pay's failure answer: it retries on anything but 2xx.
fn wechat_fail(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"code": "FAIL", "message": message}))
}

#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    resource: NotificationResource<'a>,
}

#[derive(Deserialize)]
struct NotificationResource<'a> {
    algorithm: &'a str,
    #[serde(borrow)]
    ciphertext: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    nonce: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    associated_data: std::borrow::Cow<'a, str>,
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Why a WeChat Pay notify is refused: the status and message of the answer.
type WechatRefusal = (StatusCode, &'static str);

/// Verifies a WeChat Pay notify and decrypts what it says.
fn wechat_transaction(
    request: &HttpRequest,
    body: &[u8],
    state: &AppState,
) -> Result<TransactionState, WechatRefusal> {
    let Some(config) = &state.direct.wechat else {
        counted_for("wechat", "rejected", "not_configured");
        return Err((StatusCode::BAD_REQUEST, "wechat is not configured"));
    };
    let headers = SignedHeaders {
        timestamp: header(request, "Wechatpay-Timestamp"),
        nonce: header(request, "Wechatpay-Nonce"),
        signature: header(request, "Wechatpay-Signature"),
    };
    let now_secs = state.shop.now_ms() / 1000;
    if let Err(rejection) =
        engine::wechatpay::verify_signed(&headers, body, &config.platform_public_key, now_secs)
    {
        tracing::warn!(%rejection, "wechat notify rejected");
        counted_for("wechat", "rejected", "verification");
        return Err((StatusCode::UNAUTHORIZED, "signature"));
    }
    let notification: Notification<'_> = serde_json::from_slice(body).map_err(|_| {
        counted_for("wechat", "rejected", "body");
        (StatusCode::BAD_REQUEST, "the body is not a notification")
    })?;
    let resource = &notification.resource;
    if resource.algorithm != "AEAD_AES_256_GCM" {
        counted_for("wechat", "rejected", "body");
        return Err((StatusCode::BAD_REQUEST, "unknown algorithm"));
    }
    let plain = engine::wechatpay::decrypt_resource(
        &config.api_v3_key,
        &Resource {
            nonce: &resource.nonce,
            associated_data: &resource.associated_data,
            ciphertext: &resource.ciphertext,
        },
    )
    .map_err(|rejection| {
        tracing::warn!(%rejection, "wechat notify resource does not decrypt");
        counted_for("wechat", "rejected", "verification");
        (StatusCode::BAD_REQUEST, "resource")
    })?;
    transaction_state(&plain, config).map_err(|reason| {
        tracing::warn!(reason, "wechat notify refused");
        counted_for("wechat", "rejected", "transaction");
        (StatusCode::BAD_REQUEST, reason)
    })
}

async fn wechat_notify(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = match read_body(payload, WECHAT_NOTIFY_BYTES_MAX, crate::payload_too_large).await {
        Ok(body) => body,
        // Too large (413) or too slow (408), as for every callback.
        Err(error) => {
            counted_for("wechat", "rejected", "body");
            return wechat_fail(error.status, "body too large or too slow");
        }
    };
    let (order_id, payment) = match wechat_transaction(&request, &body, &state) {
        Ok(TransactionState::Paid { order_id, payment }) => (order_id, payment),
        Ok(TransactionState::NotPaid) => {
            counted_for("wechat", "ignored", "not_paid");
            return HttpResponse::NoContent().finish();
        }
        Err((status, message)) => return wechat_fail(status, message),
    };
    if !in_cny(&state, &order_id) {
        counted_for("wechat", "rejected", "currency");
        return wechat_fail(StatusCode::BAD_REQUEST, "unknown order or not in CNY");
    }
    match apply(&state, "wechat", &order_id, payment).await {
        // A second payment's refund is alerted and recorded once: no retries wanted.
        Applied::Yes | Applied::SecondPayment => HttpResponse::NoContent().finish(),
        Applied::Refused => wechat_fail(StatusCode::BAD_REQUEST, "refused"),
        Applied::Later => wechat_fail(StatusCode::SERVICE_UNAVAILABLE, "retry"),
    }
}
