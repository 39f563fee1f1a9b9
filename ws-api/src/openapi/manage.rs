//! The shop owner's routes beyond the contract in the OpenAPI document (`routes/manage.rs`:
//! listings, keys, orders, revenue, coupons, the shop's identity). Bodies are described by
//! their fields; answers are JSON objects as the handlers build them.
//!
//! Not here: `POST /api/v1/orders/lookup` (by contact and lookup password). Its path is also
//! `/api/v1/orders/{order_id}` with the id "lookup", so a GET there is that route's 404, not
//! the 405 the document's other paths promise.

use utoipa::OpenApi;

pub use super::shop::Error;

#[derive(OpenApi)]
#[openapi(paths(
    products,
    edit_product,
    cards,
    export_cards,
    delete_cards,
    orders,
    export_orders,
    order,
    revenue,
    coupons,
    create_coupon,
    disable_coupon,
    identity,
    set_identity
))]
pub struct ManageApi;

#[utoipa::path(get, path = "/api/v1/admin/products", tag = "operator",
    responses((status = 200, description = "every product, hidden ones too, with its listing \
        and stock", body = serde_json::Value)))]
#[allow(dead_code)]
fn products() {}

#[utoipa::path(patch, path = "/api/v1/admin/products/{sku}", tag = "operator",
    params(("sku" = String, Path)),
    request_body(content = serde_json::Value, description = "Any of: name, price_cents, \
        description, hidden, per_order_max, usage_note, image_url, category; all applied in \
        one event"),
    responses((status = 200, description = "the listing and what changed",
            body = serde_json::Value),
        (status = 400, body = Error), (status = 404, body = Error)))]
#[allow(dead_code)]
fn edit_product() {}

#[utoipa::path(get, path = "/api/v1/admin/products/{sku}/cards", tag = "operator",
    params(("sku" = String, Path),
        ("status" = Option<String>, Query, description = "available, reserved, sold or deleted"),
        ("q" = Option<String>, Query, description = "a part of the key, any case"),
        ("offset" = Option<u32>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "a page of keys and how many match",
            body = serde_json::Value),
        (status = 400, body = Error), (status = 404, body = Error)))]
#[allow(dead_code)]
fn cards() {}

#[utoipa::path(get, path = "/api/v1/admin/products/{sku}/cards/export", tag = "operator",
    params(("sku" = String, Path), ("status" = Option<String>, Query),
        ("q" = Option<String>, Query)),
    responses((status = 200, description = "CSV: card id, key, status, order",
            body = String, content_type = "text/csv"),
        (status = 400, body = Error), (status = 404, body = Error)))]
#[allow(dead_code)]
fn export_cards() {}

#[utoipa::path(post, path = "/api/v1/admin/products/{sku}/cards/delete", tag = "operator",
    params(("sku" = String, Path)),
    request_body(content = serde_json::Value, description = "{\"card_ids\": [u64]}: only \
        available keys are deleted"),
    responses((status = 200, description = "the keys deleted and those kept, with their status",
            body = serde_json::Value),
        (status = 400, body = Error), (status = 404, body = Error)))]
#[allow(dead_code)]
fn delete_cards() {}

#[utoipa::path(get, path = "/api/v1/admin/orders", tag = "operator",
    params(("status" = Option<String>, Query), ("sku" = Option<String>, Query),
        ("channel" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "YYYY-MM-DD, the shop's time zone"),
        ("until" = Option<String>, Query, description = "YYYY-MM-DD, the shop's time zone"),
        ("q" = Option<String>, Query, description = "order id or contact"),
        ("offset" = Option<u32>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "a page of orders, newest first",
            body = serde_json::Value),
        (status = 400, body = Error)))]
#[allow(dead_code)]
fn orders() {}

#[utoipa::path(get, path = "/api/v1/admin/orders/export", tag = "operator",
    params(("status" = Option<String>, Query), ("sku" = Option<String>, Query),
        ("channel" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "YYYY-MM-DD, the shop's time zone"),
        ("until" = Option<String>, Query, description = "YYYY-MM-DD, the shop's time zone"),
        ("q" = Option<String>, Query, description = "order id or contact")),
    responses((status = 200, description = "CSV of the matching orders",
            body = String, content_type = "text/csv"),
        (status = 400, body = Error)))]
#[allow(dead_code)]
fn export_orders() {}

#[utoipa::path(get, path = "/api/v1/admin/orders/{order_id}", tag = "operator",
    params(("order_id" = String, Path)),
    responses((status = 200, description = "the order as its buyer sees it, with its link",
            body = serde_json::Value),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn order() {}

#[utoipa::path(get, path = "/api/v1/admin/revenue", tag = "operator",
    params(("days" = Option<u32>, Query, minimum = 1, maximum = 366,
        description = "1 to 366, 30 by default")),
    responses((status = 200, description = "revenue and orders per day in the shop's time zone",
            body = serde_json::Value),
        (status = 400, body = Error)))]
#[allow(dead_code)]
fn revenue() {}

#[utoipa::path(get, path = "/api/v1/admin/coupons", tag = "operator",
    responses((status = 200, description = "every coupon and its uses", body = serde_json::Value)))]
#[allow(dead_code)]
fn coupons() {}

#[utoipa::path(post, path = "/api/v1/admin/coupons", tag = "operator",
    request_body(content = serde_json::Value, description = "code, uses_max, one of percent_bp \
        or amount_off_cents, optional sku and expires_at_ms or expires_on"),
    responses((status = 201, body = serde_json::Value), (status = 400, body = Error),
        (status = 409, description = "coupon_exists", body = Error)))]
#[allow(dead_code)]
fn create_coupon() {}

#[utoipa::path(post, path = "/api/v1/admin/coupons/{code}/disable", tag = "operator",
    params(("code" = String, Path)),
    responses((status = 200, body = serde_json::Value),
        (status = 400, description = "not a coupon code", body = Error),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn disable_coupon() {}

#[utoipa::path(get, path = "/api/v1/admin/shop", tag = "operator",
    responses((status = 200, description = "the shop's name, logo, announcement, footer, \
        support contact, terms and time zone", body = serde_json::Value)))]
#[allow(dead_code)]
fn identity() {}

#[utoipa::path(put, path = "/api/v1/admin/shop", tag = "operator",
    request_body(content = serde_json::Value, description = "Any of: name, logo_url (https), \
        announcement, footer, support_contact, terms, utc_offset_minutes"),
    responses((status = 200, body = serde_json::Value), (status = 400, body = Error)))]
#[allow(dead_code)]
fn set_identity() {}
