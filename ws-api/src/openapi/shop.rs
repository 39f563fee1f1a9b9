//! The buyers', operators', gateways' and ops routes in the OpenAPI document, with the limits
//! the handlers enforce (so a generated request outside them is one the server refuses).
//! Answers every route shares (401, 408, 413, 429, 503) are added in `super::common_answers`.

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    paths(
        products,
        create_order,
        lookup,
        live,
        queue_live,
        create_product,
        import_cards,
        stock,
        flash_sale,
        manual_review,
        manual_payments,
        confirm_payment,
        refund,
        audit_trail,
        order_trace,
        ops_actors,
        ops_channels,
        ops_pipeline,
        ops_alerts,
        ops_incident,
        epay_notify_get,
        epay_notify_post,
        epusdt_notify,
        stripe_webhook,
        alipay_notify,
        wechat_notify,
        livez,
        readyz,
        metrics,
        openapi_json
    ),
    components(schemas(
        Error,
        CatalogueItem,
        OrderBody,
        CreatedOrder,
        Queued,
        PaymentLink,
        OrderView,
        OrderUpdate,
        TicketFrame,
        ProductBody,
        ImportOutcome,
        Stock,
        FlashSaleBody,
        FlashSale,
        NoteBody,
        OrderStatusAnswer,
        AuditEntry,
        IncidentBody,
        Incident,
        WechatFail,
        AlipayNotifyForm
    ))
)]
pub struct ShopApi;

