//! Buyer endpoints: the catalogue, order creation and lookup.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use actix_web::guard::{Get, Post};
use actix_web::{web, HttpRequest, HttpResponse};
use actors::OrderRequest;
use engine::{OrderId, Sku};
use serde::Deserialize;

use crate::error::ApiError;
use crate::wire::{catalogue_item, created_order, order_view, parse_json, OrderBody, TokenQuery};
use crate::{payload_too_large, read_body, resource, AppState};

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource("/api/v1/products").guard(Get()).to(products))
        .service(resource("/api/v1/orders").guard(Post()).to(create_order))
        .service(
            resource("/api/v1/orders/lookup")
                .guard(Post())
                .to(lookup_by_contact),
        )
        .service(
            resource("/api/v1/orders/{order_id}")
                .guard(Get())
                .to(lookup),
        );
}

async fn products(state: web::Data<AppState>) -> HttpResponse {
    let items: Vec<_> = state
        .shop
        .products()
        .listed()
        .iter()
        .map(catalogue_item)
        .collect();
    HttpResponse::Ok().json(items)
}

/// FNV-1a: a hash that stays the same across restarts (std's is randomly keyed).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn fingerprint(body: &OrderBody) -> u64 {
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    body.hash(&mut hasher);
    hasher.finish()
}

/// Whether a buyer's VIP invite code puts them in the VIP lane: absent or blank is the
/// public lane; a code this shop did not sign is refused (403), never silently demoted.
pub fn vip_lane(state: &AppState, code: Option<&str>) -> Result<bool, ApiError> {
    match code.map(str::trim).filter(|c| !c.is_empty()) {
        None => Ok(false),
        Some(code) if state.shop.vip_invite_valid(code) => Ok(true),
        Some(_) => Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "invalid_vip_code",
            "that VIP invite code is not one this shop issued",
        )),
    }
}

/// The version tag of a scoped key (what follows is a SHA-256 in hex).
const SCOPED_KEY_PREFIX: &str = "b1:";

/// A buyer's `Idempotency-Key` as the shop keeps it: scoped to the caller (its client key,
/// `client.rs`) and hashed. A replay of someone else's key and body from elsewhere is a
/// new key in its own scope (a new order; it learns nothing of the first), and the log
/// never holds the key itself. The shop forgets a key after 24 hours.
pub fn scoped_idempotency_key(client: Option<IpAddr>, raw: &str) -> Result<String, ApiError> {
    use sha2::{Digest, Sha256};
    actors::check_idempotency_key(raw)?;
    let scope = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let mut hasher = Sha256::new();
    hasher.update(scope.as_bytes());
    hasher.update([0]);
    hasher.update(raw.as_bytes());
    Ok(format!(
        "{SCOPED_KEY_PREFIX}{}",
        engine::payment::hex_lower(&hasher.finalize())
    ))
}

async fn create_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = state.client(&request);
    state.limits.check(crate::limits::Lane::Create, client)?;
    let body = read_body(payload, state.json_body_bytes_max, payload_too_large).await?;
    let body: OrderBody = parse_json(&body)?;
    let idempotency_key = match request.headers().get("Idempotency-Key") {
        Some(value) => Some(scoped_idempotency_key(
            client,
            value.to_str().map_err(|_| {
                ApiError::bad_request("bad_request", "Idempotency-Key must be visible ASCII")
            })?,
        )?),
        None => None,
    };
    let order_request = OrderRequest {
        vip: vip_lane(&state, body.vip_code.as_deref())?,
        sku: Sku::parse(&body.sku)?,
        quantity: body.quantity,
        fingerprint: fingerprint(&body),
        contact: body.contact,
        channel: body.channel,
        idempotency_key,
        client_ip: client.map(|ip| ip.to_string()),
        terms: actors::BuyerTerms {
            coupon: body.coupon,
            lookup_password: body.lookup_password,
        },
        phone: crate::direct::from_phone(&request),
    };
    let order_request = match state.shop.queue_if_needed(order_request)? {
        Ok(queued) => return Ok(crate::routes::queue::queued(&queued)),
        Err(direct) => direct,
    };
    let order = state.shop.create_order(order_request).await?;
    let token = state.shop.order_token(&order.order_id);
    Ok(HttpResponse::Created().json(created_order(&order, &token)))
}

#[derive(Deserialize)]
struct ContactLookupBody {
    contact: String,
    lookup_password: String,
}

/// `POST /api/v1/orders/lookup`: a buyer who lost the order link finds the orders made with
/// this contact and this lookup password (and only those), with their links' tokens.
async fn lookup_by_contact(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: ContactLookupBody = crate::json_body(payload, &state).await?;
    let client = request.peer_addr().map(|a| a.ip());
    state.limits.contact_lookup.check(client, &body.contact)?;
    let orders = state
        .shop
        .find_orders_by_contact(&body.contact, &body.lookup_password)
        .await?;
    let found: Vec<_> = orders
        .iter()
        .map(|record| {
            let created = &record.created;
            serde_json::json!({
                "order_id": created.order_id.as_str(),
                "token": state.shop.buyer_token(record),
                "status": record.status.as_str(),
                "sku": created.sku.as_str(),
                "quantity": created.quantity,
                "amount_cents": created.amount_cents,
                "created_at": engine::time::format_rfc3339_ms(created.created_at_ms),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(found))
}

async fn lookup(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let client = state.client(&request);
    state.limits.check(crate::limits::Lane::Lookup, client)?;
    let order_id = OrderId::parse(&path).map_err(|_| ApiError::not_found("unknown order"))?;
    let view = state.shop.lookup(&order_id, &query.token)?;
    Ok(HttpResponse::Ok().json(order_view(&view.record, &view.keys)))
}
