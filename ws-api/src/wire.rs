//! JSON shapes of the API and their explicit conversion from engine types. Only this crate
//! knows JSON.

use engine::money::AMOUNT_CENTS_MAX;
use engine::time::format_rfc3339_ms;
use engine::{Currency, NewOrder, OrderRecord, Product, Sku, Stock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

#[derive(Deserialize)]
pub struct ProductBody {
    pub sku: String,
    pub name: String,
    pub price_cents: u64,
    pub currency: String,
}

impl ProductBody {
    pub fn into_product(self, now_ms: u64) -> Result<Product, ApiError> {
        if self.price_cents == 0 || self.price_cents > AMOUNT_CENTS_MAX {
            return Err(ApiError::bad_request(
                "bad_request",
                "price_cents must be 1 to 1000000000",
            ));
        }
        Ok(Product {
            sku: Sku::parse(&self.sku)?,
            name: self.name,
            price_cents: self.price_cents,
            currency: Currency::parse(&self.currency)?,
            created_at_ms: now_ms,
        })
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
pub struct OrderBody {
    pub sku: String,
    #[serde(default = "one")]
    pub quantity: u32,
    pub contact: String,
    pub channel: String,
    /// A coupon code (any case).
    #[serde(default)]
    pub coupon: Option<String>,
    /// A password to find the order again by contact; only its slow hash is kept.
    #[serde(default)]
    pub lookup_password: Option<String>,
    /// A VIP invite code (`POST /api/v1/admin/vip-invites`): queues in the VIP lane.
    #[serde(default)]
    pub vip_code: Option<String>,
}

/// The request's fingerprint (kept in the log with an idempotency key) covers every field
/// but the lookup password: even a fast hash of it must never be stored.
impl std::hash::Hash for OrderBody {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.sku, self.quantity, &self.contact, &self.channel).hash(state);
        // Absent and empty hash alike, so the contract's four-field body keeps its print.
        if let Some(coupon) = self.coupon.as_deref().filter(|c| !c.is_empty()) {
            coupon.hash(state);
        }
    }
}

/// A SKU's keys by state. `imported` counts the keys in the stock (imported less deleted):
/// imported = available + reserved + sold; `deleted` counts the keys operators removed.
#[derive(Serialize)]
pub struct StockBody {
    pub imported: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub deleted: u64,
}

impl StockBody {
    pub fn new(s: Stock, deleted: u64) -> Self {
        Self {
            imported: s.imported,
            available: s.available,
            reserved: s.reserved,
            sold: s.sold,
            deleted,
        }
    }
}

/// A product as buyers see it: the contract's fields, then the listing's.
pub fn catalogue_item(listing: &actors::products::ProductListing) -> Value {
    let (product, details) = (&listing.product, &listing.details);
    json!({
        "sku": product.sku.as_str(),
        "name": product.name,
        "price_cents": product.price_cents,
        "currency": product.currency.as_str(),
        "available": listing.stock.available,
        "description": details.description,
        "category": details.category,
        "image_url": details.image_url,
        "quantity_max": details.order_quantity_max(),
    })
}

/// The answer to a created order (and to its idempotent retries); `token` is the buyer's
/// (the order keeps only its digest).
pub fn created_order(order: &NewOrder, token: &str) -> Value {
    json!({
        "order_id": order.order_id.as_str(),
        "token": token,
        "status": "awaiting_payment",
        "sku": order.sku.as_str(),
        "quantity": order.quantity,
        "amount_cents": order.amount_cents,
        "currency": order.currency.as_str(),
        "created_at": format_rfc3339_ms(order.created_at_ms),
        "expires_at": format_rfc3339_ms(order.expires_at_ms),
        "trace_id": order.trace_id,
        "payment": {"channel": order.payment_channel, "url": order.payment_url},
    })
}

/// An order as its buyer looks it up. `keys` are shown only once delivered.
pub fn order_view(record: &OrderRecord, keys: &[String]) -> Value {
    let created = &record.created;
    json!({
        "order_id": created.order_id.as_str(),
        "status": record.status.as_str(),
        "sku": created.sku.as_str(),
        "quantity": created.quantity,
        "amount_cents": created.amount_cents,
        "currency": created.currency.as_str(),
        "created_at": format_rfc3339_ms(created.created_at_ms),
        "expires_at": format_rfc3339_ms(created.expires_at_ms),
        "paid_at": record.paid_at_ms.map(format_rfc3339_ms),
        "settled_at": record.settled_at_ms.map(format_rfc3339_ms),
        "review_reason": record.review_reason.map(|r| r.as_str()),
        "cards": keys,
        "trace_id": created.trace_id,
        "payment": {"channel": created.payment_channel, "url": created.payment_url},
    })
}

pub fn order_update(update: &actors::OrderUpdate) -> String {
    json!({
        "order_id": update.order_id.as_str(),
        "status": update.status.as_str(),
        "cards": update.cards,
    })
    .to_string()
}

/// Parses a JSON body into `T`, answering 400 with serde's reason on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid JSON body: {e}")))
}
