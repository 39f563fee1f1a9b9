//! Operator endpoints: products, card imports, stock.

use actix_web::{web, HttpRequest, HttpResponse};
use engine::import::IMPORT_BODY_BYTES_MAX;
use engine::Sku;
use serde_json::json;

use crate::error::ApiError;
use crate::operator::require_operator;
use crate::wire::{ProductBody, StockBody};
use crate::{payload_too_large, read_body, AppState};

/// Bytes an import request may carry; a larger body is refused with 413 before it is read.
pub const IMPORT_REQUEST_BYTES_MAX: usize = IMPORT_BODY_BYTES_MAX;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/admin/products", web::post().to(create_product))
        .route(
            "/api/v1/admin/products/{sku}/cards",
            web::post().to(import_cards),
        )
        .route("/api/v1/admin/products/{sku}/stock", web::get().to(stock))
        .route("/api/v1/admin/manual-review", web::get().to(manual_review))
        .route(
            "/api/v1/admin/orders/{order_id}/confirm-payment",
            web::post().to(confirm_payment),
        )
        .route(
            "/api/v1/admin/orders/{order_id}/refund",
            web::post().to(refund),
        )
        .route("/api/v1/admin/audit", web::get().to(audit_trail))
        .route("/api/v1/admin/vip-invites", web::post().to(vip_invite))
        .route(
            "/api/v1/admin/manual-payments",
            web::get().to(manual_payments),
        );
}

async fn create_product(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let product = crate::json_body::<ProductBody>(payload, &state)
        .await?
        .into_product(state.shop.now_ms())?;
    let answer = json!({
        "sku": product.sku.as_str(),
        "name": product.name,
        "price_cents": product.price_cents,
        "currency": product.currency.as_str(),
    });
    state.shop.products().create(product).await?;
    Ok(HttpResponse::Created().json(answer))
}

async fn import_cards(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let body = read_body(payload, IMPORT_REQUEST_BYTES_MAX, payload_too_large).await?;
    let outcome = state
        .shop
        .products()
        .import_cards(sku, body.to_vec())
        .await?;
    Ok(HttpResponse::Ok()
        .json(json!({"imported": outcome.imported, "duplicates": outcome.duplicates})))
}

async fn stock(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let listing = state
        .shop
        .products()
        .get(&sku)
        .ok_or(engine::Rejection::UnknownSku)?;
    Ok(HttpResponse::Ok().json(StockBody::new(listing.stock, listing.deleted)))
}

#[derive(serde::Deserialize)]
struct InviteBody {
    /// Who the invite is for (kept in the audit trail), `^[A-Za-z0-9._-]{1,64}$`.
    label: String,
}

/// An operator mints a VIP invite code: a buyer who presents it queues in the VIP lane.
async fn vip_invite(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body: InviteBody = crate::json_body(payload, &state).await?;
    let code = state.shop.vip_invite(body.label.trim())?;
    record_action(&state, &request, "vip_invite", body.label.trim(), "").await?;
    Ok(HttpResponse::Created().json(json!({"label": body.label.trim(), "code": code})))
}

#[derive(serde::Deserialize)]
struct ConfirmBody {
    /// What the operator saw (a bank reference, a receipt number).
    note: String,
}

/// An operator confirms a payment received outside the gateways (the manual queue). It is
/// applied exactly as a gateway's would be: checked against the order, applied once.
async fn confirm_payment(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let order_id = engine::OrderId::parse(&path)?;
    let body: ConfirmBody = crate::json_body(payload, &state).await?;
    let note = body.note.trim();
    if note.is_empty() || note.len() > 200 || note.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_request",
            "note must be 1 to 200 printable bytes",
        ));
    }
    let record = state
        .shop
        .store()
        .order(&order_id)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("unknown order"))?;
    let payment = engine::Payment {
        channel: actors::payment::MANUAL_CHANNEL.into(),
        gateway_trade_no: format!("manual:{order_id}").into(),
        amount_cents: record.created.amount_cents,
    };
    state.shop.apply_payment(&order_id, payment).await?;
    record_action(&state, &request, "confirm_payment", order_id.as_str(), note).await?;
    let status = state
        .shop
        .store()
        .order(&order_id)
        .ok()
        .flatten()
        .map_or("unknown", |r| r.status.as_str());
    Ok(HttpResponse::Ok().json(json!({"order_id": order_id.as_str(), "status": status})))
}

/// Most audit entries one request lists.
pub const AUDIT_ENTRIES_MAX: usize = 500;
/// Most orders one queue listing shows.
pub const QUEUE_ENTRIES_MAX: usize = 1_000;

/// Appends an operator action to the durable audit trail.
pub async fn record_action(
    state: &AppState,
    request: &HttpRequest,
    action: &str,
    subject: &str,
    note: &str,
) -> Result<(), ApiError> {
    let by = format!(
        "operator@{}",
        crate::cluster::forward::client_ip(request).map_or("unknown".into(), |ip| ip.to_string())
    );
    let entry = engine::OperatorAction {
        by,
        action: action.to_owned(),
        subject: subject.to_owned(),
        note: note.to_owned(),
        at_ms: state.shop.now_ms(),
    };
    tracing::warn!(audit = true, action, subject, note, by = %entry.by, "operator action");
    state.shop.record_operator_action(entry).await?;
    Ok(())
}

fn valid_note(note: &str) -> Result<&str, ApiError> {
    let note = note.trim();
    if note.is_empty() || note.len() > 200 || note.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_request",
            "note must be 1 to 200 printable bytes",
        ));
    }
    Ok(note)
}

/// An operator refunds an order in manual review (after returning the money at the gateway).
async fn refund(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let order_id =
        engine::OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let body: ConfirmBody = crate::json_body(payload, &state).await?;
    let note = valid_note(&body.note)?;
    let status = state.shop.refund(&order_id).await?;
    record_action(&state, &request, "refund", order_id.as_str(), note).await?;
    Ok(HttpResponse::Ok().json(json!({"order_id": order_id.as_str(), "status": status.as_str()})))
}

async fn audit_trail(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let entries = state
        .shop
        .store()
        .audit_trail(AUDIT_ENTRIES_MAX)
        .map_err(ApiError::from)?;
    let entries: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({"by": e.by, "action": e.action, "subject": e.subject, "note": e.note,
                        "at": engine::time::format_rfc3339_ms(e.at_ms)})
        })
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

/// A queue of orders as JSON, at most `QUEUE_ENTRIES_MAX` of them (keys never shown).
fn queue_json<'a>(orders: impl Iterator<Item = &'a engine::OrderRecord>) -> HttpResponse {
    let orders: Vec<_> = orders
        .take(QUEUE_ENTRIES_MAX)
        .map(|record| crate::wire::order_view(record, &[]))
        .collect();
    HttpResponse::Ok().json(orders)
}

/// Orders in the manual payment queue (every channel was down when they were made) that
/// still await an operator's confirmation.
async fn manual_payments(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let shop_state = state.shop.store().state();
    // Unpaid orders are never archived: all are in memory.
    let orders = shop_state
        .hot_orders()
        .map(|(_, r)| r)
        .filter(|r| r.status == engine::OrderStatus::AwaitingPayment)
        .filter(|r| r.created.payment_channel == actors::payment::MANUAL_CHANNEL);
    Ok(queue_json(orders))
}

async fn manual_review(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    Ok(queue_json(state.shop.order_book().manual_review().iter()))
}