/// Every refusal's body.
#[derive(Serialize, ToSchema)]
pub struct Error {
    #[schema(example = "sold_out")]
    pub error: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogueItem {
    pub sku: String,
    pub name: String,
    pub price_cents: u64,
    pub currency: String,
    pub available: u64,
}

/// A buyer's order. The `channel` names a payment channel (`epay`, `epusdt`, `stripe`) or a
/// payment method the configuration maps to channels; one not configured is 400.
#[derive(Serialize, ToSchema)]
pub struct OrderBody {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// 1 to 100 keys (default 1).
    #[schema(minimum = 1, maximum = 100, default = 1)]
    pub quantity: Option<u32>,
    /// An e-mail address or a phone number: 1 to 254 bytes, no control characters.
    #[schema(
        min_length = 1,
        max_length = 254,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub contact: String,
    pub channel: String,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentLink {
    #[schema(example = "epay")]
    pub channel: String,
    /// Where the buyer pays: the gateway's page.
    pub url: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedOrder {
    pub order_id: String,
    /// The buyer's secret for lookups and the live socket.
    pub token: String,
    #[schema(example = "awaiting_payment")]
    pub status: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
    pub currency: String,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    pub trace_id: String,
    pub payment: PaymentLink,
}

/// A buyer queued in a waiting room instead of served (a flash sale or overload).
#[derive(Serialize, ToSchema)]
pub struct Queued {
    #[schema(example = "queued")]
    pub status: String,
    pub ticket: String,
    pub token: String,
    pub position: u64,
    pub estimated_wait_secs: u64,
}

/// An order as its buyer looks it up; `cards` holds the keys once delivered.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: String,
    /// `awaiting_payment`, `paid`, `delivered`, `expired`, `manual_review`, `refunded` or
    /// `cancelled`.
    pub status: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
    pub currency: String,
    pub created_at: String,
    pub expires_at: String,
    pub paid_at: Option<String>,
    pub settled_at: Option<String>,
    pub review_reason: Option<String>,
    pub cards: Vec<String>,
    pub trace_id: String,
    pub payment: PaymentLink,
}

/// One text frame of an order's live socket.
#[derive(Serialize, ToSchema)]
pub struct OrderUpdate {
    pub order_id: String,
    pub status: String,
    pub cards: Vec<String>,
}

/// One text frame of a ticket's live socket: `queued` (with position and wait), then
/// `admitted` (with the order), `sold_out` or `failed`.
#[derive(Serialize, ToSchema)]
pub struct TicketFrame {
    pub ticket: String,
    pub status: String,
    pub position: Option<u64>,
    pub estimated_wait_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductBody {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// 1 to 200 bytes, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub price_cents: u64,
    /// ISO 4217, three letters.
    #[schema(pattern = r"^[A-Za-z]{3}$", example = "CNY")]
    pub currency: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportOutcome {
    pub imported: u64,
    pub duplicates: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Stock {
    pub imported: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

#[derive(Serialize, ToSchema)]
pub struct FlashSaleBody {
    pub enabled: bool,
}

#[derive(Serialize, ToSchema)]
pub struct FlashSale {
    pub sku: String,
    pub flash_sale: bool,
}

/// What the operator saw or did: 1 to 200 printable bytes.
#[derive(Serialize, ToSchema)]
pub struct NoteBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct OrderStatusAnswer {
    pub order_id: String,
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntry {
    pub by: String,
    pub action: String,
    pub subject: String,
    pub note: String,
    pub at: String,
}

/// The status page's incident note: at most 2,000 bytes; blank clears it.
#[derive(Serialize, ToSchema)]
pub struct IncidentBody {
    #[schema(max_length = 2000)]
    pub note: String,
}

#[derive(Serialize, ToSchema)]
pub struct Incident {
    pub note: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/products", tag = "buyer",
    responses((status = 200, body = [CatalogueItem])))]
#[allow(dead_code)]
fn products() {}

#[utoipa::path(post, path = "/api/v1/orders", tag = "buyer", request_body = OrderBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters; a retry with it returns the first answer")),
    responses(
        (status = 201, body = CreatedOrder),
        (status = 202, description = "queued in a waiting room; follow the ticket", body = Queued),
        (status = 400, body = Error),
        (status = 403, description = "blocked_contact or blocked_ip", body = Error),
        (status = 404, description = "unknown_sku", body = Error),
        (status = 409, description = "sold_out, too_many_reserved or request_in_progress", body = Error),
        (status = 422, description = "idempotency_mismatch", body = Error)))]
#[allow(dead_code)]
fn create_order() {}

#[utoipa::path(get, path = "/api/v1/orders/{order_id}", tag = "buyer",
    params(("order_id" = String, Path, pattern = r"^[A-Za-z0-9._-]{1,32}$"),
        ("token" = String, Query, description = "The order's token; a wrong one is 404")),
    responses((status = 200, body = OrderView), (status = 404, body = Error)))]
#[allow(dead_code)]
fn lookup() {}

#[utoipa::path(get, path = "/api/v1/orders/{order_id}/live", tag = "buyer",
    params(("order_id" = String, Path), ("token" = String, Query)),
    responses(
        (status = 101, description = "WebSocket: one OrderUpdate per text frame, the current \
            state first; closed normally after a terminal state. Client frames over 4 KiB \
            close with 1009; a client's Close is echoed with its code.", body = OrderUpdate),
        (status = 400, description = "not a WebSocket upgrade", body = Error),
        (status = 404, body = Error),
        (status = 429, description = "rate_limited, or too_many_sockets (16 on one order; \
            Retry-After)", body = Error)))]
#[allow(dead_code)]
fn live() {}

#[utoipa::path(get, path = "/api/v1/queue/{ticket}/live", tag = "buyer",
    params(("ticket" = String, Path), ("token" = String, Query)),
    responses(
        (status = 101, description = "WebSocket: one TicketFrame per text frame", body = TicketFrame),
        (status = 400, description = "not a WebSocket upgrade", body = Error),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn queue_live() {}

#[utoipa::path(post, path = "/api/v1/admin/products", tag = "operator", request_body = ProductBody,
    responses((status = 201, body = ProductBody), (status = 400, body = Error),
        (status = 409, description = "sku_exists", body = Error)))]
#[allow(dead_code)]
fn create_product() {}

#[utoipa::path(post, path = "/api/v1/admin/products/{sku}/cards", tag = "operator",
    params(("sku" = String, Path)),
    request_body(content = Option<String>, content_type = "text/plain",
        description = "One key per line (at most 1,024 bytes each, 200,000 keys, 16 MiB); blank \
            lines ignored; a bad body imports nothing"),
    responses((status = 200, body = ImportOutcome),
        (status = 400, description = "bad_import", body = Error),
        (status = 404, description = "unknown_sku", body = Error)))]
#[allow(dead_code)]
fn import_cards() {}

