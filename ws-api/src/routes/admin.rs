//! Operator endpoints: products, card imports, stock.

use actix_web::{web, HttpRequest, HttpResponse};
use engine::import::IMPORT_BODY_BYTES_MAX;
use engine::Sku;
use serde_json::json;

use crate::error::ApiError;
use crate::routes::require_operator;
use crate::wire::{parse_json, ProductBody, StockBody};
use crate::{payload_too_large, read_body, AppState};

/// Bytes an import request may carry; a larger body is refused with 400 before it is read.
pub const IMPORT_REQUEST_BYTES_MAX: usize = IMPORT_BODY_BYTES_MAX;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/admin/products", web::post().to(create_product))
        .route(
            "/api/v1/admin/products/{sku}/cards",
            web::post().to(import_cards),
        )
        .route("/api/v1/admin/products/{sku}/stock", web::get().to(stock))
        .route("/api/v1/admin/manual-review", web::get().to(manual_review));
}

async fn create_product(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let body = read_body(payload, state.json_body_bytes_max, payload_too_large).await?;
    let product = parse_json::<ProductBody>(&body)?.into_product(state.shop.now_ms())?;
    let answer = json!({
        "sku": product.sku.as_str(),
        "name": product.name,
        "price_cents": product.price_cents,
        "currency": product.currency.as_str(),
    });
    state.shop.create_product(product).await?;
    Ok(HttpResponse::Created().json(answer))
}

fn import_too_large(limit: usize) -> ApiError {
    ApiError::bad_request(
        "bad_import",
        format!("card import refused: body is over {limit} bytes"),
    )
}

async fn import_cards(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let body = read_body(payload, IMPORT_REQUEST_BYTES_MAX, import_too_large).await?;
    let outcome = state.shop.import_cards(sku, body.to_vec()).await?;
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
    let stock = state.shop.stock(&sku)?;
    Ok(HttpResponse::Ok().json(StockBody::from(stock)))
}

async fn manual_review(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let orders: Vec<_> = state
        .shop
        .manual_review_orders()
        .iter()
        .map(|record| crate::wire::order_view(record, &[]))
        .collect();
    Ok(HttpResponse::Ok().json(orders))
}
