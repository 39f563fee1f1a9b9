//! The resellers' API as an OpenAPI 3.1 document, served at
//! `GET /api/v1/openapi.json` (no key needed: it describes, it reveals nothing).
//!
//! Invariant: the document describes the routes of CONTRACT.md's "Resellers" section; the
//! test below checks every reseller path is present.
//!
//! Key decision: the document is built by utoipa from the schema types and the stub
//! functions here rather than from annotations on the handlers, so the handlers (and their
//! wire conversions in `routes/resellers.rs`) stay as they are; the price is that a route
//! change must be mirrored here, which the path test catches for added or renamed paths.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::{Modify, OpenApi, ToSchema};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

pub fn configure(config: &mut web::ServiceConfig) {
    config.route(OPENAPI_PATH, web::get().to(document));
}

async fn document() -> HttpResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        ResellerApi::openapi()
            .to_json()
            .expect("the document serialises")
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json.clone())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Panshi reseller API",
        description = "Bulk purchases from a prepaid balance, the per-reseller stream and \
            signed webhooks. Amounts are integer minor units of the shop's currency. \
            See docs/RESELLERS.md."
    ),
    paths(
        me, purchase, order, stream, create, revoke, balance, rotate_key,
        rotate_webhook_secret, discount, dead, replay
    ),
    components(schemas(
        Account, PurchaseBody, Receipt, StreamEvent, WebhookEvent, CreateBody, Created,
        BalanceBody, Balance, RotatedKey, RotatedSecret, DiscountBody, Error
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ResellerApi;

/// Both audiences authenticate with `Authorization: Bearer`: a reseller's API key, or the
/// operator token on the admin routes.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /api/v1/reseller/me`.
#[derive(Serialize, ToSchema)]
pub struct Account {
    #[schema(example = "rs-1")]
    pub reseller_id: String,
    pub name: String,
    pub balance_cents: u64,
}

#[derive(Serialize, ToSchema)]
pub struct PurchaseBody {
    pub sku: String,
    /// 1 to 1000.
    pub quantity: u32,
}

/// A delivered bulk purchase (and the answer to its idempotent retries).
#[derive(Serialize, ToSchema)]
pub struct Receipt {
    pub order_id: String,
    #[schema(example = "delivered")]
    pub status: String,
    pub cards: Vec<String>,
    pub amount_cents: u64,
    pub balance_cents: u64,
}

/// One text frame of the stream: `seq` starts at 1 and rises by 1.
#[derive(Serialize, ToSchema)]
pub struct StreamEvent {
    pub seq: u64,
    pub order_id: String,
    pub status: String,
    pub cards: Vec<String>,
    pub sku: String,
    pub amount_cents: u64,
}

/// A webhook body: a stream event with the `id` to deduplicate by (`<reseller id>-<seq>`).
/// Signed `Panshi-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[derive(Serialize, ToSchema)]
pub struct WebhookEvent {
    #[schema(example = "rs-1-7")]
    pub id: String,
    pub seq: u64,
    pub order_id: String,
    pub status: String,
    pub cards: Vec<String>,
    pub sku: String,
    pub amount_cents: u64,
}

#[derive(Serialize, ToSchema)]
pub struct CreateBody {
    pub name: String,
    /// http or https.
    pub webhook_url: Option<String>,
    /// Wholesale discount in basis points, 0 to 10000.
    pub discount_bp: Option<u32>,
}

/// The key and the webhook secret are shown this once.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub reseller_id: String,
    pub api_key: String,
    pub webhook_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceBody {
    /// Non-zero: positive tops up, negative corrects.
    pub amount_cents: i64,
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    pub balance_cents: u64,
}

/// The new API key, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    pub reseller_id: String,
    pub api_key: String,
}

/// The new webhook secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    pub reseller_id: String,
    pub webhook_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct DiscountBody {
    /// Wholesale discount in basis points, 0 to 10000, for purchases from now on.
    pub discount_bp: u32,
}

/// Every refusal's body.
#[derive(Serialize, ToSchema)]
pub struct Error {
    #[schema(example = "insufficient_balance")]
    pub error: String,
    pub message: String,
}

#[utoipa::path(get, path = "/api/v1/reseller/me", tag = "reseller",
    responses((status = 200, body = Account), (status = 401, body = Error)))]
#[allow(dead_code)]
fn me() {}

