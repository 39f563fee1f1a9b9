//! Test and operations control: fault switches, paying without a browser, and a look at the
//! orders and their notifies. These endpoints ignore every fault, outage included, so a test
//! can always switch faults off again.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::notify::{self, Payment};
use super::store::{Channel, Faults};
use super::Shared;

/// Most orders one `GET /control/orders` lists (the newest ones).
pub const ORDERS_LISTED_MAX: usize = 1_000;

fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": code, "message": message}))
}

/// `GET /control/faults`: the switches as they stand.
pub async fn faults(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.world().faults.clone())
}

/// `POST /control/faults`: replaces every switch; an absent one is off.
pub async fn set_faults(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_faults", &e.to_string()),
    };
    if let Err(message) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, "bad_faults", message);
    }
    shared.world().faults = faults.clone();
    HttpResponse::Ok().json(faults)
}

#[derive(Deserialize)]
pub struct PayQuery {
    out_trade_no: String,
    /// `epay` when absent.
    channel: Option<Channel>,
}

/// `POST /control/pay?out_trade_no=X[&channel=epusdt|alipay|wechat]`: pays as the buyer's
/// click (or scan) would.
pub async fn pay(query: web::Query<PayQuery>, shared: web::Data<Shared>) -> HttpResponse {
    let channel = query.channel.unwrap_or(Channel::Epay);
    let trade_no = shared
        .world()
        .store
        .find(channel, &query.out_trade_no)
        .map(|order| order.trade_no.clone());
    let Some(trade_no) = trade_no else {
        return error(StatusCode::NOT_FOUND, "unknown_order", "no such order");
    };
    let (already_paid, notifies) = match notify::pay(&shared, &trade_no) {
        Payment::Paid { copies } => (false, copies),
        Payment::AlreadyPaid => (true, 0),
        Payment::Unknown => {
            return error(StatusCode::NOT_FOUND, "unknown_order", "evicted");
        }
        Payment::Closed => {
            return error(
                StatusCode::CONFLICT,
                "closed",
                "the merchant closed this order",
            );
        }
    };
    HttpResponse::Ok().json(json!({
        "trade_no": trade_no,
        "paid": true,
        "already_paid": already_paid,
        "notifies": notifies,
    }))
}

#[derive(Deserialize)]
pub struct OrdersQuery {
    /// How many of the newest orders; `ORDERS_LISTED_MAX` when absent or larger.
    limit: Option<usize>,
    /// Only this merchant order id.
    out_trade_no: Option<String>,
}

/// `GET /control/orders[?limit=N][&out_trade_no=X]`: orders, oldest first, with their notifies.
pub async fn orders(query: web::Query<OrdersQuery>, shared: web::Data<Shared>) -> HttpResponse {
    let limit = query
        .limit
        .unwrap_or(ORDERS_LISTED_MAX)
        .min(ORDERS_LISTED_MAX);
    let world = shared.world();
    let orders = world.store.views(limit, query.out_trade_no.as_deref());
    HttpResponse::Ok().json(json!({"kept": world.store.len(), "orders": orders}))
}
