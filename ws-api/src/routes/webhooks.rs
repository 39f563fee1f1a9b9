//! The operators' view of parked (dead-letter) reseller webhooks: list them, and replay one.
//!
//! A replay is one try, made inline: a 2xx takes the event off the parked list (a log
//! event, so it stays off after a restart) and answers 200; anything else answers 502 and
//! the event stays parked, so the operator can try again once the receiver is fixed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use engine::ResellerId;
use serde_json::json;

use crate::error::ApiError;
use crate::operator::require_operator;
use crate::webhooks;
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route(
            "/api/v1/admin/resellers/{id}/webhooks/dead",
            web::get().to(dead),
        )
        .route(
            "/api/v1/admin/resellers/{id}/webhooks/dead/{seq}/replay",
            web::post().to(replay),
        );
}

fn reseller_id(path: &str) -> Result<ResellerId, ApiError> {
    ResellerId::parse(path).ok_or_else(|| ApiError::not_found("unknown reseller"))
}

async fn dead(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let id = reseller_id(&path)?;
    let parked = state.shop.webhook_parked(id)?;
    let events: Vec<serde_json::Value> = parked
        .iter()
        .map(|event| serde_json::from_str(&webhooks::body(id, event)).expect("a body is JSON"))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "reseller_id": id.to_string(), "parked": events })))
}

async fn replay(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let (id, seq) = path.into_inner();
    let id = reseller_id(&id)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::not_found("no such parked event"))?;
    let shop = &state.shop;
    if !shop.webhook_is_parked(id, seq)? {
        return Err(ApiError::not_found("no such parked event"));
    }
    let (Some(target), Some(event)) = (shop.webhook_target(id), shop.stream_event(id, seq)) else {
        return Err(ApiError::not_found("no such parked event"));
    };
    let body = webhooks::body(id, &event);
    if let Err(error) = webhooks::attempt_once(&target, &body).await {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "webhook_failed",
            format!("the receiver did not acknowledge: {error}"),
        ));
    }
    shop.webhook_replayed(id, seq).await?;
    Ok(HttpResponse::Ok().json(json!({ "delivered": true, "id": webhooks::delivery_id(id, seq) })))
}