#[utoipa::path(get, path = "/api/v1/admin/products/{sku}/stock", tag = "operator",
    params(("sku" = String, Path)),
    responses((status = 200, body = Stock), (status = 400, body = Error),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn stock() {}

#[utoipa::path(post, path = "/api/v1/admin/products/{sku}/flash-sale", tag = "operator",
    params(("sku" = String, Path)), request_body = FlashSaleBody,
    responses((status = 200, body = FlashSale), (status = 400, body = Error),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn flash_sale() {}

#[utoipa::path(get, path = "/api/v1/admin/manual-review", tag = "operator",
    responses((status = 200, description = "at most 1,000 orders", body = [OrderView])))]
#[allow(dead_code)]
fn manual_review() {}

#[utoipa::path(get, path = "/api/v1/admin/manual-payments", tag = "operator",
    responses((status = 200, description = "at most 1,000 orders", body = [OrderView])))]
#[allow(dead_code)]
fn manual_payments() {}

#[utoipa::path(post, path = "/api/v1/admin/orders/{order_id}/confirm-payment", tag = "operator",
    params(("order_id" = String, Path)), request_body = NoteBody,
    responses((status = 200, body = OrderStatusAnswer), (status = 400, body = Error),
        (status = 404, body = Error), (status = 409, body = Error)))]
#[allow(dead_code)]
fn confirm_payment() {}

#[utoipa::path(post, path = "/api/v1/admin/orders/{order_id}/refund", tag = "operator",
    params(("order_id" = String, Path)), request_body = NoteBody,
    responses((status = 200, body = OrderStatusAnswer), (status = 400, body = Error),
        (status = 404, body = Error), (status = 409, description = "invalid_state", body = Error)))]
#[allow(dead_code)]
fn refund() {}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "operator",
    responses((status = 200, description = "the newest 500 operator actions", body = [AuditEntry])))]
#[allow(dead_code)]
fn audit_trail() {}

#[utoipa::path(get, path = "/api/v1/admin/orders/{order_id}/trace", tag = "operator",
    params(("order_id" = String, Path)),
    responses((status = 200, description = "the order's stages with their times",
            body = serde_json::Value),
        (status = 404, body = Error)))]
#[allow(dead_code)]
fn order_trace() {}

#[utoipa::path(get, path = "/api/v1/ops/actors", tag = "ops",
    responses((status = 200, description = "per actor kind: live, restarts, mailbox, latency",
        body = serde_json::Value)))]
#[allow(dead_code)]
fn ops_actors() {}

#[utoipa::path(get, path = "/api/v1/ops/channels", tag = "ops",
    responses((status = 200, description = "per payment channel: breaker and success rate",
        body = serde_json::Value)))]
#[allow(dead_code)]
fn ops_channels() {}

#[utoipa::path(get, path = "/api/v1/ops/pipeline", tag = "ops",
    responses((status = 200, description = "the order pipeline's load and waiting rooms",
        body = serde_json::Value)))]
#[allow(dead_code)]
fn ops_pipeline() {}

#[utoipa::path(get, path = "/api/v1/ops/alerts", tag = "ops",
    responses((status = 200, description = "active and recently cleared alerts",
        body = serde_json::Value)))]
#[allow(dead_code)]
fn ops_alerts() {}

#[utoipa::path(post, path = "/api/v1/ops/incident", tag = "ops", request_body = IncidentBody,
    responses((status = 200, body = Incident), (status = 400, body = Error)))]
#[allow(dead_code)]
fn ops_incident() {}

#[utoipa::path(get, path = "/api/v1/payments/epay/notify", tag = "gateway",
    params(
        ("pid" = Option<String>, Query), ("trade_no" = Option<String>, Query),
        ("out_trade_no" = Option<String>, Query), ("type" = Option<String>, Query),
        ("name" = Option<String>, Query), ("money" = Option<String>, Query),
        ("trade_status" = Option<String>, Query), ("param" = Option<String>, Query),
        ("sign" = Option<String>, Query), ("sign_type" = Option<String>, Query)),
    responses(CallbackAnswer))]
#[allow(dead_code)]
fn epay_notify_get() {}

#[utoipa::path(post, path = "/api/v1/payments/epay/notify", tag = "gateway",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "The notify's parameters as a form (at most 8 KiB)"),
    responses(CallbackAnswer))]
#[allow(dead_code)]
fn epay_notify_post() {}

