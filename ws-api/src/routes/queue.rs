//! The flash-sale waiting room on the wire: operators switch a product's sale on and off;
//! a queued buyer gets 202 with a ticket (from `POST /api/v1/orders`) and watches it at
//! `GET /api/v1/queue/{ticket}/live?token=T`: position and estimated wait, then the
//! outcome (`admitted` with the order, `sold_out`, or `failed`), then a normal close.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason};
use actors::flash::TicketUpdate;
use engine::waiting_room::TicketId;
use engine::Sku;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::operator::require_operator;
use crate::socket::{self, Feed, Outgoing};
use crate::wire::created_order;
use crate::wire::TokenQuery;
use crate::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route(
            "/api/v1/admin/products/{sku}/flash-sale",
            web::post().to(set_flash_sale),
        )
        .route("/api/v1/queue/{ticket}/live", web::get().to(watch));
}

#[derive(Deserialize)]
struct FlashBody {
    enabled: bool,
}

async fn set_flash_sale(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&request, &state)?;
    let sku = Sku::parse(&path)?;
    let body: FlashBody = crate::json_body(payload, &state).await?;
    state.shop.set_flash_sale(&sku, body.enabled)?;
    Ok(HttpResponse::Ok().json(json!({"sku": sku.as_str(), "flash_sale": body.enabled})))
}

/// The answer to a buyer who was queued instead of served.
pub fn queued(queued: &actors::flash::Queued) -> HttpResponse {
    HttpResponse::Accepted().json(json!({
        "status": "queued",
        "ticket": queued.ticket.0.to_string(),
        "token": queued.token,
        "position": queued.position,
        "estimated_wait_secs": queued.estimated_wait_secs,
    }))
}

fn frame(shop: &actors::Shop, ticket: TicketId, update: &TicketUpdate) -> String {
    let id = ticket.0.to_string();
    match update {
        TicketUpdate::Queued { position, estimated_wait_secs } => {
            json!({"ticket": id, "status": "queued", "position": position, "estimated_wait_secs": estimated_wait_secs})
        }
        TicketUpdate::Admitted(order) => json!({"ticket": id, "status": "admitted", "order": created_order(order, &shop.order_token(&order.order_id))}),
        TicketUpdate::SoldOut => json!({"ticket": id, "status": "sold_out"}),
        TicketUpdate::Failed(reason) => json!({"ticket": id, "status": "failed", "message": reason}),
    }
    .to_string()
}

async fn watch(
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    socket::verify(&request)?;
    let ticket = path
        .parse::<u64>()
        .map(TicketId)
        .map_err(|_| ApiError::not_found("unknown ticket"))?;
    let client = state.client(&request);
    state.limits.check(crate::limits::Lane::Websocket, client)?;
    let guard = socket::open_socket(&state)?;
    let feed = state
        .shop
        .watch_ticket(ticket, &query.token)
        .map_err(ApiError::from)?;
    let feed = TicketFeed {
        shop: state.shop.clone(),
        ticket,
        feed,
    };
    socket::serve(&request, body, feed, guard, state.lifecycle.clone())
}

/// A ticket's updates as socket frames: closed normally after its outcome.
struct TicketFeed {
    shop: actors::Shop,
    ticket: TicketId,
    feed: tokio::sync::mpsc::Receiver<TicketUpdate>,
}

impl Feed for TicketFeed {
    async fn next(&mut self) -> Outgoing {
        match self.feed.recv().await {
            Some(update) if update.is_final() => Outgoing::Last(
                frame(&self.shop, self.ticket, &update),
                CloseReason::from(CloseCode::Normal),
            ),
            Some(update) => Outgoing::Text(frame(&self.shop, self.ticket, &update)),
            None => Outgoing::Close(CloseReason {
                code: CloseCode::Again,
                description: Some("fell behind; reconnect".into()),
            }),
        }
    }
}