#[utoipa::path(post, path = "/api/v1/reseller/orders", tag = "reseller",
    request_body = PurchaseBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Scoped to the reseller; a retry with it returns the first answer")),
    responses(
        (status = 201, body = Receipt),
        (status = 400, body = Error),
        (status = 401, body = Error),
        (status = 402, description = "insufficient_balance", body = Error),
        (status = 409, description = "sold_out", body = Error),
        (status = 422, description = "idempotency_mismatch", body = Error),
        (status = 429, description = "rate_limited (Retry-After)", body = Error)))]
#[allow(dead_code)]
fn purchase() {}

#[utoipa::path(get, path = "/api/v1/reseller/orders/{order_id}", tag = "reseller",
    params(("order_id" = String, Path)),
    responses((status = 200, description = "the order as the buyer's lookup shows it"),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn order() {}

#[utoipa::path(get, path = "/api/v1/reseller/stream", tag = "reseller",
    params(("cursor" = Option<u64>, Query,
        description = "Replays every event after it (0 when absent), then goes live")),
    responses((status = 101, description = "WebSocket; one StreamEvent per text frame",
        body = StreamEvent)))]
#[allow(dead_code)]
fn stream() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers", tag = "operator",
    request_body = CreateBody,
    responses((status = 201, body = Created), (status = 400, body = Error)))]
#[allow(dead_code)]
fn create() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/revoke", tag = "operator",
    params(("id" = String, Path)),
    responses((status = 200), (status = 404, body = Error)))]
#[allow(dead_code)]
fn revoke() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/balance", tag = "operator",
    params(("id" = String, Path)), request_body = BalanceBody,
    responses((status = 200, body = Balance), (status = 404, body = Error),
        (status = 409, description = "insufficient_balance", body = Error)))]
#[allow(dead_code)]
fn balance() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/rotate-key", tag = "operator",
    params(("id" = String, Path)),
    responses((status = 200, description = "the old key gets 401 and its open streams close \
            (code 1008)", body = RotatedKey),
        (status = 404, body = Error),
        (status = 409, description = "reseller_revoked", body = Error)))]
#[allow(dead_code)]
fn rotate_key() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/rotate-webhook-secret",
    tag = "operator", params(("id" = String, Path)),
    responses((status = 200, description = "signs every delivery from now on, retries too",
            body = RotatedSecret),
        (status = 404, body = Error),
        (status = 409, description = "reseller_revoked", body = Error)))]
#[allow(dead_code)]
fn rotate_webhook_secret() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/discount", tag = "operator",
    params(("id" = String, Path)), request_body = DiscountBody,
    responses((status = 200, body = DiscountBody), (status = 400, body = Error),
        (status = 404, body = Error),
        (status = 409, description = "reseller_revoked", body = Error)))]
#[allow(dead_code)]
fn discount() {}

#[utoipa::path(get, path = "/api/v1/admin/resellers/{id}/webhooks/dead", tag = "operator",
    params(("id" = String, Path)),
    responses((status = 200, description = "{\"reseller_id\", \"parked\": [WebhookEvent]}"),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn dead() {}

#[utoipa::path(post, path = "/api/v1/admin/resellers/{id}/webhooks/dead/{seq}/replay",
    tag = "operator", params(("id" = String, Path), ("seq" = u64, Path)),
    responses((status = 200, description = "acknowledged; no longer parked"),
        (status = 404, body = Error),
        (status = 502, description = "webhook_failed; still parked", body = Error)))]
#[allow(dead_code)]
fn replay() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reseller_path_is_described() {
        let json: serde_json::Value =
            serde_json::from_str(&ResellerApi::openapi().to_json().unwrap()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/api/v1/reseller/me",
            "/api/v1/reseller/orders",
            "/api/v1/reseller/orders/{order_id}",
            "/api/v1/reseller/stream",
            "/api/v1/admin/resellers",
            "/api/v1/admin/resellers/{id}/revoke",
            "/api/v1/admin/resellers/{id}/balance",
            "/api/v1/admin/resellers/{id}/rotate-key",
            "/api/v1/admin/resellers/{id}/rotate-webhook-secret",
            "/api/v1/admin/resellers/{id}/discount",
            "/api/v1/admin/resellers/{id}/webhooks/dead",
            "/api/v1/admin/resellers/{id}/webhooks/dead/{seq}/replay",
        ] {
            assert!(json["paths"].get(path).is_some(), "{path} is missing");
        }
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }
}