/// A gateway callback's answers (plain text, as gateways expect: `success` or `ok`, `fail`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum CallbackAnswer {
    /// applied, already applied, or pays nothing
    #[response(status = 200, content_type = "text/plain", example = json!("success"))]
    Applied(String),
    /// rejected: forged, mismatched or malformed
    #[response(status = 400, content_type = "text/plain", example = json!("fail"))]
    Rejected(String),
    /// the body arrived too slowly
    #[response(status = 408, content_type = "text/plain", example = json!("fail"))]
    TooSlow(String),
    /// the body is over its limit
    #[response(status = 413, content_type = "text/plain", example = json!("fail"))]
    TooLarge(String),
    /// not applied now; the gateway retries
    #[response(status = 503, content_type = "text/plain", example = json!("fail"))]
    Later(String),
}

#[utoipa::path(post, path = "/api/v1/payments/epusdt/notify", tag = "gateway",
    request_body(content = serde_json::Value, description = "epusdt's callback (at most 64 KiB)"),
    responses(CallbackAnswer))]
#[allow(dead_code)]
fn epusdt_notify() {}

#[utoipa::path(post, path = "/api/v1/payments/stripe/webhook", tag = "gateway",
    params(("Stripe-Signature" = Option<String>, Header,
        description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    request_body(content = serde_json::Value, description = "a Stripe event (at most 64 KiB)"),
    responses(CallbackAnswer))]
#[allow(dead_code)]
fn stripe_webhook() {}

#[utoipa::path(post, path = "/api/v1/payments/alipay/notify", tag = "gateway",
    request_body(content = AlipayNotifyForm, content_type = "application/x-www-form-urlencoded",
        description = "Alipay's asynchronous notify, signed RSA2 with Alipay's key (at most \
            16 KiB)"),
    responses(CallbackAnswer))]
#[allow(dead_code)]
fn alipay_notify() {}

#[utoipa::path(post, path = "/api/v1/payments/wechat/notify", tag = "gateway",
    params(
        ("Wechatpay-Timestamp" = Option<String>, Header, description = "unix seconds"),
        ("Wechatpay-Nonce" = Option<String>, Header),
        ("Wechatpay-Signature" = Option<String>, Header,
            description = "base64 SHA256withRSA by WeChat Pay's key"),
        ("Wechatpay-Serial" = Option<String>, Header)),
    request_body(content = serde_json::Value, description = "WeChat Pay's notification, its \
        resource encrypted with the APIv3 key (at most 32 KiB)"),
    responses(WechatAnswer))]
#[allow(dead_code)]
fn wechat_notify() {}

/// Alipay's notify form: the fields Panshi reads (Alipay sends more; all are signed).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct AlipayNotifyForm {
    pub app_id: Option<String>,
    pub out_trade_no: Option<String>,
    pub trade_no: Option<String>,
    pub trade_status: Option<String>,
    pub total_amount: Option<String>,
    pub sign: Option<String>,
    pub sign_type: Option<String>,
}

/// WeChat Pay's failure answer (it retries on anything but 2xx).
#[derive(Serialize, ToSchema)]
pub struct WechatFail {
    #[schema(example = "FAIL")]
    pub code: String,
    pub message: String,
}

/// A WeChat Pay notify's answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum WechatAnswer {
    /// applied, already applied, or pays nothing
    #[response(status = 204)]
    Applied,
    /// rejected: malformed, foreign, mismatched, or WeChat Pay is not configured
    #[response(status = 400)]
    Rejected(WechatFail),
    /// the signature does not verify or its timestamp is stale
    #[response(status = 401)]
    Forged(WechatFail),
    /// the body arrived too slowly
    #[response(status = 408)]
    TooSlow(WechatFail),
    /// the body is over its limit
    #[response(status = 413)]
    TooLarge(WechatFail),
    /// not applied now; WeChat Pay retries
    #[response(status = 503)]
    Later(WechatFail),
}

#[utoipa::path(get, path = "/livez", tag = "ops",
    responses((status = 200, body = String, content_type = "text/plain", example = "ok")))]
#[allow(dead_code)]
fn livez() {}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "draining, the log refuses writes, or the data dir's disk \
            is under its free-space threshold", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "this document", body = serde_json::Value)))]
#[allow(dead_code)]
fn openapi_json() {}
