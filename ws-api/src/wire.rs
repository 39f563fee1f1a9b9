//! JSON shapes of the API and their explicit conversion from engine types. Only this crate
//! knows JSON.

use engine::money::AMOUNT_CENTS_MAX;
use engine::time::format_rfc3339_ms;
use engine::{Currency, NewOrder, OrderRecord, Product, Sku, Stock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

/// `?token=T`: the buyer's token for an order (empty when absent: refused as a wrong one).
#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    pub token: String,
}

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
/// An order's answer to its creation. Serialized straight from borrowed fields (no
/// `Value` tree: that was 1% of a purchase's CPU); the fields are in alphabetical order,
/// the order `json!` wrote them in, so the bytes are as before.
#[derive(Serialize)]
pub struct CreatedOrder<'a> {
    amount_cents: u64,
    created_at: Time,
    currency: &'a str,
    expires_at: Time,
    order_id: &'a str,
    payment: PaymentLink<'a>,
    quantity: u32,
    sku: &'a str,
    status: &'static str,
    token: &'a str,
    trace_id: &'a str,
}

/// A time on the wire: RFC 3339 in UTC with milliseconds, written without allocating.
pub struct Time(pub u64);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match engine::time::rfc3339_ms_ascii(self.0) {
            Some(text) => serializer
                .serialize_str(std::str::from_utf8(&text).expect("rfc3339_ms_ascii is ASCII")),
            None => serializer.serialize_str(&format_rfc3339_ms(self.0)),
        }
    }
}

/// Where an order is paid.
#[derive(Serialize)]
pub struct PaymentLink<'a> {
    channel: &'a str,
    url: &'a str,
}

pub fn created_order<'a>(order: &'a NewOrder, token: &'a str) -> CreatedOrder<'a> {
    CreatedOrder {
        amount_cents: order.amount_cents,
        created_at: Time(order.created_at_ms),
        currency: order.currency.as_str(),
        expires_at: Time(order.expires_at_ms),
        order_id: order.order_id.as_str(),
        payment: PaymentLink {
            channel: &order.payment_channel,
            url: &order.payment_url,
        },
        quantity: order.quantity,
        sku: order.sku.as_str(),
        status: "awaiting_payment",
        token,
        trace_id: &order.trace_id,
    }
}

/// An order as its buyer looks it up (fields in `json!`'s alphabetical order, as above).
#[derive(Serialize)]
pub struct OrderView<'a> {
    amount_cents: u64,
    cards: &'a [String],
    created_at: Time,
    currency: &'a str,
    expires_at: Time,
    order_id: &'a str,
    paid_at: Option<Time>,
    payment: PaymentLink<'a>,
    quantity: u32,
    review_reason: Option<&'static str>,
    settled_at: Option<Time>,
    sku: &'a str,
    status: &'static str,
    trace_id: &'a str,
}

/// An order as its buyer looks it up. `keys` are shown only once delivered.
pub fn order_view<'a>(record: &'a OrderRecord, keys: &'a [String]) -> OrderView<'a> {
    let created = &record.created;
    OrderView {
        amount_cents: created.amount_cents,
        cards: keys,
        created_at: Time(created.created_at_ms),
        currency: created.currency.as_str(),
        expires_at: Time(created.expires_at_ms),
        order_id: created.order_id.as_str(),
        paid_at: record.paid_at_ms.map(Time),
        payment: PaymentLink {
            channel: &created.payment_channel,
            url: &created.payment_url,
        },
        quantity: created.quantity,
        review_reason: record.review_reason.map(|r| r.as_str()),
        settled_at: record.settled_at_ms.map(Time),
        sku: created.sku.as_str(),
        status: record.status.as_str(),
        trace_id: &created.trace_id,
    }
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

#[cfg(test)]
mod tests {
    use engine::{Currency, NewOrder, OrderId, OrderRecord, OrderStatus, Sku};
    use serde_json::json;

    use super::*;

    fn order() -> NewOrder {
        NewOrder {
            order_id: OrderId::generate(1_700_000_000_000, 42),
            token: "digest".into(),
            trace_id: "t\"race".into(),
            sku: Sku::parse("sku-1").unwrap(),
            quantity: 2,
            amount_cents: 1_998,
            currency: Currency::parse("CNY").unwrap(),
            contact: "b@example.com".into(),
            channel: "alipay".into(),
            payment_channel: "epay".into(),
            payment_url: "https://pay.example/submit.php?a=1&b=\u{4e2d}".into(),
            payment_ref: String::new(),
            created_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_900_000,
            cards: Vec::new(),
            idempotency: None,
        }
    }

    /// The typed answers write exactly the bytes the `json!` trees they replaced wrote
    /// (kept here as the reference), for a fresh order and for a delivered one.
    #[test]
    fn typed_answers_write_the_bytes_the_json_trees_wrote() {
        let order = order();
        let reference = json!({
            "order_id": order.order_id.as_str(),
            "token": "tok",
            "status": "awaiting_payment",
            "sku": order.sku.as_str(),
            "quantity": order.quantity,
            "amount_cents": order.amount_cents,
            "currency": order.currency.as_str(),
            "created_at": format_rfc3339_ms(order.created_at_ms),
            "expires_at": format_rfc3339_ms(order.expires_at_ms),
            "trace_id": order.trace_id,
            "payment": {"channel": order.payment_channel, "url": order.payment_url},
        });
        assert_eq!(
            serde_json::to_string(&created_order(&order, "tok")).unwrap(),
            reference.to_string()
        );
        for (status, paid, reason) in [
            (OrderStatus::AwaitingPayment, None, None),
            (OrderStatus::Delivered, Some(1_700_000_100_000), None),
            (
                OrderStatus::ManualReview,
                Some(1_700_000_100_000),
                Some(engine::ReviewReason::ForeignChannel),
            ),
        ] {
            let record = OrderRecord {
                created: std::sync::Arc::new(order.clone()),
                status,
                cards: Vec::new(),
                payment: None,
                paid_at_ms: paid,
                settled_at_ms: paid.map(|t| t + 5),
                review_reason: reason,
            };
            let keys = vec!["KEY-1".to_owned(), "KEY-\"2\"".to_owned()];
            let created = &record.created;
            let reference = json!({
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
            });
            assert_eq!(
                serde_json::to_string(&order_view(&record, &keys)).unwrap(),
                reference.to_string()
            );
        }
    }
}
