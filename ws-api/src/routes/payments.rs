//! Gateway callbacks. A notify is answered `success` only once its effect is durable (or it
//! was applied before); anything forged or mismatched changes nothing and is counted.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::{PayOutcome, ShopError};
use engine::payment::verify_epay_notify;
use engine::Payment;

use crate::{read_body, AppState};

/// Largest notify body.
pub const NOTIFY_BODY_BYTES_MAX: usize = 8 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config.route(
        "/api/v1/payments/epay/notify",
        web::route()
            .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Post()))
            .to(epay_notify),
    );
}

fn fail(status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body("fail")
}

fn counted(outcome: &'static str, reason: &'static str) {
    metrics::counter!("panshi_payment_notifies_total", "channel" => "epay", "outcome" => outcome, "reason" => reason)
        .increment(1);
}

async fn epay_notify(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut params: Vec<(String, String)> =
        serde_urlencoded::from_str(request.query_string()).unwrap_or_default();
    if request.method() == actix_web::http::Method::POST {
        let Ok(body) = read_body(payload, NOTIFY_BODY_BYTES_MAX, crate::payload_too_large).await
        else {
            counted("rejected", "body");
            return fail(StatusCode::BAD_REQUEST);
        };
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(form) => params.extend(form),
            Err(_) => {
                counted("rejected", "body");
                return fail(StatusCode::BAD_REQUEST);
            }
        }
    }
    apply_epay_params(&state, &params).await
}

/// Verifies and applies Epay notify parameters; the answer is the gateway's.
pub async fn apply_epay_params(state: &AppState, params: &[(String, String)]) -> HttpResponse {
    let Some(epay) = &state.epay else {
        tracing::warn!("epay notify received but epay is not configured");
        counted("rejected", "not_configured");
        return fail(StatusCode::BAD_REQUEST);
    };
    let notify = match verify_epay_notify(params, &epay.pid, &epay.key) {
        Ok(notify) => notify,
        Err(rejection) => {
            tracing::warn!(%rejection, "epay notify rejected");
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
        channel: "epay".into(),
        gateway_trade_no: notify.trade_no,
        amount_cents: notify.amount_cents,
    };
    match state.shop.apply_payment(&notify.order_id, payment).await {
        Ok(outcome) => {
            counted(
                if outcome == PayOutcome::AlreadyApplied {
                    "replayed"
                } else {
                    "applied"
                },
                "ok",
            );
            HttpResponse::Ok()
                .content_type("text/plain")
                .body("success")
        }
        Err(ShopError::Rejected(rejection)) => {
            tracing::warn!(order_id = %notify.order_id, %rejection, "epay notify refused");
            counted("rejected", "order");
            fail(StatusCode::BAD_REQUEST)
        }
        Err(error) => {
            tracing::error!(order_id = %notify.order_id, %error, "epay notify not applied; the gateway will retry");
            counted("error", "unavailable");
            fail(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}
