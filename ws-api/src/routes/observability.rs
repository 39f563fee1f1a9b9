//! Operator views of the running shop: actor health, alerts, the incident note of the status
//! page, and an order's trace. All need the operator token.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::trace::OrderTrace;
use actors::KindHealth;
use engine::time::format_rfc3339_ms;
use engine::OrderId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::operator::require_operator;
use crate::wire::parse_json;
use crate::{payload_too_large, read_body, AppState};

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/ops/actors", web::get().to(actors_health))
        .route("/api/v1/ops/channels", web::get().to(channels_health))
        .route("/api/v1/ops/pipeline", web::get().to(pipeline))
        .route("/api/v1/ops/alerts", web::get().to(alerts))
        .route("/api/v1/ops/mail", web::get().to(mail_outbox))
        .route("/api/v1/ops/incident", web::post().to(set_incident))
        .route(
            "/api/v1/admin/orders/{order_id}/trace",
            web::get().to(order_trace),
        );
}

fn kind_json(health: &KindHealth) -> Value {
    json!({
        "kind": health.kind.as_str(),
        "live": health.live,
        "started": health.started,
        "restarts": health.restarts,
        "mailbox_depth": health.mailbox_depth,
        "mailbox_depth_max": health.mailbox_depth_max,
        "handled": health.handled_count,
        "handling_p50_us": health.handling_p50_us,
        "handling_p99_us": health.handling_p99_us,
        "last_error": health.last_error.as_ref().map(|e| json!({
            "message": e.message,
            "at": format_rfc3339_ms(e.at_ms),
        })),
    })
}

/// Each payment channel: breaker state, success rate over its window, calls and failures.
async fn channels_health(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let channels: Vec<Value> = state
        .shop
        .channel_health()
        .await
        .iter()
        .map(|c| {
            json!({"channel": c.name, "breaker": c.breaker, "success_percent": c.success_percent,
                   "calls": c.calls, "failures": c.failures})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "channels": channels })))
}

/// The order pipeline's load and the open waiting rooms (flash sales and overload).
async fn pipeline(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let view = state.shop.pipeline();
    let rooms: Vec<Value> = view
        .rooms
        .iter()
        .map(|(sku, automatic, waiting)| {
            json!({"sku": sku.as_str(), "opened_by": if *automatic { "overload" } else { "operator" },
                   "waiting": waiting})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "saturated": view.saturated,
        "in_flight": view.in_flight,
        "sustained_per_second": view.sustained_per_second,
        "inflight_high": view.settings.inflight_high,
        "inflight_low": view.settings.inflight_low,
        "latency_high_ms": view.settings.latency_high_ms,
        "calm_ms": view.settings.calm_ms,
        "rooms": rooms,
    })))
}

async fn actors_health(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let kinds: Vec<Value> = state
        .shop
        .health()
        .snapshot()
        .iter()
        .map(kind_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "kinds": kinds })))
}

async fn alerts(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    Ok(HttpResponse::Ok().json(state.observatory.alerts_json()))
}

/// The buyers' mail outbox: counts, and the mails given up with their last error.
async fn mail_outbox(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let view = state.shop.outbox_view();
    let list = |mails: &[(OrderId, u32, String)]| -> Vec<Value> {
        mails
            .iter()
            .map(|(order_id, attempts, error)| {
                json!({"order_id": order_id.as_str(), "attempts": attempts, "last_error": error})
            })
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "open": view.open,
        "queued": view.queued,
        "sent": view.sent,
        "waiting": view.waiting,
        "retrying": list(&view.retrying),
        "given_up": list(&view.given_up),
    })))
}

#[derive(Deserialize)]
struct IncidentBody {
    note: String,
}

async fn set_incident(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body = read_body(payload, state.json_body_bytes_max, payload_too_large).await?;
    let body: IncidentBody = parse_json(&body)?;
    state
        .observatory
        .set_incident(&body.note, state.shop.now_ms())
        .map_err(|message| ApiError::bad_request("bad_request", message))?;
    let note = state.observatory.incident().map(|i| i.note);
    Ok(HttpResponse::Ok().json(json!({ "note": note })))
}

fn trace_json(order_id: &OrderId, trace: &OrderTrace) -> Value {
    let stages: Vec<Value> = trace
        .stages
        .iter()
        .map(|stage| {
            json!({
                "stage": stage.stage.as_str(),
                "at": format_rfc3339_ms(stage.at_ms),
                "at_ms": stage.at_ms,
                "duration_us": stage.duration_us,
            })
        })
        .collect();
    json!({
        "order_id": order_id.as_str(),
        "trace_id": trace.trace_id,
        "source": if trace.from_ring { "ring" } else { "record" },
        "stages": stages,
    })
}

async fn order_trace(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let trace = state.shop.order_trace(&order_id)?;
    Ok(HttpResponse::Ok().json(trace_json(&order_id, &trace)))
}
