//! The resellers' routes in the OpenAPI document (CONTRACT.md's "Resellers" section).

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

pub use super::shop::Error;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Panshi reseller API",
        description = "Bulk purchases from a prepaid balance, the per-reseller stream and \
            signed webhooks. Amounts are integer minor units of the shop's currency. \
            See docs/RESELLERS.md."
    ),
    paths(
        me,
        purchase,
        order,
        stream,
        create,
        revoke,
        balance,
        rotate_key,
        rotate_webhook_secret,
        discount,
        dead,
        replay
    ),
    components(schemas(
        Account,
        PurchaseBody,
        Receipt,
        StreamEvent,
        WebhookEvent,
        CreateBody,
        Created,
        BalanceBody,
        Balance,
        RotatedKey,
        RotatedSecret,
        DiscountBody,
        Error
    ))
)]
pub struct ResellerApi;

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
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
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
    /// 1 to 200 bytes, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// An http or https URL with a host (at most 2,048 bytes).
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub webhook_url: Option<String>,
    /// Wholesale discount in basis points, 0 to 10000.
    #[schema(minimum = 0, maximum = 10000)]
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
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    pub amount_cents: i64,
    /// At most 500 bytes, no control characters.
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
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
    #[schema(minimum = 0, maximum = 10000)]
    pub discount_bp: u32,
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
        (status = 404, description = "unknown_sku", body = Error),
        (status = 409, description = "sold_out", body = Error),
        (status = 422, description = "idempotency_mismatch", body = Error),
        (status = 429, description = "rate_limited (Retry-After)", body = Error)))]
#[allow(dead_code)]
fn purchase() {}

#[utoipa::path(get, path = "/api/v1/reseller/orders/{order_id}", tag = "reseller",
    params(("order_id" = String, Path)),
    responses((status = 200, description = "the order as the buyer's lookup shows it",
            body = super::shop::OrderView),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn order() {}

#[utoipa::path(get, path = "/api/v1/reseller/stream", tag = "reseller",
    params(("cursor" = Option<u64>, Query,
        description = "Replays every event after it (0 when absent), then goes live")),
    responses((status = 101, description = "WebSocket; one StreamEvent per text frame. A \
            reader that falls behind is closed with 1013 and its cursor; a rotated or revoked \
            key closes it with 1008; client frames over 4 KiB close with 1009.",
            body = StreamEvent),
        (status = 400, description = "not a WebSocket upgrade, or a cursor that is not a whole \
            number", body = Error),
        (status = 429, description = "rate_limited, or too_many_sockets (16 streams per \
            reseller; Retry-After)", body = Error)))]
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
